"""The audit log's format and commands, the deploy's recorded outcomes, and `up`'s lock wrapper."""
from __future__ import annotations

import json
import os
import stat

import pytest

from hermes_infra.release import audit, lock, results
from tests.unit.test_release_lock import ShellRemote


def test_record_has_exactly_the_shared_format():
    record = audit.AuditRecord(command="up", result="success", revision="abc123def456", image="hermes:1#ff",
                               changed=("Compose project hermes up",), seconds=12.34, message=None,
                               who="alice@laptop", time="2026-11-20T10:00:00Z")
    data = json.loads(record.line())
    assert list(data) == ["time", "who", "command", "revision", "image", "result", "changed", "seconds", "message"]
    assert data["seconds"] == 12.3 and data["changed"] == ["Compose project hermes up"]
    with pytest.raises(ValueError):
        audit.AuditRecord(command="up", result="maybe")


def test_append_is_root_only_and_tail_reads_back(tmp_path):
    path = str(tmp_path / "log" / "audit.jsonl")
    remote = ShellRemote()
    for result in ("success", "failed"):
        assert audit.write(remote, audit.AuditRecord(command="up", result=result, message="it's \"quoted\" $HOME"),
                           path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    records = audit.tail(remote, 1, path)
    assert len(records) == 1 and records[0]["result"] == "failed"
    assert records[0]["message"] == "it's \"quoted\" $HOME"
    assert len(audit.tail(remote, 10, path)) == 2
    assert audit.tail(remote, 10, str(tmp_path / "none.jsonl")) == []
    assert "failed" in audit.format_records("web-1", records)


def _events(tmp_path, *events) -> str:
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return str(path)


def test_outcomes_from_recorded_events(tmp_path):
    path = _events(tmp_path,
                   {"event": "plan", "host": "a", "revision": "r1", "image": "img"},
                   {"event": "op", "host": "a", "name": "Compose project hermes up", "ok": True, "changed": True},
                   {"event": "op", "host": "a", "name": "Swap", "ok": True, "changed": False},
                   {"event": "plan", "host": "b", "revision": "r2", "image": "img"},
                   {"event": "op", "host": "b", "name": "Health gate: hermes", "ok": False, "changed": False},
                   {"event": "end", "host": "a", "failed": False},
                   {"event": "end", "host": "b", "failed": True})
    outcomes = results.read(path, ["a", "b", "c"], exit_code=1, interrupted=False, seconds=3)
    assert outcomes["a"].result == "success" and outcomes["a"].changed == ["Compose project hermes up"]
    assert outcomes["a"].revision == "r1"
    assert outcomes["b"].result == "failed" and "Health gate" in outcomes["b"].message
    assert outcomes["c"].result == "failed" and "exit 1" in outcomes["c"].message
    interrupted = results.read(path, ["a"], exit_code=130, interrupted=True, seconds=3)
    assert interrupted["a"].result == "interrupted"


def test_plan_errors_and_connect_errors_are_failures(tmp_path):
    path = _events(tmp_path, {"event": "planerror", "host": "a", "message": "the host runs 'ubuntu'"},
                   {"event": "end", "host": "b", "failed": True, "message": "could not connect: timeout"})
    outcomes = results.read(path, ["a", "b"], exit_code=1, interrupted=False, seconds=1)
    assert outcomes["a"].result == "failed" and "ubuntu" in outcomes["a"].message
    assert outcomes["b"].message == "could not connect: timeout"


def test_limit_is_split_out_of_pyinfra_arguments():
    from hermes_infra.release.remote import limit_from_args

    assert limit_from_args(["--limit", "web-*", "--diff", "--limit=db"]) == (["web-*", "db"], ["--diff"])


def test_up_locks_audits_and_releases_even_when_the_deploy_fails(tmp_path, monkeypatch):
    """`up` through the release session, with pyinfra and SSH replaced: one run connects, the
    lock is taken over its connections, the deploy runs only then, and the connections close last."""
    from hermes_infra import commands
    from hermes_infra.release.up import up
    from tests.unit.releasefakes import World

    lock_dir, audit_path = str(tmp_path / "lock"), str(tmp_path / "log" / "audit.jsonl")
    monkeypatch.setattr(lock, "LOCK_DIR", lock_dir)
    monkeypatch.setattr(audit, "AUDIT_PATH", audit_path)
    monkeypatch.setattr(commands, "validate", lambda target: {"web-1": None})
    world = World(lock_dir, code=1, events=[
        {"event": "plan", "host": "web-1", "revision": "r1", "image": "i"},
        {"event": "op", "host": "web-1", "name": "Health gate", "ok": False, "changed": False},
        {"event": "end", "host": "web-1", "failed": True}]).install(monkeypatch)
    remote = world.remotes["web-1"]
    code = up(commands.Target(inventory="web-1"), message="try v2")
    assert code == 1
    assert world.seen == [("connect", False), ("deploy", True), ("disconnect", False)]
    assert len(world.runs) == 1, "one pyinfra run (one connection per host) does everything"
    assert not world.locked()
    record = audit.tail(remote, 1, audit_path)[0]
    assert record["result"] == "failed" and record["revision"] == "r1" and record["command"] == "up"

    world.seen.clear()
    world.deploy_raises = KeyboardInterrupt
    assert up(commands.Target(inventory="web-1")) == 130
    assert world.seen == [("connect", False), ("deploy", True), ("stop", True), ("disconnect", False)]
    assert not world.locked()
    assert audit.tail(remote, 1, audit_path)[0]["result"] == "interrupted"

    # Someone else holds the lock: the deploy never runs; no audit record.
    world.deploy_raises = None
    remote.run(lock.acquire_command(lock.Holder(command="up", pid=1, machine="elsewhere"), lock_dir))
    world.seen.clear()
    records_before = len(audit.tail(remote, 50, audit_path))
    assert up(commands.Target(inventory="web-1")) == 3
    assert world.seen == [("connect", True), ("disconnect", True)]
    assert len(audit.tail(remote, 50, audit_path)) == records_before


ESCAPES = "\x1b]0;owned\x07\x1b[2J\u202e RESTORE OK\r\n"


def test_format_records_and_the_lock_holder_reach_the_terminal_without_escape_sequences():
    """F10: `hermes-infra audit` printed who, command, message, image and changed raw."""
    from hermes_infra.release import lock

    record = {key: ESCAPES for key in ("time", "who", "command", "result", "revision", "image", "message")}
    record["changed"] = [ESCAPES]
    record["seconds"] = ESCAPES
    text = audit.format_records("web1", [record])
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text and "\r" not in text
    assert text.count("\n") == 1 and "owned" in text
    state = lock.LockState(held=True, info={"who": ESCAPES, "pid": ESCAPES, "time": ESCAPES, "revision": ESCAPES,
                                            "message": ESCAPES, "heartbeat": None})
    described = state.describe()
    assert "\x1b" not in described and "\u202e" not in described and "\n" not in described


def test_an_unreachable_host_stops_the_whole_run_before_any_lock(tmp_path, monkeypatch):
    from hermes_infra import commands
    from hermes_infra.release.up import up
    from tests.unit.releasefakes import World

    monkeypatch.setattr(lock, "LOCK_DIR", str(tmp_path / "lock"))
    monkeypatch.setattr(audit, "AUDIT_PATH", str(tmp_path / "audit.jsonl"))
    monkeypatch.setattr(commands, "validate", lambda target: {})
    world = World(str(tmp_path / "lock"), hosts=["web-1", "web-2"], reachable=["web-1"]).install(monkeypatch)
    assert up(commands.Target(inventory="inventory.py")) == 3
    assert [step for step, _ in world.seen] == ["connect", "disconnect"]
    assert not any("mkdir" in command for remote in world.remotes.values() for command in remote.commands)


def test_limit_reaches_pyinfra_and_only_those_hosts_are_locked(tmp_path, monkeypatch):
    from hermes_infra import commands
    from hermes_infra.release import session
    from tests.unit.releasefakes import World

    lock_dir = str(tmp_path / "lock")
    monkeypatch.setattr(lock, "LOCK_DIR", lock_dir)
    monkeypatch.setattr(audit, "AUDIT_PATH", str(tmp_path / "audit.jsonl"))
    monkeypatch.setattr(commands, "validate", lambda target: {})
    world = World(lock_dir, hosts=["web-1", "web-2"],
                  events=[{"event": "end", "host": "web-2", "failed": False}]).install(monkeypatch)
    report = session.locked_deploy(commands.Target(inventory="inventory.py"), extra=["--diff"], limit=["web-2"])
    assert report.exit_code == 0 and list(report.outcomes) == ["web-2"]
    assert world.runs[0].extra == ["--diff", "--limit", "web-2"]
    assert not any("mkdir" in c for c in world.remotes["web-1"].commands), "a host outside the limit is not locked"
    assert any("mkdir" in c for c in world.remotes["web-2"].commands)
