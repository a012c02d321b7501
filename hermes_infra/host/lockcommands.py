"""The deploy lock's commands: what runs on a host to take, refresh, release and read the lock.

Pure text (Kamal's `commands/lock.rb`): `release/lock.py` runs them over a connection, and the
backup timer's script (`plan/backup_timer.py`) embeds them so that a scheduled run and a deploy
never work on a host at the same time. The protocol is described in `release/lock.py`.
"""
from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import json
import os
import re
import shlex
import socket
from dataclasses import dataclass, field

STATE_DIR = "/var/lib/hermes-infra"
LOCK_DIR = f"{STATE_DIR}/lock"
HEARTBEAT_SECONDS = 15
STALE_AFTER_SECONDS = 120
POLL_SECONDS = 5


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class Holder:
    """Who takes the lock: this process on this control machine."""

    who: str = field(default_factory=who)
    pid: int = field(default_factory=os.getpid)
    machine: str = field(default_factory=socket.gethostname)
    command: str = "up"
    revision: str | None = None
    message: str | None = None
    started: str = field(default_factory=now_iso)
    manual: bool = False
    """`hermes-infra lock acquire`: held until `lock release`, no process, no heartbeat."""

    @property
    def token(self) -> str:
        """Names this holder's file in the lock dir: shell-safe whatever the machine is called."""
        return f"{int(self.pid)}-{hashlib.sha256(self.machine.encode()).hexdigest()[:16]}"

    def info(self) -> dict:
        return {"who": self.who, "pid": self.pid, "machine": self.machine, "time": self.started,
                "revision": self.revision, "message": self.message,
                "heartbeat": None if self.manual else now_iso()}


TOKEN = re.compile(r"^[A-Za-z0-9$_-]+$")


def holder_file(lock_dir: str, token: str) -> str:
    """Shell word for a holder's file; `token` is a literal token or `timer-$$` (the backup timer)."""
    if not TOKEN.match(token):
        raise ValueError(f"lock holder token {token!r} is not shell-safe")
    return f"{shlex.quote(lock_dir)}/holder.{token}"


def _owned_test(holder: Holder, lock_dir: str) -> str:
    """Shell test: `holder` holds the lock (its holder file is there). A builtin only."""
    return f"[ -f {holder_file(lock_dir, holder.token)} ]"


def _line(info: dict) -> str:
    # ASCII JSON: no control character or quote can end the shell word it travels in.
    return json.dumps(info, sort_keys=True) + "\n"


def _describe(lock_dir: str) -> str:
    info = shlex.quote(f"{lock_dir}/info.json")
    # The age is the newest of info.json and the holder files (the heartbeat touches the latter).
    return (f"date +%s; {{ stat -c %Y {info} {shlex.quote(lock_dir)}/holder.* 2>/dev/null; echo -; }} "
            f"| sort -n | tail -n 1; cat {info} 2>/dev/null || true")


def take_script(lock_dir: str, info_line: str, token: str) -> str:
    """Shell: `mkdir` the lock (atomic), then info.json and the holder file in the new dir, which is
    ours alone; prints `acquired`, or `held` and the holder's description."""
    parent = shlex.quote(lock_dir.rsplit("/", 1)[0] or "/")
    info = shlex.quote(f"{lock_dir}/info.json")
    return (f"{{ [ -d {parent} ] || install -d -m 0700 {parent}; }} && "
            f"if mkdir -m 0700 {shlex.quote(lock_dir)} 2>/dev/null; then "
            f"printf %s {info_line} > {info} && : > {holder_file(lock_dir, token)} && echo acquired; "
            f"else echo held; {_describe(lock_dir)}; fi")


def release_script(lock_dir: str, token: str) -> str:
    """Shell: compare and delete in one rename. The lock dir is moved to a name only this holder
    uses; it is deleted only when this holder's file is inside, else moved straight back."""
    quoted = shlex.quote(lock_dir)
    aside = f"{shlex.quote(lock_dir + '.releasing.')}{token}"
    mine = f"{aside}/holder.{token}"
    holder_file(lock_dir, token)  # validates the token
    return (f"if [ -f {quoted}/holder.{token} ] && rm -rf -- {aside} && mv -T -- {quoted} {aside} 2>/dev/null; then "
            f"if [ -f {mine} ]; then rm -rf -- {aside} && echo released; "
            f"else mv -T -- {aside} {quoted}; echo notours; fi; else echo notours; fi")


def heartbeat_script(lock_dir: str, token: str) -> str:
    """Shell: refresh this holder's file only (`touch -c` never creates one in someone else's lock)."""
    mine = holder_file(lock_dir, token)
    return f"if [ -f {mine} ] && touch -c {mine} 2>/dev/null && [ -f {mine} ]; then echo ok; else echo lost; fi"


def acquire_command(holder: Holder, lock_dir: str = LOCK_DIR) -> str:
    return f"umask 077; {take_script(lock_dir, shlex.quote(_line(holder.info())), holder.token)}"


def release_command(holder: Holder, lock_dir: str = LOCK_DIR) -> str:
    return release_script(lock_dir, holder.token)


def force_release_command(lock_dir: str = LOCK_DIR) -> str:
    quoted = shlex.quote(lock_dir)
    return (f"if [ -d {quoted} ]; then echo held; {_describe(lock_dir)}; rm -f {quoted}/info.json {quoted}/info.json.new "
            f"{quoted}/holder.* && rmdir {quoted}; else echo free; fi")


def heartbeat_command(holder: Holder, lock_dir: str = LOCK_DIR) -> str:
    return heartbeat_script(lock_dir, holder.token)


def status_command(lock_dir: str = LOCK_DIR) -> str:
    return f"if [ -d {shlex.quote(lock_dir)} ]; then echo held; {_describe(lock_dir)}; else echo free; fi"
