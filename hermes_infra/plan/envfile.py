"""Merging managed keys into a `.env` file without losing anything the operator or Hermes wrote.

Hermes loads `.env` with override, so managed keys must live there; but the same file also
holds keys the operator added by hand and keys Hermes writes itself (a WeChat login). The merge
rewrites only the lines of keys whose value must change, appends missing keys, and keeps every
other line, comment and blank line byte for byte.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")
MANAGED_HEADER = "# --- managed by hermes-infra (keys below may be changed on the next deploy) ---"


def _unquote(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
        return raw[1:-1]
    if " #" in raw:  # an inline comment after an unquoted value
        raw = raw.split(" #", 1)[0].rstrip()
    return raw


def _quote(value: str) -> str:
    """Quote only when a dotenv parser would otherwise change the value."""
    if value == "" or re.fullmatch(r"[A-Za-z0-9_./:@,+=%-]+", value):
        return value
    if "'" not in value:
        return f"'{value}'"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse(text: str) -> dict[str, str]:
    """Key -> value as Hermes (python-dotenv) reads it; the last assignment of a key wins."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if match and not line.lstrip().startswith("#"):
            values[match.group(1)] = _unquote(match.group(2))
    return values


@dataclass(frozen=True)
class EnvMerge:
    text: str = field(repr=False)
    changed_keys: tuple[str, ...]
    """Managed keys whose value changed or that were added (names only: values are secret)."""
    removed_keys: tuple[str, ...] = ()
    """Keys hermes-infra wrote before that left the settings: every assignment of them is gone."""

    @property
    def changed(self) -> bool:
        return bool(self.changed_keys or self.removed_keys)


def _last_lines(lines: list[str]) -> dict[str, str]:
    last: dict[str, str] = {}
    for line in lines:
        match = _LINE.match(line)
        if match and not line.lstrip().startswith("#"):
            last[match.group(1)] = line
    return last


def merge(existing: str | None, managed: dict[str, str], remove: tuple[str, ...] = ()) -> EnvMerge:
    """The file with `managed` applied and the keys in `remove` gone (the plan decides which:
    only keys hermes-infra wrote). Unknown keys, comments and order are preserved.

    A managed key whose line is not in canonical form (`KEY=value`, quoted only where needed;
    not `export KEY=`, not a duplicate) is rewritten even when its value is right, so every
    reader of the file (Hermes, the health gate's one-line extraction, the checks) agrees.
    """
    current = parse(existing or "")
    lines = (existing or "").splitlines()
    last = _last_lines(lines)
    counts: dict[str, int] = {}
    for line in lines:
        match = _LINE.match(line)
        if match and not line.lstrip().startswith("#"):
            counts[match.group(1)] = counts.get(match.group(1), 0) + 1
    changed = [key for key, value in managed.items()
               if current.get(key) != value or last.get(key) != f"{key}={_quote(value)}" or counts.get(key, 0) > 1]
    removed = tuple(key for key in remove if key in counts and key not in managed)
    if not changed and not removed:
        return EnvMerge(existing or "", ())
    pending = dict((key, managed[key]) for key in changed)
    # Replace the last assignment of a changed key (that is the one that counts) and drop
    # earlier duplicates of it, so the file says one thing.
    last_index = {}
    for index, line in enumerate(lines):
        match = _LINE.match(line)
        if match and not line.lstrip().startswith("#") and match.group(1) in pending:
            last_index[match.group(1)] = index
    out: list[str] = []
    for index, line in enumerate(lines):
        match = _LINE.match(line)
        key = match.group(1) if match and not line.lstrip().startswith("#") else None
        if key in pending:
            if last_index[key] == index:
                out.append(f"{key}={_quote(pending[key])}")
            continue
        if key in removed:
            continue
        out.append(line)
    missing = [key for key in changed if key not in last_index]
    if missing:
        if MANAGED_HEADER not in out:
            if out and out[-1].strip():
                out.append("")
            out.append(MANAGED_HEADER)
        out.extend(f"{key}={_quote(pending[key])}" for key in missing)
    return EnvMerge("\n".join(out) + "\n" if out else "", tuple(changed), removed)


def render(values: dict[str, str]) -> str:
    """A fresh env file (for companions, whose env file is wholly managed)."""
    return "".join(f"{key}={_quote(value)}\n" for key, value in values.items())
