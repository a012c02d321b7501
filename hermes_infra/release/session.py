"""A deploy run the release way: lock every host first, run the deploy, write each host's audit
record, release the locks, whatever happened (success, failure, Ctrl-C, SIGTERM).

pyinfra is started while the locks are taken and waits at a gate before it reads anything
(`gate.py`); the audit record and the release share one round trip per host, all hosts at once.

`up` (`up.py`) and `rollout` both go through `locked_deploy`; only `--dry` runs skip the lock
and the audit (they change nothing).
"""
from __future__ import annotations

import os
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from hermes_infra.release import audit
from hermes_infra.release.gate import GatedChild
from hermes_infra.release.lock import Holder, HostLocks, LockError, interruptible
from hermes_infra.release.remote import limit_from_args, remotes_for
from hermes_infra.release.results import ENV, HostOutcome, read

start_child = GatedChild


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
                # The settings reach pyinfra through a 0600 file, not its arguments (`ps`).
                with commands.child_data_file(target) as env:
                    env[ENV] = results_path
                    argv = commands.pyinfra_command(target, extra=[*rest, *(a for h in hosts for a in ("--limit", h))])
                    # pyinfra loads and connects while the locks are taken; it waits at the gate.
                    child = start_child(argv, cwd=target.cwd, env=env, stdout=stdout)
                    try:
                        locks.acquire()
                    except BaseException:
                        child.give_up()
                        raise
                    log(f"deploy lock taken on {', '.join(hosts)}")
                    child.open()
                    code, interrupted = child.wait()
            except KeyboardInterrupt:
                interrupted = True
                code = 130
            finally:
                # A second Ctrl-C must not leave the lock behind: cleanup takes a second or two.
                previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
                outcomes = read(results_path, hosts, exit_code=code, interrupted=interrupted,
                                seconds=time.monotonic() - started)
                records = {name: _record(command, outcome, message) for name, outcome in outcomes.items()}
                released = locks.release(first={name: audit.append_command(record, audit.AUDIT_PATH)
                                                for name, record in records.items()},
                                         first_failed=lambda name: log(f"{name}: WARNING: could not append to "
                                                                       f"{audit.AUDIT_PATH}"))
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


def _record(command: str, outcome: HostOutcome, message: str | None) -> audit.AuditRecord:
    text = outcome.message if outcome.result != "success" else message
    return audit.AuditRecord(command=command, result=outcome.result, revision=outcome.revision,
                             image=outcome.image, changed=tuple(outcome.changed),
                             seconds=outcome.seconds, message=text)


__all__ = ["DeployReport", "LockError", "locked_deploy", "release_hint", "start_child"]
