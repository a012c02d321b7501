"""`hermes-infra smoke` on the deployed VM (issue 19 item 3): one real chat turn through the
gateway, against the scripted provider of test_chat.py (run on the VM, refusing a wrong key).

Without a provider smoke fails and says what to check; with the right key it prints the
provider's answer and the latencies, and neither key appears in its output; with a wrong key
(Hermes answers 200 and marks the turn failed) it fails. Two deploys; the provider fixture puts
the VM back to its bootstrapped state at the end."""
from __future__ import annotations

import json
import secrets

from tests.e2e.test_chat import HERMES, model, provider, requests_seen  # noqa: F401 - the fixture
from tests.e2e.test_daytwo import cli


def smoke(deployed, *args: str) -> tuple[int, dict, str]:
    run = cli(deployed, "smoke", "--json", *args, timeout=600)
    return run.returncode, json.loads(run.stdout), run.stdout + run.stderr


def test_smoke_without_a_provider_fails_and_says_what_to_check(deployed):
    code, report, _ = smoke(deployed)
    [gateway] = report["gateways"]
    assert code == 1 and not gateway["ok"] and gateway["code"] == "500", report
    assert "No inference provider configured" in gateway["problem"] and "HI-API-005" in gateway["problem"]


def test_smoke_gets_the_providers_answer_and_times_it(deployed, provider):
    run = deployed.deploy(gateways=[{**HERMES, "config": model(provider)}])
    assert run.returncode == 0, run.output[-4000:]
    before = len(requests_seen(deployed))
    timings = []
    for turn in ("first", "second"):
        code, report, output = smoke(deployed, "--message", f"ping {turn}")
        [gateway] = report["gateways"]
        assert code == 0 and gateway["ok"] and gateway["answer"] == f"pong: ping {turn}", report
        assert 0 < gateway["first_byte_seconds"] <= gateway["total_seconds"], gateway
        assert provider not in output and deployed.api_key() not in output
        timings.append((gateway["first_byte_seconds"], gateway["total_seconds"]))
    chats = [entry for entry in requests_seen(deployed)[before:] if entry["path"] == "/v1/chat/completions"]
    assert chats and all(entry["key_ok"] and entry["status"] == 200 for entry in chats), chats
    print(f"[timing] smoke turns (first byte, total): first {timings[0]}, second {timings[1]}")


def test_smoke_with_a_wrong_provider_key_fails(deployed, provider):
    run = deployed.deploy(gateways=[{**HERMES, "config": model(secrets.token_hex(20))}])
    assert run.returncode == 0, run.output[-4000:]
    code, report, _ = smoke(deployed, "--message", "ping wrong")
    [gateway] = report["gateways"]
    assert code == 1 and gateway["code"] == "200" and "marks the turn failed" in gateway["problem"], report
