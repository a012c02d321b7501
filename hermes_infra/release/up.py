"""`hermes-infra up`: validate, then run the packaged deploy with pyinfra in this process (locked
and audited, `session.py`; `--dry` changes nothing and takes no lock)."""
from __future__ import annotations

import subprocess
import sys
import tempfile

from hermes_infra import commands
from hermes_infra.commands import Target
from hermes_infra.release.lock import LockError
from hermes_infra.release.pyinfra_run import PyinfraArgsError, output_to, run_unlocked
from hermes_infra.release.session import locked_deploy


def up(target: Target, *, dry: bool = False, extra: list[str] | None = None, lock_wait: float = 0,
       message: str | None = None) -> int:
    """Validate, then run the deploy with pyinfra's output on the terminal. Returns its exit code.

    A real run takes each host's deploy lock first, appends a record to each host's audit log
    and releases the locks on success, failure and Ctrl-C (`hermes_infra/release/`); `--dry`
    changes nothing and takes no lock.
    """
    try:
        if dry:
            commands.validate(target)
            return run_unlocked(target, dry=True, extra=extra)
        report = locked_deploy(target, command="up", extra=extra, lock_wait=lock_wait, message=message)
    except PyinfraArgsError as error:
        print(f"hermes-infra: {error}", file=sys.stderr)
        return 2
    except LockError as error:
        print(f"hermes-infra: {error}", file=sys.stderr)
        return 3
    for outcome in report.outcomes.values():
        detail = f" ({outcome.message})" if outcome.result != "success" and outcome.message else ""
        print(f"hermes-infra: {outcome.host}: {outcome.result}, revision {outcome.revision or '-'}, "
              f"{outcome.seconds:.0f}s{detail}", file=sys.stderr)
    return report.exit_code


def up_captured(target: Target, *, dry: bool = False, extra: list[str] | None = None) -> subprocess.CompletedProcess:
    """`up` with stdout and stderr captured together (tests, benchmarks), into a 0600 temp file."""
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace") as captured:
        with output_to(captured):
            code = up(target, dry=dry, extra=extra)
        captured.seek(0)
        output = captured.read()
    return subprocess.CompletedProcess(["hermes-infra", "up", *target.shown_cli_args()], code, output)


__all__ = ["up", "up_captured"]
