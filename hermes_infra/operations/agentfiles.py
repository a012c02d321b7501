"""The agent's files in its data dir: written and removed as the data dir's owner.

Every write goes the way `.env` and `config.yaml` go (operations/files.py, host/safeio.py):
staged root-only, copied in by the owner into a fresh temp name and renamed over the target (a
planted link is replaced, never followed), the mode set by the owner on its own file, nothing
chowned by path. Parent directories are made by the owner too. A file someone else changed is
copied to the backup dir first (read as the owner, never followed). A file that left the
settings is removed by the owner only while its bytes are still the ones hermes-infra wrote,
checked on the host at that moment; otherwise it stays, and the run says so.
"""
from __future__ import annotations

import posixpath
import shlex

from pyinfra import host
from pyinfra.api import operation

from hermes_infra.host import safeio
from hermes_infra.operations.files import backed_up, backup_target, upload
from hermes_infra.plan.agentfiles import AgentFilesPlan, FileRemoval, FileWrite
from hermes_infra.plan.hostplan import Writer


# Run as the owner, one directory at a time from where the last `cd -P` pinned it: a link in the
# way stops it (the write after it checks the real path again, whatever is swapped meanwhile).
_MAKE_PARENTS = ('for d; do if [ -L "$d" ]; then echo "$d is a link: not followed" >&2; exit 1; fi; '
                 '[ -d "$d" ] || mkdir -- "$d" || exit 1; cd -P -- "$d" || exit 1; done')


def parents_command(plan: AgentFilesPlan, dest: str) -> str | None:
    """The owner makes the directories above `dest` (None: it sits in the data dir itself)."""
    parent = posixpath.dirname(dest)
    if not parent:
        return None
    return (f"( {safeio.enter(plan.directory)} && {safeio.as_owner(plan.uid, plan.gid)} "
            f"sh -c {shlex.quote(_MAKE_PARENTS)} sh {' '.join(shlex.quote(p) for p in parent.split('/'))} )")


def enter_parent(plan: AgentFilesPlan, dest: str) -> str:
    """`cd` into the directory that holds `dest`, and only if it really is inside the data dir.

    The agent can replace `scripts/` with a link (to another profile's data dir, which has the
    same owner): after `cd -P` the working directory is pinned to one inode, and its real path
    must be the data dir's own plus `dest`'s parent, so what follows (run relative to it) cannot
    be redirected, whatever is swapped afterwards."""
    parent = posixpath.dirname(dest)
    if not parent:
        return safeio.enter(plan.directory)
    outside = shlex.quote(f"{plan.path(parent)} is not a directory inside {plan.directory} (a link?): not written")
    return (f"{{ {safeio.enter(plan.directory)} && hi_base=$(pwd -P) && cd -P -- {shlex.quote(parent)} 2>/dev/null "
            f"&& [ \"$(pwd -P)\" = \"$hi_base\"/{shlex.quote(parent)} ] || {{ echo {outside} >&2; false; }}; }}")


def write_commands(plan: AgentFilesPlan, write: FileWrite, writer: Writer):
    path, name = plan.path(write.dest), posixpath.basename(write.dest)
    first = parents_command(plan, write.dest)
    if write.backup:
        copy = (f"( {enter_parent(plan, write.dest)} && "
                f"{safeio.backup_script('.', name, plan.uid, plan.gid, backup_target(path, writer))} )")
        first = " && ".join(filter(None, (first, backed_up(writer, path, copy))))
    staged = yield from upload(writer, write.content, path, first=first)
    yield (f"( {enter_parent(plan, write.dest)} && "
           f"{safeio.write_script('.', name, staged, plan.uid, plan.gid, write.mode)} ) && rm -f {shlex.quote(staged)}")


def removal_command(plan: AgentFilesPlan, removal: FileRemoval) -> str:
    """Remove `dest` as the owner if it still holds exactly what hermes-infra wrote; say so if not."""
    quoted = shlex.quote(posixpath.basename(removal.dest))
    read = safeio.owner_read(posixpath.basename(removal.dest), plan.uid, plan.gid, safeio.MAX_READ_BYTES + 1)
    kept = shlex.quote(f"kept {plan.path(removal.dest)}: changed since hermes-infra wrote it, no longer managed")
    return (f"( {enter_parent(plan, removal.dest)} || exit 0; "
            f"if [ -f {quoted} ] && [ ! -L {quoted} ] && [ \"$( {{ {read}; }} | sha256sum | cut -c1-64 )\" = "
            f"{shlex.quote(removal.sha256)} ]; then {safeio.as_owner(plan.uid, plan.gid)} rm -f -- {quoted}; "
            f"elif [ -e {quoted} ] || [ -L {quoted} ]; then echo {kept}; fi )")


@operation()
def agent_files(plan: AgentFilesPlan, writer: Writer):
    """The data dir holds the settings' files; files hermes-infra placed and no longer wants are gone."""
    if not plan.writes and not plan.removals:
        host.noop(f"{len(plan.unchanged)} agent file(s) in {plan.directory} are up to date")
        return
    for write in plan.writes:
        yield from write_commands(plan, write, writer)
    for removal in plan.removals:
        yield removal_command(plan, removal)
