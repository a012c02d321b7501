"""The agent as code: what `gateways[].files` and `gateways[].cron` may say, checked by meaning.

Pure checks (no model here: `schema.py` holds the models and calls these), each returning the
normalized value or raising ValueError with the setting, the value and the fix.

The syntax accepted is the pinned Hermes's own (0.19.0, read from its source):
- `cron/jobs.py` `parse_schedule`: `every <N><m|h|d>` (an interval), five fields of
  `[0-9*,/-]` (a cron expression, checked by croniter), a timestamp or a bare duration (one-shot
  jobs). Settings take the two recurring forms only: a one-shot job runs once and is then gone,
  so a declared one would be created again on every deploy.
- `cron/scheduler.py` `_KNOWN_DELIVERY_PLATFORMS` and `_resolve_delivery_targets`: `local`
  (kept in `cron/output/`, delivered nowhere), `origin` (the chat a job was created from: a job
  made by the CLI has none, so it is refused here), `all`, `<platform>` (its home channel, set
  by `/sethome` or `<PLATFORM>_HOME_CHANNEL`), `<platform>:<chat id>[:<thread id>]`, several
  joined by commas.
- `tools/cronjob_tools.py` `_validate_cron_script_path`: a script is a path relative to
  `<data dir>/scripts/`.
"""
from __future__ import annotations

import os
import posixpath
import re
import stat
from pathlib import Path

CONTAINER_DATA_DIR = "/opt/data"
SCRIPTS_DIR = "scripts"
MAX_FILE_BYTES = 1 << 20
"""A managed file is read back through the data-dir reads, which stop at 1 MiB (safeio)."""
FILE_MODES = ("0600", "0644", "0700", "0755")

_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")
MAX_DEPTH = 8
OWNED_BY_HERMES_INFRA = frozenset({".env", "config.yaml"})
RUNTIME_STATE = frozenset({
    # What Hermes writes at run time (hermes-facts.md "Runtime state"): never a managed file's home.
    "state.db", "response_store.db", "sessions", "memories", "logs", "cron", "weixin", "platforms",
    "profiles", "cache", "backups", "checkpoints", "auth.json", "gateway.json", "gateway_state.json",
    "image_cache", "audio_cache", "pairing", "sandboxes", "bin", "node_modules",
})
"""First path segments a managed file may not use (a `state.db-wal` counts as `state.db`)."""

DELIVERY_PLATFORMS = frozenset({
    "telegram", "discord", "slack", "whatsapp", "signal", "matrix", "mattermost", "homeassistant",
    "dingtalk", "feishu", "wecom", "wecom_callback", "weixin", "sms", "email", "webhook", "bluebubbles",
    "qqbot", "yuanbao",
})
_CHAT = re.compile(r"[A-Za-z0-9@._#+=!$~-]{1,200}")
_JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_INTERVAL = re.compile(r"every\s+(\d+)\s*(m|min|mins|minute|minutes|h|hr|hrs|hour|hours|d|day|days)", re.IGNORECASE)
_CRON_FIELD = re.compile(r"[\d*,/-]+")
CRON_RANGES = ((0, 59, "minute"), (0, 23, "hour"), (1, 31, "day of month"), (1, 12, "month"), (0, 7, "day of week"))


def check_dest(dest: str, setting: str) -> str:
    """A relative path inside the data dir, from an allow-list of characters, not a file
    hermes-infra writes and not under the state Hermes writes itself."""
    fix = ("Fix: a relative path inside the data dir such as SOUL.md, interview/notes.md or "
           "scripts/check.sh (letters, digits, '.', '_', '-', segments not starting with '.' or '-')")
    if dest.startswith("/"):
        raise ValueError(f"{setting} {dest!r} is absolute. It is relative to the data dir "
                         f"({CONTAINER_DATA_DIR} in the container). {fix}")
    segments = dest.split("/")
    if len(segments) > MAX_DEPTH or not all(_SEGMENT.fullmatch(s) for s in segments) or ".hermes-infra." in dest:
        raise ValueError(f"{setting} {dest!r} is not an allowed path. {fix}")
    if dest in OWNED_BY_HERMES_INFRA:
        raise ValueError(f"{setting} {dest!r} is written by hermes-infra from the settings (env, config). "
                         "Fix: set its keys there instead")
    top = segments[0]
    if any(top == name or top.startswith(name + "-") or top.startswith(name + ".") for name in RUNTIME_STATE):
        raise ValueError(f"{setting} {dest!r} is under {top!r}, state Hermes writes while it runs; a deploy "
                         f"must not overwrite it. Fix: another place, e.g. knowledge/{segments[-1]}")
    return dest


def check_src_name(src: str, setting: str) -> str:
    """A relative path in the operator's repository: no `..`, no absolute path."""
    if not src or src.startswith("/") or any(part in ("", ".", "..") for part in src.split("/")):
        raise ValueError(f"{setting} {src!r} must be a relative path inside the repository hermes-infra runs "
                         "from, without '.', '..' or empty parts. Fix: e.g. files/hermes/SOUL.md")
    return src


def check_job_name(name: str, setting: str) -> str:
    if not _JOB_NAME.fullmatch(name):
        raise ValueError(f"{setting} {name!r} is not a job name hermes-infra manages. Fix: letters, digits, "
                         "'.', '_', '-', starting with a letter or digit, at most 64 characters")
    return name


def _cron_field_ok(field: str, low: int, high: int) -> bool:
    for item in field.split(","):
        base, _, step = item.partition("/")
        if step and (not step.isdigit() or int(step) < 1):
            return False
        if base == "*":
            continue
        first, _, last = base.partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            return False
        if not low <= int(first) <= high or (last and not int(first) <= int(last) <= high):
            return False
    return True


def check_schedule(schedule: str, setting: str) -> str:
    """`every <N><unit>` or a five-field cron expression, normalized the way Hermes stores it."""
    text = " ".join(schedule.split())
    interval = _INTERVAL.fullmatch(text)
    if interval:
        minutes = int(interval.group(1)) * {"m": 1, "h": 60, "d": 1440}[interval.group(2)[0].lower()]
        if minutes < 1:
            raise ValueError(f"{setting} {schedule!r} is an interval of 0 minutes. Fix: every 1m or more")
        return f"every {minutes}m"
    fields = text.split(" ")
    if len(fields) == 5 and all(_CRON_FIELD.fullmatch(f) for f in fields):
        for field, (low, high, what) in zip(fields, CRON_RANGES):
            if not _cron_field_ok(field, low, high):
                raise ValueError(f"{setting} {schedule!r}: the {what} field {field!r} is not a value, range, list "
                                 f"or step within {low}-{high}. Fix: e.g. '0 9 * * *' (09:00 every day)")
        return text
    raise ValueError(f"{setting} {schedule!r} is not a recurring schedule Hermes accepts. Fix: 'every 30m', "
                     "'every 2h', 'every 1d', or five cron fields of digits and * , / - such as '0 9 * * 1-5' "
                     "(one-shot schedules such as '30m' or a timestamp are not declared in settings)")


def check_deliver(deliver: str, setting: str) -> str:
    targets = [t.strip() for t in deliver.split(",")]
    for target in targets:
        platform, _, chat = target.partition(":")
        if target in ("local", "all"):
            continue
        if target == "origin":
            raise ValueError(f"{setting} {deliver!r}: 'origin' is the chat a job was created from, and a job made "
                             "by hermes-infra has none: it would be delivered nowhere. Fix: weixin (the home "
                             "channel /sethome chose), weixin:<chat id>, or local")
        if platform not in DELIVERY_PLATFORMS:
            raise ValueError(f"{setting} {deliver!r}: {platform!r} is not a platform Hermes delivers to. Fix: "
                             f"local, all, or one of {', '.join(sorted(DELIVERY_PLATFORMS))}, optionally "
                             "followed by :<chat id>")
        if chat and not all(_CHAT.fullmatch(part) for part in chat.split(":", 1)):
            raise ValueError(f"{setting} {deliver!r}: the chat id {chat!r} has characters Hermes's chat ids do "
                             "not. Fix: the id `/sethome` or the platform shows, e.g. weixin:o9cq80xyz@im.wechat")
    return ",".join(targets)


def check_script(script: str, setting: str, dests: set[str]) -> str:
    """A path relative to `scripts/`, among the managed files (or Hermes says "Script not found")."""
    if script.startswith(("/", "~")) or ".." in script.split("/"):
        raise ValueError(f"{setting} {script!r}: Hermes takes a script path relative to {CONTAINER_DATA_DIR}/"
                         f"{SCRIPTS_DIR}/. Fix: the file name, e.g. check_and_send.sh")
    dest = posixpath.join(SCRIPTS_DIR, script)
    if dest not in dests:
        raise ValueError(f"{setting} {script!r} is not among this gateway's files: the job would fail with "
                         f"\"Script not found: {CONTAINER_DATA_DIR}/{dest}\". Fix: add a files entry with "
                         f"dest {dest!r}")
    return script


def source_root() -> Path:
    """The operator's repository: the directory hermes-infra runs in (like pyinfra's inventory)."""
    return Path.cwd()


def src_problem(src: str, root: Path | None = None) -> str | None:
    """Why `src` cannot be copied (None: it can): every part must be a real directory or, last,
    a regular file of at most MAX_FILE_BYTES; a link anywhere could point outside the repository."""
    path = root or source_root()
    parts = src.split("/")
    for index, part in enumerate(parts):
        path = path / part
        try:
            info = os.lstat(path)
        except OSError:
            return f"does not exist under {root or source_root()}. Fix: the path of the file in your repository"
        if stat.S_ISLNK(info.st_mode):
            return f"has a symbolic link at {'/'.join(parts[:index + 1])!r}. Fix: copy the file itself there"
        last = index == len(parts) - 1
        if last and not stat.S_ISREG(info.st_mode):
            return "is not a regular file. Fix: name a file (a directory is not copied as a whole)"
        if not last and not stat.S_ISDIR(info.st_mode):
            return f"has {'/'.join(parts[:index + 1])!r}, which is not a directory"
        if last and info.st_size > MAX_FILE_BYTES:
            return f"is {info.st_size} bytes, more than {MAX_FILE_BYTES}. Fix: a smaller file (or several)"
    return None


def read_src(src: str, root: Path | None = None) -> bytes:
    """The bytes of a checked `src`, opened without following a link, believed only as a regular file."""
    path = (root or source_root()) / src
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_FILE_BYTES:
            raise ValueError(f"files[].src {src!r} changed since it was checked: not a regular file of at most "
                             f"{MAX_FILE_BYTES} bytes now")
        with os.fdopen(descriptor, "rb", closefd=False) as handle:
            return handle.read(MAX_FILE_BYTES + 1)
    finally:
        os.close(descriptor)


def check_agent_code(files: list[tuple[str, str]], jobs: list[tuple[str, str | None]], where: str) -> None:
    """Across one gateway's entries: one file per dest, no dest inside another, one job per name,
    every script among the files."""
    dests = [dest for _, dest in files]
    for dest in dests:
        if dests.count(dest) > 1:
            raise ValueError(f"{where}.files: dest {dest!r} is listed twice. Fix: one entry per destination")
        for other in dests:
            if other.startswith(dest + "/"):
                raise ValueError(f"{where}.files: dest {dest!r} is a file and {other!r} would need it to be a "
                                 "directory. Fix: rename one of them")
    # Hermes finds a job by name ignoring case (`resolve_job_ref`): `Brief` and `brief` are one name.
    names = [name.lower() for name, _ in jobs]
    for name, _ in jobs:
        if names.count(name.lower()) > 1:
            raise ValueError(f"{where}.cron: job name {name!r} is used twice (Hermes ignores case). Fix: one entry "
                             "per job")
    for name, script in jobs:
        if script is not None:
            check_script(script, f"{where}.cron[{name}].script", set(dests))
