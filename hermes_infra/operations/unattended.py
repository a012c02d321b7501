"""Automatic security updates (setting unattended_upgrades): the package, then its files (the
package's own setup could otherwise write 20auto-upgrades over ours), each checked by apt's own
parser before it replaces the old one. Off: the files hermes-infra wrote go, the package stays
(removing it could take an operator's own configuration with it)."""
from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import deploy, operation

from hermes_infra.operations.files import root_file
from hermes_infra.plan.hostplan import Writer
from hermes_infra.plan.unattended import UnattendedPlan


def apt_accepts(staged: str) -> str:
    """apt's parser reads the staged file with the rest of its configuration."""
    return f"apt-config -c {staged} dump >/dev/null"


@operation()
def files_removed(plan: UnattendedPlan):
    """Only files that carry hermes-infra's marker (plan.remove) are removed."""
    if not plan.remove:
        host.noop("no hermes-infra unattended-upgrades files are installed")
        return
    yield f"rm -f {' '.join(shlex.quote(path) for path in plan.remove)}"


@operation()
def timers_enabled(plan: UnattendedPlan):
    """apt-daily (lists) and apt-daily-upgrade (unattended-upgrade) start by themselves. Left as
    they are when the setting is off: they are the distribution's, enabled by default."""
    if not plan.timers_off:
        host.noop("apt-daily.timer and apt-daily-upgrade.timer are enabled")
        return
    units = " ".join(shlex.quote(unit) for unit in plan.timers_off)
    yield f"systemctl unmask {units} && systemctl enable --now {units}"


@deploy("Automatic security updates")
def unattended_upgrades(plan: UnattendedPlan, writer: Writer):
    """The package is already installed: `release.deploy.hardening` installs it with the TLS
    proxy's in one apt run, before either's files."""
    if not plan.enabled:
        if plan.remove:
            files_removed(name="Automatic security updates: hermes-infra's files removed", plan=plan)
        return
    for file in plan.files:
        root_file(name=f"Automatic security updates: {file.path}", file=file, writer=writer, check=apt_accepts)
    timers_enabled(name="Automatic security updates: apt's daily timers enabled", plan=plan)
