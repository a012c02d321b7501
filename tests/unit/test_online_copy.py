"""The online backup's pieces (`plan/datatar.py`): the rule of what tar leaves out (against real
GNU tar), and the copy program run for real against a database another thread is writing."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import threading
import time

import pytest

from hermes_infra.plan import datatar

TREE = ["state.db", "state.db-wal", "state.db-shm", "response_store.db-journal", "gateway.pid", "gateway.lock",
        "cron/.tick.lock", "cron/jobs.json", "skills/x/uv.lock", "skills/x/a.db", "sub/cache/keep", "sub/x.pid",
        "cache/terminal/t", "backups/b.zip", "backups/old/state.db", "profiles/work/state.db",
        "profiles/work/gateway.pid", "profiles/work/cache/c", "profiles/work/cron/.tick.lock",
        "profiles/work/sub/deep/y.lock", "heartbeat", "gateway_heartbeat.json", "sub/heartbeat", "x-wal",
        "notes.sqlite-wal", "sessions/s1.json", ".env", "memories/MEMORY.md"]


def _tree(root):
    for name in TREE:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)
    names = set()
    for base, dirs, files in os.walk(root):
        names |= {os.path.relpath(os.path.join(base, n), root) for n in dirs + files}
    return names


def test_the_rule_keeps_state_and_leaves_out_live_and_derived_files():
    kept = {n for n in TREE if datatar.left_out(n) is None}
    assert kept == {"cron/jobs.json", "skills/x/uv.lock", "sub/cache/keep", "sub/x.pid", "profiles/work/sub/deep/y.lock",
                    "sub/heartbeat", "x-wal", "notes.sqlite-wal", "sessions/s1.json", ".env", "memories/MEMORY.md"}
    assert datatar.left_out("state.db") is datatar.ONLINE_COPY
    assert "write-ahead log" in datatar.left_out("profiles/work/state.db-wal").reason
    assert "upstream's own backups" in datatar.left_out("backups/old/state.db").reason
    assert all(rule.reason and rule.where in ("anywhere", "home") for rule in datatar.LEFT_OUT)


def test_gnu_tar_leaves_out_exactly_what_the_rule_names(tmp_path):
    names = _tree(tmp_path)
    listed = subprocess.run(f"tar {datatar.exclude_options()} -cf - . | tar -tf -", shell=True, cwd=tmp_path,
                            capture_output=True, text=True, check=True).stdout.split()
    from_tar = {n.rstrip("/")[2:] for n in listed if n != "./"}
    assert from_tar == {n for n in names if datatar.left_out(n) is None}


def _run_copy(src, out, env_user=()):
    return subprocess.run([*env_user, "/usr/bin/python3", "-I", "-S", "-c", datatar.copy_program(),
                           *datatar.copy_arguments(), str(src), str(out)], capture_output=True, text=True, timeout=60)


def test_the_copy_of_a_database_being_written_is_whole_and_consistent(tmp_path):
    """A writer thread commits batches of 100 rows (with a `total` row updated in the same
    transaction) while the program copies: the copy passes integrity_check, its row count is a
    whole number of batches and agrees with `total` (no half transaction), and the live -wal is
    not needed beside it."""
    src, out = tmp_path / "data", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    live = sqlite3.connect(src / "state.db")
    live.execute("PRAGMA journal_mode=WAL")
    live.execute("CREATE TABLE messages (n INTEGER, body TEXT)")
    live.execute("CREATE TABLE total (n INTEGER)")
    live.execute("INSERT INTO total VALUES (0)")
    live.commit()
    live.close()
    stop, batches = threading.Event(), []

    def write():
        db = sqlite3.connect(src / "state.db", timeout=30)
        db.execute("PRAGMA synchronous=OFF")  # no fsync per commit: a busy disk must not slow the test
        while not stop.is_set() and len(batches) < 1000:
            with db:
                db.executemany("INSERT INTO messages VALUES (?, ?)", [(i, "x" * 200) for i in range(100)])
                db.execute("UPDATE total SET n = n + 100")
            batches.append(1)
        db.close()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        deadline = time.monotonic() + 30
        while len(batches) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        done = _run_copy(src, out)
        written_before_end = len(batches)
    finally:
        stop.set()
        writer.join()
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    summary = report["databases"]["state.db"]
    assert summary["integrity"] == "ok"
    rows = summary["tables"]["messages"]
    assert rows % 100 == 0 and 5 * 100 <= rows <= written_before_end * 100
    assert sorted(p.name for p in out.iterdir()) == ["state.db"]  # one self-contained file
    copy = sqlite3.connect(out / "state.db")
    assert copy.execute("SELECT n FROM total").fetchone() == (rows,)
    assert copy.execute("PRAGMA journal_mode").fetchone() == ("delete",)


def test_the_copy_walks_without_links_skips_left_out_dirs_and_keeps_odd_db_files(tmp_path):
    src, out = tmp_path / "data", tmp_path / "out"
    for name in ("profiles/work", "backups", "cache", "elsewhere"):
        (src / name).mkdir(parents=True)
    out.mkdir()
    for name in ("state.db", "profiles/work/response_store.db", "backups/old.db", "cache/c.db"):
        db = sqlite3.connect(src / name)
        db.execute("CREATE TABLE t (x)")
        db.commit()
        db.close()
    (src / "notes.db").write_text("not a database")
    (src / "link.db").symlink_to(src / "state.db")
    (src / "linkdir").symlink_to(src / "elsewhere")
    sqlite3.connect(src / "elsewhere" / "far.db").execute("CREATE TABLE t (x)").connection.commit()
    done = _run_copy(src, out)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report["databases"]) == {"state.db", "profiles/work/response_store.db", "elsewhere/far.db"}
    assert report["databases"]["state.db"] == {"integrity": "ok", "tables": {"t": 0}, "bytes": 8192}
    assert report["copied_as_files"] == ["notes.db"] and (out / "notes.db").read_text() == "not a database"
    assert not (out / "link.db").exists() and not (out / "linkdir").exists() and not (out / "backups").exists()


def test_a_copy_failing_its_integrity_check_exits_with_its_own_code(tmp_path):
    from tests.unit.copyfakes import corrupt_index, make_state_db
    src, out = tmp_path / "data", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    make_state_db(src / "state.db")
    corrupt_index(src / "state.db")
    done = _run_copy(src, out)
    assert done.returncode == datatar.INTEGRITY_FAILED_RC
    assert "missing from index" in json.loads(done.stdout)["databases"]["state.db"]["integrity"]


def test_a_copy_that_cannot_read_a_database_fails_and_says_why_escaped(tmp_path):
    src, out = tmp_path / "data", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    (src / "state.db").write_bytes(b"SQLite format 3\x00" + b"\x1b]0;x\x07" * 20)
    done = _run_copy(src, out)
    assert done.returncode == 1 and "the online copy failed" in done.stderr and "\x1b" not in done.stderr


def test_the_copy_container_is_confined_and_runs_as_the_owner():
    command = datatar.copy_command("/root/.hermes", 10000, 10000, "hermes", '"$w"/db', '"$hi_img"')
    for flag in ("--rm", "--user 10000:10000", "--network none", "--read-only", "--cap-drop ALL",
                 "--security-opt no-new-privileges", "--pull never", "--entrypoint python3",
                 "--mount type=bind,src=/root/.hermes,dst=/opt/data ", "--mount type=bind,src=\"$w\"/db,dst=/out",
                 '"$hi_img" -I -S -c '):
        assert flag in command, flag
    assert command.startswith("timeout ")


# --- the walk the copy and the SQLite probe share -----------------------------------------------

def _databases(src, rules=(), unreadable=lambda rel, error: None):
    return [name for name, _ in datatar.databases_under(str(src), [[r.pattern, r.where] for r in rules], unreadable)]


def test_the_shared_walk_takes_regular_db_files_in_name_order_and_nothing_a_rule_names(tmp_path):
    for name in ("b/z.db", "a.db", "cache/c.db", "b/a.db", "b/notes.txt", "c.db-wal"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    (tmp_path / "link.db").symlink_to(tmp_path / "a.db")
    (tmp_path / "linkdir").symlink_to(tmp_path / "b")
    assert _databases(tmp_path, datatar.LEFT_OUT) == ["a.db", "b/a.db", "b/z.db"]
    assert _databases(tmp_path) == ["a.db", "b/a.db", "b/z.db", "cache/c.db"]


def test_a_file_gone_between_the_listing_and_its_lstat_is_passed_over(tmp_path, monkeypatch):
    """A live database's -shm goes when its last connection closes: not a reason to fail a backup."""
    for name in ("state.db", "state.db-shm", "z.db"):
        (tmp_path / name).write_text(name)
    listed = list(os.scandir(tmp_path))
    (tmp_path / "state.db-shm").unlink()
    monkeypatch.setattr(datatar.os, "scandir", lambda path: iter(listed))
    assert _databases(tmp_path) == ["state.db", "z.db"]


def test_a_directory_the_walk_cannot_list_goes_to_the_callers_rule(tmp_path, monkeypatch):
    (tmp_path / "locked").mkdir()
    (tmp_path / "z.db").write_text("z")
    scandir = os.scandir

    def refusing(path):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(datatar.os, "scandir", refusing)
    seen = []
    assert _databases(tmp_path, unreadable=lambda rel, error: seen.append((rel, type(error).__name__))) == ["z.db"]
    assert seen == [("locked", "PermissionError")]


def _as_nobody(tmp_path):
    """A data dir of uid 65534 under a dir it can search (root's pytest dir is 0700)."""
    import shutil
    import tempfile

    top = tempfile.mkdtemp(prefix="hermes-walk-")
    os.chmod(top, 0o755)
    src, out = os.path.join(top, "data"), os.path.join(top, "out")
    for path in (src, out, os.path.join(src, "locked")):
        os.mkdir(path)
        os.chown(path, 65534, 65534)
    for name in ("state.db", "locked/inner.db"):
        db = sqlite3.connect(os.path.join(src, name))
        db.execute("CREATE TABLE t (x)")
        db.commit()
        db.close()
        os.chown(os.path.join(src, name), 65534, 65534)
    os.chmod(os.path.join(src, "locked"), 0)
    return top, src, out, shutil.rmtree


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/setpriv"), reason="needs root and setpriv")
def test_an_unreadable_directory_fails_the_copy_but_not_the_probe(tmp_path):
    from hermes_infra.plan import sqlitecheck

    top, src, out, remove = _as_nobody(tmp_path)
    nobody = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
    try:
        copied = _run_copy(src, out, nobody)
        rules = json.dumps([[r.pattern, r.where] for r in datatar.LEFT_OUT])
        probed = subprocess.run([*nobody, "/usr/bin/python3", "-I", "-S", "-c", sqlitecheck.probe_program(), "30", rules,
                                 src], capture_output=True, text=True, timeout=60)
    finally:
        os.chmod(os.path.join(src, "locked"), 0o700)
        remove(top)
    assert copied.returncode == 0, copied.stderr
    report = json.loads(copied.stdout)
    # The copy names it (tar then fails on it, and the archive with it); the probe passes it over.
    assert report["unreadable"] == ["locked"] and set(report["databases"]) == {"state.db"}
    assert probed.returncode == 0, probed.stderr
    assert set(json.loads(probed.stdout)["databases"]) == {"state.db"}
