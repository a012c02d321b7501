"""SSH hardening's proof of life and its refusal up front.

The proof: after the new sshd config is reloaded (operations/sshd.py), a second, NEW SSH
connection, a fresh instance of the host's own connector from the same host data (the same
key or agent, user and port), must log in and run a command. The deploy's own connection is no
proof: its session was authenticated under the old config.

The refusal: a deploy that itself logs in with a password would lock itself out.
"""
from __future__ import annotations

import os

from hermes_infra.release import firewall_confirm

# For the end-to-end test only: the user the confirmation logs in as instead of the host's (a
# user without the deploy's key plays a config that refuses the deploy's key).
TEST_USER_ENV = "HERMES_INFRA_TEST_SSHD_CONFIRM_USER"


class _Data:
    """host.data with the user replaced (connectors read it by attribute and by get)."""

    def __init__(self, data, user: str):
        self._data, self._user = data, user

    def get(self, key, default=None):
        return self._user if key == "ssh_user" else self._data.get(key, default)

    def __getattr__(self, key):
        return self._user if key == "ssh_user" else getattr(self._data, key)

    def __getitem__(self, key):
        return self.get(key)

    def dict(self):
        return {**dict(self._data.dict()), "ssh_user": self._user}


class _HostView:
    def __init__(self, host, user: str):
        self._host = host
        self.data = _Data(host.data, user)

    def __getattr__(self, key):
        return getattr(self._host, key)


def attempt(state, host) -> str | None:
    user = os.environ.get(TEST_USER_ENV)
    return firewall_confirm.attempt(state, _HostView(host, user) if user else host)


def new_connection(state, host, seconds: int, attempt=attempt, **kwargs) -> str | None:
    """Log in again until it works or the revert window (less a margin) is over."""
    return firewall_confirm.new_connection(state, host, seconds, attempt=attempt, **kwargs)


def login_method(host) -> str:
    """How the deploy's own connection logged in: 'publickey', 'password', 'not-ssh' or
    'unknown'. paramiko's transport says which method succeeded; without it, a password in the
    host data and no key means one was used."""
    connector = getattr(host, "connector", None)
    client = getattr(connector, "client", None)
    if connector is None or not hasattr(connector, "make_paramiko_kwargs"):
        return "not-ssh"
    try:
        method = client.get_transport().auth_handler.auth_method
    except AttributeError:
        method = None
    if method == "publickey":
        return "publickey"
    if method in ("password", "keyboard-interactive"):
        return "password"
    data = host.data
    return "password" if data.get("ssh_password") and not data.get("ssh_key") else "unknown"
