"""The agent answers (issue 19), through several gateways per host and a WeChat hub in each
topology (issue 5), on a real VM: one module, because both need the same host (two profiles, two
hubs) and a deploy of it is the slowest thing these tests do.

In order, on the session's VM: a gateway without a provider is alive but not ready; a second
profile is added without touching the first; a hub in each topology reaches its own profile
only; a chat through the gateway reaches the model provider with the right key, and each hub
gets the provider's answer through its gateway; a profile removed keeps its data and the other
containers; a wrong provider key makes the chat fail with the provider's 401.
`hermes-infra smoke` (one real chat turn per gateway, timed) is proven on the same deploys:
failing without a provider, answering with the right key, failing with a wrong one.

The provider is `scripted_provider.py`, run ON the VM (never outside this machine and its VMs),
bound to the docker bridge's address 172.17.0.1 so containers reach it as
`host.docker.internal` (every service has `extra_hosts: host-gateway`). It refuses any key but
the one it was given, so a gateway sending `no-key-required` (Hermes's default for a custom
endpoint without `model.api_key`) fails here. The module ends by putting the VM back into its
bootstrapped state (a saved VM state, not a redeploy: retiring profiles is what a test proves).
"""
from __future__ import annotations

import base64
import json
import secrets
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO
from tests.e2e.test_bootstrap import COMPANION_PROBE, inspect, wait_healthy
from tests.e2e.test_checks_e2e import check, failing_ids, not_passing

BRIDGE = "172.17.0.1"
PORT = 18080
WORK = "/root/scripted-provider"
LOG = f"{WORK}/requests.jsonl"
API = "http://127.0.0.1:8642"
HERMES = {"name": "hermes", "limits": {"memory": "1G", "cpus": 1}}
CODER = {"name": "coder", "api": {"port": 8643}, "limits": {"memory": "768M", "cpus": 0.5}}
SCRIPT = Path(__file__).with_name("scripted_provider.py")

def hub(deployed, name: str, **extra) -> dict:
    image = json.loads((deployed.image_dir / "image.json").read_text())["ref"]
    return {"name": name, "image": image, "memory": "192M", "cpus": 0.25,
            "entrypoint": ["python3", "-c", "import time; time.sleep(10**9)"], **extra}


def probe(deployed, container: str, url: str, key_env: str | None = None) -> str:
    command = f"docker exec {container} python3 -c {shlex.quote(COMPANION_PROBE)} {url}"
    return deployed.run(command + (f" {key_env}" if key_env else "")).strip()


def container_env(deployed, container: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in inspect(deployed, container)["Config"]["Env"])


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


# A job of the agent as code (issue 22) whose prompt the scripted provider answers: created by
# the hubs deploy, it runs while the chat test runs, and is looked at after it.
PROMPT_JOB = {"name": "e2e-brief", "schedule": "every 1m", "prompt": "ping cron", "deliver": "local"}


def gateways(key: str, *names: str, cron: tuple[dict, ...] = ()) -> list[dict]:
    """The module's gateways, each with the scripted provider (and `key`) as its model; `cron`
    goes to the first."""
    chosen = [{**{"hermes": HERMES, "coder": CODER}[name], "config": model(key)} for name in names]
    chosen[0]["cron"] = list(cron)
    return chosen


def both_hubs(deployed) -> list[dict]:
    return [hub(deployed, "hub-outside", gateway="hermes", topology="host-gateway", timeout_ms=90000),
            hub(deployed, "hub-inside", gateway="coder", topology="same-project", auto_reply=False)]


def test_adding_a_profile_leaves_the_first_untouched(deployed, provider):
    run = deployed.deploy(gateways=gateways(provider, "hermes"))
    assert run.returncode == 0, run.output[-4000:]
    hermes_id = inspect(deployed, "hermes")["Id"]
    run = deployed.deploy(gateways=gateways(provider, "hermes", "coder"))
    assert run.returncode == 0, run.output[-4000:]
    assert inspect(deployed, "hermes")["Id"] == hermes_id
    assert deployed.http_status("http://127.0.0.1:8642/health") == "200"
    assert deployed.http_status("http://127.0.0.1:8643/health") == "200"
    coder_key = deployed.api_key("/root/.hermes-coder")
    assert coder_key != deployed.api_key()
    assert deployed.http_status("http://127.0.0.1:8643/v1/models", key=coder_key) == "200"
    assert deployed.http_status("http://127.0.0.1:8643/v1/models", key=deployed.api_key()) == "401"
    config = inspect(deployed, "hermes-coder")["HostConfig"]
    assert config["Memory"] == 768 * 1024**2 and config["NanoCpus"] == 500_000_000
    assert deployed.run("stat -c '%a %u:%g' /root/.hermes-coder/.env").strip() == "600 10000:10000"


def test_hubs_in_both_topologies_reach_their_own_profile(deployed, provider):
    companions = both_hubs(deployed)
    run = deployed.deploy(gateways=gateways(provider, "hermes", "coder", cron=(PROMPT_JOB,)), companions=companions)
    assert run.returncode == 0, run.output[-4000:]
    assert provider not in run.output, "the provider key was printed by the deploy"

    outside = container_env(deployed, "hub-outside")
    assert outside["HERMES_API_BASE_URL"] == "http://host.docker.internal:8642/v1"
    assert outside["HERMES_API_KEY"] == deployed.api_key()
    assert outside["HERMES_MODEL"] == "hermes-agent"
    assert outside["HERMES_TIMEOUT_MS"] == "90000" and outside["AUTO_REPLY"] == "true"
    assert probe(deployed, "hub-outside", "http://host.docker.internal:8642/v1/models", "HERMES_API_KEY") == "200"
    # a separate compose project, on its own network: the gateway's service name does not resolve there
    labels = inspect(deployed, "hub-outside")["Config"]["Labels"]
    assert labels["com.docker.compose.project"] == "hermes-hub-outside"

    inside = container_env(deployed, "hub-inside")
    assert inside["HERMES_API_BASE_URL"] == "http://hermes-coder:8642/v1"
    assert inside["HERMES_API_KEY"] == deployed.api_key("/root/.hermes-coder")
    assert inside["AUTO_REPLY"] == "false"
    assert probe(deployed, "hub-inside", "http://hermes-coder:8642/v1/models", "HERMES_API_KEY") == "200"
    assert probe(deployed, "hub-inside", "http://hermes:8642/v1/models", "HERMES_API_KEY") == "401"
    assert inspect(deployed, "hub-inside")["Config"]["Labels"]["com.docker.compose.project"] == "hermes"

    # the hermes API is on loopback and the docker bridge, never on the public interface
    bindings = inspect(deployed, "hermes")["HostConfig"]["PortBindings"]["8642/tcp"]
    assert sorted(b["HostIp"] for b in bindings) == ["127.0.0.1", "172.17.0.1"]
    assert inspect(deployed, "hermes-coder")["HostConfig"]["PortBindings"]["8642/tcp"] == [
        {"HostIp": "127.0.0.1", "HostPort": "8643"}]
    composed = deployed.run("cat /opt/hermes/compose.yaml /opt/hermes/companions/hub-outside/compose.yaml")
    for secret in (deployed.api_key(), deployed.api_key("/root/.hermes-coder"), provider):
        assert secret not in composed
    # A custom endpoint's key belongs in config.yaml (once), not in .env.
    assert deployed.run("grep -c '^  api_key: ' /root/.hermes/config.yaml").strip() == "1"
    assert provider not in deployed.run("cat /root/.hermes/.env")

    again = deployed.deploy(gateways=gateways(provider, "hermes", "coder", cron=(PROMPT_JOB,)), companions=companions)
    assert again.returncode == 0 and again.changed_operations() == 0, again.output[-4000:]


def test_the_checks_pass_with_both_hubs_and_only_read(deployed, provider):
    """`hermes-infra check` on the hubs deploy: every control passes, each hub's reach of its
    gateway among them (HI-CMP-001), and the checks only read: no container created, started,
    stopped or removed, no image pulled (exec and health events are the probes)."""
    both = {"gateways": gateways(provider, "hermes", "coder", cron=(PROMPT_JOB,)), "companions": both_hubs(deployed)}
    containers = deployed.run("docker ps -aq --no-trunc | sort")
    since = deployed.run("date +%s").strip()
    run = check(deployed, **both)
    until = str(int(deployed.run("date +%s").strip()) + 1)
    assert run.exit_code == 0, not_passing(run)
    # One JSON document per event: an exec's action carries its command, which may hold newlines
    # (the SQLite probe is a multi-line program).
    events = [json.loads(line) for line in deployed.run(
        f"docker events --since {since} --until {until} --filter type=container "
        "--filter type=image --format '{{json .}}'").splitlines() if line.strip()]
    lifecycle = [(e.get("Type"), e.get("Action")) for e in events
                 if not str(e.get("Action", "")).startswith(("exec_", "health_status"))]
    assert lifecycle == [], lifecycle
    assert deployed.run("docker ps -aq --no-trunc | sort") == containers
    for name in ("hub-outside", "hub-inside"):
        reach = next(r for r in run.results if r.control.id == "HI-CMP-001" and r.subject == f"companion:{name}")
        assert reach.status == "passed" and "(python3) -> 200" in reach.message, reach.message
        assert sum(r.subject == f"companion:{name}" for r in run.results) == 12  # 11 container controls and HI-CMP-001


def test_chat_reaches_the_provider_with_its_key_and_hubs_in_both_topologies_get_the_answer(deployed, provider):
    """On the host the hubs test deployed: two profiles on the provider, a hub on each."""
    both = {"gateways": gateways(provider, "hermes", "coder", cron=(PROMPT_JOB,)), "companions": both_hubs(deployed)}
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
    turns = [entry for entry in chats if PROMPT_JOB["prompt"] not in entry["said"]]  # not the job's
    assert all(entry["stream"] for entry in turns), ("Hermes streams a chat turn from its provider", turns)
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


def scheduled_jobs(deployed) -> dict[str, dict]:
    text = deployed.run("cat /root/.hermes/cron/jobs.json 2>/dev/null || echo '{\"jobs\": []}'")
    return {job.get("name"): job for job in json.loads(text)["jobs"]}


def test_a_scheduled_prompt_is_answered_by_the_provider_and_delivered_locally(deployed, provider):
    """The job the hubs deploy made runs in the gateway's scheduler (a tick a minute): Hermes sends
    its prompt to the provider with the key, and keeps the answer as the job's local delivery."""
    name = f"hermes-infra/{PROMPT_JOB['name']}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and scheduled_jobs(deployed)[name].get("last_status") is None:
        time.sleep(10)
    ran = scheduled_jobs(deployed)[name]
    assert ran.get("last_status") == "ok" and ran.get("enabled", True), ran
    output = deployed.run(f"cat /root/.hermes/cron/output/{shlex.quote(ran['id'])}/*.md")
    assert "pong: " in output and PROMPT_JOB["prompt"] in output, output[-2000:]
    asked = [entry for entry in requests_seen(deployed)
             if entry["path"] == "/v1/chat/completions" and PROMPT_JOB["prompt"] in entry["said"]]
    assert asked and all(entry["key_ok"] and entry["status"] == 200 for entry in asked), asked


def test_removing_a_profile_keeps_its_data_and_the_other_container(deployed, provider):
    companions = both_hubs(deployed)[:1]
    hermes_id = inspect(deployed, "hermes")["Id"]
    hub_id = inspect(deployed, "hub-outside")["Id"]
    hermes_data = deployed.run("sha256sum /root/.hermes/.env /root/.hermes/config.yaml")
    coder_files = deployed.run("ls -A /root/.hermes-coder")
    run = deployed.deploy(gateways=gateways(provider, "hermes", cron=(PROMPT_JOB,)), companions=companions)
    assert run.returncode == 0, run.output[-4000:]
    assert inspect(deployed, "hermes")["Id"] == hermes_id
    assert inspect(deployed, "hub-outside")["Id"] == hub_id
    assert deployed.run("sha256sum /root/.hermes/.env /root/.hermes/config.yaml") == hermes_data
    names = deployed.run("docker ps -a --format '{{.Names}}'").split()
    assert "hermes-coder" not in names and "hub-inside" not in names
    assert deployed.run("ls -A /root/.hermes-coder") == coder_files
    archives = deployed.run("ls /var/backups/hermes-infra/").split()
    assert any(name.startswith("profile-coder-") and name.endswith(".tar.gz") for name in archives)
    newest = deployed.run("ls -t /var/backups/hermes-infra/profile-coder-*.tar.gz | head -n 1").strip()
    assert "root/.hermes-coder/.env" in deployed.run(f"tar -tzf {newest}").split()
    assert deployed.http_status("http://127.0.0.1:8642/health") == "200"


def test_a_gateway_published_on_loopback_only_fails_the_hub_reach_control(deployed, provider):
    """Healthy from the host, unreachable for its host-gateway hub: HI-API-001 (the bridge port
    the settings ask for) and HI-CMP-001 fail, nothing else. The next deploy puts the ports back
    (the recreated container's config hash differs from the applied one)."""
    override = 'services:\n  hermes:\n    ports: !override\n      - "127.0.0.1:8642:8642"'
    deployed.run(f"cat > /tmp/hermes-override.yaml <<'EOF'\n{override}\nEOF\n"
                 "cd /opt/hermes && docker compose -p hermes -f compose.yaml -f /tmp/hermes-override.yaml "
                 "up -d --quiet-pull 2>&1 && rm -f /tmp/hermes-override.yaml")
    wait_healthy(deployed)
    run = check(deployed, gateways=gateways(provider, "hermes", cron=(PROMPT_JOB,)), companions=both_hubs(deployed)[:1])
    assert failing_ids(run) == {"HI-API-001", "HI-CMP-001"}, not_passing(run)


def test_a_wrong_provider_key_makes_the_chat_fail_with_the_providers_401(deployed, provider):
    wrong = secrets.token_hex(20)
    settings = {"gateways": [{**HERMES, "config": model(wrong)}]}
    run = deployed.deploy(**settings)
    assert run.returncode == 0, run.output[-4000:]
    assert f"hermes-infra/{PROMPT_JOB['name']}" not in scheduled_jobs(deployed), "a job that left the settings stayed"
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
