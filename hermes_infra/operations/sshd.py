"""SSH hardening (setting ssh_hardening): a new sshd drop-in is put in place with a revert
pending, checked by `sshd -t` and `sshd -T`, reloaded, and kept only once a second, new SSH
connection with the deploy's own key logged in.

The order is the safety, as with the firewall: the previous drop-in is saved and a systemd
timer armed to put it back (`systemd-run --on-active`) before the new one is written; a config
sshd refuses, or one whose effective values are not the planned ones, is undone at once, before
any reload. The deploy's own connection survives a reload (sshd's running sessions keep their
process), so only a NEW login proves the operator can still get in. Turning it off removes the
drop-in hermes-infra wrote (and only that) and reloads: nothing it leaves can lock anyone out.
"""
from __future__ import annotations

import shlex

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, deploy, operation
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS

from hermes_infra.operations import files
from hermes_infra.operations.firewall import Confirm, Confirmation, revert_unless_confirmed
from hermes_infra.plan import sshd
from hermes_infra.plan.hostplan import Writer
from hermes_infra.plan.sshd import SshdPlan

TIMER = f"{sshd.REVERT_UNIT}.timer"
REVERT_SERVICE = f"{sshd.REVERT_UNIT}.service"
_RUNNER_ARGUMENTS = {"_stdin", "_get_pty", "_timeout", "_success_exit_codes"}
DROPIN = shlex.quote(sshd.DROPIN_PATH)
REVERT = shlex.quote(sshd.REVERT_PATH)
# A running sshd re-reads its config on SIGHUP (Debian's ExecReload runs `sshd -t` first); a
# socket-activated one that is not running reads it when it starts.
RELOAD = f"{{ ! systemctl is-active --quiet {sshd.SERVICE} || systemctl reload {sshd.SERVICE}; }}"


def restore_script() -> str:
    """The drop-in as saved (an empty save: there was none), then a reload. Run by the timer,
    and at once when the new config fails its checks or its confirmation."""
    new = shlex.quote(sshd.DROPIN_PATH + ".new")
    return (f"if [ ! -e {REVERT} ]; then exit 0; fi; "
            f"if [ -s {REVERT} ]; then cp {REVERT} {new} && chmod 0644 {new} && mv -f {new} {DROPIN}; "
            f"else rm -f {DROPIN}; fi && rm -f {REVERT} && {RELOAD}")


def arm_revert_command(seconds: int) -> str:
    """Save the drop-in as it is now and arm the timer that restores it in `seconds`. With a
    revert already pending (an earlier run never confirmed), its save is the last config known
    to let people in: it is kept, not replaced by the unconfirmed drop-in in place now."""
    temp = shlex.quote(sshd.REVERT_PATH + ".tmp")
    save = (f"{{ if [ -f {DROPIN} ] && [ ! -L {DROPIN} ]; then cat {DROPIN}; fi; }} > {temp} && chmod 0600 {temp} "
            f"&& mv -f {temp} {REVERT}")
    return (f"install -d -m 0700 {shlex.quote(sshd.REVERT_PATH.rsplit('/', 1)[0])} && "
            f"if systemctl is-active --quiet {TIMER} && [ -e {REVERT} ]; then :; else {save}; fi && "
            f"{{ systemctl stop {TIMER} 2>/dev/null; systemctl reset-failed {TIMER} {REVERT_SERVICE} 2>/dev/null; true; }} && "
            f"systemd-run --quiet --unit={sshd.REVERT_UNIT} --on-active={int(seconds)} /bin/sh -c "
            f"{shlex.quote(restore_script())}")


def verify_command(directives: tuple[tuple[str, str], ...]) -> str:
    """`sshd -T` shows every planned value (what a file read earlier set would win)."""
    checks = []
    for keyword, value in directives:
        spellings = {value.lower(), sshd.normal(value)}
        pattern = "|".join(f"{keyword.lower()} {spelling}" for spelling in sorted(spellings))
        checks.append(f"printf '%s\\n' \"$t\" | grep -qixE {shlex.quote(pattern)}")
    return f"t=$({sshd.SSHD} -T) && " + " && ".join(checks)


def install_command(staged: str, directives: tuple[tuple[str, str], ...]) -> str:
    """The drop-in in place by a rename; undone at once unless sshd accepts it and shows its values."""
    new = shlex.quote(sshd.DROPIN_PATH + ".new")
    failed = shlex.quote("hermes-infra: sshd refused the new drop-in (sshd -t) or does not use its values (sshd -T); "
                         "the previous one is back and sshd was not reloaded")
    return (f"install -m 0644 -o root -g root {shlex.quote(staged)} {new} && mv -f {new} {DROPIN} && "
            f"if {sshd.SSHD} -t && {verify_command(directives)}; then {RELOAD}; else "
            f"systemctl stop {TIMER} 2>/dev/null; ( {restore_script()} ); echo {failed} >&2; false; fi")


def disarm_command(staged: str) -> str:
    return f"systemctl stop {TIMER} && rm -f {REVERT} {shlex.quote(staged)}"


def revert_now_command() -> str:
    """Best effort, over the deploy's own (established) connection: the timer stays armed."""
    return f"systemctl start --no-block {REVERT_SERVICE}"


def confirmed(state, host, confirmation: Confirmation) -> bool:
    return revert_unless_confirmed(state, host, confirmation, revert_now_command(), lambda problem, seconds: (
        f"ssh_hardening: the new sshd config was reloaded, but a second SSH connection with the "
        f"deploy's key failed ({problem}). It is being reverted (the timer {TIMER} restores the previous "
        f"{sshd.DROPIN_PATH} within {seconds} s even if this connection is gone). Fix: check that the key this "
        "deploy uses is in the login's authorized_keys and that sshd's logs (`journalctl -u ssh`) accept it, "
        "then deploy again"))


@operation()
def dropin_applied(plan: SshdPlan, writer: Writer, confirm: Confirm):
    """The planned drop-in is in place and in use (confirmed by a second login), or none when off."""
    if not plan.enabled:
        if plan.present:
            # A revert still pending would put the drop-in back.
            yield (f"{{ systemctl stop {TIMER} 2>/dev/null; true; }} && rm -f {DROPIN} {REVERT} && "
                   f"{sshd.SSHD} -t && {RELOAD}")
        else:
            host.noop("no hermes-infra sshd drop-in is installed")
        return
    if not plan.needs_apply:
        host.noop(f"{sshd.DROPIN_PATH} is in place and sshd uses its values")
        return
    # Someone else's file at this name is replaced (the plan refused nothing about it): kept in the backup dir.
    first = (files.backed_up(writer, sshd.DROPIN_PATH, f"cp -a {DROPIN} {shlex.quote(files.backup_target(sshd.DROPIN_PATH, writer))}")
             if plan.foreign else None)
    staged = yield from files.upload(writer, plan.dropin.content, sshd.DROPIN_PATH + ".pending", first=first)
    yield arm_revert_command(plan.confirm_seconds)
    yield install_command(staged, plan.directives)
    arguments = {key: value for key, value in (host.current_op_global_arguments or {}).items()
                 if key in CONNECTOR_ARGUMENT_KEYS and key not in _RUNNER_ARGUMENTS}
    yield FunctionCommand(confirmed, (Confirmation(confirm, plan.confirm_seconds, arguments),), {})
    yield disarm_command(staged)


@deploy("SSH hardening")
def ssh_hardening(plan: SshdPlan, writer: Writer, confirm: Confirm):
    if not plan.enabled and not plan.present:
        return  # never had one: no operations to show
    for warning in plan.warnings:
        logger.warning(f"{host.print_prefix}ssh_hardening: {warning}")
    dropin_applied(name=f"sshd drop-in {sshd.DROPIN_PATH}"
                        + (" (key-only logins, revert unless a new login confirms)" if plan.enabled else ": removed"),
                   plan=plan, writer=writer, confirm=confirm)
