"""`hermes-infra logs` and `hermes-infra restart`: the guide's `docker compose logs -f | grep`
and `docker restart`, for every host and profile a target names.

Logs come from Docker (`docker logs`, what the gateway writes to stdout/stderr: rotated by
the daemon's json-file limits). `--grep` filters on the control machine with a Python regex,
so the pattern never passes through a remote shell. Lines are cleaned of control characters
(a message from a chat user could carry terminal escape sequences). `-f` ends on the host with
the session (`follow_command`): Ctrl-C here ends `docker logs` there.

`restart` restarts the container through compose (its stop_grace_period lets Hermes drain),
then runs the deploy's own health gate (`health.gate_script`: `/health` 200, `/v1/models` 401
without the key and 200 with it; the key through a pipe), and fails when the gateway does not
come back. A restart re-reads `.env` and `config.yaml`: it is the step after editing them.
"""
from __future__ import annotations

import re
import shlex
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from hermes_infra.plan import compose
from hermes_infra.plan import hostplan as planmod
from hermes_infra.daytwo.remote import DayTwoError, HostTarget, Remote, clean, deploy_lock, open_remote
from hermes_infra.settings.schema import GatewaySettings, HostSettings


def compose_base(settings: HostSettings) -> str:
    """`docker compose` on the gateways' project, from its directory (as the deploy runs it)."""
    return compose.compose_command(settings.project_dir, compose.MAIN_PROJECT)


# ----------------------------------------------------------------------------- logs
@dataclass(frozen=True)
class LogOptions:
    follow: bool = False
    lines: int | None = 100
    since: str | None = None
    grep: str | None = None
    timestamps: bool = False


SINCE = re.compile(r"^(\d+[smhd]?|\d{4}-\d{2}-\d{2}([T ][0-9:.]+(Z|[+-]\d{2}:?\d{2})?)?)$")


def logs_command(container: str, options: LogOptions) -> str:
    argv = ["docker", "logs"]
    if options.follow:
        argv.append("--follow")
    if options.lines is not None:
        argv += ["--tail", str(int(options.lines))]
    if options.since:
        if not SINCE.match(options.since):
            raise DayTwoError(f"--since {options.since!r} is not a time. Fix: 10m, 2h, 3d or 2026-11-20T08:00")
        argv += ["--since", options.since]
    if options.timestamps:
        argv.append("--timestamps")
    argv.append(container)
    return f"{shlex.join(argv)} 2>&1"


def follow_command(command: str) -> str:
    """`command` (a `docker logs --follow`) ended with the SSH session. Without a terminal, sshd
    signals nothing when the client goes (Ctrl-C), and `docker logs` on a quiet log never writes
    again to notice its closed pipe: it stayed on the host for good. The session's stdin is held
    open by the client for as long as it follows (`HeldOpen`); a watcher reads it (fd 3: a
    background job's own stdin is /dev/null) and kills the command when it ends. When the command
    ends first, the watcher goes with it (its `cat` ends with the session)."""
    return (f"exec 3<&0; {command} & hi_logs=$!; "
            "{ cat <&3 >/dev/null 2>&1; kill $hi_logs 2>/dev/null; } & hi_watch=$!; "
            "wait $hi_logs; hi_rc=$?; kill $hi_watch 2>/dev/null; exit $hi_rc")


class HeldOpen:
    """A stdin that sends nothing and stays open until `close()`: the session's end is the
    follow's end (`follow_command`)."""

    def __init__(self) -> None:
        self._closed = threading.Event()

    def read(self, size: int = -1) -> bytes:
        self._closed.wait()
        return b""

    def close(self) -> None:
        self._closed.set()


class LineFilter:
    """Bytes in, whole cleaned lines out (prefixed, filtered by --grep)."""

    def __init__(self, emit: Callable[[str], None], prefix: str = "", pattern: re.Pattern | None = None):
        self.emit, self.prefix, self.pattern = emit, prefix, pattern
        self.buffer = b""

    def feed(self, data: bytes) -> None:
        self.buffer += data
        *complete, self.buffer = self.buffer.split(b"\n")
        for raw in complete:
            self._line(raw)

    def flush(self) -> None:
        if self.buffer:
            self._line(self.buffer)
            self.buffer = b""

    def _line(self, raw: bytes) -> None:
        line = clean(raw.decode("utf-8", errors="replace").rstrip("\r"), 8000)
        if self.pattern is None or self.pattern.search(line):
            self.emit(f"{self.prefix}{line}")


def compile_grep(pattern: str | None) -> re.Pattern | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as error:
        raise DayTwoError(f"--grep {pattern!r} is not a regular expression: {error}") from None


def show_logs(hosts: list[HostTarget], profile: str | None, options: LogOptions,
              emit: Callable[[str], None] | None = None, remote_for=open_remote) -> int:
    """Print the logs of each chosen gateway; with several, each line is prefixed `host/profile |`."""
    lock = threading.Lock()
    out = emit or (lambda line: print(line, flush=True))

    def locked(line: str) -> None:
        with lock:
            out(line)

    pattern = compile_grep(options.grep)
    jobs = [(h, g) for h in hosts for g in h.gateways(profile)]
    many = len(jobs) > 1
    codes: list[int] = []
    held: list[HeldOpen] = []

    def one(host: HostTarget, gateway: GatewaySettings, remote: Remote) -> None:
        prefix = f"{host.name}/{gateway.name} | " if many else ""
        lines = LineFilter(locked, prefix, pattern)
        command = logs_command(gateway.service_name, options)
        if options.follow:
            stdin = HeldOpen()
            held.append(stdin)
            result = remote.run(follow_command(command), stdin=stdin, on_stdout=lines.feed)
        else:
            result = remote.run(command, on_stdout=lines.feed)
        lines.flush()
        if result.rc != 0:
            locked(f"{prefix}hermes-infra: `docker logs {gateway.service_name}` exited {result.rc} "
                   f"{clean(result.stderr, 300)}".rstrip())
        codes.append(result.rc)

    remotes = {h.name: remote_for(h) for h in hosts}
    try:
        if not options.follow or not many:
            for host, gateway in jobs:
                one(host, gateway, remotes[host.name])
        else:
            threads = [threading.Thread(target=one, args=(h, g, remotes[h.name]), daemon=True) for h, g in jobs]
            for thread in threads:
                thread.start()
            while any(t.is_alive() for t in threads):
                time.sleep(0.2)
    finally:
        for remote in remotes.values():
            remote.close()
        for stdin in held:
            stdin.close()
    return 0 if all(code == 0 for code in codes) else 1


# -------------------------------------------------------------------------- restart
def gate_command(settings: HostSettings, gateway: GatewaySettings, timeout: int | None = None) -> str:
    from hermes_infra.operations.health import gate_script

    return gate_script(planmod.probe_url(settings, gateway), gateway.service_name,
                       planmod.data_dir_request(gateway), timeout or settings.health.timeout_seconds,
                       settings.health.interval_seconds)


def restart_command(settings: HostSettings, gateway: GatewaySettings) -> str:
    grace = int(gateway.stop_grace_seconds)
    return (f"{compose_base(settings)} restart -t {grace} {shlex.quote(gateway.service_name)} 2>&1 && "
            f"{{ {gate_command(settings, gateway)}\n}}")


@dataclass
class StepResult:
    host: str
    profile: str
    ok: bool
    seconds: float
    message: str


def restart(hosts: list[HostTarget], profile: str | None, say: Callable[[str], None] | None = None,
            remote_for=open_remote) -> list[StepResult]:
    """Restart each chosen gateway, host by host, profile by profile, stopping at the first failure
    (a fleet restart must not take every host down for the same reason)."""
    say = say or (lambda message: print(message, file=sys.stderr, flush=True))
    results = []
    for host in hosts:
        remote = remote_for(host)
        try:
            with deploy_lock(host, remote, "restart"):
                first = len(results)
                started = time.monotonic()
                try:
                    failed = _restart_host(host, profile, remote, say, results)
                except KeyboardInterrupt:
                    _audit_restart(host, remote, results[first:], "interrupted", time.monotonic() - started, say)
                    raise
                _audit_restart(host, remote, results[first:], "failed" if failed else "success",
                               time.monotonic() - started, say)
            if failed:
                return results
        finally:
            remote.close()
    return results


def _audit_restart(host: HostTarget, remote: Remote, steps: list[StepResult], result: str, seconds: float,
                   say: Callable[[str], None]) -> None:
    """One audit record per host restarted (under its deploy lock, as a deploy's is written)."""
    from hermes_infra.release import audit

    record = audit.AuditRecord(command="restart", result=result, changed=tuple(f"restart {s.profile}" for s in steps),
                               seconds=seconds, message=", ".join(f"{s.profile} {'ok' if s.ok else 'FAILED'}"
                                                                  for s in steps) or None)
    if not audit.write_quietly(remote, record):
        say(f"{host.name}: warning: the restart was not written to {audit.AUDIT_PATH}")


def _restart_host(host: HostTarget, profile: str | None, remote: Remote, say: Callable[[str], None],
                  results: list[StepResult]) -> bool:
    """Restart the host's chosen gateways; True when one failed (the rest are left alone)."""
    for gateway in host.gateways(profile):
        started = time.monotonic()
        say(f"{host.name}/{gateway.name}: restarting {gateway.service_name}, then waiting for the health gate")
        result = remote.run(restart_command(host.settings, gateway))
        seconds = time.monotonic() - started
        detail = clean((result.text + result.stderr).strip(), 4000)
        results.append(StepResult(host.name, gateway.name, result.rc == 0, seconds, detail))
        if result.rc != 0:
            say(f"{host.name}/{gateway.name}: FAILED after {seconds:.1f}s:\n{detail}")
            return True
        say(f"{host.name}/{gateway.name}: healthy again after {seconds:.1f}s")
    return False
