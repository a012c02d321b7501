"""Docker engine and compose v2: apt locks waited out, the apt source, conflicting packages,
daemon.json, the service."""
from __future__ import annotations

import shlex

from pyinfra import host, logger
from pyinfra.api import deploy, operation
from pyinfra.operations import files, server

from hermes_infra.host import aptwait
from hermes_infra.host.cleantext import clean
from hermes_infra.operations.files import root_file
from hermes_infra.plan.hostplan import DOCKER_KEYRING, DockerPlan, Writer

RESTART_IF_RUNNING = "if systemctl is-active --quiet docker; then systemctl restart docker; fi"


def daemon_json_accepted(path: str) -> str:
    """dockerd itself judges a new daemon.json before it replaces the old one (and before the
    restart that would otherwise leave the engine down). `--validate` exists from Docker 23 on
    (Debian 13's 26.1, Docker's own packages); Debian 12's 20.10 and a host without the engine
    yet rely on the settings' own checks of `docker.daemon_options`."""
    return (f"if command -v dockerd >/dev/null && dockerd --help 2>&1 | grep -q -- --validate; then "
            f"dockerd --validate --config-file {path} >/dev/null || {{ echo 'hermes-infra: dockerd refuses the "
            f"new daemon.json (above); the current one is kept and Docker was not restarted' >&2; exit 1; }}; fi")


# Never a prompt, never a restart the deploy did not ask for. debconf: DEBIAN_FRONTEND.
# needrestart (installed by default on Ubuntu server and cloud images since 22.04) runs from
# apt's DPkg::Post-Invoke hook (/etc/apt/apt.conf.d/99needrestart -> /usr/lib/needrestart/apt-pinvoke)
# and may ask which services to restart. apt-pinvoke exits at once when NEEDRESTART_SUSPEND is set
# (needrestart's ex/apt/apt-pinvoke, github.com/liske/needrestart); should a needrestart run all
# the same, NEEDRESTART_MODE=l (its -r l) only lists: no dialog, and no service (dockerd among
# them) restarted behind the deploy's back, which NEEDRESTART_MODE=a would do.
APT_ENVIRONMENT = "DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 NEEDRESTART_MODE=l"


def apt_get(plan: DockerPlan, *args: str) -> str:
    # apt waits for dpkg's locks itself; the lists lock is waited out by apt_locks_free.
    return (f"{APT_ENVIRONMENT} apt-get -q -y {aptwait.APT_LOCK_TIMEOUT_OPTION(plan.apt_lock_timeout)} "
            + " ".join(args))


@operation()
def apt_installed(plan: DockerPlan, packages: tuple[str, ...], update: bool):
    """Install what the plan found missing (apt lists refreshed first when older than an hour
    or when a repository was just added)."""
    if not packages:
        host.noop("installed")
        return
    if update:
        yield apt_get(plan, "update")
    yield apt_get(plan, "install", "--no-install-recommends", *(shlex.quote(p) for p in packages))


@operation()
def apt_removed(plan: DockerPlan):
    if not plan.conflicts_installed:
        host.noop("no conflicting package is installed")
        return
    yield apt_get(plan, "remove", *(shlex.quote(p) for p in plan.conflicts_installed))


@operation()
def docker_service(plan: DockerPlan, installed_now: bool):
    """dockerd enabled at boot and running."""
    if installed_now:
        # The package's postinst usually enables and starts it already, and `systemctl enable`
        # is slow where it is not needed: it also syncs the SysV init script (seconds on a small VM).
        yield "systemctl is-enabled -q docker && systemctl is-active -q docker || systemctl enable --now docker"
    elif not plan.service_enabled:
        yield "systemctl enable --now docker"
    elif not plan.service_active:
        yield "systemctl start docker"
    else:
        host.noop("docker is enabled and running")


@operation()
def apt_locks_free(plan: DockerPlan):
    """Wait (bounded) for apt/dpkg locks held by unattended-upgrades or cloud-init on a fresh
    VPS, saying who holds them; apt itself then waits too (DPkg::Lock::Timeout)."""
    if plan.apt_lock_holder is None and not plan.packages_missing:
        host.noop("no apt lock is held and the Docker packages are installed")
        return
    if plan.apt_lock_holder:
        # pyinfra shows a successful command's stderr only with -vvv: say it here, as it starts.
        # The comm is chosen by whoever holds the lock (an agent's process, at worst): no escapes.
        pid, _, name = plan.apt_lock_holder.partition(" ")
        name = clean(name, 40)
        logger.warning(f"{host.print_prefix}{aptwait.WAIT_MARK} {plan.apt_lock_timeout}s for the apt lock "
                       f"held by {aptwait.HOLDERS.get(name, name) or 'another process'} (pid {clean(pid, 12)})")
    yield aptwait.wait_for_apt_locks_script(plan.apt_lock_timeout)


@deploy("Docker engine")
def docker_engine(plan: DockerPlan, writer: Writer):
    # First of all: a deploy that gives up on the lock must have changed nothing.
    apt_locks_free(name="apt and dpkg locks are free (waits for unattended-upgrades, cloud-init)", plan=plan)
    root_file(name="apt waits for its locks instead of failing (DPkg::Lock::Timeout)", file=plan.apt_conf,
              writer=writer)
    apt_installed(name="Install apt prerequisites (ca-certificates, curl)", plan=plan,
                  packages=plan.prerequisites_missing, update=plan.lists_stale)
    apt_removed(name="Remove packages that conflict with the chosen Docker", plan=plan)
    # daemon.json goes in before the engine, so a fresh engine starts with it and an
    # installed one is restarted only when the file really changed.
    root_file(name=f"Write {plan.daemon_json.path}", file=plan.daemon_json, writer=writer,
              on_change=RESTART_IF_RUNNING, check=daemon_json_accepted)
    if plan.sources is not None:
        files.directory(name="Create /etc/apt/keyrings", path="/etc/apt/keyrings", mode="0755")
        files.download(name="Download Docker's apt signing key", src=f"{plan.repo_url}/gpg",
                       dest=DOCKER_KEYRING, mode="0644")
        root_file(name="Add Docker's apt repository (deb822, Signed-By)", file=plan.sources, writer=writer)
    # A repository added in this run needs fresh lists before its packages can be installed.
    fresh_repository = plan.sources is not None and plan.sources.content_changed
    apt_installed(name="Install Docker engine and compose v2", plan=plan, packages=plan.packages_missing,
                  update=fresh_repository or (plan.lists_stale and not plan.prerequisites_missing))
    docker_service(name="Enable and start Docker", plan=plan, installed_now=bool(plan.packages_missing))
    for user in plan.users:
        server.user(name=f"Add {user} to the docker group", user=user, groups=["docker"], append=True)
