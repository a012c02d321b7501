"""A fake Remote and host targets for day-two unit tests (no SSH)."""
from __future__ import annotations

from hermes_infra.checks.connect import Connection
from hermes_infra.daytwo.remote import HostTarget, RunResult
from hermes_infra.settings.loading import settings_from_raw


class FakeRemote:
    """Answers commands with `respond(command) -> RunResult | str`; records every command."""

    def __init__(self, respond=None):
        self.commands: list[str] = []
        self.stdins: list[bytes] = []
        self.respond = respond or (lambda command: "")
        self.closed = False
        self.lock_commands: list[str] = []
        self.lock_held_by: str | None = None

    def lock_answer(self, command: str) -> str | None:
        if "/var/lib/hermes-infra/lock" not in command:
            return None
        if "mkdir -m 0700 /var/lib/hermes-infra/lock" in command:
            if self.lock_held_by:
                return f"held\n100\n95\n{self.lock_held_by}\n"
            return "acquired\n"
        if "lock.releasing." in command:
            return "released\n"
        return "ok\n"

    def run(self, command, *, stdin=None, on_stdout=None, timeout=None):
        if self.lock_answer(command) is not None:  # the deploy lock day-two commands take
            self.lock_commands.append(command)
            return RunResult(0, self.lock_answer(command).encode(), "")
        self.commands.append(command)
        if stdin is not None:
            self.stdins.append(stdin if isinstance(stdin, bytes) else stdin.read())
        answer = self.respond(command)
        if isinstance(answer, str):
            answer = RunResult(0, answer.encode(), "")
        if on_stdout is not None and answer.stdout:
            on_stdout(answer.stdout)
            answer = RunResult(answer.rc, b"", answer.stderr)
        return answer

    def close(self):
        self.closed = True


def host(name: str = "web1", **sections) -> HostTarget:
    return HostTarget(name, Connection(name=name, hostname="203.0.113.7", user="root"), settings_from_raw(sections))
