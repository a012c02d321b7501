"""`hermes-infra rollback TARGET [--to REVISION]`: back to a kept previous image and the snapshots
taken before the upgrade that replaced it, on demand (the deploy does the same by itself when a
new image fails its gate). Locked and audited like a deploy.

The data dir as the newer version left it is renamed aside (`<dir>.rolled-back-<stamp>`), not
deleted: sessions or memories written since the upgrade can be copied back by hand.
"""
from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from hermes_infra.release import audit, upgrade
from hermes_infra.release.lock import Holder, HostLocks, interruptible
from hermes_infra.release.remote import remotes_for
from hermes_infra.release.session import release_hint


@dataclass
class RollbackResult:
    host: str
    ok: bool
    output: str
    seconds: float


def list_command() -> str:
    """One line per kept release, newest first: image id, when it was kept, the revision it ran."""
    return (f"cd {upgrade.RELEASES} 2>/dev/null && ls -1t | grep -x '{upgrade.ID_PATTERN}' | while read -r id; do "
            "echo \"$id $(date -u -r \"$id\" +%Y-%m-%dT%H:%M:%SZ) revision $(cat \"$id/revision\" 2>/dev/null || echo -)\"; "
            "done; true")


def rollback(target, *, to: str | None = None, lock_wait: float = 0, message: str | None = None,
             limit: list[str] | None = None, log: Callable[[str], None] | None = None) -> list[RollbackResult]:
    from hermes_infra import commands
    from hermes_infra.settings.loading import SettingsError

    log = log or (lambda text: print(f"hermes-infra: {text}", file=sys.stderr, flush=True))
    if to is not None and not re.fullmatch(r"[0-9a-f]{12}", to):
        raise SettingsError(f"--to {to!r}: give a revision or a kept image id (12 hex digits each, "
                            "see `hermes-infra rollback TARGET --list`)")
    settings = commands.validate(target)
    remotes = remotes_for(target, limit)
    results = []
    locks = HostLocks(remotes, Holder(command="rollback", message=message), wait=lock_wait,
                      release_hint=release_hint(target), log=log)
    try:
        with interruptible():
            locks.acquire()
            for name, remote in remotes.items():
                host_settings = settings[name]
                script = upgrade.rollback_script(
                    host_settings.project_dir, "hermes", tuple(g.service_name for g in host_settings.gateways),
                    max(g.stop_grace_seconds for g in host_settings.gateways), to, keep=host_settings.backup_keep,
                    owners={g.host_data_dir: (g.uid, g.gid) for g in host_settings.gateways})
                started = time.monotonic()
                done = remote.run(script, timeout=900)
                seconds = time.monotonic() - started
                output = done.stdout + done.stderr
                found = re.search(r"to (hermes-infra/previous:[0-9a-f]{12})", output)
                results.append(RollbackResult(name, done.rc == 0, output, seconds))
                audit.write(remote, audit.AuditRecord(
                    command="rollback", result="success" if done.rc == 0 else "failed",
                    image=found.group(1) if found else None, seconds=seconds,
                    message=message if done.rc == 0 else output.strip()[-300:]))
                if done.rc != 0:
                    break
    finally:
        locks.release()
        for remote in remotes.values():
            remote.close()
    return results
