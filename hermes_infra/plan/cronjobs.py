"""The gateway's scheduled jobs (`gateways[].cron`): the listed jobs against the settings, and the
Hermes CLI calls that make the managed ones match.

How the pinned Hermes (0.19.0) keeps jobs, read from its source:
- one file, `<data dir>/cron/jobs.json` (`{"jobs": [...], "updated_at": ...}`), written under a
  cross-process lock (`cron/jobs.py` `_jobs_lock`) with a temp file and a rename;
- the gateway's ticker (`gateway/run.py` `_start_cron_ticker` -> `cron/scheduler_provider.py`
  `InProcessCronScheduler`, every 60 s) reads the file again on each tick (`tick` ->
  `get_due_jobs` -> `load_jobs`): a job added, changed or removed by another process is seen
  within a minute, so no restart is needed;
- `hermes cron create|pause|resume|remove` change it (the same code the agent's `cronjob` tool
  runs), and validate what they are given; `hermes cron list` prints text for people only, so the
  jobs are read from `cron/jobs.json` itself (owner's read, never followed, parsed as JSON by
  meaning: the file is the agent's, and every value from it is data).

Upstream's newer source (0.21.x and later) keeps the same verbs and store; `create` and `edit`
then run a preflight that only reports (exit 0 unless `--strict-preflight`), and a `jobs.json`
rewritten by root locks the ticker out (upstream #68483): every call here runs as uid 10000.
`SOUL.md` and skills need no restart either: they go into a session's system prompt when the
session starts (a running session keeps its own).

Which jobs are hermes-infra's: a job is named `hermes-infra/<name>` in Hermes, and `<name>` is in
the settings or in the root-only record of names hermes-infra made (plan/agentfiles.py). A job in
that namespace that is in neither was made by someone else and is left alone, like every other job
made by hand; they are listed. The agent can change any job itself (it owns the file), so the
namespace gives it nothing it does not have.

A job whose schedule, prompt, script or delivery differs is edited in place (`cron edit ID`:
same id, its run history kept); one whose `enabled` differs is paused or resumed. Pure: settings
and the listed jobs in, a plan out.
"""
from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass

from hermes_infra.plan import compose
from hermes_infra.settings.schema import CronJobSettings, GatewaySettings, HostSettings

PREFIX = "hermes-infra/"
JOBS_FILE = "cron/jobs.json"
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_SHOWN = 120


@dataclass(frozen=True)
class DesiredJob:
    name: str
    schedule: str
    prompt: str
    script: str | None
    deliver: str
    enabled: bool

    @property
    def hermes_name(self) -> str:
        return PREFIX + self.name

    @property
    def no_agent(self) -> bool:
        return bool(self.script) and not self.prompt

    @classmethod
    def from_settings(cls, job: CronJobSettings) -> DesiredJob:
        return cls(job.name, job.schedule, job.prompt or "", job.script, job.deliver, job.enabled)


@dataclass(frozen=True)
class ListedJob:
    """One job of `cron/jobs.json`, every value as the agent may have left it (data, never structure)."""

    id: str
    name: str
    schedule: str
    prompt: str
    script: str | None
    no_agent: bool
    deliver: str
    enabled: bool
    last_run_at: str | None = None
    last_status: str | None = None

    @property
    def managed_name(self) -> str | None:
        return self.name[len(PREFIX):] if self.name.startswith(PREFIX) else None


@dataclass(frozen=True)
class JobChange:
    desired: DesiredJob
    listed: ListedJob
    fields: tuple[str, ...]
    """What differs (`enabled`: paused or resumed; anything else: edited)."""

    @property
    def edited(self) -> bool:
        return any(name != "enabled" for name in self.fields)


@dataclass(frozen=True)
class CronPlan:
    add: tuple[DesiredJob, ...] = ()
    change: tuple[JobChange, ...] = ()
    remove: tuple[ListedJob, ...] = ()
    foreign: tuple[ListedJob, ...] = ()
    unchanged: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.add or self.change or self.remove)


def _schedule_text(schedule) -> str:
    """Hermes's stored schedule as the settings write it (`every 5m`, a cron expression)."""
    if isinstance(schedule, dict):
        if schedule.get("kind") == "interval" and isinstance(schedule.get("minutes"), int):
            return f"every {schedule['minutes']}m"
        if schedule.get("kind") == "cron" and isinstance(schedule.get("expr"), str):
            return " ".join(schedule["expr"].split())
        return f"{schedule.get('kind')!s}: {schedule.get('display')!s}"
    return str(schedule)


def _text(value, default: str = "") -> str:
    return value if isinstance(value, str) else default


def _deliver_text(value) -> str:
    if isinstance(value, list):
        return ",".join(str(v).strip() for v in value)
    return ",".join(t.strip() for t in value.split(",")) if isinstance(value, str) and value else "local"


def parse_jobs(text: str | None) -> list[ListedJob]:
    """The jobs of a `cron/jobs.json` (None or empty: none yet). Raises ValueError when the file
    is not the shape Hermes writes (then nothing is changed: Hermes itself would not run it)."""
    if text is None or not text.strip():
        return []
    try:
        raw = json.loads(text.lstrip("\ufeff"), strict=False)
    except (json.JSONDecodeError, RecursionError) as error:
        raise ValueError(f"not JSON ({error.__class__.__name__})") from None
    jobs = raw.get("jobs", []) if isinstance(raw, dict) else raw
    if not isinstance(jobs, list):
        raise ValueError("no list of jobs")
    listed = []
    for job in jobs:
        if not isinstance(job, dict) or not isinstance(job.get("id"), str) or not _JOB_ID.fullmatch(job["id"]):
            continue  # Hermes cannot act on it either; it is nobody's to reconcile
        enabled = job.get("enabled", True) is not False and job.get("state") not in ("paused", "completed")
        listed.append(ListedJob(
            id=job["id"], name=_text(job.get("name")), schedule=_schedule_text(job.get("schedule")),
            prompt=_text(job.get("prompt")), script=_text(job.get("script")) or None,
            no_agent=job.get("no_agent") is True, deliver=_deliver_text(job.get("deliver")), enabled=enabled,
            last_run_at=_text(job.get("last_run_at")) or None, last_status=_text(job.get("last_status")) or None))
    return listed


def differences(desired: DesiredJob, listed: ListedJob) -> tuple[str, ...]:
    pairs = (("schedule", desired.schedule, listed.schedule), ("prompt", desired.prompt, listed.prompt),
             ("script", desired.script, listed.script), ("no_agent", desired.no_agent, listed.no_agent),
             ("deliver", desired.deliver, listed.deliver), ("enabled", desired.enabled, listed.enabled))
    return tuple(name for name, want, have in pairs if want != have)


def reconcile(desired: list[DesiredJob], listed: list[ListedJob], recorded: set[str]) -> CronPlan:
    """Desired against listed jobs: add the missing, change the different, remove the managed ones
    that left the settings (and extra copies of a managed one), leave every other job alone."""
    wanted = {job.name: job for job in desired}
    seen: set[str] = set()
    change, remove, foreign, unchanged = [], [], [], []
    for job in listed:
        name = job.managed_name
        if name in wanted and name not in seen:
            seen.add(name)
            fields = differences(wanted[name], job)
            if fields:
                change.append(JobChange(wanted[name], job, fields))
            else:
                unchanged.append(name)
        elif name is not None and (name in wanted or name in recorded):
            remove.append(job)  # left the settings, or a second copy of a managed job
        else:
            foreign.append(job)
    add = tuple(job for job in desired if job.name not in seen)
    return CronPlan(add, tuple(change), tuple(remove), tuple(foreign), tuple(unchanged))


def desired_jobs(gateway: GatewaySettings) -> list[DesiredJob]:
    return [DesiredJob.from_settings(job) for job in gateway.cron]


# --- the Hermes CLI calls ----------------------------------------------------------------------

def create_args(job: DesiredJob) -> list[str]:
    """`hermes cron create`; options as `--opt=value` and the prompt checked not to start with `-`
    (settings), so no value is read as an option."""
    args = ["cron", "create", f"--name={job.hermes_name}", f"--deliver={job.deliver}"]
    if job.script:
        args.append(f"--script={job.script}")
    if job.no_agent:
        args.append("--no-agent")
    args.append(job.schedule)
    if job.prompt:
        args.append(job.prompt)
    return args


def edit_args(job: DesiredJob, job_id: str) -> list[str]:
    """`hermes cron edit ID` setting every managed field (an empty script clears it)."""
    return ["cron", "edit", job_id, f"--schedule={job.schedule}", f"--prompt={job.prompt}",
            f"--deliver={job.deliver}", f"--script={job.script or ''}", "--no-agent" if job.no_agent else "--agent"]


def plan_calls(plan: CronPlan) -> list[list[str]]:
    """The Hermes arguments, in order: removals free names before anything is created."""
    calls = [["cron", "remove", job.id] for job in plan.remove]
    for item in plan.change:
        if item.edited:
            calls.append(edit_args(item.desired, item.listed.id))
        if "enabled" in item.fields:
            calls.append(["cron", "resume" if item.desired.enabled else "pause", item.listed.id])
    for job in plan.add:
        calls.append(create_args(job))
        if not job.enabled:
            calls.append(["cron", "pause", job.hermes_name])
    return calls


# Hermes's output names jobs (the agent may have named them): only printable ASCII reaches a log.
_CLEAN = "LC_ALL=C sed 's/\\x1b\\[[0-9;]*m//g' | LC_ALL=C tr -cd '\\12\\40-\\176'"
# Hermes 0.19.0's `cmd_cron` drops `cron_command`'s return value, so a refused create or edit
# exits 0: its "Failed to ..." / "Job not found" line is the only sign. A job name the agent chose
# can at worst make this fail, never make a failure pass.
_FAILED = "grep -Eq '^(Failed to |Job not found|Unknown cron command)'"


def hermes_call(settings: HostSettings, gateway: GatewaySettings, args: list[str]) -> str:
    """One Hermes CLI call in a one-off container of the gateway's own service (its image, data dir
    and uid 10000, like `hermes-infra hermes`), output cleaned, failing when Hermes refused."""
    run = (f"{compose.compose_command(settings.project_dir, compose.MAIN_PROJECT)} run --rm --no-deps -T "
           f"{shlex.quote(gateway.service_name)} {shlex.join(args)}")
    return (f"( out=$( {run} 2>&1 ); rc=$?; out=$(printf '%s\\n' \"$out\" | {_CLEAN}); printf '%s\\n' \"$out\"; "
            f"[ \"$rc\" -eq 0 ] "
            f"&& ! printf '%s\\n' \"$out\" | {_FAILED} )")


def _shown(value: str) -> str:
    text = "".join(ch if ch.isprintable() else "?" for ch in value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 1] + "~"


def drift_lines(plan: CronPlan, profile: str) -> list[str]:
    """What `--dry` shows for one gateway's jobs (names from the host shown as data)."""
    lines = [f"cron[{profile}]: + {job.hermes_name} ({job.schedule}, deliver {job.deliver})" for job in plan.add]
    for item in plan.change:
        lines.append(f"cron[{profile}]: ~ {item.desired.hermes_name} ({', '.join(item.fields)})")
    lines += [f"cron[{profile}]: - {_shown(job.name)} ({_shown(job.id)})" for job in plan.remove]
    if plan.foreign:
        names = ", ".join(_shown(job.name or job.id) for job in plan.foreign)
        lines.append(f"cron[{profile}]: left alone (made by hand): {names}")
    return lines
