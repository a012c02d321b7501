"""backup/restore: archive checks, manifests, the commands sent, and the refusals."""
from __future__ import annotations

import hashlib
import io
import sqlite3
import stat
import tarfile
from pathlib import Path

import pytest

from hermes_infra.daytwo import backup
from hermes_infra.daytwo.remote import DayTwoError, RunResult

from tests.unit.copyfakes import CAN_RUN
from tests.unit.daytwo_fakes import FakeRemote, host

MARKER = __import__("re").compile(r"@@hermes-infra-owners-[0-9a-f]{32}")


def verify_answer(command: str, sums: dict[str, str], owners=()) -> RunResult:
    """What `verify_command` prints: NUL-terminated sha256sum -z records, the marker, owners."""
    marker = MARKER.search(command).group(0).encode()
    records = [f"{digest}  ./{name}".encode() for name, digest in sums.items()]
    return RunResult(0, b"".join(r + b"\0" for r in [*records, marker, *(o.encode() for o in owners)]), "")


def uploaded_sha(remote) -> str:
    return hashlib.sha256(remote.stdins[-1]).hexdigest() + "\n"


def restore_remote(sums: dict[str, str], owners=()) -> FakeRemote:
    """A host answering restore's steps: an empty data dir, the upload's checksum, the verify."""
    def respond(command):
        if "datadir=" in command:
            return "datadir=empty compose=present container=false\n"
        if "install -d -m 0700 /var/lib/hermes-infra/stage" in command:
            return uploaded_sha(remote)
        if "sha256sum -z" in command:
            return verify_answer(command, sums, owners)
        return ""

    remote = FakeRemote(respond)
    return remote


def make_data_tar(tmp_path: Path, extra=None) -> Path:
    """A data dir archive like `tar -c .` makes, with a state.db holding rows."""
    src = tmp_path / "src"
    (src / "platforms" / "pairing").mkdir(parents=True)
    (src / ".env").write_text("API_SERVER_KEY=k" * 3 + "\n")
    (src / "platforms" / "pairing" / "weixin-approved.json").write_text('{"u1": {"user_name": "a"}}')
    db = sqlite3.connect(src / "state.db")
    db.execute("create table sessions (id text)")
    db.executemany("insert into sessions values (?)", [("a",), ("b",), ("c",)])
    db.commit()
    db.close()
    out = tmp_path / "data.tar.gz"
    with tarfile.open(out, "w:gz") as tar:
        tar.add(src, arcname=".")
        for member, data in (extra or []):
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
    return out


def test_inventory_hashes_files_and_counts_sqlite_rows(tmp_path):
    found = backup.inventory_of(make_data_tar(tmp_path))
    assert not found.problems
    assert set(found.files) == {".env", "platforms/pairing/weixin-approved.json", "state.db"}
    assert found.files[".env"]["sha256"] == hashlib.sha256(b"API_SERVER_KEY=k" * 3 + b"\n").hexdigest()
    assert found.sqlite["state.db"] == {"integrity": "ok", "tables": {"sessions": 3}}
    assert "platforms/pairing" in found.dirs


@pytest.mark.parametrize("name,kind,problem", [
    ("../escape", tarfile.REGTYPE, "climbs out"),
    ("/etc/passwd", tarfile.REGTYPE, "absolute"),
    ("hard", tarfile.LNKTYPE, "hard link"),
    ("dev", tarfile.CHRTYPE, "device"),
])
def test_unsafe_members_are_reported(tmp_path, name, kind, problem):
    member = tarfile.TarInfo(name)
    member.type = kind
    member.linkname = "nowhere" if kind == tarfile.LNKTYPE else ""
    data = b"" if kind == tarfile.REGTYPE else None
    found = backup.inventory_of(make_data_tar(tmp_path, [(member, data)]))
    assert any(problem in p for p in found.problems), found.problems


def test_members_under_a_symlink_are_refused(tmp_path):
    link = tarfile.TarInfo("./cfg")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc"
    inner = tarfile.TarInfo("./cfg/passwd")
    inner.size = 1
    found = backup.inventory_of(make_data_tar(tmp_path, [(link, None), (inner, b"x")]))
    assert found.links == {"cfg": "/etc"}
    assert any("under a symbolic link" in p for p in found.problems)


def test_backup_file_is_0600_and_checksummed(tmp_path):
    data = make_data_tar(tmp_path)
    out = backup.prepare_out_dir(tmp_path / "out")
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    gateway = host().settings.gateways[0]
    manifest = {"schema": backup.SCHEMA, "created": "2026-11-20T10:00:00Z", "profile": "hermes",
                "data_sha256": hashlib.sha256(data.read_bytes()).hexdigest(), "files": {}}
    path = backup.write_backup(out, "web/1", gateway, data, manifest)
    assert path.name == "web_1_hermes_20261120T100000Z.hermes-backup.tar"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    read, payload = backup.read_backup(path)
    assert read["profile"] == "hermes" and payload == data.read_bytes()
    # a flipped byte in the data is caught
    raw = bytearray(path.read_bytes())
    index = raw.index(payload[:64]) + 40
    raw[index] ^= 0xFF
    damaged = tmp_path / "damaged.tar"
    damaged.write_bytes(bytes(raw))
    with pytest.raises(DayTwoError, match="checksum"):
        backup.read_backup(damaged)


def _records(remote) -> list[dict]:
    """The run records `backup` wrote on the host (manual_record_path), decoded."""
    import json
    import shlex
    found = []
    for command in remote.commands:
        if "/var/backups/hermes-infra/manual/hermes.last.json" in command:
            found.append(json.loads(shlex.split(command.split("printf '%s\\n' ", 1)[1])[0]))
    return found


def test_backup_runs_online_as_the_owner_and_records_the_result(tmp_path):
    data = make_data_tar(tmp_path).read_bytes()

    def respond(command):
        if "docker run --rm --name hermes-infra-dbcopy-hermes" in command:
            return RunResult(0, data, "")
        return ""

    remote = FakeRemote(respond)
    made = backup.backup_gateway(host(), host().settings.gateways[0], remote, backup.prepare_out_dir(tmp_path / "o"),
                                 say=lambda m: None)
    archive = remote.commands[0]
    # Online: the gateway is neither stopped nor started (it was for 21-26 s before).
    assert not any(" stop -t" in c or " start hermes" in c for c in remote.commands)
    assert "setpriv --reuid=10000 --regid=10000 --clear-groups -- tar" in archive
    assert "--user 10000:10000 --network none --read-only --cap-drop ALL" in archive
    assert "cd -P -- /root/.hermes" in archive and "[ ! -L /root/.hermes ]" in archive
    assert "w=$(mktemp -d /var/lib/hermes-infra/stage/backup.XXXXXX)" in archive and 'rm -rf -- "$w"' in archive
    assert "-h" not in archive.split("tar --sparse", 1)[1].split(" -cf")[0].split()  # never dereference
    assert "audit.jsonl" in remote.commands[-1]
    assert made.manifest["sqlite"]["state.db"] == {"integrity": "ok", "tables": {"sessions": 3}}
    assert made.manifest["consistency"].startswith("online") and made.manifest["downtime_seconds"] == 0
    assert "*.db-wal" in made.manifest["left_out"]
    [record] = _records(remote)
    assert record["result"] == "success" and record["kind"] == "manual" and record["archive"] == made.path.name
    assert record["bytes"] == len(data) and record["time"].endswith("Z")
    assert stat.S_IMODE(made.path.stat().st_mode) == 0o600
    assert [p.name for p in made.path.parent.iterdir()] == [made.path.name], "temp files left behind"


@pytest.mark.parametrize("rc,reason", [(22, "tar failed"), (20, "online copy of the SQLite databases failed"),
                                       (3, "missing"), (24, "gzip failed")])
def test_a_failed_step_is_a_failed_backup_recorded_as_one(tmp_path, rc, reason):
    def respond(command):
        if "docker run --rm" in command:
            return RunResult(rc, b"partial bytes", "tar: .: Cannot open: Permission denied\n")
        return ""

    remote = FakeRemote(respond)
    with pytest.raises(DayTwoError, match=f"archiving /root/.hermes failed.*{reason}"):
        backup.backup_gateway(host(), host().settings.gateways[0], remote, backup.prepare_out_dir(tmp_path / "o"),
                              say=lambda m: None)
    assert not list((tmp_path / "o").iterdir())
    [record] = _records(remote)
    assert record["result"] == "failed" and reason in record["message"] and record["bytes"] == 0
    assert "Permission denied" not in record["message"]  # the host's words never become the reason


def test_a_copy_failing_its_integrity_check_is_a_failed_backup(tmp_path):
    from tests.unit.copyfakes import corrupt_index
    src = tmp_path / "src"
    src.mkdir()
    db = sqlite3.connect(src / "state.db")
    db.execute("CREATE TABLE sessions (id TEXT)")
    db.executemany("INSERT INTO sessions VALUES (?)", [("s0",), ("s1",), ("s2",)])
    db.commit()
    db.close()
    corrupt_index(src / "state.db")
    data = tmp_path / "d.tar.gz"
    with tarfile.open(data, "w:gz") as tar:
        tar.add(src, arcname=".")
    remote = FakeRemote(lambda c: RunResult(21, data.read_bytes(), "") if "docker run" in c else "")
    with pytest.raises(DayTwoError, match="integrity_check.*not a good backup"):
        backup.backup_gateway(host(), host().settings.gateways[0], remote, backup.prepare_out_dir(tmp_path / "o"),
                              say=lambda m: None)
    [kept] = list((tmp_path / "o").iterdir())
    [record] = _records(remote)
    assert record["result"] == "failed" and "integrity_check" in record["message"] and record["archive"] == kept.name
    assert '"result": "failed"' in next(c for c in remote.commands if "audit.jsonl" in c)


def saved_backup(tmp_path, extra=None) -> Path:
    data = make_data_tar(tmp_path, extra)
    found = backup.inventory_of(data)
    manifest = {"schema": backup.SCHEMA, "created": "2026-11-20T10:00:00Z", "host": "old", "profile": "hermes",
                "data_sha256": hashlib.sha256(data.read_bytes()).hexdigest(), "files": found.files,
                "problems": found.problems}
    return backup.write_backup(backup.prepare_out_dir(tmp_path / "b"), "old", host().settings.gateways[0], data,
                               manifest)


def test_restore_refuses_a_data_dir_with_state_without_force(tmp_path):
    archive = saved_backup(tmp_path)
    remote = FakeRemote(lambda c: "datadir=full compose=present container=true\n" if "datadir=" in c else "")
    with pytest.raises(DayTwoError, match="already holds a gateway's state.*--force"):
        backup.restore(host(), archive, remote_for=lambda h: remote, say=lambda m: None)
    assert len(remote.commands) == 1, "something was changed before the refusal"


def test_restore_refuses_an_unsafe_archive_before_connecting(tmp_path):
    member = tarfile.TarInfo("../../etc/cron.d/x")
    member.size = 1
    archive = saved_backup(tmp_path, [(member, b"x")])
    with pytest.raises(DayTwoError, match="refusing to restore"):
        backup.restore(host(), archive, remote_for=lambda h: pytest.fail("connected"), say=lambda m: None)


def test_restore_onto_a_new_host_deploys_unpacks_as_owner_verifies_and_gates(tmp_path):
    archive = saved_backup(tmp_path)
    manifest, data = backup.read_backup(archive)
    sums = {name: info["sha256"] for name, info in manifest["files"].items()}
    deployed = []

    def respond(command):
        if "datadir=" in command:
            return "datadir=missing compose=missing container=missing\n"
        if command.startswith("umask 077; install -d -m 0700 /var/lib/hermes-infra/stage"):
            return uploaded_sha(remote)
        if "sha256sum -z --" in command:
            return verify_answer(command, sums)
        return ""

    remote = FakeRemote(respond)
    target = host()
    target.target = object()
    result = backup.restore(target, archive, remote_for=lambda h: remote, say=lambda m: None,
                            deploy=lambda t: deployed.append(t) or 0)
    assert deployed and result.deployed and result.moved_aside is None
    # what travels is the archive re-packed from what Python checked, not the file's own bytes
    with tarfile.open(fileobj=io.BytesIO(remote.stdins[0]), mode="r:gz") as uploaded, \
            tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as original:
        assert sorted(m.name for m in uploaded) == sorted(backup._member_name(m.name) for m in original
                                                          if backup._member_name(m.name))
    unpack = next(c for c in remote.commands if "-xzf -" in c)
    assert "install -d -o 10000 -g 10000 -m 0700 -- /root/.hermes" in unpack
    assert "setpriv --reuid=10000 --regid=10000 --clear-groups -- tar --no-same-owner" in unpack
    assert unpack.index("mv -T") < unpack.index("install -d")
    order = [next(i for i, c in enumerate(remote.commands) if marker in c)
             for marker in (" stop -t", "-xzf -", "sha256sum -z --", " start hermes")]
    assert order == sorted(order)
    assert any(c.startswith("rm -rf -- /root/.hermes.pre-restore-") for c in remote.commands)


def test_restore_stops_when_a_file_differs(tmp_path):
    archive = saved_backup(tmp_path)

    remote = restore_remote({".env": "0" * 64}, ["./state.db"])
    with pytest.raises(DayTwoError, match="differ from the backup"):
        backup.restore(host(), archive, remote_for=lambda h: remote, say=lambda m: None)
    assert not any(" start hermes" in c for c in remote.commands)


def test_compare_files_reads_any_name_and_never_shows_it_raw():
    """F9: names with `@@owners`, a newline, a backslash or a CR broke the parse, and escape
    sequences in them reached the terminal."""
    names = ["a\nb", "c\\d\re", "x@@owners\x1b]0;pwned\x07\x1b[2JRESTORE OK", "@@owners"]
    manifest = {"files": {name: {"sha256": "1" * 64} for name in names}}
    marker = "@@hermes-infra-owners-" + "ab" * 16
    out = b"".join(f"{'1' * 64}  ./{name}".encode() + b"\0" for name in names) + marker.encode() + b"\0"
    assert backup.compare_files(manifest, out, marker) == []
    changed = out.replace(b"1" * 64 + b"  ./x@@", b"2" * 64 + b"  ./x@@") + b"./\x1b[31mroot-owned\0"
    problems = backup.compare_files(manifest, changed, marker)
    assert len(problems) == 2 and not any("\x1b" in p or "\x07" in p for p in problems)
    assert "sha256 differs" in problems[0] and "not owned" in problems[1]
    assert backup.compare_files(manifest, out.split(marker.encode())[0], marker) == [
        "the check of the restored files did not finish"]


def _gateway_at(data: Path):
    from hermes_infra.settings.schema import GatewaySettings

    gateway = host().settings.gateways[0]
    return gateway.model_copy(update={"data_dir": str(data)}) if isinstance(gateway, GatewaySettings) else gateway


def _run_archive(tmp_path, gateway):
    import os
    import subprocess

    from tests.unit.copyfakes import install_fake_docker
    install_fake_docker(tmp_path / "bin")
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin", "SANDBOX": str(tmp_path)}
    return subprocess.run(["sh", "-c", backup.archive_command(gateway, "img:1", stage=str(tmp_path / "stage"))],
                          capture_output=True, env=env)


@pytest.mark.skipif(not CAN_RUN, reason="runs tar and the copy as uid 10000 (setpriv, a mount namespace)")
def test_archive_command_stores_holes_as_holes_and_refuses_a_huge_apparent_size(tmp_path, monkeypatch):
    """F6: `truncate -s 16T x` made tar read every zero with the gateway stopped."""
    import subprocess

    from hermes_infra.plan import datatar

    data = tmp_path / "data"
    data.mkdir()
    with open(data / "sparse", "wb") as handle:
        handle.truncate(64 << 20)
    subprocess.run(["chown", "-R", "10000:10000", str(data)], check=True)
    gateway = _gateway_at(data)
    done = _run_archive(tmp_path, gateway)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout) < 16 << 10  # about 64 KB of gzip when every zero is read
    text = backup.archive_command(gateway, "img:1")
    assert "--sparse --one-file-system" in text and "timeout -k 30" in text
    monkeypatch.setattr(datatar, "MAX_APPARENT_BYTES", 32 << 20)
    done = _run_archive(tmp_path, gateway)
    assert done.returncode == datatar.TOO_LARGE_RC and done.stdout == b""
    assert b"over the limit of 33554432 bytes" in done.stderr
    assert list((tmp_path / "stage").iterdir()) == [], "the work dir is removed"


@pytest.mark.skipif(not CAN_RUN, reason="runs tar and the copy as uid 10000 (setpriv, a mount namespace)")
def test_archive_command_holds_the_database_copies_in_place_of_the_live_files(tmp_path):
    import subprocess

    from tests.unit.copyfakes import make_state_db
    data = tmp_path / "data"
    (data / "cache").mkdir(parents=True)
    (data / "cache" / "tmp").write_text("x")
    (data / "gateway.pid").write_text("7")
    make_state_db(data / "state.db", rows=5)
    subprocess.run(["chown", "-R", "10000:10000", str(data)], check=True)
    done = _run_archive(tmp_path, _gateway_at(data))
    assert done.returncode == 0, done.stderr
    out = tmp_path / "a.tar.gz"
    out.write_bytes(done.stdout)
    found = backup.inventory_of(out)
    assert set(found.files) == {"state.db"} and found.sqlite["state.db"] == {"integrity": "ok", "tables": {"sessions": 5}}
    assert found.files["state.db"]["mode"] == "0644" and not found.problems


def test_a_lying_manifest_reaches_neither_the_terminal_nor_the_audit_log_raw(tmp_path):
    """F10: manifest host, profile and created went raw into `say` and the host's audit log."""
    data = make_data_tar(tmp_path)
    found = backup.inventory_of(data)
    hostile = "\x1b]0;owned\x07\x1b[2J\u202eRESTORE OK"
    manifest = {"schema": backup.SCHEMA, "created": hostile, "host": hostile, "profile": "hermes",
                "data_sha256": hashlib.sha256(data.read_bytes()).hexdigest(), "files": found.files,
                "problems": found.problems}
    archive = backup.write_backup(backup.prepare_out_dir(tmp_path / "b"), "old", host().settings.gateways[0], data,
                                  {**manifest, "created": "2026-11-20T10:00:00Z"})
    # the same archive with the hostile manifest (a backup file can be edited by whoever holds it)
    with tarfile.open(archive) as outer:
        payload = outer.extractfile(backup.DATA).read()
    lying = tmp_path / "lying.hermes-backup.tar"
    with tarfile.open(lying, "w:", format=tarfile.PAX_FORMAT) as outer:
        for name, body in ((backup.MANIFEST, __import__("json").dumps(manifest).encode()), (backup.DATA, payload)):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            outer.addfile(info, io.BytesIO(body))
    sums = {name: info["sha256"] for name, info in found.files.items()}

    said = []
    remote = restore_remote(sums)
    backup.restore(host(), lying, remote_for=lambda h: remote, say=said.append)
    shown = "\n".join(said) + "\n".join(remote.commands)
    assert "restored" in said[-1] and "\x1b" not in shown and "\u202e" not in shown and "\x07" not in shown


# --- F8: the host's GNU tar must see exactly the members Python checked -----------------------

def _block(info: tarfile.TarInfo, payload: bytes = b"") -> bytes:
    info.size = len(payload)
    pad = (-len(payload)) % tarfile.BLOCKSIZE
    return info.tobuf(tarfile.USTAR_FORMAT) + payload + b"\0" * pad


def _raw_tar(*blocks: bytes) -> bytes:
    import gzip
    return gzip.compress(b"".join(blocks) + b"\0" * tarfile.BLOCKSIZE * 2)


def _file(name: str, payload: bytes = b"hello") -> bytes:
    return _block(tarfile.TarInfo(name), payload)


def _gnu_tar_names(data: bytes) -> list[str]:
    import subprocess
    done = subprocess.run(["tar", "-tzf", "-"], input=data, capture_output=True)
    return sorted(n.rstrip("/").removeprefix("./") for n in done.stdout.decode().splitlines())


def _restore_uploads(tmp_path: Path, data_tar: bytes, sums=None) -> tuple[list[bytes], Exception | None]:
    """Restore a scheduled `.tar.gz` holding `data_tar`; what was uploaded, and the refusal."""
    archive = tmp_path / "hermes_20261120T030000Z.tar.gz"
    archive.write_bytes(data_tar)
    sums = sums or {}

    remote = restore_remote(sums)
    try:
        backup.restore(host(), archive, remote_for=lambda h: remote, say=lambda m: None)
    except DayTwoError as error:
        return remote.stdins, error
    return remote.stdins, None


def test_a_damaged_header_in_the_middle_is_refused_before_the_host_is_touched(tmp_path):
    """Differential (a): Python stopped at a bad checksum and saw only ok.txt; GNU tar skipped
    it and unpacked a hard link, a symlink and a setuid file the check never saw."""
    bad = bytearray(_file("hidden.txt"))
    bad[148:156] = b"0000000\0"  # a wrong checksum
    link = tarfile.TarInfo("abs")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc"
    data = _raw_tar(_file("ok.txt"), bytes(bad), _block(link), _file("after.txt"))
    found = backup.inventory_of(_write(tmp_path, data))
    assert list(found.files) == ["ok.txt"] and any("damaged header" in p for p in found.problems)
    uploads, error = _restore_uploads(tmp_path, data)
    assert uploads == [] and error is not None and "damaged header" in str(error)


def test_a_gnu_longname_with_a_pax_path_reaches_the_host_as_python_read_it(tmp_path):
    """Differential (b): Python saw the longname, GNU tar the PAX `path=../x-name`."""
    long_name = tarfile.TarInfo("././@LongLink")
    long_name.type = tarfile.GNUTYPE_LONGNAME
    record = b"path=../x-name\n"
    record = f"{len(record) + 3} ".encode() + record
    pax = tarfile.TarInfo("PaxHeaders/x")
    pax.type = tarfile.XHDTYPE
    data = _raw_tar(_file("ok.txt"), _block(long_name, b"L-name\0"), _block(pax, record), _file("short"))
    found = backup.inventory_of(_write(tmp_path, data))
    python_names = sorted(found.files)
    assert _gnu_tar_names(data) != python_names  # the two parsers disagree on the original
    uploads, error = _restore_uploads(tmp_path, data, {n: i["sha256"] for n, i in found.files.items()})
    assert error is None and len(uploads) == 1
    assert _gnu_tar_names(uploads[0]) == python_names and not any(".." in n for n in python_names)


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "data.tar.gz"
    path.write_bytes(data)
    return path


# --- F9: hard links, long names ---------------------------------------------------------------

def test_a_hard_link_is_restored_as_a_copy_and_long_nested_names_fit(tmp_path):
    """F9: one `ln a b` made every later restore refuse; a long nested path overflowed the
    flattened scratch name (ENAMETOOLONG)."""
    link = tarfile.TarInfo("./copy.db")
    link.type, link.linkname = tarfile.LNKTYPE, "./state.db"
    deep = "/".join(["d" * 200] * 3) + "/state.db"
    db = (tmp_path / "src-db")
    conn = sqlite3.connect(db)
    conn.execute("create table t (x)")
    conn.commit()
    conn.close()
    deep_member = tarfile.TarInfo(deep)
    deep_member.size = db.stat().st_size
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    found = backup.inventory_of(make_data_tar(tmp_path / "one", [(link, None), (deep_member, db.read_bytes())]))
    assert not found.problems
    assert found.files["copy.db"]["sha256"] == found.files["state.db"]["sha256"]
    assert found.sqlite[deep]["tables"] == {"t": 0}
    with open(tmp_path / "re.tar.gz", "wb") as repack:
        backup.inventory_of(make_data_tar(tmp_path / "two", [(link, None)]), repack=repack)
    with tarfile.open(tmp_path / "re.tar.gz") as tar:
        member = tar.getmember("copy.db")
        assert member.isfile() and tar.extractfile(member).read()[:16] == backup.SQLITE_MAGIC


@pytest.mark.skipif(__import__("os").geteuid() != 0, reason="runs find/sha256sum as uid 10000 (setpriv)")
def test_verify_command_output_parses_for_hostile_names(tmp_path):
    import subprocess

    data = tmp_path / "data"
    data.mkdir()
    names = ["a\nb", "c\\d\re", "x@@owners\x1b]0;pwned\x07", "@@owners"]
    for name in names:
        (data / name).write_text(name)
    subprocess.run(["chown", "-R", "10000:10000", str(data)], check=True)
    (data / "rootfile").write_text("r")
    marker = "@@hermes-infra-owners-" + "cd" * 16
    done = subprocess.run(["sh", "-c", backup.verify_command(_gateway_at(data), marker)], capture_output=True)
    manifest = {"files": {n: {"sha256": hashlib.sha256(n.encode()).hexdigest()} for n in names}}
    manifest["files"]["rootfile"] = {"sha256": hashlib.sha256(b"r").hexdigest()}
    assert backup.compare_files(manifest, done.stdout, marker) == ["'rootfile': not owned by the data dir's owner"]


# --- F18: the agent's SQLite files on the control machine ---------------------------------------

def test_sqlite_is_read_only_skips_virtual_tables_and_gives_up_in_time(tmp_path):
    db = tmp_path / "x.db"
    conn = sqlite3.connect(db)
    conn.execute("create table t (x)")
    conn.execute("insert into t values (1)")
    try:
        conn.execute("create virtual table v using fts5(body)")
        conn.execute("insert into v values ('hello')")
        virtual = True
    except sqlite3.OperationalError:
        virtual = False
    conn.commit()
    conn.close()
    before = db.read_bytes()
    db.chmod(0o400)
    summary = backup.sqlite_summary(db)
    assert summary["integrity"] == "ok" and summary["tables"]["t"] == 1
    if virtual:
        assert summary["tables"]["v"] == "virtual table (not read)"
    assert db.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["x.db"]
    slow = backup.sqlite_summary(db, seconds=-1)
    assert "gave up" in slow["integrity"]


def test_backup_restore_and_restart_take_the_deploy_lock_and_stop_when_a_deploy_holds_it(tmp_path):
    """F12: a backup or restore could run during a deploy (and the deploy's snapshot)."""
    from hermes_infra.daytwo import lifecycle

    data = make_data_tar(tmp_path).read_bytes()

    def respond(command):
        if "State.Running" in command:
            return "true\n"
        if "-cf - ." in command:
            return RunResult(0, data, "")
        return ""

    remote = FakeRemote(respond)
    backup.backup([host()], None, tmp_path / "o", say=lambda m: None, remote_for=lambda h: remote)
    assert "mkdir -m 0700 /var/lib/hermes-infra/lock" in remote.lock_commands[0]
    assert "lock.releasing." in remote.lock_commands[-1]
    busy = FakeRemote(respond)
    busy.lock_held_by = '{"who": "alice@laptop", "pid": 1, "machine": "laptop", "heartbeat": "x"}'
    with pytest.raises(DayTwoError, match="held by alice@laptop"):
        backup.backup([host()], None, tmp_path / "o2", say=lambda m: None, remote_for=lambda h: busy)
    assert busy.commands == []  # nothing stopped
    with pytest.raises(DayTwoError, match="held by alice@laptop"):
        lifecycle.restart([host()], None, say=lambda m: None, remote_for=lambda h: busy)
    (tmp_path / "r").mkdir()
    archive = saved_backup(tmp_path / "r")
    busy.respond = lambda c: "datadir=empty compose=present container=false\n" if "datadir=" in c else ""
    with pytest.raises(DayTwoError, match="held by alice@laptop"):
        backup.restore(host(), archive, remote_for=lambda h: busy, say=lambda m: None)
    assert not any(" stop -t" in c for c in busy.commands)


def test_pre_restore_dirs_are_pruned_to_backup_keep(tmp_path):
    import subprocess

    data = tmp_path / "hermes"
    data.mkdir()
    stamps = [f"2026112{i}T100000Z" for i in range(5)]
    for stamp in stamps:
        (tmp_path / f"hermes.pre-restore-{stamp}").mkdir()
    (tmp_path / "hermes.pre-restore-notes").mkdir()  # not ours: no stamp
    (tmp_path / "hermes-x.pre-restore-20261101T000000Z").mkdir()  # another profile's
    done = subprocess.run(["sh", "-c", backup.prune_aside_command(_gateway_at(data), 2)], capture_output=True)
    assert done.returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["hermes", "hermes.pre-restore-notes", "hermes-x.pre-restore-20261101T000000Z",
         f"hermes.pre-restore-{stamps[3]}", f"hermes.pre-restore-{stamps[4]}"])


@pytest.mark.skipif(not CAN_RUN, reason="runs tar and the copy as uid 10000 (setpriv, a mount namespace)")
def test_an_online_backup_restores_its_database_copies(tmp_path):
    """The archive the real command makes, through backup and restore: the upload holds the
    database copy (its rows), not a live file, and no -wal beside it."""
    import subprocess

    from tests.unit.copyfakes import make_state_db
    data = tmp_path / "data"
    data.mkdir()
    make_state_db(data / "state.db", rows=4)
    (data / ".env").write_text("API_SERVER_KEY=" + "k" * 20 + "\n")
    subprocess.run(["chown", "-R", "10000:10000", str(data)], check=True)
    (tmp_path / "host").mkdir()
    done = _run_archive(tmp_path / "host", _gateway_at(data))
    assert done.returncode == 0, done.stderr
    remote = FakeRemote(lambda c: RunResult(0, done.stdout, "") if "docker run --rm" in c else "")
    made = backup.backup_gateway(host(), host().settings.gateways[0], remote, backup.prepare_out_dir(tmp_path / "o"),
                                 say=lambda m: None)
    assert made.manifest["sqlite"]["state.db"]["tables"] == {"sessions": 4}
    sums = {name: info["sha256"] for name, info in made.manifest["files"].items()}
    target = restore_remote(sums)
    backup.restore(host(), made.path, remote_for=lambda h: target, say=lambda m: None)
    uploaded = tmp_path / "up.tar.gz"
    uploaded.write_bytes(target.stdins[-1])
    with tarfile.open(uploaded) as tar:
        assert sorted(tar.getnames()) == [".env", "state.db"]
        (tmp_path / "r.db").write_bytes(tar.extractfile("state.db").read())
    assert sqlite3.connect(tmp_path / "r.db").execute("SELECT count(*) FROM sessions").fetchone() == (4,)
