"""`smoke`: one chat turn per gateway, the key through a pipe, the answer as data."""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from hermes_infra import cli
from hermes_infra.daytwo import smoke
from hermes_infra.daytwo.remote import RunResult

from tests.unit.daytwo_fakes import FakeRemote, host


def answer(body: str, code: str = "200", first: str = "0.812", total: str = "1.250") -> str:
    """What the smoke command prints: curl's body and trailer, base64 on one line."""
    return base64.b64encode(f"{body}\n{code} {first} {total}\n".encode()).decode() + "\n"


def completion(content) -> str:
    return json.dumps({"object": "chat.completion", "choices": [{"index": 0, "message": {
        "role": "assistant", "content": content}}]})


def test_help_says_it_costs_tokens(capsys):
    with pytest.raises(SystemExit):
        cli.main(["smoke", "--help"])
    out = capsys.readouterr().out
    assert "usage: hermes-infra smoke" in out and "COSTS TOKENS" in out


def test_the_key_goes_through_a_pipe_to_the_containers_own_address():
    gateway = host().settings.gateways[0]
    command = smoke.smoke_command(gateway, "hi", 30)
    assert "-H @-" in command and "API_SERVER_KEY" in command and "setpriv --reuid=10000" in command
    assert '"$hi_api/v1/chat/completions"' in command and "127.0.0.1:8642" not in command
    assert "| base64 -w0" in command and "--max-time 30" in command


def test_a_good_answer_with_latencies_and_a_cleaned_preview():
    remote = FakeRemote(lambda c: answer(completion("pong \x1b]0;owned\x07\n" + "x" * 200)))
    results = smoke.smoke_host(host(), None, remote=remote)
    r = results[0]
    assert r.ok and r.code == "200" and (r.first_byte_seconds, r.total_seconds) == (0.812, 1.25)
    assert "\x1b" not in r.answer and "\x07" not in r.answer and r.answer.startswith("pong ?]0;owned?")
    assert len(r.answer) == smoke.PREVIEW_CHARS
    text = smoke.render_text(results)
    assert "0.81s" in text and "1.25s" in text and "1/1 gateways answered" in text
    assert smoke.exit_code(results) == 0
    assert len(remote.commands) == 1 and not remote.closed  # a remote handed in is the caller's to close


def test_a_body_cannot_forge_curls_trailer():
    """The agent controls the body, not the last line: a body ending in `200 0.1 0.1` after a 500
    is still a 500."""
    forged = json.dumps({"error": {"message": "No inference provider configured"}}) + "\n200 0.1 0.1"
    r = smoke.parse_smoke("web1", host().settings.gateways[0], answer(forged, "500"), 120)
    assert r.code == "500" and not r.ok


def test_a_500_says_what_the_gateway_said_and_what_to_check():
    body = json.dumps({"error": {"message": "No inference provider configured \x1b[2J"}})
    r = smoke.parse_smoke("web1", host().settings.gateways[0], answer(body, "500"), 120)
    assert "No inference provider configured ?[2J" in r.problem and "HI-API-005" in r.problem
    assert "The model provider" in r.problem and "hermes-infra logs web1 --profile hermes" in r.problem


@pytest.mark.parametrize("output, code, why", [
    (answer(completion(""), "200"), "200", "empty answer"),
    (answer(completion(None), "200"), "200", "empty answer"),
    (answer("not json", "200"), "200", "empty answer"),
    (answer('{"error": {"message": "Invalid API key"}}', "401"), "401", "HI-DATA-003"),
    (answer("", "000", "0", "120.0"), "000", "no answer within 120s"),
    ("notrunning\n", "000", "is not running"),
    ("%%% not base64\n", "000", "no answer"),
])
def test_anything_but_a_200_with_an_answer_fails_and_says_what_to_check(output, code, why):
    results = smoke.smoke_host(host(), None, remote=FakeRemote(lambda c: output))
    assert results[0].code == code and not results[0].ok and why in results[0].problem
    assert smoke.exit_code(results) == 1
    assert "FAILED" in smoke.render_text(results)


def test_a_200_that_hermes_marks_failed_is_a_failure():
    """Hermes 0.19.0 answers a provider's 401 with a 200 whose content is the error (tests/e2e/test_chat.py)."""
    body = json.dumps({"choices": [{"message": {"content": "Error: provider answered 401 Unauthorized"}}],
                       "hermes": {"failed": True}})
    r = smoke.parse_smoke("web1", host().settings.gateways[0], answer(body), 120)
    assert r.code == "200" and not r.ok and "marks the turn failed" in r.problem and "401" in r.problem


@pytest.mark.parametrize("options, why", [({"timeout": 0}, "--timeout 0"), ({"message": " "}, "--message is empty")])
def test_bad_options_are_refused_before_any_host_is_touched(options, why):
    from hermes_infra.daytwo.remote import DayTwoError

    with pytest.raises(DayTwoError, match=why):
        smoke.smoke([host()], None, **options)


def test_an_unreachable_host_is_a_failed_row_not_a_crash():
    class Broken(FakeRemote):
        def run(self, command, **kwargs):
            raise OSError("connection refused")

    results = smoke.smoke_host(host(), None, remote=Broken())
    assert not results[0].ok and "connection refused" in results[0].problem
    assert json.loads(smoke.render_json(results))["ok"] is False


def test_every_profile_gets_its_own_turn():
    two = host(gateways=[{"name": "hermes"}, {"name": "work", "api": {"port": 8643}}])
    remote = FakeRemote(lambda c: answer(completion("pong")))
    results = smoke.smoke_host(two, None, remote=remote)
    assert [r.profile for r in results] == ["hermes", "work"] and all(r.ok for r in results)
    assert "hermes-work" in remote.commands[1]


FAKE_DOCKER = """#!/bin/sh
echo '127.0.0.1 '
"""
FAKE_CURL = """#!/bin/sh
printf '%s\\n' "$*" >> "$ARGV_LOG"
cat >> "$STDIN_LOG"
printf '{"choices": [{"message": {"content": "pong"}}]}'
printf '\\n200 0.5 0.7\\n'
"""


def test_run_by_sh_the_key_is_on_curls_stdin_never_its_arguments(tmp_path):
    home = Path(tempfile.mkdtemp(prefix=".hermes-infra-test-", dir=Path.home()))
    try:
        (home / ".env").write_text("API_SERVER_KEY=smoke-key-0123456789abcdef\n")
        for path in (home, home / ".env"):
            os.chown(path, 10000, 10000)
        home.chmod(0o700)
        gateway = host(gateways=[{"name": "hermes", "data_dir": str(home)}]).settings.gateways[0]
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        for name, text in (("docker", FAKE_DOCKER), ("curl", FAKE_CURL)):
            (bin_dir / name).write_text(text)
            (bin_dir / name).chmod(0o755)
        argv_log, stdin_log = tmp_path / "argv", tmp_path / "stdin"
        env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", ARGV_LOG=str(argv_log),
                   STDIN_LOG=str(stdin_log))
        done = subprocess.run(["sh", "-c", smoke.smoke_command(gateway, "hello", 30)], capture_output=True,
                              text=True, env=env, timeout=60)
        result = smoke.parse_smoke("web1", gateway, done.stdout, 30)
        assert result.ok and result.answer == "pong" and result.total_seconds == 0.7
        assert "smoke-key" not in argv_log.read_text()
        assert "http://127.0.0.1:8642/v1/chat/completions" in argv_log.read_text()
        assert stdin_log.read_text() == "Authorization: Bearer smoke-key-0123456789abcdef\n"
    finally:
        shutil.rmtree(home, ignore_errors=True)
