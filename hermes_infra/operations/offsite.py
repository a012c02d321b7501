"""Off-host backups (setting scheduled_backups.offsite): the files gone when the setting is
(their contents are written by the deploy with `root_file`; restic itself is installed with
the deploy's apt operation)."""
from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import operation

from hermes_infra.plan.offsite import CACHE_DIR, PATHS, OffsitePlan


@operation()
def offsite_removed(plan: OffsitePlan):
    """When the setting is gone, so are the password, the credentials, the scripts and restic's
    cache (the repository and the host's records of past uploads stay)."""
    if plan.wanted:
        host.noop("off-host backups are set")
        return
    if not plan.present:
        host.noop("no off-host backups are set")
        return
    yield f"rm -f {' '.join(shlex.quote(p) for p in PATHS)} && rm -rf {shlex.quote(CACHE_DIR)}"
