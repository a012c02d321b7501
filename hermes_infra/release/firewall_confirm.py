"""The firewall's proof of life: a second, NEW SSH connection to the host, made after the new
rules are loaded (operations/firewall.py). The deploy's own connection is no proof: it is
established, and established traffic passes any ruleset hermes-infra writes.

The connection is a fresh instance of the host's own pyinfra connector, built from the same host
data (address, port, user, key, known hosts), so it reaches the host the way the operator does.
"""
from __future__ import annotations

import os
import time

import gevent
from pyinfra.api import StringCommand

# For the end-to-end test only: the port the confirmation connects to instead of the host's
# (a port nobody answers on plays a ruleset that cuts new SSH connections off).
TEST_PORT_ENV = "HERMES_INFRA_TEST_FIREWALL_CONFIRM_PORT"
# Left of the revert window for the attempts: the last one must end before the timer fires.
MARGIN_SECONDS = 10
ATTEMPT_PAUSE_SECONDS = 2


def _data(host):
    data = host.data
    port = os.environ.get(TEST_PORT_ENV)
    if not port:
        return data
    return _OverriddenData(data, {"ssh_port": int(port)})


class _OverriddenData:
    """host.data with a few values replaced (pyinfra's connectors read it by attribute and get)."""

    def __init__(self, data, values: dict):
        self._data, self._values = data, values

    def get(self, key, default=None):
        return self._values[key] if key in self._values else self._data.get(key, default)

    def __getattr__(self, key):
        if key in self._values:
            return self._values[key]
        return getattr(self._data, key)

    def __getitem__(self, key):
        return self.get(key)

    def dict(self):
        merged = dict(self._data.dict())
        merged.update(self._values)
        return merged


class _HostView:
    """The host as the second connector sees it: the same, with its data possibly overridden."""

    def __init__(self, host):
        self._host = host
        self.data = _data(host)

    def __getattr__(self, key):
        return getattr(self._host, key)


def attempt(state, host) -> str | None:
    """One new connection running `true`; None when it worked, else what failed."""
    connector = type(host.connector)(state, _HostView(host))
    try:
        connector.connect()
        ok, _ = connector.run_shell_command(StringCommand("true"))
        return None if ok else "the new connection logged in but could not run a command"
    except Exception as error:  # noqa: BLE001 - whatever it is, the rules stay unconfirmed
        return f"{type(error).__name__}: {str(error).strip()[:200] or 'no detail'}"
    finally:
        client = getattr(connector, "client", None)
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing a dead connection
                pass


def new_connection(state, host, seconds: int, attempt=attempt, clock=time.monotonic, sleep=gevent.sleep) -> str | None:
    """Connect again until it works or the revert window (less a margin) is over (pausing with
    gevent's sleep: the other hosts' greenlets run meanwhile)."""
    deadline = clock() + max(seconds - MARGIN_SECONDS, 1)
    problem = None
    while True:
        problem = attempt(state, host)
        if problem is None or clock() + ATTEMPT_PAUSE_SECONDS >= deadline:
            return problem
        sleep(ATTEMPT_PAUSE_SECONDS)
