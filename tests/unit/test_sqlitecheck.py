"""The SQLite probe (plan/sqlitecheck.py): the library version, each database's journal mode and
integrity, run for real on a tmp data dir; its report parsed as data; `status --databases` and
the control HI-DATA-005."""
from __future__ import annotations

import base64
import datetime as dt
import json
import sqlite3
import subprocess

import pytest

from hermes_infra.daytwo import status
from hermes_infra.plan import datatar, sqlitecheck
from tests.unit.daytwo_fakes import host
from tests.unit.test_checks_controls import FakeHost, Out, context, gateway_record, outcome, writes_in


def _run_probe(directory) -> dict:
    rules = json.dumps([[r.pattern, r.where] for r in datatar.LEFT_OUT])
    done = subprocess.run(["python3", "-I", "-S", "-c", sqlitecheck.probe_program(), "30", rules, str(directory)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return sqlitecheck.parse_report(done.stdout)


def test_the_probe_reads_modes_and_integrity_and_skips_what_backups_leave_out(tmp_path):
    (tmp_path / "profiles" / "work").mkdir(parents=True)
    (tmp_path / "cache").mkdir()
    wal = sqlite3.connect(tmp_path / "state.db")
    wal.execute("PRAGMA journal_mode=WAL")
    wal.execute("create table t (x)")
    wal.commit()
    other = sqlite3.connect(tmp_path / "profiles" / "work" / "response_store.db")
    other.execute("create table t (x)")
    other.commit()
    (tmp_path / "junk.db").write_text("not sqlite")
    sqlite3.connect(tmp_path / "cache" / "skipped.db").execute("create table t (x)")
    (tmp_path / "link.db").symlink_to(tmp_path / "state.db")
    report = _run_probe(tmp_path)
    assert report["sqlite_version"] == sqlite3.sqlite_version
    assert report["databases"] == {
        "junk.db": {"journal_mode": None, "integrity": "not a SQLite database"},
        "profiles/work/response_store.db": {"journal_mode": "delete", "integrity": "ok"},
        "state.db": {"journal_mode": "wal", "integrity": "ok"},
    }, "a link is not followed, cache/ is left out"
    wal.close()
    other.close()


def test_a_damaged_database_is_reported(tmp_path):
    db = sqlite3.connect(tmp_path / "state.db")
    db.execute("create table t (x text)")
    db.executemany("insert into t values (?)", [("x" * 500,)] * 200)
    db.execute("create index i on t (x)")
    db.commit()
    db.close()
    raw = bytearray((tmp_path / "state.db").read_bytes())
    raw[4096 * 3 + 200: 4096 * 3 + 900] = b"\xff" * 700
    (tmp_path / "state.db").write_bytes(bytes(raw))
    report = _run_probe(tmp_path)
    assert report["databases"]["state.db"]["integrity"] != "ok"
    assert any("integrity_check" in why for _, why in sqlitecheck.problems(report))


@pytest.mark.parametrize("version, mode, flagged", [("3.46.1", "wal", True), ("3.51.2", "wal", True),
                                                    ("3.51.3", "wal", False), ("3.53.4", "wal", False),
                                                    ("3.46.1", "delete", False), ("3.46.1", "truncate", False)])
def test_wal_is_flagged_only_on_a_library_with_the_wal_reset_bug(version, mode, flagged):
    report = {"sqlite_version": version, "databases": {"state.db": {"journal_mode": mode, "integrity": "ok"}}}
    assert bool(sqlitecheck.problems(report)) is flagged


@pytest.mark.parametrize("text", ["", "null", "[]", '{"sqlite_version": "3.46.1; rm", "databases": {}}',
                                  '{"sqlite_version": 3, "databases": {}}', '{"sqlite_version": "3.46.1"}', "{bad"])
def test_a_report_that_is_not_the_probes_is_refused(text):
    assert sqlitecheck.parse_report(text) is None


def test_the_probe_command_runs_as_the_owner_confined_and_reads_only():
    command = sqlitecheck.probe_command("/root/.hermes", 10000, 10000, "hermes", "hermes", "img:1")
    assert "--user 10000:10000 --network none --read-only --cap-drop ALL" in command
    assert "--security-opt no-new-privileges" in command and "--entrypoint python3" in command
    assert "[ ! -L /root/.hermes ]" in command and "--mount type=bind,src=/out" not in command
    assert "mode=ro" in sqlitecheck.probe_program()
    assert not writes_in(sqlitecheck.exec_command("hermes", 10000, 10000))


def _status(report_json: str):
    section = base64.b64encode(report_json.encode()).decode()
    found = status.parse_status(host(), f"@@hermes-infra-status sqlite hermes\n{section}\n")
    return found, status.render_text(status.StatusReport([found], dt.datetime.now(), 0.1))


def test_status_databases_shows_the_library_modes_and_integrity_and_flags_wal_on_346():
    command = status.status_command(host().settings, databases=True)
    assert "@@hermes-infra-status sqlite hermes" in command and "docker run" in command
    assert "docker run" not in status.status_command(host().settings), "plain status stays read-only"
    report = {"sqlite_version": "3.46.1", "truncated": False,
              "databases": {"state.db": {"journal_mode": "wal", "integrity": "ok"},
                            "evil\x1b[2J.db": {"journal_mode": "delete", "integrity": "ok"}}}
    found, text = _status(json.dumps(report))
    assert "hermes sqlite 3.46.1 (has the WAL-reset bug, fixed in 3.51.3): " in text
    assert "state.db wal ok" in text and "\x1b" not in text
    [item] = [a for a in status.attention(found) if "SQLite" in a.finding]
    assert item.level == "warning" and "HI-DATA-005" in item.fix
    report["databases"]["state.db"]["integrity"] = "*** in database main ***"
    found, _ = _status(json.dumps(report))
    assert any(a.level == "failure" and "integrity" in a.finding for a in status.attention(found))


def _control(stdout: str, running: bool = True):
    record = gateway_record()
    record["State"]["Running"] = running
    fake = FakeHost({"docker exec -i -u 10000:10000 hermes python3 -I -S -c": Out(0, stdout)})
    return outcome("HI-DATA-005", context(record=record, host=fake)), fake


def test_the_control_fails_wal_on_a_vulnerable_library_and_a_damaged_database():
    ok = json.dumps({"sqlite_version": "3.53.4", "databases": {"state.db": {"journal_mode": "wal",
                                                                             "integrity": "ok"}}})
    result, fake = _control(ok)
    assert result.status == "passed" and "SQLite 3.53.4, 1 databases (wal), integrity ok" in result.message
    assert fake.commands[0].startswith("timeout -k 5 90 docker exec -i -u 10000:10000 hermes ")
    vulnerable = ok.replace("3.53.4", "3.46.1")
    result, _ = _control(vulnerable)
    assert result.status == "failed" and "WAL mode on SQLite 3.46.1" in result.message
    delete = vulnerable.replace('"wal"', '"delete"')
    assert _control(delete)[0].status == "passed", "DELETE journal mode is not touched by the bug"
    damaged = ok.replace('"integrity": "ok"', '"integrity": "row 3 missing from index i"')
    result, _ = _control(damaged)
    assert result.status == "failed" and "integrity_check: row 3 missing from index i" in result.message
    assert _control("garbage")[0].status == "error"
    assert _control(ok, running=False)[0].status == "skipped"


@pytest.mark.parametrize(("count", "truncated"), [(2, False), (3, True)])
def test_the_probe_stops_at_its_cap_and_says_so(tmp_path, monkeypatch, count, truncated):
    monkeypatch.setattr(sqlitecheck, "MAX_DATABASES", 2)
    for index in range(count):
        sqlite3.connect(tmp_path / f"{index}.db").execute("create table t (x)").connection.commit()
    report = _run_probe(tmp_path)
    assert sorted(report["databases"]) == ["0.db", "1.db"] and report["truncated"] is truncated
