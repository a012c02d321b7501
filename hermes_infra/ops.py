"""Operations shared by every concern: files written with a backup first, and never a diff.

pyinfra's `files.put --diff` prints whole files; `.env` and companion env files hold secrets,
so hermes-infra writes every file through `managed_file`, which prints names, not contents.
"""
from __future__ import annotations

import shlex
import time
from io import BytesIO
from typing import Callable

from pyinfra import host
from pyinfra.api import FileUploadCommand, OperationError, operation

from hermes_infra.facts import FileMeta, read_text

Content = str | Callable[[str | None], str]


def backup_command(path: str, backup_dir: str) -> str:
    """Copy `path` into `backup_dir` with a timestamp, keeping mode and owner."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    flat = path.strip("/").replace("/", "__")
    target = f"{backup_dir.rstrip('/')}/{flat}.{stamp}"
    return (f"install -d -m 0700 {shlex.quote(backup_dir)} && "
            f"cp -a {shlex.quote(path)} {shlex.quote(target)}")


@operation()
def managed_file(
    path: str,
    content: Content,
    mode: str = "0644",
    uid: int = 0,
    gid: int = 0,
    backup_dir: str = "/var/backups/hermes-infra",
    on_change: str | None = None,
):
    """Ensure `path` holds `content` (a string, or a function of the current content).

    + mode/uid/gid: wanted permissions (numeric owner), fixed even when the content is right
    + backup_dir: where the previous version is copied before it is replaced
    + on_change: a shell command run after the content changed (e.g. restart a service)
    """
    current_text = read_text(path)
    wanted = content(current_text) if callable(content) else content
    meta = host.get_fact(FileMeta, path=path)
    quoted = shlex.quote(path)
    if current_text != wanted:
        directory = path.rsplit("/", 1)[0] or "/"
        temp = shlex.quote(f"{path}.hermes-infra.tmp")
        # mkdir -p, not install -d: install resets the mode of an existing directory (the
        # data dir would become 0755).
        yield f"mkdir -p {shlex.quote(directory)}"
        if current_text is not None:
            yield backup_command(path, backup_dir)
        # Upload to a 0600 temp name, then rename: nobody reads half a file or a secret
        # with the wrong mode, even for a moment.
        yield f"rm -f {temp} && install -m 0600 /dev/null {temp}"
        yield FileUploadCommand(BytesIO(wanted.encode("utf-8", errors="surrogateescape")), f"{path}.hermes-infra.tmp")
        yield f"chown {uid}:{gid} {temp} && chmod {mode} {temp} && mv -f {temp} {quoted}"
        if on_change:
            yield on_change
        return
    if meta is None or (meta["uid"], meta["gid"], meta["mode"]) != (uid, gid, mode.rjust(4, "0")):
        yield f"chown {uid}:{gid} {quoted} && chmod {mode} {quoted}"
        return
    host.noop(f"{path} is up to date")


def fail(message: str) -> None:
    """Stop the deploy of this host with a message an operator can act on."""
    raise OperationError(message)
