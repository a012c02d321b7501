"""The whole host, as a list of what it should be. `deploy.py` at the top calls `hermes_host()`.

Settings are validated, the host is read once (`gather`), one plan is made (`plan.make_plan`),
and each operation below only compares its part of the plan with the host and applies it.
"""
from __future__ import annotations

import os

from pyinfra import host, logger
from pyinfra.api import deploy

from hermes_infra.operations import alerts as alert_ops
from hermes_infra.operations import backup_timer, compose, datadir, docker_engine, health, image, profiles, swap
from hermes_infra.operations import agentfiles, cronjobs
from hermes_infra.operations import firewall as firewall_ops
from hermes_infra.operations import offsite as offsite_ops
from hermes_infra.operations import sshd as sshd_ops
from hermes_infra.operations import tlsproxy as tls_ops
from hermes_infra.operations import unattended as unattended_ops
from hermes_infra.plan import alerts, plandiff
from hermes_infra.plan import firewall as firewall_plan
from hermes_infra.plan import offsite as offsite_plan
from hermes_infra.plan import sshd as sshd_plan
from hermes_infra.plan import tlsproxy as tls_plan
from hermes_infra.plan import unattended as unattended_plan
from hermes_infra.commands import SHOW_DIFF_ATTRIBUTE, SHOW_DIFF_ENV
from hermes_infra.host.hostfacts import HermesHostState
from hermes_infra.settings.loading import settings_for_host
from hermes_infra.operations.files import root_file
from hermes_infra.plan.hostplan import Facts, HostPlan, fact_request, make_plan
from hermes_infra.release import firewall_confirm, results, sshd_confirm, upgrade
from hermes_infra.settings.schema import HostSettings


def gather(settings: HostSettings) -> Facts:
    """Read what the plan needs in one command (pyinfra's OS, memory and CPU facts run inside
    it and parse their own output: pyinfra does not cache facts, and each is a round trip)."""
    state = host.state
    shown = state.print_fact_output
    # `-vvv` prints every fact's raw output; the batched read holds base64 of `.env` files.
    state.print_fact_output = False
    try:
        batched = host.get_fact(HermesHostState, request=fact_request(settings))
    finally:
        state.print_fact_output = shown
    return Facts(os_release=batched.os_release, memory_mb=batched.memory_mb, cpus=batched.cpus,
                 image_inspect=batched.image_inspect, state=batched)


def host_plan(settings: HostSettings | None = None) -> HostPlan:
    settings = settings or settings_for_host(host)
    try:
        plan = make_plan(settings, gather(settings), host.name)
        if plan.sshd is not None and plan.sshd.enabled:
            sshd_plan.check_login(sshd_confirm.login_method(host))
    except Exception as error:
        results.record_failure(host, str(error))
        raise
    # For `hermes-infra up`/`rollout`: the revision, image and each operation's outcome go to
    # the audit log and the rollout table (nothing is recorded without HERMES_INFRA_RESULTS).
    results.record_plan(host, plan)
    if show_diff():
        print_diff(plan)
    return plan


def show_diff() -> bool:
    """`up --dry` (`PyinfraRun` marks its state), SHOW_DIFF_ENV, or pyinfra's own `--diff`."""
    return (bool(os.environ.get(SHOW_DIFF_ENV)) or bool(getattr(host.state, SHOW_DIFF_ATTRIBUTE, False))
            or bool(getattr(host.state.config, "DIFF", False)))


def print_diff(plan: HostPlan) -> None:
    """The plan's file changes, secrets masked, in one block per host (hosts plan side by side,
    so line by line they would interleave)."""
    lines = plandiff.plan_diff(plan)
    heading = f"--> [{plan.host}] changes to managed files" + ("" if lines else ": none")
    logger.info("\n".join([heading, *("    " + line for line in lines)]))


@deploy("Hermes gateway host")
def hermes_host(settings: HostSettings | None = None):
    plan = host_plan(settings)
    writer = plan.writer
    docker_engine.docker_engine(plan.docker, writer)
    firewall(plan)
    hardening(plan)
    swap.swap(plan.swap, writer)
    image.image(plan.image, writer)
    profiles.retire(name="Retire profiles and companions removed from the settings", plan=plan.retire, writer=writer)
    if plan.upgrade is not None:
        # Before the data dirs change: keep the previous image, snapshot with the gateways stopped.
        upgrade.prepared(name="Upgrade: keep the previous image, snapshot the data dirs", plan=plan.upgrade)
    for gateway in plan.gateways:
        datadir.data_dir(gateway, writer)
    for agent in (a for a in plan.agent if a.files_in_use):
        agentfiles.agent_files(name=f"Agent files of {agent.profile} in {agent.files.directory}", plan=agent.files,
                               writer=writer)
    # After the data files: a run that fails before this keeps the old record, and the keys it
    # lists are still found (and removed) next time.
    root_file(name="Record the .env and config.yaml keys hermes-infra manages", file=plan.managed_keys,
              writer=writer)
    for env_file in plan.companion_env_files:
        root_file(name=f"Companion env file {env_file.path} (0600, values not shown)", file=env_file, writer=writer)
    root_file(name="Record the profiles this host runs", file=plan.manifest, writer=writer)
    for project in plan.projects:
        root_file(name=f"Compose file {project.file.path}", file=project.file, writer=writer)
        compose.compose_up(name=f"Compose project {project.name} up", project=project)
    if plan.upgrade is not None:
        upgrade.gated_or_rolled_back(name="Health gate (rolls back to the previous image on failure)",
                                     plan=plan.upgrade, gates=plan.health)
    else:
        for gate in plan.health:
            health.healthy(name=f"Health gate: {gate.container} answers /health and /v1/models", plan=gate)
    for agent in (a for a in plan.agent if a.cron_in_use):
        cronjobs.cron_jobs(name=f"Cron jobs of {agent.profile} (hermes-infra/* as in the settings)", plan=agent)
    if plan.agent_record is not None:
        # After the files and jobs: a run that fails before this keeps the old record.
        root_file(name="Record the agent files and cron jobs hermes-infra manages", file=plan.agent_record,
                  writer=writer)
    root_file(name=f"Record revision {plan.revision} as deployed", file=plan.deployed, writer=writer)
    offsite(plan)
    timer = plan.backup_timer
    for file in timer.files:
        root_file(name=f"Scheduled backups: {file.path}", file=file, writer=writer)
    backup_timer.timer_running(name=f"Scheduled backups: {timer.calendar or 'none'}", plan=timer)
    watchdog(plan)


def firewall(plan: HostPlan) -> None:
    """After Docker's packages (apt is ready, nothing published yet on a new host), before any
    compose project publishes a port. The confirmation is a second SSH connection."""
    if plan.firewall is None:
        return
    docker = plan.docker
    updated = docker.prerequisites_missing or docker.packages_missing or (
        docker.sources is not None and docker.sources.content_changed)
    firewall_ops.firewall(plan.firewall, plan.writer, confirm=firewall_confirm.new_connection,
                          install=lambda: docker_engine.apt_installed(
                              name="Install nftables (firewall)", plan=docker, packages=(firewall_plan.PACKAGE,),
                              update=docker.lists_stale and not updated))


def hardening(plan: HostPlan) -> None:
    """sshd after the firewall (both confirmed by a new login), then the automatic updates and
    the TLS proxy (after Docker's packages: apt is ready; both packages in one apt run, before
    either's files: a package's own setup could otherwise write over them). The proxy comes
    before the gateways: on a new host it answers 502 until they are up, on a converged host
    nothing changes."""
    if plan.sshd is not None:
        sshd_ops.ssh_hardening(plan.sshd, plan.writer, confirm=sshd_confirm.new_connection)
    updates, proxy, docker = plan.unattended, plan.tls_proxy, plan.docker
    packages = ((unattended_plan.PACKAGE,) * bool(updates is not None and updates.enabled and not updates.installed)
                + (tls_plan.PACKAGE,) * bool(proxy is not None and proxy.enabled and not proxy.installed))
    if packages:
        updated = docker.prerequisites_missing or docker.packages_missing or (
            docker.sources is not None and docker.sources.content_changed)
        purpose = {unattended_plan.PACKAGE: "automatic security updates", tls_plan.PACKAGE: "TLS proxy"}
        docker_engine.apt_installed(
            name=f"Install {', '.join(packages)} ({', '.join(purpose[p] for p in packages)})",
            plan=docker, packages=packages, update=docker.lists_stale and not updated)
    if updates is not None:
        unattended_ops.unattended_upgrades(updates, plan.writer)
    if proxy is not None:
        tls_ops.tls_proxy(proxy, plan.writer)


def offsite(plan: HostPlan) -> None:
    """restic and its files (setting scheduled_backups.offsite) before the backup timer's script,
    which calls them; all gone when the setting is."""
    wanted = plan.offsite
    if wanted is None:
        return
    if wanted.package_missing:
        docker = plan.docker
        updated = docker.prerequisites_missing or docker.packages_missing or (
            docker.sources is not None and docker.sources.content_changed)
        docker_engine.apt_installed(name="Install restic (off-host backups)", plan=docker,
                                    packages=(offsite_plan.PACKAGE,), update=docker.lists_stale and not updated)
    for file in wanted.files:
        root_file(name=f"Off-host backups: {file.path}" + (" (0600, values not shown)" if file.secret else ""),
                  file=file, writer=plan.writer)
    offsite_ops.offsite_removed(name="Off-host backups: " + ("restic" if wanted.wanted else "none"), plan=wanted)


def watchdog(plan: HostPlan) -> None:
    """The watchdog and the node exporter (settings alerts, metrics), after the gateways: its
    first round then sees what this deploy made. The exporter's drop-in goes in before the
    package, so its first start already listens where the settings say."""
    watch, metrics, writer = plan.alerts, plan.metrics, plan.writer
    if watch is None or metrics is None:
        return
    if metrics.dropin is not None:
        root_file(name=f"Node exporter: {metrics.dropin.path}", file=metrics.dropin, writer=writer,
                  on_change="systemctl daemon-reload")
    missing = (alerts.PYTHON_PACKAGE,) * watch.python_missing + (alerts.EXPORTER_PACKAGE,) * (
        metrics.wanted and not metrics.installed)
    if missing:
        docker = plan.docker
        updated = docker.prerequisites_missing or docker.packages_missing or (
            docker.sources is not None and docker.sources.content_changed)
        docker_engine.apt_installed(name=f"Install {', '.join(missing)} (alerts and metrics)", plan=docker,
                                    packages=missing, update=docker.lists_stale and not updated)
    for file in watch.files:
        root_file(name=f"Watchdog: {file.path}" + (" (0600, values not shown)" if file.secret else ""), file=file,
                  writer=writer)
    alert_ops.exporter_running(name=f"Node exporter: {metrics.url or 'none'}", plan=metrics,
                               dropin_changed=bool(metrics.dropin and metrics.dropin.content_changed))
    alert_ops.timer_running(name=f"Watchdog: {'every %d s' % watch.interval if watch.wanted else 'none'}", plan=watch)
