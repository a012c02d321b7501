"""The agent's files (`gateways[].files`): what to write into each data dir, what to remove, and
the record of what hermes-infra placed.

Which files are hermes-infra's is known from a record beside the managed-keys one
(`<project_dir>/agent-code.json`, root's, 0600), never from the data dir: the agent owns its data
dir, and a record it could write would let it name the operator's files as "managed", and the
next deploy would delete them. The record holds, per profile, each placed file's destination and
the sha256 of the bytes written (never the bytes), and the names of the managed cron jobs.

A file is written when it is missing, differs from the repository's, or has another mode. A file
whose bytes are neither the repository's nor what hermes-infra wrote last (the agent or a person
changed it, or made it before it was managed) is backed up first and reported. A file that left
the settings is removed only while it still holds the bytes hermes-infra wrote (checked on the
host, as the owner, at the moment of removal); a changed one stays and stops being managed.

Pure: settings and facts in, a plan out (the files' bytes are read from the operator's repository).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

from pyinfra.api.exceptions import PyinfraError

from hermes_infra.host import safeio
from hermes_infra.plan import cronjobs, managedkeys
from hermes_infra.settings import agentcode
from hermes_infra.settings.schema import GatewaySettings, HostSettings

VERSION = 1
RECORD_NAME = "agent-code.json"
JOBS_FILE = cronjobs.JOBS_FILE
_SHA = re.compile(r"[0-9a-f]{64}")
MAX_ENTRIES = 5000


class AgentCodeError(PyinfraError):
    """The agent's files or jobs cannot be reconciled on this host as it is; names what and the fix."""


@dataclass(frozen=True)
class FileWrite:
    dest: str
    src: str
    mode: str
    content: str = field(repr=False)
    """The bytes, decoded with surrogateescape (the upload encodes them back unchanged)."""
    sha256: str
    reason: str
    """new, changed in the settings, mode, changed on the host, made by hand, a link."""
    backup: bool = False
    """The file on the host is someone else's work: copied to the backup dir before the write."""


@dataclass(frozen=True)
class FileRemoval:
    dest: str
    sha256: str
    """What hermes-infra wrote: removed only while the file still holds exactly that."""


@dataclass(frozen=True)
class AgentFilesPlan:
    profile: str
    directory: str
    uid: int
    gid: int
    writes: tuple[FileWrite, ...] = ()
    removals: tuple[FileRemoval, ...] = ()
    unchanged: tuple[str, ...] = ()
    record_entry: dict = field(default_factory=dict, repr=False)

    def path(self, dest: str) -> str:
        return f"{self.directory}/{dest}"


@dataclass(frozen=True)
class ProfileRecord:
    data_dir: str
    files: dict[str, str] = field(default_factory=dict)
    jobs: tuple[str, ...] = ()


def record_path(project_dir: str) -> str:
    return f"{project_dir.rstrip('/')}/{RECORD_NAME}"


def read_names(gateway: GatewaySettings) -> tuple[str, ...]:
    """Data-dir files the batched read brings back for this gateway: each managed file and the
    cron store (read as the owner, never followed: safeio)."""
    return (*(f.dest for f in gateway.files), JOBS_FILE)


def parse_record(text: str | None) -> dict[str, ProfileRecord] | None:
    """The record on the host, or None when there is none or it is not exactly what hermes-infra
    writes (then nothing is removed this run and a correct record is written)."""
    raw = managedkeys.load_versioned(text, VERSION)
    if raw is None:
        return None
    profiles: dict[str, ProfileRecord] = {}
    count = 0
    for name, entry in raw["profiles"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("data_dir"), str):
            return None
        files, jobs = entry.get("files", {}), entry.get("jobs", [])
        if not isinstance(files, dict) or not isinstance(jobs, list):
            return None
        for dest, digest in files.items():
            try:
                agentcode.check_dest(dest, "record")
            except ValueError:
                return None
            if not isinstance(digest, str) or not _SHA.fullmatch(digest):
                return None
        for job in jobs:
            try:
                agentcode.check_job_name(job, "record")
            except (ValueError, TypeError):
                return None
        count += len(files) + len(jobs)
        profiles[name] = ProfileRecord(entry["data_dir"], dict(files), tuple(jobs))
    return profiles if count <= MAX_ENTRIES else None


def previous_for(record: dict[str, ProfileRecord] | None, gateway: GatewaySettings) -> ProfileRecord | None:
    """What hermes-infra placed in this data dir last time; None (remove nothing) without a record
    or when it was for another data dir."""
    entry = (record or {}).get(gateway.name)
    return entry if entry is not None and entry.data_dir == gateway.host_data_dir else None


def render_record(profiles: dict[str, dict]) -> str:
    return json.dumps({"version": VERSION, "profiles": profiles}, indent=2, sort_keys=True) + "\n"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_REFUSED = {"fifo": "a FIFO (named pipe)", "directory": "a directory", "changed": "a file that changed while it was read",
            "toolarge": f"larger than {safeio.MAX_READ_BYTES // 1024} KiB", "other": "not a regular file"}


def _write_for(gateway: GatewaySettings, dest: str, src: str, mode: str, data: bytes,
               read: safeio.FileRead | None, recorded: str | None) -> FileWrite | None:
    digest = sha256(data)
    content = data.decode("utf-8", errors="surrogateescape")

    def write(reason: str, backup: bool = False) -> FileWrite:
        return FileWrite(dest, src, mode, content, digest, reason, backup)

    kind = read.kind if read is not None else "missing"
    if kind == "missing":
        return write("new")
    if kind in ("symlink", "hardlink"):
        # The rename replaces the name itself; nothing is read through it, so there is no backup.
        return write(f"was a {'symbolic link' if kind == 'symlink' else 'hard link'}, replaced by the file")
    if kind != "regular":
        raise AgentCodeError(
            f"gateways[{gateway.name}].files: {gateway.host_data_dir}/{dest} is {_REFUSED[kind]}; hermes-infra does "
            f"not replace it. Fix: inspect it (`ls -la {gateway.host_data_dir}/{dest}`), remove it, then deploy again")
    current = sha256(read.text.encode("utf-8", errors="surrogateescape"))
    if current == digest:
        return write("mode") if read.owner is not None and read.owner[2] != mode else None
    if recorded is not None and current == recorded:
        return write("changed in the settings")
    who = "changed on the host since hermes-infra wrote it" if recorded is not None else "made by hand before it was managed"
    return write(who, backup=True)


def files_plan(gateway: GatewaySettings, state_dir: dict, previous: ProfileRecord | None,
               jobs: tuple[str, ...] = ()) -> AgentFilesPlan:
    """What to write and remove in one data dir; `state_dir`: the batched read's entry for it."""
    reads = state_dir.get("files", {}) if state_dir.get("dir") == "present" else {}
    recorded = previous.files if previous is not None else {}
    writes, unchanged, placed = [], [], {}
    for item in gateway.files:
        try:
            data = agentcode.read_src(item.src)
        except (OSError, ValueError) as error:  # changed on the control machine since validation
            raise AgentCodeError(f"gateways[{gateway.name}].files: {item.src!r} cannot be read: "
                                 f"{getattr(error, 'strerror', None) or error}. Fix: a regular file, no link") from None
        write = _write_for(gateway, item.dest, item.src, item.mode, data, reads.get(item.dest), recorded.get(item.dest))
        placed[item.dest] = sha256(data)
        if write is None:
            unchanged.append(item.dest)
        else:
            writes.append(write)
    removals = tuple(FileRemoval(dest, digest) for dest, digest in sorted(recorded.items()) if dest not in placed)
    entry = {"data_dir": gateway.host_data_dir, "files": dict(sorted(placed.items())), "jobs": sorted(jobs)}
    return AgentFilesPlan(gateway.name, gateway.host_data_dir, gateway.uid, gateway.gid, tuple(writes), removals,
                          tuple(unchanged), entry)


def drift_lines(plan: AgentFilesPlan) -> list[str]:
    """What `--dry` shows: names and reasons, never contents."""
    lines = [f"{plan.path(w.dest)}: {w.reason}" + (" (backed up first)" if w.backup else "") for w in plan.writes]
    lines += [f"{plan.path(r.dest)}: removed (left the settings; kept if changed since)" for r in plan.removals]
    return lines


def request_paths(settings: HostSettings) -> tuple[str, ...]:
    return (record_path(settings.project_dir),)


# --- one gateway's files and jobs, and the record --------------------------------------------

@dataclass(frozen=True)
class AgentPlan:
    """What one gateway's `files` and `cron` settings change on the host."""

    files: AgentFilesPlan
    cron: cronjobs.CronPlan
    cron_calls: tuple[str, ...] = ()
    """Shell text of each Hermes CLI call, in order."""

    @property
    def profile(self) -> str:
        return self.files.profile

    @property
    def files_in_use(self) -> bool:
        return bool(self.files.writes or self.files.removals or self.files.unchanged)

    @property
    def cron_in_use(self) -> bool:
        cron = self.cron
        return bool(self.cron_calls or cron.unchanged or self.files.record_entry.get("jobs"))


def _listed_jobs(gateway: GatewaySettings, state_dir: dict, involved: bool) -> list:
    read = state_dir.get("files", {}).get(JOBS_FILE) if state_dir.get("dir") == "present" else None
    kind = read.kind if read is not None else "missing"
    if kind == "missing" or not involved:
        return []
    path = f"{gateway.host_data_dir}/{JOBS_FILE}"
    if kind != "regular":
        raise AgentCodeError(
            f"gateways[{gateway.name}].cron: {path} is {_REFUSED.get(kind, 'not a regular file')}, so the jobs cannot "
            f"be read; nothing was changed. Fix: inspect it (`ls -la {gateway.host_data_dir}/cron`), restore it from a "
            "backup or remove it (Hermes starts an empty one), then deploy again")
    try:
        return cronjobs.parse_jobs(read.text)
    except ValueError as error:
        raise AgentCodeError(
            f"gateways[{gateway.name}].cron: {path} is not the job list Hermes writes ({error}); nothing was changed. "
            "Fix: restore it from a backup (or remove it), then deploy again") from None


def agent_plan(settings: HostSettings, gateway: GatewaySettings, state_dir: dict,
               previous: ProfileRecord | None) -> AgentPlan:
    recorded_jobs = set(previous.jobs) if previous is not None else set()
    listed = _listed_jobs(gateway, state_dir, bool(gateway.cron or recorded_jobs))
    cron = cronjobs.reconcile(cronjobs.desired_jobs(gateway), listed, recorded_jobs)
    calls = tuple(cronjobs.hermes_call(settings, gateway, args) for args in cronjobs.plan_calls(cron))
    files = files_plan(gateway, state_dir, previous, tuple(job.name for job in gateway.cron))
    return AgentPlan(files, cron, calls)


def agent_plans(settings: HostSettings, data_dirs: dict, record_text: str | None) -> tuple[AgentPlan, ...]:
    """Every gateway's plan; `data_dirs`: the batched read's data dirs by profile."""
    record = parse_record(record_text)
    return tuple(agent_plan(settings, g, data_dirs.get(g.name, {}), previous_for(record, g)) for g in settings.gateways)


def in_use(settings: HostSettings, record_text: str | None) -> bool:
    """Whether this host has anything to do with agent files or jobs (else no record is written)."""
    return bool(record_text) or any(g.files or g.cron for g in settings.gateways)


def record_text(plans: tuple[AgentPlan, ...]) -> str:
    return render_record({plan.profile: plan.files.record_entry for plan in plans})


def agent_drift(plans: tuple[AgentPlan, ...]) -> list[str]:
    lines: list[str] = []
    for plan in plans:
        lines += drift_lines(plan.files) + cronjobs.drift_lines(plan.cron, plan.profile)
    return lines
