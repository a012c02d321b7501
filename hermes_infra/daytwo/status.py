"""`hermes-infra status`: what each gateway is doing now, one row per host and profile.

Read-only, one SSH connection and one command per host (the same batching as
`hostfacts.state_command`), hosts in parallel. Per profile: the container's state, uptime,
restart count, OOM kills (the cgroup's `memory.events` counts kills of any process in the
container, `State.OOMKilled` only the last exit), image and Hermes version, memory in use
against the limit, swap in use, `/health` and `/health/detailed` (it answers 200 even when
degraded, so its `status` and failing `readiness.checks` are read, not the code). The key
for `/health/detailed` is read from `.env` as the data dir's owner and reaches curl through a
pipe (`hostfacts.key_header_script`), and goes only to the running container's own address
(`hostfacts.container_api_script`), never to whoever listens on the published port. Per host: swap, and the last record of the audit log.
Everything shown that came from the host passes `remote.clean` (no terminal escapes).
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
import shlex
import time
from dataclasses import asdict, dataclass, field

from hermes_infra.plan import cronjobs, sqlitecheck
from hermes_infra.plan import hostplan as planmod
from hermes_infra.daytwo.remote import DayTwoError, HostTarget, Remote, clean, for_each_host, open_remote
from hermes_infra.host import readiness, safeio
from hermes_infra.host.hostfacts import container_api_script, key_header_script
from hermes_infra.settings.schema import GatewaySettings, HostSettings

SECTION = "@@hermes-infra-status"
AUDIT_LOG = "/var/log/hermes-infra/audit.jsonl"
INSPECT_FORMAT = ("{{json .State}}\n{{.RestartCount}}\n{{json .Config.Image}}\n{{json .Image}}\n"
                  "{{.HostConfig.Memory}}\n{{json .Created}}")
SCHEMA = "hermes-infra/status/v1"


@dataclass
class ManagedJob:
    """A cron job of the settings as the host has it: `found` False when Hermes does not list it.
    Every value but the name comes from the agent-writable `cron/jobs.json`: cleaned, short."""
    name: str
    found: bool = False
    enabled: bool | None = None
    want_enabled: bool = True
    last_run_at: str | None = None
    last_status: str | None = None

    @property
    def in_order(self) -> bool:
        return self.found and self.enabled == self.want_enabled

    def describe(self) -> str:
        if not self.found:
            return f"{self.name}: missing"
        state = "enabled" if self.enabled else "paused"
        last = f"last run {self.last_run_at or 'never'}" + (f" ({self.last_status})" if self.last_status else "")
        return f"{self.name}: {state}, {last}"


@dataclass
class GatewayStatus:
    profile: str
    container: str
    data_dir: str
    url: str
    state: str = "missing"
    docker_health: str | None = None
    started_at: str | None = None
    uptime_seconds: int | None = None
    restarts: int | None = None
    oom_killed_last_exit: bool = False
    oom_kills: int | None = None
    image: str | None = None
    image_id: str | None = None
    hermes_version: str | None = None
    memory_bytes: int | None = None
    memory_limit_bytes: int | None = None
    swap_bytes: int | None = None
    health_code: str = "000"
    ready_status: str | None = None
    failing_checks: list[str] = field(default_factory=list)
    detailed_code: str = "000"
    jobs: list[ManagedJob] = field(default_factory=list)  # the settings' cron jobs, as Hermes lists them
    jobs_unreadable: str | None = None  # why cron/jobs.json could not be read, when it could not
    backups: list[dict] = field(default_factory=list)  # the last scheduled and manual backup runs, as recorded
    offsite_last: dict | None = None  # the last off-host upload, as recorded (setting scheduled_backups.offsite)
    offsite_good: dict | None = None  # the last successful one
    offsite_set: bool = False
    sqlite: dict | None = None  # the image's SQLite library, each database's journal mode and integrity

    @property
    def healthy(self) -> bool:
        """Alive: the container runs and `/health` answers (what the exit code stands for)."""
        return self.state == "running" and self.health_code == "200"

    @property
    def ready(self) -> bool:
        """Able to answer a message: `/health/detailed` says `status: ok` (a gateway without a
        model provider is alive and `degraded`)."""
        return self.healthy and self.ready_status == "ok"

    @property
    def not_ready_because(self) -> str:
        """Why a live gateway is not ready, in a few words: the failing checks' names, or what
        kept `/health/detailed` from saying."""
        if self.failing_checks:
            return ", ".join(dict.fromkeys(check.split(":")[0] for check in self.failing_checks))
        if self.ready_status:
            return self.ready_status
        return "readiness unknown" if self.detailed_code == "000" else f"/health/detailed http {self.detailed_code}"

    @property
    def verdict(self) -> str:
        """`down`, `healthy, ready` or `healthy, not ready: model`."""
        if not self.healthy:
            return "down"
        return "healthy, ready" if self.ready else f"healthy, not ready: {self.not_ready_because}"


@dataclass
class HostStatus:
    name: str
    address: str
    error: str | None = None
    swap_total_bytes: int | None = None
    swap_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    memory_available_bytes: int | None = None
    docker_version: str | None = None
    last_deploy: dict | None = None
    gateways: list[GatewayStatus] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def healthy(self) -> bool:
        return self.error is None and all(g.healthy for g in self.gateways)


@dataclass
class StatusReport:
    hosts: list[HostStatus]
    started: dt.datetime
    seconds: float

    @property
    def exit_code(self) -> int:
        return 0 if all(h.healthy for h in self.hosts) else 1


def _section(name: str) -> str:
    return f"echo '{SECTION} {name}'"


def gateway_sections(settings: HostSettings, gateway: GatewaySettings, databases: bool = False) -> tuple[str, str]:
    """(background, foreground) shell for one profile. Background parts hold no secret and run
    side by side (each docker CLI call starts a Go binary: seconds on a small VPS); the part that
    reads the key runs in the foreground.

    The HTTP answers are the agent's words: they travel base64-encoded (one line of
    `[A-Za-z0-9+/=]`), so no body can start a line with a section marker and forge another
    profile's, the host's or the audit's section (F3)."""
    container = shlex.quote(gateway.service_name)
    url = planmod.probe_url(settings, gateway)
    request = planmod.data_dir_request(gateway)
    curl = "curl -s --max-time 10 -w '\\n%{http_code}\\n'"
    background = "; ".join([
        f"out=$(docker inspect --format {shlex.quote(INSPECT_FORMAT + chr(10) + '{{.State.Pid}}')} {container} "
        "2>/dev/null) || out=missing",
        _section(f"inspect {gateway.name}"), 'printf \'%s\\n\' "$out"',
        _section(f"cgroup {gateway.name}"),
        "pid=$(printf '%s\\n' \"$out\" | sed -n 7p)",
        "if [ -n \"$pid\" ] && [ \"$pid\" != 0 ] && [ \"$out\" != missing ]; then "
        "cg=$(awk -F: '$1 == \"0\" {print $3}' /proc/$pid/cgroup 2>/dev/null); cgd=/sys/fs/cgroup$cg; "
        "echo \"current $(cat $cgd/memory.current 2>/dev/null)\"; echo \"max $(cat $cgd/memory.max 2>/dev/null)\"; "
        "echo \"swap $(cat $cgd/memory.swap.current 2>/dev/null)\"; grep '^oom_kill ' $cgd/memory.events 2>/dev/null; "
        "fi; true",
        _section(f"health {gateway.name}"),
        f"( {curl} {shlex.quote(url + '/health')} 2>/dev/null | base64 -w0; echo )",
    ])
    if databases:
        # `status --databases`: in a one-off container of the gateway's image as the owner (the online
        # copy's confinement); the names in its answer are the agent's, so it travels base64-encoded.
        probe = sqlitecheck.probe_command(gateway.host_data_dir, gateway.uid, gateway.gid, gateway.name,
                                          gateway.service_name, settings.image.ref)
        background += "; " + "; ".join([_section(f"sqlite {gateway.name}"), f"( {probe} ) | base64 -w0; echo"])
    jobs = []
    if gateway.cron:
        # Read as the data dir's owner, never followed, contents base64-encoded (safeio's reader).
        jobs = [_section(f"jobs {gateway.name}"),
                f"( {safeio.read_script(gateway.host_data_dir, [cronjobs.JOBS_FILE], gateway.uid, gateway.gid, 'jobs')} )"]
    # Root's records of the last runs (backup_timer.last_run_path, backup.manual_record_path): one
    # base64 line each, empty when there is none.
    records = " ".join(shlex.quote(path) for path in backup_records(settings, gateway) + offsite_records(settings, gateway))
    foreground = "; ".join([
        *jobs,
        _section(f"backups {gateway.name}"),
        f'for hi_f in {records}; do if [ -f "$hi_f" ] && [ ! -L "$hi_f" ]; then head -c 4096 -- "$hi_f" | base64 -w0; '
        "fi; echo; done",
        _section(f"detailed {gateway.name}"),
        # The key goes to the running container's own address only (F4); a stopped gateway gets none.
        f"( hi_api=$({container_api_script(gateway.service_name)}); if [ -n \"$hi_api\" ]; then "
        f"{key_header_script(request)} | {curl} -H @- \"$hi_api/health/detailed\" 2>/dev/null | base64 -w0; echo; fi; true )",
    ])
    return background, foreground


def backup_records(settings: HostSettings, gateway: GatewaySettings) -> tuple[str, str]:
    from hermes_infra.daytwo.backup import manual_record_path
    from hermes_infra.plan.backup_timer import last_run_path

    return last_run_path(settings, gateway.name), manual_record_path(settings, gateway.name)


def offsite_records(settings: HostSettings, gateway: GatewaySettings) -> tuple[str, ...]:
    """The off-host upload's records (last run, last good), read only when the setting is set."""
    from hermes_infra.plan import offsite

    if settings.scheduled_backups.offsite is None:
        return ()
    return offsite.last_run_path(settings, gateway.name), offsite.good_path(settings, gateway.name)


BACKUP_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def _backup_record(kind: str, lines: list[str]) -> dict | None:
    """One recorded run, checked field by field (root wrote it, but it is shown: cleaned, short)."""
    try:
        record = json.loads("\n".join(_decoded(lines)) or "null")
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict) or record.get("result") not in ("success", "failed", "skipped") \
            or not BACKUP_TIME.fullmatch(str(record.get("time"))):
        return None
    size = record.get("bytes")
    return {"kind": kind, "result": record["result"], "time": record["time"],
            "bytes": size if isinstance(size, int) and not isinstance(size, bool) else None,
            "message": clean(record.get("message"), 200) or None}


def _offsite_record(text: str) -> dict | None:
    """One upload record (`offsite.last_run_path`), field by field (root wrote it; it is shown)."""
    try:
        record = json.loads(text or "null")
    except json.JSONDecodeError:
        return None
    from hermes_infra.plan import offsite

    if not isinstance(record, dict) or record.get("result") not in ("success", "failed") \
            or not BACKUP_TIME.fullmatch(str(record.get("time"))):
        return None

    def number(key: str) -> int | None:
        value = record.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    snapshot = record.get("snapshot")
    return {"kind": "offsite", "result": record["result"], "time": record["time"],
            "source": record.get("source") if record.get("source") in offsite.SOURCES else None,
            "snapshot": snapshot[:8] if isinstance(snapshot, str) and offsite.SNAPSHOT_ID.fullmatch(snapshot) else None,
            "bytes": number("bytes"), "bytes_added": number("bytes_added"),
            "message": clean(record.get("message"), 200) or None}


def offsite_line(last: dict | None, good: dict | None) -> str:
    """`last good off-host backup: <time>, <size> (...)`, and the last run when it failed."""
    if good is None:
        text = "last good off-host backup: never"
    else:
        text = (f"last good off-host backup: {good['time']}, {human_bytes(good['bytes'])} "
                f"({human_bytes(good['bytes_added'])} new, snapshot {good['snapshot'] or '-'})")
    if last is not None and last["result"] != "success":
        text += f"; last upload FAILED {last['time']}: {last['message'] or 'no reason recorded'}"
    return text


def sqlite_line(report: dict) -> str:
    """`sqlite 3.46.1 (has the WAL-reset bug): state.db wal ok; ...`; names cleaned (the agent's)."""
    version = report["sqlite_version"]
    head = f"sqlite {version}" + (" (has the WAL-reset bug, fixed in 3.51.3)" if sqlitecheck.vulnerable(report) else "")
    parts = [f"{clean(name, 80)} {entry['journal_mode'] or '-'} {clean(entry['integrity'], 80)}"
             for name, entry in sorted(report["databases"].items())[:10]]
    more = len(report["databases"]) - len(parts)
    return head + ": " + ("; ".join(parts) or "no databases") + (f"; {more} more" if more > 0 else "")


def backup_cell(record: dict) -> str:
    result = record["result"] if record["result"] == "success" else record["result"].upper()
    text = f"{record['kind']} {result} {record['time']}"
    if record["result"] == "success" and record["bytes"]:
        return f"{text} {human_bytes(record['bytes'])}"
    return f"{text}: {record['message']}" if record["result"] != "success" and record["message"] else text


def status_command(settings: HostSettings, databases: bool = False) -> str:
    """The one command `status` runs on a host: read-only. Secret-free slow parts run side by side
    in a root-only temp dir (as the deploy's batched read does), every part in its own subshell."""
    background = [
        "; ".join([_section("docker"), "( docker version --format '{{.Server.Version}}' 2>/dev/null || echo missing )"]),
    ]
    foreground = [
        "; ".join([_section("host"), "date -u +%s",
                   "awk '/^(MemTotal|MemAvailable|SwapTotal|SwapFree):/ {print $1, $2}' /proc/meminfo"]),
        "; ".join([_section("audit"), f"( tail -n 1 {AUDIT_LOG} 2>/dev/null || true )"]),
    ]
    for gateway in settings.gateways:
        slow, fast = gateway_sections(settings, gateway, databases)
        background.append(slow)
        foreground.append(fast)
    parallel = " ".join(f'( {part} ) > "$d/{i}" 2>/dev/null &' for i, part in enumerate(background))
    inline = "; ".join(f"( {part} )" for part in background)
    return (f"if d=$(mktemp -d 2>/dev/null); then {parallel} else d=; {inline}; fi; "
            + "; ".join(f"( {part} )" for part in foreground)
            + '; if [ -n "$d" ]; then wait; cat "$d"/* 2>/dev/null; rm -rf "$d"; fi; true')


def _sections(text: str) -> dict[str, list[str]]:
    """Sections by name. A name seen twice cannot come from the command (each is printed once):
    both copies are dropped, so a forged section never wins (the row then reads as missing)."""
    sections: dict[str, list[str]] = {}
    seen_twice: set[str] = set()
    current = None
    for line in text.splitlines():
        if line.startswith(SECTION + " "):
            current = line[len(SECTION) + 1:].strip()
            if current in sections:
                seen_twice.add(current)
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
    return {name: body for name, body in sections.items() if name not in seen_twice}


def _decoded(lines: list[str]) -> list[str]:
    """The lines of a base64-encoded section (an HTTP answer); nothing when it is not base64."""
    try:
        raw = base64.b64decode("".join(lines).strip(), validate=True)
    except (binascii.Error, ValueError):
        return []
    return raw.decode("utf-8", errors="replace").splitlines()


def _int(value: str | None) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _parse_time(value: str | None) -> dt.datetime | None:
    if not value or value.startswith("0001-"):
        return None
    text = value.rstrip("Z")
    if "." in text:  # docker gives nanoseconds; Python takes microseconds
        head, frac = text.split(".", 1)
        text = f"{head}.{frac[:6]}"
    try:
        return dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None


def _body_code(lines: list[str]) -> tuple[str, str]:
    """(body, code) from curl `-w '\\n%{http_code}\\n'` (curl writes it even when it fails)."""
    lines = list(lines)
    while lines and not lines[-1].strip():
        lines.pop()
    code = lines[-1].strip() if lines else "000"
    if not code.isdigit():
        code = "000"
    return "\n".join(lines[:-1]), code


def parse_status(host: HostTarget, text: str) -> HostStatus:
    sections = _sections(text)
    status = HostStatus(name=host.name, address=host.connection.address)
    head = sections.get("host", [])
    now = _int(head[0]) if head else None
    meminfo = {}
    for line in head[1:]:
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            meminfo[parts[0].rstrip(":")] = int(parts[1]) * 1024
    if "SwapTotal" in meminfo:
        status.swap_total_bytes = meminfo["SwapTotal"]
        status.swap_used_bytes = meminfo["SwapTotal"] - meminfo.get("SwapFree", 0)
    status.memory_total_bytes = meminfo.get("MemTotal")
    status.memory_available_bytes = meminfo.get("MemAvailable")
    docker = "".join(sections.get("docker", [])).strip()
    status.docker_version = None if docker in ("", "missing") else clean(docker, 40)
    audit = "".join(sections.get("audit", [])).strip()
    if audit:
        try:
            record = json.loads(audit)
            status.last_deploy = {k: clean(v, 200) if isinstance(v, str) else v for k, v in record.items()
                                  if isinstance(v, (str, int, float, bool)) or v is None} if isinstance(record, dict) else None
        except json.JSONDecodeError:
            status.last_deploy = {"message": "unreadable audit record"}
    for gateway in host.settings.gateways:
        status.gateways.append(_gateway(host.settings, gateway, sections, now))
    return status


def _gateway(settings: HostSettings, gateway: GatewaySettings, sections: dict[str, list[str]],
             now: int | None) -> GatewayStatus:
    g = GatewayStatus(profile=gateway.name, container=gateway.service_name, data_dir=gateway.host_data_dir,
                      url=planmod.probe_url(settings, gateway))
    inspect = sections.get(f"inspect {gateway.name}", [])
    if inspect and inspect[0].strip() != "missing" and len(inspect) >= 6:
        try:
            state = json.loads(inspect[0])
            g.state = clean(state.get("Status"), 20)
            g.docker_health = clean((state.get("Health") or {}).get("Status"), 20) or None
            g.oom_killed_last_exit = bool(state.get("OOMKilled"))
            g.started_at = state.get("StartedAt")
            started = _parse_time(g.started_at)
            if started is not None and now is not None and g.state == "running":
                g.uptime_seconds = max(0, now - int(started.timestamp()))
            g.restarts = _int(inspect[1])
            g.image = clean(json.loads(inspect[2]), 200)
            g.image_id = clean(json.loads(inspect[3]), 80)
            limit = _int(inspect[4])
            g.memory_limit_bytes = limit or None
        except (json.JSONDecodeError, AttributeError, TypeError):
            g.state = "unreadable"
    cgroup = dict((line.split() + [""])[:2] for line in sections.get(f"cgroup {gateway.name}", []) if line.strip())
    g.memory_bytes = _int(cgroup.get("current"))
    g.swap_bytes = _int(cgroup.get("swap"))
    g.oom_kills = _int(cgroup.get("oom_kill")) if "oom_kill" in cgroup else (0 if cgroup else None)
    if g.memory_limit_bytes is None:
        g.memory_limit_bytes = _int(cgroup.get("max"))
    body, g.health_code = _body_code(_decoded(sections.get(f"health {gateway.name}", [])))
    if g.health_code == "200":
        try:
            g.hermes_version = clean(json.loads(body).get("version"), 40) or None
        except (json.JSONDecodeError, AttributeError):
            pass
    body, g.detailed_code = _body_code(_decoded(sections.get(f"detailed {gateway.name}", [])))
    if g.detailed_code == "200":
        found = readiness.parse(body)
        g.ready_status = found.status or "unreadable"
        g.failing_checks = list(found.failing)
    elif g.detailed_code == "401":
        g.ready_status = "key refused"
    if gateway.cron:
        g.jobs, g.jobs_unreadable = _managed_jobs(gateway, sections.get(f"jobs {gateway.name}"))
    g.sqlite = sqlitecheck.parse_report("\n".join(_decoded(sections.get(f"sqlite {gateway.name}", []))))
    lines = sections.get(f"backups {gateway.name}", [])
    g.backups = [r for kind, line in zip(("scheduled", "manual"), lines[:2]) if (r := _backup_record(kind, [line]))]
    if settings.scheduled_backups.offsite is not None:
        g.offsite_set = True
        last, good = (lines[2:4] + ["", ""])[:2]
        g.offsite_last = _offsite_record("\n".join(_decoded([last])))
        g.offsite_good = _offsite_record("\n".join(_decoded([good])))
    return g


def _managed_jobs(gateway: GatewaySettings, lines: list[str] | None) -> tuple[list[ManagedJob], str | None]:
    jobs = [ManagedJob(name=job.hermes_name, want_enabled=job.enabled) for job in cronjobs.desired_jobs(gateway)]
    reads = safeio.parse_reads(lines or []).get("jobs")
    if reads is None or reads["dir"] != "present":
        return jobs, f"data dir {reads['dir'] if reads else 'not read'}"
    found = reads["files"].get(cronjobs.JOBS_FILE)
    if found is None or found.kind == "missing":
        return jobs, None
    if found.kind != "regular":
        return jobs, f"{cronjobs.JOBS_FILE} is not a regular file ({found.kind})"
    try:
        listed = {job.name: job for job in cronjobs.parse_jobs(found.text)}
    except ValueError:
        return jobs, f"{cronjobs.JOBS_FILE} is not the job list Hermes writes"
    for job in jobs:
        seen = listed.get(job.name)
        if seen is not None:
            job.found, job.enabled = True, seen.enabled
            job.last_run_at = clean(seen.last_run_at, 40) or None
            job.last_status = clean(seen.last_status, 40) or None
    return jobs, None


def status_host(host: HostTarget, remote: Remote | None = None, databases: bool = False) -> HostStatus:
    """The status of one host over one connection; never raises (errors go in the row)."""
    started = time.monotonic()
    own = remote is None
    remote = remote or open_remote(host)
    try:
        result = remote.run(status_command(host.settings, databases), timeout=180 if databases else 120)
        if result.rc != 0 and not result.stdout:
            raise DayTwoError(f"the status command exited {result.rc}: {clean(result.stderr, 300)}")
        status = parse_status(host, result.text)
    except Exception as error:  # noqa: BLE001 - one unreachable host must not hide the others
        status = HostStatus(name=host.name, address=host.connection.address,
                            error=clean(f"{type(error).__name__}: {error}", 400))
    finally:
        if own:
            remote.close()
    status.seconds = time.monotonic() - started
    return status


def collect(hosts: list[HostTarget], databases: bool = False) -> StatusReport:
    """Every host's status; with `databases`, also the SQLite library and each database's journal
    mode and integrity (`sqlitecheck`: a one-off container per profile, so not by default)."""
    started_at, started = dt.datetime.now().astimezone(), time.monotonic()
    return StatusReport(hosts=for_each_host(hosts, lambda host: status_host(host, databases=databases)),
                        started=started_at,
                        seconds=time.monotonic() - started)


# --------------------------------------------------------------------------- rendering
def human_bytes(value: int | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
        value /= 1024
    return "-"


def human_seconds(value: int | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value}s"
    if value < 7200:
        return f"{value // 60}m"
    if value < 172800:
        return f"{value // 3600}h{(value % 3600) // 60:02d}m"
    return f"{value // 86400}d{(value % 86400) // 3600}h"


def memory_cell(g: GatewayStatus) -> str:
    if g.memory_bytes is None:
        return "-"
    if g.memory_limit_bytes:
        return f"{human_bytes(g.memory_bytes)}/{human_bytes(g.memory_limit_bytes)} " \
               f"({100 * g.memory_bytes / g.memory_limit_bytes:.0f}%)"
    return human_bytes(g.memory_bytes)


def health_cell(g: GatewayStatus) -> str:
    return "ok" if g.health_code == "200" else f"DOWN ({g.health_code})"


MODEL_FIX = ("set gateways[].config.model with its api_key (model: no inference provider configured), see "
             "\"The model provider\" in the README, then hermes-infra up")


@dataclass(frozen=True)
class Attention:
    """One thing `status` asks the operator to look at, and its fix. The text and the HTML page
    both render these, so a hint cannot reach one and not the other."""

    host: str
    profile: str
    level: str  # "warning": alive but not ready; "failure": down
    finding: str
    details: tuple[str, ...] = ()
    fix: str | None = None


def attention(host: HostStatus) -> list[Attention]:
    items = []
    for g in host.gateways:
        logs = f"hermes-infra logs {host.name} --profile {g.profile} -n 100"
        if g.failing_checks:
            model = any(check.split(":")[0] == "model" for check in g.failing_checks)
            items.append(Attention(host.name, g.profile, "warning", f"{g.verdict} (readiness {g.ready_status})",
                                   tuple(g.failing_checks), MODEL_FIX if model else f"{logs}, then hermes-infra up"))
        elif g.healthy and g.ready_status == "key refused":
            items.append(Attention(host.name, g.profile, "warning", "/health/detailed refused the key from .env",
                                   fix=f"hermes-infra check {host.name} (HI-API-002 and HI-DATA-003 say why)"))
        if g.state != "running":
            items.append(Attention(host.name, g.profile, "failure", f"container {g.container} is {g.state}",
                                   fix=f"{logs}, then hermes-infra up or hermes-infra restart {host.name} "
                                       f"--profile {g.profile}"))
        elif g.health_code != "200":
            items.append(Attention(host.name, g.profile, "failure", f"{g.url}/health answers {g.health_code}",
                                   fix=f"{logs}, then hermes-infra restart {host.name} --profile {g.profile}"))
        if g.sqlite is not None and (found := sqlitecheck.problems(g.sqlite)):
            damaged = any(not why.startswith("WAL mode") for _, why in found)
            items.append(Attention(
                host.name, g.profile, "failure" if damaged else "warning",
                "a SQLite database fails its integrity check" if damaged else
                "SQLite databases in WAL mode on a library with the WAL-reset bug",
                tuple(f"{clean(name, 80)}: {clean(why, 200)}" for name, why in found[:5]),
                f"hermes-infra check {host.name} (HI-DATA-005 says why and what to do)"))
        if g.offsite_last is not None and g.offsite_last["result"] != "success":
            items.append(Attention(host.name, g.profile, "warning", "the last off-host upload failed",
                                   (g.offsite_last["message"] or "no reason recorded",),
                                   f"hermes-infra backup {host.name} --profile {g.profile} (restic's own messages: "
                                   "<backup_dir>/offsite/<profile>.restic.log on the host)"))
        astray = [job.describe() for job in g.jobs if not job.in_order]
        if g.jobs_unreadable or astray:
            items.append(Attention(host.name, g.profile, "warning", "cron jobs of the settings are not as set",
                                   tuple(astray) + ((f"cannot read them: {g.jobs_unreadable}",) if g.jobs_unreadable else ()),
                                   f"hermes-infra up {host.name} (it creates, edits, resumes or pauses them); "
                                   f"hermes-infra check {host.name} (HI-AGT-001)"))
    return items


def ready_cell(g: GatewayStatus) -> str:
    if g.ready:
        return "ok"
    if g.healthy and g.failing_checks:
        return f"NOT READY ({g.not_ready_because})"
    return g.ready_status or ("-" if g.detailed_code == "000" else f"http {g.detailed_code}")


def deploy_cell(record: dict | None) -> str:
    if not record:
        return "-"
    parts = [str(record.get(k)) for k in ("time", "command", "result") if record.get(k) not in (None, "")]
    if record.get("revision"):
        parts.append(f"rev {record['revision']}")
    if record.get("who"):
        parts.append(f"by {record['who']}")
    seconds = record.get("seconds")
    if isinstance(seconds, (int, float)) and not isinstance(seconds, bool):
        parts.append(f"took {seconds:.1f}s")
    return " ".join(parts) or "-"


COLUMNS = ("HOST", "PROFILE", "STATE", "UPTIME", "RESTARTS", "OOM", "IMAGE", "VERSION", "MEMORY", "SWAP",
           "HEALTH", "READY")


def rows(report: StatusReport) -> list[tuple[str, ...]]:
    table = []
    for host in report.hosts:
        if host.error:
            table.append((host.name, "-", "UNREACHABLE", *["-"] * (len(COLUMNS) - 3)))
            continue
        for g in host.gateways:
            state = g.state + (f" ({g.docker_health})" if g.docker_health else "")
            oom = "-" if g.oom_kills is None else str(g.oom_kills) + (" last-exit" if g.oom_killed_last_exit else "")
            table.append((host.name, g.profile, state, human_seconds(g.uptime_seconds),
                          "-" if g.restarts is None else str(g.restarts), oom, g.image or "-",
                          g.hermes_version or "-", memory_cell(g), human_bytes(g.swap_bytes), health_cell(g),
                          ready_cell(g)))
    return table


def render_text(report: StatusReport) -> str:
    table = [COLUMNS, *rows(report)]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in table]
    lines.append("")
    for host in report.hosts:
        if host.error:
            lines.append(f"{host.name} ({host.address}): cannot read status: {host.error}")
            continue
        swap = (f"swap {human_bytes(host.swap_used_bytes)}/{human_bytes(host.swap_total_bytes)}"
                if host.swap_total_bytes else "no swap")
        # The time this read took goes with the host, not after the deploy (where it read as the deploy's).
        lines.append(f"{host.name} ({host.address}, read in {host.seconds:.1f}s): docker "
                     f"{host.docker_version or 'missing'}, {swap}, "
                     f"memory available {human_bytes(host.memory_available_bytes)}/{human_bytes(host.memory_total_bytes)}"
                     f", last deploy: {deploy_cell(host.last_deploy)}")
        for g in host.gateways:
            if g.jobs and not g.jobs_unreadable:
                lines.append(f"  {g.profile} cron: " + "; ".join(job.describe() for job in g.jobs))
            if g.backups:
                lines.append(f"  {g.profile} backups: " + "; ".join(backup_cell(r) for r in g.backups))
            if g.sqlite is not None:
                lines.append(f"  {g.profile} {sqlite_line(g.sqlite)}")
            if g.offsite_set:
                lines.append(f"  {g.profile} {offsite_line(g.offsite_last, g.offsite_good)}")
        for item in attention(host):
            details = f": {'; '.join(item.details)}" if item.details else ""
            lines.append(f"  {item.profile}: {item.finding}{details}")
            if item.fix:
                lines.append(f"    Fix: {item.fix}")
    healthy = sum(1 for h in report.hosts for g in h.gateways if g.healthy)
    ready = sum(1 for h in report.hosts for g in h.gateways if g.ready)
    total = sum(len(h.gateways) for h in report.hosts)
    lines.append(f"{healthy}/{total} gateways healthy, {ready}/{total} ready, on {len(report.hosts)} host(s) in "
                 f"{report.seconds:.1f}s")
    return "\n".join(lines) + "\n"


def to_json(report: StatusReport) -> dict:
    return {
        "schema": SCHEMA, "started_at": report.started.isoformat(timespec="seconds"),
        "duration_seconds": round(report.seconds, 2), "healthy": report.exit_code == 0,
        "hosts": [{**{k: v for k, v in asdict(h).items() if k != "gateways"}, "healthy": h.healthy,
                   "seconds": round(h.seconds, 2),
                   "gateways": [{**asdict(g), "healthy": g.healthy, "ready": g.ready, "verdict": g.verdict}
                                for g in h.gateways]} for h in report.hosts],
    }


def render_json(report: StatusReport) -> str:
    return json.dumps(to_json(report), indent=2) + "\n"
