"""The gateway's scheduled jobs: the Hermes CLI calls the plan chose, then the data dir's files
given back to its owner (as after `hermes-infra hermes`).

No restart follows: the gateway's ticker reads `cron/jobs.json` again every minute
(plan/cronjobs.py says where that is in Hermes's code).
"""
from __future__ import annotations

from pyinfra import host
from pyinfra.api import operation

from hermes_infra.host import safeio
from hermes_infra.plan.agentfiles import AgentPlan


@operation()
def cron_jobs(plan: AgentPlan):
    """The managed jobs match the settings; jobs made by hand are left alone."""
    cron, files = plan.cron, plan.files
    foreign = f"; {len(cron.foreign)} made by hand left alone" if cron.foreign else ""
    if not plan.cron_calls:
        host.noop(f"{len(cron.unchanged)} managed cron job(s) of {plan.profile} match the settings{foreign}")
        return
    yield from plan.cron_calls
    yield f"( {safeio.chown_foreign_script(files.directory, files.uid, files.gid)} ) >/dev/null 2>&1 || true"
