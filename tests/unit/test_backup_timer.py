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
    assert text.count("setpriv --reuid=10000 --regid=10000 --clear-groups -- tar --numeric-owner") == 2
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
