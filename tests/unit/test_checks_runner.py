"""The runner, the CLI and the pytest module, without a deployed host: connections from inventory
data, unreachable hosts, report files, exit codes, and the shipped test module under pytest."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hermes_infra import cli, commands
from hermes_infra.checks import TEST_MODULE, all_controls, connect, runner
from hermes_infra.checks.runner import instances
from hermes_infra.settings.schema import HostSettings


def closed_port() -> int:
    """A local port nothing listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_connection_from_inventory_data(tmp_path):
    target = commands.Target(inventory="vm-1", data={
        "ssh_hostname": "127.0.0.1", "ssh_port": "2222", "ssh_user": "root", "ssh_key": "/keys/id",
        "ssh_known_hosts_file": "/keys/known_hosts", "ssh_strict_host_key_checking": "yes",
        "ssh_allow_agent": "False", "ssh_look_for_keys": "False"}, cwd=str(tmp_path))
    [host] = commands.load_inventory(target)
    connection = connect.connection_for(host)
    assert (connection.hostname, connection.port, connection.user, connection.key) == ("127.0.0.1", 2222, "root", "/keys/id")
    assert (connection.known_hosts_file, connection.strict_host_key_checking) == ("/keys/known_hosts", "yes")
    assert (connection.allow_agent, connection.look_for_keys, connection.sudo) == (False, False, False)
    assert connection.address == "root@127.0.0.1:2222"

    sudo = commands.Target(inventory="deploy@203.0.113.9", port=2200, sudo=True, cwd=str(tmp_path))
    [host] = commands.load_inventory(sudo)
    connection = connect.connection_for(host, sudo=True)
    assert (connection.hostname, connection.port, connection.user, connection.sudo) == ("203.0.113.9", 2200, "deploy", True)
    assert connection.strict_host_key_checking == "accept-new"
    backend = connect.testinfra_host(connection).backend
    assert backend.get_command("id -u") == "sudo /bin/sh -c 'id -u'"
    assert backend.connect_count == 0  # nothing connects before the first command


def test_unreachable_host_is_an_error_on_every_control(tmp_path):
    port = closed_port()
    target = commands.Target(inventory="root@127.0.0.1", port=port, cwd=str(tmp_path))
    code = runner.run_checks([target], [f"json={tmp_path}/out.json", f"junit={tmp_path}/out.xml"])
    assert code == 1
    report = json.loads((tmp_path / "out.json").read_text())
    [host] = report["hosts"]
    expected = len(list(instances(HostSettings())))
    assert report["summary"]["error"] == report["summary"]["total"] == expected
    assert host["connection_error"] and {r["status"] for r in host["results"]} == {"error"}
    assert all(f"127.0.0.1:{port}" in r["message"] for r in host["results"])
    junit = ET.parse(tmp_path / "out.xml").getroot()
    assert junit.get("errors") == junit.get("tests") == str(expected)


def test_waivers_can_accept_an_unreachable_host_until_they_expire(tmp_path):
    target = commands.Target(inventory="root@127.0.0.1", port=closed_port(), cwd=str(tmp_path))
    waivers = tmp_path / "waivers.yaml"
    waivers.write_text("waivers:\n  - control: 'HI-*'\n    hosts: '127.0.0.*'\n"
                       "    justification: host is being rebuilt (OPS-7)\n    expires: 2999-01-01\n")
    assert runner.run_checks([target], [f"json={tmp_path}/a.json"], str(waivers)) == 0
    assert json.loads((tmp_path / "a.json").read_text())["summary"]["waived"] > 0
    waivers.write_text(waivers.read_text().replace("2999-01-01", "2001-01-01"))
    assert runner.run_checks([target], [f"text={tmp_path}/b.txt"], str(waivers)) == 1
    assert "EXPIRED on 2001-01-01: HI-* on 127.0.0.* no longer waives anything" in (tmp_path / "b.txt").read_text()


def test_cli_check_exit_codes(tmp_path, capsys):
    port = str(closed_port())
    assert cli.main(["check", "root@127.0.0.1", "--port", port, "--report", f"json={tmp_path}/x.json"]) == 1
    assert (tmp_path / "x.json").exists()
    # bad input never connects anywhere and exits 2
    assert cli.main(["check", "root@127.0.0.1", "--port", port, "--report", "pdf=x.pdf"]) == 2
    assert "unknown report format 'pdf'" in capsys.readouterr().err
    bad = tmp_path / "waivers.yaml"
    bad.write_text("- control: HI-NOPE-001\n  justification: no such control here\n  expires: 2030-01-01\n")
    assert cli.main(["check", "root@127.0.0.1", "--port", port, "--waivers", str(bad)]) == 2
    assert "matches no control" in capsys.readouterr().err
    assert cli.main(["check", "root@127.0.0.1", "--port", port, "--data", 'swap={"size": "lots"}']) == 2
    assert "swap.size" in capsys.readouterr().err


def run_pytest(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", TEST_MODULE, *args],
                          capture_output=True, text=True, cwd=cwd, timeout=300, check=False)


def test_shipped_test_module_collects_one_test_per_control_instance(tmp_path):
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"gateways": [{"name": "hermes"}, {"name": "work", "api": {"port": 8643}}],
                                    "companions": [{"name": "hub", "image": "example/hub:1.0"}]}))
    out = run_pytest("--collect-only", "-q", "--hosts=paramiko://root@192.0.2.1,paramiko://root@192.0.2.2",
                     f"--hermes-settings={settings}", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    per_host = len(list(instances(HostSettings.model_validate(json.loads(settings.read_text())))))
    assert f"{2 * per_host} tests collected" in out.stdout
    assert "test_control[HI-CTR-003:companion:hub-paramiko://192.0.2.2]" in out.stdout

    settings.write_text(json.dumps({"swap": {"size": "lots"}}))
    out = run_pytest("--collect-only", "-q", "--hosts=paramiko://root@192.0.2.1", f"--hermes-settings={settings}",
                     cwd=tmp_path)
    assert out.returncode != 0 and "swap.size" in out.stdout + out.stderr


@pytest.fixture()
def home_data_dir():
    """A data dir outside /tmp: the settings refuse data dirs in world-writable trees."""
    path = Path(tempfile.mkdtemp(prefix=".hermes-infra-test-", dir=Path.home()))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_shipped_test_module_reports_failures_with_remediation_and_honours_waivers(tmp_path, home_data_dir):
    """Against this machine (testinfra's local backend), on a data dir made here with mode 0755."""
    data_dir = home_data_dir
    data_dir.chmod(0o755)
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"gateways": [{"name": "hermes", "data_dir": str(data_dir)}]}))
    out = run_pytest("--hosts=local://", f"--hermes-settings={settings}", "-k", "HI-DATA-001", cwd=tmp_path)
    assert out.returncode == 1, out.stdout
    assert f"HI-DATA-001 [gateway:hermes] Data dir is owned by the container user and closed to others failed: " \
           f"{data_dir}: " in out.stdout
    assert "mode is 0755: group/others have access, want 0700" in out.stdout
    assert "Remediation: `chown <uid>:<gid> <data dir> && chmod 0700 <data dir>`" in out.stdout

    waivers = tmp_path / "waivers.yaml"
    waivers.write_text("waivers:\n  - control: HI-DATA-001\n    justification: the data dir is being migrated\n"
                       "    expires: 2999-12-31\n")
    out = run_pytest("--hosts=local://", f"--hermes-settings={settings}", f"--hermes-waivers={waivers}",
                     "-k", "HI-DATA-001", "-rx", cwd=tmp_path)
    assert out.returncode == 0, out.stdout
    assert "1 xfailed" in out.stdout and "waived until 2999-12-31: the data dir is being migrated" in out.stdout


def test_every_control_has_an_instance_with_a_companion():
    settings = HostSettings(companions=[{"name": "hub", "image": "example/hub:1.0"}],
                            gateways=[{"name": "hermes", "cron": [{"name": "brief", "schedule": "every 1h",
                                                                   "prompt": "the brief"}]}],
                            firewall={"enabled": True}, ssh_hardening={"enabled": True},
                            unattended_upgrades={"enabled": True},
                            tls_proxy={"enabled": True, "domain": "hermes.test", "ca": "internal"})
    assert {c.id for c, _ in instances(settings)} == {c.id for c in all_controls()}


@pytest.mark.parametrize("name", ["@docker/abc", "@chroot/x"])
def test_only_ssh_and_local_hosts_can_be_checked(name):
    host = type("H", (), {"name": name, "data": {}})()
    with pytest.raises(ValueError, match="only SSH hosts"):
        connect.connection_for(host)


def test_host_keys_are_loaded_saved_on_accept_new_and_checked_as_pyinfra_does(tmp_path):
    """F17: accept-new was AutoAddPolicy in memory only: a host was never authenticated."""
    import os
    import stat

    import paramiko

    from hermes_infra.checks import connect

    known = tmp_path / "ssh" / "known_hosts"
    key = paramiko.RSAKey.generate(1024)
    accept = connect.Connection(name="h", hostname="203.0.113.7", port=2222, known_hosts_file=str(known))
    client = paramiko.SSHClient()
    connect.setup_host_keys(client, accept)
    policy = client._policy
    assert isinstance(policy, connect.AcceptNewPolicy)
    policy.missing_host_key(client, "[203.0.113.7]:2222", key)  # what paramiko calls on first contact
    assert stat.S_IMODE(os.stat(known).st_mode) == 0o600
    again = paramiko.SSHClient()
    connect.setup_host_keys(again, accept)
    assert again.get_host_keys().lookup("[203.0.113.7]:2222")["ssh-rsa"] == key  # checked from now on
    strict = paramiko.SSHClient()
    connect.setup_host_keys(strict, connect.Connection(name="h", hostname="x", known_hosts_file=str(known),
                                                       strict_host_key_checking="yes"))
    assert isinstance(strict._policy, paramiko.RejectPolicy) and len(strict.get_host_keys()) == 1
    off = paramiko.SSHClient()
    connect.setup_host_keys(off, connect.Connection(name="h", hostname="x", known_hosts_file=str(known),
                                                    strict_host_key_checking="off"))
    assert len(off.get_host_keys()) == 0 and not isinstance(off._policy, paramiko.RejectPolicy)
    with pytest.raises(ValueError, match="ssh_strict_host_key_checking"):
        connect.setup_host_keys(paramiko.SSHClient(), connect.Connection(name="h", hostname="x",
                                                                         strict_host_key_checking="maybe"))


def test_the_local_vm_pins_its_own_host_key_for_paramiko_too(tmp_path):
    """`try` and the e2e tests: the VM's known_hosts (its image's keys for [127.0.0.1]:port)
    is loaded, strict checking stays on."""
    import paramiko

    from hermes_infra.checks import connect
    from hermes_infra.localvm.ssh import SSHConnection, known_hosts_lines

    key = paramiko.RSAKey.generate(1024)
    known = tmp_path / "known_hosts"
    known.write_text(known_hosts_lines(f"ssh-rsa {key.get_base64()} root@image\n", 2201))
    data = SSHConnection(port=2201, key_path=tmp_path / "key", known_hosts=known).pyinfra_data()
    connection = connect.Connection(name="vm", hostname=data["ssh_hostname"], port=data["ssh_port"],
                                    known_hosts_file=data["ssh_known_hosts_file"],
                                    strict_host_key_checking=data["ssh_strict_host_key_checking"])
    client = paramiko.SSHClient()
    connect.setup_host_keys(client, connection)
    assert isinstance(client._policy, paramiko.RejectPolicy)
    assert client.get_host_keys().lookup("[127.0.0.1]:2201")["ssh-rsa"] == key
