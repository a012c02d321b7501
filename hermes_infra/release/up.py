"""`hermes-infra up`: validate, then run the packaged deploy with pyinfra (locked and audited,
`session.py`; `--dry` changes nothing and takes no lock)."""
from __future__ import annotations

import subprocess
import sys

from hermes_infra import commands
from hermes_infra.commands import SHOW_DIFF_ENV, Target
from hermes_infra.release.lock import LockError
from hermes_infra.release.session import locked_deploy


def up(target: Target, *, dry: bool = False, extra: list[str] | None = None, lock_wait: float = 0,
       message: str | None = None) -> int:
    """Validate, then run the deploy with pyinfra's output on the terminal. Returns its exit code.

    A real run takes each host's deploy lock first, appends a record to each host's audit log
    and releases the locks on success, failure and Ctrl-C (`hermes_infra/release/`); `--dry`
    changes nothing and takes no lock.
    """
    if dry:
        commands.validate(target)
        with commands.child_data_file(target) as env:
            env[SHOW_DIFF_ENV] = "1"
            return subprocess.call(commands.pyinfra_command(target, dry=dry, extra=extra), cwd=target.cwd, env=env)
    try:
        report = locked_deploy(target, command="up", extra=extra, lock_wait=lock_wait, message=message)
    except LockError as error:
        print(f"hermes-infra: {error}", file=sys.stderr)
        return 3
    for outcome in report.outcomes.values():
        detail = f" ({outcome.message})" if outcome.result != "success" and outcome.message else ""
        print(f"hermes-infra: {outcome.host}: {outcome.result}, revision {outcome.revision or '-'}, "
              f"{outcome.seconds:.0f}s{detail}", file=sys.stderr)
    return report.exit_code


def up_captured(target: Target, *, dry: bool = False, extra: list[str] | None = None) -> subprocess.CompletedProcess:
    """`up` with stdout and stderr captured together (tests, benchmarks)."""
    commands.validate(target)
    with commands.child_data_file(target) as env:
        if dry:
            env[SHOW_DIFF_ENV] = "1"
        return subprocess.run(commands.pyinfra_command(target, dry=dry, extra=extra), cwd=target.cwd, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
