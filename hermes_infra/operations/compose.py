"""A compose project brought up only when its inputs changed (the plan says why)."""
from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import operation

from hermes_infra.plan.compose import compose_command
from hermes_infra.plan.hostplan import ProjectPlan


@operation()
def compose_up(project: ProjectPlan):
    """`docker compose up -d` when the plan says why (the file changed since it was last applied,
    a service is not running, a gateway was recreated by hand); otherwise nothing (pyinfra's
    docker.compose always reports a change)."""
    if project.up_reason is None:
        host.noop(f"compose project {project.name} is up to date and running")
        return
    compose_cmd = compose_command(project.directory, project.name)
    yield f"{compose_cmd} up -d --remove-orphans --quiet-pull 2>&1"
    # The stamp records what was applied and the config hash compose gave each checked service,
    # so later deploys detect a container recreated by hand without running compose (seconds).
    # `--hash` takes one comma-separated argument; '*' hashes every service and the plan reads
    # only the ones it checks.
    hashes = f"{compose_cmd} config --hash '*'" if project.drift_checked else "true"
    yield f"{{ echo {project.stamp}; {hashes}; }} > {shlex.quote(project.stamp_path)}"
