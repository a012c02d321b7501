"""Ready, not just alive: `/health/detailed` (Hermes 0.19.0's shape, as measured) read by
meaning in `status`, its HTML page, the HI-API-005 control and the deploy's gate with
`health.require_ready`."""
from __future__ import annotations

import json
import subprocess
import sys

from hermes_infra.checks.results import exit_code
from hermes_infra.daytwo import status
from hermes_infra.daytwo.report_html import render_status_html
from hermes_infra.host import readiness
from hermes_infra.operations import health
from hermes_infra.plan.hostplan import DataDirRequest
from tests.unit import test_daytwo_status as status_fakes
from tests.unit.daytwo_fakes import host
from tests.unit.hostfakes import converged, plan_for, settings
from tests.unit.test_checks_controls import REGULAR_ENV, context, facts_of, gateway_record, outcome

CHECKS_OK = {"state_db": {"status": "ok"}, "config": {"status": "ok"}, "model": {"status": "ok"},
             "disk": {"status": "ok", "used_percent": 9.9, "free_bytes": 82092986368},
             "gateway": {"status": "ok", "state": "running", "connected_platforms": 1, "platforms": 1},
             "background_queues": {"status": "ok", "active_api_runs": 0}}
# /health/detailed of hermes-agent 0.19.0 without and with a model provider (measured; trimmed).
DEGRADED = {"status": "degraded", "readiness": {"status": "degraded", "checks": {**CHECKS_OK, "model": {"status": "degraded"}}},
            "platform": "hermes-agent", "version": "0.19.0", "gateway_state": "running"}
READY = {"status": "ok", "readiness": {"status": "ok", "checks": CHECKS_OK}, "platform": "hermes-agent",
         "version": "0.19.0", "gateway_state": "running"}


def test_the_0_19_0_bodies_read_as_not_ready_model_and_ready():
    degraded = readiness.parse(json.dumps(DEGRADED))
    assert (degraded.status, degraded.ready, degraded.failing, degraded.failing_names) == (
        "degraded", False, ("model: degraded",), ("model",))
    ready = readiness.parse(json.dumps(READY))
    assert ready.ready and ready.failing == ()


def test_a_hostile_or_broken_body_is_data_never_structure():
    hostile = readiness.parse(json.dumps({"status": "ok\x1b[2J", "readiness": {"checks": {"x\x1b]0;": "bad\x07"}}}))
    assert not hostile.ready and "\x1b" not in hostile.status and all("\x1b" not in c and "\x07" not in c
                                                                          for c in hostile.failing)
    for body in ("", "not json", "[1, 2]", '{"status": 5}', "[" * 100000):
        assert readiness.parse(body).status is None and not readiness.parse(body).ready


def _report(detailed: dict):
    status_fakes.DETAILED = detailed  # sample_output reads the module global
    try:
        return status.StatusReport([status.parse_status(host(), status_fakes.sample_output())],
                                   started=__import__("datetime").datetime(2026, 12, 1), seconds=1.0)
    finally:
        status_fakes.DETAILED = ORIGINAL


ORIGINAL = status_fakes.DETAILED


def test_status_says_healthy_not_ready_model_and_points_at_the_provider_setting():
    report = _report(DEGRADED)
    g = report.hosts[0].gateways[0]
    assert g.healthy and not g.ready and g.verdict == "healthy, not ready: model"
    text = status.render_text(report)
    assert "hermes: healthy, not ready: model" in text and "NOT READY (model)" in text
    assert "gateways[].config.model" in text and "1/1 gateways healthy, 0/1 ready" in text
    assert report.exit_code == 0, "alive is what the exit code stands for"
    gateway = status.to_json(report)["hosts"][0]["gateways"][0]
    assert (gateway["healthy"], gateway["ready"], gateway["verdict"]) == (True, False, "healthy, not ready: model")
    page = render_status_html(report)
    assert "HEALTHY, NOT READY" in page and "0/1 ready" in page and "config.model" in page


def test_status_of_a_ready_gateway():
    report = _report(READY)
    g = report.hosts[0].gateways[0]
    assert g.ready and g.verdict == "healthy, ready"
    assert "1/1 gateways healthy, 1/1 ready" in status.render_text(report)
    page = render_status_html(report)
    assert "HEALTHY</span>" in page and "NOT READY" not in page


def _ready_ctx(code: str, body: dict | str):
    ctx = context(record=gateway_record())
    ctx.require_access = lambda directory: None
    text = body if isinstance(body, str) else json.dumps(body)
    ctx.authed_body = lambda gateway, path: (facts_of(REGULAR_ENV), code, text if path == "/health/detailed" else "")
    return ctx


def test_the_readiness_control_warns_for_a_degraded_gateway_and_does_not_fail_the_run():
    result = outcome("HI-API-005", _ready_ctx("200", DEGRADED))
    assert result.status == "warning" and "healthy, not ready: model" in result.message
    assert exit_code([result]) == 0
    assert "config.model" in result.control.remediation
    assert outcome("HI-API-005", _ready_ctx("200", READY)).status == "passed"
    assert outcome("HI-API-005", _ready_ctx("200", "<html>")).status == "warning"
    assert outcome("HI-API-005", _ready_ctx("notrunning", "")).status == "error"


def test_the_readiness_probe_sends_the_key_through_a_pipe_to_the_containers_address():
    ctx = context(record=gateway_record())
    sent = []
    ctx.run = lambda command, **kwargs: sent.append(command) or type("Out", (), {"stdout": "", "rc": 1, "stderr": ""})()
    try:
        ctx.authed_body(ctx.settings.gateways[0], "/health/detailed")
    except Exception:  # noqa: BLE001 - the fake host answers nothing; the command is what is checked
        pass
    command = sent[0]
    assert "-H @-" in command and '"$hi_api"' in command and "base64 -w0" in command and "/health/detailed" in command


DATA = DataDirRequest(directory="/root/.hermes", uid=10000, gid=10000, label="hermes")


def test_the_gate_waits_for_ready_only_when_asked():
    plain = health.gate_script("http://127.0.0.1:8642", "hermes", DATA, 300, 2)
    assert "/health/detailed" not in plain
    ready = health.gate_script("http://127.0.0.1:8642", "hermes", DATA, 300, 2, require_ready=True)
    assert ready.startswith(plain.rsplit("\n", 1)[0]) and "/health/detailed" in ready and "-H @-" in ready
    assert "alive but not ready" in ready and "config.model" in ready


def _verdict(body: str) -> str:
    done = subprocess.run([sys.executable, "-c", health.READY_VERDICT], input=body, capture_output=True, text=True,
                          timeout=10, check=True)
    return done.stdout.strip()


def test_the_gate_reads_the_body_by_meaning_and_prints_only_safe_words():
    assert _verdict(json.dumps(READY)) == "ok"
    assert _verdict(json.dumps(DEGRADED)) == "not-ready:degraded:model"
    assert _verdict("garbage") == "unreadable" and _verdict("[]") == "unreadable"
    hostile = _verdict(json.dumps({"status": "\x1b[31mok", "readiness": {"checks": {"$(reboot)\x1b": {}}}}))
    assert set(hostile) <= set("abcdefghijklmnopqrstuvwxyz0123456789_?:,-") and hostile != "ok"


def test_require_ready_is_a_setting_and_always_runs_the_gate():
    host_settings = settings(health={"require_ready": True})
    plan = plan_for(host_settings, converged(host_settings))
    assert plan.health[0].require_ready and plan.health[0].gate_needed
    default = settings()
    assert not plan_for(default, converged(default)).health[0].gate_needed
