"""How to reach a local VM over SSH: for pyinfra, for the `ssh` binary, for humans.

Every VM of an image shares the image's host keys (they were generated in the rootfs), so
instead of disabling host key checking, each VM gets a known_hosts file that pins those
keys for `[127.0.0.1]:<port>` and strict checking stays on.
"""
from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from hermes_infra.localvm.ports import LOOPBACK


class SSHResult(NamedTuple):
    """Outcome of one remote command; unpacks as `rc, stdout, stderr`."""

    rc: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class SSHConnection:
    """Connection facts of one VM: always 127.0.0.1, root, the image's key."""

    port: int
    key_path: Path
    known_hosts: Path | None = None
    host: str = LOOPBACK
    user: str = "root"

    def ssh_options(self, connect_timeout: int = 10) -> list[str]:
        if self.known_hosts is not None:
            host_keys = ["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={self.known_hosts}"]
        else:
            host_keys = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        return [
            "-F", "/dev/null",  # the user's ~/.ssh/config must not redirect or slow us
            "-i", str(self.key_path),
            "-p", str(self.port),
            "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes",
            "-o", f"ConnectTimeout={connect_timeout}",
            "-o", "ServerAliveInterval=15",
            "-o", "ServerAliveCountMax=4",
            "-o", "LogLevel=ERROR",
            *host_keys,
        ]

    def ssh_command(self, remote_command: str | None = None, connect_timeout: int = 10) -> list[str]:
        """argv for the `ssh` binary; without a command it opens an interactive shell."""
        cmd = ["ssh", *self.ssh_options(connect_timeout), f"{self.user}@{self.host}"]
        if remote_command is not None:
            cmd += ["--", remote_command]
        return cmd

    def shell_line(self) -> str:
        """A copy-pasteable command for humans (`hermes-infra try` prints it)."""
        return shlex.join(self.ssh_command())

    def pyinfra_data(self) -> dict[str, Any]:
        """pyinfra 3 SSH connector host data for this VM."""
        data: dict[str, Any] = {
            "ssh_hostname": self.host,
            "ssh_port": self.port,
            "ssh_user": self.user,
            "ssh_key": str(self.key_path),
            "ssh_allow_agent": False,
            "ssh_look_for_keys": False,
        }
        if self.known_hosts is not None:
            data["ssh_known_hosts_file"] = str(self.known_hosts)
            data["ssh_strict_host_key_checking"] = "yes"
        else:
            data["ssh_strict_host_key_checking"] = "off"
        return data

    def pyinfra_host(self, alias: str) -> tuple[str, dict[str, Any]]:
        """An inventory entry `(alias, data)`; an alias keeps several VMs on 127.0.0.1 apart."""
        return alias, self.pyinfra_data()

    def run(self, command: str, *, timeout: float | None = 300, input: str | None = None,
            connect_timeout: int = 10) -> SSHResult:
        """Run `command` through the guest's login shell; rc 255 means SSH itself failed."""
        try:
            proc = subprocess.run(
                self.ssh_command(command, connect_timeout),
                input=input, capture_output=True, text=True, timeout=timeout,
                stdin=None if input is not None else subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            return SSHResult(124, out, f"ssh command timed out after {timeout} s")
        return SSHResult(proc.returncode, proc.stdout, proc.stderr)


def known_hosts_lines(host_keys: str, port: int, host: str = LOOPBACK) -> str:
    """known_hosts text pinning each `type base64` key line for `[host]:port`."""
    entries = []
    for line in host_keys.splitlines():
        fields = line.split()
        if len(fields) >= 2:
            entries.append(f"[{host}]:{port} {fields[0]} {fields[1]}\n")
    return "".join(entries)
