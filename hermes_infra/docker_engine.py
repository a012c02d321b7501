"""Docker engine and compose v2: apt locks waited out, the apt source, conflicting packages,
daemon.json, the service."""
from __future__ import annotations

from pyinfra import host, logger
from pyinfra.api import deploy, operation
from pyinfra.operations import apt, files, server, systemd

from hermes_infra import aptwait
from hermes_infra.ops import root_file
from hermes_infra.plan import DOCKER_KEYRING, DockerPlan, Writer

RESTART_IF_RUNNING = "if systemctl is-active --quiet docker; then systemctl restart docker; fi"


@operation()
def apt_locks_free(plan: DockerPlan):
    """Wait (bounded) for apt/dpkg locks held by unattended-upgrades or cloud-init on a fresh
    VPS, saying who holds them; apt itself then waits too (DPkg::Lock::Timeout)."""
    if plan.apt_lock_holder is None and not plan.packages_missing:
        host.noop("no apt lock is held and the Docker packages are installed")
        return
    if plan.apt_lock_holder:
        # pyinfra shows a successful command's stderr only with -vvv: say it here, as it starts.
        pid, _, name = plan.apt_lock_holder.partition(" ")
        logger.warning(f"{host.print_prefix}{aptwait.WAIT_MARK} {plan.apt_lock_timeout}s for the apt lock "
                       f"held by {name or 'another process'} (pid {pid})")
    yield aptwait.wait_for_apt_locks_script(plan.apt_lock_timeout)


@deploy("Docker engine")
def docker_engine(plan: DockerPlan, writer: Writer):
    root_file(name="apt waits for its locks instead of failing (DPkg::Lock::Timeout)", file=plan.apt_conf,
              writer=writer)
    apt_locks_free(name="apt and dpkg locks are free (waits for unattended-upgrades, cloud-init)", plan=plan)
    apt.packages(name="Install apt prerequisites", packages=["ca-certificates", "curl"],
                 update=True, cache_time=3600, no_recommends=True)
    apt.packages(name="Remove packages that conflict with the chosen Docker",
                 packages=list(plan.conflicts), present=False)
    # daemon.json goes in before the engine, so a fresh engine starts with it and an
    # installed one is restarted only when the file really changed.
    root_file(name=f"Write {plan.daemon_json.path}", file=plan.daemon_json, writer=writer,
              on_change=RESTART_IF_RUNNING)
    if plan.sources is not None:
        files.directory(name="Create /etc/apt/keyrings", path="/etc/apt/keyrings", mode="0755")
        files.download(name="Download Docker's apt signing key", src=f"{plan.repo_url}/gpg",
                       dest=DOCKER_KEYRING, mode="0644")
        source = root_file(name="Add Docker's apt repository (deb822, Signed-By)", file=plan.sources, writer=writer)
        apt.update(name="Update apt lists for Docker's repository", _if=source.did_change)
    apt.packages(name="Install Docker engine and compose v2", packages=list(plan.packages), no_recommends=True)
    systemd.service(name="Enable and start Docker", service="docker", running=True, enabled=True)
    for user in plan.users:
        server.user(name=f"Add {user} to the docker group", user=user, groups=["docker"], append=True)
