"""Which `.env` and `config.yaml` keys hermes-infra wrote into each data dir, so that a key that
left the settings is removed on the next deploy while operator and Hermes keys stay.

The record lives beside the manifest of profiles (`<project_dir>/managed-keys.json`, root's,
0600), never in the data dir: the agent owns its data dir, and a record it could write would let
it name the operator's own keys (a provider key, an allowlist) as "managed", and the next deploy
would delete them. The record holds key names and, per key, a salted digest of the value
hermes-infra wrote (never the value): a key is removed only while its value is still the one
hermes-infra wrote. A value that changed since (Hermes rewrote it, the operator edited it) is no
longer hermes-infra's, and stays.

Pure: the plan hands in what the host has and gets back what to remove and the new record.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

VERSION = 1
RECORD_NAME = "managed-keys.json"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DIGEST = re.compile(r"[0-9a-f]{16}")
_SALT = re.compile(r"[0-9a-f]{32}")
_PART = re.compile(r"[^\x00-\x1f\x7f.]+")
MAX_KEYS = 2000


@dataclass(frozen=True)
class ProfileRecord:
    data_dir: str
    env: dict[str, str] = field(default_factory=dict)
    config: dict[str, str] = field(default_factory=dict)
    """Dotted key -> digest of the value written."""


@dataclass(frozen=True)
class Record:
    salt: str
    profiles: dict[str, ProfileRecord]


def record_path(project_dir: str) -> str:
    return f"{project_dir.rstrip('/')}/{RECORD_NAME}"


def new_salt() -> str:
    return secrets.token_hex(16)


def digest(salt: str, value: Any) -> str:
    """A salted digest of a value: the record can show it (a dry run diffs the record) without
    it standing for a guessable secret."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return hmac.new(salt.encode(), text.encode("utf-8", errors="surrogateescape"), hashlib.sha256).hexdigest()[:16]


def load_versioned(text: str | None, version: int) -> dict | None:
    """A root-only record's JSON as hermes-infra writes it (this `version`, a `profiles` object),
    or None when there is none or it is anything else. Shared by the records of managed keys and
    of the agent's files and jobs."""
    if not text:
        return None
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(raw, dict) or raw.get("version") != version or not isinstance(raw.get("profiles"), dict):
        return None
    return raw


def parse(text: str | None) -> Record | None:
    """The record on the host, or None when there is none or it is not exactly what hermes-infra
    writes (then nothing is removed this run and a correct record is written)."""
    raw = load_versioned(text, VERSION)
    if raw is None:
        return None
    salt = raw.get("salt")
    if not isinstance(salt, str) or not _SALT.fullmatch(salt):
        return None
    profiles: dict[str, ProfileRecord] = {}
    count = 0
    for name, entry in raw["profiles"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("data_dir"), str):
            return None
        env, config = entry.get("env", {}), entry.get("config", {})
        if not _digests(env, _valid_env_key) or not _digests(config, _valid_dotted):
            return None
        count += len(env) + len(config)
        profiles[name] = ProfileRecord(entry["data_dir"], dict(env), dict(config))
    if count > MAX_KEYS:
        return None
    return Record(salt, profiles)


def _digests(values: Any, valid_key) -> bool:
    return isinstance(values, dict) and all(
        isinstance(k, str) and valid_key(k) and isinstance(v, str) and _DIGEST.fullmatch(v) for k, v in values.items())


def _valid_env_key(key: str) -> bool:
    return bool(_ENV_NAME.fullmatch(key))


def _valid_dotted(key: str) -> bool:
    return all(_PART.fullmatch(part) for part in key.split("."))


def previous_for(record: Record | None, profile: str, data_dir: str) -> ProfileRecord | None:
    """What hermes-infra wrote into this data dir last time; None (remove nothing) when there is
    no record yet or it was for another data dir."""
    if record is None:
        return None
    entry = record.profiles.get(profile)
    return entry if entry is not None and entry.data_dir == data_dir else None


def env_removals(previous: ProfileRecord | None, salt: str, managed: dict[str, str],
                 current: dict[str, str]) -> tuple[str, ...]:
    """Recorded keys that left the settings and still hold the value hermes-infra wrote."""
    if previous is None:
        return ()
    return tuple(sorted(key for key, written in previous.env.items()
                        if key not in managed and key in current
                        and hmac.compare_digest(digest(salt, current[key]), written)))


_MISSING = object()


def _get(tree: Any, dotted: str) -> Any:
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _overlaps(key: str, managed: dict[str, Any]) -> bool:
    """A managed key at, above or below `key`: the merge sets that path, so removing `key`
    would take away (or fight) what the settings manage now."""
    return any(key == other or key.startswith(other + ".") or other.startswith(key + ".") for other in managed)


def config_removals(previous: ProfileRecord | None, salt: str, managed: dict[str, Any],
                    tree: dict) -> tuple[str, ...]:
    if previous is None:
        return ()
    removals = []
    for key, written in previous.config.items():
        if _overlaps(key, managed):
            continue
        value = _get(tree, key)
        if value is not _MISSING and hmac.compare_digest(digest(salt, value), written):
            removals.append(key)
    return tuple(sorted(removals))


def profile_entry(data_dir: str, salt: str, env: dict[str, str], config: dict[str, Any]) -> dict:
    return {"data_dir": data_dir,
            "env": {key: digest(salt, value) for key, value in sorted(env.items())},
            "config": {key: digest(salt, value) for key, value in sorted(config.items())}}


def render(salt: str, profiles: dict[str, dict]) -> str:
    return json.dumps({"version": VERSION, "salt": salt, "profiles": profiles}, indent=2, sort_keys=True) + "\n"
