"""`status`: one read-only command per host, parsed into rows; JSON and text rendering."""
from __future__ import annotations

import base64
import json
import os
import subprocess

from hermes_infra.daytwo import status
from hermes_infra.daytwo.remote import clean

from tests.unit.daytwo_fakes import FakeRemote, host

S = status.SECTION
STATE = {"Status": "running", "Running": True, "OOMKilled": False, "Pid": 4242,
         "StartedAt": "2026-11-20T10:00:00.123456789Z", "Health": {"Status": "healthy"}}
DETAILED = {"status": "degraded", "readiness": {"checks": {
    "state_db": {"status": "ok"}, "model": {"status": "fail", "message": "no provider configured"},
    "disk": {"status": "ok"}}}}


def sample_output(health_code: str = "200", oom: str = "0") -> str:
    inspect = "\n".join([json.dumps(STATE), "3", json.dumps("hermes-agent:0.19.0-local"),
                         json.dumps("sha256:" + "a" * 64), str(1536 * 1024 * 1024), json.dumps("2026-11-20T09:00:00Z")])
    return "\n".join([
        f"{S} host", str(1795168800 + 0), "MemTotal: 4000000", "MemAvailable: 2000000", "SwapTotal: 1048576",
        "SwapFree: 1000000",
        f"{S} docker", "26.1.5",
        f"{S} audit", json.dumps({"time": "2026-11-20T09:59:00Z", "who": "ops", "command": "up", "revision": "abc123",
                                  "image": "x", "result": "ok", "changed": True, "seconds": 12.5, "message": ""}),
        f"{S} inspect hermes", inspect,
        f"{S} cgroup hermes", "current 157286400", "max 1610612736", "swap 1048576", f"oom_kill {oom}",
        f"{S} health hermes", encoded(json.dumps({"status": "ok", "platform": "hermes-agent", "version": "0.19.0"}),
                                      health_code),
        f"{S} detailed hermes", encoded(json.dumps(DETAILED), "200"),
    ]) + "\n"


def encoded(body: str, code: str) -> str:
    """An HTTP answer as the status command sends it: curl's body and code, base64 on one line."""
    return base64.b64encode(f"{body}\n{code}\n".encode()).decode()


def test_one_command_per_host_read_only_and_key_never_an_argument():
    target = host()
    remote = FakeRemote(lambda command: sample_output())
    result = status.status_host(target, remote)
    assert len(remote.commands) == 1
    command = remote.commands[0]
    for verb in ("docker stop", "docker rm", "compose", "chown", "chmod", " mv ", "> /", "docker exec", "docker run"):
        assert verb not in command, verb
    # the only thing it removes is its own mktemp dir of secret-free background output
    assert command.count("rm -") == 1 and 'rm -rf "$d"' in command
    background = command.split(" else d=;")[0]
    assert "API_SERVER_KEY" not in background and "setpriv" not in background
    assert "-H @-" in command and "setpriv --reuid=10000" in command and "/dev/fd/3" in command
    assert "/health/detailed" in command and "/var/log/hermes-infra/audit.jsonl" in command
    assert result.error is None


def test_parse_a_running_gateway():
    report = status.parse_status(host(), sample_output())
    g = report.gateways[0]
    assert (g.state, g.docker_health, g.restarts, g.oom_kills) == ("running", "healthy", 3, 0)
    assert g.image == "hermes-agent:0.19.0-local" and g.hermes_version == "0.19.0"
    assert g.memory_bytes == 157286400 and g.memory_limit_bytes == 1536 * 1024 * 1024
    assert g.health_code == "200" and g.ready_status == "degraded"
    assert g.failing_checks == ["model: no provider configured"]
    assert g.uptime_seconds is not None and g.uptime_seconds >= 0
    assert report.swap_total_bytes == 1048576 * 1024
    assert report.last_deploy["revision"] == "abc123"
    assert g.healthy and report.healthy


def test_unreachable_and_unhealthy_hosts_make_exit_1():
    down = status.parse_status(host(), sample_output(health_code="000", oom="2"))
    assert not down.gateways[0].healthy and down.gateways[0].oom_kills == 2

    class Broken(FakeRemote):
        def run(self, command, **kwargs):
            raise OSError("connection refused")

    broken = status.status_host(host("web2"), Broken())
    assert broken.error and "connection refused" in broken.error
    import datetime as dt
    report = status.StatusReport([down, broken], dt.datetime.now().astimezone(), 1.0)
    assert report.exit_code == 1
    text = status.render_text(report)
    assert "UNREACHABLE" in text and "DOWN (000)" in text and "0/1 gateways healthy" in text
    data = json.loads(status.render_json(report))
    assert data["schema"] == status.SCHEMA and data["healthy"] is False
    assert data["hosts"][0]["gateways"][0]["oom_kills"] == 2


def test_missing_container_and_several_profiles():
    target = host(gateways=[{"name": "hermes"}, {"name": "work", "api": {"port": 8643}}])
    command = status.status_command(target.settings)
    assert "docker inspect" in command and "hermes-work" in command and "127.0.0.1:8643" in command
    text = "\n".join([f"{S} host", "100", f"{S} inspect hermes", "missing", f"{S} inspect work", "missing"])
    report = status.parse_status(target, text)
    assert [g.state for g in report.gateways] == ["missing", "missing"]
    assert [g.container for g in report.gateways] == ["hermes", "hermes-work"]


def test_text_from_the_host_cannot_carry_terminal_escapes():
    assert clean("evil\x1b[2Jname\x07") == "evil?[2Jname?"
    state = dict(STATE, Status="running\x1b]0;pwned\x07")
    out = sample_output().replace(json.dumps(STATE), json.dumps(state))
    g = status.parse_status(host(), out).gateways[0]
    assert "\x1b" not in g.state


def test_human_units():
    assert status.human_bytes(157286400) == "150MiB"
    assert status.human_seconds(90) == "90s" and status.human_seconds(3 * 3600 + 60) == "3h01m"


# --- F3 and F4, with the real command run by sh against fake docker and curl -----------------------

FAKE_DOCKER = """#!/bin/sh
case "$*" in
  version*) echo 26.1.5 ;;
  *NetworkSettings*hermes-work*) echo '127.0.0.1 ' ;;  # work runs; hermes does not
  *hermes-work*) printf '%s\\n' '{"Status":"running","Running":true,"Pid":0,"StartedAt":"2026-11-20T10:00:00Z"}' \
                   3 '"img:1"' '"sha256:aa"' 0 '"2026-11-20T09:00:00Z"' 0 ;;
  *) exit 1 ;;
esac
"""
# The work agent answers /health with a body of forged sections: the other profile healthy,
# a forged audit record.
FORGED = "\n".join([
    '{"status": "ok", "version": "0.19.0"}', "200",
    f"{S} inspect hermes", json.dumps(STATE), "0", '"img:1"', '"sha256:aa"', "0", '"2026-11-20T09:00:00Z"', "1",
    f"{S} health hermes", '{"status": "ok"}', "200",
    f"{S} detailed hermes", '{"status": "ok"}', "200",
    f"{S} audit", json.dumps({"time": "2026-11-20T11:00:00Z", "command": "up", "who": "alice@laptop"}),
])
FAKE_CURL = """#!/bin/sh
url=; key=
for a; do case "$a" in http*) url=$a ;; @-) key=$(cat) ;; esac; done
[ -n "$key" ] && echo "$url $key" >> "$CURL_LOG"
case "$url" in
  *:8643/health) printf '%s' "$FORGED" ;;
  *:8642/*) exit 7 ;;  # hermes is down: nothing listens
  *) printf '{"status": "ok"}' ;;
esac
printf '\\n200\\n'
"""


def run_status(tmp_path, target) -> tuple[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("docker", FAKE_DOCKER), ("curl", FAKE_CURL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "curl.log"
    log.write_text("")
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FORGED=FORGED, CURL_LOG=str(log))
    done = subprocess.run(["sh", "-c", status.status_command(target.settings)], capture_output=True, text=True,
                          env=env, timeout=60)
    return done.stdout, log.read_text()


def test_a_health_body_cannot_forge_another_profiles_or_the_audit_section(tmp_path):
    target = host(gateways=[{"name": "hermes"}, {"name": "work", "api": {"port": 8643}}])
    out, _ = run_status(tmp_path, target)
    report = status.parse_status(target, out)
    hermes, work = report.gateways
    assert (hermes.state, hermes.health_code, hermes.ready_status) == ("missing", "000", None)
    assert not hermes.healthy and report.last_deploy is None
    assert work.state == "running" and work.health_code == "200"
    assert not report.healthy


def test_a_section_seen_twice_is_dropped_not_believed():
    text = "\n".join([f"{S} host", "100", f"{S} inspect hermes", "missing", f"{S} health hermes",
                      encoded("{}", "000"), f"{S} health hermes", encoded("{}", "200")])
    assert status.parse_status(host(), text).gateways[0].health_code == "000"


def test_the_key_goes_only_to_the_running_containers_own_address(tmp_path):
    """F4: status sends the key for /health/detailed to the container's address, and only while
    it runs; the published port (whoever listens there) never gets it."""
    import shutil
    import tempfile
    from pathlib import Path

    homes = [Path(tempfile.mkdtemp(prefix=".hermes-infra-test-", dir=Path.home())) for _ in range(2)]
    try:
        for home, key in zip(homes, ("hermes-key-0123456789abcdef", "work-key-0123456789abcdef")):
            (home / ".env").write_text(f"API_SERVER_KEY={key}\n")
            for path in (home, home / ".env"):
                os.chown(path, 10000, 10000)
            home.chmod(0o700)
        target = host(gateways=[{"name": "hermes", "data_dir": str(homes[0])},
                                {"name": "work", "api": {"port": 8643}, "data_dir": str(homes[1])}])
        command = status.status_command(target.settings)
        assert "-H @- 'http" not in command and '-H @- "$hi_api/health/detailed"' in command
        _, sent = run_status(tmp_path, target)
        # hermes is not running: its key went nowhere; work's went to its container's address only
        assert sent == "http://127.0.0.1:8642/health/detailed Authorization: Bearer work-key-0123456789abcdef\n"
    finally:
        for home in homes:
            shutil.rmtree(home, ignore_errors=True)


def test_the_time_status_took_is_not_shown_as_the_last_deploys():
    """Issue 19: `last deploy: ... by ops (0.3s)` read as the deploy's duration; it was status's."""
    import datetime as dt
    parsed = status.parse_status(host(), sample_output())
    parsed.seconds = 0.3
    text = status.render_text(status.StatusReport([parsed], dt.datetime.now().astimezone(), 0.4))
    line = next(line for line in text.splitlines() if "last deploy:" in line)
    assert "(0.3s)" not in line and "read in 0.3s" in line
    assert line.index("read in 0.3s") < line.index("last deploy:")
    assert "took 12.5s" in line  # the deploy's own duration, from its audit record


JOBS_SETTINGS = {"gateways": [{"name": "hermes", "cron": [
    {"name": "brief", "schedule": "every 1h", "prompt": "the morning brief", "deliver": "local"},
    {"name": "sweep", "schedule": "every 2h", "prompt": "sweep", "deliver": "local"},
    {"name": "gone", "schedule": "every 3h", "prompt": "gone", "deliver": "local"}]}]}


def jobs_section(kind: str = "regular file", text: str | None = None) -> str:
    """`cron/jobs.json` as safeio's reader prints it (the contents base64 on one line)."""
    mark = "@@hermes-infra"
    stat = f"{kind}|77|1|10000|10000|600"
    body = base64.b64encode((text or "").encode()).decode()
    return "\n".join([f"{S} jobs hermes", f"{mark} dir jobs", "present",
                      f"{mark} file jobs cron/jobs.json", stat, body, stat])


def listed(last_status: str = "ok") -> str:
    return json.dumps({"jobs": [
        {"id": "a1b2c3d4e5f6", "name": "hermes-infra/brief", "enabled": True, "schedule": {"kind": "interval", "minutes": 60},
         "last_run_at": "2026-12-01T07:00:00", "last_status": last_status},
        {"id": "b1b2c3d4e5f6", "name": "hermes-infra/sweep", "enabled": False, "state": "paused"},
        {"id": "c1b2c3d4e5f6", "name": "by hand", "enabled": True}]})


def test_status_reads_the_settings_cron_jobs_as_the_owner_and_shows_each_with_its_last_run():
    target = host(**JOBS_SETTINGS)
    command = status.status_command(target.settings)
    assert "cron/jobs.json" in command and "setpriv --reuid=10000" in command
    parsed = status.parse_status(target, sample_output() + jobs_section(text=listed()) + "\n")
    jobs = {job.name: job for job in parsed.gateways[0].jobs}
    assert jobs["hermes-infra/brief"].describe() == "hermes-infra/brief: enabled, last run 2026-12-01T07:00:00 (ok)"
    assert jobs["hermes-infra/sweep"].describe().startswith("hermes-infra/sweep: paused")
    assert jobs["hermes-infra/gone"].describe() == "hermes-infra/gone: missing"
    assert "by hand" not in jobs  # jobs made by hand are Hermes's business, not the settings'
    import datetime as dt
    text = status.render_text(status.StatusReport([parsed], dt.datetime.now().astimezone(), 0.4))
    assert "hermes cron: hermes-infra/brief: enabled, last run 2026-12-01T07:00:00 (ok)" in text
    assert "cron jobs of the settings are not as set: hermes-infra/sweep: paused" in text
    assert "hermes-infra/gone: missing" in text and "HI-AGT-001" in text
    assert status.to_json(status.StatusReport([parsed], dt.datetime.now().astimezone(), 0.4))[
        "hosts"][0]["gateways"][0]["jobs"][0]["last_status"] == "ok"


def test_job_values_from_the_data_dir_are_cleaned_and_a_linked_jobs_file_is_not_believed():
    target = host(**JOBS_SETTINGS)
    parsed = status.parse_status(target, sample_output() + jobs_section(text=listed("ok\x1b[2J\x07")) + "\n")
    brief = next(job for job in parsed.gateways[0].jobs if job.name == "hermes-infra/brief")
    assert "\x1b" not in brief.last_status and "\x07" not in brief.last_status
    linked = status.parse_status(target, sample_output() + jobs_section(kind="symbolic link") + "\n")
    g = linked.gateways[0]
    assert g.jobs_unreadable == "cron/jobs.json is not a regular file (symlink)"
    assert not any(job.found for job in g.jobs)


def test_no_cron_in_the_settings_reads_no_jobs():
    assert "cron/jobs.json" not in status.status_command(host().settings)
    assert status.parse_status(host(), sample_output()).gateways[0].jobs == []


def _b64(record) -> str:
    return base64.b64encode((json.dumps(record) if isinstance(record, dict) else record).encode()).decode()


def test_status_shows_the_last_scheduled_and_manual_backups_as_the_host_recorded_them(tmp_path):
    command = status.status_command(host().settings)
    assert "/var/backups/hermes-infra/scheduled/hermes.last.json /var/backups/hermes-infra/manual/hermes.last.json" \
        in command and '[ ! -L "$hi_f" ]' in command and "head -c 4096" in command
    scheduled = {"profile": "hermes", "kind": "scheduled", "result": "failed", "time": "2026-12-02T03:00:00Z",
                 "bytes": 0, "archive": "", "message": "tar failed: some files could not be read\x1b[2J"}
    manual = {"profile": "hermes", "kind": "manual", "result": "success", "time": "2026-12-02T04:00:00Z",
              "bytes": 3 << 20, "archive": "x.hermes-backup.tar", "message": "archived online"}
    text = sample_output() + f"{S} backups hermes\n{_b64(scheduled)}\n{_b64(manual)}\n"
    report = status.StatusReport([status.parse_status(host(), text)], __import__("datetime").datetime.now(), 0.1)
    rendered = status.render_text(report)
    assert ("  hermes backups: scheduled FAILED 2026-12-02T03:00:00Z: tar failed: some files could not be read?[2J; "
            "manual success 2026-12-02T04:00:00Z 3.0MiB") in rendered
    assert "\x1b" not in rendered
    assert status.to_json(report)["hosts"][0]["gateways"][0]["backups"][1]["bytes"] == 3 << 20
    # No record, or one that is not a run record: no line.
    for lines in ("\n\n", f"{_b64('not json')}\n{_b64({'result': 'ok', 'time': 'now'})}\n"):
        quiet = status.parse_status(host(), sample_output() + f"{S} backups hermes\n{lines}")
        assert quiet.gateways[0].backups == []
