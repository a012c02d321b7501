"""The watchdog as rendered for the host, run here: a fake `docker` (a script whose answers the
test sets), a fake Hermes answering /health/detailed, and a webhook receiver, both on
127.0.0.1, started and stopped by the tests. The state machine (a message on each change,
never twice), what reaches each receiver kind, and the node exporter's textfile."""
from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import json
import os
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from hermes_infra.plan import alerts, offsite

API_KEY = "gateway-api-key-Zq81XbVt0PLmNw4Y"
HOSTILE = b"\x1b[31m<b>PWNED</b> $(reboot) `id`"
OFFSITE_LOG = "/var/backups/hermes-infra/offsite/hermes.restic.log"
FAKE_DOCKER = """#!/bin/sh
d=$(dirname "$0")
printf '%s\\n' "$*" >> "$d/argv.log"
echo "WARNING: Error loading config file: $HOME/.docker/config.json" >&2
case "$1" in
  inspect) cat "$d/inspect.out" 2>/dev/null ;;
  events) cat "$d/events.out" 2>/dev/null ;;
  logs) cat "$d/logs.out" 2>/dev/null; cat "$d/logs.err" >&2 2>/dev/null ;;
esac
"""


@pytest.fixture(scope="module")
def watchdog(tmp_path_factory):
    """The rendered script, imported as a module."""
    path = tmp_path_factory.mktemp("script") / "hermes_infra_alerts.py"
    path.write_text(alerts.script_text())
    spec = importlib.util.spec_from_file_location("hermes_infra_alerts_rendered", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Server:
    """An HTTP server on 127.0.0.1 in a thread: records every request, answers from `reply`."""

    def __init__(self):
        self.requests: list[dict] = []
        self.reply = (200, b'{"errcode": 0, "code": 0, "ok": true}')
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                owner.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                       "body": self.rfile.read(length) if length else b""})
                status, body = owner.reply(self) if callable(owner.reply) else owner.reply
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def bodies(self) -> list[dict]:
        return [json.loads(r["body"]) for r in self.requests if r["method"] == "POST"]

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver():
    server = Server()
    yield server
    server.stop()


@pytest.fixture
def hermes():
    """A gateway's /health/detailed: ok with the key, 401 without; `hermes.ready = False` degrades it."""
    server = Server()
    server.ready = True

    def reply(handler):
        if handler.headers.get("Authorization") != f"Bearer {API_KEY}":
            return 401, b'{"error": "Invalid API key"}'
        if server.ready:
            return 200, b'{"status": "ok", "readiness": {"status": "ok", "checks": {"model": {"status": "ok"}}}}'
        return 200, json.dumps({"status": "degraded", "readiness": {"checks": {
            "model": {"status": "degraded"}, "state_db": {"status": "ok"},
            HOSTILE.decode(): {"status": "bad"}}}}).encode()

    server.reply = reply
    yield server
    server.stop()


class Host:
    """The watchdog's world: its config, the fake docker's answers, a data dir, the clock."""

    def __init__(self, tmp: Path, watchdog, receiver: Server, hermes: Server):
        self.tmp, self.watchdog, self.hermes = tmp, watchdog, hermes
        self.bin = tmp / "bin"
        self.bin.mkdir()
        docker = self.bin / "docker"
        docker.write_text(FAKE_DOCKER)
        docker.chmod(0o755)
        self.data = tmp / "data"
        (self.data / "logs").mkdir(parents=True)
        (self.data / "logs" / "gateway.log").write_bytes(b"started\n")
        self.backup = tmp / "hermes.last.json"
        self.offsite = tmp / "offsite" / "hermes.last.json"
        self.offsite.parent.mkdir()
        self.when = 1_800_000_000.0
        self.config = {
            "host": "vm", "docker": str(docker), "state_file": str(tmp / "state" / "state.json"),
            "lock_dir": str(tmp / "lock"), "lock_stale_seconds": 120, "interval_seconds": 60,
            "min_free_percent": 0, "textfile": str(tmp / "textfile" / "hermes.prom"),
            "receivers": [{"label": "ops", "kind": "webhook", "url": receiver.url + "/hook"}],
            "gateways": [{"profile": "hermes", "container": "hermes", "data_dir": str(self.data),
                          "uid": os.getuid(), "gid": os.getgid(), "port": hermes.port, "api_key": API_KEY,
                          "backup_record": str(self.backup), "memory_limit": 1 << 30,
                          "offsite_record": str(self.offsite), "offsite_log": OFFSITE_LOG}],
        }
        (tmp / "textfile").mkdir()
        self.container(running=True, health="healthy")
        self.events("")

    def container(self, running=True, health="healthy", restarts=0, oom=False, started="2026-12-01T00:00:00.1Z"):
        line = (f"{'a' * 64}|{'true' if running else 'false'}|{'true' if oom else 'false'}|{restarts}|{health}|"
                f"{1 << 30}|{started}|{'127.0.0.1 ' if running else ''}")
        (self.bin / "inspect.out").write_text(line + "\n")

    def events(self, text: str):
        (self.bin / "events.out").write_text(text)

    def log(self, data: bytes):
        with open(self.data / "logs" / "gateway.log", "ab") as handle:
            handle.write(data)

    def round(self, seconds: float = 60):
        self.when += seconds
        return self.watchdog.round_once(self.config, when=self.when)

    def state(self) -> dict:
        return json.loads(Path(self.config["state_file"]).read_text())


@pytest.fixture
def world(tmp_path, watchdog, receiver, hermes):
    return Host(tmp_path, watchdog, receiver, hermes)


def states(messages):
    return [(m["check"], m["state"]) for m in messages]


# --- the state machine ------------------------------------------------------------------------

def test_a_healthy_first_round_says_nothing_and_keeps_its_state_root_only(world, receiver):
    assert world.round() == [] and receiver.requests == []
    state_file = Path(world.config["state_file"])
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(state_file.parent.stat().st_mode) == 0o700
    assert world.state()["gateways"]["hermes"]["values"] == {"up": "up", "ready": "ready", "disk": "ok"}


def test_a_killed_gateway_is_down_then_up_once_docker_restarted_it_and_never_twice(world, receiver):
    world.round()
    world.events("die hermes\n")
    world.container(running=True, health="starting", restarts=1)
    assert states(world.round()) == [("up", "down")]
    world.events("")
    assert world.round() == [], "still starting: nothing new"
    world.container(running=True, health="healthy", restarts=1)
    assert states(world.round()) == [("up", "up")]
    assert world.round() == [], "deduplicated: the same state is not said again"
    bodies = receiver.bodies()
    assert [(b["check"], b["state"], b["severity"]) for b in bodies] == [("up", "down", "critical"),
                                                                         ("up", "up", "resolved")]
    assert bodies[0]["host"] == "vm" and bodies[0]["profile"] == "hermes" and "DOWN" in bodies[0]["text"]
    assert bodies[0]["time"].endswith("Z")


def test_a_restart_between_two_rounds_is_said_as_down_and_up(world):
    world.round()
    world.events("die hermes\n")
    world.container(running=True, health="healthy", restarts=1)
    messages = world.round()
    assert states(messages) == [("up", "down"), ("up", "up")] and "restart count 1" in messages[0]["text"]


def test_a_stop_by_compose_or_the_backup_is_not_a_death(world):
    world.round()
    world.events("die hermes\nstop hermes\n")
    assert world.round() == []


def test_a_stopped_container_is_down_and_readiness_is_not_asked_while_down(world, hermes):
    world.round()
    asked = len(hermes.requests)
    world.container(running=False, health="")
    assert states(world.round()) == [("up", "down")]
    assert len(hermes.requests) == asked
    assert world.round() == []


def test_not_ready_names_only_well_formed_failing_checks(world, hermes, receiver):
    world.round()
    hermes.ready = False
    messages = world.round()
    assert states(messages) == [("ready", "not ready")]
    assert "failing: model)" in messages[0]["text"]
    hermes.ready = True
    assert states(world.round()) == [("ready", "ready")]
    assert all(b"PWNED" not in r["body"] and b"\x1b" not in r["body"] for r in receiver.requests)


def test_the_key_goes_only_in_a_header_to_the_containers_address_never_into_argv(world, hermes):
    world.round()
    assert hermes.requests[0]["path"] == "/health/detailed"
    assert hermes.requests[0]["headers"]["Authorization"] == f"Bearer {API_KEY}"
    argv = (world.bin / "argv.log").read_text()
    assert API_KEY not in argv and "inspect --type container" in argv


def test_a_failed_scheduled_backup_is_said_and_its_recovery_too(world):
    world.backup.write_text(json.dumps({"profile": "hermes", "result": "success", "time": "2026-12-01T03:00:00Z"}))
    world.round()
    world.backup.write_text(json.dumps({"profile": "hermes", "result": "failed", "time": "2026-12-02T03:00:00Z",
                                        "message": HOSTILE.decode()}))
    messages = world.round()
    assert states(messages) == [("backup", "failed")] and "PWNED" not in messages[0]["text"]
    world.backup.write_text(json.dumps({"profile": "hermes", "result": "success", "time": "2026-12-03T03:00:00Z"}))
    assert states(world.round()) == [("backup", "success")]
    assert world.state()["gateways"]["hermes"]["last_good_backup"] == "2026-12-03T03:00:00Z"


def test_a_backup_record_that_is_a_link_or_malformed_is_not_believed(world, tmp_path):
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps({"result": "failed", "time": "2026-12-02T03:00:00Z"}))
    world.backup.symlink_to(target)
    assert world.round() == []
    world.backup.unlink()
    world.backup.write_text(json.dumps({"result": "failed", "time": "yesterday"}))
    assert world.round() == []


def test_a_backup_record_that_is_json_but_not_an_object_is_unknown_not_a_crash(world):
    for garbage in ("[1, 2]", '"failed"', "null", "1e999"):
        world.backup.write_text(garbage)
        assert world.round() == [], garbage
    assert "backup" not in world.state()["gateways"]["hermes"]["values"]


def test_a_record_time_that_is_no_real_time_is_not_believed_nor_breaks_the_metrics(world):
    """Month 13 matches the time's pattern; kept as the last good backup, it broke every later round."""
    for path, text in ((world.backup, json.dumps({"result": "success", "time": "2026-13-45T99:99:99Z"})),
                       (world.offsite, offsite_record("success", "2026-13-45T99:99:99Z"))):
        path.write_text(text)
    assert world.round() == [] and world.round() == []
    assert not {"backup", "offsite"} & set(world.state()["gateways"]["hermes"]["values"])
    assert "hermes_up{" in Path(world.config["textfile"]).read_text()


def offsite_record(result: str, time_text: str, **extra) -> str:
    """What hermes-infra-offsite's `record` writes (its printf's keys and order)."""
    return json.dumps({"bytes": 20480, "bytes_added": 4096, "kind": "offsite", "message": "sent, pruned and checked",
                       "profile": "hermes", "result": result, "snapshot": "ab12cd34" * 8, "source": "scheduled",
                       "time": time_text, **extra})


def test_a_failed_offsite_upload_is_said_once_with_its_restic_log_and_its_recovery_once(world, receiver):
    world.offsite.write_text(offsite_record("success", "2026-12-01T03:00:00Z"))
    assert world.round() == [], "a good upload on the first round: nothing to say"
    assert world.state()["gateways"]["hermes"]["values"]["offsite"] == "success"
    world.offsite.write_text(offsite_record("failed", "2026-12-02T03:00:00Z", message=HOSTILE.decode()))
    messages = world.round()
    assert states(messages) == [("offsite", "failed")] and messages[0]["severity"] == "critical"
    text = messages[0]["text"]
    assert "off-host backup FAILED" in text and OFFSITE_LOG in text and "scheduled" in text
    assert world.round() == [], "still failed: not said twice"
    world.offsite.write_text(offsite_record("failed", "2026-12-03T03:00:00Z", source="manual"))
    assert world.round() == [], "failed again: still the same state"
    world.offsite.write_text(offsite_record("success", "2026-12-04T03:00:00Z"))
    messages = world.round()
    assert states(messages) == [("offsite", "success")] and "off-host backup succeeded again" in messages[0]["text"]
    assert world.round() == []
    assert world.state()["gateways"]["hermes"]["last_good_offsite_backup"] == "2026-12-04T03:00:00Z"
    assert [(b["check"], b["state"]) for b in receiver.bodies()] == [("offsite", "failed"), ("offsite", "success")]
    assert all(b"PWNED" not in r["body"] for r in receiver.requests)


def test_a_failed_offsite_upload_is_said_on_the_first_round_and_the_local_backup_stays_its_own_check(world):
    world.backup.write_text(json.dumps({"profile": "hermes", "result": "success", "time": "2026-12-02T02:00:00Z"}))
    world.offsite.write_text(offsite_record("failed", "2026-12-02T03:00:00Z"))
    assert states(world.round()) == [("offsite", "failed")]
    assert world.state()["gateways"]["hermes"]["values"]["backup"] == "success"


@pytest.mark.parametrize("garbage", [
    HOSTILE, b"[1, 2]", b"null", b'"failed"', b"{", b"\xff\xfe",
    offsite_record("failed", "yesterday").encode(),
    offsite_record("failed", "2026-13-45T99:99:99Z").encode(),
    offsite_record(HOSTILE.decode(), "2026-12-02T03:00:00Z").encode(),
    offsite_record("failed", "2026-12-02T03:00:00Z", kind="scheduled").encode(),
    offsite_record("failed", "2026-12-02T03:00:00Z", message="x" * 5000).encode(),
], ids=["hostile bytes", "a list", "null", "a string", "cut short", "not utf-8", "a bad time", "no such time",
        "a hostile result", "another kind", "too big"])
def test_an_offsite_record_that_is_garbage_is_unknown_never_a_crash_nor_quoted(world, receiver, garbage):
    world.offsite.write_bytes(garbage)
    assert world.round() == []
    assert "offsite" not in world.state()["gateways"]["hermes"]["values"]
    world.offsite.write_text(offsite_record("failed", "2026-12-02T03:00:00Z"))
    assert states(world.round()) == [("offsite", "failed")]
    world.offsite.write_bytes(garbage)
    assert world.round() == [], "unknown is not a change: the last known state stays, nothing said"
    assert world.state()["gateways"]["hermes"]["values"]["offsite"] == "failed"
    world.offsite.write_text(offsite_record("failed", "2026-12-03T03:00:00Z"))
    assert world.round() == [], "failed, unknown, failed: said once"
    assert all(b"PWNED" not in r["body"] and b"\x1b" not in r["body"] for r in receiver.requests)


def test_the_records_the_upload_script_writes_are_the_ones_the_watchdog_reads(world, tmp_path):
    """hermes-infra-offsite's own `record` (its shell prelude), not a copy of its format."""
    def record(*arguments: str):
        script = f"{offsite._UPLOAD_PRELUDE}\nrecord \"$@\""
        env = {"PATH": os.environ["PATH"], "records": str(world.offsite.parent), "profile": "hermes", "source": "manual"}
        subprocess.run(["sh", "-c", script, "sh", *arguments], env=env, check=True, timeout=30)

    record("failed", "restic check found a problem in the repository", "ab12cd34")
    messages = world.round()
    assert states(messages) == [("offsite", "failed")] and "the last manual upload" in messages[0]["text"]
    record("success", "sent, pruned and checked", "ab12cd34", "4096", "20480")
    assert states(world.round()) == [("offsite", "success")]
    assert world.state()["gateways"]["hermes"]["last_good_offsite_backup"] == \
        json.loads(world.offsite.read_text())["time"]


def test_an_offsite_record_that_is_a_link_or_not_a_file_is_not_believed(world, tmp_path):
    target = tmp_path / "elsewhere.json"
    target.write_text(offsite_record("failed", "2026-12-02T03:00:00Z"))
    world.offsite.symlink_to(target)
    assert world.round() == []
    world.offsite.unlink()
    os.mkfifo(world.offsite)
    assert world.round() == [], "a FIFO is neither read nor waited on"
    world.offsite.unlink()
    world.offsite.mkdir()
    assert world.round() == []
    world.offsite.rmdir()
    world.offsite.write_text(offsite_record("failed", "2026-12-02T03:00:00Z"))
    assert states(world.round()) == [("offsite", "failed")], "the regular file is read"


def test_without_offsite_there_is_no_offsite_check(world):
    world.offsite.write_text(offsite_record("failed", "2026-12-02T03:00:00Z"))
    gateway = world.config["gateways"][0]
    gateway.update(offsite_record=None, offsite_log=None)
    assert world.round() == []
    assert "offsite" not in world.state()["gateways"]["hermes"]["values"]
    gateway.update(offsite_record=str(world.offsite), offsite_log=OFFSITE_LOG)
    assert states(world.round()) == [("offsite", "failed")], "the same file, once offsite is set"


def test_wechat_session_expired_lines_are_counted_never_echoed_and_clear_when_connected(world, receiver):
    world.round()
    world.log(HOSTILE + b" [weixin] Session expired; pausing for 10 minutes " + HOSTILE + b"\n")
    messages = world.round()
    assert states(messages) == [("wechat", "expired")] and "log in again" in messages[0]["text"]
    world.log(b"[weixin] Session expired; pausing for 10 minutes\n")
    assert world.round() == [], "still expired: said once"
    world.log(b"[weixin] Connected account=abc base=https://x\n")
    assert states(world.round()) == [("wechat", "ok")]
    assert all(b"PWNED" not in r["body"] for r in receiver.requests)


def test_wechat_lines_from_the_engines_log_count_too_and_silence_clears(world):
    world.round()
    (world.bin / "logs.out").write_bytes(b"[weixin] Session expired; pausing for 10 minutes\n")
    assert states(world.round()) == [("wechat", "expired")]
    (world.bin / "logs.out").write_bytes(b"")
    assert world.round() == []
    (world.bin / "logs.err").write_bytes(b"[weixin] Session expired; pausing for 10 minutes\n")  # the container's stderr
    assert world.round() == []
    (world.bin / "logs.err").unlink()
    assert states(world.round(world.watchdog.WECHAT_QUIET_SECONDS + 1)) == [("wechat", "ok")]


def test_a_planted_log_link_is_never_followed(world, tmp_path):
    secret = tmp_path / "root-only.log"
    secret.write_bytes(b"[weixin] Session expired; pausing for 10 minutes\n")
    log = world.data / "logs" / "gateway.log"
    log.unlink()
    log.symlink_to(secret)
    assert world.round() == []
    (world.data / "logs" / "gateway.log").unlink()
    os.rmdir(world.data / "logs")
    (world.data / "logs").symlink_to(tmp_path)
    (tmp_path / "gateway.log").write_bytes(b"[weixin] Session expired; pausing for 10 minutes\n")
    assert world.round() == []


def test_an_oom_kill_is_said_and_counted(world):
    world.round()
    world.events("oom hermes\ndie hermes\n")
    world.container(running=True, health="healthy", restarts=1)
    messages = world.round()
    assert ("oom", "oom-killed") in states(messages)
    assert "1024 MiB" in [m for m in messages if m["check"] == "oom"][0]["text"]
    assert world.state()["gateways"]["hermes"]["oom_kills_total"] == 1


def test_low_disk_is_said_once(world):
    world.config["min_free_percent"] = 101
    messages = world.round()
    assert states(messages) == [("disk", "low")], "bad on the first round: said"
    assert world.round() == []


def test_an_unreachable_receiver_gets_its_messages_next_round(world, receiver):
    world.round()
    world.config["receivers"].append({"label": "gone", "kind": "webhook", "url": "http://127.0.0.1:9/x"})
    world.container(running=False, health="")
    world.round()
    assert world.state()["outbox"]["gone"][0]["state"] == "down"
    assert world.state()["outbox"]["ops"] == []
    world.config["receivers"][1]["url"] = receiver.url + "/second"
    world.round()
    assert [r["path"] for r in receiver.requests] == ["/hook", "/second"]
    assert world.state()["outbox"]["gone"] == []


def test_a_round_waits_while_the_deploy_lock_is_held(world):
    world.round()
    lock = Path(world.config["lock_dir"])
    lock.mkdir()
    (lock / "holder.x").write_text("")
    os.utime(lock / "holder.x", (world.when + 60, world.when + 60))
    world.container(running=False, health="")
    assert world.round() == []
    os.utime(lock / "holder.x", (world.when - 1000, world.when - 1000))  # a stale lock does not silence it
    assert states(world.round()) == [("up", "down")]


# --- the receivers' bodies --------------------------------------------------------------------

MESSAGE = {"host": "vm", "profile": "hermes", "check": "up", "state": "down", "severity": "critical",
           "text": "[hermes] vm/hermes: is DOWN"}


def test_each_kind_gets_its_documented_json_body(watchdog):
    when = 1_800_000_000.5
    url, body = watchdog.request_for({"kind": "wecom", "url": "https://q/send?key=k"}, MESSAGE, when)
    assert (url, body) == ("https://q/send?key=k", {"msgtype": "text", "text": {"content": MESSAGE["text"]}})
    url, body = watchdog.request_for({"kind": "telegram", "api_url": "https://api.telegram.org", "bot_token": "1:T",
                                      "chat_id": -100}, MESSAGE, when)
    assert url == "https://api.telegram.org/bot1:T/sendMessage"
    assert body == {"chat_id": -100, "text": MESSAGE["text"], "disable_web_page_preview": True}
    assert watchdog.request_for({"kind": "feishu", "url": "https://f/hook"}, MESSAGE, when)[1] == {
        "msg_type": "text", "content": {"text": MESSAGE["text"]}}
    assert watchdog.request_for({"kind": "dingtalk", "url": "https://d/send?access_token=t"}, MESSAGE, when) == (
        "https://d/send?access_token=t", {"msgtype": "text", "text": {"content": MESSAGE["text"]}})
    url, body = watchdog.request_for({"kind": "webhook", "url": "https://w"}, MESSAGE, when)
    assert body == {**MESSAGE, "time": "2027-01-15T08:00:00Z"}


def test_dingtalk_and_feishu_sign_as_documented(watchdog):
    when = 1_800_000_000.5
    url, _ = watchdog.request_for({"kind": "dingtalk", "url": "https://d/send?access_token=t", "secret": "SECx"},
                                  MESSAGE, when)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    stamp = "1800000000500"
    expected = base64.b64encode(hmac.new(b"SECx", f"{stamp}\nSECx".encode(), hashlib.sha256).digest()).decode()
    assert query == {"access_token": ["t"], "timestamp": [stamp], "sign": [expected]}
    _, body = watchdog.request_for({"kind": "feishu", "url": "https://f/hook", "secret": "fs"}, MESSAGE, when)
    sign = base64.b64encode(hmac.new(b"1800000000\nfs", b"", hashlib.sha256).digest()).decode()
    assert body["timestamp"] == "1800000000" and body["sign"] == sign


def test_a_robots_refusal_is_reported_in_numbers_only(watchdog):
    assert watchdog.answer_problem("wecom", 200, b'{"errcode": 93000, "errmsg": "invalid webhook url https://x"}') \
        == "error code 93000"
    assert watchdog.answer_problem("feishu", 200, b'{"code": 19021, "msg": "sign match fail"}') == "error code 19021"
    assert watchdog.answer_problem("telegram", 200, b'{"ok": false}') == "ok is not true"
    assert watchdog.answer_problem("dingtalk", 200, b'{"errcode": 0}') is None
    assert watchdog.answer_problem("webhook", 503, b"") == "HTTP 503"


def test_the_test_mode_reports_each_receiver_without_its_url(watchdog, receiver, capsys):
    config = {"host": "vm", "receivers": [
        {"label": "ops", "kind": "webhook", "url": receiver.url + "/hook?token=SECRET-IN-URL"},
        {"label": "robot", "kind": "wecom", "url": "http://127.0.0.1:9/send?key=SECRET-IN-URL"}]}
    assert watchdog.test_all(config) == 1
    out = capsys.readouterr().out
    assert "ops (webhook): sent" in out and "robot (wecom): FAILED: not reached" in out
    assert "SECRET-IN-URL" not in out
    assert receiver.bodies()[0]["check"] == "test"
    receiver.reply = (200, b'{"errcode": 310000}')
    assert watchdog.test_all({"receivers": [{"label": "r", "kind": "dingtalk", "url": receiver.url}]}) == 1
    assert "r (dingtalk): FAILED: error code 310000" in capsys.readouterr().out


def test_main_reads_the_config_file_and_runs_the_test(watchdog, receiver, tmp_path, capsys):
    path = tmp_path / "alerts.json"
    path.write_text(json.dumps({"receivers": [{"label": "ops", "kind": "webhook", "url": receiver.url}]}))
    umask = os.umask(0o022)
    try:
        assert watchdog.main(["--test", "--config", str(path)]) == 0
        assert os.umask(0o022) == 0o077, "the script's files are root's alone"
    finally:
        os.umask(umask)  # main() sets the process's umask: give pytest's back
    assert "ops (webhook): sent" in capsys.readouterr().out


# --- metrics ----------------------------------------------------------------------------------

def test_the_textfile_holds_every_metric_per_profile(world):
    world.backup.write_text(json.dumps({"profile": "hermes", "result": "success", "time": "2027-01-15T07:00:00Z"}))
    world.offsite.write_text(offsite_record("success", "2027-01-15T07:30:00Z"))
    world.when = 1_800_000_000.0 - 60  # the round is at 2027-01-15T08:00:00Z
    world.round()
    path = Path(world.config["textfile"])
    text = path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    samples = {line.split(" ")[0]: line.split(" ")[1] for line in text.splitlines() if not line.startswith("#")}
    label = '{host="vm",profile="hermes"}'
    assert samples[f"hermes_up{label}"] == "1" and samples[f"hermes_ready{label}"] == "1"
    assert samples[f"hermes_restarts_total{label}"] == "0" and samples[f"hermes_oom_kills_total{label}"] == "0"
    assert samples[f"hermes_memory_limit_bytes{label}"] == str(1 << 30)
    assert samples[f"hermes_last_good_backup_age_seconds{label}"] == "3600"
    assert samples[f"hermes_last_good_offsite_backup_age_seconds{label}"] == "1800"
    assert "# TYPE hermes_last_good_offsite_backup_age_seconds gauge" in text
    assert samples["hermes_watchdog_last_run_timestamp_seconds"] == "1800000000"
    assert "# TYPE hermes_restarts_total counter" in text and "# TYPE hermes_up gauge" in text
    world.container(running=False, health="")
    world.round()
    assert f"hermes_up{label} 0" in path.read_text() and f"hermes_ready{label} 0" in path.read_text()
    assert [p.name for p in path.parent.iterdir()] == ["hermes.prom"], "no temp file left"


def test_the_offsite_age_is_of_the_last_good_upload_and_absent_before_any(world):
    world.offsite.write_text(offsite_record("failed", "2027-01-15T07:00:00Z"))
    world.when = 1_800_000_000.0 - 60  # rounds at 08:00, 09:00 and 10:00 (2027-01-15)
    world.round()
    path = Path(world.config["textfile"])
    assert "hermes_last_good_offsite_backup_age_seconds{" not in path.read_text(), "no good upload seen yet"
    world.offsite.write_text(offsite_record("success", "2027-01-15T07:00:00Z"))
    world.round(3600)
    world.offsite.write_text(offsite_record("failed", "2027-01-15T08:30:00Z"))
    world.round(3600)
    assert 'hermes_last_good_offsite_backup_age_seconds{host="vm",profile="hermes"} 10800' in path.read_text(), \
        "a failed upload keeps the age of the last good one"


def test_metric_labels_are_escaped(watchdog):
    text = watchdog.metrics_text({"host": 'a"b\\c'}, {"x": {"values": {"up": "up"}}}, 0)
    assert 'hermes_up{host="a\\"b\\\\c",profile="x"} 1' in text


@pytest.mark.skipif(sys.platform != "linux", reason="cgroup v2 paths")
def test_memory_used_is_read_from_the_containers_cgroup_only(watchdog):
    assert watchdog.memory_used("f" * 64) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to the data dir's owner needs root")
def test_the_data_dirs_log_is_read_as_its_owner_below_a_root_only_parent(world):
    """The data dir sits in a root-only parent (like /root/.hermes) and is its owner's; a file
    only root could read there is not read."""
    world.round()
    os.chmod(world.tmp, 0o700)
    for path in (world.data, world.data / "logs", world.data / "logs" / "gateway.log"):
        os.chown(path, 12345, 12345)
    os.chmod(world.data, 0o700)
    gateway = world.config["gateways"][0]
    gateway["uid"] = gateway["gid"] = 12345
    world.log(b"[weixin] Session expired; pausing for 10 minutes\n")
    assert states(world.round()) == [("wechat", "expired")], "read through the handle root opened"
    world.log(b"[weixin] Connected account=abc\n")
    os.chown(world.data / "logs" / "gateway.log", 0, 0)
    os.chmod(world.data / "logs" / "gateway.log", 0o600)
    assert world.round() == [], "a root-only file in the data dir is not read (the child is not root)"


def test_a_hung_docker_does_not_hang_the_round(world, watchdog, monkeypatch):
    world.round()
    (world.bin / "docker").write_text("#!/bin/sh\nexec sleep 30\n")
    monkeypatch.setattr(watchdog, "COMMAND_SECONDS", 0.5)
    started = time.monotonic()
    messages = world.round()
    assert time.monotonic() - started < 10, "each docker call is cut at COMMAND_SECONDS"
    assert states(messages) == [("up", "down")]


def test_a_missing_textfile_directory_does_not_lose_the_alerts(world, receiver):
    world.config["textfile"] = str(world.tmp / "absent" / "hermes.prom")
    world.container(running=False, health="")
    assert states(world.round()) == [("up", "down")] and len(receiver.requests) == 1
    assert world.state()["gateways"]["hermes"]["values"]["up"] == "down"
