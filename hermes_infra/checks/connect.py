"""testinfra hosts built from pyinfra inventory host data, one SSH connection per host.

testinfra's paramiko backend opens its connection lazily (a cached `client`) and reuses it
for every command; we build one backend per host and keep it for the whole run, so a run
costs exactly one SSH handshake per host. The subclass adds what the inventory says about
host keys (`ssh_known_hosts_file`, `ssh_strict_host_key_checking`: loaded, and with accept-new
saved, as pyinfra's connector does), agent and key lookup, which testinfra's own backend does
not read. Day-two and release connections use this same client.
"""
from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass
from typing import Any

import paramiko
import testinfra.host
from testinfra.backend.paramiko import IgnorePolicy, ParamikoBackend

CONNECT_TIMEOUT = 30


@dataclass(frozen=True)
class Connection:
    """How to reach one inventory host over SSH (from pyinfra host data)."""

    name: str
    hostname: str
    port: int = 22
    user: str | None = None
    key: str | None = None
    key_password: str | None = None
    password: str | None = None
    known_hosts_file: str | None = None
    strict_host_key_checking: str = "accept-new"
    allow_agent: bool = True
    look_for_keys: bool = True
    sudo: bool = False
    local: bool = False

    @property
    def address(self) -> str:
        if self.local:
            return "local"
        return f"{self.user + '@' if self.user else ''}{self.hostname}:{self.port}"

    def __repr__(self) -> str:  # never show passwords
        return f"Connection({self.name!r}, {self.address})"


def _flag(value, default: bool = True) -> bool:
    return default if value is None else bool(value)


def connection_for(inventory_host, sudo: bool = False) -> Connection:
    """A Connection from a pyinfra inventory host (group data and --data already merged)."""
    data = inventory_host.data
    name = inventory_host.name
    if name == "@local" or name.startswith("@local"):
        return Connection(name=name, hostname="localhost", local=True, sudo=sudo or bool(data.get("_sudo")))
    if name.startswith("@") and not name.startswith("@ssh/"):
        raise ValueError(f"host {name}: only SSH hosts (and @local) can be checked, not {name.split('/')[0]}")
    hostname = data.get("ssh_hostname") or name.removeprefix("@ssh/")
    strict = data.get("ssh_strict_host_key_checking")
    return Connection(
        name=name, hostname=hostname, port=int(data.get("ssh_port") or 22), user=data.get("ssh_user"),
        key=data.get("ssh_key"), key_password=data.get("ssh_key_password"), password=data.get("ssh_password"),
        known_hosts_file=data.get("ssh_known_hosts_file"),
        strict_host_key_checking=str(strict) if strict is not None else "accept-new",
        allow_agent=_flag(data.get("ssh_allow_agent")), look_for_keys=_flag(data.get("ssh_look_for_keys")),
        sudo=sudo or bool(data.get("_sudo")),
    )


DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
_known_hosts_lock = threading.Lock()


class AcceptNewPolicy(paramiko.MissingHostKeyPolicy):
    """OpenSSH's `StrictHostKeyChecking=accept-new`, as pyinfra's connector does it: a host not
    in known_hosts is accepted once and its key saved there, so the next connection checks it;
    a host whose key changed is refused by paramiko itself (BadHostKeyException)."""

    def __init__(self, path: str):
        self.path = path

    def missing_host_key(self, client, hostname, key):
        entry = paramiko.hostkeys.HostKeyEntry([hostname], key).to_line()
        with _known_hosts_lock:
            directory = os.path.dirname(self.path)
            if directory and not os.path.isdir(directory):
                os.makedirs(directory, mode=0o700, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a") as known_hosts:
                known_hosts.write(entry)
        client.get_host_keys().add(hostname, key.get_name(), key)


def setup_host_keys(client: paramiko.SSHClient, c: Connection) -> None:
    """The inventory's host-key rules, read as pyinfra's SSH connector reads them:
    `ssh_known_hosts_file` (default ~/.ssh/known_hosts) is loaded; `ssh_strict_host_key_checking`
    `accept-new` (the default) saves an unknown host's key there, `yes` refuses an unknown host,
    and `no`/`off` is the explicit opt-out (nothing loaded or saved, any key accepted: what
    `ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null` does). Otherwise a key that
    differs from the saved one is refused by paramiko (BadHostKeyException)."""
    path = os.path.expanduser(c.known_hosts_file or DEFAULT_KNOWN_HOSTS)
    strict = c.strict_host_key_checking.lower()
    if strict in ("no", "off", "false"):
        client.set_missing_host_key_policy(IgnorePolicy())
        return
    if os.path.exists(path):
        client.get_host_keys().load(path)
    if strict in ("yes", "true", "ask"):  # nobody to ask here: unknown hosts are refused
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
    elif strict == "accept-new":
        client.set_missing_host_key_policy(AcceptNewPolicy(path))
    else:
        raise ValueError(f"host {c.name}: ssh_strict_host_key_checking {c.strict_host_key_checking!r} is not one of "
                         "accept-new, yes, no, off. Fix: accept-new (the default) or yes")


class HermesParamikoBackend(ParamikoBackend):
    """testinfra's paramiko backend, connected the way the inventory says."""

    NAME = "paramiko"

    def __init__(self, connection: Connection, **kwargs: Any):
        self.connection = connection
        self.connect_count = 0
        spec = f"{connection.user + '@' if connection.user else ''}{connection.hostname}:{connection.port}"
        super().__init__(spec, ssh_identity_file=connection.key, timeout=CONNECT_TIMEOUT, sudo=connection.sudo,
                         **kwargs)

    def get_hostname(self) -> str:
        return self.connection.name

    @functools.cached_property
    def client(self) -> paramiko.SSHClient:
        c = self.connection
        client = paramiko.SSHClient()
        setup_host_keys(client, c)
        kwargs: dict[str, Any] = {
            "hostname": c.hostname, "port": c.port, "username": c.user, "timeout": CONNECT_TIMEOUT,
            "banner_timeout": CONNECT_TIMEOUT, "auth_timeout": CONNECT_TIMEOUT,
            "allow_agent": c.allow_agent, "look_for_keys": c.look_for_keys,
        }
        if c.key:
            kwargs["key_filename"] = os.path.expanduser(c.key)
            if c.key_password:
                kwargs["passphrase"] = c.key_password
        if c.password:
            kwargs["password"] = c.password
        client.connect(**kwargs)
        self.connect_count += 1
        return client

    def close(self) -> None:
        client = self.__dict__.pop("client", None)
        if client is not None:
            client.close()


_lock = threading.Lock()


def testinfra_host(connection: Connection):
    """A testinfra Host for one connection (connects on its first command, then reuses it)."""
    with _lock:
        if connection.local:
            return testinfra.host.get_host("local://", sudo=connection.sudo)
        backend = HermesParamikoBackend(connection)
        host = testinfra.host.Host(backend)
        backend.set_host(host)
        return host


def close(host) -> None:
    backend = getattr(host, "backend", None)
    if isinstance(backend, HermesParamikoBackend):
        backend.close()
