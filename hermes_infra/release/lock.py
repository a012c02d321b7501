"""The deploy lock: one per host, an atomic `mkdir` taken before the first change.

`/var/lib/hermes-infra/lock/` (0700 root) holds `info.json` with who (user@machine), pid,
machine, time, revision, message and heartbeat (when it was taken). The holder touches its
holder file (below) every `HEARTBEAT_SECONDS` while it runs, and releases the lock on success,
failure and Ctrl-C (SIGINT/SIGTERM/SIGHUP end the run through `finally`). A lock whose holder is gone (its process
on this control machine no longer exists, or no heartbeat for `STALE_AFTER_SECONDS` by the
host's clock) is reported as stale with the command that releases it; it is never taken over
silently, since a person may still be looking at that host.

Ownership is a per-holder file in the lock dir, `holder.<token>` (the token: the holder's pid and
a hash of its machine), never a read-then-write of a shared file: the heartbeat touches that file
only (`touch -c`, which cannot create it in a lock someone else took after a forced release), and
a release renames the whole lock dir to a name of its own first (one `mv`) and deletes it only
when the holder file is inside, putting anyone else's lock back otherwise. `info.json` is written
once, in the dir the holder's own `mkdir` just made.
"""
from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import json
import os
import re
import shlex
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

from hermes_infra.host.cleantext import clean
from hermes_infra.release.remote import Remote

from hermes_infra.host.lockcommands import (  # noqa: F401  (the lock's API, re-exported)
    STATE_DIR,
    LOCK_DIR,
    HEARTBEAT_SECONDS,
    STALE_AFTER_SECONDS,
    POLL_SECONDS,
    now_iso,
    who,
    Holder,
    TOKEN,
    holder_file,
    _owned_test,
    _line,
    _describe,
    take_script,
    release_script,
    heartbeat_script,
    acquire_command,
    release_command,
    force_release_command,
    heartbeat_command,
    status_command,
)


class LockError(Exception):
    """The lock could not be taken (held, stale or unreachable); the message says what to do."""


@dataclass(frozen=True)
class LockState:
    """What a host's lock looks like: free, or held with the holder's info."""

    held: bool
    info: dict = field(default_factory=dict)
    age_seconds: int | None = None
    """Seconds since the holder's last heartbeat, by the host's clock."""

    def staleness(self, this_machine: str, alive: Callable[[int], bool],
                  stale_after: int = STALE_AFTER_SECONDS) -> str | None:
        """Why the holder is gone (None: it may still be running)."""
        if not self.held or (self.info and self.info.get("heartbeat") is None):
            return None  # free, or a manual lock (`lock acquire`): held until `lock release`
        pid, machine = self.info.get("pid"), self.info.get("machine")
        if machine == this_machine and isinstance(pid, int) and not alive(pid):
            return f"its holder process {pid} on {machine} is gone"
        if self.age_seconds is not None and self.age_seconds > stale_after:
            return f"no heartbeat for {self.age_seconds}s (a live holder writes one every {HEARTBEAT_SECONDS}s)"
        return None

    def describe(self) -> str:
        if not self.held:
            return "free"
        info = self.info
        if not info:
            return "held (being taken right now: no info.json yet)"
        # info.json is the host's: whoever has root there (or a timer's hostname) wrote it.
        text = (f"held by {clean(info.get('who', '?'), 200)} (pid {clean(info.get('pid', '?'), 20)}) "
                f"since {clean(info.get('time', '?'), 40)}")
        if info.get("revision"):
            text += f", revision {clean(info['revision'], 80)}"
        if info.get("message"):
            text += f", message {clean(repr(info['message']), 400)}"
        if self.info.get("heartbeat") is None:
            text += " (taken by hand with `lock acquire`)"
        elif self.age_seconds is not None:
            text += f", last heartbeat {self.age_seconds}s ago"
        return text


def parse_state(stdout: str) -> LockState:
    lines = stdout.splitlines()
    if not lines or lines[0].strip() != "held":
        return LockState(held=False)
    try:
        now = int(lines[1].strip())
        mtime = lines[2].strip()
        age = now - int(mtime) if mtime != "-" else None
    except (IndexError, ValueError):
        age = None
    try:
        info = json.loads("\n".join(lines[3:]) or "{}")
    except json.JSONDecodeError:
        info = {}
    return LockState(held=True, info=info if isinstance(info, dict) else {}, age_seconds=age)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DeployLock:
    """The lock of one host, held by `holder`."""

    def __init__(self, remote: Remote, holder: Holder, lock_dir: str | None = None):
        self.remote = remote
        self.holder = holder
        self.lock_dir = lock_dir or LOCK_DIR
        self.held = False
        self.lost = False
        self.first_ok = False

    def try_acquire(self) -> LockState | None:
        """Take the lock; None when taken, else what holds it."""
        result = self.remote.run(acquire_command(self.holder, self.lock_dir))
        if result.rc == 0 and result.stdout.startswith("acquired"):
            self.held = True
            return None
        if result.rc != 0 and not result.stdout.startswith("held"):
            raise LockError(f"{self.remote.name}: could not take the deploy lock {self.lock_dir} "
                            f"(exit {result.rc}): {result.stderr.strip()[-500:]}")
        return parse_state(result.stdout)

    def heartbeat(self) -> bool:
        if not self.held:
            return False
        result = self.remote.run(heartbeat_command(self.holder, self.lock_dir), timeout=60)
        if result.rc == 0 and result.stdout.startswith("lost"):
            self.lost = True
        return not self.lost

    def release(self, first: str | None = None) -> bool:
        """Release the lock. `first`, a command that must run while the lock is still held (the
        audit record), goes in the same round trip; `first_ok` tells whether it succeeded."""
        self.first_ok = False
        if not self.held:
            return False
        command = release_command(self.holder, self.lock_dir)
        if first:
            command = f"if ( {first} ) >/dev/null 2>&1; then echo first-ok; fi; {command}"
        result = self.remote.run(command, timeout=60)
        self.held = False
        lines = result.stdout.split()
        self.first_ok = "first-ok" in lines
        return result.rc == 0 and "released" in lines


def _each_host(items: dict, work: Callable) -> dict:
    """`work(name, item)` for every host at once; a failure is that host's None (the caller's
    next step on it reports the error)."""
    if len(items) <= 1:
        return {name: _quietly(work, name, item) for name, item in items.items()}
    with ThreadPoolExecutor(max_workers=min(16, len(items)), thread_name_prefix="hermes-infra-host") as pool:
        futures = {name: pool.submit(_quietly, work, name, item) for name, item in items.items()}
        return {name: future.result() for name, future in futures.items()}


def _quietly(work: Callable, name: str, item):
    try:
        return work(name, item)
    except Exception:  # noqa: BLE001 - see _each_host
        return None


def held_message(host: str, state: LockState, release_hint: str, stale: str | None, waited: float = 0) -> str:
    text = f"{host}: the deploy lock is {state.describe()}."
    if stale:
        return (f"{text} It looks stale: {stale}. hermes-infra does not take over a lock by itself; if no "
                f"deploy is running on {host}, release it with `{release_hint}` and run again")
    waited_text = f" after waiting {waited:.0f}s" if waited else ""
    return (f"{text} Another deploy is running there; stopped{waited_text} before changing anything. "
            f"Wait for it (rerun with --lock-wait SECONDS), or see it with `{release_hint.replace(' release', ' status', 1)}`")


class HostLocks:
    """The locks of several hosts, taken together (in order) and released together, with a
    heartbeat thread while held."""

    def __init__(self, remotes: dict[str, Remote], holder: Holder, *, wait: float = 0,
                 release_hint: str = "hermes-infra lock release TARGET --limit HOST",
                 log: Callable[[str], None] = print, lock_dir: str | None = None,
                 this_machine: str | None = None, alive: Callable[[int], bool] = pid_alive,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                 heartbeat_seconds: float = HEARTBEAT_SECONDS):
        self.locks = {name: DeployLock(remote, holder, lock_dir) for name, remote in remotes.items()}
        self.wait, self.release_hint, self.log = wait, release_hint, log
        self.this_machine = this_machine or holder.machine
        self.alive, self.sleep, self.clock = alive, sleep, clock
        self.heartbeat_seconds = heartbeat_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _hint(self, host: str) -> str:
        return self.release_hint.replace("HOST", host)

    def acquire(self) -> None:
        started = self.clock()
        # One SSH handshake per host, side by side: on a fleet they would otherwise add up.
        _each_host(self.locks, lambda name, lock: getattr(lock.remote, "connect", lambda: None)())
        try:
            if self.wait <= 0 and len(self.locks) > 1:
                self._acquire_all_at_once()
            for name, lock in self.locks.items():
                if lock.held:
                    continue
                announced = False
                while True:
                    state = lock.try_acquire()
                    if state is None:
                        break
                    stale = state.staleness(self.this_machine, self.alive)
                    waited = self.clock() - started
                    if stale or waited >= self.wait:
                        raise LockError(held_message(name, state, self._hint(name), stale, waited))
                    if not announced:
                        self.log(f"{name}: the deploy lock is {state.describe()}; waiting up to "
                                 f"{self.wait - waited:.0f}s more")
                        announced = True
                    self.sleep(min(POLL_SECONDS, max(0.5, self.wait - waited)))
        except BaseException:
            self.release()
            raise
        self._thread = threading.Thread(target=self._beat, name="hermes-infra-lock-heartbeat", daemon=True)
        self._thread.start()

    def _acquire_all_at_once(self) -> None:
        """Without waiting, the order cannot deadlock two fleets' deploys: take every lock side
        by side; any refusal fails the whole (the caller releases what was taken)."""
        def attempt(name: str, lock: DeployLock):
            try:
                return lock.try_acquire(), None
            except Exception as error:  # noqa: BLE001 - raised below, in inventory order
                return None, error

        answers = _each_host(self.locks, attempt)
        for name, (state, error) in answers.items():
            if error is not None:
                raise error
            if state is not None:
                raise LockError(held_message(name, state, self._hint(name), state.staleness(self.this_machine, self.alive)))

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            for name, lock in self.locks.items():
                try:
                    if lock.held and not lock.heartbeat():
                        self.log(f"{name}: WARNING: the deploy lock was released by someone else during this run")
                except Exception:  # a missed heartbeat is not fatal; the next one retries
                    pass

    def release(self, first: dict[str, str] | None = None,
                first_failed: Callable[[str], None] | None = None) -> list[str]:
        """Release every lock held, all hosts at once; `first[host]` runs on a host just before
        its release, in the same round trip (`DeployLock.release`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        first = first or {}

        def release_one(name: str, lock: DeployLock) -> bool:
            try:
                released = lock.release(first.get(name))
            except Exception as error:  # noqa: BLE001 - report, keep releasing the others
                self.log(f"{name}: could not release the deploy lock ({error}); release it with "
                         f"`{self._hint(name)}`")
                return False
            if first.get(name) and not lock.first_ok and first_failed is not None:
                first_failed(name)
            return released

        held = {name: lock for name, lock in self.locks.items() if lock.held}
        done = _each_host(held, release_one)
        return [name for name in held if done.get(name)]

    def __enter__(self) -> HostLocks:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM and SIGHUP end the run like Ctrl-C (KeyboardInterrupt), so `finally` blocks
    release the locks; the previous handlers come back afterwards."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGHUP):
            previous[signum] = signal.signal(signum, interrupt)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
