"""The watchdog's timer and the node exporter running as the plan says (their files are written
by the deploy with `root_file`); both removed when their settings leave."""
from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import operation

from hermes_infra.plan.alerts import (
    EXPORTER_DROPIN,
    EXPORTER_UNIT,
    PATHS,
    SERVICE_UNIT,
    STATE_DIR,
    TEXTFILE,
    TIMER_UNIT,
    AlertsPlan,
    MetricsPlan,
)


@operation()
def timer_running(plan: AlertsPlan):
    """The watchdog's timer enabled and waiting when alerts or metrics are set; when neither is,
    its units, script, config (secrets) and state are gone."""
    if not plan.wanted:
        if not plan.present and not plan.enabled and not plan.active:
            host.noop("no alerts or metrics are set")
            return
        yield f"systemctl disable --now {TIMER_UNIT} {SERVICE_UNIT} 2>/dev/null || true"
        yield f"rm -f {' '.join(shlex.quote(p) for p in PATHS)} && rm -rf {shlex.quote(STATE_DIR)} && systemctl daemon-reload"
        return
    if plan.enabled and plan.active and not plan.files_changed:
        host.noop(f"the watchdog runs every {plan.interval} s")
        return
    yield f"systemctl daemon-reload && systemctl enable {TIMER_UNIT} && systemctl restart {TIMER_UNIT}"


@operation()
def exporter_running(plan: MetricsPlan, dropin_changed: bool = False):
    """The node exporter enabled and running with the drop-in's address when metrics is set;
    stopped, disabled and the drop-in and textfile gone when it is not (the package stays: it may
    have been installed for another reason)."""
    if not plan.wanted:
        if not plan.dropin_present:
            host.noop("metrics are not set")
            return
        yield f"systemctl disable --now {EXPORTER_UNIT} 2>/dev/null || true"
        yield f"rm -f {shlex.quote(EXPORTER_DROPIN)} {shlex.quote(TEXTFILE)} && systemctl daemon-reload"
        return
    if plan.installed and plan.enabled and plan.active and not dropin_changed:
        host.noop(f"the node exporter serves {plan.url}")
        return
    yield f"systemctl daemon-reload && systemctl enable {EXPORTER_UNIT} && systemctl restart {EXPORTER_UNIT}"
