"""`hermes-infra check TARGET [--report FORMAT[=PATH]]... [--waivers FILE]`."""
from __future__ import annotations

from hermes_infra import commands
from hermes_infra.checks.runner import run_checks


def run(args, target: commands.Target) -> int:
    """Exit 0: every control passes (or is waived / advisory); 1: a control fails; 2: bad input."""
    return run_checks([target], reports=list(args.report or []) or ["text"], waivers=args.waivers)
