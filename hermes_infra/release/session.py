"""A deploy run the release way: lock every host first, run the deploy, write each host's audit
record, release the locks, whatever happened (success, failure, Ctrl-C, SIGTERM).

`commands.up` and `rollout` both go through `locked_deploy`; only `--dry` runs skip the lock
and the audit (they change nothing).
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from hermes_infra.release import audit
from hermes_infra.release.lock import Holder, HostLocks, LockError, interruptible
from hermes_infra.release.remote import limit_from_args, remotes_for
from hermes_infra.release.results import ENV, HostOutcome, read

INTERRUPT_GRACE_SECONDS = 20


@dataclass
class DeployReport:
    exit_code: int
    outcomes: dict[str, HostOutcome]
    interrupted: bool = False


def release_hint(target) -> str:
    return shlex.join(["hermes-infra", "lock", "release", *target.cli_args()]) + " --limit HOST"


def run_child(argv: list[str], *, cwd: str, env: dict[str, str], stdout=None) -> tuple[int, bool]:
    """Run pyinfra; on Ctrl-C or SIGTERM give it SIGINT and a grace period to stop between
    commands, then kill it. Returns (exit code, interrupted)."""
    child = subprocess.Popen(argv, cwd=cwd, env=env, stdout=stdout, stderr=subprocess.STDOUT if stdout else None)
    try:
        return child.wait(), False
    except KeyboardInterrupt:
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
            try:
                child.wait(INTERRUPT_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        return child.returncode if child.returncode is not None else 130, True


def locked_deploy(target, *, command: str = "up", extra: list[str] | None = None, limit: list[str] | None = None,
                  lock_wait: float = 0, message: str | None = None, log: Callable[[str], None] | None = None,
                  stdout=None) -> DeployReport:
    """Validate, lock, deploy (pyinfra, output on the terminal or into `stdout`), audit, unlock."""
    from hermes_infra import commands

    log = log or (lambda text: print(f"hermes-infra: {text}", file=sys.stderr, flush=True))
    extra_limit, rest = limit_from_args(list(extra or []))
    limit = list(limit or []) + extra_limit
    commands.validate(target)
    remotes = remotes_for(target, limit or None)
    hosts = list(remotes)
    holder = Holder(command=command, message=message)
    locks = HostLocks(remotes, holder, wait=lock_wait, release_hint=release_hint(target), log=log)
    handle, results_path = tempfile.mkstemp(prefix="hermes-infra-results-", suffix=".jsonl")
    os.close(handle)
    started = time.monotonic()
    outcomes: dict[str, HostOutcome] = {}
    code, interrupted = 1, False
    try:
        with interruptible():
            try:
                locks.acquire()
                log(f"deploy lock taken on {', '.join(hosts)}")
                env = commands._pyinfra_env()
                env[ENV] = results_path
                argv = commands.pyinfra_command(target, extra=[*rest, *(a for h in hosts for a in ("--limit", h))])
                code, interrupted = run_child(argv, cwd=target.cwd, env=env, stdout=stdout)
            except KeyboardInterrupt:
                interrupted = True
                code = 130
            finally:
                # A second Ctrl-C must not leave the lock behind: cleanup takes a second or two.
                previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
                outcomes = read(results_path, hosts, exit_code=code, interrupted=interrupted,
                                seconds=time.monotonic() - started)
                if locks.locks and any(lock.held for lock in locks.locks.values()):
                    for name, outcome in outcomes.items():
                        _audit(remotes[name], command, outcome, message, log)
                released = locks.release()
                if released:
                    log(f"deploy lock released on {', '.join(released)}")
                signal.signal(signal.SIGINT, previous)
    finally:
        os.unlink(results_path)
        for remote in remotes.values():
            remote.close()
    if interrupted and code == 0:
        code = 130
    return DeployReport(code, outcomes, interrupted)


def _audit(remote, command: str, outcome: HostOutcome, message: str | None, log) -> None:
    text = outcome.message if outcome.result != "success" else message
    record = audit.AuditRecord(command=command, result=outcome.result, revision=outcome.revision,
                               image=outcome.image, changed=tuple(outcome.changed),
                               seconds=outcome.seconds, message=text)
    try:
        if not audit.write(remote, record):
            log(f"{remote.name}: WARNING: could not append to {audit.AUDIT_PATH}")
    except Exception as error:  # noqa: BLE001 - the audit must not hide the deploy's own result
        log(f"{remote.name}: WARNING: could not append to {audit.AUDIT_PATH}: {error}")


__all__ = ["DeployReport", "LockError", "locked_deploy", "release_hint", "run_child"]
