"""Profiles and companions that left the settings: their containers go, their data stays
(archived first). Retired before anything new is written, matched by what each owned (service,
data dir, env file, compose project), so a renamed profile that keeps its data dir, or a
companion that changed topology, keeps what is still in use."""
from __future__ import annotations

import shlex
import time

from pyinfra import host
from pyinfra.api import operation

from hermes_infra.operations.files import backup_dir_command
from hermes_infra.plan.hostplan import RetirePlan, Writer


@operation()
def retire(plan: RetirePlan, writer: Writer, purge: bool = False):
    if plan.empty:
        host.noop("no profile or companion was removed")
        return
    for project, directory in plan.projects_down:
        # Its containers only: a companion's volumes are the operator's data.
        quoted = shlex.quote(directory)
        yield (f"if [ -f {quoted}/compose.yaml ]; then cd {quoted} && "
               f"docker compose -p {shlex.quote(project)} -f compose.yaml down --remove-orphans; fi")
    for container in plan.containers:
        yield f"docker rm -f {shlex.quote(container)} >/dev/null 2>&1 || true"
    for path in plan.files:
        yield f"rm -f {shlex.quote(path)}"
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for name, data_dir in plan.archives:
        archive = shlex.quote(f"{writer.backup_dir}/profile-{name}-{stamp}.tar.gz")
        quoted = shlex.quote(data_dir)
        # tar never follows links (no -h) and stores FIFOs and devices as such, without reading them.
        yield (f"if [ -d {quoted} ] && [ ! -L {quoted} ]; then {backup_dir_command(writer)} && "
               f"(umask 077; tar -C / -czf {archive} {shlex.quote(data_dir.lstrip('/'))}); fi")
    for data_dir in plan.purges:
        yield f"rm -rf --one-file-system -- {shlex.quote(data_dir)}"
