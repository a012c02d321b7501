"""Compliance checks: is a host (still) what its settings say? Built on pytest-testinfra.

    hermes-infra check inventory/production.py --report text --report junit=check.xml
    pytest --hosts=ssh://root@203.0.113.7 --hermes-settings settings.json \\
        $(python -c 'import hermes_infra.checks as c; print(c.TEST_MODULE)')

Controls are data (:mod:`~hermes_infra.checks.registry`) with check functions
(:mod:`~hermes_infra.checks.controls`) that use the testinfra ``host`` object; expected values
come from the same ``HostSettings`` the deploy uses.
"""
from __future__ import annotations

from pathlib import Path

from hermes_infra.checks.controls import all_controls
from hermes_infra.checks.registry import REGISTRY, Control, ControlFailure, NotApplicable

TEST_MODULE = str(Path(__file__).with_name("test_controls.py"))

SCOPE_LABELS = {"host": "host", "gateway": "each gateway", "container": "each gateway and companion",
                "companion": "each companion"}


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def controls_markdown() -> str:
    """The controls as a Markdown table for the README (ID, title, severity, CIS, remediation)."""
    lines = ["| ID | Title | Severity | CIS | Remediation |", "|---|---|---|---|---|"]
    for control in all_controls():
        lines.append(f"| `{control.id}` | {_md(control.title)} | {control.severity} | {control.cis or '-'} | "
                     f"{_md(control.remediation)} |")
    return "\n".join(lines) + "\n"


__all__ = [
    "REGISTRY",
    "TEST_MODULE",
    "Control",
    "ControlFailure",
    "NotApplicable",
    "all_controls",
    "controls_markdown",
]
