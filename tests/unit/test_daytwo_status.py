"""`status`: one read-only command per host, parsed into rows; JSON and text rendering."""
from __future__ import annotations

import json

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
        f"{S} health hermes", json.dumps({"status": "ok", "platform": "hermes-agent", "version": "0.19.0"}), health_code,
        f"{S} detailed hermes", json.dumps(DETAILED), "200",
    ]) + "\n"


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
