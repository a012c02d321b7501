"""Outcomes of control instances, waivers applied to them, and the exit code.

Statuses:
  passed   the host complies
  failed   it does not (blocking)
  error    the check could not decide (host unreachable, command failed) (blocking)
  warning  an `advisory` control failed: reported, not blocking
  skipped  the control does not apply with these settings
  waived   failed/error/warning, covered by an active waiver (not blocking; the raw outcome is kept)
"""
from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field

from hermes_infra.checks.registry import CannotCheck, Control, ControlFailure, NotApplicable
from hermes_infra.checks.waivers import Waiver, find_waiver

BLOCKING = ("failed", "error")
STATUSES = ("passed", "failed", "error", "warning", "skipped", "waived")


@dataclass
class Result:
    host: str
    control: Control
    subject: str
    status: str
    message: str = ""
    duration: float = 0.0
    outcome: str = ""  # the raw outcome before waivers (passed/failed/error/warning/skipped)
    waiver: Waiver | None = None
    expired_waiver: Waiver | None = None

    def __post_init__(self) -> None:
        self.outcome = self.outcome or self.status

    @property
    def blocking(self) -> bool:
        return self.status in BLOCKING


@dataclass
class HostReport:
    name: str
    address: str = ""
    results: list[Result] = field(default_factory=list)
    connection_error: str | None = None
    seconds: float = 0.0


def evaluate(control: Control, ctx, subject, host_name: str) -> Result:
    """Run one control instance; never raises (an unexpected exception is an `error`)."""
    started = time.monotonic()
    try:
        detail = control.check(ctx, subject)
        status, message = "passed", detail or ""
    except ControlFailure as failure:
        status, message = ("warning" if control.severity == "advisory" else "failed"), str(failure)
    except NotApplicable as reason:
        status, message = "skipped", str(reason)
    except CannotCheck as reason:
        status, message = "error", f"cannot check: {reason}"[:500]
    except Exception as error:  # noqa: BLE001 - any other problem means "could not decide"
        status, message = "error", f"{type(error).__name__}: {error}"[:500]
    return Result(host=host_name, control=control, subject=subject.label, status=status, message=message,
                  duration=time.monotonic() - started)


def apply_waivers(results: list[Result], waivers: list[Waiver], today: dt.date | None = None) -> list[Result]:
    today = today or dt.date.today()
    for result in results:
        active, expired = find_waiver(waivers, result.control.id, result.host, result.subject, today)
        if result.outcome in ("failed", "error", "warning"):
            if active is not None:
                result.status, result.waiver = "waived", active
            elif expired is not None:
                result.expired_waiver = expired
        elif active is not None:
            result.waiver = active  # shown as "waiver not needed"
    return results


def counts(results: list[Result]) -> dict[str, int]:
    found = {status: 0 for status in STATUSES}
    for result in results:
        found[result.status] += 1
    found["total"] = len(results)
    return found


def exit_code(results: list[Result]) -> int:
    """0 when nothing blocking is left after waivers, 1 otherwise."""
    return 1 if any(result.blocking for result in results) else 0


def all_results(reports: list[HostReport]) -> list[Result]:
    return [result for report in reports for result in report.results]
