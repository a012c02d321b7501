"""The host firewall (setting firewall): a new ruleset is loaded with a revert pending, and only
a second, new SSH connection cancels the revert and lets the deploy persist the rules for boot.

The order is the safety: the rules are checked (`nft -c`) before anything changes; the previous
table is saved and a systemd timer armed to restore it (`systemd-run --on-active`) before the
new one is loaded; the established deploy connection survives any ruleset (replies are always
accepted), so only a NEW connection proves that the operator can still log in. The ruleset file
and the boot unit are written only after that proof, so a reboot inside the window boots the
previous rules too. Turning the firewall off removes the table, the file and the unit.
"""
from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field

from pyinfra import host, logger
from pyinfra.api import FunctionCommand, StringCommand, deploy, operation
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS

from hermes_infra.operations import files
from hermes_infra.operations.files import root_file
from hermes_infra.plan import firewall as fw
from hermes_infra.plan.firewall import FirewallPlan
from hermes_infra.plan.hostplan import Writer

Confirm = Callable[..., "str | None"]
"""`confirm(state, host, seconds)`: None when a second, new SSH connection logged in and ran a
command within `seconds`; else what went wrong (one line, no secret)."""

TABLE = f"inet {fw.TABLE}"
TIMER = f"{fw.REVERT_UNIT}.timer"
REVERT_SERVICE = f"{fw.REVERT_UNIT}.service"
# Read by pyinfra's own command runner, not by the shell command.
_RUNNER_ARGUMENTS = {"_stdin", "_get_pty", "_timeout", "_success_exit_codes"}


@dataclass(frozen=True)
class Confirmation:
    """What the callback needs; the sudo/su arguments (a password among them, maybe) stay out of
    the repr pyinfra prints for a function command."""

    confirm: Confirm = field(repr=False)
    seconds: int
    arguments: dict = field(repr=False, default_factory=dict)


def arm_revert_command(seconds: int) -> str:
    """Save the table as it is now and arm a timer that puts it back in `seconds`.

    With a revert already pending (an earlier run that never confirmed), its saved table is the
    last one known to let people in: it is kept, not replaced by the unconfirmed one loaded now.
    An empty saved table (only the create and delete lines) removes ours: no table before, none after."""
    revert = shlex.quote(fw.REVERT_PATH)
    temp = shlex.quote(fw.REVERT_PATH + ".new")
    save = (f"{{ echo 'table {TABLE}'; echo 'delete table {TABLE}'; {{ {fw.NFT} -s list table {TABLE} 2>/dev/null || true; }}; }} "
            f"> {temp} && chmod 0600 {temp} && mv -f {temp} {revert}")
    return (f"install -d -m 0700 {shlex.quote(fw.REVERT_PATH.rsplit('/', 1)[0])} && "
            f"if systemctl is-active --quiet {TIMER} && [ -s {revert} ]; then :; else {save}; fi && "
            f"{{ systemctl stop {TIMER} 2>/dev/null; systemctl reset-failed {TIMER} {REVERT_SERVICE} 2>/dev/null; true; }} && "
            f"systemd-run --quiet --unit={fw.REVERT_UNIT} --on-active={int(seconds)} {fw.NFT} -f {revert}")


def load_command(staged: str) -> str:
    return f"{fw.NFT} -f {shlex.quote(staged)}"


def disarm_command(staged: str) -> str:
    """The revert cancelled, the loaded table's listing recorded (drift is a different listing)."""
    loaded = shlex.quote(fw.LOADED_PATH)
    return (f"systemctl stop {TIMER} && "
            f"{fw.NFT} -s list table {TABLE} | sha256sum | cut -d ' ' -f 1 > {loaded}.new && mv -f {loaded}.new {loaded} "
            f"&& rm -f {shlex.quote(fw.REVERT_PATH)} {shlex.quote(staged)}")


def revert_now_command() -> str:
    """Best effort, over the deploy's own (established) connection: the timer stays armed."""
    return f"systemctl start --no-block {REVERT_SERVICE}"


def revert_unless_confirmed(state, host, confirmation: Confirmation, revert_now: str,
                            failure: Callable[[str, int], str]) -> bool:
    """The second connection of a change applied with a revert timer armed (the firewall's rules,
    the SSH drop-in): confirmed, or the revert is started now (best effort, over the deploy's own
    connection: the timer restores without it too) and `failure(problem, seconds)` is logged."""
    seconds = confirmation.seconds
    problem = confirmation.confirm(state, host, seconds)
    if problem is None:
        return True
    try:
        host.run_shell_command(StringCommand(revert_now), **confirmation.arguments)
    except Exception:  # noqa: BLE001 - the armed timer reverts without this connection
        pass
    logger.error(f"{host.print_prefix}{failure(problem, seconds)}")
    return False


def confirmed(state, host, confirmation: Confirmation) -> bool:
    """The second connection; on failure the revert is started now and the deploy of this host
    stops with what to do."""
    return revert_unless_confirmed(state, host, confirmation, revert_now_command(), lambda problem, seconds: (
        f"firewall: the new rules were loaded, but a second SSH connection failed ({problem}). "
        f"They are being reverted (the timer {TIMER} restores the previous rules within {seconds} s even if "
        "this connection is gone); nothing was persisted, so the host also boots with the previous rules. "
        "Fix: check firewall.ssh_port, firewall.ssh_allow_from and the cloud firewall in front of the host, "
        "then deploy again"))


@operation()
def rules_loaded(plan: FirewallPlan, writer: Writer, confirm: Confirm):
    """The planned table is loaded (confirmed by a second connection), or none when off."""
    if not plan.enabled:
        if plan.table_loaded:
            # A revert still pending would put the table back.
            yield f"{{ systemctl stop {TIMER} 2>/dev/null; true; }} && {fw.NFT} delete table {TABLE} && rm -f {shlex.quote(fw.REVERT_PATH)}"
        else:
            host.noop("no hermes-infra firewall table is loaded")
        return
    if not plan.needs_load:
        host.noop(f"table {TABLE} {plan.digest} is loaded as recorded")
        return
    # Staged where only root reads it, checked before anything on the host changes.
    staged = yield from files.upload(writer, plan.text, fw.RULESET_PATH + ".pending")
    yield f"{fw.NFT} -c -f {shlex.quote(staged)}"
    yield f"{arm_revert_command(plan.confirm_seconds)} && {load_command(staged)}"
    arguments = {key: value for key, value in (host.current_op_global_arguments or {}).items()
                 if key in CONNECTOR_ARGUMENT_KEYS and key not in _RUNNER_ARGUMENTS}
    yield FunctionCommand(confirmed, (Confirmation(confirm, plan.confirm_seconds, arguments),), {})
    yield disarm_command(staged)


@operation()
def boot_unit(plan: FirewallPlan):
    """The unit that loads the file at boot, enabled (after the file it loads is written)."""
    if plan.enabled:
        if plan.unit_enabled and not plan.unit.content_changed:
            host.noop(f"{fw.UNIT} is enabled")
            return
        yield f"systemctl daemon-reload && systemctl enable --quiet {fw.UNIT}"
        return
    if not plan.present and not plan.unit_enabled:
        host.noop("no hermes-infra firewall files are installed")
        return
    # Disabled without stopping: stopping a oneshot loader changes nothing in the kernel.
    yield f"systemctl disable --quiet {fw.UNIT} 2>/dev/null || true"
    yield f"rm -f {' '.join(shlex.quote(p) for p in (*fw.PATHS, fw.REVERT_PATH))} && systemctl daemon-reload"


@deploy("Firewall")
def firewall(plan: FirewallPlan, writer: Writer, confirm: Confirm, install: Callable[[], None]):
    """`install()` installs nftables (apt, as the deploy installs its other packages)."""
    for warning in plan.warnings:  # off too: ufw beside a published port
        logger.warning(f"{host.print_prefix}firewall: {warning}")
    if not plan.enabled and not (plan.table_loaded or plan.present or plan.unit_enabled):
        return  # never had one: no operations to show
    if plan.enabled and not plan.nft_installed:
        install()
    rules_loaded(name=f"Firewall rules (table {TABLE}"
                      + (f", SSH on {', '.join(map(str, plan.ssh_ports))}, revert unless confirmed)" if plan.enabled
                         else ": removed)"),
                 plan=plan, writer=writer, confirm=confirm)
    if plan.enabled:
        root_file(name=f"Firewall rules for boot: {fw.RULESET_PATH}", file=plan.ruleset, writer=writer)
        root_file(name=f"Firewall boot unit: {fw.UNIT_PATH}", file=plan.unit, writer=writer)
    boot_unit(name=f"Firewall loaded at boot ({fw.UNIT}, before docker.service)"
                   + ("" if plan.enabled else ": removed"), plan=plan)
