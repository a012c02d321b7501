"""The Hermes data dir: its owner and mode, files root left there, the merged `.env` and
`config.yaml`.

Only `.env` and `config.yaml` are ever written, by their owner (see safeio). Runtime state
(WeChat login, pairing, cron, sessions, memories, skills, logs, state.db) is never touched:
a redeploy must not log the operator out of WeChat.
"""
from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import deploy, operation

from hermes_infra.host import safeio
from hermes_infra.operations.files import data_file
from hermes_infra.plan.hostplan import DataDirPlan, GatewayPlan, Writer


@operation()
def directory(plan: DataDirPlan):
    """The data dir exists with a numeric owner (the container's uid has no name on the host)
    and mode 0700. Its parent is root's (the plan checked), so the path cannot be swapped."""
    quoted = shlex.quote(plan.directory)
    if not plan.exists:
        yield f"install -d -o {plan.uid} -g {plan.gid} -m 0700 {quoted}"
    elif plan.meta_changed:
        yield f"chown -h {plan.uid}:{plan.gid} {quoted} && chmod 0700 {quoted}"
    else:
        host.noop(f"{plan.directory} exists with owner {plan.uid}:{plan.gid} and mode 0700")


@operation()
def owned_by_owner(plan: DataDirPlan):
    """Files root wrote into the data dir (`docker exec`, an editor) go back to the container
    user, which otherwise cannot rewrite them (the official image's entrypoint does the same)."""
    if not plan.foreign_files:
        host.noop(f"everything under {plan.directory} belongs to {plan.uid}:{plan.gid}")
        return
    yield safeio.chown_foreign_script(plan.directory, plan.uid, plan.gid)


@deploy("Hermes data dir")
def data_dir(gateway: GatewayPlan, writer: Writer):
    plan = gateway.data_dir
    directory(name=f"Data dir {plan.directory} owned by {plan.uid}:{plan.gid}", plan=plan)
    owned_by_owner(name=f"Files under {plan.directory} belong to {plan.uid}:{plan.gid}", plan=plan)
    data_file(name=f"Merge managed keys into {gateway.env.path} (0600, values not shown)", file=gateway.env,
              writer=writer)
    data_file(name=f"Merge managed keys into {gateway.config.path}", file=gateway.config, writer=writer)
