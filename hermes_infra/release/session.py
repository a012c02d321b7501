"""A deploy run the release way: connect, lock every host, run the deploy, write each host's
audit record, release the locks, whatever happened (success, failure, Ctrl-C, SIGTERM).

pyinfra runs in this process (`pyinfra_run.py`): the locks and the audit records go over the
SSH connections pyinfra opened, one per host; the audit record and the release share one round
trip per host, all hosts at once.

`up` (`up.py`) and `rollout` both go through `locked_deploy`; only `--dry` runs skip the lock
and the audit (they change nothing).
"""
from __future__ import annotations

import os
import shlex
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pyinfra.api.exceptions import PyinfraError

from hermes_infra import commands
from hermes_infra.release import audit, results
from hermes_infra.release.lock import Holder, HostLocks, LockError
from hermes_infra.release.pyinfra_run import PyinfraRemote, PyinfraRun, interrupts_to_main, output_to
from hermes_infra.release.remote import limit_from_args
from hermes_infra.release.results import HostOutcome, read

start_run = PyinfraRun
"""What `locked_deploy` runs (tests put a fake with the same methods here)."""
remote_for = PyinfraRemote
"""How the lock and the audit reach a host pyinfra has connected (tests: a shell in a temp dir)."""


@dataclass
class DeployReport:
    exit_code: int
    outcomes: dict[str, HostOutcome]
    interrupted: bool = False


def release_hint(target) -> str:
    """The command that releases a held lock, as shown to the operator: the secrets in `--data`
    redacted (a refusal is printed, logged, pasted into chats)."""
    return shlex.join(["hermes-infra", "lock", "release", *target.shown_cli_args()]) + " --limit HOST"


def locked_deploy(target, *, command: str = "up", extra: list[str] | None = None, limit: list[str] | None = None,
                  lock_wait: float = 0, message: str | None = None, log: Callable[[str], None] | None = None,
                  stdout=None) -> DeployReport:
    """Validate, connect, lock, deploy (pyinfra's output on the terminal or into `stdout`),
    audit, unlock, disconnect."""
    log = log or (lambda text: print(f"hermes-infra: {text}", file=sys.stderr, flush=True))
    extra_limit, rest = limit_from_args(list(extra or []))
    limit = list(limit or []) + extra_limit
    commands.validate(target)
    ctrl_c = signal.getsignal(signal.SIGINT)
    try:
        with output_to(stdout):
            run = start_run(target, extra=[*rest, *(a for h in limit for a in ("--limit", h))])
            try:
                return _locked_run(run, target, command=command, lock_wait=lock_wait, message=message, log=log)
            finally:
                run.disconnect()
    finally:
        # Called as a library too (`restore` deploys in its caller's process): Ctrl-C is left as
        # it was found, whatever gevent's watchers and the release's SIG_IGN did to it meanwhile.
        if ctrl_c is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, ctrl_c)


def _locked_run(run, target, *, command: str, lock_wait: float, message: str | None,
                log: Callable[[str], None]) -> DeployReport:
    handle, results_path = tempfile.mkstemp(prefix="hermes-infra-results-", suffix=".jsonl")
    os.close(handle)
    started = time.monotonic()
    hosts: list[str] = []
    locks: HostLocks | None = None
    code, interrupted = 1, False
    try:
        with interrupts_to_main():
            try:
                hosts = _connect(run)
                remotes = {host.name: remote_for(host, sudo=target.sudo) for host in run.state.inventory
                           if host.name in hosts}
                locks = HostLocks(remotes, Holder(command=command, message=message), wait=lock_wait,
                                  release_hint=release_hint(target), log=log)
                locks.acquire()
                log(f"deploy lock taken on {', '.join(hosts)}")
                recorder = results.attach(run.state, results_path)
                try:
                    code = run.deploy()
                finally:
                    recorder.finish()
            except KeyboardInterrupt:
                interrupted, code = True, 130
                run.stop()
            except PyinfraError as error:
                log(f"pyinfra: {error}")
                code = 1
            finally:
                outcomes = read(results_path, hosts, exit_code=code, interrupted=interrupted,
                                seconds=time.monotonic() - started)
                if locks is not None and any(lock.held for lock in locks.locks.values()):
                    _audit_and_release(locks, command, message, outcomes, log)
    finally:
        os.unlink(results_path)
    if interrupted and code == 0:
        code = 130
    return DeployReport(code, outcomes, interrupted)


def _connect(run) -> list[str]:
    """pyinfra connects to every host of the run; returns their names. Every one reachable, or
    none is touched: the lock of a fleet is all or nothing."""
    try:
        state = run.connect()
    except PyinfraError as error:
        raise LockError(f"could not connect ({error}; see above): nothing was locked or changed") from None
    hosts = [host.name for host in state.inventory if state.is_host_in_limit(host)]
    active = {host.name for host in state.activated_hosts}
    missing = [name for name in hosts if name not in active]
    if missing:
        raise LockError(f"could not connect to {', '.join(missing)} (see above): nothing was locked or changed")
    return hosts


def _audit_and_release(locks: HostLocks, command: str, message: str | None, outcomes: dict[str, HostOutcome],
                       log: Callable[[str], None]) -> None:
    """Each host's audit record, then its release, in one round trip; a second Ctrl-C is ignored
    meanwhile (it must not leave a lock behind)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        records = {name: _record(command, outcome, message) for name, outcome in outcomes.items()}
        released = locks.release(first={name: audit.append_command(record, audit.AUDIT_PATH)
                                        for name, record in records.items()},
                                 first_failed=lambda name: log(f"{name}: WARNING: could not append to "
                                                               f"{audit.AUDIT_PATH}"))
        if released:
            log(f"deploy lock released on {', '.join(released)}")
    finally:
        signal.signal(signal.SIGINT, previous)


def _record(command: str, outcome: HostOutcome, message: str | None) -> audit.AuditRecord:
    text = outcome.message if outcome.result != "success" else message
    return audit.AuditRecord(command=command, result=outcome.result, revision=outcome.revision,
                             image=outcome.image, changed=tuple(outcome.changed),
                             seconds=outcome.seconds, message=text)


__all__ = ["DeployReport", "LockError", "locked_deploy", "release_hint", "remote_for", "start_run"]
