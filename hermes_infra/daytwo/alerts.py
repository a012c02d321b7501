"""`hermes-infra alerts test TARGET`: a test message through each receiver of each host.

The watchdog sends it on the host (`hermes-infra-alerts --test`), with the receivers' secrets
read from its root 0600 config there: nothing secret travels in this command or its output.
Each receiver's result is one line (its label, its kind, `sent` or why not, in numbers and
fixed words: never a URL, a token or what the receiver answered).
"""
from __future__ import annotations

import shlex
import sys
from collections.abc import Callable

from hermes_infra.daytwo.remote import DayTwoError, HostTarget, Remote, clean, for_each_host, open_remote
from hermes_infra.plan import alerts as alerts_plan

NOT_INSTALLED = 3


def test_command() -> str:
    script = shlex.quote(alerts_plan.SCRIPT)
    return (f"if [ -f {script} ] && [ -f {shlex.quote(alerts_plan.CONFIG)} ]; then python3 {script} --test; "
            f"else exit {NOT_INSTALLED}; fi")


def test_host(host: HostTarget, remote_for: Callable[[HostTarget], Remote] = open_remote) -> tuple[int, list[str]]:
    """(exit code, lines to print) for one host."""
    if host.settings.alerts is None:
        raise DayTwoError(f"host {host.name}: the setting alerts is not set, so there are no receivers. Fix: set "
                          "alerts.receivers (see the README's Alerts and metrics section) and run hermes-infra up")
    remote = remote_for(host)
    try:
        result = remote.run(test_command(), timeout=120)
    finally:
        remote.close()
    if result.rc == NOT_INSTALLED:
        return 1, [f"{host.name}: the watchdog is not installed on the host. Fix: hermes-infra up (it installs it "
                   "when alerts is set)"]
    lines = [f"{host.name}: {clean(line, 200)}" for line in result.text.splitlines() if line.strip()]
    if result.rc != 0 and not lines:
        lines = [f"{host.name}: the test failed (exit {result.rc}); see journalctl -u hermes-infra-alerts"]
    return (0 if result.rc == 0 else 1), lines


def test(hosts: list[HostTarget], remote_for: Callable[[HostTarget], Remote] = open_remote,
         say: Callable[[str], None] = print) -> int:
    results = for_each_host(hosts, lambda host: test_host(host, remote_for))
    for _, lines in results:
        for line in lines:
            say(line)
    return max((rc for rc, _ in results), default=0)


def add_commands(sub, add_target_options, make_target) -> None:
    from hermes_infra.daytwo import remote

    def cmd_alerts_test(args) -> int:
        try:
            return test(remote.resolve(make_target(args)))
        except DayTwoError as error:
            print(f"hermes-infra: {error}", file=sys.stderr)
            return 2

    p = sub.add_parser("alerts", help="the on-host watchdog's alerts (setting alerts)")
    alerts_sub = p.add_subparsers(dest="alerts_command", required=True)
    t = alerts_sub.add_parser("test", help="send a test message through each receiver and report each result",
                              description="On each host, the watchdog sends one test message through every receiver "
                              "of its settings (with the secrets it keeps there, root 0600) and prints one line per "
                              "receiver: sent, or why not. Exit 0 when every message was accepted.")
    add_target_options(t)
    t.set_defaults(func=cmd_alerts_test)
