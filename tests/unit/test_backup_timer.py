"""Scheduled backups as a setting: the host script and units the plan holds, the timer
operation on a fresh, converged, drifted and unscheduled host, and restoring a scheduled
archive."""
from __future__ import annotations

import hashlib
import subprocess

import pytest

from hermes_infra.operations.backup_timer import timer_running
from hermes_infra.plan import backup_timer
from hermes_infra.daytwo import backup
from hermes_infra.daytwo.remote import DayTwoError
from hermes_infra.settings.loading import SettingsError
from tests.unit.hostfakes import converged, fresh, plan_for, root_file, run_op, settings
from tests.unit.copyfakes import CAN_RUN, corrupt_index, install_fake_docker, make_state_db
from tests.unit.test_daytwo_backup import make_data_tar

DAILY = {"scheduled_backups": {"schedule": "daily", "keep": 4}}


def timer_op(plan):
    return run_op(timer_running, plan.backup_timer)


def test_script_archives_every_profile_as_its_owner_and_keeps_n(tmp_path):
    host = settings(gateways=[{"name": "hermes"}, {"name": "work", "api": {"port": 8643}}], **DAILY)
    text = backup_timer.script_text(host, keep=4)
    script = tmp_path / "s.sh"
    script.write_text(text)
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    assert text.count("setpriv --reuid=10000 --regid=10000 --clear-groups -- tar --sparse --one-file-system "
                      "--numeric-owner") == 2
    assert "cd -P -- /root/.hermes-work" in text and "[ ! -L /root/.hermes ]" in text
    assert "tail -n +5" in text and "/var/backups/hermes-infra/scheduled" in text
    assert "umask 077" in text and "API_SERVER_KEY" not in text


def test_a_schedule_is_planned_as_root_files_and_a_timer_started_on_a_fresh_host():
    host = settings(**DAILY)
    plan = plan_for(host, fresh())
    paths = [f.path for f in plan.backup_timer.files]
    assert paths == [backup_timer.SCRIPT, backup_timer.SERVICE, backup_timer.TIMER]
    assert plan.backup_timer.files[0].mode == "0700"
    assert "OnCalendar=daily" in plan.backup_timer.files[2].content
    api_key = plan.gateways[0].api_key
    assert all(api_key not in f.content for f in plan.backup_timer.files)
    assert timer_op(plan).commands == [
        "systemd-analyze calendar daily >/dev/null",
        "systemctl daemon-reload && systemctl enable hermes-infra-backup.timer && systemctl restart hermes-infra-backup.timer"]


def _scheduled_host(host):
    facts = converged(host)
    plan = plan_for(host, facts)
    for file in plan.backup_timer.files:
        facts.state.root_files[file.path] = root_file(file.content, file.mode)
    facts.state.backup_timer_enabled = facts.state.backup_timer_active = True
    return facts


def test_converged_schedule_changes_nothing_and_a_new_calendar_restarts_the_timer():
    host = settings(**DAILY)
    facts = _scheduled_host(host)
    assert not timer_op(plan_for(host, facts)).changed
    weekly = plan_for(settings(scheduled_backups={"schedule": "weekly", "keep": 4}), facts)
    assert [f.path for f in weekly.backup_timer.files if f.content_changed] == [backup_timer.TIMER]
    assert "systemctl restart hermes-infra-backup.timer" in timer_op(weekly).commands[-1]
    facts.state.backup_timer_active = False  # stopped by hand
    assert timer_op(plan_for(host, facts)).changed


def test_unsetting_the_schedule_removes_the_timer_and_keeps_the_archives():
    facts = _scheduled_host(settings(**DAILY))
    plan = plan_for(settings(), facts)
    assert plan.backup_timer.files == ()
    commands = timer_op(plan).commands
    assert commands[0] == "systemctl disable --now hermes-infra-backup.timer 2>/dev/null || true"
    assert commands[1].startswith("rm -f /usr/local/sbin/hermes-infra-backup ")
    assert not any("scheduled" in c for c in commands)
    assert not timer_op(plan_for(settings(), converged(settings()))).changed


@pytest.mark.parametrize("calendar", ["daily; rm -rf /", "$(reboot)", "", "daily\nweekly"])
def test_a_calendar_that_is_not_one_is_refused_before_any_host(calendar):
    with pytest.raises(SettingsError, match="scheduled_backups.schedule.*calendar"):
        settings(scheduled_backups={"schedule": calendar})


def test_a_scheduled_archive_can_be_restored(tmp_path):
    data = make_data_tar(tmp_path)
    archive = tmp_path / "hermes_20261120T030000Z.tar.gz"
    archive.write_bytes(data.read_bytes())
    (tmp_path / (archive.name + ".sha256")).write_text(hashlib.sha256(data.read_bytes()).hexdigest() + "  x\n")
    manifest, payload = backup.read_backup(archive)
    assert manifest["profile"] == "hermes" and payload == data.read_bytes()
    assert manifest["sqlite"]["state.db"]["tables"] == {"sessions": 3}
    (tmp_path / (archive.name + ".sha256")).write_text("0" * 64 + "  x\n")
    with pytest.raises(DayTwoError, match="does not match"):
        backup.read_backup(archive)


# --- the script itself, run by sh against a scratch dir with a docker that only records ----------

def _sandbox(tmp_path, keep=2, lock_wait=0):
    """The real script with its paths moved under tmp_path, a data dir owned by uid 10000."""
    install_fake_docker(tmp_path / "bin")
    (tmp_path / "opt").mkdir()
    data = tmp_path / "root" / ".hermes"
    (data / "sessions").mkdir(parents=True)
    (data / "sessions" / "s1.json").write_text("{}")
    make_state_db(data / "state.db")
    text = backup_timer.script_text(settings(**DAILY), keep, lock_dir=str(tmp_path / "state" / "lock"),
                                    lock_wait=lock_wait)
    for old, new in (("/var/backups/hermes-infra", tmp_path / "backups"), ("/root/.hermes", data),
                     ("/opt/hermes", tmp_path / "opt")):
        text = text.replace(old, str(new))
    script = tmp_path / "backup.sh"
    script.write_text(text)
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin", "SANDBOX": str(tmp_path)}
    return script, data, tmp_path / "backups" / "scheduled" / "hermes", env


def _own(data):
    subprocess.run(["chown", "-R", "10000:10000", str(data)], check=True)


def _run(script, env):
    return subprocess.run(["sh", str(script)], env=env, text=True, capture_output=True, timeout=120)


def _last(dest):
    import json
    return json.loads((dest.parent / "hermes.last.json").read_text())


needs_root = pytest.mark.skipif(not CAN_RUN, reason="runs tar and the copy as uid 10000 (setpriv, a mount namespace)")


@needs_root
def test_a_run_archives_reads_back_records_success_and_releases_the_lock(tmp_path):
    import tarfile
    script, data, dest, env = _sandbox(tmp_path)
    _own(data)
    done = _run(script, env)
    assert done.returncode == 0, done.stderr
    archives = sorted(dest.glob("*.tar.gz"))
    assert len(archives) == 1 and (archives[0].parent / (archives[0].name + ".sha256")).exists()
    with tarfile.open(archives[0]) as tar:
        names = tar.getnames()
        assert "./sessions/s1.json" in names and names.count("./state.db") == 1
        assert not [n for n in names if n.endswith(("-wal", "-shm"))]
        copy = tar.extractfile("./state.db").read()
    # The database in the archive is the online copy, whole: its rows were in the live -wal only.
    restored = tmp_path / "restored.db"
    restored.write_bytes(copy)
    assert __import__("sqlite3").connect(restored).execute("SELECT count(*) FROM sessions").fetchone() == (3,)
    last = _last(dest)
    assert last["result"] == "success" and last["archive"] == archives[0].name and last["time"].endswith("Z")
    assert last["kind"] == "scheduled" and last["bytes"] == archives[0].stat().st_size
    report = __import__("json").loads((dest / (archives[0].name + ".databases.json")).read_text())
    assert report["databases"]["state.db"]["integrity"] == "ok"
    assert report["databases"]["state.db"]["tables"] == {"sessions": 3}
    log = (tmp_path / "docker.log").read_text()
    # Online: the gateway is neither stopped nor started; the copy runs as the owner, confined.
    assert " stop " not in log and " start " not in log
    assert "run --rm --name hermes-infra-dbcopy-hermes --pull never --user 10000:10000 --network none " \
           "--read-only --cap-drop ALL" in log
    assert not (tmp_path / "state" / "lock").exists() and not list(dest.glob("*.partial"))
    assert sorted(p.name for p in dest.parent.iterdir()) == ["hermes", "hermes.last.json"], "work dir left"


@needs_root
def test_a_tar_failure_is_a_failed_run_that_keeps_the_good_archives(tmp_path):
    """The review's F7: `mkdir private && chmod 000 private` made tar fail, yet gzip's status
    made the run a success, and a data dir gone produced empty archives that rotated good ones out."""
    script, data, dest, env = _sandbox(tmp_path, keep=1)
    _own(data)
    assert _run(script, env).returncode == 0
    good = sorted(dest.glob("*.tar.gz"))
    (data / "private").mkdir()
    _own(data)
    (data / "private").chmod(0)
    import time
    time.sleep(1.1)  # a new stamp
    done = _run(script, env)
    assert done.returncode == 1 and "tar failed" in done.stderr
    assert sorted(dest.glob("*.tar.gz")) == good and not list(dest.glob("*.partial"))
    assert _last(dest)["result"] == "failed" and "tar failed" in _last(dest)["message"]
    (data / "private").chmod(0o700)
    import shutil
    shutil.rmtree(data)
    time.sleep(1.1)
    for _ in range(2):
        done = _run(script, env)
        assert done.returncode == 1 and "missing" in _last(dest)["message"]
    assert sorted(dest.glob("*.tar.gz")) == good


@needs_root
def test_sparse_files_are_stored_as_holes_and_a_huge_apparent_size_is_refused(tmp_path, monkeypatch):
    from hermes_infra.plan import datatar
    script, data, dest, env = _sandbox(tmp_path)
    with open(data / "sparse", "wb") as handle:
        handle.truncate(64 << 20)
    _own(data)
    assert _run(script, env).returncode == 0
    archive = next(dest.glob("*.tar.gz"))
    assert archive.stat().st_size < 16 << 10  # 64 MiB of zeros is about 64 KB of gzip without --sparse
    monkeypatch.setattr(datatar, "MAX_APPARENT_BYTES", 32 << 20)
    script, data, dest, env = _sandbox(tmp_path / "again")
    with open(data / "sparse", "wb") as handle:
        handle.truncate(64 << 20)
    _own(data)
    done = _run(script, env)
    assert done.returncode == 1 and "over the archive size limit" in done.stderr
    assert not list(dest.glob("*.tar.gz")) and _last(dest)["result"] == "failed"
    assert " start " not in (tmp_path / "again" / "docker.log").read_text()


def test_a_held_deploy_lock_skips_the_run_and_says_so(tmp_path):
    from hermes_infra.release import lock
    script, data, dest, env = _sandbox(tmp_path)
    lock_dir = str(tmp_path / "state" / "lock")
    holder = lock.Holder(who="alice@laptop", pid=7, machine="laptop")
    assert subprocess.run(["sh", "-c", lock.acquire_command(holder, lock_dir)], capture_output=True,
                          text=True).stdout.startswith("acquired")
    done = _run(script, env)
    assert done.returncode == 1 and "deploy lock is held" in done.stderr
    assert _last(dest)["result"] == "skipped"
    assert not (tmp_path / "docker.log").exists()  # nothing stopped
    assert subprocess.run(["sh", "-c", lock.release_command(holder, lock_dir)], capture_output=True,
                          text=True).stdout.strip() == "released"


def test_the_timers_lock_reads_as_a_deploy_lock_held_by_the_timer(tmp_path):
    """While the script runs, `hermes-infra lock status` shows who holds it (the timer)."""
    from hermes_infra.release import lock
    script, data, dest, env = _sandbox(tmp_path)
    lock_dir = str(tmp_path / "state" / "lock")
    text = script.read_text().split("# profile hermes")[0] + f"sh -c {__import__('shlex').quote(lock.status_command(lock_dir))}\n"
    script.write_text(text)
    done = _run(script, env)
    state = lock.parse_state(done.stdout)
    assert state.held and state.info["who"].startswith("backup-timer@") and state.age_seconds is not None
    assert "scheduled backup" in state.describe()
    assert not (tmp_path / "state" / "lock").exists()


def _one_good_run(tmp_path, keep=1):
    script, data, dest, env = _sandbox(tmp_path, keep=keep)
    _own(data)
    assert _run(script, env).returncode == 0
    import time
    time.sleep(1.1)  # the next run gets a new stamp
    return script, data, dest, env, sorted(dest.iterdir())


@needs_root
def test_a_failed_database_copy_is_a_failed_run_that_rotates_nothing(tmp_path):
    script, data, dest, env, good = _one_good_run(tmp_path)
    done = _run(script, {**env, "FAKE_RUN_RC": "125"})
    assert done.returncode == 1 and "online copy of the SQLite databases failed" in done.stderr
    assert sorted(dest.iterdir()) == good, "a failed run removed or added archives"
    last = _last(dest)
    assert last["result"] == "failed" and last["bytes"] == 0 and last["archive"] == ""
    assert "online copy" in last["message"]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["hermes", "hermes.last.json"], "work dir left"


@needs_root
def test_a_copy_failing_its_integrity_check_is_a_failed_run_that_rotates_nothing(tmp_path):
    script, data, dest, env, good = _one_good_run(tmp_path)
    corrupt_index(data / "state.db")
    _own(data)
    done = _run(script, env)
    assert done.returncode == 1, done.stderr
    assert sorted(dest.iterdir()) == good
    assert _last(dest)["result"] == "failed" and "integrity_check" in _last(dest)["message"]


def test_every_step_of_the_archive_is_checked_and_its_reasons_are_fixed_texts():
    from hermes_infra.plan import datatar
    host = settings(**DAILY)
    text = backup_timer.script_text(host, keep=4)
    archive = datatar.online_archive_script("/root/.hermes", 10000, 10000, "hermes", "hermes", host.image.ref, '"$w"')
    assert archive in text
    # each step's status is read: the copy's, tar's (no pipe hides it), the append's, gzip's
    for step in ("hi_c=$?", "hi_t=$?", f"|| exit {datatar.APPEND_FAILED_RC}", f"|| exit {datatar.GZIP_FAILED_RC}"):
        assert step in archive
    assert "| gzip" not in archive and "gzip -1 -c < " in archive
    for rc, reason in datatar.REASONS.items():
        assert f"    {rc}) why=" in text
        assert not set(reason) & set("\"\\$`'\n"), reason  # printed into the JSON record as it is
    assert text.index("tar -tzf") < text.index("record hermes success") < text.index("tail -n +5")
