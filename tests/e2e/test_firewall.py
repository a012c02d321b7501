"""The host firewall on a real host (issue 21, item 2): with `firewall` on, the gateway's API
published on 0.0.0.0 on a port that is NOT in `firewall.allow` does not answer from outside,
while SSH and a container port published on an allowed port do; so after `systemctl restart
docker` and after a reboot; a ruleset whose confirming SSH connection fails is reverted by
itself and nothing of it is persisted; turned off, everything hermes-infra installed leaves.

"Outside" is the control machine, through QEMU's forwards to 127.0.0.1 (the guest sees those
connections arrive on its eth0 from 10.0.2.2, as a VPS sees the internet). QEMU accepts a
forwarded connection on the control side even when the guest drops it, so a port counts as
open only when an HTTP (or SSH) answer comes back. One deploy serves most assertions."""
from __future__ import annotations

import re
import socket
import time
import urllib.error
import urllib.request

from hermes_infra.checks import runner
from hermes_infra.plan import firewall as fw
from hermes_infra.release import firewall_confirm

CLOSED = 8642      # the gateway's API, published on 0.0.0.0, not in firewall.allow
OPEN = 8644        # a container port published on 0.0.0.0 and allowed
HELPER = "hermes-e2e-fw-open"
GATEWAYS = [{"name": "hermes", "api": {"publish_addresses": ["0.0.0.0"], "allow_public": True}}]
FIREWALL = {"enabled": True, "allow": [OPEN], "confirm_seconds": 30}
WARNING = (f"gateways[hermes].api is published on 0.0.0.0:{CLOSED}/tcp, which the firewall does not allow")


def http_answer(port: int, path: str = "/") -> int | None:
    """The HTTP status from 127.0.0.1:port on the control machine, None when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (OSError, urllib.error.URLError):
        return None


def ssh_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
            connection.settimeout(5)
            return connection.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def gateway_healthy(deployed, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if deployed.http_status("http://127.0.0.1:8642/health") == "200":
            return
        time.sleep(3)
    raise AssertionError(f"the gateway did not answer /health inside the VM within {seconds:.0f} s")


def answered_within(port: int, path: str, seconds: float = 60) -> int | None:
    deadline, status = time.monotonic() + seconds, None
    while time.monotonic() < deadline and status is None:
        status = http_answer(port, path)
        if status is None:
            time.sleep(2)
    return status


def assert_filtered(deployed, closed: int, opened: int, when: str) -> None:
    """SSH and the allowed port answer from outside; the other does not, though it listens."""
    assert ssh_answers(deployed.vm.ssh_port), f"{when}: SSH does not answer"
    assert answered_within(opened, "/") == 200, f"{when}: the allowed port {OPEN} does not answer"
    assert http_answer(closed, "/health") is None, f"{when}: port {CLOSED} answers from outside"
    # It is the firewall, not the gateway: on the host itself the API answers on its eth0 address.
    address = deployed.run("ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | head -n 1").strip()
    assert deployed.http_status(f"http://{address}:8642/health") == "200", f"{when}: the API is down"


def loaded_digest(deployed) -> str | None:
    listing = deployed.vm.ssh(f"nft -s list table inet {fw.TABLE}", timeout=30).stdout
    return fw.loaded_digest(listing or None)


def test_published_ports_are_filtered_across_docker_restarts_and_reboots_and_a_bad_change_reverts(
        deployed, monkeypatch):
    vm = deployed.vm
    closed, opened = vm.add_forward(CLOSED), vm.add_forward(OPEN)
    image = deployed.run("docker inspect -f '{{.Config.Image}}' hermes").strip()
    try:
        deployed.run(f"docker rm -f {HELPER} >/dev/null 2>&1; docker run -d --name {HELPER} --restart unless-stopped "
                     f"-p 0.0.0.0:{OPEN}:8000 --entrypoint python3 {image} -m http.server 8000 >/dev/null")
        # Before the firewall: the helper answers through the same forwards (so a silence later is the rules).
        assert answered_within(opened, "/") == 200

        first = deployed.deploy(gateways=GATEWAYS, firewall=FIREWALL)
        assert first.returncode == 0, first.output[-5000:]
        assert WARNING in first.output, first.output[-5000:]
        gateway_healthy(deployed)
        assert_filtered(deployed, closed, opened, "after the deploy")
        digest = loaded_digest(deployed)
        assert digest and re.fullmatch(r"[0-9a-f]{16}", digest)
        assert deployed.run(f"systemctl is-enabled {fw.UNIT}").strip() == "enabled"
        assert f'comment "hermes-infra {digest}"' in deployed.run(f"cat {fw.RULESET_PATH}")
        assert deployed.run(f"systemctl is-active {fw.REVERT_UNIT}.timer || true").strip() != "active"
        assert "policy drop;" in deployed.run(f"nft -s list chain inet {fw.TABLE} input")
        # The controls on the real listing: active, default deny, at boot; the API published on
        # 0.0.0.0 outside firewall.allow is HI-FW-004's finding (the allowed helper port is not).
        report = runner.collect([deployed.target(gateways=GATEWAYS, firewall=FIREWALL)])
        found = {r.control.id: (r.status, r.message) for r in report.results if r.control.id.startswith("HI-FW")}
        assert {key: status for key, (status, _) in found.items()} == {
            "HI-FW-001": "passed", "HI-FW-002": "passed", "HI-FW-003": "passed", "HI-FW-004": "failed"}, found
        assert found["HI-FW-004"][1] == f"published outside firewall.allow: hermes 0.0.0.0:{CLOSED}->8642/tcp", found

        again = deployed.deploy(gateways=GATEWAYS, firewall=FIREWALL)
        assert again.returncode == 0, again.output[-4000:]
        assert again.changed_operations() == 0, again.output[-4000:]

        deployed.run("systemctl restart docker", timeout=300)
        gateway_healthy(deployed)
        assert loaded_digest(deployed) == digest, "restarting Docker changed the firewall"
        assert_filtered(deployed, closed, opened, "after systemctl restart docker")

        vm.reboot()
        gateway_healthy(deployed, 300)
        assert loaded_digest(deployed) == digest, "the rules were not loaded at boot"
        ours, docker = (int(deployed.run(f"systemctl show -p ActiveEnterTimestampMonotonic --value {unit}"))
                        for unit in (fw.UNIT, "docker.service"))
        assert 0 < ours < docker, "the firewall was loaded after Docker started"
        assert_filtered(deployed, closed, opened, "after a reboot")

        # A change whose confirming connection fails (as when the new rules cut new SSH logins off).
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            dead_port = unused.getsockname()[1]
        monkeypatch.setenv(firewall_confirm.TEST_PORT_ENV, str(dead_port))
        broken = deployed.deploy(gateways=GATEWAYS, firewall={**FIREWALL, "allow": [OPEN, 8645]})
        monkeypatch.delenv(firewall_confirm.TEST_PORT_ENV)
        assert broken.returncode != 0, broken.output[-4000:]
        assert "a second SSH connection failed" in broken.output, broken.output[-4000:]
        deadline = time.monotonic() + FIREWALL["confirm_seconds"] + 30
        while loaded_digest(deployed) != digest and time.monotonic() < deadline:
            time.sleep(2)
        assert loaded_digest(deployed) == digest, "the unconfirmed rules were not reverted"
        assert f'comment "hermes-infra {digest}"' in deployed.run(f"cat {fw.RULESET_PATH}"), "persisted unconfirmed"
        assert_filtered(deployed, closed, opened, "after the reverted change")

        # What leaves the settings leaves the host: the next deploy (it connects) removes it all.
        deployed.run(f"docker rm -f {HELPER} >/dev/null")
        off = deployed.deploy()
        assert off.returncode == 0, off.output[-4000:]
        assert f"table inet {fw.TABLE}" not in deployed.run("nft list tables")
        for path in fw.PATHS:
            assert deployed.run(f"test -e {path} && echo present || echo gone").strip() == "gone", path
        assert deployed.run(f"systemctl is-enabled {fw.UNIT} 2>/dev/null || true").strip() != "enabled"
        assert deployed.run(f"ls /etc/systemd/system/sysinit.target.wants/ | grep -c {fw.UNIT} || true").strip() == "0"
        assert deployed.run(f"systemctl is-active {fw.REVERT_UNIT}.timer || true").strip() != "active"
        gateway_healthy(deployed)
    finally:
        vm.ssh(f"docker rm -f {HELPER} >/dev/null 2>&1 || true", timeout=60)
        print(f"[timing] back to the bootstrapped state: {deployed.reset():.1f}s")
