"""The deploy lock against a real shell on a temp dir (the same commands a host runs)."""
from __future__ import annotations

import json
import subprocess
import threading

import pytest

from hermes_infra.release import lock
from hermes_infra.release.remote import Result


class ShellRemote:
    """Runs the lock's commands with this machine's shell: a host in a temp dir."""

    def __init__(self, name: str = "web-1"):
        self.name = name
        self.commands: list[str] = []

    def run(self, command: str, timeout: float = 120) -> Result:
        self.commands.append(command)
        done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=timeout)
        return Result(done.returncode, done.stdout, done.stderr)

    def close(self) -> None:
        pass


@pytest.fixture
def lock_dir(tmp_path):
    return str(tmp_path / "state" / "lock")


def holder(**changes) -> lock.Holder:
    values = {"who": "alice@laptop", "pid": 4242, "machine": "laptop", "revision": "abc123def456", "message": "v2"}
    values.update(changes)
    return lock.Holder(**values)


def test_acquire_is_atomic_and_records_who_when_what(lock_dir):
    remote = ShellRemote()
    first = lock.DeployLock(remote, holder(), lock_dir)
    assert first.try_acquire() is None and first.held
    info = json.loads(open(f"{lock_dir}/info.json").read())
    assert {k: info[k] for k in ("who", "pid", "machine", "revision", "message")} == {
        "who": "alice@laptop", "pid": 4242, "machine": "laptop", "revision": "abc123def456", "message": "v2"}
    assert set(info) == {"who", "pid", "machine", "time", "revision", "message", "heartbeat"}
    second = lock.DeployLock(remote, holder(who="bob@desk", pid=99, machine="desk"), lock_dir)
    state = second.try_acquire()
    assert state is not None and state.held and state.info["who"] == "alice@laptop"
    assert state.age_seconds is not None and state.age_seconds < 5
    assert not second.held


def test_only_the_holder_releases_and_heartbeats(lock_dir):
    remote = ShellRemote()
    mine = lock.DeployLock(remote, holder(), lock_dir)
    mine.try_acquire()
    other = lock.DeployLock(remote, holder(pid=4243), lock_dir)
    other.held = True  # pretend: a confused process must not remove someone else's lock
    assert not other.release()
    assert lock.parse_state(remote.run(lock.status_command(lock_dir)).stdout).held
    assert mine.heartbeat()
    assert mine.release()
    assert not lock.parse_state(remote.run(lock.status_command(lock_dir)).stdout).held


def test_force_release_reports_what_it_removed_and_heartbeat_notices(lock_dir):
    remote = ShellRemote()
    mine = lock.DeployLock(remote, holder(), lock_dir)
    mine.try_acquire()
    state = lock.parse_state(remote.run(lock.force_release_command(lock_dir)).stdout)
    assert state.held and state.info["who"] == "alice@laptop"
    assert not mine.heartbeat() and mine.lost


def test_only_one_of_many_concurrent_acquirers_wins(lock_dir):
    remote = ShellRemote()
    locks = [lock.DeployLock(remote, holder(pid=1000 + i), lock_dir) for i in range(8)]
    threads = [threading.Thread(target=l.try_acquire) for l in locks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(l.held for l in locks) == 1


def test_staleness_dead_pid_on_this_machine_or_old_heartbeat():
    state = lock.LockState(held=True, info=holder().info(), age_seconds=3)
    assert state.staleness("laptop", alive=lambda pid: False) == "its holder process 4242 on laptop is gone"
    assert state.staleness("laptop", alive=lambda pid: True) is None
    assert state.staleness("other-machine", alive=lambda pid: False) is None  # cannot see that pid
    old = lock.LockState(held=True, info=holder().info(), age_seconds=lock.STALE_AFTER_SECONDS + 1)
    assert "no heartbeat" in old.staleness("other-machine", alive=lambda pid: True)
    manual = lock.LockState(held=True, info=holder(manual=True).info(), age_seconds=10**6)
    assert manual.staleness("laptop", alive=lambda pid: False) is None
    assert "by hand" in manual.describe()


def test_second_deploy_stops_with_a_clear_message(lock_dir):
    remote = ShellRemote()
    lock.DeployLock(remote, holder(pid=1), lock_dir).try_acquire()
    locks = lock.HostLocks({"web-1": remote}, holder(pid=2), lock_dir=lock_dir, alive=lambda pid: True,
                           release_hint="hermes-infra lock release inv.py --limit HOST")
    with pytest.raises(lock.LockError) as error:
        locks.acquire()
    text = str(error.value)
    assert "held by alice@laptop (pid 1)" in text and "message 'v2'" in text and "--lock-wait" in text
    assert "hermes-infra lock status inv.py --limit web-1" in text


def test_waiting_polls_until_the_holder_releases(lock_dir):
    remote = ShellRemote()
    first = lock.DeployLock(remote, holder(pid=1), lock_dir)
    first.try_acquire()
    slept, logged = [], []
    clock = iter(range(0, 1000, 5))

    def sleep(seconds):
        slept.append(seconds)
        if len(slept) == 2:
            first.release()

    locks = lock.HostLocks({"web-1": remote}, holder(pid=2), wait=60, lock_dir=lock_dir, alive=lambda pid: True,
                           sleep=sleep, clock=lambda: next(clock), log=logged.append, heartbeat_seconds=3600)
    locks.acquire()
    assert locks.locks["web-1"].held and len(slept) == 2
    assert "waiting up to" in logged[0]
    assert locks.release() == ["web-1"]


def test_stale_lock_is_reported_with_the_release_command_never_taken(lock_dir):
    remote = ShellRemote()
    lock.DeployLock(remote, holder(pid=1, machine="laptop"), lock_dir).try_acquire()
    locks = lock.HostLocks({"web-1": remote}, holder(pid=2, machine="laptop"), wait=600, lock_dir=lock_dir,
                           alive=lambda pid: pid != 1, release_hint="hermes-infra lock release inv.py --limit HOST")
    with pytest.raises(lock.LockError) as error:
        locks.acquire()
    assert "stale: its holder process 1 on laptop is gone" in str(error.value)
    assert "hermes-infra lock release inv.py --limit web-1" in str(error.value)
    assert json.loads(open(f"{lock_dir}/info.json").read())["pid"] == 1  # still the dead run's


def test_a_failure_on_the_second_host_releases_the_first(tmp_path):
    one, two = ShellRemote("a"), ShellRemote("b")
    dirs = {"a": str(tmp_path / "a" / "lock"), "b": str(tmp_path / "b" / "lock")}
    lock.DeployLock(two, holder(pid=1), dirs["b"]).try_acquire()

    class PerHost(lock.HostLocks):
        pass

    locks = PerHost({"a": one, "b": two}, holder(pid=2), alive=lambda pid: True)
    for name, deploy_lock in locks.locks.items():
        deploy_lock.lock_dir = dirs[name]
    with pytest.raises(lock.LockError):
        locks.acquire()
    assert not lock.parse_state(one.run(lock.status_command(dirs["a"])).stdout).held


def test_lock_commands_hold_no_secret_and_sigterm_becomes_keyboard_interrupt():
    import os
    import signal

    text = lock.acquire_command(holder(message="deploy v2")) + lock.heartbeat_command(holder())
    assert "API_SERVER_KEY" not in text
    with pytest.raises(KeyboardInterrupt):
        with lock.interruptible():
            os.kill(os.getpid(), signal.SIGTERM)
            signal.pause() if hasattr(signal, "pause") else None


HOSTILE = "v2'; touch pwned; echo '$(touch pwned2)`touch pwned3`\n\\\"ünïcode\t"


def test_a_hostile_message_is_stored_exactly_and_runs_nothing(lock_dir, tmp_path, monkeypatch):
    from hermes_infra.release import audit

    monkeypatch.chdir(tmp_path)
    remote = ShellRemote()
    mine = lock.DeployLock(remote, holder(message=HOSTILE, machine="lap'top"), lock_dir)
    assert mine.try_acquire() is None
    assert json.loads(open(f"{lock_dir}/info.json").read())["message"] == HOSTILE
    assert mine.heartbeat()
    path = str(tmp_path / "log" / "audit.jsonl")
    record = audit.AuditRecord(command="up", result="success", message=HOSTILE)
    assert mine.release(first=audit.append_command(record, path)) and mine.first_ok
    assert audit.tail(remote, 1, path)[0]["message"] == HOSTILE
    assert not list(tmp_path.glob("pwned*"))
    import os
    import stat
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700


def test_release_reports_when_the_command_before_it_fails(lock_dir):
    remote = ShellRemote()
    mine = lock.DeployLock(remote, holder(), lock_dir)
    assert mine.try_acquire() is None
    assert mine.release(first="false") and not mine.first_ok
    locks = lock.HostLocks({"a": ShellRemote("a")}, holder(), lock_dir=lock_dir)
    locks.acquire()
    failed = []
    assert locks.release(first={"a": "exit 1"}, first_failed=failed.append) == ["a"] and failed == ["a"]


def test_a_fleet_connects_and_locks_side_by_side_and_releases_side_by_side(tmp_path):
    """Without --lock-wait, every host's connect, lock and release run at the same time (their
    intervals overlap) instead of one host after the other."""
    import time

    intervals: dict[str, list[tuple[float, float]]] = {}

    class SlowRemote(ShellRemote):
        def connect(self):
            self.run("true")

        def run(self, command, timeout=120):
            started = time.monotonic()
            time.sleep(0.3)
            result = super().run(command, timeout)
            intervals.setdefault(self.name, []).append((started, time.monotonic()))
            return result

    remotes = {name: SlowRemote(name) for name in "abc"}
    locks = lock.HostLocks(remotes, holder(), heartbeat_seconds=3600)
    for name, deploy_lock in locks.locks.items():
        deploy_lock.lock_dir = str(tmp_path / name / "lock")
    locks.acquire()
    assert all(deploy_lock.held for deploy_lock in locks.locks.values())
    assert sorted(locks.release()) == ["a", "b", "c"]
    for step in range(3):  # connect, acquire, release
        spans = [intervals[name][step] for name in "abc"]
        assert max(start for start, _ in spans) < min(end for _, end in spans), f"step {step} ran host by host"


def test_a_release_racing_a_forced_release_and_a_new_holder_leaves_the_new_lock(lock_dir, tmp_path):
    """F13: A's release tested ownership, then `rm -rf`; if an operator force-released and B took
    the lock in between, A removed B's lock. Here the interleaving happens inside A's release
    (a `rm` that lets B in first, once); B must still hold the lock afterwards."""
    a, b = holder(pid=1), holder(pid=2, who="bob@desk")
    assert ShellRemote().run(lock.acquire_command(a, lock_dir)).stdout.startswith("acquired")
    interleave = f"{lock.force_release_command(lock_dir)} >/dev/null; {lock.acquire_command(b, lock_dir)} >/dev/null"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "rm").write_text(f"#!/bin/sh\nif [ ! -e {tmp_path}/raced ]; then : > {tmp_path}/raced; "
                                f"PATH=/usr/bin:/bin; {interleave}; fi\nexec /bin/rm \"$@\"\n")
    (bin_dir / "rm").chmod(0o755)
    done = subprocess.run(["sh", "-c", f"PATH={bin_dir}:$PATH; {lock.release_command(a, lock_dir)}"],
                          capture_output=True, text=True)
    assert (tmp_path / "raced").exists()
    assert done.stdout.strip() == "notours"
    state = lock.parse_state(ShellRemote().run(lock.status_command(lock_dir)).stdout)
    assert state.held and state.info["who"] == "bob@desk"
    # and A's heartbeat neither writes into B's lock nor claims it
    mine = lock.DeployLock(ShellRemote(), a, lock_dir)
    mine.held = True
    before = open(f"{lock_dir}/info.json").read()
    assert not mine.heartbeat() and mine.lost
    assert open(f"{lock_dir}/info.json").read() == before
    theirs = lock.DeployLock(ShellRemote(), b, lock_dir)
    theirs.held = True
    assert theirs.release()
