"""One SSH connection per host for day-two commands, and the hosts a target names.

Hosts and their validated settings come from the same place the deploy and the checks read
them (`checks.runner.resolve`: inventory, group_data, --data), so `status`, `backup` and the
others know each profile's container, data dir and URL without asking. A `Remote` runs shell
text on one host over one paramiko connection (opened on the first command, reused after),
streams stdin and stdout as bytes (backups are archives), and wraps commands in `sudo -n`
when the target says `--sudo`. Interactive commands (a TTY for `hermes gateway setup`) use
the `ssh` binary with the same options instead: paramiko has no terminal to hand over.
"""
from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, Iterator, Protocol

from hermes_infra import commands
from hermes_infra.host.cleantext import (  # noqa: F401  (day-two code imports them from here)
    clean,
    clean_lines,
)
from hermes_infra.checks import connect
from hermes_infra.settings.schema import GatewaySettings, HostSettings
from hermes_infra.host.sshchannel import RunResult, exchange

MAX_PARALLEL_HOSTS = 8


class Remote(Protocol):
    """What day-two code needs from a host (SSHRemote; tests use a fake)."""

    def run(self, command: str, *, stdin: bytes | BinaryIO | None = None,
            on_stdout: Callable[[bytes], None] | None = None, timeout: float | None = None) -> RunResult: ...

    def close(self) -> None: ...


@dataclass
class HostTarget:
    """One host a day-two command acts on: how to reach it and what it runs."""

    name: str
    connection: connect.Connection
    settings: HostSettings
    target: commands.Target | None = None

    def gateways(self, profile: str | None = None) -> list[GatewaySettings]:
        gateways = list(self.settings.gateways)
        if profile is None:
            return gateways
        chosen = [g for g in gateways if g.name == profile]
        if not chosen:
            names = ", ".join(g.name for g in gateways)
            raise DayTwoError(f"host {self.name} has no profile {profile!r} in its settings (it has: {names}). "
                              "Fix: --profile NAME with one of those")
        return chosen


class DayTwoError(Exception):
    """A day-two command cannot go on; the message says what and what to do."""


def resolve(target: commands.Target) -> list[HostTarget]:
    """Every host of the target with validated settings (raises SettingsError before connecting)."""
    from hermes_infra.checks.runner import resolve as resolve_checks

    hosts = []
    for found in resolve_checks([target]):
        if found.connection.local:
            raise DayTwoError(f"host {found.name}: day-two commands need an SSH host, not @local")
        hosts.append(HostTarget(found.name, found.connection, found.settings, target))
    return hosts


def wrap(command: str, sudo: bool) -> str:
    """The command as the remote login shell gets it (root via `sudo -n` when asked)."""
    return f"sudo -n -- sh -c {shlex.quote(command)}" if sudo else command


class SSHRemote:
    """Commands on one host over one paramiko connection (see module doc)."""

    def __init__(self, connection: connect.Connection):
        self.connection = connection
        self._backend = connect.HermesParamikoBackend(connection)

    @property
    def connect_count(self) -> int:
        return self._backend.connect_count

    def run(self, command: str, *, stdin: bytes | BinaryIO | None = None,
            on_stdout: Callable[[bytes], None] | None = None, timeout: float | None = None) -> RunResult:
        return exchange(self._backend.client.get_transport(), wrap(command, self.connection.sudo),
                        stdin=stdin, on_stdout=on_stdout, timeout=timeout)

    def close(self) -> None:
        self._backend.close()


def open_remote(host: HostTarget) -> Remote:
    return SSHRemote(host.connection)


def ssh_argv(connection: connect.Connection, remote_command: str, tty: bool = True) -> list[str]:
    """argv for the `ssh` binary to the same host, with the inventory's host-key rules."""
    argv = ["ssh", "-t" if tty else "-T", "-p", str(connection.port)]
    if connection.key:
        argv += ["-i", connection.key, "-o", "IdentitiesOnly=yes"]
    strict = connection.strict_host_key_checking.lower()
    if strict in ("no", "off", "false"):
        argv += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    elif strict in ("yes", "true"):
        argv += ["-o", "StrictHostKeyChecking=yes"]
    else:
        argv += ["-o", "StrictHostKeyChecking=accept-new"]
    if connection.known_hosts_file:
        argv += ["-o", f"UserKnownHostsFile={connection.known_hosts_file}"]
    argv += ["-o", "LogLevel=ERROR"]
    user = f"{connection.user}@" if connection.user else ""
    return argv + [f"{user}{connection.hostname}", "--", wrap(remote_command, connection.sudo)]


def for_each_host(hosts: Iterable[HostTarget], work: Callable[[HostTarget], object]) -> list:
    """`work(host)` for every host, in parallel (at most MAX_PARALLEL_HOSTS), in input order."""
    hosts = list(hosts)
    if len(hosts) <= 1:
        return [work(h) for h in hosts]
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_HOSTS, len(hosts))) as pool:
        return list(pool.map(work, hosts))


class _LockChannel:
    """A day-two Remote as the deploy lock's code expects a host (`release.remote.Remote`)."""

    def __init__(self, name: str, remote: Remote):
        self.name, self.remote = name, remote

    def run(self, command: str, timeout: float = 120):
        from hermes_infra.release.remote import Result

        result = self.remote.run(command, timeout=timeout)
        return Result(result.rc, result.text, result.stderr)


@contextmanager
def deploy_lock(host: HostTarget, remote: Remote, command: str) -> Iterator[None]:
    """Hold the host's deploy lock (the one `up` takes, with its heartbeat) while a day-two
    command changes a gateway, so a deploy, a rollback, the backup timer and this never overlap.
    Held: a DayTwoError saying by whom, before anything changes."""
    from hermes_infra.release.lock import Holder, HostLocks, LockError

    hint = "hermes-infra lock release TARGET --limit HOST"
    if hasattr(host.target, "cli_args"):
        from hermes_infra.release.session import release_hint

        hint = release_hint(host.target)
    locks = HostLocks({host.name: _LockChannel(host.name, remote)}, Holder(command=command), release_hint=hint,
                      log=lambda text: None)
    try:
        locks.acquire()
    except LockError as error:
        raise DayTwoError(str(error)) from None
    try:
        yield
    finally:
        locks.release()
