"""Off-host backups (setting scheduled_backups.offsite): the repository URL by meaning, secrets
kept in root 0600 files only, the scripts each step checked, records and status, `backup list`,
and a restore from the repository alone (faked remotes; the real restic where it is installed)."""
from __future__ import annotations

import base64
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from hermes_infra.daytwo import backup, offsite as offsite_cmd, status
from hermes_infra.daytwo.remote import DayTwoError, RunResult
from hermes_infra.plan import backup_timer, offsite
from hermes_infra.settings.loading import SettingsError, settings_from_raw
from hermes_infra.settings.schema import HostSettings
from tests.unit.daytwo_fakes import FakeRemote, host
from tests.unit.test_daytwo_backup import MARKER, make_data_tar, uploaded_sha, verify_answer
from tests.unit.test_settings_validation import collect

PASSWORD = "Repo-pass-Q8vT2mZp9Lx4Rn7w"
AWS_ID = "AKIAQ8VT2MZP9LX4RN7W"
AWS_SECRET = "Zq8vT2mZp9Lx4Rn7wK3sJ6dF1gH5jL0pO9iU8yT7"
REST_PASSWORD = "Rest-pass-K3sJ6dF1gH5jL0p"
SSH_KEY = ("-----BEGIN OPENSSH PRIVATE KEY-----\n"
           "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
           "QyNTUxOQAAACBXq8vT2mZp9Lx4Rn7wK3sJ6dF1gH5jL0pO9iU8yT7AAAA=\n"
           "-----END OPENSSH PRIVATE KEY-----\n")
SECRETS = (PASSWORD, AWS_ID, AWS_SECRET, REST_PASSWORD, "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ")
ED25519 = "ssh-ed25519 " + base64.b64encode(b"\0\0\0\x0bssh-ed25519" + b"\0\0\0\x20" + b"k" * 32).decode()


def s3(**extra) -> dict:
    return {"repository": "s3:https://s3.example.com/backups/hermes", "password": PASSWORD,
            "aws_access_key_id": AWS_ID, "aws_secret_access_key": AWS_SECRET, **extra}


def sftp(**extra) -> dict:
    return {"repository": "sftp:backup@192.0.2.10:/srv/restic", "password": PASSWORD, "sftp_private_key": SSH_KEY,
            "sftp_host_keys": [ED25519], **extra}


def rest(**extra) -> dict:
    return {"repository": "rest:https://backup.example.com:8000/hermes", "password": PASSWORD,
            "rest_username": "hermes", "rest_password": REST_PASSWORD, **extra}


def settings_with(off: dict, schedule: str | None = "daily") -> HostSettings:
    return settings_from_raw(collect([{"scheduled_backups": {"schedule": schedule, "offsite": off}}]))


def refused(off: dict) -> str:
    with pytest.raises(SettingsError) as caught:
        settings_with(off)
    message = str(caught.value)
    assert "Fix" in message, message
    for secret in SECRETS:
        assert secret not in message, "a secret in the error"
    return message


# ----------------------------------------------------------------------------- settings
@pytest.mark.parametrize("off", [s3(), sftp(), rest(), sftp(repository="sftp://backup@host.example:2222//srv/r"),
                                 {"repository": "rest:http://127.0.0.1:8000/", "password": PASSWORD},
                                 {"repository": "rest:http://10.1.2.3:8000/x", "password": PASSWORD},
                                 s3(repository="s3:http://192.168.1.5:9000/bucket")])
def test_the_three_backends_are_accepted(off):
    chosen = settings_with(off).scheduled_backups.offsite
    assert chosen.parsed.scheme in offsite_cmd_schemes()
    for secret in SECRETS:
        assert secret not in repr(chosen) and secret not in str(chosen)


def offsite_cmd_schemes():
    from hermes_infra.settings.schema import OFFSITE_SCHEMES

    return OFFSITE_SCHEMES


@pytest.mark.parametrize("off, said", [
    (s3(repository="local:/srv/restic"), "backend 'local' is not one of s3, sftp, rest"),
    (s3(repository="/srv/restic"), "is not one of"),
    (s3(repository="b2:bucket:path"), "backend 'b2'"),
    (s3(repository="s3:ftp://h/b"), "needs an https:// URL"),
    (s3(repository="s3:https://h.example/"), "names no bucket"),
    (s3(repository=f"s3:https://{AWS_ID}:{AWS_SECRET}@h.example/b"), "holds credentials"),
    (rest(repository=f"rest:https://hermes:{REST_PASSWORD}@h.example/"), "holds credentials"),
    ({"repository": "rest:http://203.0.113.5:8000/", "password": PASSWORD}, "plain http to 203.0.113.5"),
    ({"repository": "rest:http://backup.example.com/", "password": PASSWORD}, "plain http"),
    ({"repository": "rest:http://8.8.8.8/", "password": PASSWORD}, "plain http"),
    (sftp(repository="sftp:backup@host:relative/path"), "not an absolute path"),
    (sftp(repository="sftp:backup@host:/srv/../etc"), "not an absolute path"),
    (sftp(repository="sftp:host:/srv"), "SSH user is missing"),
    (sftp(repository="sftp:backup@ho st:/srv"), "holds characters"),
    (s3(repository="s3:https://h.example/b?x=1"), "holds characters"),
    (s3(aws_secret_access_key=None), "aws_secret_access_key is required"),
    (sftp(sftp_host_keys=[]), "sftp_host_keys is required"),
    (sftp(sftp_host_keys=["ssh-ed25519 notbase64!"]), "not base64"),
    (sftp(sftp_host_keys=["ssh-dss AAAA"]), "is not `TYPE BASE64`"),
    (sftp(sftp_private_key="not a key " + PASSWORD), "is not an OpenSSH private key"),
    (s3(rest_password=REST_PASSWORD, rest_username="u"), "does not apply to a s3 repository"),
    (rest(aws_access_key_id=AWS_ID), "does not apply to a rest repository"),
    (rest(rest_password=None), "go together"),
    (s3(password="short-Q8vT2m"), "shorter than 16"),
    (s3(password="changeme"), "placeholder"),
    (s3(aws_secret_access_key="<your-secret>"), "placeholder"),
    (s3(keep_daily=0, keep_weekly=0, keep_monthly=0), "no snapshot would be kept"),
    (s3(read_data_percent=0), "read_data_percent"),
    (s3(bogus=1), "bogus"),
])
def test_a_bad_offsite_setting_is_refused_by_meaning_without_its_secrets(off, said):
    assert said in refused(off)


def test_a_multi_line_private_key_is_held_on_one_line_and_written_back_whole():
    chosen = settings_with(sftp()).scheduled_backups.offsite
    assert "\n" not in chosen.sftp_private_key.get_secret_value()
    assert chosen.private_key_text == SSH_KEY


# ----------------------------------------------------------------------------- files on the host
def _files(settings: HostSettings) -> dict[str, tuple[str, str, bool]]:
    return {path: (content, mode, secret) for path, content, mode, secret in offsite.files(settings, "web1")}


@pytest.mark.parametrize("off", [s3(), sftp(), rest()])
def test_secrets_are_only_in_root_0600_files_marked_secret(off):
    found = _files(settings_with(off))
    for path, (content, mode, secret) in found.items():
        holds = [s for s in SECRETS if s in content]
        if path in offsite.SECRET_PATHS:
            assert secret and mode == "0600", f"{path} is not kept as a secret"
        else:
            assert not holds and not secret, f"{path} holds a secret"
    assert found[offsite.PASSWORD_FILE] == (PASSWORD + "\n", "0600", True)
    assert found[offsite.RESTIC][1] == found[offsite.UPLOAD][1] == "0700"
    env = found[offsite.ENV_FILE][0]
    assert f"RESTIC_PASSWORD_FILE={offsite.PASSWORD_FILE}" in env and "RESTIC_PASSWORD=" not in env
    # every script, unit and command holds no secret
    script = backup_timer.script_text(settings_with(off), 7)
    for text in (found[offsite.RESTIC][0], found[offsite.UPLOAD][0], script, offsite_cmd.dump_command(
            offsite_cmd.Snapshot("a" * 64, "t", "h", "hermes", "manual", 1)), offsite_cmd.snapshots_command("web1"),
            backup.archive_command(settings_with(off).gateways[0], "img", keep_tar=True)):
        assert not any(s in text for s in SECRETS)


def test_the_env_file_carries_each_backends_credentials_read_not_passed():
    env = _files(settings_with(s3()))[offsite.ENV_FILE][0]
    assert f"AWS_ACCESS_KEY_ID={AWS_ID}" in env and f"AWS_SECRET_ACCESS_KEY={AWS_SECRET}" in env
    assert "RESTIC_REPOSITORY=s3:https://s3.example.com/backups/hermes" in env
    rest_env = _files(settings_with(rest()))[offsite.ENV_FILE][0]
    assert f"RESTIC_REPOSITORY=rest:https://hermes:{REST_PASSWORD}@backup.example.com:8000/hermes" in rest_env
    assert "AWS_" not in rest_env
    wrapper = _files(settings_with(s3()))[offsite.RESTIC][0]
    assert f". {offsite.ENV_FILE} || exit 1" in wrapper and 'exec restic "$@"' in wrapper


def test_sftp_trusts_only_the_settings_host_keys_and_key():
    found = _files(settings_with(sftp(repository="sftp://backup@192.0.2.10:2222//srv/restic")))
    assert found[offsite.KNOWN_HOSTS][0] == f"[192.0.2.10]:2222 {ED25519}\n"
    assert found[offsite.SSH_KEY] == (SSH_KEY, "0600", True)
    wrapper = found[offsite.RESTIC][0]
    for option in ("StrictHostKeyChecking=yes", f"UserKnownHostsFile={offsite.KNOWN_HOSTS}", "BatchMode=yes",
                   f"-i {offsite.SSH_KEY}", "-p 2222 backup@192.0.2.10 -s sftp", "IdentitiesOnly=yes"):
        assert option in wrapper
    assert offsite.KNOWN_HOSTS not in _files(settings_with(s3()))


def test_the_upload_checks_every_step_prunes_checks_and_records():
    script = _files(settings_with(s3(keep_daily=3, keep_weekly=0, keep_monthly=2, read_data_percent=7)))[offsite.UPLOAD][0]
    assert "--stdin --stdin-filename \"$profile.tar\"" in script
    assert "--tag hermes-infra --tag host=web1 --tag \"profile=$profile\" --tag \"source=$source\"" in script
    assert "--keep-daily 3 --keep-monthly 2 --prune" in script and "--keep-weekly" not in script
    assert '"$restic" check >>"$log" 2>&1 || fail' in script
    assert "check --read-data-subset=7%" in script
    assert '[ "$rc" = 0 ] || fail "restic backup failed (exit $rc)"' in script
    assert '|| fail "restic forget --prune failed' in script
    assert script.rstrip().endswith('record success "sent, pruned and checked" "$snap" "$added" "$bytes" || exit 1')
    assert 'case "$profile" in hermes)' in script, "only the settings' profiles"


def test_offsite_unset_installs_nothing_and_removes_what_an_earlier_deploy_left():
    from hermes_infra.operations.offsite import offsite_removed

    plain = settings_from_raw(collect([{}]))
    assert offsite.files(plain, "web1") == []
    assert offsite.upload_command("hermes", "manual", "x") not in backup_timer.script_text(plain, 7)
    state = type("S", (), {"root_files": {offsite.ENV_FILE: {"text": None}}, "packages": {}})()
    plan = offsite.plan_offsite(plain, state, "web1", lambda *a: a)
    assert not plan.wanted and plan.present == (offsite.ENV_FILE,) and not plan.package_missing
    commands = list(offsite_removed._inner(plan)) if hasattr(offsite_removed, "_inner") else None
    if commands is not None:
        assert any(offsite.PASSWORD_FILE in c and offsite.CACHE_DIR in c for c in commands)
    wanted = offsite.plan_offsite(settings_with(s3()), state, "web1", lambda *a: a)
    assert wanted.wanted and wanted.package_missing and len(wanted.files) == 4


def test_the_scheduled_script_sends_the_verified_archive_before_its_work_dir_goes():
    script = backup_timer.script_text(settings_with(s3()), 7)
    upload = script.index(f'{offsite.UPLOAD} hermes scheduled "$w/data.tar" || status=1')
    assert script.index("record hermes success") < upload < script.index('if [ -n "$w" ]; then rm -rf -- "$w"; fi')
    # only in the success branch
    assert script.rindex('fail hermes "$why"', 0, upload) < script.rindex("else", 0, upload)


# ----------------------------------------------------------------------------- the manual backup
def _offsite_host():
    return host(scheduled_backups={"offsite": s3()})


def _backup_remote(data: bytes, upload_rc: int = 0):
    def respond(command):
        if "docker run --rm --name hermes-infra-dbcopy-hermes" in command:
            return RunResult(0, data, "")
        if command.startswith(offsite.UPLOAD):
            return RunResult(upload_rc, b"", "" if upload_rc == 0 else "hermes-infra-offsite: hermes: restic check "
                                                                       "found a problem in the repository")
        return ""
    return FakeRemote(respond)


def test_a_manual_backup_is_sent_after_it_was_checked_and_its_tar_removed(tmp_path):
    remote = _backup_remote(make_data_tar(tmp_path).read_bytes())
    target = _offsite_host()
    backup.backup_gateway(target, target.settings.gateways[0], remote, backup.prepare_out_dir(tmp_path / "o"),
                          say=lambda m: None)
    kept = backup.offsite_tar_path(target.settings.gateways[0])
    assert f'mv -f -- "$w/data.tar" {kept}' in remote.commands[0]
    [sent] = [c for c in remote.commands if c.startswith(offsite.UPLOAD)]
    assert sent == f"{offsite.UPLOAD} hermes manual {kept}; rc=$?; rm -f -- {kept}; exit $rc"
    assert remote.commands.index(sent) > next(i for i, c in enumerate(remote.commands) if "manual/hermes.last" in c)


def test_a_failed_upload_fails_the_backup(tmp_path):
    remote = _backup_remote(make_data_tar(tmp_path).read_bytes(), upload_rc=1)
    target = _offsite_host()
    with pytest.raises(DayTwoError, match="off-host upload failed: hermes-infra-offsite: hermes: restic check"):
        backup.backup_gateway(target, target.settings.gateways[0], remote, backup.prepare_out_dir(tmp_path / "o"),
                              say=lambda m: None)


def test_no_offsite_setting_no_tar_kept_and_nothing_sent(tmp_path):
    remote = _backup_remote(make_data_tar(tmp_path).read_bytes())
    backup.backup_gateway(host(), host().settings.gateways[0], remote, backup.prepare_out_dir(tmp_path / "o"),
                          say=lambda m: None)
    assert 'mv -f -- "$w/data.tar"' not in remote.commands[0]
    assert not any(c.startswith(offsite.UPLOAD) for c in remote.commands)


# ----------------------------------------------------------------------------- records and status
def _record(result="success", **extra) -> str:
    record = {"bytes": 20172800, "bytes_added": 4885266, "kind": "offsite", "message": "sent, pruned and checked",
              "profile": "hermes", "result": result, "snapshot": "0123abcd" * 8, "source": "scheduled",
              "time": "2026-12-02T03:30:00Z", **extra}
    return base64.b64encode(json.dumps(record).encode()).decode()


def _status_text(settings_raw: dict, lines: list[str]) -> tuple[status.GatewayStatus, str]:
    target = host(**settings_raw)
    text = "@@hermes-infra-status backups hermes\n" + "\n".join(lines) + "\n"
    found = status.parse_status(target, text)
    report = status.StatusReport([found], __import__("datetime").datetime.now(), 0.1)
    return found.gateways[0], status.render_text(report)


def test_status_shows_the_last_good_off_host_backup_and_a_failed_one_after_it():
    g, text = _status_text({"scheduled_backups": {"offsite": s3()}},
                           ["", "", _record("failed", message="restic check found a problem in the repository",
                                            time="2026-12-03T03:30:00Z"), _record()])
    assert "last good off-host backup: 2026-12-02T03:30:00Z, 19MiB (4.7MiB new, snapshot 0123abcd)" in text
    assert "last upload FAILED 2026-12-03T03:30:00Z: restic check found a problem in the repository" in text
    assert any(a.finding == "the last off-host upload failed" for a in status.attention(
        status.parse_status(host(scheduled_backups={"offsite": s3()}),
                            "@@hermes-infra-status backups hermes\n\n\n" + _record("failed") + "\n\n")))
    _, never = _status_text({"scheduled_backups": {"offsite": s3()}}, ["", "", "", ""])
    assert "last good off-host backup: never" in never


def test_a_forged_record_is_not_shown_as_good():
    g, text = _status_text({"scheduled_backups": {"offsite": s3()}},
                           ["", "", "", _record(result="great"), ])
    assert g.offsite_good is None and "never" in text
    g, text = _status_text({"scheduled_backups": {"offsite": s3()}}, ["", "", "", _record(message="\x1b[31mred")])
    assert "\x1b" not in text


def test_status_reads_the_offsite_records_only_when_set():
    command = status.status_command(settings_with(s3()))
    assert f"{offsite.record_dir(settings_with(s3()))}/hermes.good.json" in command
    assert "/offsite/" not in status.status_command(settings_from_raw(collect([{}])))


# ----------------------------------------------------------------------------- list and restore
def _snapshots(*entries) -> str:
    return json.dumps([{"id": sid, "short_id": sid[:8], "time": when, "hostname": who,
                        "tags": ["hermes-infra", f"host={who}", f"profile={profile}", "source=scheduled"],
                        "paths": [f"/{profile}.tar"], "summary": {"total_bytes_processed": 1000}}
                       for sid, when, who, profile in entries])


A = "a1" * 32
B = "b2" * 32


def test_snapshots_are_parsed_field_by_field_and_chosen_by_meaning():
    text = _snapshots((A, "2026-12-01T03:30:00.1+00:00", "web1", "hermes"),
                      (B, "2026-12-02T03:30:00.1+00:00", "web1", "hermes"))
    hostile = json.loads(text) + [{"id": "nothex", "time": "x"}, {"id": "c" * 64, "time": "2026-12-03T00:00:00",
                                                                  "tags": ["profile=../../etc"]}]
    found = offsite_cmd.parse_snapshots(json.dumps(hostile))
    assert [s.id for s in found] == [A, B]
    assert offsite_cmd.choose_snapshot(found, "hermes", None).id == B
    assert offsite_cmd.choose_snapshot(found, "hermes", A[:8]).id == A
    with pytest.raises(DayTwoError, match="no single snapshot"):
        offsite_cmd.choose_snapshot(found, "hermes", "deadbeef")
    two = offsite_cmd.parse_snapshots(_snapshots((A, "2026-12-01T03:30:00Z", "web1", "hermes"),
                                                 (B, "2026-12-02T03:30:00Z", "web2", "hermes")))
    with pytest.raises(DayTwoError, match="from several hosts"):
        offsite_cmd.choose_snapshot(two, "hermes", None)
    table = offsite_cmd.render_snapshots(found)
    assert "2026-12-02T03:30:00Z  b2b2b2b2  web1  hermes   scheduled  1000B" in table


@pytest.mark.parametrize("value, wanted", [("offsite", None), ("offsite:latest", "latest"),
                                           (f"offsite:{A[:8]}", A[:8])])
def test_from_offsite_is_parsed(value, wanted):
    assert offsite_cmd.parse_from(value) == wanted


@pytest.mark.parametrize("value", ["offsite:", "offsite:; rm -rf /", "s3:x", "offsite:ABCDEF12", "offsite:abc"])
def test_a_bad_from_is_refused(value):
    with pytest.raises(DayTwoError, match="Fix"):
        offsite_cmd.parse_from(value)


def test_backup_list_reads_through_the_wrapper_for_this_host():
    remote = FakeRemote(lambda c: _snapshots((A, "2026-12-01T03:30:00Z", "web1", "hermes")))
    found = offsite_cmd.list_snapshots(_offsite_host(), remote_for=lambda h: remote)
    assert [s.id for s in found] == [A]
    assert remote.commands == [f"{offsite.RESTIC} snapshots --json --tag hermes-infra --host web1 2>/dev/null"]
    with pytest.raises(DayTwoError, match="no scheduled_backups.offsite"):
        offsite_cmd.list_snapshots(host(), remote_for=lambda h: remote)


def _plain_tar(tmp_path: Path) -> bytes:
    import gzip

    return gzip.decompress(make_data_tar(tmp_path).read_bytes())


def test_restore_from_offsite_onto_a_fresh_host_deploys_fetches_checks_unpacks_and_verifies(tmp_path):
    data_tar = _plain_tar(tmp_path)
    sums = {}
    with tarfile.open(fileobj=__import__("io").BytesIO(data_tar)) as tar:
        for member in tar:
            if member.isfile():
                sums[backup._member_name(member.name)] = __import__("hashlib").sha256(
                    tar.extractfile(member).read()).hexdigest()
    deployed = []

    def respond(command):
        if "datadir=" in command:
            return "datadir=missing compose=missing container=missing\n"
        if "offsite=present" in command:
            return "offsite=present\n" if deployed else "offsite=missing\n"
        if " snapshots --json" in command:
            return _snapshots((A, "2026-12-01T03:30:00Z", "old-host", "hermes"),
                              (B, "2026-12-02T03:30:00Z", "old-host", "hermes"))
        if " dump " in command:
            return RunResult(0, data_tar, "")
        if command.startswith("umask 077; install -d -m 0700 /var/lib/hermes-infra/stage"):
            return uploaded_sha(remote)
        if "sha256sum -z --" in command:
            return verify_answer(command, sums)
        return ""

    remote = FakeRemote(respond)
    target = _offsite_host()
    target.target = object()
    result = offsite_cmd.restore_from_offsite(target, None, remote_for=lambda h: remote, say=lambda m: None,
                                              deploy=lambda t: deployed.append(t) or 0)
    assert deployed and result.deployed and result.files == len(sums)
    dump = next(c for c in remote.commands if " dump " in c)
    assert dump == f"{offsite.RESTIC} dump {B} /hermes.tar", "the newest snapshot of the profile"
    order = [next(i for i, c in enumerate(remote.commands) if marker in c)
             for marker in ("datadir=", " dump ", " stop -t", "-xzf -", "sha256sum -z --", " start hermes")]
    assert order == sorted(order)
    assert not any(s in c for c in remote.commands for s in SECRETS)


def test_restore_from_offsite_refuses_an_unsafe_snapshot_before_the_gateway_stops(tmp_path):
    import io

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        evil = tarfile.TarInfo("../../etc/cron.d/x")
        evil.size = 4
        tar.addfile(evil, io.BytesIO(b"evil"))

    def respond(command):
        if "datadir=" in command:
            return "datadir=empty compose=present container=true\n"
        if "offsite=present" in command:
            return "offsite=present\n"
        if " snapshots --json" in command:
            return _snapshots((A, "2026-12-01T03:30:00Z", "web1", "hermes"))
        if " dump " in command:
            return RunResult(0, buffer.getvalue(), "")
        return ""

    remote = FakeRemote(respond)
    with pytest.raises(DayTwoError, match="refusing to restore"):
        offsite_cmd.restore_from_offsite(_offsite_host(), None, remote_for=lambda h: remote, say=lambda m: None)
    assert not any(" stop -t" in c or "-xzf" in c for c in remote.commands)


def test_restore_from_offsite_on_a_host_without_restic_says_deploy_first(tmp_path):
    def respond(command):
        if "datadir=" in command:
            return "datadir=empty compose=present container=true\n"
        return "offsite=missing\n" if "offsite=present" in command else ""

    remote = FakeRemote(respond)
    with pytest.raises(DayTwoError, match="Fix: hermes-infra up web1"):
        offsite_cmd.restore_from_offsite(_offsite_host(), None, remote_for=lambda h: remote, say=lambda m: None)


# ----------------------------------------------------------------------------- the real restic
def _local_upload(tmp_path: Path, settings: HostSettings) -> tuple[Path, dict]:
    """The generated upload script and wrapper, pointed at a local repository in tmp_path (the
    only change: paths; the repository URL is the one thing a local test cannot use)."""
    conf = tmp_path / "conf"
    conf.mkdir()
    repo = tmp_path / "repo"
    files = _files(settings)
    env = files[offsite.ENV_FILE][0].replace(offsite.CONFIG_DIR, str(conf)).replace(offsite.CACHE_DIR,
                                                                                    str(tmp_path / "cache"))
    env = "\n".join(f"RESTIC_REPOSITORY={repo}" if line.startswith("RESTIC_REPOSITORY=") else line
                    for line in env.splitlines()) + "\n"
    paths = {offsite.ENV_FILE: conf / "env", offsite.PASSWORD_FILE: conf / "password",
             offsite.RESTIC: tmp_path / "hermes-infra-restic", offsite.UPLOAD: tmp_path / "hermes-infra-offsite"}
    texts = {offsite.ENV_FILE: env, offsite.PASSWORD_FILE: files[offsite.PASSWORD_FILE][0],
             offsite.RESTIC: files[offsite.RESTIC][0], offsite.UPLOAD: files[offsite.UPLOAD][0]}
    for path, text in texts.items():
        for original, local in paths.items():
            text = text.replace(original, str(local))
        text = text.replace(offsite.record_dir(settings), str(tmp_path / "records"))
        paths[path].write_text(text)
        paths[path].chmod(0o700 if path in (offsite.RESTIC, offsite.UPLOAD) else 0o600)
    return paths[offsite.UPLOAD], {"repo": repo, "env": {**os.environ, "HOME": str(tmp_path)}}


@pytest.mark.skipif(shutil.which("restic") is None, reason="restic is not installed (setup.sh installs it)")
def test_the_generated_upload_runs_with_the_real_restic(tmp_path):
    settings = settings_with(rest(keep_daily=2))
    upload, extra = _local_upload(tmp_path, settings)
    tar = tmp_path / "data.tar"
    tar.write_bytes(_plain_tar(tmp_path))
    records = tmp_path / "records"
    for run in range(2):
        done = subprocess.run([str(upload), "hermes", "scheduled", str(tar)], env=extra["env"], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr + (records / "hermes.restic.log").read_text()
        record = json.loads((records / "hermes.last.json").read_text())
        assert record["result"] == "success" and len(record["snapshot"]) >= 8 and record["bytes"] == tar.stat().st_size
        if run == 0:
            first_added = record["bytes_added"]
            assert first_added > 0
        else:
            assert record["bytes_added"] < first_added / 10, "the same tar again adds almost nothing"
    assert json.loads((records / "hermes.good.json").read_text()) == record
    assert stat.S_IMODE((records / "hermes.last.json").stat().st_mode) == 0o600
    assert stat.S_IMODE(records.stat().st_mode) == 0o700
    listed = subprocess.run([str(tmp_path / "hermes-infra-restic"), "snapshots", "--json"], env=extra["env"],
                            capture_output=True, text=True, timeout=60)
    snaps = offsite_cmd.parse_snapshots(listed.stdout)
    # keep_daily: two runs on one day leave one snapshot, the newer (forget --prune ran)
    assert [s.profile for s in snaps] == ["hermes"] and {s.host for s in snaps} == {"web1"}
    assert snaps[0].id.startswith(record["snapshot"]) and snaps[0].source == "scheduled"
    dumped = subprocess.run([str(tmp_path / "hermes-infra-restic"), "dump", snaps[-1].id, "/hermes.tar"],
                            env=extra["env"], capture_output=True, timeout=60)
    assert dumped.stdout == tar.read_bytes(), "restic dump gives back the very tar"
    assert PASSWORD not in (records / "hermes.restic.log").read_text()


@pytest.mark.skipif(shutil.which("restic") is None, reason="restic is not installed (setup.sh installs it)")
def test_a_wrong_password_fails_the_upload_and_is_recorded_as_failed(tmp_path):
    settings = settings_with(rest())
    upload, extra = _local_upload(tmp_path, settings)
    tar = tmp_path / "data.tar"
    tar.write_bytes(_plain_tar(tmp_path))
    assert subprocess.run([str(upload), "hermes", "manual", str(tar)], env=extra["env"], capture_output=True,
                          timeout=120).returncode == 0
    (tmp_path / "conf" / "password").write_text("another-password-Q8vT2mZp9\n")
    done = subprocess.run([str(upload), "hermes", "manual", str(tar)], env=extra["env"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1
    record = json.loads((tmp_path / "records" / "hermes.last.json").read_text())
    assert record["result"] == "failed" and "could not be opened or created" in record["message"]
    assert json.loads((tmp_path / "records" / "hermes.good.json").read_text())["result"] == "success"
    # a missing tar and an unknown profile are refused
    assert subprocess.run([str(upload), "hermes", "manual", str(tmp_path / "nope")], env=extra["env"],
                          capture_output=True, timeout=60).returncode == 1
    assert subprocess.run([str(upload), "../x", "manual", str(tar)], env=extra["env"],
                          capture_output=True, timeout=60).returncode == 2


# ----------------------------------------------------------------------------- the plan and operation, faked facts
def _plan(off: dict | None, facts=None):
    from tests.unit.hostfakes import fresh, plan_for

    raw = {"scheduled_backups": {"schedule": "daily", **({"offsite": off} if off else {})}}
    chosen = settings_from_raw(collect([raw]))
    return plan_for(chosen, facts or fresh()), chosen


def test_a_fresh_host_gets_restic_and_the_files_secrets_marked():
    from hermes_infra.operations.files import root_file
    from tests.unit.hostfakes import run_op

    plan, _ = _plan(s3())
    wanted = plan.offsite
    assert wanted.wanted and wanted.package_missing and "restic" in plan_for_packages()
    secret = {f.path for f in wanted.files if f.secret}
    assert secret == {offsite.ENV_FILE, offsite.PASSWORD_FILE}
    assert {f.path: f.mode for f in wanted.files}[offsite.ENV_FILE] == "0600"
    env = next(f for f in wanted.files if f.path == offsite.ENV_FILE)
    assert AWS_SECRET not in repr(env), "RootFilePlan never shows its content"
    written = run_op(root_file, env, plan.writer)
    assert any("install -m 0600 -o 0 -g 0" in c for c in written.commands)
    assert not any(s in c for c in written.commands for s in SECRETS), "secrets travel as an upload, not a command"


def plan_for_packages() -> tuple[str, ...]:
    from hermes_infra.plan.hostplan import fact_request

    return fact_request(settings_with(s3())).packages


def test_a_converged_host_changes_nothing_and_a_drifted_file_is_rewritten():
    from hermes_infra.operations.files import root_file
    from hermes_infra.operations.offsite import offsite_removed
    from tests.unit.hostfakes import fresh, root_file as fact, run_op, with_state

    plan, _ = _plan(s3())
    files = {f.path: fact(f.content, f.mode) for f in plan.offsite.files}
    facts = with_state(fresh(), root_files=files, packages={"restic": "installed"})
    again, _ = _plan(s3(), facts)
    assert not again.offsite.package_missing
    assert all(not run_op(root_file, f, again.writer).changed for f in again.offsite.files)
    assert not run_op(offsite_removed, again.offsite).changed
    # drifted: the password file readable by others, the env file edited
    files[offsite.PASSWORD_FILE] = fact(PASSWORD + "\n", "0644")
    files[offsite.ENV_FILE] = fact("RESTIC_REPOSITORY=s3:https://elsewhere/b\n", "0600")
    drifted, _ = _plan(s3(), with_state(fresh(), root_files=files, packages={"restic": "installed"}))
    by_path = {f.path: run_op(root_file, f, drifted.writer) for f in drifted.offsite.files}
    assert by_path[offsite.PASSWORD_FILE].commands == [f"chown 0:0 {offsite.PASSWORD_FILE} && chmod 0600 "
                                                       f"{offsite.PASSWORD_FILE}"]
    assert by_path[offsite.ENV_FILE].changed and not by_path[offsite.UPLOAD].changed


def test_when_the_setting_leaves_the_password_credentials_and_scripts_leave_the_host():
    from hermes_infra.operations.offsite import offsite_removed
    from tests.unit.hostfakes import fresh, root_file as fact, run_op, with_state

    plan, _ = _plan(s3())
    files = {f.path: fact(f.content, f.mode) for f in plan.offsite.files}
    gone, _ = _plan(None, with_state(fresh(), root_files=files, packages={"restic": "installed"}))
    assert gone.offsite.files == () and not gone.offsite.package_missing
    [command] = run_op(offsite_removed, gone.offsite).commands
    for path in (*offsite.PATHS, offsite.CACHE_DIR):
        assert path in command
    never, _ = _plan(None)
    assert not run_op(offsite_removed, never.offsite).changed
