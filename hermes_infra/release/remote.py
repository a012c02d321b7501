"""One shell command on one host over SSH, outside pyinfra's run (lock, audit, rollback).

The connection is the one `hermes-infra check` uses (`checks/connect.py`: pyinfra host data
read the same way, host keys checked the same way), one paramiko client per host, kept for the
run. Commands built in this package never hold a secret: they travel as process arguments.
"""
from __future__ import annotations

import shlex
import threading
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Result:
    rc: int
    stdout: str
    stderr: str


class Remote(Protocol):
    name: str

    def run(self, command: str, timeout: float = 120) -> Result: ...

    def close(self) -> None: ...


class SSHRemote:
    """A host reached like `hermes-infra check` reaches it; `sudo` wraps each command."""

    def __init__(self, name: str, connection):
        self.name = name
        self.connection = connection
        self._backend = None
        self._guard = threading.Lock()

    def _client(self):
        from hermes_infra.checks.connect import HermesParamikoBackend

        with self._guard:
            if self._backend is None:
                self._backend = HermesParamikoBackend(self.connection)
            return self._backend.client

    def connect(self) -> None:
        """Open the SSH connection now (the first `run` would otherwise)."""
        if not self.connection.local:
            self._client()

    def run(self, command: str, timeout: float = 120) -> Result:
        if self.connection.local:
            import subprocess

            argv = ["sh", "-c", command] if not self.connection.sudo else ["sudo", "-n", "sh", "-c", command]
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
            return Result(done.returncode, done.stdout, done.stderr)
        if self.connection.sudo:
            command = f"sudo -n sh -c {shlex.quote(command)}"
        client = self._client()
        _, stdout, stderr = client.exec_command(command, timeout=timeout)
        out = stdout.read().decode(errors="replace")
        err = stderr.read().decode(errors="replace")
        return Result(stdout.channel.recv_exit_status(), out, err)

    def close(self) -> None:
        with self._guard:
            if self._backend is not None:
                self._backend.close()
                self._backend = None


def remotes_for(target, limit: list[str] | None = None) -> dict[str, SSHRemote]:
    """Host name -> SSHRemote for every host of a target (inventory order), optionally limited."""
    from hermes_infra import commands
    from hermes_infra.checks import connect
    from hermes_infra.settings.loading import SettingsError

    found = {}
    for inventory_host in commands.load_inventory(target):
        if limit and not matches(inventory_host, limit):
            continue
        try:
            connection = connect.connection_for(inventory_host, sudo=target.sudo)
        except ValueError as error:
            raise SettingsError(str(error)) from None
        found[inventory_host.name] = SSHRemote(inventory_host.name, connection)
    if limit and not found:
        raise SettingsError(f"--limit {' '.join(limit)} matches no host of {target.inventory!r}")
    return found


def matches(inventory_host, patterns: list[str]) -> bool:
    """pyinfra's `--limit` semantics: a host name pattern (fnmatch) or a group name."""
    from fnmatch import fnmatch

    groups = set(getattr(inventory_host, "groups", ()) or ())
    return any(fnmatch(inventory_host.name, p) or p in groups for p in patterns)


def limit_from_args(extra: list[str]) -> tuple[list[str], list[str]]:
    """Split `--limit X` / `--limit=X` out of pyinfra passthrough arguments."""
    limit, rest, items = [], [], list(extra)
    while items:
        item = items.pop(0)
        if item == "--limit" and items:
            limit.append(items.pop(0))
        elif item.startswith("--limit="):
            limit.append(item.split("=", 1)[1])
        else:
            rest.append(item)
    return limit, rest
