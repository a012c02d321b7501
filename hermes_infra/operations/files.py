"""Writing files from the plan: staged where nobody else can read them, backed up first, never
shown in a diff.

pyinfra's `files.put --diff` prints whole files, and with `--sudo` it uploads through /tmp
with the SSH user's umask. `.env` and companion env files hold secrets, so every file goes
through here: uploaded into a 0700 directory (the SSH user's own one with --sudo, root's
staging dir without), put in place by a rename, and named, never printed.
"""
from __future__ import annotations

import hashlib
import shlex
import time
from collections.abc import Callable
from io import BytesIO

from pyinfra import host
from pyinfra.api import FileUploadCommand, OperationError, operation

from hermes_infra.host import safeio
from hermes_infra.plan.hostplan import DataFilePlan, RootFilePlan, Writer


def _flat(path: str) -> str:
    return path.strip("/").replace("/", "__")


def backup_target(path: str, writer: Writer, stamp: str | None = None) -> str:
    return f"{writer.backup_dir}/{_flat(path)}.{stamp or time.strftime('%Y%m%dT%H%M%S')}"


def rotate_command(path: str, writer: Writer) -> str:
    """Keep the newest `backup_keep` copies of `path`: old backups hold old secrets."""
    pattern = shlex.quote(f"{_flat(path)}.") + "*"
    return (f"cd {shlex.quote(writer.backup_dir)} && ls -1t -- {pattern} 2>/dev/null | tail -n +{writer.backup_keep + 1} "
            "| while IFS= read -r old; do rm -f -- \"$old\"; done")


def backup_dir_command(writer: Writer) -> str:
    quoted = shlex.quote(writer.backup_dir)
    return f"install -d -m 0700 {quoted} && chmod 0700 {quoted}"


def staged_path(writer: Writer, path: str) -> str:
    return f"{writer.stage_dir}/{hashlib.sha256(path.encode()).hexdigest()[:16]}"


def backed_up(writer: Writer, path: str, copy: str) -> str:
    """One command: the backup dir, `copy` (which writes `backup_target`), old copies rotated."""
    return f"{backup_dir_command(writer)} && {copy} && ( {rotate_command(path, writer)} )"


def upload(writer: Writer, content: str, path: str, first: str | None = None):
    """Commands that leave `content` in a root-only staging file; yields, returns its path.
    `first` runs before, in the same round trip (every command costs one on the host)."""
    staged = staged_path(writer, path)
    upload_dir = shlex.quote(writer.upload_dir)
    stage_dir = shlex.quote(writer.stage_dir)
    # With --sudo pyinfra uploads as the SSH user to remote_temp_filename, then copies as root:
    # that file must sit in a directory only the SSH user can enter.
    yield " && ".join(filter(None, (
        first, f"install -d -m 0700 {stage_dir} && chmod 0700 {stage_dir}",
        f"install -d -m 0700 -o {shlex.quote(writer.upload_user)} {upload_dir} && chmod 0700 {upload_dir}")))
    temp = f"{writer.upload_dir}/{staged.rsplit('/', 1)[1]}"
    yield FileUploadCommand(BytesIO(content.encode("utf-8", errors="surrogateescape")), staged,
                            remote_temp_filename=temp)
    return staged


@operation()
def root_file(file: RootFilePlan, writer: Writer, on_change: str | None = None,
              check: Callable[[str], str] | None = None):
    """A root-owned file outside data dirs holds the plan's content, owner 0:0 and mode.

    + on_change: a shell command run after the content changed (e.g. restart a service)
    + check: the shell command that must accept the staged file (its path given) before it
      replaces the old one; when it refuses, the old file stays and the run stops
    """
    quoted = shlex.quote(file.path)
    if file.content_changed:
        directory = file.path.rsplit("/", 1)[0] or "/"
        first = f"mkdir -p {shlex.quote(directory)}"
        if file.current is not None:
            copy = f"cp -a {quoted} {shlex.quote(backup_target(file.path, writer))}"
            first += " && " + backed_up(writer, file.path, copy)
        staged = yield from upload(writer, file.content, file.path, first=first)
        temp = shlex.quote(f"{file.path}.hermes-infra.new")
        checked = f"{{ {check(shlex.quote(staged))}; }} && " if check else ""
        yield (f"{checked}install -m {file.mode} -o 0 -g 0 -T {shlex.quote(staged)} {temp} && mv -fT {temp} {quoted} "
               f"&& rm -f {shlex.quote(staged)}")
        if on_change:
            yield on_change
        return
    if file.meta_changed:
        yield f"chown 0:0 {quoted} && chmod {file.mode} {quoted}"
        return
    host.noop(f"{file.path} is up to date")


@operation()
def data_file(file: DataFilePlan, writer: Writer):
    """`.env` or `config.yaml` in a data dir holds the plan's content, written as its owner.

    The old file is copied to the backup dir first (read as the owner, never followed).
    """
    if not file.content_changed and not file.meta_changed:
        host.noop(f"{file.path} is up to date")
        return
    first = None
    if file.exists:
        copy = safeio.backup_script(file.directory, file.name, file.uid, file.gid, backup_target(file.path, writer))
        first = backed_up(writer, file.path, copy)
    # The mode is the owner's to set on its own file, so a wrong mode is fixed by rewriting.
    staged = yield from upload(writer, file.content, file.path, first=first)
    yield (f"{safeio.write_script(file.directory, file.name, staged, file.uid, file.gid, file.mode)} "
           f"&& rm -f {shlex.quote(staged)}")


def fail(message: str) -> None:
    """Stop the deploy of this host with a message an operator can act on."""
    raise OperationError(message)
