"""Scheduled backups: the host script and units, and restoring a scheduled archive."""
from __future__ import annotations

import hashlib
import subprocess

import pytest

from hermes_infra.daytwo import backup, schedule
from hermes_infra.daytwo.remote import DayTwoError

from tests.unit.daytwo_fakes import FakeRemote, host
from tests.unit.test_daytwo_backup import make_data_tar


def test_script_archives_as_the_owner_and_keeps_n(tmp_path):
    settings = host(gateways=[{"name": "hermes"}, {"name": "work", "api": {"port": 8643}}]).settings
    text = schedule.script_text(settings, ["hermes", "work"], keep=4)
    script = tmp_path / "s.sh"
    script.write_text(text)
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    assert text.count("setpriv --reuid=10000 --regid=10000 --clear-groups -- tar --numeric-owner") == 2
    assert "cd -P -- /root/.hermes-work" in text and "[ ! -L /root/.hermes ]" in text
    assert "tail -n +5" in text and "/var/backups/hermes-infra/scheduled" in text
    assert "umask 077" in text and "API_SERVER_KEY" not in text
    only = schedule.script_text(settings, ["work"], keep=4)
    assert "profile hermes\n" not in only and "profile work" in only


def test_install_validates_the_calendar_and_enables_the_timer():
    settings = host().settings
    command = schedule.install_command(settings, ["hermes"], "*-*-* 03:30", 7)
    assert "systemd-analyze calendar '*-*-* 03:30'" in command
    assert "systemctl enable --now hermes-infra-backup.timer" in command
    assert "OnCalendar=*-*-* 03:30" in schedule.units("*-*-* 03:30")[schedule.TIMER]
    with pytest.raises(DayTwoError, match="calendar"):
        schedule.install_command(settings, ["hermes"], "daily; rm -rf /", 7)
    remote = FakeRemote(lambda c: "Sat 2026-11-22 03:30:00 UTC  6h left\n")
    said = []
    assert schedule.schedule([host()], None, "daily", 7, say=said.append, remote_for=lambda h: remote) == 0
    assert "newest 7 kept" in said[0]
    assert schedule.schedule([host()], None, None, 7, say=said.append, remote_for=lambda h: remote) == 0
    assert "systemctl disable --now hermes-infra-backup.timer" in remote.commands[-1]


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
