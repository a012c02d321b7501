"""Rollouts: a canary first, then batches, each health-gated (and optionally checked), stopping
at the first failed batch with later hosts untouched, and a summary table at the end.

    hermes-infra rollout inventory/production.py --batch 25% --pause 60 --checks --require-green inventory/staging.py

Each batch is one locked, audited deploy (`session.locked_deploy`, pyinfra `--limit`), so a
batch is exactly what `hermes-infra up` would do to those hosts.
"""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hermes_infra.release.results import HostOutcome


class RolloutError(ValueError):
    pass


def parse_batch(spec: str | int) -> tuple[str, float]:
    text = str(spec).strip()
    try:
        if text.endswith("%"):
            value = float(text[:-1])
            if not 0 < value <= 100:
                raise ValueError
            return "percent", value
        value = int(text)
        if value < 1:
            raise ValueError
        return "count", value
    except ValueError:
        raise RolloutError(f"--batch {text!r}: give a number of hosts (1, 2, ...) or a percentage (25%)") from None


def batches(hosts: list[str], spec: str | int = 1, canary: bool = True) -> list[list[str]]:
    """The hosts in rollout order: a canary batch of one host, then batches of `spec` hosts
    (a count, or a percentage of all hosts rounded up, at least one)."""
    if not hosts:
        return []
    kind, value = parse_batch(spec)
    size = int(value) if kind == "count" else max(1, math.ceil(len(hosts) * value / 100))
    first = 1 if canary else size
    result = [hosts[:first]]
    for start in range(first, len(hosts), size):
        result.append(hosts[start:start + size])
    return result


@dataclass
class RolloutReport:
    rows: list[HostOutcome] = field(default_factory=list)
    stopped_at: int | None = None
    """Index of the batch that failed (None: every batch succeeded)."""
    exit_code: int = 0

    def table(self) -> str:
        lines = [f"{'batch':<6} {'host':<28} {'result':<12} {'revision':<13} {'seconds':>8}  message"]
        for row in self.rows:
            batch = getattr(row, "batch", "")
            message = (row.message or "")[:100]
            lines.append(f"{batch!s:<6} {row.host:<28} {row.result:<12} {row.revision or '-':<13} "
                         f"{row.seconds:>8.1f}  {message}")
        return "\n".join(lines)


DeployBatch = Callable[[list[str]], dict[str, HostOutcome]]
CheckBatch = Callable[[list[str]], dict[str, str | None]]


def run_rollout(plan: list[list[str]], deploy_batch: DeployBatch, *, pause: float = 0,
                check_batch: CheckBatch | None = None, log: Callable[[str], None] = print,
                sleep: Callable[[float], None] = time.sleep) -> RolloutReport:
    """Deploy batch after batch; stop at the first batch with a failed host."""
    report = RolloutReport()
    for index, batch in enumerate(plan):
        label = "canary" if index == 0 and len(plan) > 1 else f"{index + 1}/{len(plan)}"
        log(f"batch {label}: {', '.join(batch)}")
        outcomes = deploy_batch(batch)
        if check_batch is not None and all(o.result == "success" for o in outcomes.values()):
            for host, problem in check_batch(batch).items():
                if problem and host in outcomes:
                    outcomes[host].result = "failed"
                    outcomes[host].message = f"compliance checks: {problem}"
        for host in batch:
            outcome = outcomes.get(host) or HostOutcome(host=host, result="failed", message="no result")
            outcome.batch = label  # type: ignore[attr-defined]
            report.rows.append(outcome)
        if any(outcomes.get(h) is None or outcomes[h].result != "success" for h in batch):
            report.stopped_at = index
            report.exit_code = 1
            for later in plan[index + 1:]:
                for host in later:
                    row = HostOutcome(host=host, result="untouched", message="not deployed: an earlier batch failed")
                    row.batch = "-"  # type: ignore[attr-defined]
                    report.rows.append(row)
            break
        if pause and index + 1 < len(plan):
            log(f"batch {label} is healthy; pausing {pause:.0f}s before the next batch")
            sleep(pause)
    return report


# --- staging must be green first -------------------------------------------------------------

DEPLOY_COMMANDS = ("up", "rollout", "rollback")


def green_problem(wanted_images: set[str], records_by_host: dict[str, list[dict]], environment: str) -> str | None:
    """Why the wanted image is not green on every host of `environment` (None: it is).

    A host is green for an image when its latest deploy record (up, rollout, rollback) is a
    success that deployed that image: a later failure or rollback on staging un-greens it.
    """
    if not records_by_host:
        return f"{environment} has no hosts"
    problems = []
    for host, records in records_by_host.items():
        deploys = [r for r in records if r.get("command") in DEPLOY_COMMANDS]
        if not deploys:
            problems.append(f"{host}: no deploy in its audit log")
            continue
        last = deploys[-1]
        if last.get("result") != "success":
            problems.append(f"{host}: its last deploy ({last.get('time')}) ended {last.get('result')}")
        elif last.get("image") not in wanted_images:
            problems.append(f"{host}: runs {last.get('image')}, not {', '.join(sorted(wanted_images))}")
    if problems:
        return (f"the image is not green on {environment}: " + "; ".join(problems)
                + f". Deploy it to {environment} first (hermes-infra up/rollout), then roll out here")
    return None


def wanted_images(target) -> set[str]:
    """The image label each host of `target` would deploy (settings alone, no connection)."""
    from hermes_infra import commands
    from hermes_infra.plan import hostplan as plan
    from hermes_infra.images.archive import inspect_archive

    labels = set()
    for settings in commands.validate(target).values():
        image = settings.image
        if image.source == "archive":
            identity = plan._identity_label(inspect_archive(image.archive).identity)
            labels.add(f"{image.ref}#{identity}" if identity else image.ref)
        else:
            labels.add(image.ref)
    return labels


def require_green(target, staging_target, log: Callable[[str], None] = print) -> None:
    from hermes_infra.release import audit
    from hermes_infra.release.remote import remotes_for

    wanted = wanted_images(target)
    remotes = remotes_for(staging_target)
    try:
        records = {name: audit.tail(remote, 200) for name, remote in remotes.items()}
    finally:
        for remote in remotes.values():
            remote.close()
    problem = green_problem(wanted, records, staging_target.inventory)
    if problem:
        raise RolloutError(problem)
    log(f"{', '.join(sorted(wanted))} is green on {staging_target.inventory} ({', '.join(records)})")


def checks_for(target) -> CheckBatch:
    """Compliance checks of a batch's hosts: host -> None (passed) or what failed."""
    def check(batch: list[str]) -> dict[str, str | None]:
        from hermes_infra.checks import runner

        found = {t.name: t for t in runner.resolve([target]) if t.name in batch}
        result = {}
        for report in runner.check_targets(list(found.values())):
            failed = [f"{r.control.id} {r.subject}" for r in report.results if r.status in ("failed", "error")]
            result[report.name] = ", ".join(failed[:5]) if failed else None
        return result

    return check


def rollout(target, *, batch: str = "1", pause: float = 0, checks: bool = False, require_green_target=None,
            lock_wait: float = 0, message: str | None = None, log: Callable[[str], None] | None = None,
            stdout=None) -> RolloutReport:
    from hermes_infra import commands
    from hermes_infra.release.session import locked_deploy

    log = log or (lambda text: print(f"hermes-infra: {text}", file=sys.stderr, flush=True))
    commands.validate(target)
    if require_green_target is not None:
        require_green(target, require_green_target, log)
    hosts = [h.name for h in commands.load_inventory(target)]
    order = batches(hosts, batch)

    def deploy_batch(names: list[str]) -> dict[str, HostOutcome]:
        return locked_deploy(target, command="rollout", limit=names, lock_wait=lock_wait, message=message,
                             log=log, stdout=stdout).outcomes

    return run_rollout(order, deploy_batch, pause=pause, check_batch=checks_for(target) if checks else None, log=log)
