"""What one host should be, computed once from its settings and its facts. Pure: no I/O.

settings (schema) -> facts (hostfacts, one read) -> HostPlan (this module) -> operations.

The plan holds every file's bytes, the API keys, digests, compose texts, limits, the image's
identity and what to retire, so operations only compare and apply, and a test of an operation
is a plan in, commands out. A plan never contains a value read from a data dir that was not
checked first: a `.env` that is not a regular file stops the plan with a message.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import secrets
from dataclasses import dataclass, field

from pyinfra.api.exceptions import PyinfraError

from hermes_infra.host import safeio
from hermes_infra.images import identity as imageid
from hermes_infra.plan import agentfiles, alerts, backup_timer, compose, configfile, daemon, envfile, managedkeys
from hermes_infra.plan import offsite
from hermes_infra.plan import firewall, sshd, tlsproxy, unattended
from hermes_infra.plan.capacity import EffectiveLimits, HostResources, derive_limits
from hermes_infra.host.hostfacts import DataDirRequest, HostState, ProbeRequest, StateRequest
from hermes_infra.settings.schema import (
    GatewaySettings,
    HostSettings,
    check_api_key,
    gateway_for,
    managed_env,
    publish_addresses,
)

# The OS (os-release ID) and its releases (VERSION_CODENAME) hermes-infra deploys to: an
# allow-list. Ubuntu: the two supported LTS releases with Docker's packages and compose v2.
SUPPORTED = {"debian": ("bookworm", "trixie", "forky"), "ubuntu": ("jammy", "noble")}
RELEASE_NAMES = {"bookworm": "Debian 12 (bookworm)", "trixie": "Debian 13 (trixie)",
                 "forky": "Debian 14 (forky, testing)", "jammy": "Ubuntu 22.04 LTS (jammy)",
                 "noble": "Ubuntu 24.04 LTS (noble)"}
SUPPORTED_TEXT = "Debian 12 (bookworm), Debian 13 (trixie), Ubuntu 22.04 LTS (jammy) and Ubuntu 24.04 LTS (noble)"
DOCKER_REPOSITORY = "https://download.docker.com/linux"
"""Docker's apt repositories: one per OS, `<this>/<os-release ID>`."""
STAGE_DIR = "/var/lib/hermes-infra/stage"
APT_CONF = "/etc/apt/apt.conf.d/90hermes-infra-lock-timeout"
DAEMON_JSON = "/etc/docker/daemon.json"
DOCKER_SOURCES = "/etc/apt/sources.list.d/docker.sources"
DOCKER_KEYRING = "/etc/apt/keyrings/docker.asc"
OFFICIAL_PACKAGES = ("docker-ce", "docker-ce-cli", "containerd.io", "docker-buildx-plugin", "docker-compose-plugin")
# The OS's own Docker. Debian 13 splits the CLI out of docker.io (`docker-cli`) and its
# `docker-compose` is compose v2. Ubuntu's docker.io (source docker.io-app) still holds the CLI,
# and compose v2 is `docker-compose-v2` (universe): in noble's release pocket and backported to
# jammy (jammy-updates), as Ubuntu's DockerUpdates policy (https://wiki.ubuntu.com/DockerUpdates)
# keeps docker.io-app, containerd-app, runc-app, docker-buildx and docker-compose-v2 updated on
# every supported release; Ubuntu's `docker-compose` is the Python compose v1.
DISTRO_PACKAGES = {"debian": ("docker.io", "docker-cli", "docker-compose"),
                   "ubuntu": ("docker.io", "docker-compose-v2")}
# The engine package of each source: the other source's engine is what a host already runs Docker with.
ENGINE_PACKAGE = {"official": "docker-ce", "distro": "docker.io"}
# Installed side by side, these fight over /usr/bin/docker, containerd and the compose plugin
# (Docker's install guides for Debian and Ubuntu list the same ones, Ubuntu's with docker-compose-v2;
# docker-compose-v2 and docker-compose-plugin both ship /usr/libexec/docker/cli-plugins/docker-compose).
CONFLICTS = {
    "official": ("docker.io", "docker-doc", "docker-compose", "docker-compose-v2", "podman-docker", "containerd", "runc"),
    "distro": ("docker-ce", "docker-ce-cli", "containerd.io", "docker-compose-plugin", "podman-docker"),
}
PREREQUISITES = ("ca-certificates", "curl")
SYSCTL_FILE = "/etc/sysctl.d/60-hermes-infra-swap.conf"
APT_LISTS_MAX_AGE = 3600
PUBLIC_TO_LOCAL = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class PlanError(PyinfraError):
    """The host cannot take these settings as it is; the message names what and the fix."""


@dataclass(frozen=True)
class Facts:
    """What the host is now: pyinfra's own facts plus hermes-infra's one batched read."""

    os_release: dict
    memory_mb: int
    cpus: int
    image_inspect: list | None
    state: HostState


@dataclass(frozen=True)
class Writer:
    """How files reach the host without a secret ever sitting world-readable."""

    stage_dir: str = STAGE_DIR
    upload_dir: str = "/root/.hermes-infra-upload"
    """A 0700 dir of the SSH user: with --sudo, pyinfra uploads there before root copies it."""
    upload_user: str = "root"
    backup_dir: str = "/var/backups/hermes-infra"
    backup_keep: int = 5


@dataclass(frozen=True)
class RootFilePlan:
    """A file only root writes (outside data dirs): daemon.json, compose files, env files."""

    path: str
    content: str = field(repr=False)
    mode: str = "0644"
    current: dict | None = field(default=None, repr=False)
    secret: bool = False

    @property
    def content_changed(self) -> bool:
        return self.current is None or self.current["text"].text != self.content

    @property
    def meta_changed(self) -> bool:
        return self.current is not None and (self.current["uid"], self.current["gid"], self.current["mode"]) != (
            0, 0, self.mode.rjust(4, "0"))


@dataclass(frozen=True)
class DataFilePlan:
    """`.env` or `config.yaml` in a data dir: written by its owner, never followed."""

    directory: str
    name: str
    uid: int
    gid: int
    content: str = field(repr=False)
    exists: bool = False
    content_changed: bool = False
    owner: tuple[int, int, str] | None = None
    changed_keys: tuple[str, ...] = ()
    removed_keys: tuple[str, ...] = ()
    """Keys hermes-infra wrote before that left the settings (names only)."""
    mode: str = "0600"
    current: str | None = field(default=None, repr=False)
    """The file's text on the host (checked regular), for the dry run's masked diff."""

    @property
    def path(self) -> str:
        return f"{self.directory}/{self.name}"

    @property
    def meta_changed(self) -> bool:
        return self.exists and self.owner != (self.uid, self.gid, self.mode.rjust(4, "0"))


@dataclass(frozen=True)
class DataDirPlan:
    directory: str
    uid: int
    gid: int
    exists: bool
    meta_changed: bool
    foreign_files: bool


@dataclass(frozen=True)
class HealthPlan:
    container: str
    url: str
    data_dir: DataDirRequest
    timeout: int
    interval: float
    healthy_now: bool
    gate_needed: bool
    require_ready: bool = False
    """Also wait for `/health/detailed` to say `status: ok` (`health.require_ready`)."""


@dataclass(frozen=True)
class GatewayPlan:
    name: str
    service: str
    data_dir: DataDirPlan
    env: DataFilePlan
    config: DataFilePlan
    limits: EffectiveLimits
    api_key: str = field(repr=False)
    inputs_digest: str = ""
    managed_entry: dict = field(default_factory=dict, repr=False)
    """This profile's part of the managed-keys record (names and salted digests)."""


@dataclass(frozen=True)
class ProjectPlan:
    name: str
    directory: str
    file: RootFilePlan
    services: tuple[str, ...]
    drift_checked: tuple[str, ...]
    up_reason: str | None
    """Why `compose up` must run (None: the project is up to date and running)."""

    @property
    def stamp_path(self) -> str:
        return f"{self.directory}/{compose.STAMP_NAME}"

    @property
    def stamp(self) -> str:
        return compose.stamp_of(self.file.content)


@dataclass(frozen=True)
class ImagePlan:
    ref: str
    source: str
    present: bool
    pull_ref: str | None = None
    archive_path: str | None = None
    archive_sha256: str | None = None
    remote_archive: str | None = None
    archive_ref: str | None = None
    cache_dir: str = "/var/cache/hermes-infra/images"
    identity: str | None = None


def fstab_line(path: str) -> str:
    """The fstab entry of a swap file, as the operation writes it and the diff shows it."""
    return f"{path} none swap sw 0 0"


@dataclass(frozen=True)
class SwapPlan:
    path: str
    size_bytes: int
    swappiness: int
    current: dict
    sysctl_file: RootFilePlan | None = None


@dataclass(frozen=True)
class DockerPlan:
    install_source: str
    packages: tuple[str, ...]
    conflicts: tuple[str, ...]
    daemon_json: RootFilePlan
    apt_conf: RootFilePlan
    sources: RootFilePlan | None
    repo_url: str
    users: tuple[str, ...]
    packages_missing: tuple[str, ...]
    apt_lock_holder: str | None
    apt_lock_timeout: int
    prerequisites_missing: tuple[str, ...] = ()
    conflicts_installed: tuple[str, ...] = ()
    lists_stale: bool = True
    service_enabled: bool = False
    service_active: bool = False


@dataclass(frozen=True)
class RetirePlan:
    """What left the settings since the last deploy, matched by what each profile owned."""

    containers: tuple[str, ...] = ()
    projects_down: tuple[tuple[str, str], ...] = ()
    files: tuple[str, ...] = ()
    archives: tuple[tuple[str, str], ...] = ()
    purges: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.containers or self.projects_down or self.files or self.archives)


@dataclass(frozen=True)
class HostPlan:
    host: str
    codename: str
    writer: Writer
    docker: DockerPlan
    swap: SwapPlan
    image: ImagePlan
    retire: RetirePlan
    gateways: tuple[GatewayPlan, ...]
    companion_env_files: tuple[RootFilePlan, ...]
    manifest: RootFilePlan
    managed_keys: RootFilePlan
    """Which `.env`/`config.yaml` keys hermes-infra wrote into each data dir (managedkeys.py)."""
    projects: tuple[ProjectPlan, ...]
    health: tuple[HealthPlan, ...]
    revision: str
    deployed: RootFilePlan
    backup_timer: BackupTimerPlan
    """The revision, written once the gates pass: what `rollback --to REVISION` finds later."""
    agent: tuple[agentfiles.AgentPlan, ...] = ()
    """Each gateway's agent files and cron jobs (plan/agentfiles.py, plan/cronjobs.py)."""
    agent_record: RootFilePlan | None = None
    """Which files and jobs hermes-infra placed (None on a host that never had any)."""
    alerts: alerts.AlertsPlan | None = None
    """The watchdog (settings alerts, metrics): its files, or what to remove."""
    metrics: alerts.MetricsPlan | None = None
    """The node exporter (setting metrics)."""
    firewall: firewall.FirewallPlan | None = None
    """The nftables table (setting firewall), or what to remove of it."""
    sshd: sshd.SshdPlan | None = None
    """The sshd drop-in (setting ssh_hardening), or what to remove of it."""
    unattended: unattended.UnattendedPlan | None = None
    """Automatic security updates (setting unattended_upgrades), or what to remove of them."""
    tls_proxy: tlsproxy.TlsProxyPlan | None = None
    """caddy and its Caddyfile (setting tls_proxy), or what to remove of them."""
    offsite: offsite.OffsitePlan | None = None
    """Off-host backups (setting scheduled_backups.offsite): restic, its files, or what to remove."""
    upgrade: UpgradePlan | None = None
    """Set when the main project will be brought up over existing gateway containers: the
    deploy then keeps the previous image, snapshots the data dirs (gateways stopped) and rolls
    back if the new image fails its gate. Whether the image really changed is decided on the
    host at that moment (the running container's image ID against the ref's)."""


@dataclass(frozen=True)
class BackupTimerPlan:
    """The scheduled-backup timer: its files when a schedule is set, what to remove when not."""

    calendar: str | None
    files: tuple[RootFilePlan, ...]
    present: tuple[str, ...]
    """Timer files found on the host (removed when no schedule is set)."""
    enabled: bool
    active: bool

    @property
    def files_changed(self) -> bool:
        return any(f.content_changed for f in self.files)


@dataclass(frozen=True)
class UpgradePlan:
    image_ref: str
    project: str
    project_dir: str
    services: tuple[str, ...]
    data_dirs: tuple[tuple[str, str], ...]
    """(profile, data dir) of each gateway."""
    stop_grace_seconds: int
    backup_dir: str
    keep: int
    """Previous images (and snapshots of each profile) kept for rollbacks."""


# --- from settings to the fact request ------------------------------------------------------

def data_dir_request(gateway: GatewaySettings) -> DataDirRequest:
    return DataDirRequest(gateway.name, gateway.host_data_dir, gateway.uid, gateway.gid)


def data_dir_read(gateway: GatewaySettings) -> DataDirRequest:
    """The batched read of a data dir: `.env`, `config.yaml`, and the agent's files and jobs."""
    return dataclasses.replace(data_dir_request(gateway), extra_files=agentfiles.read_names(gateway))


def probe_url(settings: HostSettings, gateway: GatewaySettings) -> str:
    """Where the host itself reaches the published API."""
    address = publish_addresses(settings, gateway)[0]
    address = PUBLIC_TO_LOCAL.get(address, address)
    if ":" in address:
        address = f"[{address}]"
    return f"http://{address}:{gateway.api.port}"


DEPLOYED_NAME = "deployed-revision"


def manifest_path(settings: HostSettings) -> str:
    return f"{settings.project_dir}/profiles.json"


def deployed_path(settings: HostSettings) -> str:
    return f"{settings.project_dir}/{DEPLOYED_NAME}"


def managed_keys_path(settings: HostSettings) -> str:
    return managedkeys.record_path(settings.project_dir)


def fact_request(settings: HostSettings) -> StateRequest:
    """What to read from the host, from settings alone (so it can run before any plan)."""
    # The managed-keys record comes with the root files (one tar, links never followed).
    files = [DAEMON_JSON, APT_CONF, SYSCTL_FILE, manifest_path(settings), deployed_path(settings),
             managed_keys_path(settings), *backup_timer.PATHS, *alerts.requested_files(settings), *firewall.PATHS,
             sshd.DROPIN_PATH, *unattended.PATHS, *offsite.PATHS, *tlsproxy.PATHS]
    if settings.docker.install_source == "official":
        files.append(DOCKER_SOURCES)
    projects = [(compose.MAIN_PROJECT, settings.project_dir)]
    for companion in settings.companions:
        files.append(compose.companion_env_path(settings, companion))
        if companion.topology == "host-gateway":
            projects.append((compose.project_name(companion), compose.project_dir(settings, companion)))
    for _, directory in projects:
        files += [f"{directory}/compose.yaml", f"{directory}/{compose.STAMP_NAME}"]
    # The OS is not known before this read: ask for every OS's names (dpkg-query skips unknown ones).
    packages = (OFFICIAL_PACKAGES if settings.docker.install_source == "official"
                else tuple(p for names in DISTRO_PACKAGES.values() for p in names))
    packages = (PREREQUISITES + packages + CONFLICTS[settings.docker.install_source] + alerts.requested_packages(settings)
                + (unattended.PACKAGE, offsite.PACKAGE, tlsproxy.PACKAGE))
    return StateRequest(
        data_dirs=tuple(data_dir_read(g) for g in settings.gateways),
        root_files=tuple(dict.fromkeys([*files, *agentfiles.request_paths(settings)])),
        projects=tuple(projects),
        swap_path=settings.swap.path,
        probes=tuple(ProbeRequest(g.name, probe_url(settings, g), data_dir_request(g), g.service_name)
                     for g in settings.gateways),
        packages=tuple(dict.fromkeys(packages)),
        image_ref=settings.image.ref,
        apt_repositories=docker_repositories_read(settings),
        sshd=settings.ssh_hardening.enabled, apt_timers=settings.unattended_upgrades.enabled,
    )


def docker_repositories_read(settings: HostSettings) -> tuple[str, ...]:
    """Which repositories to look for in the host's other apt sources (the OS is not known yet)."""
    if settings.docker.install_source != "official":
        return ()
    urls = ([settings.docker.official_repo_url] if settings.docker.official_repo_url
            else [f"{DOCKER_REPOSITORY}/{os_id}" for os_id in SUPPORTED])
    return tuple(_without_scheme(url) for url in urls)


def _without_scheme(url: str) -> str:
    return url.split("://", 1)[-1].rstrip("/")


# --- the plan ---------------------------------------------------------------------------------

def check_release(settings: HostSettings, release: dict) -> str:
    """The host's release codename, when hermes-infra supports that OS and release with these settings."""
    os_id, codename = host_os(release)
    if codename not in SUPPORTED.get(os_id, ()):
        raise PlanError(f"the host runs {_shown_release(release)}; hermes-infra supports {SUPPORTED_TEXT}. "
                        "Fix: use a host with one of these releases")
    if codename == "bookworm" and settings.docker.install_source == "distro":
        raise PlanError(
            "docker.install_source is 'distro' but Debian 12 (bookworm) ships only compose v1. "
            "Fix: use docker.install_source: official on Debian 12, or a Debian 13 host")
    return codename


def host_os(release: dict) -> tuple[str, str]:
    """(os-release ID, release codename). Ubuntu has the codename twice (VERSION_CODENAME and
    UBUNTU_CODENAME); the ID decides, never ID_LIKE (a derivative is not the OS it is like)."""
    os_id = str(release.get("id", "")).strip().lower()
    codename = str(release.get("version_codename", "")).strip().lower()
    if not codename and os_id == "ubuntu":
        codename = str(release.get("ubuntu_codename", "")).strip().lower()
    return os_id, codename


def _shown_release(release: dict) -> str:
    # os-release is the host's, not the agent's; still, only printable text of bounded length.
    name = str(release.get("pretty_name") or release.get("id") or "").strip()
    name = "".join(c for c in name if c.isprintable())[:80]
    return repr(name) if name else "an unknown OS (no ID in /etc/os-release)"


def docker_repository(settings: HostSettings, os_id: str) -> str:
    """Docker's apt repository for this host: the operator's URL as set, else Docker's own for
    the host's OS. A URL that names another OS (its last path segment, as Docker's do) would
    install that OS's packages: refused."""
    url = settings.docker.official_repo_url
    if url is None:
        return f"{DOCKER_REPOSITORY}/{os_id}"
    named = url.rstrip("/").rsplit("/", 1)[-1].lower()
    if named in SUPPORTED and named != os_id:
        raise PlanError(
            f"docker.official_repo_url is {url!r}, Docker's repository for {named.capitalize()}, but the host runs "
            f"{os_id.capitalize()}; apt would install packages built for another OS. Fix: remove "
            f"docker.official_repo_url (Docker's own {DOCKER_REPOSITORY}/{os_id} is then used), or point it at "
            f"a mirror of {DOCKER_REPOSITORY}/{os_id}")
    return url


# Docker's own package versions name the release they are built for: 5:27.3.1-1~ubuntu.24.04~noble.
_BUILT_FOR = re.compile(r"~(?P<os>[a-z]+)\.(?P<version>[0-9.]+)~(?P<codename>[a-z]+)$")


def check_version_pin(settings: HostSettings, os_id: str, codename: str) -> None:
    pin = settings.docker.version
    found = _BUILT_FOR.search(pin or "") if settings.docker.install_source == "official" else None
    if found and (found["os"], found["codename"]) != (os_id, codename):
        raise PlanError(
            f"docker.version is {pin!r}, Docker's build for {found['os']} {found['version']} ({found['codename']}), "
            f"but the host runs {RELEASE_NAMES.get(codename, codename)}; apt has no such version there. Fix: copy "
            "the version from `apt-cache madison docker-ce` on this host, or leave docker.version unset")


def check_engine_conflicts(settings: HostSettings, state: HostState, os_id: str) -> None:
    """Refuse, before anything changes, a Docker that apt would not replace cleanly or that is
    not hermes-infra's to replace.

    A snap's dockerd is its own service with its own socket and data (/var/snap/docker): apt's
    engine beside it fights over /var/run/docker.sock, and apt cannot remove it. The other
    source's engine on a host without hermes-infra's record of an earlier deploy is the
    operator's own Docker, maybe running other containers: switching it stops them all. With
    that record, the operator changed docker.install_source on a host hermes-infra runs, and the
    other source's packages are removed first, as Docker's install guide does (/var/lib/docker stays)."""
    if state.snap_docker:
        raise PlanError(
            f"the host has Docker from the snap store ({'; '.join(state.snap_docker)}). Its dockerd would fight the "
            f"apt-installed engine over /var/run/docker.sock, so nothing was changed on this host. Fix: move its "
            "containers and images off it, `snap remove --purge docker`, then deploy again")
    source = settings.docker.install_source
    other = "distro" if source == "official" else "official"
    engine = ENGINE_PACKAGE[other]
    if state.packages.get(engine) != "installed" or state.root_files.get(manifest_path(settings)) is not None:
        return
    made_by = f"{os_id.capitalize()}'s own" if other == "distro" else "Docker's repository's"
    raise PlanError(
        f"docker.install_source is {source!r} but the host already runs {made_by} Docker ({engine} is installed) and "
        f"hermes-infra has not deployed here before (no {manifest_path(settings)}). Replacing that engine would stop "
        "every container it runs, so nothing was changed on this host. Fix: set docker.install_source: "
        f"{other} to use the installed engine, or remove it yourself (`apt-get remove {engine}`; /var/lib/docker "
        "is kept) and deploy again")


def _root_file(state: HostState, path: str, content: str, mode: str = "0644", secret: bool = False) -> RootFilePlan:
    return RootFilePlan(path=path, content=content, mode=mode, current=state.root_files.get(path), secret=secret)


def _usable(read: safeio.FileRead | None, path: str, gateway: GatewaySettings) -> str | None:
    """The current text of a data-dir file, or a PlanError saying what was planted there."""
    if read is None or read.kind == "missing":
        return None
    if read.kind == "regular":
        return read.text
    found = {
        "symlink": "a symbolic link", "fifo": "a FIFO (named pipe)", "directory": "a directory",
        "hardlink": "a file with several hard links", "changed": "a file that changed while it was read",
        "toolarge": f"larger than {safeio.MAX_READ_BYTES // 1024} KiB", "other": "not a regular file",
    }[read.kind]
    raise PlanError(
        f"gateways[{gateway.name}]: {path} is {found}. Something inside the container (or a person) put it there; "
        "hermes-infra never follows links or reads anything but a regular file in a data dir, so nothing was read, "
        f"written or chowned on this host. Fix: inspect it (`ls -la {gateway.host_data_dir}`), remove or replace it "
        f"with a regular file (a backup may be in the backup dir), then deploy again")


SWAP_FOUND = {"symlink": "a symbolic link", "directory": "a directory", "fifo": "a FIFO (named pipe)",
              "hardlink": "a file with several hard links", "other": "not a regular file (a device, a socket?)",
              "regular": "a regular file without a swap signature (not made by mkswap, not active in /proc/swaps)"}


def check_swap_path(settings: HostSettings, swap: dict) -> None:
    """The swap operation removes, recreates and mkswaps `swap.path`: only ever a missing path or
    a file that already is swap (mkswap's signature, or active in /proc/swaps), a regular file
    with one link, not a link. Anything else is someone's data: stop before any change."""
    kind = swap.get("kind", "missing")
    if kind == "missing" or (kind == "regular" and (swap.get("signature") or swap.get("active"))):
        return
    path = settings.swap.path
    raise PlanError(
        f"swap.path {path} exists and is {SWAP_FOUND.get(kind, SWAP_FOUND['other'])}. hermes-infra only replaces or "
        "removes a swap file (made by mkswap) or creates a missing one, so nothing was changed on this host. Fix: "
        f"set swap.path to a path that does not exist yet (e.g. /swapfile-hermes), or move {path} away if it is "
        "not needed (`ls -la` it first), then deploy again")


def _adoptable(settings: HostSettings, gateway: GatewaySettings, state: HostState, found: dict) -> bool:
    """May the deploy take this existing data dir over (chown it, write .env and config.yaml)?

    Yes when it is empty; when the last deploy recorded it for this very profile (the root-owned
    manifest, written by every deploy: deployed data dirs keep working); or when it already is a
    Hermes data dir (a regular `.env` with an API_SERVER_KEY line, which is what Hermes's API
    server reads, e.g. one made by upstream's guide) that the manifest does not give to another
    profile. Anything else (a home dir, a project, a mount point) is someone's data."""
    if found.get("empty"):
        return True
    recorded = _previous_profiles(settings, state)
    owner = [name for name, info in recorded.items() if info.get("data_dir") == gateway.host_data_dir]
    if gateway.name in owner:
        return True
    env = found["files"].get(".env")
    is_hermes = env is not None and env.kind == "regular" and "API_SERVER_KEY" in envfile.parse(env.text or "")
    return is_hermes and not owner


def _previous_profiles(settings: HostSettings, state: HostState) -> dict:
    found = state.root_files.get(manifest_path(settings))
    try:
        previous = json.loads(found["text"].text) if found else {}
    except json.JSONDecodeError:
        previous = {}
    profiles = previous.get("profiles") if isinstance(previous, dict) else None
    return {k: v for k, v in profiles.items() if isinstance(v, dict)} if isinstance(profiles, dict) else {}


def decide_api_key(gateway: GatewaySettings, current_env: str | None, path: str) -> str:
    """The operator's key if given; else the key already on the host; else a new random one."""
    if gateway.api.key is not None:
        return gateway.api.key.get_secret_value()
    existing = envfile.parse(current_env or "").get("API_SERVER_KEY")
    if existing:
        try:
            return check_api_key(existing, f"API_SERVER_KEY in {path} on the host")
        except ValueError as error:
            raise PlanError(f"{error}. Or remove the line and hermes-infra generates a valid key") from None
    return secrets.token_urlsafe(32)


def _gateway(settings: HostSettings, gateway: GatewaySettings, state: HostState,
             limits: EffectiveLimits, record: managedkeys.Record | None, salt: str) -> GatewayPlan:
    directory = gateway.host_data_dir
    found = state.data_dirs.get(gateway.name, {"meta": {"kind": "missing"}, "parent": {"kind": "missing"},
                                               "dir": "missing", "files": {}, "foreign": False})
    meta, parent = found["meta"], found["parent"]
    if meta["kind"] not in ("missing", "directory"):
        raise PlanError(f"gateways[{gateway.name}].data_dir {directory} exists but is "
                        f"{'a symbolic link' if meta['kind'] == 'symlink' else 'not a directory'}. hermes-infra "
                        "does not follow it. Fix: move it away or point data_dir at a real directory")
    if parent["kind"] == "directory" and (parent["uid"] != 0 or int(parent["mode"], 8) & 0o022):
        raise PlanError(f"gateways[{gateway.name}].data_dir {directory}: its parent directory belongs to uid "
                        f"{parent['uid']} with mode {parent['mode']}, so someone other than root could swap the data "
                        "dir for a link. Fix: `chown root: <parent> && chmod go-w <parent>`, or use a data dir under "
                        "a root-owned directory such as /srv/hermes")
    env_path, config_path = f"{directory}/.env", f"{directory}/config.yaml"
    env_read, config_read = found["files"].get(".env"), found["files"].get("config.yaml")
    current_env = _usable(env_read, env_path, gateway)
    current_config = _usable(config_read, config_path, gateway)
    if meta["kind"] == "directory" and not _adoptable(settings, gateway, state, found):
        raise PlanError(
            f"gateways[{gateway.name}].data_dir {directory} exists, is not empty and is not a Hermes data dir of "
            f"profile {gateway.name!r} (no .env with API_SERVER_KEY, not recorded for it by an earlier deploy). "
            "hermes-infra would chown it to the container user and hand it to the agent, so nothing was changed on "
            f"this host. Fix: point gateways[{gateway.name}].data_dir at a new or empty directory, or move its files "
            "away; to adopt an existing Hermes data dir, make sure its .env has an API_SERVER_KEY line")

    key = decide_api_key(gateway, current_env, env_path)
    env_values = managed_env(gateway)
    env_values["API_SERVER_KEY"] = key
    config_values = gateway.config.managed()
    try:
        config_tree = configfile.load(current_config, config_path)
    except configfile.ConfigYamlError as error:
        raise PlanError(str(error)) from None
    previous = managedkeys.previous_for(record, gateway.name, directory)
    env_merge = envfile.merge(current_env, env_values, remove=managedkeys.env_removals(
        previous, salt, env_values, envfile.parse(current_env or "")))
    config_merge = configfile.merge(current_config, config_values, config_path, remove=managedkeys.config_removals(
        previous, salt, config_values, config_tree))
    # What the gateway runs with once the removals are done: the managed keys and their values
    # (a removed key is no longer among them). Keys the operator or Hermes own stay out, so
    # Hermes writing its own keys does not recreate the container on the next deploy.
    digest = hashlib.sha256(json.dumps([env_values, config_values], sort_keys=True,
                                       default=str).encode()).hexdigest()[:16]

    def data_file(name: str, read: safeio.FileRead | None, current: str | None,
                  merge: envfile.EnvMerge | configfile.ConfigMerge) -> DataFilePlan:
        exists = read is not None and read.kind == "regular"
        return DataFilePlan(directory=directory, name=name, uid=gateway.uid, gid=gateway.gid, content=merge.text,
                            exists=exists, content_changed=not exists or merge.changed,
                            changed_keys=merge.changed_keys, removed_keys=merge.removed_keys,
                            owner=read.owner if exists else None, current=current)

    wanted_dir = (gateway.uid, gateway.gid, "0700")
    return GatewayPlan(
        name=gateway.name, service=gateway.service_name,
        data_dir=DataDirPlan(directory=directory, uid=gateway.uid, gid=gateway.gid, exists=meta["kind"] == "directory",
                             meta_changed=meta["kind"] == "directory" and (meta["uid"], meta["gid"], meta["mode"]) != wanted_dir,
                             foreign_files=bool(found["foreign"])),
        env=data_file(".env", env_read, current_env, env_merge),
        config=data_file("config.yaml", config_read, current_config, config_merge),
        limits=limits, api_key=key, inputs_digest=digest,
        managed_entry=managedkeys.profile_entry(directory, salt, env_values, config_values),
    )


def _image(settings: HostSettings, facts: Facts) -> ImagePlan:
    image = settings.image
    current = imageid.identity_from_inspect(facts.image_inspect or [])
    if image.source == "pull":
        mirrored = f"{image.pull_mirror.rstrip('/')}/{image.ref}" if image.pull_mirror else None
        # What a pull brings is not known before it runs: the pinned ref stands for it.
        return ImagePlan(ref=image.ref, source="pull", present=current is not None, pull_ref=mirrored)
    archive = compose_archive(image.archive)
    mismatch = imageid.architecture_mismatch(archive.identity, facts.state.machine, ref=image.ref)
    if mismatch:
        raise PlanError(mismatch)
    remote = f"{image.remote_cache_dir}/{archive.sha256[:16]}.tar"
    return ImagePlan(ref=image.ref, source="archive",
                     present=current is not None and imageid.same_image(archive.identity, current),
                     archive_path=str(archive.path), archive_sha256=archive.sha256, remote_archive=remote,
                     archive_ref=archive.ref, cache_dir=image.remote_cache_dir,
                     identity=_identity_label(archive.identity))


def compose_archive(location: str):
    from hermes_infra.images.archive import ImageArchiveError, inspect_archive

    try:
        return inspect_archive(location)
    except (ImageArchiveError, imageid.ImageArchiveFormatError) as error:
        raise PlanError(str(error)) from None


def _identity_label(identity) -> str | None:
    if identity is None:
        return None
    return hashlib.sha256(json.dumps([list(identity.layers), identity.architecture]).encode()).hexdigest()[:16]


def _retire(settings: HostSettings, state: HostState, gateways: list[GatewaySettings]) -> RetirePlan:
    """Compare the manifest of the last deploy with this one by what each entry owns."""
    found = state.root_files.get(manifest_path(settings))
    try:
        previous = json.loads(found["text"].text) if found else {}
    except json.JSONDecodeError:
        previous = {}
    services = {g.service_name for g in gateways} | {c.name for c in settings.companions}
    data_dirs = {g.host_data_dir for g in gateways}
    projects = {(compose.project_name(c), compose.project_dir(settings, c)) for c in settings.companions}
    env_files = {compose.companion_env_path(settings, c) for c in settings.companions}
    containers, downs, files, archives, purges = [], [], [], [], []
    for name, info in sorted(previous.get("companions", {}).items()):
        project = (info.get("project"), info.get("directory"))
        if project[0] != compose.MAIN_PROJECT and project not in projects and None not in project:
            downs.append(project)
        elif project[0] == compose.MAIN_PROJECT and name not in services:
            containers.append(name)
        if info.get("env_file") and info["env_file"] not in env_files:
            files.append(info["env_file"])
    for name, info in sorted(previous.get("profiles", {}).items()):
        if info.get("service") and info["service"] not in services:
            containers.append(info["service"])
        data_dir = info.get("data_dir")
        if data_dir and data_dir not in data_dirs:
            archives.append((name, data_dir))
            if settings.purge_removed_gateways:
                purges.append(data_dir)
    return RetirePlan(tuple(containers), tuple(downs), tuple(files), tuple(archives), tuple(purges))


def _project(name: str, directory: str, text: str, services: list[str], drift_checked: tuple[str, ...],
             state: HostState) -> ProjectPlan:
    path = f"{directory}/compose.yaml"
    file = _root_file(state, path, text)
    stamp = state.root_files.get(f"{directory}/{compose.STAMP_NAME}")
    stamp_lines = stamp["text"].text.splitlines() if stamp else []
    wanted = compose.stamp_of(text)
    hashes = dict(line.split()[:2] for line in stamp_lines[1:] if len(line.split()) >= 2)
    reason = None
    if not stamp_lines or stamp_lines[0].strip() != wanted:
        reason = "the compose file changed since it was last applied"
    else:
        stopped = [s for s in services if state.containers.get(s, {}).get("state") != "running"]
        # Changed by hand since the last deploy (e.g. recreated without limits): the container's
        # config-hash label differs from the hash compose gave the service at the last `up`
        # (recorded in the stamp). Companions are not compared: with an env_file their label never
        # matches `config --hash` (compose 2.26).
        drifted = [s for s in drift_checked if s in hashes and s in state.containers
                   and state.containers[s]["config_hash"] != hashes[s]]
        unrecorded = [s for s in drift_checked if s not in hashes]
        if stopped:
            reason = f"not running: {', '.join(stopped)}"
        elif unrecorded:
            reason = f"no config hash recorded for {', '.join(unrecorded)} (applied by an older hermes-infra)"
        elif drifted:
            reason = f"changed by hand since the last deploy: {', '.join(drifted)}"
    return ProjectPlan(name=name, directory=directory, file=file, services=tuple(services),
                       drift_checked=drift_checked, up_reason=reason)


def apt_entries(path: str, text: str) -> list[tuple[str, str, str]]:
    """(URI without a trailing slash, suite, Signed-By or "") of each enabled entry of an apt source file:
    one-line `deb [signed-by=...] URI SUITE ...` in .list files, deb822 stanzas in .sources files."""
    entries = []
    if path.endswith(".sources"):
        for stanza in re.split(r"\n[ \t]*\n", text):
            fields: dict[str, str] = {}
            key = None
            for line in stanza.splitlines():
                if line.startswith("#"):
                    continue
                if line[:1].isspace() and key:
                    fields[key] += "\n" + line.strip()
                elif ":" in line:
                    key, _, value = line.partition(":")
                    key = key.strip().lower()
                    fields[key] = value.strip()
            if fields.get("enabled", "yes").lower() == "no":
                continue
            for uri in fields.get("uris", "").split():
                entries += [(uri.rstrip("/"), suite, fields.get("signed-by", "").strip())
                            for suite in fields.get("suites", "").split()]
        return entries
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        options = re.match(r"(deb|deb-src)\s+(?:\[(?P<options>[^\]]*)\]\s*)?(?P<uri>\S+)\s+(?P<suite>\S+)", line)
        if not options:
            continue
        signed = re.search(r"(?:^|\s)signed-by=(\S+)", options["options"] or "")
        entries.append((options["uri"].rstrip("/"), options["suite"], signed.group(1) if signed else ""))
    return entries


def check_other_docker_sources(state: HostState, repo_url: str, codename: str) -> None:
    """apt refuses one repository and suite listed twice with different keys ("Conflicting values
    set for option Signed-By"), and every apt-get update fails from then on: say so before any change."""
    wanted = repo_url.rstrip("/")
    for path, text in sorted(state.apt_sources.items()):
        for uri, suite, signed_by in apt_entries(path, text.text):
            # apt tells sources apart by the URI as written (http:// and https:// are two) and the suite.
            if (uri, suite) == (wanted, codename) and signed_by != DOCKER_KEYRING:
                key = f"Signed-By {signed_by}" if signed_by and "\n" not in signed_by else (
                    "an inline key" if signed_by else "no Signed-By")
                raise PlanError(
                    f"{path} already lists Docker's repository ({repo_url} {suite}) with {key}; hermes-infra's "
                    f"{DOCKER_SOURCES} lists it with Signed-By {DOCKER_KEYRING}, and apt refuses one repository "
                    "with two keys, so nothing was changed on this host. Fix: remove "
                    f"{path} (Docker's install guide writes it; hermes-infra's file replaces it), then deploy again")


def _docker(settings: HostSettings, state: HostState, os_id: str, codename: str) -> DockerPlan:
    """The engine: the packages of the chosen source for this OS, Docker's repository for it."""
    docker_settings = settings.docker
    official = docker_settings.install_source == "official"
    packages = OFFICIAL_PACKAGES if official else DISTRO_PACKAGES[os_id]
    if docker_settings.version:
        engine = ("docker-ce", "docker-ce-cli") if official else ("docker.io", "docker-cli")
        packages = tuple(f"{p}={docker_settings.version}" if p in engine else p for p in packages)
    sources, repo_url = None, ""
    if official:
        from hermes_infra.plan.render import render_template

        repo_url = docker_repository(settings, os_id)
        check_other_docker_sources(state, repo_url, codename)
        sources = _root_file(state, DOCKER_SOURCES, render_template(
            "docker.sources.j2", url=repo_url, suite=codename, keyring=DOCKER_KEYRING))
    return DockerPlan(
        install_source=docker_settings.install_source, packages=packages,
        conflicts=CONFLICTS[docker_settings.install_source],
        daemon_json=_root_file(state, DAEMON_JSON, daemon.daemon_json_text(docker_settings)),
        apt_conf=_root_file(state, APT_CONF, f'DPkg::Lock::Timeout "{settings.apt_lock_timeout_seconds}";\n'),
        sources=sources, repo_url=repo_url, users=tuple(docker_settings.users),
        packages_missing=tuple(p for p in packages if state.packages.get(p.split("=")[0]) != "installed"),
        apt_lock_holder=state.apt_lock_holder, apt_lock_timeout=settings.apt_lock_timeout_seconds,
        prerequisites_missing=tuple(p for p in PREREQUISITES if state.packages.get(p) != "installed"),
        conflicts_installed=tuple(p for p in CONFLICTS[docker_settings.install_source]
                                  if state.packages.get(p) == "installed"),
        lists_stale=state.apt_lists_age is None or state.apt_lists_age > APT_LISTS_MAX_AGE,
        service_enabled=state.docker_enabled, service_active=state.docker_active,
    )


def make_plan(settings: HostSettings, facts: Facts, host: str = "host") -> HostPlan:
    codename = check_release(settings, facts.os_release)
    os_id = host_os(facts.os_release)[0]
    state = facts.state
    check_version_pin(settings, os_id, codename)
    check_engine_conflicts(settings, state, os_id)
    check_swap_path(settings, state.swap)
    try:
        limits = derive_limits(settings, HostResources(memory_bytes=facts.memory_mb * 1024 * 1024, cpus=facts.cpus))
    except ValueError as error:
        raise PlanError(str(error)) from None
    record_file = state.root_files.get(managed_keys_path(settings))
    record = managedkeys.parse(record_file["text"].text if record_file else None)
    salt = record.salt if record is not None else managedkeys.new_salt()
    gateways = [_gateway(settings, g, state, limits[g.name], record, salt) for g in settings.gateways]
    by_name = {g.name: g for g in gateways}
    image = _image(settings, facts)

    docker_plan = _docker(settings, state, os_id, codename)

    companion_files = tuple(
        _root_file(state, compose.companion_env_path(settings, c),
                   envfile.render(compose.companion_secret_env(settings, c, by_name[gateway_for(settings, c).name].api_key)),
                   mode="0600", secret=True)
        for c in settings.companions)
    companion_digest = {f.path: hashlib.sha256(f.content.encode()).hexdigest()[:16] for f in companion_files}

    services = compose.gateway_services(settings, limits, {g.name: g.inputs_digest for g in gateways}, image.identity)
    main_services = [s.name for s in services]
    for companion in settings.companions:
        if companion.topology == "same-project":
            services.append(compose.companion_service(
                settings, companion, companion_digest[compose.companion_env_path(settings, companion)]))
            main_services.append(companion.name)
    projects = [_project(compose.MAIN_PROJECT, settings.project_dir,
                         compose.render_project(settings, compose.MAIN_PROJECT, services), main_services,
                         tuple(g.service for g in gateways), state)]
    for companion in settings.companions:
        if companion.topology != "host-gateway":
            continue
        service = compose.companion_service(settings, companion,
                                            companion_digest[compose.companion_env_path(settings, companion)])
        name = compose.project_name(companion)
        projects.append(_project(name, compose.project_dir(settings, companion),
                                 compose.render_project(settings, name, [service]), [companion.name], (), state))

    daemon_restart = docker_plan.daemon_json.content_changed and state.docker_installed
    health = []
    for gateway_settings, gateway in zip(settings.gateways, gateways):
        probe = state.probes.get(gateway.name, {})
        healthy_now = probe.get("health") == "200" and probe.get("anonymous") == "401" and probe.get("models") == "200"
        health.append(HealthPlan(
            container=gateway.service, url=probe_url(settings, gateway_settings),
            data_dir=data_dir_request(gateway_settings), timeout=settings.health.timeout_seconds,
            interval=settings.health.interval_seconds, healthy_now=healthy_now,
            # Readiness is not among the host's probes: with require_ready the gate always asks.
            gate_needed=not healthy_now or projects[0].up_reason is not None or daemon_restart
            or not image.present or settings.health.require_ready,
            require_ready=settings.health.require_ready))

    manifest = _root_file(state, manifest_path(settings), manifest_text(settings))
    managed_keys = _root_file(state, managed_keys_path(settings),
                              managedkeys.render(salt, {g.name: g.managed_entry for g in gateways}), mode="0600")
    writer = Writer(upload_dir=f"{state.ssh_home.rstrip('/') or ''}/.hermes-infra-upload", upload_user=state.ssh_user,
                    backup_dir=settings.backup_dir, backup_keep=settings.backup_keep)
    revision = revision_of(docker_plan, image, gateways, projects)
    upgrade = None
    running = [state.containers[g.service] for g in gateways if g.service in state.containers]
    image_changes = not image.present or any(
        c.get("image") not in (None, settings.image.ref)
        or (image.identity and c.get("image_identity") not in (None, image.identity)) for c in running)
    if projects[0].up_reason is not None and running and image_changes:
        upgrade = UpgradePlan(
            image_ref=settings.image.ref, project=projects[0].name, project_dir=projects[0].directory,
            services=tuple(g.service for g in gateways),
            data_dirs=tuple((g.name, g.host_data_dir) for g in settings.gateways),
            stop_grace_seconds=max(g.stop_grace_seconds for g in settings.gateways),
            backup_dir=settings.backup_dir, keep=settings.backup_keep)
    agent_file = state.root_files.get(agentfiles.record_path(settings.project_dir))
    agent_text = agent_file["text"].text if agent_file else None
    try:
        agent = agentfiles.agent_plans(settings, state.data_dirs, agent_text)
    except agentfiles.AgentCodeError as error:
        raise PlanError(str(error)) from None
    agent_record = (_root_file(state, agentfiles.record_path(settings.project_dir), agentfiles.record_text(agent), "0600")
                    if agentfiles.in_use(settings, agent_text) else None)
    try:
        firewall_plan = firewall.plan_firewall(settings, state, lambda *args: _root_file(state, *args))
    except firewall.FirewallError as error:
        raise PlanError(str(error)) from None
    try:
        sshd_plan = sshd.plan_sshd(settings, state, lambda *args: _root_file(state, *args))
    except sshd.SshdError as error:
        raise PlanError(str(error)) from None
    unattended_plan = unattended.plan_unattended(settings, state, os_id,
                                                 lambda *args: _root_file(state, *args))
    return HostPlan(
        host=host, codename=codename, writer=writer, docker=docker_plan, agent=agent, agent_record=agent_record,
        swap=SwapPlan(path=settings.swap.path, size_bytes=settings.swap.size_bytes - settings.swap.size_bytes % (1 << 20),
                      swappiness=settings.swap.swappiness, current=state.swap,
                      sysctl_file=_root_file(state, SYSCTL_FILE, f"vm.swappiness = {settings.swap.swappiness}\n")),
        image=image, retire=_retire(settings, state, list(settings.gateways)), gateways=tuple(gateways),
        companion_env_files=companion_files, manifest=manifest, managed_keys=managed_keys,
        projects=tuple(projects), health=tuple(health),
        revision=revision, deployed=_root_file(state, deployed_path(settings), revision + "\n"),
        backup_timer=_backup_timer(settings, state), upgrade=upgrade,
        alerts=alerts.plan_alerts(settings, state, host, {g.name: g.api_key for g in gateways},
                                  lambda *args: _root_file(state, *args),
                                  {g.name: g.limits.memory_bytes for g in gateways}),
        metrics=alerts.plan_metrics(settings, state, lambda *args: _root_file(state, *args)),
        firewall=firewall_plan, sshd=sshd_plan, unattended=unattended_plan,
        tls_proxy=tlsproxy.plan_tls_proxy(settings, state, lambda *args: _root_file(state, *args), settings.backup_dir),
        offsite=offsite.plan_offsite(settings, state, host, lambda *args: _root_file(state, *args)),
    )


def _backup_timer(settings: HostSettings, state: HostState) -> BackupTimerPlan:
    wanted = settings.scheduled_backups
    files: tuple[RootFilePlan, ...] = ()
    if wanted.schedule is not None:
        files = (_root_file(state, backup_timer.SCRIPT, backup_timer.script_text(settings, wanted.keep), "0700"),
                 *(_root_file(state, path, text) for path, text in backup_timer.units(wanted.schedule).items()))
    return BackupTimerPlan(calendar=wanted.schedule, files=files,
                           present=tuple(p for p in backup_timer.PATHS if state.root_files.get(p) is not None),
                           enabled=state.backup_timer_enabled, active=state.backup_timer_active)


def manifest_text(settings: HostSettings) -> str:
    profiles = {g.name: {"service": g.service_name, "data_dir": g.host_data_dir} for g in settings.gateways}
    companions = {c.name: {"project": compose.project_name(c), "directory": compose.project_dir(settings, c),
                           "env_file": compose.companion_env_path(settings, c)} for c in settings.companions}
    return json.dumps({"profiles": profiles, "companions": companions}, indent=2, sort_keys=True) + "\n"


def revision_of(docker_plan: DockerPlan, image: ImagePlan, gateways: list[GatewayPlan],
                projects: list[ProjectPlan]) -> str:
    """What is deployed, in 12 hex digits: the same settings and image give the same revision.

    Secrets enter only through the gateways' input digests (hashes), never as such.
    """
    payload = json.dumps({
        "daemon": docker_plan.daemon_json.content, "packages": docker_plan.packages, "image": image.identity or image.ref,
        "inputs": {g.name: g.inputs_digest for g in gateways},
        "compose": {p.name: compose.stamp_of(p.file.content) for p in projects},
    }, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]
