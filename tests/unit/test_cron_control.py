"""HI-AGT-001: every cron job the settings declare exists in Hermes and is enabled (or paused as
set), read from `cron/jobs.json` as the data dir's owner."""
from __future__ import annotations

import base64
import json

from hermes_infra.host.safeio import MARK
from hermes_infra.settings.schema import HostSettings
from tests.unit.test_checks_controls import FakeHost, Out, context, outcome

REGULAR = "regular file|77|1|10000|10000|600"


def jobs_read(jobs=None, kind: str = REGULAR) -> str:
    """stdout of safeio.read_script for cron/jobs.json."""
    if jobs is None:
        return f"{MARK} dir jobs\npresent\n{MARK} file jobs cron/jobs.json\nmissing|0|0|0|0|0\n\nmissing|0|0|0|0|0\n"
    encoded = base64.b64encode(json.dumps({"jobs": jobs}).encode()).decode() if kind == REGULAR else ""
    return f"{MARK} dir jobs\npresent\n{MARK} file jobs cron/jobs.json\n{kind}\n{encoded}\n{kind}\n"


def managed(**fields) -> dict:
    return {"id": "a1b2c3d4e5f6", "name": "hermes-infra/brief", "prompt": "Say hello", "deliver": "local",
            "schedule": {"kind": "interval", "minutes": 1}, "enabled": True, "state": "scheduled",
            "last_run_at": "2026-12-02T00:01:00", "last_status": "ok", **fields}


def run(jobs=None, kind=REGULAR, settings=None):
    settings = settings or HostSettings(gateways=[{"cron": [{"name": "brief", "schedule": "every 1m",
                                                             "prompt": "Say hello"}]}])
    host = FakeHost({"stat -c %F": Out(0, "directory\n"), "cron/jobs.json": Out(0, jobs_read(jobs, kind))})
    result = outcome("HI-AGT-001", context(settings, host=host))
    return result, host


def test_a_present_enabled_job_passes_with_its_last_run():
    result, host = run([managed(), {"id": "ffffffffffff", "name": "my own", "enabled": False}])
    assert result.status == "passed" and "hermes-infra/brief (last run 2026-12-02T00:01:00, ok)" in result.message
    assert any("setpriv --reuid=10000" in command for command in host.commands)


def test_a_missing_paused_or_changed_job_fails_and_says_which():
    result, _ = run([{"id": "ffffffffffff", "name": "my own"}])
    assert (result.status, result.message) == ("failed", "hermes-infra/brief is missing")
    result, _ = run([managed(enabled=False, state="paused")])
    assert result.status == "failed" and "is paused, want enabled" in result.message
    result, _ = run([managed(schedule={"kind": "interval", "minutes": 5})])
    assert result.status == "failed" and "differs from the settings: schedule" in result.message
    result, _ = run(None)
    assert result.status == "failed" and "missing" in result.message


def test_a_planted_job_store_fails_without_being_followed():
    result, _ = run([], kind="symbolic link|77|1|10000|10000|777")
    assert result.status == "failed" and "not a regular file (symlink)" in result.message


def test_a_gateway_without_cron_settings_has_no_such_check():
    """Not a "not applicable" line in every report: no instance at all (like companions' controls)."""
    from hermes_infra.checks.context import subjects_for
    assert subjects_for("scheduled", HostSettings()) == []
