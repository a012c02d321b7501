"""Alerts and metrics on a real host (issue 19, items 4 and 5), in one deploy.

A tiny webhook receiver runs on the VM (python3's http.server, bound to 127.0.0.1 there, its pid
recorded and killed by that pid at the end). The deploy sets `alerts` (that receiver, a 10 s
interval) and `metrics`; then: `alerts test` reaches the receiver; a kill of the gateway's process
brings "down", and "up" once Docker's restart policy has it healthy again, each said once; the
gateway is healthy again within 30 s of the kill and `status` shows the restart (issue 10); the
node exporter on 127.0.0.1 serves `hermes_up` from the watchdog's textfile. `deployed.reset()`
puts the host back as it was.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time

from tests.e2e.conftest import REPO
from tests.e2e.test_daytwo import status_json

PORT = 18999
RECEIVED = "/root/e2e-alerts-received.jsonl"
PID_FILE = "/root/e2e-alerts-receiver.pid"
SCRIPT = "/root/e2e-alerts-receiver.py"
RECEIVER = r'''
import http.server, sys

class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with open(sys.argv[2], "ab") as out:
            out.write(body.replace(b"\n", b" ") + b"\n")
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
'''
RESTART_DEADLINE = float(os.environ.get("HERMES_INFRA_E2E_RESTART_DEADLINE", "30"))
RESTART_MS = "/root/e2e-restart-ms"
# The gateway's process dies (as a crash or an OOM kill does): Docker's restart policy brings it
# back. `docker kill` would count as a stop by hand, which no policy restarts. Timed inside the
# VM, so SSH round trips on a busy machine do not count against the gateway; detached, so the
# receiver's messages are watched meanwhile.
KILL_AND_TIME = ("s=$(date +%s%N); kill -KILL $(docker inspect --format '{{.State.Pid}}' hermes); "
                 f"t=$(( $(date +%s) + {int(RESTART_DEADLINE) + 5} )); "
                 "until [ \"$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 http://127.0.0.1:8642/health)\" = 200 ]; "
                 "do [ $(date +%s) -ge $t ] && break; sleep 0.5; done; "
                 f"echo $(( ($(date +%s%N) - s) / 1000000 )) > {RESTART_MS}.part && mv {RESTART_MS}.part {RESTART_MS}")
ALERTS = {"interval_seconds": 10, "receivers": [
    {"kind": "webhook", "name": "e2e", "secret_url": f"http://127.0.0.1:{PORT}/hook"}]}


def received(deployed) -> list[dict]:
    text = deployed.run(f"cat {RECEIVED} 2>/dev/null || true")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def wait_for(deployed, check: str, state: str, timeout: float) -> float:
    """Seconds until the receiver got a message of `check` turning `state`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if any(m.get("check") == check and m.get("state") == state for m in received(deployed)):
            return time.monotonic() - started
        time.sleep(1)
    raise AssertionError(f"no {check} -> {state} message within {timeout}s; got {received(deployed)}; "
                         f"journal: {deployed.run('journalctl -u hermes-infra-alerts -n 20 --no-pager || true')}")


def test_a_killed_gateway_is_reported_down_then_up_and_the_exporter_serves_hermes_up(deployed):
    try:
        run = deployed.deploy(alerts=ALERTS, metrics={})
        assert run.returncode == 0, run.output[-4000:]
        assert deployed.run("systemctl is-enabled hermes-infra-alerts.timer; systemctl is-active "
                            "hermes-infra-alerts.timer").split() == ["enabled", "active"]
        assert deployed.run("stat -c '%a %U' /etc/hermes-infra/alerts.json /usr/local/sbin/hermes-infra-alerts"
                            ).split() == ["600", "root", "700", "root"]
        key = deployed.api_key()
        units = deployed.run("systemctl cat hermes-infra-alerts.service hermes-infra-alerts.timer")
        assert key not in units and key not in deployed.run("cat /usr/local/sbin/hermes-infra-alerts")
        listening = deployed.run("ss -Hltn")
        assert "127.0.0.1:9100" in listening
        assert not any(wide in listening for wide in ("*:9100", "0.0.0.0:9100", "[::]:9100")), listening

        deployed.run(f"cat > {SCRIPT} <<'EOF'\n{RECEIVER}\nEOF")
        deployed.run(f"rm -f {RECEIVED}; nohup python3 {SCRIPT} {PORT} {RECEIVED} >/dev/null 2>&1 & echo $! > {PID_FILE}")
        deployed.run(f"for i in $(seq 50); do ss -Hltn | grep -q '127.0.0.1:{PORT} ' && exit 0; sleep 0.2; done; exit 1")

        # The watchdog has had its first round (a healthy gateway: nothing said) before the kill.
        deployed.run("for i in $(seq 60); do [ -s /var/lib/hermes-infra/alerts/state.json ] && exit 0; sleep 1; done; exit 1")
        assert deployed.run("stat -c '%a %U' /var/lib/hermes-infra/alerts/state.json").split() == ["600", "root"]

        # The target carries the settings deployed: `alerts test` reads its receivers from them.
        target = deployed.target(alerts=ALERTS, metrics={})
        argv = [sys.executable, "-m", "hermes_infra", "alerts", "test", *target.cli_args()]
        tested = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, stdin=subprocess.DEVNULL, timeout=120)
        assert tested.returncode == 0, tested.stdout + tested.stderr
        assert "e2e (webhook): sent" in tested.stdout
        assert any(m.get("check") == "test" for m in received(deployed))

        before = status_json(deployed)["gateways"][0]
        assert before["healthy"]
        deployed.run(f"rm -f {RESTART_MS}; setsid sh -c {shlex.quote(KILL_AND_TIME)} </dev/null >/dev/null 2>&1 &")
        down = wait_for(deployed, "up", "down", timeout=60)
        print(f"\n[timing] gateway killed -> 'down' at the receiver: {down:.1f}s")
        up = wait_for(deployed, "up", "up", timeout=180)
        print(f"[timing] gateway killed -> 'up' at the receiver: {down + up:.1f}s")
        seconds = int(deployed.run(f"for i in $(seq 240); do [ -s {RESTART_MS} ] && break; sleep 0.5; done; "
                                   f"cat {RESTART_MS}").strip()) / 1000
        print(f"[timing] killed gateway healthy again after {seconds:.1f}s (deadline {RESTART_DEADLINE:.0f}s)")
        assert seconds <= RESTART_DEADLINE
        after = status_json(deployed)["gateways"][0]
        assert after["healthy"] and after["restarts"] == before["restarts"] + 1, (before, after)
        assert after["uptime_seconds"] < RESTART_DEADLINE + 60 + down + up
        time.sleep(12)  # one more round: nothing is said twice
        said = [(m["check"], m["state"]) for m in received(deployed) if m.get("check") == "up"]
        assert said == [("up", "down"), ("up", "up")], said

        metrics = deployed.run("curl -s --max-time 5 http://127.0.0.1:9100/metrics")
        up_lines = [line for line in metrics.splitlines() if line.startswith("hermes_up{")]
        assert len(up_lines) == 1 and up_lines[0].endswith('profile="hermes"} 1'), metrics[-2000:]
        assert "hermes_restarts_total{" in metrics and "hermes_memory_limit_bytes{" in metrics
        cost = deployed.run("systemctl show -p CPUUsageNSec -p MemoryPeak -p NRestarts hermes-infra-alerts.service")
        print(f"[timing] watchdog cost so far: {' '.join(cost.split())}")
    finally:
        deployed.vm.ssh(f"[ -s {PID_FILE} ] && kill \"$(cat {PID_FILE})\"; rm -f {PID_FILE} {SCRIPT} {RECEIVED} {RESTART_MS}",
                        timeout=30)
        print(f"[timing] back to the bootstrapped state: {deployed.reset():.1f}s")
