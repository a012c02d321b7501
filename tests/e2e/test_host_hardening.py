"""The host hardened on a real host (issue 21, items 2 to 5), one deploy serving every assertion:
with `firewall`, `ssh_hardening`, `unattended_upgrades` and `tls_proxy` (Caddy's internal CA,
`hermes.test`) on,

- the gateway's API published on 0.0.0.0 on a port that is NOT in `firewall.allow` does not
  answer from outside, while SSH and a container port published on an allowed port do; so after
  `systemctl restart docker` and after a reboot (the rules loaded before Docker starts);
- sshd offers no password login (asked with paramiko, as a stranger would) while the deploy's key
  logs in; `sshd -t` is clean; `unattended-upgrade --dry-run -d` allows the security origin only
  and blacklists Docker's packages;
- the TLS proxy answers `GET /health` over HTTPS from outside (the forward to the guest's 443),
  its chain verified against Caddy's root fetched from the VM and nothing else, `hermes.test` as
  SNI and Host; no port 80 and no TCP admin endpoint listen; so after the reboot too;
- the gateway comes back after the reboot with its key, swap and swappiness;
- a ruleset whose confirming SSH connection fails, and an sshd change whose confirming login
  fails, are each reverted by themselves, nothing unconfirmed is persisted, the next deploy connects;
- turned off, everything hermes-infra installed for them leaves.

"Outside" is the control machine, through QEMU's forwards to 127.0.0.1 (the guest sees those
connections arrive on its eth0 from 10.0.2.2, as a VPS sees the internet). QEMU accepts a
forwarded connection on the control side even when the guest drops it, so a port counts as
open only when an HTTP (or SSH) answer comes back.

The tests run in order on the module's one deploy; the VM is put back as it was found at the end
(its image's own key-only drop-in is moved aside first, and comes back with the reset)."""
from __future__ import annotations

import dataclasses
import http.client
import re
import socket
import ssl
import time
import urllib.error
import urllib.request

import paramiko
import pytest

from hermes_infra.checks import runner
from hermes_infra.plan import firewall as fw
from hermes_infra.plan import sshd, tlsproxy, unattended
from hermes_infra.release import firewall_confirm, sshd_confirm
from tests.e2e.test_bootstrap import API, wait_healthy

CLOSED = 8642      # the gateway's API, published on 0.0.0.0, not in firewall.allow
OPEN = 8644        # a container port published on 0.0.0.0 and allowed
HELPER = "hermes-e2e-fw-open"
GATEWAYS = [{"name": "hermes", "api": {"publish_addresses": ["0.0.0.0"], "allow_public": True}}]
FIREWALL = {"enabled": True, "allow": [OPEN], "confirm_seconds": 30}
HARDENING = {"enabled": True, "confirm_seconds": 30}
UPDATES = {"enabled": True}
DOMAIN = "hermes.test"
PROXY = {"enabled": True, "domain": DOMAIN, "ca": "internal"}
SETTINGS = {"gateways": GATEWAYS, "firewall": FIREWALL, "ssh_hardening": HARDENING, "unattended_upgrades": UPDATES,
            "tls_proxy": PROXY}
WARNING = (f"gateways[hermes].api is published on 0.0.0.0:{CLOSED}/tcp, which the firewall does not allow")
VM_DROPIN = "/etc/ssh/sshd_config.d/10-hermes-infra.conf"  # the local VM image's (localvm/recipe.py)


# --------------------------------------------------------------------------- from outside
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


def https_status(port: int, path: str, cadata: str | None, name: str = DOMAIN) -> int:
    """GET https://<name><path> as a client that resolves `name` to 127.0.0.1 (the control
    machine's forward to the guest's 443): SNI and Host are `name`, the chain must verify
    against `cadata` alone (None: the control machine's own CAs). Raises on any TLS or
    connection failure."""
    # With cadata, only that CA is loaded (not the system's).
    context = ssl.create_default_context(cadata=cadata) if cadata else ssl.create_default_context()

    class Connection(http.client.HTTPSConnection):
        def connect(self):
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            self.sock = context.wrap_socket(raw, server_hostname=name)

    connection = Connection(name, port, context=context, timeout=10)
    try:
        connection.putrequest("GET", path, skip_host=True)
        connection.putheader("Host", name)  # as a client on the real port 443 sends it
        connection.endheaders()
        return connection.getresponse().status
    finally:
        connection.close()


def https_within(port: int, path: str, cadata: str, seconds: float = 60) -> int:
    """The status once the proxy answers (caddy issues its first certificate as it starts)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return https_status(port, path, cadata)
        except (OSError, http.client.HTTPException):
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def caddy_root(deployed, seconds: float = 60) -> str:
    """The internal CA's root certificate, as an operator hands it to the hub."""
    deadline = time.monotonic() + seconds
    while deployed.vm.ssh(f"test -s {tlsproxy.ROOT_CERT}", timeout=30).rc != 0 and time.monotonic() < deadline:
        time.sleep(2)
    root = deployed.run(f"cat {tlsproxy.ROOT_CERT}")
    assert root.startswith("-----BEGIN CERTIFICATE-----"), root[:200]
    return root


def answered_within(port: int, path: str, seconds: float = 60) -> int | None:
    deadline, status = time.monotonic() + seconds, None
    while time.monotonic() < deadline and status is None:
        status = http_answer(port, path)
        if status is None:
            time.sleep(2)
    return status


def started_transport(port: int, seconds: float = 30) -> paramiko.Transport:
    """An SSH transport past the banner exchange. sshd re-executes itself on `systemctl reload`,
    and a connection QEMU forwards meanwhile is reset (`Error reading SSH protocol banner`): a
    stranger would simply try again, so this does too, for a while."""
    deadline = time.monotonic() + seconds
    while True:
        transport = paramiko.Transport(("127.0.0.1", port))
        try:
            transport.start_client(timeout=15)
            return transport
        except (paramiko.SSHException, EOFError, OSError):
            transport.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def offered_methods(port: int, user: str = "root") -> list[str]:
    """What sshd offers this user before any credential (the `none` method's answer)."""
    transport = started_transport(port)
    try:
        try:
            transport.auth_none(user)
        except paramiko.BadAuthenticationType as error:
            return list(error.allowed_types)
        return ["none"]
    finally:
        transport.close()


def password_login_refused(port: int, user: str = "root") -> bool:
    """A password login attempt, as a brute-forcer makes it: refused before any password check."""
    transport = started_transport(port)
    try:
        try:
            transport.auth_password(user, "not-the-password-anyway")
        except paramiko.BadAuthenticationType as error:
            return "password" not in error.allowed_types
        except paramiko.AuthenticationException:
            return False  # the method was offered (and failed): not what hardening means
        return False
    finally:
        transport.close()


# --------------------------------------------------------------------------- on the host
def gateway_healthy(deployed, seconds: float = 180) -> None:
    wait_healthy(deployed, timeout=seconds)


def assert_filtered(deployed, closed: int, opened: int, when: str) -> None:
    """SSH and the allowed port answer from outside; the other does not, though it listens."""
    assert ssh_answers(deployed.vm.ssh_port), f"{when}: SSH does not answer"
    assert answered_within(opened, "/") == 200, f"{when}: the allowed port {OPEN} does not answer"
    assert http_answer(closed, "/health") is None, f"{when}: port {CLOSED} answers from outside"
    # It is the firewall, not the gateway: on the host itself the API answers on its eth0 address.
    address = deployed.run("ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | head -n 1").strip()
    assert deployed.http_status(f"http://{address}:8642/health") == "200", f"{when}: the API is down"


def assert_key_only(deployed, when: str) -> None:
    """Passwords are not even offered; the key still logs in, over a new connection."""
    port = deployed.vm.ssh_port
    methods = offered_methods(port)
    assert "publickey" in methods and "password" not in methods and "keyboard-interactive" not in methods, \
        f"{when}: {methods}"
    assert password_login_refused(port), when
    assert deployed.vm.ssh("true", timeout=30).rc == 0, f"{when}: the deploy's key does not log in"


def loaded_digest(deployed) -> str | None:
    listing = deployed.vm.ssh(f"nft -s list table inet {fw.TABLE}", timeout=30).stdout
    return fw.loaded_digest(listing or None)


def effective(deployed, keyword: str) -> str:
    return deployed.run(f"sshd -T | awk '$1 == \"{keyword}\" {{print $2}}'").strip()


def gone(deployed, path: str) -> bool:
    return deployed.run(f"test -e {path} && echo present || echo gone").strip() == "gone"


@dataclasses.dataclass
class Hardened:
    closed: int            # the control machine's forward to the guest's CLOSED port
    opened: int            # ... and to OPEN
    https: int             # ... and to 443, the TLS proxy
    digest: str            # the loaded ruleset's digest after the first deploy
    dropin: str            # the sshd drop-in the first deploy wrote
    first_output: str


@pytest.fixture(scope="module")
def hardened(deployed):
    vm = deployed.vm
    closed, opened, https = vm.add_forward(CLOSED), vm.add_forward(OPEN), vm.add_forward(443)
    image = deployed.run("docker inspect -f '{{.Config.Image}}' hermes").strip()
    try:
        # --init: python3 as a container's PID 1 ignores SIGTERM, so at the reboot's shutdown its
        # scope would wait out systemd's stop timeout (90 s) before the kill.
        deployed.run(f"docker rm -f {HELPER} >/dev/null 2>&1; docker run -d --init --name {HELPER} --restart unless-stopped "
                     f"-p 0.0.0.0:{OPEN}:8000 --entrypoint python3 {image} -m http.server 8000 >/dev/null")
        # Before: the helper answers through the same forwards (so a silence later is the rules),
        # and with the VM image's own key-only drop-in moved aside Debian's defaults offer
        # passwords (so a refusal later is hermes-infra's drop-in).
        assert answered_within(opened, "/") == 200
        deployed.run(f"mv {VM_DROPIN} /root/vm-dropin.saved && systemctl reload ssh")
        assert "password" in offered_methods(vm.ssh_port)

        first = deployed.deploy(**SETTINGS)
        assert first.returncode == 0, first.output[-5000:]
        digest = loaded_digest(deployed)
        assert digest and re.fullmatch(r"[0-9a-f]{16}", digest), digest
        yield Hardened(closed, opened, https, digest, deployed.run(f"cat {sshd.DROPIN_PATH}"), first.output)
    finally:
        vm.ssh(f"docker rm -f {HELPER} >/dev/null 2>&1 || true", timeout=60)
        print(f"[timing] back to the bootstrapped state: {deployed.reset():.1f}s")


def test_one_deploy_filters_published_ports_and_offers_no_password_login(deployed, hardened):
    assert WARNING in hardened.first_output, hardened.first_output[-5000:]
    gateway_healthy(deployed)
    assert_filtered(deployed, hardened.closed, hardened.opened, "after the deploy")
    assert deployed.run(f"systemctl is-enabled {fw.UNIT}").strip() == "enabled"
    assert f'comment "hermes-infra {hardened.digest}"' in deployed.run(f"cat {fw.RULESET_PATH}")
    assert deployed.run(f"systemctl is-active {fw.REVERT_UNIT}.timer || true").strip() != "active"
    assert "policy drop;" in deployed.run(f"nft -s list chain inet {fw.TABLE} input")

    assert_key_only(deployed, "after the deploy")
    assert deployed.run("sshd -t && echo clean").strip() == "clean"
    assert hardened.dropin.startswith(sshd.MARKER)
    assert effective(deployed, "permitrootlogin") == "without-password"
    assert effective(deployed, "maxauthtries") == "4"
    assert deployed.run(f"systemctl is-active {sshd.REVERT_UNIT}.timer || true").strip() != "active"
    assert gone(deployed, sshd.REVERT_PATH)


def test_the_tls_proxy_answers_health_over_https_with_the_internal_ca(deployed, hardened):
    """From outside, as the hub would: Caddy's root is the only CA trusted, hermes.test the only
    name; the gateway's own port stays closed (asserted above), the proxy reaches it on loopback."""
    root = caddy_root(deployed)
    assert https_within(hardened.https, "/health", root) == 200
    assert https_within(hardened.https, "/v1/models", root) == 401  # the key is still the gateway's to ask for
    # The chain is Caddy's internal CA's: the control machine's own CAs do not verify it, and the
    # certificate names hermes.test, not any name.
    with pytest.raises(ssl.SSLCertVerificationError):
        https_status(hardened.https, "/health", None)
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        https_status(hardened.https, "/health", root, name="other.test")
    assert http_answer(hardened.closed, "/health") is None
    # caddy as deployed: enabled, its admin API on its own socket (no TCP 2019), no port 80 for
    # the internal CA, its Caddyfile the plan's (caddy validate accepted it), the reverse proxy
    # on loopback.
    assert deployed.run(f"systemctl is-enabled {tlsproxy.UNIT}").strip() == "enabled"
    listening = deployed.run("ss -Hltn")
    assert not re.search(r":(80|2019)\s", listening), listening
    assert re.search(r":443\s", listening), listening
    assert deployed.run(f"stat -c '%U %a' {tlsproxy.ADMIN_SOCKET}").split() == ["caddy", "755"]
    caddyfile = deployed.run(f"cat {tlsproxy.CADDYFILE}")
    assert caddyfile.startswith(tlsproxy.MARKER) and "\treverse_proxy 127.0.0.1:8642\n" in caddyfile
    assert "tls_proxy serves https://hermes.test from gateways[hermes].api, which is also published on 0.0.0.0:8642" \
        in hardened.first_output, hardened.first_output[-5000:]
    version = deployed.run(f"dpkg-query -W -f '${{Version}}' {tlsproxy.PACKAGE}").strip()
    print(f"\n[caddy] {tlsproxy.PACKAGE} {version} on the VM")


def test_security_updates_allow_the_security_origin_only_and_never_docker(deployed, hardened):
    """As unattended-upgrade itself reads its configuration."""
    assert deployed.run(f"dpkg-query -W -f '${{db:Status-Status}}' {unattended.PACKAGE}").strip() == "installed"
    # Both lines come before the upgrade calculation, which takes minutes under TCG. A pipe into
    # a reader that stops would not end it (Python ignores SIGPIPE and logging swallows the broken
    # pipe), so the dry run writes to a file and is ended, by its pid, once both lines are there.
    dry = deployed.run(
        'log=$(mktemp); unattended-upgrade --dry-run -d >"$log" 2>&1 & pid=$!; '
        'for _ in $(seq 600); do grep -q "^Allowed origins are:" "$log" && grep -q "^Initial blacklist:" "$log" '
        '&& break; kill -0 "$pid" 2>/dev/null || break; sleep 1; done; '
        'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; cat "$log"; rm -f "$log"; true', timeout=700)
    allowed = [line for line in dry.splitlines() if line.startswith("Allowed origins are:")]
    assert allowed, dry[-3000:]
    origins = allowed[0].split(":", 1)[1].strip().strip("[]").replace("'", "").split(", ")
    assert origins and all("-security" in origin for origin in origins), allowed
    blacklist = next(line for line in dry.splitlines() if line.startswith("Initial blacklist:"))
    for name in ("docker-ce", "containerd.io$", "docker-compose-plugin$"):
        assert name.replace(".", "\\.") in blacklist or name in blacklist, blacklist


def test_the_controls_pass_on_the_hardened_host_but_the_unallowed_published_port(deployed, hardened):
    """Active, default deny, at boot, key-only SSH, security updates, the TLS proxy's chain and
    Caddyfile; the API published on 0.0.0.0 outside firewall.allow is HI-FW-004's finding (the
    allowed helper port is not), and HI-TLS-002's: a way around the proxy."""
    report = runner.collect([deployed.target(**SETTINGS)])
    wanted = ("HI-FW-001", "HI-FW-002", "HI-FW-003", "HI-FW-004", "HI-SSH-001", "HI-SSH-002", "HI-SSH-003",
              "HI-UPD-001", "HI-UPD-002", "HI-DOCKER-007", "HI-TLS-001", "HI-TLS-002", "HI-TLS-003")
    found = {r.control.id: (r.status, r.message) for r in report.results if r.control.id in wanted}
    assert {key: status for key, (status, _) in found.items()} == {
        **{key: "passed" for key in wanted}, "HI-FW-004": "failed", "HI-TLS-002": "failed"}, found
    assert found["HI-FW-004"][1] == f"published outside firewall.allow: hermes 0.0.0.0:{CLOSED}->8642/tcp", found
    # The same 0.0.0.0 is a way around the proxy (HI-TLS-002), which answers with its chain (HI-TLS-001).
    assert found["HI-TLS-002"][1] == f"hermes's port 8642 is also published on 0.0.0.0:{CLOSED}: the proxy can be " \
        "walked around", found
    assert found["HI-TLS-001"][1].startswith("GET https://hermes.test:443/health -> 200"), found


def test_a_second_deploy_changes_nothing(deployed, hardened):
    again = deployed.deploy(**SETTINGS)
    assert again.returncode == 0, again.output[-4000:]
    assert again.changed_operations() == 0, again.output[-4000:]


def test_restarting_docker_keeps_the_rules(deployed, hardened):
    deployed.run("systemctl restart docker", timeout=300)
    gateway_healthy(deployed)
    assert loaded_digest(deployed) == hardened.digest, "restarting Docker changed the firewall"
    assert_filtered(deployed, hardened.closed, hardened.opened, "after systemctl restart docker")


def test_gateway_comes_back_after_a_reboot(deployed, hardened):
    """Its key, swap and swappiness as deployed; the rules loaded at boot, before Docker; SSH
    still key-only."""
    key = deployed.api_key()
    seconds = deployed.vm.reboot()
    healthy_after = wait_healthy(deployed)
    print(f"\n[timing] reboot to SSH: {seconds:.1f}s, then healthy after {healthy_after:.1f}s")
    # Where a reboot's time goes (the shutdown's last lines, the boot's own figure): printed, not judged.
    print(deployed.run("journalctl -b -1 -o short-monotonic --no-pager 2>/dev/null | "
                       "grep -E 'reboot|Stopping|timed out|SIGKILL|Killing|Shutting down' | tail -n 30; "
                       "systemd-analyze 2>/dev/null | head -n 1; true", timeout=120))
    assert deployed.http_status(f"{API}/v1/models", key=key) == "200"
    assert deployed.run("swapon --show=NAME --noheadings").strip() == "/swapfile"
    assert deployed.run("cat /proc/sys/vm/swappiness").strip() == "10"
    assert loaded_digest(deployed) == hardened.digest, "the rules were not loaded at boot"
    ours, docker = (int(deployed.run(f"systemctl show -p ActiveEnterTimestampMonotonic --value {unit}"))
                    for unit in (fw.UNIT, "docker.service"))
    assert 0 < ours < docker, "the firewall was loaded after Docker started"
    assert_filtered(deployed, hardened.closed, hardened.opened, "after a reboot")
    assert_key_only(deployed, "after a reboot")
    assert https_within(hardened.https, "/health", caddy_root(deployed)) == 200, "the TLS proxy after a reboot"


def test_a_ruleset_whose_confirming_connection_fails_is_reverted_and_not_persisted(deployed, hardened, monkeypatch):
    """As when the new rules cut new SSH logins off."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dead_port = unused.getsockname()[1]
    monkeypatch.setenv(firewall_confirm.TEST_PORT_ENV, str(dead_port))
    broken = deployed.deploy(**{**SETTINGS, "firewall": {**FIREWALL, "allow": [OPEN, 8645]}})
    monkeypatch.delenv(firewall_confirm.TEST_PORT_ENV)
    assert broken.returncode != 0, broken.output[-4000:]
    assert "a second SSH connection failed" in broken.output, broken.output[-4000:]
    deadline = time.monotonic() + FIREWALL["confirm_seconds"] + 30
    while loaded_digest(deployed) != hardened.digest and time.monotonic() < deadline:
        time.sleep(2)
    assert loaded_digest(deployed) == hardened.digest, "the unconfirmed rules were not reverted"
    assert f'comment "hermes-infra {hardened.digest}"' in deployed.run(f"cat {fw.RULESET_PATH}"), "persisted unconfirmed"
    assert_filtered(deployed, hardened.closed, hardened.opened, "after the reverted change")


def test_an_sshd_change_whose_confirming_login_fails_is_reverted_and_the_next_deploy_connects(
        deployed, hardened, monkeypatch):
    """A test hook makes the second connection log in as a user without the deploy's key."""
    monkeypatch.setenv(sshd_confirm.TEST_USER_ENV, "hermes-e2e-nobody")
    broken = deployed.deploy(**{**SETTINGS, "ssh_hardening": {**HARDENING, "max_auth_tries": 5}})
    monkeypatch.delenv(sshd_confirm.TEST_USER_ENV)
    assert broken.returncode != 0, broken.output[-4000:]
    assert "a second SSH connection with the deploy's key failed" in broken.output, broken.output[-4000:]
    deadline = time.monotonic() + HARDENING["confirm_seconds"] + 30
    while deployed.run(f"cat {sshd.DROPIN_PATH}") != hardened.dropin and time.monotonic() < deadline:
        time.sleep(2)
    assert deployed.run(f"cat {sshd.DROPIN_PATH}") == hardened.dropin, "the unconfirmed drop-in was not reverted"
    assert effective(deployed, "maxauthtries") == "4"
    after = deployed.deploy(**SETTINGS)
    assert after.returncode == 0, after.output[-4000:]
    assert_key_only(deployed, "after the reverted change")


def test_turned_off_everything_hermes_infra_wrote_leaves(deployed, hardened):
    """The next deploy (it connects) removes the rules, the drop-in, the update settings and the
    proxy's Caddyfile, and stops caddy; sshd offers passwords again as Debian's defaults say."""
    root = caddy_root(deployed)
    deployed.run(f"docker rm -f {HELPER} >/dev/null")
    off = deployed.deploy()
    assert off.returncode == 0, off.output[-4000:]
    assert f"table inet {fw.TABLE}" not in deployed.run("nft list tables")
    for path in (*fw.PATHS, sshd.DROPIN_PATH, sshd.REVERT_PATH, *unattended.PATHS, *tlsproxy.PATHS):
        assert gone(deployed, path), path
    for state in ("is-enabled", "is-active"):
        assert deployed.run(f"systemctl {state} {tlsproxy.UNIT} 2>/dev/null || true").strip() not in ("enabled", "active")
    with pytest.raises((OSError, http.client.HTTPException)):
        https_status(hardened.https, "/health", root)
    assert deployed.run(f"systemctl is-enabled {fw.UNIT} 2>/dev/null || true").strip() != "enabled"
    assert deployed.run(f"ls /etc/systemd/system/sysinit.target.wants/ | grep -c {fw.UNIT} || true").strip() == "0"
    assert deployed.run(f"systemctl is-active {fw.REVERT_UNIT}.timer || true").strip() != "active"
    assert "password" in offered_methods(deployed.vm.ssh_port)
    assert deployed.run("sshd -t && echo clean").strip() == "clean"
    gateway_healthy(deployed)
