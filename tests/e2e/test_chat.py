"""The agent answers (issue 19): a chat through the deployed gateway reaches a model provider
with the right key, and a hub in each topology gets the provider's answer through its gateway.

`hermes-infra smoke` (one real chat turn per gateway, timed) is proven here too, on the same
deploys: failing without a provider, answering with the right key, failing with a wrong one.

The provider is `scripted_provider.py`, run ON the VM (never outside this machine and its VMs),
bound to the docker bridge's address 172.17.0.1 so containers reach it as
`host.docker.internal` (every service has `extra_hosts: host-gateway`). It refuses any key but
the one it was given, so a gateway sending `no-key-required` (Hermes's default for a custom
endpoint without `model.api_key`) fails here. Two deploys that recreate the gateway: one with
the provider and both hubs, one with a wrong key. The VM is put back as it was at the end.
"""
from __future__ import annotations

import base64
import json
import secrets
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO
from tests.e2e.test_bootstrap import inspect
from tests.e2e.test_profiles import container_env, hub

BRIDGE = "172.17.0.1"
PORT = 18080
WORK = "/root/scripted-provider"
LOG = f"{WORK}/requests.jsonl"
API = "http://127.0.0.1:8642"
HERMES = {"name": "hermes", "limits": {"memory": "1G", "cpus": 1}}
CODER = {"name": "coder", "api": {"port": 8643}, "limits": {"memory": "768M", "cpus": 0.5}}
SCRIPT = Path(__file__).with_name("scripted_provider.py")

# A chat completion from inside a hub, with what the hub's own env says (URL, key, model).
HUB_CHAT = (
    "import json, os, sys, urllib.request\n"
    "body = json.dumps({'model': os.environ['HERMES_MODEL'], 'messages': [{'role': 'user', 'content': sys.argv[1]}]})\n"
    "req = urllib.request.Request(os.environ['HERMES_API_BASE_URL'] + '/chat/completions', data=body.encode(),\n"
    "    headers={'Content-Type': 'application/json', 'Authorization': 'Bearer ' + os.environ['HERMES_API_KEY']})\n"
    "print(json.loads(urllib.request.urlopen(req, timeout=240).read())['choices'][0]['message']['content'])\n"
)


def model(key: str) -> dict:
    return {"model": {"provider": "custom", "default": "scripted-model",
                      "base_url": f"http://host.docker.internal:{PORT}/v1", "api_key": key}}


def start_provider(deployed, key: str) -> int:
    """Copy the script and the key (0600) to the VM, start it detached, wait until it answers."""
    script = base64.b64encode(SCRIPT.read_bytes()).decode()
    deployed.run(f"command -v python3 >/dev/null || {{ echo 'the VM has no python3 for the provider' >&2; exit 1; }}; "
                 f"umask 077; mkdir -p {WORK} && echo {script} | base64 -d > {WORK}/provider.py && "
                 f"printf %s {shlex.quote(key)} > {WORK}/key && : > {LOG}")
    # In a subshell, so the SSH command's own shell does not take it down at the end; its pid is
    # the provider's own (the `sh` execs python3). The wait runs on the VM, not one SSH per try:
    # a Python start under emulation, on a VM busy with its gateway, takes seconds. The log then
    # starts empty: the wait's own keyless probe is not Hermes's.
    started = deployed.run(
        f"cd {WORK} && (setsid nohup sh -c 'echo $$ > pid; exec python3 provider.py --host {BRIDGE} --port {PORT} "
        f"--key-file {WORK}/key --log {LOG}' > {WORK}/stderr 2>&1 < /dev/null &); "
        f"for i in $(seq 1 240); do [ \"$(curl -s -o /dev/null -w '%{{http_code}}' http://{BRIDGE}:{PORT}/v1/models)\" "
        f"= 401 ] && {{ : > {LOG}; cat pid; exit 0; }}; sleep 0.5; done; echo 'the scripted provider did not start:' >&2; "
        f"cat stderr >&2; exit 1", timeout=240)
    return int(started.strip())


def stop_provider(deployed, pid: int) -> None:
    deployed.run(f"kill {pid} 2>/dev/null; for i in $(seq 1 20); do kill -0 {pid} 2>/dev/null || break; sleep 0.2; done; "
                 f"kill -0 {pid} 2>/dev/null && kill -9 {pid}; rm -rf {WORK}; true")
    assert deployed.run(f"ss -ltnH 'sport = :{PORT}' || true").strip() == "", "the provider is still listening"


def requests_seen(deployed) -> list[dict]:
    return [json.loads(line) for line in deployed.run(f"cat {LOG}").splitlines() if line.strip()]


def post(deployed, path: str, body: dict, key: str, url: str = API) -> str:
    """POST from the VM to the gateway's published port; the key goes through stdin (`-H @-`)."""
    header = f"printf 'Authorization: Bearer %s\\n' {shlex.quote(key)}"
    return deployed.run(f"{header} | curl -sN --max-time 240 -H @- -H 'Content-Type: application/json' "
                        f"--data-binary {shlex.quote(json.dumps(body))} {url}{path}")


def detailed_status(deployed, key: str) -> str:
    header = f"printf 'Authorization: Bearer %s\\n' {shlex.quote(key)}"
    return json.loads(deployed.run(f"{header} | curl -s --max-time 10 -H @- {API}/health/detailed"))["status"]


def chat_text(answer: str) -> str:
    return json.loads(answer)["choices"][0]["message"]["content"]


def streamed_text(answer: str) -> str:
    events = [line[len("data: "):] for line in answer.splitlines() if line.startswith("data: ")]
    assert events and events[-1] == "[DONE]", answer[-2000:]
    return "".join(json.loads(event)["choices"][0]["delta"].get("content") or ""
                   for event in events[:-1] if json.loads(event).get("choices"))


def responses_text(answer: str) -> str:
    body = json.loads(answer)
    return "".join(part.get("text", "") for item in body["output"] if item.get("type") == "message"
                   for part in item["content"])


@pytest.fixture(scope="module")
def provider(deployed):
    key = secrets.token_hex(20)
    pid = start_provider(deployed, key)
    try:
        yield key
    finally:
        stop_provider(deployed, pid)
        print(f"[timing] back to the bootstrapped state: {deployed.reset():.1f}s")


def smoke(deployed, *args: str, **sections) -> tuple[int, dict, str]:
    """`hermes-infra smoke --json ARGS TARGET`, the target carrying the settings deployed."""
    argv = [sys.executable, "-m", "hermes_infra", "smoke", "--json", *args, *deployed.target(**sections).cli_args()]
    run = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, stdin=subprocess.DEVNULL, timeout=600)
    return run.returncode, json.loads(run.stdout), run.stdout + run.stderr


def test_a_gateway_without_a_provider_is_alive_but_not_ready(deployed):
    assert deployed.http_status(f"{API}/health") == "200"
    assert detailed_status(deployed, deployed.api_key()) == "degraded"
    # smoke fails, and says what to check.
    code, report, _ = smoke(deployed)
    [gateway] = report["gateways"]
    assert code == 1 and not gateway["ok"] and gateway["code"] == "500", report
    assert "No inference provider configured" in gateway["problem"] and "HI-API-005" in gateway["problem"]


def test_chat_reaches_the_provider_with_its_key_and_hubs_in_both_topologies_get_the_answer(deployed, provider):
    companions = [hub(deployed, "hub-outside", gateway="hermes", topology="host-gateway"),
                  hub(deployed, "hub-inside", gateway="coder", topology="same-project")]
    both = {"gateways": [{**HERMES, "config": model(provider)}, {**CODER, "config": model(provider)}],
            "companions": companions}
    run = deployed.deploy(**both)
    assert run.returncode == 0, run.output[-4000:]
    assert provider not in run.output, "the provider key was printed by the deploy"
    assert provider not in deployed.run("cat /opt/hermes/compose.yaml /opt/hermes/companions/hub-outside/compose.yaml")
    assert deployed.run("grep -c '^  api_key: ' /root/.hermes/config.yaml").strip() == "1"
    assert provider not in deployed.run("cat /root/.hermes/.env"), "a custom endpoint's key belongs in config.yaml"
    key = deployed.api_key()
    assert detailed_status(deployed, key) == "ok"

    plain = {"model": "hermes-agent", "messages": [{"role": "user", "content": "ping plain"}]}
    assert chat_text(post(deployed, "/v1/chat/completions", plain, key)) == "pong: ping plain"
    streamed = {**plain, "stream": True, "messages": [{"role": "user", "content": "ping stream"}]}
    assert streamed_text(post(deployed, "/v1/chat/completions", streamed, key)) == "pong: ping stream"
    answer = post(deployed, "/v1/responses", {"model": "hermes-agent", "input": "ping responses"}, key)
    assert responses_text(answer) == "pong: ping responses"

    # The seed's "verify hub to Hermes": each hub calls its own gateway with the key in its env.
    assert container_env(deployed, "hub-outside")["HERMES_API_BASE_URL"] == "http://host.docker.internal:8642/v1"
    assert container_env(deployed, "hub-inside")["HERMES_API_BASE_URL"] == "http://hermes-coder:8642/v1"
    for name in ("hub-outside", "hub-inside"):
        said = deployed.run(f"docker exec {name} python3 -c {shlex.quote(HUB_CHAT)} {shlex.quote('hello from ' + name)}")
        assert said.strip() == f"pong: hello from {name}", said

    seen = requests_seen(deployed)
    chats = [entry for entry in seen if entry["path"] == "/v1/chat/completions"]
    assert len(chats) >= 5, seen  # plain, stream, responses, two hubs
    keyed = [entry for entry in seen if entry["path"] in ("/v1/chat/completions", "/v1/models")]
    assert all(entry["key_ok"] and entry["status"] == 200 for entry in keyed), keyed
    assert all(entry["stream"] for entry in chats), "Hermes streams from its provider"
    assert inspect(deployed, "hermes")["State"]["Running"]

    # smoke: one timed turn through each gateway, twice (the first turn of a gateway and a later one).
    before, timings = len(requests_seen(deployed)), []
    for turn in ("first", "second"):
        code, report, output = smoke(deployed, "--message", f"ping {turn}", **both)
        assert code == 0, report
        assert {g["profile"]: g["answer"] for g in report["gateways"]} == {"hermes": f"pong: ping {turn}",
                                                                       "coder": f"pong: ping {turn}"}, report
        for gateway in report["gateways"]:
            assert gateway["ok"] and 0 < gateway["first_byte_seconds"] <= gateway["total_seconds"], gateway
        assert provider not in output and key not in output
        timings.append([(g["first_byte_seconds"], g["total_seconds"]) for g in report["gateways"]])
    chats = [entry for entry in requests_seen(deployed)[before:] if entry["path"] == "/v1/chat/completions"]
    assert len(chats) >= 4 and all(entry["key_ok"] and entry["status"] == 200 for entry in chats), chats
    print(f"[timing] smoke turns per gateway (first byte, total): first {timings[0]}, second {timings[1]}")


def test_a_wrong_provider_key_makes_the_chat_fail_with_the_providers_401(deployed, provider):
    wrong = secrets.token_hex(20)
    settings = {"gateways": [{**HERMES, "config": model(wrong)}]}
    run = deployed.deploy(**settings)
    assert run.returncode == 0, run.output[-4000:]
    before = len(requests_seen(deployed))
    answer = json.loads(post(deployed, "/v1/chat/completions",
                             {"model": "hermes-agent", "messages": [{"role": "user", "content": "ping wrong"}]},
                             deployed.api_key()))
    # Hermes 0.19.0 answers 200 with the provider's error as the turn's failure (measured).
    text = answer["choices"][0]["message"]["content"]
    assert not text.startswith("pong:") and "401" in text, answer
    assert answer.get("hermes", {}).get("failed") is True, answer
    chats = [entry for entry in requests_seen(deployed)[before:] if entry["path"] == "/v1/chat/completions"]
    assert chats and all(not entry["key_ok"] and entry["status"] == 401 for entry in chats), chats
    # smoke calls that turn a failure, although Hermes answered it with a 200.
    code, report, _ = smoke(deployed, "--message", "ping wrong", **settings)
    [gateway] = report["gateways"]
    assert code == 1 and gateway["code"] == "200" and "marks the turn failed" in gateway["problem"], report
