"""The control definitions: one registered function per control.

Each function gets the :class:`~hermes_infra.checks.context.HostContext` (the testinfra
`host`, the expected `HostSettings`, cached facts) and the subject (the host, a gateway
profile or a companion). It returns a short detail for the report when the host complies,
raises :class:`ControlFailure` (via ``fail``) with what was found and what was expected when
it does not, and :class:`NotApplicable` when the settings make the control moot.
"""
from __future__ import annotations

import ipaddress
import re
import shlex

from hermes_infra.host import readiness, safeio
from hermes_infra.plan import cronjobs, firewall, sshd, tlsproxy, unattended
from hermes_infra.settings import topology
from hermes_infra.checks.context import DAEMON_JSON, HostContext, Subject, probe_url
from hermes_infra.checks.registry import REGISTRY, CannotCheck, Control, NotApplicable, control, fail
from hermes_infra.plan.daemon import daemon_json
from hermes_infra.plan.hostplan import DISTRO_PACKAGES, OFFICIAL_PACKAGES
from hermes_infra.settings.schema import proxied_addresses, proxied_gateway, publish_addresses
from hermes_infra.settings.sizes import format_bytes

LOOPBACK = ("127.0.0.1", "::1")
DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")
DASHBOARD_AUTH_USER = "HERMES_DASHBOARD_BASIC_AUTH_USERNAME"
DASHBOARD_AUTH_SECRETS = ("HERMES_DASHBOARD_BASIC_AUTH_PASSWORD_HASH", "HERMES_DASHBOARD_BASIC_AUTH_PASSWORD")

REDEPLOY = "Run `hermes-infra up <target>`"


def _container(ctx: HostContext, subject: Subject) -> dict:
    record = ctx.inspect(subject.container)
    if record is None:
        fail(f"container {subject.container!r} does not exist on the host")
    return record


def _host_config(ctx: HostContext, subject: Subject) -> dict:
    return _container(ctx, subject).get("HostConfig") or {}


def _normal_ip(address: str) -> str:
    if address in ("", "localhost"):
        return {"": "0.0.0.0", "localhost": "127.0.0.1"}[address]
    try:
        return str(ipaddress.ip_address(address.strip("[]")))
    except ValueError:
        return address


def _bindings(host_config: dict, container_port: int) -> list[tuple[str, str]]:
    """(host address, host port) pairs a container port is published on."""
    found = (host_config.get("PortBindings") or {}).get(f"{container_port}/tcp") or []
    return sorted((_normal_ip(b.get("HostIp") or ""), str(b.get("HostPort") or "")) for b in found)


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.0f} MiB"


def _is_public(address: str) -> bool:
    return address in ("0.0.0.0", "::")


def _printable(name: str, limit: int = 80) -> str:
    """A name from a data dir, safe to print: the agent picks file names, so control characters
    (terminal escapes, fake report lines) are shown escaped."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)
    return shown if len(shown) <= limit else shown[: limit - 1] + "~"


def _env_path(subject: Subject) -> str:
    return f"{subject.gateway.host_data_dir.rstrip('/')}/.env"


def _major(version: str) -> int:
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


# --------------------------------------------------------------------------- Docker engine
@control("HI-DOCKER-001", "Docker service is enabled and active", severity="critical", scope="host",
         remediation="`systemctl enable --now docker`; if it does not start, read `journalctl -u docker` "
                     "(a broken /etc/docker/daemon.json is the usual cause). " + REDEPLOY + " to reinstall.")
def docker_service(ctx: HostContext, subject: Subject):
    service = ctx.host.service("docker")
    enabled, running = service.is_enabled, service.is_running
    if not (enabled and running):
        fail(f"docker.service is {'enabled' if enabled else 'not enabled'} and "
             f"{'active' if running else 'not active'}; both are required so the gateway survives a reboot")
    return "enabled and active"


@control("HI-DOCKER-002", "Docker Compose v2 is installed (`docker compose`)", severity="high", scope="host",
         remediation="Install compose v2 from the source docker.install_source names: `official`: "
                     "`docker-compose-plugin` from Docker's repository (Debian and Ubuntu); `distro`: Debian 13's "
                     "`docker-compose`, Ubuntu's `docker-compose-v2` (Ubuntu's `docker-compose` is the old Python "
                     "v1). " + REDEPLOY + ".")
def compose_v2(ctx: HostContext, subject: Subject):
    out = ctx.run("docker compose version --short 2>&1")
    version = out.stdout.strip().lstrip("v")
    major = version.split(".", 1)[0]
    if out.rc != 0 or not major.isdigit():
        fail(f"`docker compose` is not available ({out.stdout.strip()[:200] or 'no output'})" + _compose_fix(ctx))
    if int(major) < 2:
        fail(f"`docker compose` is version {version}; v2 or later is required" + _compose_fix(ctx))
    return f"docker compose {version}"


def _compose_fix(ctx: HostContext) -> str:
    """The package that brings compose v2 on this host (its os-release ID and the settings'
    install source); nothing when the OS is not one hermes-infra deploys to."""
    out = ctx.run("sed -n 's/^ID=//p' /etc/os-release 2>/dev/null")
    os_id = out.stdout.strip().strip("\"'") if out.rc == 0 else ""
    if os_id not in DISTRO_PACKAGES:
        return ""
    source = ctx.settings.docker.install_source
    packages = OFFICIAL_PACKAGES if source == "official" else DISTRO_PACKAGES[os_id]
    package = next(name for name in packages if "compose" in name)
    return f". On this {os_id.capitalize()} host with docker.install_source {source}: `apt-get install {package}`"


@control("HI-DOCKER-003", "Container logs rotate (daemon.json log driver, max-size, max-file as set)",
         severity="medium", scope="host", cis="2.13",
         rationale="Unrotated json-file logs fill the disk of a small VPS; closest CIS item is 2.13 (logging).",
         remediation=f"Set `log-driver: json-file` and `log-opts` max-size/max-file in {DAEMON_JSON} "
                     "(settings docker.log_max_size / docker.log_max_file) and restart Docker. " + REDEPLOY + ".")
def log_rotation(ctx: HostContext, subject: Subject):
    expected = daemon_json(ctx.settings.docker)
    actual = ctx.daemon_config()
    if actual is None:
        fail(f"{DAEMON_JSON} is missing: Docker's default json-file logs never rotate")
    problems = []
    if actual.get("log-driver") != expected.get("log-driver"):
        problems.append(f"log-driver is {actual.get('log-driver')!r}, want {expected.get('log-driver')!r}")
    want_opts = {k: str(v) for k, v in (expected.get("log-opts") or {}).items()}
    have_opts = {k: str(v) for k, v in (actual.get("log-opts") or {}).items()}
    for key, value in want_opts.items():
        if have_opts.get(key) != value:
            problems.append(f"log-opts.{key} is {have_opts.get(key)!r}, want {value!r}")
    effective = ctx.docker_info().get("LoggingDriver")
    if effective != expected.get("log-driver"):
        problems.append(f"the running daemon uses log driver {effective!r} (restart Docker after editing "
                        f"{DAEMON_JSON})")
    if problems:
        fail("; ".join(problems))
    return f"{expected.get('log-driver')}, " + ", ".join(f"{k}={v}" for k, v in sorted(want_opts.items()))


@control("HI-DOCKER-004", "Docker live-restore is as set (containers survive a daemon restart)",
         severity="medium", scope="host", cis="2.15",
         remediation=f"Set `\"live-restore\": true` in {DAEMON_JSON} (setting docker.live_restore) and "
                     "`systemctl reload docker`. " + REDEPLOY + ".")
def live_restore(ctx: HostContext, subject: Subject):
    want = bool(daemon_json(ctx.settings.docker).get("live-restore", False))
    have = ctx.docker_info().get("LiveRestoreEnabled")
    if have is not want:
        fail(f"the running daemon has live-restore {'enabled' if have else 'disabled'}; settings say "
             f"{'enabled' if want else 'disabled'}")
    return f"live-restore {'enabled' if want else 'disabled'}"


@control("HI-DOCKER-005", "Inter-container communication is off on the default bridge (daemon.json `icc: false`)",
         severity="medium", scope="host", cis="2.2",
         rationale="Containers started by hand land on docker0 and could reach every other one there. "
                   "Compose projects use their own networks (their own `enable_icc`), so a same-project "
                   "companion still reaches its gateway and a host-gateway companion goes through a "
                   "published port.",
         remediation=f"Set `\"icc\": false` in {DAEMON_JSON} (hermes-infra writes it unless "
                     "docker.daemon_options overrides it) and restart Docker with no container running: "
                     "with live-restore on, dockerd keeps the old default-bridge settings while containers "
                     "run (`docker stop $(docker ps -q) && systemctl restart docker`, then "
                     "`hermes-infra up <target>`).")
def daemon_icc(ctx: HostContext, subject: Subject):
    wanted = daemon_json(ctx.settings.docker).get("icc", True)
    if wanted is not False:
        raise NotApplicable(f"docker.daemon_options sets icc to {wanted!r}: inter-container communication on "
                            "the default bridge is left on deliberately")
    config = ctx.daemon_config()
    if config is None:
        fail(f"{DAEMON_JSON} is missing: Docker's default allows traffic between all containers on docker0")
    problems = []
    if config.get("icc", True) is not False:
        problems.append(f"{DAEMON_JSON} has icc {config.get('icc', 'unset (default true)')!r}, want false")
    running = ctx.default_bridge_options().get("com.docker.network.bridge.enable_icc", "true")
    if running != "false":
        problems.append(f"the running default bridge has enable_icc={running} (restart Docker with no container "
                        "running to apply daemon.json)")
    if problems:
        fail("; ".join(problems))
    return "icc false in daemon.json; default bridge enable_icc=false"


@control("HI-DOCKER-006", "Containers cannot gain new privileges by default (daemon.json `no-new-privileges`)",
         severity="medium", scope="host", cis="2.14",
         rationale="setuid/setgid binaries and file capabilities grant nothing in any container, including "
                   "one-off containers started by hand (each hermes-infra service also sets it: HI-CTR-009).",
         remediation=f"Set `\"no-new-privileges\": true` in {DAEMON_JSON} (hermes-infra writes it unless "
                     "docker.daemon_options overrides it) and `systemctl restart docker`. " + REDEPLOY + ".")
def daemon_no_new_privileges(ctx: HostContext, subject: Subject):
    wanted = daemon_json(ctx.settings.docker).get("no-new-privileges", False)
    if wanted is not True:
        raise NotApplicable(f"docker.daemon_options sets no-new-privileges to {wanted!r}: the daemon-wide "
                            "default is left off deliberately (every hermes-infra service still sets it)")
    config = ctx.daemon_config()
    if config is None:
        fail(f"{DAEMON_JSON} is missing: containers may gain privileges through setuid binaries by default")
    if config.get("no-new-privileges") is not True:
        fail(f"{DAEMON_JSON} has no-new-privileges {config.get('no-new-privileges', 'unset (default false)')!r}, "
             "want true")
    info = ctx.docker_info()
    options = " ".join(info.get("SecurityOptions") or [])
    if "name=no-new-privileges" in options:
        return "no-new-privileges in daemon.json and active in the running daemon"
    version = str(info.get("ServerVersion") or "")
    # `docker info` lists it since Docker 24/25 (moby#45320); older engines never say.
    if _major(version) >= 25:
        fail(f"{DAEMON_JSON} sets no-new-privileges but the running daemon (Docker {version}) does not apply it: "
             "restart Docker")
    return f"no-new-privileges in daemon.json (Docker {version or '?'} does not report it in `docker info`)"


# -------------------------------------------------------------------------------- host
@control("HI-HOST-001", "Swap is active, at least the configured size", severity="medium", scope="host",
         rationale="Without swap the kernel OOM-kills the gateway on the first memory spike.",
         remediation="Create and enable the swap file (setting swap.size / swap.path): "
                     "`swapon <path>` if it exists, and keep it in /etc/fstab. " + REDEPLOY + ".")
def swap_active(ctx: HostContext, subject: Subject):
    swap = ctx.settings.swap
    if swap.size_bytes == 0:
        raise NotApplicable("swap.size is 0: no swap file is managed")
    out = ctx.run("cat /proc/swaps")
    devices = {}
    for line in out.stdout.splitlines()[1:]:
        cells = line.split()
        if len(cells) >= 3 and cells[2].isdigit():
            devices[cells[0]] = int(cells[2]) * 1024
    total = sum(devices.values())
    # mkswap keeps one page for its header; allow a MiB for it.
    shown = ", ".join(f"{d} {_mib(s)}" for d, s in devices.items()) or "no active swap"
    if total + 1024 * 1024 < swap.size_bytes:
        fail(f"active swap is {_mib(total)} ({shown}); settings say at least {swap.size}")
    return shown


@control("HI-HOST-002", "vm.swappiness is as set", severity="low", scope="host",
         remediation="`sysctl -w vm.swappiness=<value>` and persist it in /etc/sysctl.d/ "
                     "(setting swap.swappiness). " + REDEPLOY + ".")
def swappiness(ctx: HostContext, subject: Subject):
    want = ctx.settings.swap.swappiness
    have = ctx.host.sysctl("vm.swappiness")
    if have != want:
        fail(f"vm.swappiness is {have}; settings say {want}")
    return f"vm.swappiness = {have}"


@control("HI-SSH-001", "SSH password login is disabled", severity="advisory", scope="host",
         rationale="Hosts exposed to the internet are brute-forced within minutes; keys only.",
         remediation="In /etc/ssh/sshd_config.d/ set `PasswordAuthentication no` and "
                     "`KbdInteractiveAuthentication no`, make sure your key works, then `systemctl reload ssh`.")
def ssh_password_login(ctx: HostContext, subject: Subject):
    out = ctx.run("sshd=$(command -v sshd || echo /usr/sbin/sshd); $sshd -T 2>&1")
    options = {}
    for line in out.stdout.splitlines():
        key, _, value = line.strip().partition(" ")
        options[key.lower()] = value.strip().lower()
    if out.rc != 0 or "passwordauthentication" not in options:
        raise CannotCheck(f"cannot read the effective sshd configuration with `sshd -T` (needs root): "
             f"{out.stdout.strip()[:200]}")
    enabled = [name for name in ("passwordauthentication", "kbdinteractiveauthentication")
               if options.get(name, "no") != "no"]
    if enabled:
        fail(f"sshd allows password-style login: {', '.join(f'{n} {options[n]}' for n in enabled)}")
    return "passwordauthentication no, kbdinteractiveauthentication no"


# ---------------------------------------------------------------------------- data dir
@control("HI-DATA-001", "Data dir is owned by the container user and closed to others", severity="high",
         scope="gateway",
         rationale="The image's user (uid/gid 10000) must own /opt/data; other users must not read the "
                   "gateway's credentials and state.",
         remediation="`chown <uid>:<gid> <data dir> && chmod 0700 <data dir>` (settings gateways[].uid/gid; the "
                     "data dir itself, never `-R`, never a path inside it). " + REDEPLOY + ".")
def data_dir_owner(ctx: HostContext, subject: Subject):
    gateway = subject.gateway
    path = gateway.host_data_dir
    ctx.require_access(path)
    # lstat (no -L): a data dir that is a symbolic link is reported, not followed.
    out = ctx.run(f"LC_ALL=C stat -c '%F|%u|%g|%a' -- {shlex.quote(path)} 2>/dev/null || echo missing")
    kind, uid, gid, mode = (out.stdout.strip().split("|") + ["", "", "", ""])[:4]
    if kind != "directory":
        fail(f"{path} is missing" if kind in ("", "missing") else f"{path} is a {kind}, not a directory")
    uid, gid, mode = int(uid), int(gid), int(mode, 8)
    problems = []
    if (uid, gid) != (gateway.uid, gateway.gid):
        problems.append(f"owner is {uid}:{gid}, want {gateway.uid}:{gateway.gid}")
    if mode & 0o077:
        problems.append(f"mode is {mode:04o}: group/others have access, want 0700")
    if problems:
        fail(f"{path}: " + "; ".join(problems))
    return f"{path} {uid}:{gid} {mode:04o}"


@control("HI-DATA-002", "Data dir holds no files owned by another user", severity="medium", scope="gateway",
         rationale="Files written as root (e.g. by `docker exec` or an editor run as root) later break the "
                   "gateway: 401s, lost logins.",
         remediation="Run `hermes-infra up <target>`: it gives such files back to the container user without "
                     "following links (`find -execdir chown -h`). Never `chown -R` a data dir as root: it follows "
                     "links planted there. Write into the data dir as the container's own user (`docker compose "
                     "run --rm`), not as root.")
def data_dir_foreign_files(ctx: HostContext, subject: Subject):
    gateway = subject.gateway
    path = gateway.host_data_dir
    ctx.require_access(path)
    quoted = shlex.quote(path)
    # find never follows links (-P) nor leaves the filesystem; only names and owners come back,
    # NUL-separated because the agent picks the names (newlines included).
    out = ctx.run(f"if [ -d {quoted} ] && [ ! -L {quoted} ]; then "
                  f"find {quoted} -xdev \\( ! -uid {int(gateway.uid)} -o ! -gid {int(gateway.gid)} \\) "
                  "-printf '%u:%g %P\\0' 2>/dev/null | head -z -n 6; else echo notdir; fi")
    if out.stdout.strip() == "notdir":
        raise NotApplicable(f"{path} is not a directory (HI-DATA-001 reports it)")
    foreign = [_printable(item) for item in out.stdout.split("\0") if item.strip()]
    if foreign:
        fail(f"owned by another user in {path}: " + ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else ""))
    return f"everything in {path} belongs to {gateway.uid}:{gateway.gid}"


def _env_not_regular(facts, gateway) -> str:
    """What was found instead of a regular `.env`, and how to fix it without root touching a path
    in the data dir: `cd` as root (the owner cannot traverse /root), then act as the owner."""
    owner = (f"cd {shlex.quote(gateway.host_data_dir)} && setpriv --reuid={int(gateway.uid)} "
             f"--regid={int(gateway.gid)} --clear-groups --")
    fixes = {
        "symlink": f"move the link aside as the owner (`{owner} mv -T .env .env.suspect`; `ls -l` shows where it "
                   "pointed), then `hermes-infra up <target>` writes a regular .env (copy your own keys back by hand)",
        "fifo": f"remove it as the owner (`{owner} rm .env`), then `hermes-infra up <target>` writes a regular .env",
        "directory": f"move it aside as the owner (`{owner} mv -T .env .env.suspect`), then `hermes-infra up <target>`",
        "hardlink": f"give it its own copy as the owner (`{owner} sh -c 'umask 077 && cp .env .env.new && "
                    "mv -T .env.new .env'`), then look for the other name",
        "changed": "run the check again; if it keeps changing, something in the container rewrites .env",
        "toolarge": "look at what grew it (a .env is a few KiB) and trim it as the owner, then redeploy",
    }
    fix = fixes.get(facts.kind, f"move it aside as the owner (`{owner} mv -T .env .env.suspect`), then "
                                "`hermes-infra up <target>` writes a regular .env")
    return f"{facts.path} is {facts.describe()}. Fix: {fix}"


@control("HI-DATA-003", "`.env` is a regular file with mode 0600 that belongs to the container user",
         severity="high", scope="gateway",
         rationale="`.env` holds API_SERVER_KEY and every provider and bot secret. The agent owns the data dir, "
                   "so a link, FIFO, directory or hard link in its place is examined, never followed or opened.",
         remediation="Run `hermes-infra up <target>`: it rewrites `.env` as the container user with mode 0600, "
                     "replacing a planted link instead of following it. By hand, act as the owner, never as root "
                     "on a path in the data dir: `cd <data dir> && setpriv --reuid=<uid> --regid=<gid> "
                     "--clear-groups -- chmod 0600 .env`. A link, FIFO or directory named .env: move it aside "
                     "first (the failure message says how), then redeploy.")
def env_file_mode(ctx: HostContext, subject: Subject):
    gateway = subject.gateway
    path = _env_path(subject)
    ctx.require_access(gateway.host_data_dir)
    env = ctx.env_facts(gateway)
    if env.directory != "present":
        fail(f"{path} is {env.describe()} (HI-DATA-001 reports the data dir)")
    if env.kind == "missing":
        fail(f"{path} is missing")
    if env.kind != "regular":
        fail(_env_not_regular(env, gateway))
    problems = []
    if env.mode != 0o600:
        problems.append(f"mode is {env.mode:04o}, want 0600")
    if (env.uid, env.gid) != (gateway.uid, gateway.gid):
        problems.append(f"owner is {env.uid}:{env.gid}, want {gateway.uid}:{gateway.gid}")
    if problems:
        fail(f"{path}: " + "; ".join(problems))
    return f"{path} regular file {env.mode:04o} {env.uid}:{env.gid}"


@control("HI-DATA-004", "API key meets Hermes's rules (>= 16 characters, not a placeholder)",
         severity="critical", scope="gateway",
         rationale="With a short or placeholder key Hermes silently does not start the API server.",
         remediation="Remove the API_SERVER_KEY line from `.env` and redeploy (a random key is generated), or "
                     "set gateways[].api.key to a random value (`openssl rand -hex 24`).")
def api_key_rules(ctx: HostContext, subject: Subject):
    import hashlib

    from hermes_infra.settings.schema import MIN_API_KEY_LENGTH

    gateway = subject.gateway
    path = _env_path(subject)
    configured = gateway.api.key.get_secret_value() if gateway.api.key is not None else None
    ctx.require_access(gateway.host_data_dir)
    env = ctx.env_facts(gateway)
    if env.directory != "present" or env.kind == "missing":
        fail(f"{path} is {env.describe()}")
    if env.kind != "regular":
        fail(f"API_SERVER_KEY was not read: {path} is {env.describe()} (HI-DATA-003 says how to fix it)")
    facts = env.api_key(want_digest=configured is not None)
    if facts["state"] != "present":
        fail({"unset": f"API_SERVER_KEY is not set in {path}"}.get(facts["state"], f"cannot read {path}"))
    if facts["length"] < MIN_API_KEY_LENGTH:
        fail(f"API_SERVER_KEY in {path} is {facts['length']} characters long; Hermes needs {MIN_API_KEY_LENGTH}")
    # The same rules as settings.check_api_key (which needs the key itself).
    if facts["placeholder"] or facts["distinct"] <= 2:
        fail(f"API_SERVER_KEY in {path} is a placeholder value, which Hermes refuses")
    if configured is not None and facts["sha256"] != hashlib.sha256(configured.encode()).hexdigest():
        fail(f"API_SERVER_KEY in {path} is not the key set in gateways[{gateway.name}].api.key")
    return f"{facts['length']} characters, not a placeholder (value not shown)"


# -------------------------------------------------------------------------- containers
@control("HI-DATA-005", "SQLite databases pass integrity_check and are safe from the WAL-reset bug "
         "(SQLite >= 3.51.3, or no database in WAL mode)", severity="high", scope="gateway",
         rationale="`state.db` corrupted is what Hermes users on VPSes lose most. SQLite 3.7.0 to 3.51.2 has the "
                   "WAL-reset bug: with several connections writing a WAL database, a checkpoint racing a WAL reset "
                   "can drop pages of a committed transaction, silently. Hermes 0.19.0 opens state.db and its other "
                   "stores in WAL mode, from several threads and processes, through Python's sqlite3, which links the "
                   "system library: the registry-free image runs Debian 13's 3.46.1 (vulnerable); upstream's images "
                   "build 3.53.4 and refuse WAL on an older library. Read in the running container as its user "
                   "(`docker exec`, databases opened read-only), so it is the library Hermes itself loads.",
         remediation="Run an image whose SQLite is >= 3.51.3 (the official image, setting image.ref), then "
                     "`hermes-infra up <target>`. Meanwhile keep backups (scheduled_backups, with offsite). A database "
                     "failing integrity_check: stop the gateway, `hermes-infra backup` it for the record, then "
                     "`hermes sessions recover --output NEW.db` (upstream) or `hermes-infra restore` an earlier backup.")
def sqlite_safety(ctx: HostContext, subject: Subject):
    from hermes_infra.plan import sqlitecheck

    gateway = subject.gateway
    state = (_container(ctx, subject).get("State") or {})
    if not state.get("Running"):
        raise NotApplicable(f"{subject.container} is not running (HI-CTR-001 reports it)")
    out = ctx.run(sqlitecheck.exec_command(subject.container, gateway.uid, gateway.gid))
    report = sqlitecheck.parse_report(out.stdout)
    if report is None:
        raise CannotCheck(f"the SQLite probe in {subject.container} gave no report (exit {out.rc}): "
                          f"{_printable(out.stderr.strip(), 200)}")
    found = sqlitecheck.problems(report)
    if found:
        fail(f"SQLite {report['sqlite_version']}: " + "; ".join(f"{_printable(name)}: {_printable(why, 200)}"
                                                             for name, why in found[:5]))
    modes = sorted({entry["journal_mode"] or "-" for entry in report["databases"].values()})
    return (f"SQLite {report['sqlite_version']}, {len(report['databases'])} databases "
            f"({', '.join(modes) or 'none'}), integrity ok")


def _listed_jobs(ctx: HostContext, gateway) -> list[cronjobs.ListedJob]:
    """The gateway's `cron/jobs.json`, read as its owner (never followed), parsed as data."""
    out = ctx.run(safeio.read_script(gateway.host_data_dir, [cronjobs.JOBS_FILE], gateway.uid, gateway.gid, "jobs"))
    reads = safeio.parse_reads(out.stdout.splitlines()).get("jobs", {"dir": "missing", "files": {}})
    if reads["dir"] != "present":
        raise CannotCheck(f"{gateway.host_data_dir} is {reads['dir']} (HI-DATA-001 reports it)")
    found = reads["files"].get(cronjobs.JOBS_FILE)
    if found is None or found.kind == "missing":
        return []
    if found.kind != "regular":
        fail(f"{gateway.host_data_dir}/{cronjobs.JOBS_FILE} is not a regular file ({found.kind}): Hermes's jobs cannot "
             "be read")
    try:
        return cronjobs.parse_jobs(found.text)
    except ValueError as error:
        fail(f"{gateway.host_data_dir}/{cronjobs.JOBS_FILE} is not the job list Hermes writes ({error})")


@control("HI-AGT-001", "Every cron job in the settings exists in Hermes and is enabled (or paused, as set)",
         severity="medium", scope="scheduled",
         rationale="A scheduled job the settings declare (a morning brief, a check that sends to WeChat) that is "
                   "missing, paused by hand or changed never runs, and nothing else says so.",
         remediation=REDEPLOY + ": it creates, edits, resumes or pauses the `hermes-infra/<name>` jobs through the "
                     "Hermes CLI. Jobs made by hand are not checked.")
def cron_jobs_present(ctx: HostContext, subject: Subject):
    gateway = subject.gateway
    ctx.require_access(gateway.host_data_dir)
    listed = {job.managed_name: job for job in reversed(_listed_jobs(ctx, gateway)) if job.managed_name}
    problems, shown = [], []
    for desired in cronjobs.desired_jobs(gateway):
        job = listed.get(desired.name)
        if job is None:
            problems.append(f"{desired.hermes_name} is missing")
            continue
        fields = cronjobs.differences(desired, job)
        if "enabled" in fields:
            problems.append(f"{desired.hermes_name} is {'paused' if desired.enabled else 'enabled'}, want "
                            f"{'enabled' if desired.enabled else 'paused'}")
        other = [name for name in fields if name != "enabled"]
        if other:
            problems.append(f"{desired.hermes_name} differs from the settings: {', '.join(other)}")
        last = f"last run {_printable(job.last_run_at or 'never', 40)}"
        shown.append(f"{desired.hermes_name} ({last}{', ' + _printable(job.last_status, 40) if job.last_status else ''})")
    if problems:
        fail("; ".join(problems))
    return "; ".join(shown)


@control("HI-CTR-001", "Container is running", severity="critical", scope="container",
         remediation="`docker compose -p <project> -f <project dir>/compose.yaml up -d`, then read "
                     "`docker logs <container>` if it stops again. " + REDEPLOY + ".")
def container_running(ctx: HostContext, subject: Subject):
    state = _container(ctx, subject).get("State") or {}
    if not state.get("Running") or state.get("Restarting"):
        fail(f"container {subject.container!r} is {state.get('Status', 'unknown')}"
             f" (exit code {state.get('ExitCode')})")
    return f"running since {state.get('StartedAt', '?')[:19]}"


@control("HI-CTR-002", "Restart policy is as configured", severity="medium", scope="container", cis="5.15",
         remediation="Set `restart:` in the compose file from the settings (gateways[].restart / "
                     "companions[].restart) and recreate the container. " + REDEPLOY + ".")
def restart_policy(ctx: HostContext, subject: Subject):
    want = ctx.expectation(subject).restart
    have = (_host_config(ctx, subject).get("RestartPolicy") or {}).get("Name") or "no"
    if have != want:
        fail(f"restart policy is {have!r}; settings say {want!r}")
    return f"restart: {have}"


@control("HI-CTR-003", "Memory limit is set to the configured or derived value", severity="high",
         scope="container", cis="5.11",
         remediation="Set `mem_limit` in the compose file (settings gateways[].limits.memory, unset = derived "
                     "from the host's RAM) and recreate the container. " + REDEPLOY + ".")
def memory_limit(ctx: HostContext, subject: Subject):
    want = ctx.expectation(subject).memory_bytes
    have = int(_host_config(ctx, subject).get("Memory") or 0)
    if have <= 0:
        fail(f"no memory limit; want {format_bytes(want)}")
    if have != want:
        fail(f"memory limit is {format_bytes(have)}; want {format_bytes(want)}")
    return f"mem_limit {format_bytes(have)}"


@control("HI-CTR-004", "CPU limit is set to the configured or derived value", severity="medium",
         scope="container", cis="5.12",
         remediation="Set `cpus` in the compose file (settings gateways[].limits.cpus, unset = derived from the "
                     "host's cores) and recreate the container. " + REDEPLOY + ".")
def cpu_limit(ctx: HostContext, subject: Subject):
    want = ctx.expectation(subject).cpus
    host_config = _host_config(ctx, subject)
    nano = int(host_config.get("NanoCpus") or 0)
    if not nano and host_config.get("CpuQuota") and host_config.get("CpuPeriod"):
        nano = int(host_config["CpuQuota"] * 1_000_000_000 // host_config["CpuPeriod"])
    if nano <= 0:
        fail(f"no CPU limit; want cpus {want:g}")
    if nano != round(want * 1_000_000_000):
        fail(f"CPU limit is {nano / 1e9:g} CPUs; want {want:g}")
    return f"cpus {nano / 1e9:g}"


@control("HI-CTR-005", "PIDs limit is set to the configured value", severity="medium", scope="container",
         cis="5.29",
         remediation="Set `pids_limit` in the compose file (setting gateways[].limits.pids) and recreate the "
                     "container. " + REDEPLOY + ".")
def pids_limit(ctx: HostContext, subject: Subject):
    want = ctx.expectation(subject).pids
    have = _host_config(ctx, subject).get("PidsLimit")
    if not have or have <= 0:
        fail(f"no PIDs limit; want {want}")
    if have != want:
        fail(f"PIDs limit is {have}; want {want}")
    return f"pids_limit {have}"


@control("HI-CTR-006", "Container is not privileged", severity="critical", scope="container", cis="5.5",
         remediation="Remove `privileged: true` from the compose file and recreate the container.")
def not_privileged(ctx: HostContext, subject: Subject):
    if _host_config(ctx, subject).get("Privileged"):
        fail("the container runs privileged: it has every capability and all host devices")
    return "not privileged"


@control("HI-CTR-007", "Container does not share the host's network namespace", severity="high",
         scope="container", cis="5.10",
         rationale="Upstream's compose uses `network_mode: host`, which exposes every port Hermes opens on "
                   "every host interface.",
         remediation="Remove `network_mode: host` and publish only the API port on the configured addresses. "
                     + REDEPLOY + ".")
def no_host_network(ctx: HostContext, subject: Subject):
    mode = _host_config(ctx, subject).get("NetworkMode") or ""
    if mode == "host":
        fail("network mode is 'host'")
    return f"network mode {mode or 'default'}"


@control("HI-CTR-008", "Docker socket is not mounted into the container", severity="critical",
         scope="container", cis="5.32",
         rationale="Whoever reaches the socket is root on the host; the agent runs tools.",
         remediation="Remove the docker.sock volume from the compose file (companions[].volumes) and recreate "
                     "the container.")
def no_docker_socket(ctx: HostContext, subject: Subject):
    mounts = _container(ctx, subject).get("Mounts") or []
    sockets = [m.get("Source", "") for m in mounts
               if m.get("Source", "") in DOCKER_SOCKETS or m.get("Source", "").endswith("/docker.sock")]
    if sockets:
        fail(f"mounts the Docker socket: {', '.join(sockets)}")
    return f"{len(mounts)} mount(s), no Docker socket"


@control("HI-CTR-009", "no-new-privileges is set", severity="high", scope="container", cis="5.26",
         remediation="Add `security_opt: [\"no-new-privileges:true\"]` to the service and recreate the "
                     "container. " + REDEPLOY + ".")
def no_new_privileges(ctx: HostContext, subject: Subject):
    options = _host_config(ctx, subject).get("SecurityOpt") or []
    for option in options:
        name, _, value = option.replace("=", ":").partition(":")
        if name.strip() == "no-new-privileges" and value.strip().lower() in ("", "true"):
            return option
    fail(f"security options are {options or 'empty'}; `no-new-privileges:true` is missing")


# Capabilities that must never reach container root: MKNOD makes device nodes of the host's
# disks in the data dir (then read by host-side tools, F1), NET_RAW forges packets on the bridge.
MUST_DROP = ("MKNOD", "NET_RAW")


def _capability(name: str) -> str:
    return str(name).upper().removeprefix("CAP_")


@control("HI-CTR-012", "MKNOD and NET_RAW are dropped (cap_drop)", severity="high", scope="container",
         cis="5.4",
         rationale="Docker's default capabilities give container root CAP_MKNOD (a device node of the host's "
                   "disk planted in the data dir) and CAP_NET_RAW (forged packets on the bridge). Neither "
                   "image needs them.",
         remediation="hermes-infra's compose file drops them (`cap_drop: [ALL]` plus the few the init needs for "
                     "gateways); a container made by hand or by an older hermes-infra does not. " + REDEPLOY + ".")
def dangerous_capabilities_dropped(ctx: HostContext, subject: Subject):
    config = _host_config(ctx, subject)
    dropped = {_capability(c) for c in config.get("CapDrop") or []}
    added = {_capability(c) for c in config.get("CapAdd") or []}
    kept = [c for c in MUST_DROP if c in added or not ({"ALL", c} & dropped)]
    if kept:
        fail(f"the container keeps {', '.join(kept)} (CapDrop {sorted(dropped) or 'empty'}, "
             f"CapAdd {sorted(added) or 'empty'})")
    return f"CapDrop {', '.join(sorted(dropped))}" + (f"; CapAdd {', '.join(sorted(added))}" if added else "")


@control("HI-CTR-013", "Gateway keeps the image's own init (no `init: true`)", severity="high",
         scope="gateway",
         rationale="The official image runs s6-overlay as PID 1, which supervises the gateway, the dashboard "
                   "and every profile's gateway. With Docker's `init: true` (tini as PID 1) its entrypoint "
                   "only logs a warning and runs the command unsupervised: a crashed gateway stays down "
                   "inside a running container, and no dashboard or profile gateway starts.",
         remediation="Remove `init: true` (or `--init`) from the compose file or the `docker run` command. "
                     + REDEPLOY + ".")
def image_init_kept(ctx: HostContext, subject: Subject):
    if _host_config(ctx, subject).get("Init"):
        fail("the container runs with Docker's init (`init: true`): the image's own init is not PID 1")
    return "the image's entrypoint is PID 1"


@control("HI-CTR-010", "Image is the configured, pinned one (not `latest`)", severity="medium",
         scope="container",
         rationale="A moving tag silently changes the version on the next pull or redeploy.",
         remediation="Pin a tested tag in image.ref (or companions[].image) and redeploy; do not use `latest`.")
def image_pinned(ctx: HostContext, subject: Subject):
    expectation = ctx.expectation(subject)
    have = (_container(ctx, subject).get("Config") or {}).get("Image", "")
    name_part = have.rsplit("/", 1)[-1]
    unpinned = ("@" not in have and ":" not in name_part) or have.endswith(":latest")
    if have != expectation.image:
        fail(f"runs image {have!r}; settings say {expectation.image!r}")
    if unpinned and not expectation.allow_latest:
        fail(f"image {have!r} is not pinned to a version")
    return have


def _duration(nanoseconds) -> str:
    seconds = int(nanoseconds or 0) // 1_000_000_000
    return f"{seconds}s" if seconds else "Docker's default"


@control("HI-CTR-011", "Gateway has a health check and it is healthy", severity="high", scope="gateway",
         cis="5.27",
         rationale="Without a health check `docker ps` shows a gateway whose API server never started as \"Up\"; "
                   "Hermes keeps its process alive when the API fails. The check runs inside the container "
                   "(bash /dev/tcp to port 8642, `GET /health`), so it needs no curl in the image.",
         remediation="Recreate the gateway from the deployed compose file (`hermes-infra up <target>`), which "
                     "has a `healthcheck:`. If it is unhealthy, read `docker inspect --format '{{json "
                     ".State.Health}}' <container>` and `docker logs <container>` (API_SERVER_KEY, aiohttp).")
def gateway_health(ctx: HostContext, subject: Subject):
    record = _container(ctx, subject)
    config = (record.get("Config") or {}).get("Healthcheck") or {}
    test = list(config.get("Test") or [])
    if not test or test[0] == "NONE":
        fail(f"container {subject.container!r} has no health check ({'disabled' if test else 'none configured'}): "
             "an API that stopped answering still shows as Up")
    state = record.get("State") or {}
    if not state.get("Running"):
        fail(f"container {subject.container!r} is {state.get('Status', 'not running')}: its health check does not run")
    health = state.get("Health") or {}
    status = health.get("Status") or "none"
    every = _duration(config.get("Interval"))
    if status == "healthy":
        return f"healthy (checked every {every})"
    if status == "starting":
        return (f"starting: no verdict yet (within its start period or before the first probe, every {every}); "
                "counted as a pass")
    if status == "unhealthy":
        log = health.get("Log") or []
        last = log[-1] if log else {}
        fail(f"unhealthy: the last {health.get('FailingStreak', '?')} probe(s) failed (last exit code "
             f"{last.get('ExitCode', '?')}); `docker inspect --format '{{{{json .State.Health}}}}' "
             f"{subject.container}` shows their output")
    fail(f"health status is {status!r}, want healthy")


# ------------------------------------------------------------------------------- API
@control("HI-API-001", "API port is published only on the configured addresses (never 0.0.0.0 unless allowed)",
         severity="high", scope="gateway", cis="5.14",
         rationale="Published ports bypass ufw; an API on 0.0.0.0 is open to the internet.",
         remediation="Publish the API on 127.0.0.1 (and the docker bridge address for companions): settings "
                     "gateways[].api.publish_addresses; `allow_public` only behind a firewall. " + REDEPLOY + ".")
def api_port_binding(ctx: HostContext, subject: Subject):
    gateway = subject.gateway
    want = sorted((_normal_ip(a), str(gateway.api.port)) for a in publish_addresses(ctx.settings, gateway))
    have = _bindings(_host_config(ctx, subject), 8642)
    public = [a for a, _ in have if _is_public(a)]
    shown = ", ".join(f"{a}:{p}" for a, p in have) or "nothing"
    if public and not gateway.api.allow_public:
        fail(f"the API is published on {shown}: {', '.join(public)} is every interface and "
             f"gateways[{gateway.name}].api.allow_public is false")
    if have != want:
        fail(f"the API is published on {shown}; settings say {', '.join(f'{a}:{p}' for a, p in want)}")
    return f"published on {shown}"


@control("HI-API-002", "Dashboard is not published on a non-loopback address without authentication",
         severity="critical", scope="gateway",
         rationale="Exposed Hermes dashboards were used to plant SSH-key backdoors.",
         remediation="Publish the dashboard on 127.0.0.1 and use an SSH tunnel, or set "
                     "gateways[].dashboard.basic_auth_username and basic_auth_password_hash. " + REDEPLOY + ".")
def dashboard_exposure(ctx: HostContext, subject: Subject):
    gateway = subject.gateway
    have = _bindings(_host_config(ctx, subject), 9119)
    exposed = [f"{a}:{p}" for a, p in have if a not in LOOPBACK]
    if not have:
        return "dashboard not published"
    if not exposed:
        return f"dashboard on loopback only ({', '.join(f'{a}:{p}' for a, p in have)})"
    env = ctx.env_facts(gateway)
    if not env.usable:
        fail(f"the dashboard is published on {', '.join(exposed)} and basic auth cannot be confirmed: "
             f"{env.path} is {env.describe()}")
    keys = env.keys
    if DASHBOARD_AUTH_USER not in keys or not any(k in keys for k in DASHBOARD_AUTH_SECRETS):
        fail(f"the dashboard is published on {', '.join(exposed)} and no basic auth is configured in .env")
    return f"dashboard on {', '.join(exposed)} with basic auth"


@control("HI-API-003", "`/health` answers 200 (sent without `Origin`)", severity="critical", scope="gateway",
         rationale="A live process proves nothing: Hermes keeps running when its API server fails to start.",
         remediation="Read `docker logs <container>`: check API_SERVER_KEY in .env, aiohttp in the image and the "
                     "port mapping. " + REDEPLOY + ".")
def health_endpoint(ctx: HostContext, subject: Subject):
    url = probe_url(ctx.settings, subject.gateway) + "/health"
    status = ctx.http_status(url)
    if status == "nohttpclient":
        fail("neither curl nor python3 is installed on the host to probe the API")
    if status != "200":
        fail(f"GET {url} answered {status if status != '000' else 'nothing (connection failed)'}; want 200")
    return f"GET {url} -> 200"


@control("HI-API-004", "`/v1/models` refuses a request without the key (401) and accepts the key",
         severity="critical", scope="gateway",
         remediation="Make sure API_SERVER_KEY is set in .env (>= 16 characters) and that nothing in front of "
                     "the API strips or adds authentication. " + REDEPLOY + ".")
def api_requires_key(ctx: HostContext, subject: Subject):
    gateway = subject.gateway
    url = probe_url(ctx.settings, gateway) + "/v1/models"
    anonymous = ctx.http_status(url)
    if anonymous == "nohttpclient":
        fail("neither curl nor python3 is installed on the host to probe the API")
    if anonymous != "401":
        fail(f"GET {url} without a key answered {anonymous if anonymous != '000' else 'nothing'}; want 401")
    ctx.require_access(gateway.host_data_dir)
    env, authed = ctx.authed_status(gateway, "/v1/models")
    if not env.usable:
        raise CannotCheck(f"the key was not sent: {env.path} is {env.describe()} (HI-DATA-003 reports it)")
    if authed == "notrunning":
        # Whoever answered on the published port is not the gateway: the key is not sent (HI-CTR-001).
        fail(f"container {gateway.service_name!r} is not running, so the key was not sent to whoever answers {url}")
    if authed != "200":
        fail(f"GET /v1/models of the running container with the key from .env answered "
             f"{authed if authed != '000' else 'nothing'}; want 200")
    return ("401 without the key on the published port, 200 with it on the container's own address "
            "(the key went through a pipe, never shown)")


@control("HI-API-005", "Gateway is ready, not just alive (`/health/detailed` says `status: ok`)",
         severity="advisory", scope="gateway",
         rationale="`/health` answers 200 for a gateway that cannot answer a message: without a model provider "
                   "every chat answers 500. Only `/health/detailed` (key required) says so, and it answers 200 "
                   "when degraded, so its `status` and failing `readiness.checks` are read. Advisory: a fresh "
                   "gateway without a provider is a setup step, not a broken host.",
         remediation="For a failing `model` check set `gateways[].config.model` (provider, default, base_url for "
                     "custom, api_key: see \"The model provider\" in the README). For other checks read "
                     "`hermes-infra status`. " + REDEPLOY + ".")
def gateway_ready(ctx: HostContext, subject: Subject):
    gateway = subject.gateway
    ctx.require_access(gateway.host_data_dir)
    env, code, body = ctx.authed_body(gateway, "/health/detailed")
    if not env.usable:
        raise CannotCheck(f"the key was not sent: {env.path} is {env.describe()} (HI-DATA-003 reports it)")
    if code == "notrunning":
        raise CannotCheck(f"container {gateway.service_name!r} is not running (HI-CTR-001 reports it)")
    if code == "nocurl":
        raise CannotCheck("curl is not installed on the host to read /health/detailed")
    if code != "200":
        fail(f"GET /health/detailed with the key answered {code if code != '000' else 'nothing'}; want 200")
    found = readiness.parse(body)
    if found.status is None:
        fail("GET /health/detailed answered 200 with a body that is not Hermes's readiness report")
    if not found.ready:
        fail(f"healthy, not ready: {', '.join(found.failing_names) or found.status} "
             f"(status {found.status}; failing: {'; '.join(found.failing) or 'none named'})")
    return "ready: /health/detailed status ok, every readiness check ok"


# ------------------------------------------------------------------------- companions
COMPANION_PROBE = r"""
url="$1"; var="$2"
if command -v python3 >/dev/null 2>&1; then
python3 - "$url" "$var" <<'PY'
import os, sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1])
key = os.environ.get(sys.argv[2], "")
if key:
    req.add_header("Authorization", "Bearer " + key)
try:
    print("python3", urllib.request.urlopen(req, timeout=10).status)
except urllib.error.HTTPError as error:
    print("python3", error.code)
except Exception as error:
    print("python3", "000", type(error).__name__)
PY
exit 0
fi
if command -v node >/dev/null 2>&1; then
node - "$url" "$var" <<'JS'
const [url, v] = process.argv.slice(2);
const key = process.env[v] || "";
fetch(url, {headers: key ? {Authorization: "Bearer " + key} : {}, signal: AbortSignal.timeout(10000)})
  .then(r => console.log("node", r.status)).catch(e => console.log("node", "000", e.name));
JS
exit 0
fi
if command -v curl >/dev/null 2>&1; then
  key=$(printenv "$var")
  printf 'Authorization: Bearer %s\n' "$key" | curl -s -o /dev/null -w 'curl %{http_code}\n' --max-time 10 -H @- "$url"
  exit 0
fi
echo noclient
"""


def _companion_probe(ctx: HostContext, container: str, url: str, key_var: str) -> tuple[str, str]:
    """(method, status) of GET url from inside the running `container`, with its own key.

    `docker exec` runs the probe in the container that is already there (no container is created,
    started or pulled); the key never leaves the container's environment. method is `none` when the
    probe cannot run there: status then says why (`noclient`, `noshell`) or how exec failed."""
    out = ctx.run(f"docker exec -i {shlex.quote(container)} sh -s -- {shlex.quote(url)} {shlex.quote(key_var)} "
                  f"<<'HERMES_INFRA_PROBE'\n{COMPANION_PROBE}\nHERMES_INFRA_PROBE\n")
    words = out.stdout.strip().split()
    if out.rc == 0 and len(words) >= 2 and words[0] != "noclient":
        return words[0], words[1]
    if words[:1] == ["noclient"]:
        return "none", "noclient"
    error = (out.stderr or out.stdout).strip()
    if out.rc in (126, 127) and ("executable file not found" in error or "no such file" in error.lower()):
        return "none", "noshell"
    return "none", f"exec failed (rc {out.rc}: {error[:160]})"


@control("HI-CMP-001", "Companion reaches its gateway's API with its key (from inside its container)",
         severity="high", scope="companion",
         rationale="A port bound only to 127.0.0.1 is unreachable from containers; a loopback health check "
                   "says healthy while the companion cannot connect.",
         remediation="Leave gateways[].api.publish_addresses unset (127.0.0.1 plus the docker bridge address) or "
                     "add docker.bridge_gateway_ip; keep `extra_hosts: host.docker.internal:host-gateway`; check "
                     "that the host firewall accepts traffic from the docker bridge. " + REDEPLOY + ".")
def companion_reaches_api(ctx: HostContext, subject: Subject):
    companion = subject.companion
    url = topology.companion_api_url(ctx.settings, companion).rstrip("/") + "/models"
    state = (_container(ctx, subject).get("State") or {})
    if not state.get("Running"):
        fail(f"companion {companion.name!r} is not running, so it cannot reach {url}")
    method, status = _companion_probe(ctx, companion.name, url, companion.api_key_env)
    if method == "none":
        if status in ("noclient", "noshell"):
            lacks = "has none of python3, node or curl" if status == "noclient" else "has no shell (`sh`)"
            raise NotApplicable(
                f"cannot be checked from inside {companion.name}: its image {lacks}, and the check starts no "
                f"container of its own. Check by hand that the companion's logs show it reaching {url}")
        raise CannotCheck(f"could not probe from inside {companion.name}: {status}")
    if status != "200":
        shown = {"000": "nothing (connection failed)", "401": "401 (its key is not the gateway's)"}.get(status, status)
        fail(f"GET {url} from {companion.name} ({method}) answered {shown}; want 200")
    return f"GET {url} from {companion.name} ({method}) -> 200"


# ---------------------------------------------------------------------------- firewall
FIREWALL_CIS = ("CIS Debian Linux 12 Benchmark, nftables section (4.3: a table and base chains exist, default "
                "deny policy, rules permanent, service enabled). ")
PUBLISHED = re.compile(r"^(?P<address>.*):(?P<port>\d+)(?:-\d+)?->\d+(?:-\d+)?/(?P<protocol>tcp|udp|sctp)$")


def _firewall_on(ctx: HostContext) -> None:
    if not ctx.settings.firewall.enabled:
        raise NotApplicable("firewall.enabled is false: hermes-infra manages no firewall on this host")


def _firewall_listing(ctx: HostContext) -> str:
    """The loaded table, as nft prints it (root only); '' when it is not loaded."""

    def compute():
        out = ctx.run(f"nft -s list table inet {firewall.TABLE}")
        if out.rc != 0:
            error = (out.stderr or out.stdout).strip()
            if "not permitted" in error.lower() or "permission denied" in error.lower():
                raise CannotCheck("`nft list` needs root: run the check as root or with --sudo")
            return ""  # no table (or no nft at all)
        return out.stdout

    return ctx._cached("firewall_listing", compute)


def _chain(listing: str, name: str) -> list[str]:
    """The lines of one chain of the listing (empty: no such chain)."""
    lines, inside = [], False
    for line in listing.splitlines():
        stripped = line.strip()
        if stripped == f"chain {name} {{":
            inside = True
        elif inside and stripped == "}":
            break
        elif inside:
            lines.append(stripped)
    return lines


@control("HI-FW-001", "Firewall is active: hermes-infra's nftables table is loaded", severity="high",
         scope="firewall",
         rationale="Docker's published ports bypass ufw and the INPUT chain: only rules on the forward hook, "
                   "before Docker's, filter them. " + FIREWALL_CIS,
         remediation="Keep firewall.enabled: true in the settings. " + REDEPLOY + " (it loads `table inet "
                     "hermes_infra`; `nft list table inet hermes_infra` shows it).")
def firewall_active(ctx: HostContext, subject: Subject):
    _firewall_on(ctx)
    listing = _firewall_listing(ctx)
    if not listing:
        fail(f"no `table inet {firewall.TABLE}` is loaded: inbound traffic and published ports are unfiltered")
    digest = firewall.loaded_digest(listing)
    if digest == "unmarked":
        fail(f"`table inet {firewall.TABLE}` is loaded but is not hermes-infra's (no hermes-infra comment)")
    forward = _chain(listing, "forward")
    hook = next((line for line in forward if line.startswith("type filter hook forward")), "")
    if "ct status dnat jump published" not in forward or not re.search(r"priority (filter - \d+|-\d+);", hook):
        fail("the forward chain does not filter published ports before Docker's rules (want a hook at a "
             f"priority below filter with `ct status dnat jump published`); found: {hook or 'no forward chain'}")
    return f"table inet {firewall.TABLE} loaded (rules {digest}), forward hook before Docker's"


@control("HI-FW-002", "Inbound traffic is denied by default; SSH and loopback are allowed", severity="high",
         scope="firewall",
         rationale="Anything listening on a public address is reachable unless the input policy is drop. "
                   + FIREWALL_CIS,
         remediation="Do not edit `table inet hermes_infra` by hand: change the firewall settings. " + REDEPLOY + ".")
def firewall_default_deny(ctx: HostContext, subject: Subject):
    _firewall_on(ctx)
    listing = _firewall_listing(ctx)
    if not listing:
        fail(f"no `table inet {firewall.TABLE}` is loaded, so nothing denies inbound traffic")
    inputs = _chain(listing, "input")
    hook = next((line for line in inputs if line.startswith("type filter hook input")), "")
    if "policy drop;" not in hook:
        fail(f"the input chain's policy is not drop: {hook or 'no input chain'}")
    missing = [rule for rule in ('iifname "lo" accept', "ct state established,related accept") if rule not in inputs]
    published = _chain(listing, "published")
    if not published or published[-1] != "drop":
        missing.append("published ports not allowed are dropped (`drop` at the end of chain published)")
    if not any(re.search(r"tcp dport (\d+|\{[^}]*\}) accept$", line) for line in inputs):
        missing.append("an SSH accept rule")
    if missing:
        fail(f"the input policy is drop but the table lacks: {'; '.join(missing)}")
    return "input policy drop; loopback, replies and SSH accepted"


@control("HI-FW-003", "Firewall is loaded at boot, before Docker, with the rules that are loaded now",
         severity="medium", scope="firewall",
         rationale="Rules only in the kernel vanish on the next reboot; loaded after docker.service, published "
                   "ports are open for a while. " + FIREWALL_CIS,
         remediation=f"`systemctl enable {firewall.UNIT}`; its file {firewall.RULESET_PATH} must be what is "
                     "loaded. " + REDEPLOY + ".")
def firewall_at_boot(ctx: HostContext, subject: Subject):
    _firewall_on(ctx)
    enabled = ctx.run(f"systemctl is-enabled {firewall.UNIT}").stdout.strip()
    if enabled != "enabled":
        fail(f"{firewall.UNIT} is {enabled or 'not installed'}: the rules are not loaded at boot")
    before = ctx.run(f"systemctl show -p Before --value {firewall.UNIT}").stdout.split()
    if "docker.service" not in before:
        fail(f"{firewall.UNIT} is not ordered before docker.service (Before={' '.join(before) or 'nothing'})")
    saved = ctx.run(f"cat {firewall.RULESET_PATH}")
    if saved.rc != 0:
        raise CannotCheck(f"cannot read {firewall.RULESET_PATH}: {(saved.stderr or '').strip()[:160]} "
                          "(run the check as root or with --sudo)")
    at_boot, now = firewall.loaded_digest(saved.stdout), firewall.loaded_digest(_firewall_listing(ctx) or None)
    if at_boot != now:
        fail(f"{firewall.RULESET_PATH} holds rules {at_boot}, the kernel has {now or 'none'}: a reboot changes "
             "the firewall")
    return f"{firewall.UNIT} enabled, before docker.service, rules {at_boot}"


@control("HI-FW-004", "No port is published on a non-loopback address outside the firewall's allow-list",
         severity="medium", scope="firewall",
         rationale="A port published on a public address that the firewall does not allow is either dead "
                   "(filtered) or, without the firewall, open: either way not what the settings say.",
         remediation="List the port in firewall.allow (with allow_from to narrow it) or publish it on 127.0.0.1. "
                     + REDEPLOY + ".")
def firewall_published_allowed(ctx: HostContext, subject: Subject):
    _firewall_on(ctx)
    out = ctx.run("docker ps --format '{{.Names}}\t{{.Ports}}'")
    if out.rc != 0:
        raise CannotCheck(f"`docker ps` failed: {(out.stderr or out.stdout).strip()[:200]}")
    allowed = {(rule.protocol, rule.port) for rule in ctx.settings.firewall.allow}
    bridge = ctx.settings.docker.bridge_gateway_ip
    outside, seen = [], 0
    for line in out.stdout.splitlines():
        name, _, ports = line.partition("\t")
        for item in (p.strip() for p in ports.split(",")):
            match = PUBLISHED.match(item)
            if not match:
                continue
            address = _normal_ip(match["address"].strip("[]") or "0.0.0.0")
            if address in LOOPBACK or address == bridge:
                continue
            seen += 1
            if (match["protocol"], int(match["port"])) not in allowed:
                outside.append(f"{_printable(name)} {_printable(item)}")
    if outside:
        fail(f"published outside firewall.allow: {', '.join(sorted(set(outside)))}")
    return f"{seen} non-loopback published port(s), all in firewall.allow" if seen else "nothing published beyond loopback"


# ---------------------------------------------------------------------------- SSH hardening
# dev-sec ssh-baseline IDs as in its controls/sshd_spec.rb at commit a0550ef (they were renumbered
# across releases); CIS sections by name (their numbers differ between editions).
SSH_REFERENCES = ("CIS Debian Linux 12 Benchmark, 'Configure SSH Server' (sshd PasswordAuthentication, "
                  "PermitEmptyPasswords, PermitRootLogin, MaxAuthTries, LoginGraceTime, X11Forwarding, "
                  "HostbasedAuthentication, IgnoreRhosts, LogLevel); dev-sec ssh-baseline ")
SSH_AUTH = ("PasswordAuthentication", "KbdInteractiveAuthentication", "PermitEmptyPasswords", "PermitRootLogin",
            "PubkeyAuthentication", "HostbasedAuthentication", "IgnoreRhosts")


def _ssh_hardening_on(ctx: HostContext) -> None:
    if not ctx.settings.ssh_hardening.enabled:
        raise NotApplicable("ssh_hardening.enabled is false: hermes-infra does not manage sshd on this host")


def _sshd_effective(ctx: HostContext) -> dict[str, str]:
    """`sshd -T`: keyword (lower case) to value; root only (it reads the host keys)."""

    def compute():
        out = ctx.run(f"{sshd.SSHD} -T")
        if out.rc != 0:
            error = (out.stderr or out.stdout).strip()
            raise CannotCheck(f"`sshd -T` failed (it needs root: run the check as root or with --sudo): {error[:160]}")
        found: dict[str, str] = {}
        for line in out.stdout.splitlines():
            keyword, _, value = line.strip().partition(" ")
            found.setdefault(keyword.lower(), value.strip())
        return found

    return ctx._cached("sshd_effective", compute)


def _sshd_mismatches(ctx: HostContext, keywords: tuple[str, ...]) -> list[str]:
    wanted = tuple(item for item in sshd.directives(ctx.settings) if item[0] in keywords)
    return sshd.mismatches(wanted, _sshd_effective(ctx))


@control("HI-SSH-002", "sshd accepts keys only: no passwords, no empty passwords, root by key only",
         severity="high", scope="ssh_hardening",
         rationale="A host on the internet is brute-forced within minutes; a password login is the way in. "
                   + SSH_REFERENCES + "sshd-06, sshd-22, sshd-23, sshd-25, sshd-27, sshd-28, sshd-29.",
         remediation="Set ssh_hardening.enabled: true. " + REDEPLOY + f" (it writes {sshd.DROPIN_PATH}, read "
                     "before the other drop-ins, and keeps it only once a new key login works).")
def ssh_keys_only(ctx: HostContext, subject: Subject):
    _ssh_hardening_on(ctx)
    wrong = _sshd_mismatches(ctx, SSH_AUTH)
    if wrong:
        fail(f"sshd's effective settings (sshd -T) differ: {'; '.join(wrong)}")
    return "passwordauthentication no, kbdinteractiveauthentication no, permitrootlogin without-password"


def _written_as_set(ctx: HostContext, path: str, text: str, missing: str = "") -> None:
    """A root-owned file hermes-infra renders from the settings: present, and byte for byte what
    these settings write."""
    found = ctx.run(f"cat {shlex.quote(path)}")
    if found.rc != 0:
        fail(f"{path} is missing{missing}")
    if found.stdout != text:
        fail(f"{path} is not the one these settings write (edited by hand, or an older deploy)")


@control("HI-SSH-003", "sshd's limits are as set and hermes-infra's drop-in is in place, with no revert pending",
         severity="medium", scope="ssh_hardening",
         rationale="MaxAuthTries and LoginGraceTime bound what one connection may try; X11 forwarding is not "
                   "needed on a server; VERBOSE logs the key fingerprint of each login. A pending revert means "
                   "the last change was never confirmed. " + SSH_REFERENCES + "sshd-13, sshd-18, sshd-19, sshd-42.",
         remediation=f"Do not edit {sshd.DROPIN_PATH} by hand: change ssh_hardening's settings. " + REDEPLOY + ".")
def ssh_limits(ctx: HostContext, subject: Subject):
    _ssh_hardening_on(ctx)
    wrong = _sshd_mismatches(ctx, ("MaxAuthTries", "LoginGraceTime", "X11Forwarding", "LogLevel"))
    if wrong:
        fail(f"sshd's effective settings (sshd -T) differ: {'; '.join(wrong)}")
    _written_as_set(ctx, sshd.DROPIN_PATH, sshd.dropin_text(ctx.settings),
                    missing=": the values come from elsewhere and may change under hermes-infra")
    if ctx.run(f"systemctl is-active --quiet {sshd.REVERT_UNIT}.timer").rc == 0:
        fail(f"{sshd.REVERT_UNIT}.timer is armed: the last sshd change was not confirmed by a new login and will "
             "be reverted")
    wanted = dict(sshd.directives(ctx.settings))
    return (f"maxauthtries {wanted['MaxAuthTries']}, logingracetime {wanted['LoginGraceTime']}, x11forwarding no, "
            f"loglevel VERBOSE; {sshd.DROPIN_PATH} as deployed")


# ---------------------------------------------------------------------------- automatic updates
UPDATES_CIS = "CIS Debian Linux 12 Benchmark, 'Ensure updates, patches, and additional security software are installed'."
APT_LIST = re.compile(r'^(?P<key>[A-Za-z:-]+?)(?P<list>::)? "(?P<value>.*)";$')


def _updates_on(ctx: HostContext) -> None:
    if not ctx.settings.unattended_upgrades.enabled:
        raise NotApplicable("unattended_upgrades.enabled is false: hermes-infra does not manage automatic updates")


def _apt_config(ctx: HostContext) -> dict[str, list[str]]:
    """`apt-config dump` as apt itself merges its files: key to values (a list's items in order)."""

    def compute():
        out = ctx.run("apt-config dump")
        if out.rc != 0:
            raise CannotCheck(f"`apt-config dump` failed: {(out.stderr or out.stdout).strip()[:160]}")
        found: dict[str, list[str]] = {}
        for line in out.stdout.splitlines():
            match = APT_LIST.match(line.strip())
            if match and (match["list"] or match["value"]):
                found.setdefault(match["key"], []).append(match["value"])
        return found

    return ctx._cached("apt_config", compute)


@control("HI-UPD-001", "Security updates install by themselves (unattended-upgrades, daily)", severity="medium",
         scope="updates",
         rationale="A host left on the internet must take its distribution's security fixes without waiting for "
                   "a deploy. " + UPDATES_CIS,
         remediation="Set unattended_upgrades.enabled: true. " + REDEPLOY + " (it installs unattended-upgrades and "
                     f"writes {unattended.PERIODIC_PATH}); `systemctl enable --now apt-daily-upgrade.timer`.")
def updates_automatic(ctx: HostContext, subject: Subject):
    _updates_on(ctx)
    status = ctx.run(f"dpkg-query -W -f '${{db:Status-Status}}' {unattended.PACKAGE}").stdout.strip()
    if status != "installed":
        fail(f"{unattended.PACKAGE} is {status or 'not installed'}")
    config = _apt_config(ctx)
    off = [key for key in ("APT::Periodic::Update-Package-Lists", "APT::Periodic::Unattended-Upgrade")
           if config.get(key, ["0"])[-1] in ("0", "")]
    if off:
        fail(f"apt does not run it: {', '.join(off)} is 0 or unset (want \"1\")")
    timer = ctx.run("systemctl is-enabled apt-daily-upgrade.timer").stdout.strip()
    if timer != "enabled":
        fail(f"apt-daily-upgrade.timer is {timer or 'not installed'}: nothing starts unattended-upgrade")
    return f"{unattended.PACKAGE} installed, daily (apt-daily-upgrade.timer)"


@control("HI-UPD-002", "Automatic updates take security origins only and never Docker's packages", severity="medium",
         scope="updates",
         rationale="An automatic upgrade of dockerd or containerd restarts the daemon, and the gateways with it, "
                   "at a time nobody chose; non-security origins change more than fixes. " + UPDATES_CIS,
         remediation=f"Do not edit {unattended.CONFIG_PATH}: change unattended_upgrades' settings. " + REDEPLOY + ".")
def updates_security_only(ctx: HostContext, subject: Subject):
    _updates_on(ctx)
    config = _apt_config(ctx)
    origins = config.get("Unattended-Upgrade::Origins-Pattern", []) + config.get("Unattended-Upgrade::Allowed-Origins", [])
    if not origins:
        fail("no origin is configured: unattended-upgrade installs nothing")
    other = [origin for origin in origins if "-security" not in origin]
    if other:
        fail(f"origins beyond security: {', '.join(_printable(o) for o in other)}")
    blacklist = config.get("Unattended-Upgrade::Package-Blacklist", [])
    missing = [name for name in unattended.DOCKER_BLACKLIST if name not in blacklist]
    if missing:
        fail(f"Docker's packages are not all in Unattended-Upgrade::Package-Blacklist: missing {', '.join(missing)}")
    wanted = ctx.settings.unattended_upgrades
    reboot = config.get("Unattended-Upgrade::Automatic-Reboot", ["false"])[-1].lower()
    if (reboot in ("true", "1", "yes")) != wanted.automatic_reboot:
        fail(f"Unattended-Upgrade::Automatic-Reboot is {reboot}, the settings say "
             f"{str(wanted.automatic_reboot).lower()}")
    return f"{len(origins)} security origin(s), Docker's packages blacklisted, automatic reboot " + (
        f"at {wanted.reboot_time}" if wanted.automatic_reboot else "off")


# ---------------------------------------------------------------------------- TLS proxy
# No CIS or dev-sec benchmark covers Caddy; these follow OWASP ASVS 4.0's V9 (TLS for every
# client connection, a certificate from a trusted CA) and CIS Docker 5.14 (bind a published port
# to the interface it is meant for).
TLS_REFERENCES = ("OWASP ASVS 4.0 V9.1.1-V9.1.2 (TLS for all client connectivity, certificates from a trusted "
                  "CA); no CIS or dev-sec benchmark covers Caddy.")
CURL_TLS_FAILURES = {6: "the name does not resolve", 7: "nothing accepts connections there",
                     28: "no answer within 10 s", 35: "the TLS handshake failed",
                     51: "the certificate does not name the domain", 60: "the certificate chain does not verify"}


def _proxy_on(ctx: HostContext) -> None:
    if not ctx.settings.tls_proxy.enabled:
        raise NotApplicable("tls_proxy.enabled is false: hermes-infra runs no TLS proxy on this host")


def _proxy_probe(ctx: HostContext) -> tuple[str, int, str, str]:
    """(url, curl's exit code, status, curl's error) of a GET to the proxy from the host itself:
    the domain resolved to 127.0.0.1 (this says what caddy serves, whatever DNS says), its
    chain verified against the system's CAs (acme) or Caddy's root (internal), no `Origin`."""
    proxy = ctx.settings.tls_proxy
    url = f"https://{proxy.domain}:{proxy.port}" + ("/health" if proxy.upstream == "api" else "/")
    if ctx.run("command -v curl").rc != 0:
        raise CannotCheck("curl is not installed on the host (`apt-get install curl`)")
    cacert = ""
    if proxy.ca == "internal":
        found = ctx.run(f"stat -c %s {shlex.quote(tlsproxy.ROOT_CERT)}")
        if found.rc != 0:
            error = (found.stderr or found.stdout).strip()
            if "permission denied" in error.lower():
                raise CannotCheck(f"{tlsproxy.ROOT_CERT} is caddy's (and root's): run the check as root or with --sudo")
            fail(f"{tlsproxy.ROOT_CERT} does not exist: caddy never started its internal CA (see `journalctl -u caddy`)")
        cacert = f" --cacert {shlex.quote(tlsproxy.ROOT_CERT)}"
    out = ctx.run(f"curl -sS -o /dev/null -w '%{{http_code}}' --max-time 10 --proto =https "
                  f"--resolve {shlex.quote(f'{proxy.domain}:{proxy.port}:127.0.0.1')}{cacert} {shlex.quote(url)}")
    errors = (out.stderr or "").strip().splitlines()
    return url, out.rc, (out.stdout.strip() or "000")[-3:], _printable(errors[-1], 200) if errors else ""


@control("HI-TLS-001", "The TLS proxy answers over HTTPS with a certificate chain valid for its domain",
         severity="high", scope="tls_proxy",
         rationale="A hub on another machine reaches the gateway only through the proxy; a certificate that does "
                   "not verify teaches clients to skip verification. " + TLS_REFERENCES,
         remediation="`systemctl status caddy` and `journalctl -u caddy` say why (with ca: acme: DNS not pointing "
                     "at the host, ports 80 and tls_proxy.port closed in a cloud firewall, a CA rate limit). "
                     + REDEPLOY + ".")
def tls_proxy_answers(ctx: HostContext, subject: Subject):
    _proxy_on(ctx)
    proxy = ctx.settings.tls_proxy
    url, rc, status, error = _proxy_probe(ctx)
    signer = "Caddy's internal CA" if proxy.ca == "internal" else "the host's trusted CAs"
    if rc != 0:
        why = CURL_TLS_FAILURES.get(rc, f"curl exit code {rc}")
        fail(f"GET {url} (to 127.0.0.1, verified against {signer}) failed: {why}" + (f" ({error})" if error else ""))
    want = "200" if proxy.upstream == "api" else "401"
    if status != want:
        what = "the gateway's /health" if proxy.upstream == "api" else "the dashboard's basic auth (401 without it)"
        fail(f"GET {url} answered {status}; want {want} from {what}" + (
            " (502: the proxy cannot reach the gateway)" if status == "502" else ""))
    return f"GET {url} -> {status}, chain verified against {signer}"


@control("HI-TLS-002", "The proxied gateway port is published on loopback only (the proxy cannot be walked around)",
         severity="high", scope="tls_proxy", cis="5.14",
         rationale="A port the proxy fronts that is also published on a public address serves the same API over "
                   "plain HTTP, the key in clear on the wire. " + TLS_REFERENCES,
         remediation="Leave gateways[].api.publish_addresses unset (127.0.0.1; the docker bridge address for "
                     "companions) and allow_public false, or publish the dashboard on 127.0.0.1. " + REDEPLOY + ".")
def tls_proxy_not_bypassed(ctx: HostContext, subject: Subject):
    _proxy_on(ctx)
    gateway = proxied_gateway(ctx.settings)
    container_port = 8642 if ctx.settings.tls_proxy.upstream == "api" else 9119
    record = ctx.inspect(gateway.service_name)
    if record is None:
        fail(f"container {gateway.service_name!r} does not exist on the host")
    have = _bindings(record.get("HostConfig") or {}, container_port)
    bridge = ctx.settings.docker.bridge_gateway_ip
    wide = [f"{a}:{p}" for a, p in have if a not in LOOPBACK and a != bridge]
    if wide:
        fail(f"{gateway.service_name}'s port {container_port} is also published on {', '.join(wide)}: the proxy "
             "can be walked around")
    target, port, _ = proxied_addresses(ctx.settings)
    return (f"{gateway.service_name}:{container_port} published on "
            f"{', '.join(f'{a}:{p}' for a, p in have) or 'nothing'}; the proxy reaches it on {target}:{port}")


@control("HI-TLS-003", "caddy runs hermes-infra's Caddyfile and starts at boot (admin endpoint on its own socket)",
         severity="medium", scope="tls_proxy",
         rationale="A Caddyfile edited by hand may serve other sites, drop HSTS or put the admin API back on TCP "
                   "127.0.0.1:2019, where every local user can reconfigure the proxy. " + TLS_REFERENCES,
         remediation=f"Do not edit {tlsproxy.CADDYFILE}: change tls_proxy's settings. `systemctl enable --now "
                     f"caddy`. " + REDEPLOY + ".")
def tls_proxy_as_deployed(ctx: HostContext, subject: Subject):
    _proxy_on(ctx)
    enabled = ctx.run(f"systemctl is-enabled {tlsproxy.UNIT}").stdout.strip()
    active = ctx.run(f"systemctl is-active {tlsproxy.UNIT}").stdout.strip()
    if (enabled, active) != ("enabled", "active"):
        fail(f"{tlsproxy.UNIT} is {enabled or 'not installed'} and {active or 'not active'}; want enabled and active")
    _written_as_set(ctx, tlsproxy.CADDYFILE, tlsproxy.caddyfile_text(ctx.settings))
    return f"{tlsproxy.UNIT} enabled and active; {tlsproxy.CADDYFILE} as deployed ({tlsproxy.site_url(ctx.settings)})"


# ---------------------------------------------------------------------------- icc on every network
ICC_TRUE = "com.docker.network.bridge.enable_icc:true"


@control("HI-DOCKER-007", "No network says `enable_icc:true` (the CIS 2.2 audit over every network)",
         severity="medium", scope="host", cis="2.2",
         rationale="CIS 2.2's audit lists every network's options and flags `" + ICC_TRUE + "`. Compose "
                   "networks keep Docker's default (no option: containers of one project reach each other, as a "
                   "same-project companion must reach its gateway) and do not show it; a network that does was "
                   "made with icc on explicitly, or is docker0 still running with the settings of before "
                   "daemon.json's `icc: false`.",
         remediation="Remove (or recreate without `-o com.docker.network.bridge.enable_icc=true`) the networks "
                     "named; for `bridge` see HI-DOCKER-005.")
def networks_icc(ctx: HostContext, subject: Subject):
    out = ctx.run("docker network ls --quiet | xargs docker network inspect --format '{{ .Name }}: {{ .Options }}'")
    if out.rc != 0:
        raise CannotCheck(f"`docker network inspect` failed: {(out.stderr or out.stdout).strip()[:200]}")
    flagged, compose = [], []
    for line in out.stdout.splitlines():
        name, _, options = line.partition(": ")
        if ICC_TRUE in options:
            flagged.append(_printable(name) + (" (docker0 runs with the settings of before daemon.json's icc: false: "
                                               "see HI-DOCKER-005)" if "default_bridge:true" in options else ""))
        elif "default_bridge:true" not in options and name not in ("host", "none"):
            compose.append(_printable(name))
    if flagged:
        fail(f"the CIS 2.2 audit flags enable_icc:true on: {', '.join(flagged)}")
    shown = f"; {', '.join(compose)} keep Docker's default between their own containers" if compose else ""
    return f"no network shows enable_icc:true{shown}"


def all_controls() -> list[Control]:
    """Every control, registered by importing this module (registry.py cannot: controls import it)."""
    return list(REGISTRY.values())  # definition order: host, data dir, containers, API, companions


def get_control(control_id: str) -> Control:
    return REGISTRY[control_id]
