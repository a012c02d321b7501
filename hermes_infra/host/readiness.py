"""Reading a gateway's `/health/detailed` answer: ready (`status: ok`) or not, and which checks fail.

`/health` says the API server is alive; `/health/detailed` (key required) says whether the
gateway can do its work. Hermes answers it 200 even when degraded, so the body decides:
0.19.0 sends `{"status": "ok"|"degraded", "readiness": {"status": ..., "checks": {"model":
{"status": "degraded"}, "state_db": {"status": "ok"}, ...}}}`; without a model provider the
`model` check is `degraded`. (It checks that a provider is configured, not that it answers: a
wrong provider key still reads `ok`, measured.) The body is the agent's: parsed as JSON, every
value cleaned and cut short before anyone prints it, never used as structure.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from hermes_infra.host.cleantext import clean

OK_WORDS = ("ok", "pass", "passed", "healthy", "ready")
MAX_CHECKS = 20


@dataclass(frozen=True)
class Readiness:
    status: str | None
    """The top-level `status` (cleaned), None when the body is not the JSON object Hermes sends."""
    failing: tuple[str, ...] = field(default_factory=tuple)
    """`name: reason` of each failing check (`model: degraded`)."""

    @property
    def ready(self) -> bool:
        return self.status == "ok"

    @property
    def failing_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(check.split(":")[0] for check in self.failing))


def check_state(check) -> tuple[bool, str]:
    """(ok, short reason) of one readiness check, whatever shape Hermes gives it."""
    if isinstance(check, bool):
        return check, ""
    if isinstance(check, str):
        return check.lower() in OK_WORDS, clean(check, 60)
    if isinstance(check, dict):
        state = check.get("status", check.get("ok", check.get("healthy")))
        ok = state is True or (isinstance(state, str) and state.lower() in OK_WORDS)
        reason = check.get("message") or check.get("detail") or check.get("error") or (state if isinstance(state, str) else "")
        return ok, clean(reason, 100)
    return True, ""


def parse(body: str) -> Readiness:
    try:
        detailed = json.loads(body)
    except (json.JSONDecodeError, RecursionError, ValueError):
        return Readiness(None)
    if not isinstance(detailed, dict):
        return Readiness(None)
    status = clean(detailed.get("status"), 20) if isinstance(detailed.get("status"), str) else None
    readiness = detailed.get("readiness")
    checks = readiness.get("checks") if isinstance(readiness, dict) else None
    items = checks.items() if isinstance(checks, dict) else enumerate(checks) if isinstance(checks, list) else ()
    failing = []
    for name, check in list(items)[:MAX_CHECKS]:
        ok, label = check_state(check)
        if not ok:
            label_name = clean(check.get("name") if isinstance(check, dict) and "name" in check else name, 40)
            failing.append(f"{label_name}: {label}" if label else label_name)
    return Readiness(status or None, tuple(failing))
