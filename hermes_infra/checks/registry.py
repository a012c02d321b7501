"""Controls as data: a stable ID, a title, a severity, the CIS Docker Benchmark number where
one matches, remediation text, what the control applies to, and the function that checks it.

A control's ID never changes meaning once released (waivers and audit trails refer to it);
a retired control keeps its ID reserved rather than handing it to another check.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Severity = Literal["critical", "high", "medium", "low", "advisory"]
SEVERITIES: tuple[str, ...] = ("critical", "high", "medium", "low", "advisory")

# What one instance of a control is about:
#   host      - once per host
#   gateway   - once per gateway profile in the settings
#   container - once per gateway and once per companion (both are containers we run)
#   companion - once per companion
# `scheduled`: each gateway whose settings declare cron jobs (a control about them has no subject
# on a gateway without: it is not part of that host's report at all, rather than "not applicable").
# `firewall`: the host, once, where the settings turn the firewall on (none elsewhere, likewise);
# `ssh_hardening`, `updates` and `tls_proxy` the same for settings ssh_hardening, unattended_upgrades
# and tls_proxy.
Scope = Literal["host", "gateway", "container", "companion", "scheduled", "firewall", "ssh_hardening", "updates",
                "tls_proxy"]
SCOPES: tuple[str, ...] = ("host", "gateway", "container", "companion", "scheduled", "firewall", "ssh_hardening",
                           "updates", "tls_proxy")

ID_PATTERN = re.compile(r"^HI-[A-Z]+-\d{3}$")


class ControlFailure(AssertionError):
    """The host is not what the settings say. The message says what was found and expected.

    An AssertionError, so the same check functions read naturally under pytest too.
    """


def fail(message: str) -> None:
    raise ControlFailure(message)


class CannotCheck(RuntimeError):
    """The check could not decide (permission denied, daemon unreachable): an `error`, never a pass
    or a finding. The message says what to do."""


class NotApplicable(Exception):
    """The control does not apply with these settings (e.g. swap.size is 0)."""


@dataclass(frozen=True)
class Control:
    id: str
    title: str
    severity: Severity
    scope: Scope
    remediation: str
    check: Callable = None  # (ctx, subject) -> str | None (detail shown on pass)
    cis: str | None = None
    rationale: str = ""

    def __post_init__(self) -> None:
        if not ID_PATTERN.match(self.id):
            raise ValueError(f"control id {self.id!r} does not match {ID_PATTERN.pattern}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"control {self.id}: unknown severity {self.severity!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"control {self.id}: unknown scope {self.scope!r}")


REGISTRY: dict[str, Control] = {}


def control(id: str, title: str, *, severity: Severity, scope: Scope, remediation: str,
            cis: str | None = None, rationale: str = "") -> Callable[[Callable], Callable]:
    """Register the decorated check function as control `id`."""

    def register(function: Callable) -> Callable:
        if id in REGISTRY:
            raise ValueError(f"control id {id} is registered twice")
        REGISTRY[id] = Control(id=id, title=title, severity=severity, scope=scope, remediation=remediation,
                               check=function, cis=cis, rationale=rationale)
        function.control_id = id
        return function

    return register

