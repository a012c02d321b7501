"""Day-two commands: CLI wiring, the Hermes passthrough, logs and restart commands."""
from __future__ import annotations


import pytest

from hermes_infra import cli
from hermes_infra.daytwo import hermescli, lifecycle
from hermes_infra.daytwo.remote import DayTwoError, RunResult, ssh_argv, wrap
from hermes_infra.checks.connect import Connection

from tests.unit.daytwo_fakes import FakeRemote, host

COMMANDS = ("status", "logs", "restart", "hermes", "pairing", "doctor", "backup", "restore")


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([name, "--help"])
    assert exit_info.value.code == 0
    assert "usage: hermes-infra " + name in capsys.readouterr().out


def test_passthrough_args_come_after_the_double_dash():
    parser = cli.build_parser()
    args = parser.parse_args(["hermes", "root@203.0.113.7", "--profile", "work"])
    assert args.profile == "work"
    args = parser.parse_args(["pairing", "approve", "root@203.0.113.7", "weixin", "ABCD2345"])
    assert (args.pairing_action, args.platform, args.value) == ("approve", "weixin", "ABCD2345")
    assert hermescli.shortcut_args("approve", "weixin", "ABCD2345") == ["pairing", "approve", "weixin", "ABCD2345"]


def test_hermes_runs_in_a_one_off_container_as_the_image_user():
    target = host()
    command = hermescli.hermes_command(target.settings, target.settings.gateways[0], ["pairing", "list"], tty=False)
    assert command.startswith("cd /opt/hermes && docker compose -p hermes -f compose.yaml run --rm --no-deps")
    assert "-T hermes pairing list" in command
    assert "--user" not in command and "-u 0" not in command and "root" not in command.split("; rc=")[0]
    assert "chown -h 10000:10000" in command  # files left by anyone else are given back
    tty = hermescli.hermes_command(target.settings, target.settings.gateways[0], ["gateway", "setup"], tty=True)
    assert " -T " not in tty


def test_hermes_refuses_a_second_gateway_and_notes_restarts():
    with pytest.raises(DayTwoError, match="second gateway"):
        hermescli.check_args(["gateway", "run"])
    with pytest.raises(DayTwoError, match="second gateway"):
        hermescli.check_args(["gateway"])
    hermescli.check_args(["gateway", "setup"])
    assert hermescli.needs_restart(["config", "set", "x", "y"])
    assert hermescli.needs_restart(["gateway", "setup"])
    assert not hermescli.needs_restart(["pairing", "approve", "weixin", "X"])


@pytest.mark.parametrize("args", [
    ["-p", "x", "gateway", "run"], ["-p", "x", "update"], ["--profile=x", "update"], ["--profile", "x", "gateway"],
    ["-m", "m", "gateway", "start"], ["--some-new-option", "x", "gateway", "run"], ["--some-flag", "update"],
    ["--", "update"], ["update", "--check"], ["gateway", "-p", "x", "run"], ["gateway", "install"],
])
def test_options_and_their_values_do_not_hide_a_refused_command(args):
    """F16: an option's value stayed among the words, so `-p x gateway run` was allowed."""
    with pytest.raises(DayTwoError, match="is not run by hermes-infra"):
        hermescli.check_args(args)


@pytest.mark.parametrize("args", [["-p", "x", "pairing", "list"], ["--profile", "gateway", "pairing", "list"],
                                  ["gateway", "setup"], ["-p", "work", "gateway", "status"], ["doctor", "--fix"],
                                  ["config", "set", "update", "gateway"]])
def test_commands_that_only_look_like_refused_ones_run(args):
    hermescli.check_args(args)


def test_hermes_output_without_a_terminal_is_cleaned():
    remote = FakeRemote(lambda c: RunResult(0, b"user \x1b]0;owned\x07\xe2\x80\xaeevil\nsecond", "err \x1b[2J\n"))
    written, errors = [], []
    hermescli.run_hermes([host()], None, ["pairing", "list"], tty=False, say=lambda m: None, write=written.append,
                         err=errors.append, remote_for=lambda h: remote)
    out = b"".join(written).decode()
    assert out == "user ?]0;owned??evil\nsecond\n"
    assert "\x1b" not in "".join(errors) and "err" in "".join(errors)


def test_hermes_streams_output_and_says_pairing_is_live():
    remote = FakeRemote(lambda c: RunResult(0, b"Approved!\n", ""))
    said, written = [], []
    runs = hermescli.run_hermes([host()], None, ["pairing", "approve", "weixin", "ABCD2345"], tty=False,
                                say=said.append, write=written.append, remote_for=lambda h: remote)
    assert runs[0].rc == 0 and b"".join(written) == b"Approved!\n"
    assert any("no restart needed" in s for s in said)


def test_interactive_uses_ssh_with_a_tty_and_one_gateway_only():
    calls = []
    audit_remote = FakeRemote()  # the audit record of `gateway setup` goes over its own connection
    runs = hermescli.run_hermes([host()], None, ["gateway", "setup"], tty=True, say=lambda m: None,
                                interactive_runner=lambda argv: calls.append(argv) or 0,
                                remote_for=lambda h: audit_remote)
    assert runs[0].rc == 0 and calls[0][:2] == ["ssh", "-t"] and "root@203.0.113.7" in calls[0]
    assert [c for c in audit_remote.commands if "audit.jsonl" in c]
    two = host(gateways=[{"name": "hermes"}, {"name": "work", "api": {"port": 8643}}])
    with pytest.raises(DayTwoError, match="one gateway at a time"):
        hermescli.run_hermes([two], None, ["gateway", "setup"], tty=True)


def test_ssh_argv_keeps_the_inventory_host_key_rules_and_sudo():
    connection = Connection(name="h", hostname="127.0.0.1", port=2222, user="ops", key="/k",
                            known_hosts_file="/kh", strict_host_key_checking="yes", sudo=True)
    argv = ssh_argv(connection, "docker ps")
    assert argv[:4] == ["ssh", "-t", "-p", "2222"]
    assert "StrictHostKeyChecking=yes" in argv and "UserKnownHostsFile=/kh" in argv
    assert argv[-1] == wrap("docker ps", True) and argv[-1].startswith("sudo -n -- sh -c ")


def test_logs_command_and_local_grep():
    command = lifecycle.logs_command("hermes", lifecycle.LogOptions(follow=True, lines=50, since="10m"))
    assert command == "docker logs --follow --tail 50 --since 10m hermes 2>&1"
    with pytest.raises(DayTwoError, match="is not a time"):
        lifecycle.logs_command("hermes", lifecycle.LogOptions(since="10m; rm -rf /"))
    out = []
    remote = FakeRemote(lambda c: "a weixin line\nother\nweixin \x1b[31mred\n")
    code = lifecycle.show_logs([host()], None, lifecycle.LogOptions(grep="weixin"), emit=out.append,
                               remote_for=lambda h: remote)
    assert code == 0 and out == ["a weixin line", "weixin ?[31mred"]
    with pytest.raises(DayTwoError, match="regular expression"):
        lifecycle.compile_grep("(")


def test_restart_ends_with_the_health_gate_and_stops_at_the_first_failure():
    two = host(gateways=[{"name": "hermes"}, {"name": "work", "api": {"port": 8643}}])
    remote = FakeRemote(lambda c: RunResult(1, b"", "did not answer"))
    results = lifecycle.restart([two], None, say=lambda m: None, remote_for=lambda h: remote)
    assert len(results) == 1 and not results[0].ok
    command = remote.commands[0]
    assert "restart -t 60 hermes" in command
    assert "/health" in command and "/v1/models" in command and "-H @-" in command


def test_try_ends_with_a_forwarded_port_and_a_curl_line_without_the_key(tmp_path):
    from types import SimpleNamespace

    from hermes_infra import trylocal

    script = trylocal.proxy_script()
    assert "ListenStream=18642" in script and "systemd-socket-proxyd 127.0.0.1:8642" in script
    assert "systemctl enable --now hermes-try-api.socket" in script
    header = tmp_path / "api-key.header"
    vm = SimpleNamespace(ssh_port=2222)
    text = trylocal.usage_text("try", vm, {"ssh_key": "/k"}, "http://127.0.0.1:40001", header, "200")
    assert f"curl -H @{header} http://127.0.0.1:40001/v1/models" in text
    assert "answered 200" in text and "Bearer" not in text


def test_try_prints_how_to_set_a_provider_with_the_key_in_a_file_not_the_command_line(tmp_path):
    from types import SimpleNamespace

    from hermes_infra import trylocal

    up_args = ["hermes-vm-try", "--port", "2222", "--key", "/k", "--data", 'image={"ref": "hermes-agent:0.19.0-local"}']
    text = trylocal.usage_text("try", SimpleNamespace(ssh_port=2222), {"ssh_key": "/k"}, "http://127.0.0.1:40001",
                               tmp_path / "h", "200", up_args=up_args)
    assert "chmod 600 ~/.config/hermes-infra/try/all.py" in text and '"api_key": "KEY"' in text
    assert "hermes-infra up hermes-vm-try --port 2222 --key /k --data 'image={\"ref\": \"hermes-agent:0.19.0-local\"}' " \
           "--group-data ~/.config/hermes-infra/try" in text
    assert "gateways[].env" not in text, "the old advice (OPENAI_API_KEY in env) never reaches a custom endpoint"
    snippet = text.split("<<'PY'\n", 1)[1].split("\nPY\n", 1)[0]
    from hermes_infra.settings.loading import collect, settings_from_raw
    namespace: dict = {}
    exec(snippet.replace('"KEY"', '"sk-0123456789abcdef0123"'), namespace)  # noqa: S102 - our own printed example
    model = settings_from_raw(collect([{"gateways": namespace["gateways"]}])).gateways[0].config.model
    assert model.provider == "custom" and model.key_env is None


def test_check_with_only_an_html_report_still_prints_the_recap_and_the_path(tmp_path, capsys):
    """Issue 19: `check --report html=PATH` alone printed nothing and exited 1."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])  # nothing listens: every control is an error, at once
    page = tmp_path / "check.html"
    assert cli.main(["check", "root@127.0.0.1", "--port", port, "--report", f"html={page}"]) == 1
    out, err = capsys.readouterr()
    assert page.exists()
    assert "Host 127.0.0.1: " in out and "cannot connect" in out and out.rstrip().splitlines()[-1].startswith(
        "FAILED: 1 host(s)")
    assert f"html report: {page}" in err
    # a JSON report on the terminal stays JSON: the recap goes to stderr
    assert cli.main(["check", "root@127.0.0.1", "--port", port, "--report", "json"]) == 1
    out, err = capsys.readouterr()
    import json
    json.loads(out)
    assert "FAILED: 1 host(s)" in err


def test_try_prints_day_two_commands_and_the_redeploy_with_its_own_settings(tmp_path):
    """Issue 19: the Day-two target lacked try's settings (`check` on it failed twice, `up` on it
    would have swapped the Docker packages and pulled an unreachable image)."""
    from types import SimpleNamespace

    from hermes_infra import commands, trylocal

    target = commands.Target(inventory="hermes-vm-try", port=2222, user="root", key="/k", data={
        "ssh_hostname": "127.0.0.1", "docker": '{"install_source": "distro"}',
        "image": '{"ref": "hermes-agent:0.19.0-local", "source": "archive", "archive": "/img"}'})
    up_args = target.shown_cli_args()
    text = trylocal.usage_text("try", SimpleNamespace(ssh_port=2222), {"ssh_key": "/k"}, "http://127.0.0.1:40001",
                               tmp_path / "h", "200", up_args=up_args)
    shown = " ".join(__import__("shlex").quote(a) for a in up_args)
    assert "install_source" in shown and '"source": "archive"' in shown
    for command in ("status", "check", "smoke", "up"):
        assert f"hermes-infra {command} {shown}" in text, command
    assert "Redeploy:   hermes-infra up " in text
    assert "hermes-infra status inventory/local.py" in text  # the VM `try`: group_data/local.py has its settings
    other = trylocal.usage_text("other", SimpleNamespace(ssh_port=2222), {"ssh_key": "/k"}, "http://127.0.0.1:40001",
                                tmp_path / "h", "200", up_args=up_args)
    assert "inventory/local.py" not in other  # it names the VM `try` only
    for line in text.splitlines():
        if ("hermes-infra status" in line or "hermes-infra check" in line) and "inventory/local.py" not in line:
            assert "install_source" in line, line


@pytest.mark.parametrize("args", [["config", "unset", "display.tool_progress"], ["-p", "work", "config", "set", "a", "b"],
                                  ["config", "set", "x", "y"], ["doctor", "--fix"], ["some-new-command"]])
def test_restart_follows_any_command_that_may_change_config(args):
    """Issue 19: `hermes --restart -- config unset ...` neither restarted nor warned (`config unset`
    was missing from a list of commands that change config; `-p work` was read as the command)."""
    remote = FakeRemote(lambda c: "")
    said = []
    runs = hermescli.run_hermes([host()], None, args, tty=False, restart_after=True, say=said.append,
                                write=lambda data: None, remote_for=lambda h: remote)
    assert runs[0].rc == 0
    assert any("restart -t 60 hermes" in c for c in remote.commands), said
    assert hermescli.needs_restart(args)


def test_restart_says_why_it_does_not_restart():
    said = []
    remote = FakeRemote(lambda c: "")
    hermescli.run_hermes([host()], None, ["pairing", "list"], tty=False, restart_after=True, say=said.append,
                         write=lambda data: None, remote_for=lambda h: remote)
    assert not any("restart -t" in c for c in remote.commands)
    assert any("--restart: not restarting hermes" in s and "live" in s for s in said)
    said.clear()
    failing = FakeRemote(lambda c: RunResult(2, b"", "no such key"))
    runs = hermescli.run_hermes([host()], None, ["config", "unset", "nope"], tty=False, restart_after=True,
                                say=said.append, write=lambda data: None, err=lambda text: None,
                                remote_for=lambda h: failing)
    assert runs[0].rc == 2 and not any("restart -t" in c for c in failing.commands)
    assert any("hermes exited 2" in s for s in said)
    said.clear()
    hermescli.run_hermes([host()], None, ["config", "unset", "x"], tty=False, say=said.append,
                         write=lambda data: None, remote_for=lambda h: remote)
    assert any("only at start" in s and "hermes-infra restart web1 --profile hermes" in s for s in said)


@pytest.mark.parametrize("args", [["status"], ["status", "--all"], ["-p", "work", "gateway", "status"]])
def test_hermes_status_says_it_ran_beside_the_gateway(args):
    """Issue 19: Hermes's own `status` says the gateway is "stopped": it runs in a one-off container."""
    said, written = [], []
    remote = FakeRemote(lambda c: RunResult(0, b"Gateway: stopped\n", ""))
    hermescli.run_hermes([host()], None, args, tty=False, say=said.append, write=written.append,
                         remote_for=lambda h: remote)
    assert b"".join(written) == b"Gateway: stopped\n"  # Hermes's output untouched
    assert any("one-off container" in s and "hermes-infra status web1" in s for s in said)
    assert not hermescli.needs_restart(args)


FOLLOWED_DOCKER = """#!/bin/sh
echo $$ > "$PID_FILE"
echo started
exec sleep 600
"""


def test_logs_follow_ends_docker_logs_on_the_host_when_the_session_hangs_up(tmp_path):
    """Issue 19: after Ctrl-C, `docker logs --follow` stayed on the host (no terminal, so no
    SIGHUP; a quiet log never writes to find its pipe closed). The command `logs -f` sends is run
    by sh against a fake docker on a quiet log; closing its stdin (what the session's end does)
    must end it."""
    import os
    import signal
    import subprocess
    import time

    sent = []

    class Recording(FakeRemote):
        def run(self, command, *, stdin=None, on_stdout=None, timeout=None):
            sent.append((command, stdin))
            return RunResult(0, b"", "")

    lifecycle.show_logs([host()], None, lifecycle.LogOptions(follow=True), emit=lambda line: None,
                        remote_for=lambda h: Recording())
    [(command, stdin)] = sent
    assert stdin is not None and not isinstance(stdin, bytes), "the session's stdin must stay open while following"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FOLLOWED_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    pid_file = tmp_path / "pid"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", PID_FILE=str(pid_file))
    shell = subprocess.Popen(["sh", "-c", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                             start_new_session=True)
    try:
        assert shell.stdout.readline() == b"started\n"
        child = int(pid_file.read_text())
        shell.stdin.close()  # the client went away
        shell.wait(timeout=10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("docker logs outlived the session")
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait()
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError, FileNotFoundError):
            pass


def test_logs_follow_ends_with_docker_logs_and_keeps_its_exit_code(tmp_path):
    """The other way round: a log that ends (the container removed) ends the follow, its code kept,
    though the session's stdin is still open."""
    import os
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text("#!/bin/sh\necho last line\nexit 3\n")
    (bin_dir / "docker").chmod(0o755)
    command = lifecycle.follow_command(lifecycle.logs_command("hermes", lifecycle.LogOptions(follow=True)))
    shell = subprocess.Popen(["sh", "-c", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             env=dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}"))
    try:
        out = shell.stdout.read()  # EOF once nothing but the watcher holds the pipe: it holds none
        assert out == b"last line\n" and shell.wait(timeout=10) == 3
    finally:
        shell.stdin.close()
        if shell.poll() is None:
            shell.kill()
            shell.wait()


def audit_lines(remote) -> list[dict]:
    """The records a fake host was asked to append (the line is the quoted printf argument)."""
    import json
    import shlex

    found = []
    for command in remote.commands:
        if "audit.jsonl" in command:
            words = shlex.split(command.split("printf %s ", 1)[1].split(" >> ", 1)[0])
            found.append(json.loads(words[0]))
    return found


def test_restart_is_audited_per_host():
    """Issue 19: the audit log missed restarts."""
    remote = FakeRemote(lambda c: "")
    results = lifecycle.restart([host()], None, say=lambda m: None, remote_for=lambda h: remote)
    assert results[0].ok
    [record] = audit_lines(remote)
    assert (record["command"], record["result"], record["changed"]) == ("restart", "success", ["restart hermes"])
    assert set(record) == {"time", "who", "command", "revision", "image", "result", "changed", "seconds", "message"}
    failing = FakeRemote(lambda c: "" if "audit.jsonl" in c else RunResult(1, b"", "no"))
    lifecycle.restart([host()], None, say=lambda m: None, remote_for=lambda h: failing)
    assert audit_lines(failing)[0]["result"] == "failed"


@pytest.mark.parametrize("args, name", [
    (["config", "set", "model.api_key", "sk-secret-0123456789"], "hermes config set"),
    (["config", "unset", "display.tool_progress"], "hermes config unset"),
    (["pairing", "approve", "weixin", "ABCD2345"], "hermes pairing approve"),
    (["--token", "sk-secret-0123456789", "login"], "hermes login"),
])
def test_hermes_changes_are_audited_without_their_arguments(args, name):
    """Issue 19: the audit log missed Hermes CLI changes. A value may be a secret: only the
    command's words from allow-lists are recorded."""
    remote = FakeRemote(lambda c: "")
    hermescli.run_hermes([host()], None, args, tty=False, say=lambda m: None, write=lambda d: None,
                         remote_for=lambda h: remote)
    [record] = audit_lines(remote)
    assert record["command"] == "hermes" and record["result"] == "success"
    assert record["changed"] == [f"{name} on hermes"]
    audited = [c for c in remote.commands if "audit.jsonl" in c][0]
    assert "sk-secret" not in audited and "ABCD2345" not in audited and "display.tool_progress" not in audited


def test_reading_commands_are_not_audited():
    remote = FakeRemote(lambda c: "")
    for args in (["pairing", "list"], ["status"], ["config", "get", "x"]):
        hermescli.run_hermes([host()], None, args, tty=False, say=lambda m: None, write=lambda d: None,
                             remote_for=lambda h: remote)
    assert audit_lines(remote) == []


def test_manual_lock_acquire_and_release_are_audited(monkeypatch, capsys):
    """Issue 19: the audit log missed `lock acquire` and `lock release`."""
    from hermes_infra.release import cli as release_cli
    from hermes_infra.release.remote import Result

    class LockHost:
        name = "web1"

        def __init__(self):
            self.commands = []

        def run(self, command, timeout=120):
            self.commands.append(command)
            return Result(0, "acquired\n" if "mkdir -m 0700" in command else "", "")

        def close(self):
            pass

    remote = LockHost()
    monkeypatch.setattr(release_cli, "remotes_for", lambda target, limit: {"web1": remote})
    assert cli.main(["lock", "acquire", "root@203.0.113.7", "-m", "maintenance"]) == 0
    assert cli.main(["lock", "release", "root@203.0.113.7"]) == 0
    records = audit_lines(remote)
    assert [(r["command"], r["result"]) for r in records] == [("lock acquire", "success"), ("lock release", "success")]
    assert records[0]["message"] == "maintenance"
