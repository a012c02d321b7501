"""The audit log on each host: `/var/log/hermes-infra/audit.jsonl`, one JSON line per run.

Directory 0700 and file 0600, root's; append-only by convention (`>>`, never rewritten). A
record holds time, who, command, revision, image, result, the operations that changed
something, seconds and a message; never a secret (the line travels in the command).
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field

from hermes_infra.host.cleantext import clean
from hermes_infra.release.lock import now_iso, who

AUDIT_DIR = "/var/log/hermes-infra"
AUDIT_PATH = f"{AUDIT_DIR}/audit.jsonl"
RESULTS = ("success", "failed", "interrupted")


@dataclass(frozen=True)
class AuditRecord:
    command: str
    result: str
    revision: str | None = None
    image: str | None = None
    changed: tuple[str, ...] = ()
    seconds: float = 0.0
    message: str | None = None
    who: str = field(default_factory=who)
    time: str = field(default_factory=now_iso)

    def __post_init__(self) -> None:
        if self.result not in RESULTS:
            raise ValueError(f"audit result must be one of {RESULTS}, not {self.result!r}")

    def as_dict(self) -> dict:
        return {"time": self.time, "who": self.who, "command": self.command, "revision": self.revision,
                "image": self.image, "result": self.result, "changed": list(self.changed),
                "seconds": round(float(self.seconds), 1), "message": self.message}

    def line(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=False, separators=(", ", ": ")) + "\n"


def append_command(record: AuditRecord, path: str = AUDIT_PATH) -> str:
    # printf is a shell builtin and the line is ASCII JSON (no control character, every quote
    # escaped), so it travels as one quoted word; chmod puts back modes someone widened.
    directory = shlex.quote(path.rsplit("/", 1)[0] or "/")
    quoted = shlex.quote(path)
    return (f"umask 077; {{ [ -d {directory} ] || install -d -m 0700 -o 0 -g 0 {directory}; }} && "
            f"printf %s {shlex.quote(record.line())} >> {quoted} && chmod go-rwx {directory} {quoted}")


def tail_command(lines: int, path: str = AUDIT_PATH) -> str:
    quoted = shlex.quote(path)
    return f"if [ -f {quoted} ]; then tail -n {int(lines)} {quoted}; fi"


def parse(text: str) -> list[dict]:
    records = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = {"result": "unreadable", "message": line[:200]}
        if isinstance(record, dict):
            records.append(record)
    return records


def format_records(host: str, records: list[dict]) -> str:
    if not records:
        return f"{host}: no audit records"
    rows = [f"{clean(host)}:"]
    for r in records:
        # Every field may have been written by anyone with root on the host, or come from a
        # message or output the agent shaped: cleaned before it reaches a terminal.
        def field(key: str, default: str = "?") -> str:
            value = r.get(key)
            return clean(default if value is None or value == "" else value, 300)

        changed = r.get("changed")
        changed = ", ".join(clean(c, 200) for c in changed) if isinstance(changed, list) and changed else "-"
        message = f"  {field('message')}" if r.get("message") else ""
        rows.append(f"  {field('time'):<21} {field('who'):<24} {field('command'):<9} "
                    f"{field('result'):<11} rev {field('revision', '-'):<12} {field('seconds', '0'):>6}s  "
                    f"image {field('image', '-')}  changed: {changed}{message}")
    return "\n".join(rows)


def write(remote, record: AuditRecord, path: str | None = None) -> bool:
    result = remote.run(append_command(record, path or AUDIT_PATH), timeout=60)
    return result.rc == 0


def tail(remote, lines: int = 20, path: str | None = None) -> list[dict]:
    path = path or AUDIT_PATH
    result = remote.run(tail_command(lines, path), timeout=60)
    if result.rc != 0:
        raise RuntimeError(f"{remote.name}: could not read {path}: {result.stderr.strip()[-300:]}")
    return parse(result.stdout)


def write_quietly(remote, record: AuditRecord, path: str | None = None) -> bool:
    """`write` for a command whose work is done before its record is (a restart, a Hermes CLI
    change, a manual lock or release): a host that cannot take the line must not turn work done
    into an error. False when the line was not written (the caller says so)."""
    try:
        return write(remote, record, path)
    except Exception:  # noqa: BLE001 - the connection may be gone; the work is done either way
        return False
