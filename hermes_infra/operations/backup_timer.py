"""The scheduled-backup timer running as the plan says (its files are written by the deploy)."""
from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import operation

from hermes_infra.plan.backup_timer import PATHS, TIMER_UNIT
from hermes_infra.plan.hostplan import BackupTimerPlan


@operation()
def timer_running(plan: BackupTimerPlan):
    """The backup timer enabled and waiting when a schedule is set; gone (archives kept) when
    the setting is unset."""
    calendar = plan.calendar
    if calendar is None:
        if not plan.present and not plan.enabled:
            host.noop("no backup schedule is set")
            return
        yield f"systemctl disable --now {TIMER_UNIT} 2>/dev/null || true"
        yield f"rm -f {' '.join(PATHS)} && systemctl daemon-reload"
        return
    if plan.enabled and plan.active and not plan.files_changed:
        host.noop(f"backups run {calendar}")
        return
    # The calendar is checked by systemd itself before the timer is (re)started with it.
    yield f"systemd-analyze calendar {shlex.quote(calendar)} >/dev/null"
    yield f"systemctl daemon-reload && systemctl enable {TIMER_UNIT} && systemctl restart {TIMER_UNIT}"
