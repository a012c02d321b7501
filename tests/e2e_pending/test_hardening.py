"""SSH hardening and automatic security updates on a real host (issue 21, items 3 and 4): with
`ssh_hardening` and `unattended_upgrades` on, sshd offers no password login (asked with paramiko,
as a stranger would) while the deploy's key logs in; `sshd -t` is clean and the drop-in is the
planned one; `unattended-upgrade --dry-run -d` allows the security origin only and blacklists
Docker's packages; a change whose confirming login fails (a test hook makes the second
connection log in as a user without the deploy's key) is reverted by itself and the next deploy
still connects; turned off, the files hermes-infra wrote leave. One deploy serves most
assertions; the VM is put back as it was found (its image's own key-only drop-in is moved aside
first, and comes back with the reset)."""
from __future__ import annotations

import time

import paramiko

from hermes_infra.checks import runner
from hermes_infra.plan import sshd
from hermes_infra.plan import unattended
from hermes_infra.release import sshd_confirm

HARDENING = {"enabled": True, "confirm_seconds": 30}
UPDATES = {"enabled": True}
VM_DROPIN = "/etc/ssh/sshd_config.d/10-hermes-infra.conf"  # the local VM image's (localvm/recipe.py)


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


def effective(deployed, keyword: str) -> str:
    return deployed.run(f"sshd -T | awk '$1 == \"{keyword}\" {{print $2}}'").strip()


def test_key_only_ssh_and_security_updates_hold_revert_a_bad_change_and_leave_when_off(deployed, monkeypatch):
    vm = deployed.vm
    try:
        # Before: the VM image's own key-only drop-in moved aside, Debian's defaults offer
        # passwords (so a refusal later is hermes-infra's drop-in; reset() puts the image's back).
        deployed.run(f"mv {VM_DROPIN} /root/vm-dropin.saved && systemctl reload ssh")
        assert "password" in offered_methods(vm.ssh_port)

        first = deployed.deploy(ssh_hardening=HARDENING, unattended_upgrades=UPDATES)
        assert first.returncode == 0, first.output[-5000:]

        # Passwords are not even offered; the key still logs in, over a new connection.
        methods = offered_methods(vm.ssh_port)
        assert "publickey" in methods and "password" not in methods and "keyboard-interactive" not in methods, methods
        assert password_login_refused(vm.ssh_port)
        assert vm.ssh("true", timeout=30).rc == 0
        assert deployed.run("sshd -t && echo clean").strip() == "clean"
        assert deployed.run(f"cat {sshd.DROPIN_PATH}").startswith(sshd.MARKER)
        assert effective(deployed, "permitrootlogin") == "without-password"
        assert effective(deployed, "maxauthtries") == "4"
        assert deployed.run(f"systemctl is-active {sshd.REVERT_UNIT}.timer || true").strip() != "active"
        assert deployed.run(f"test -e {sshd.REVERT_PATH} && echo present || echo gone").strip() == "gone"

        # Security updates: the security origin only, Docker's packages blacklisted, as
        # unattended-upgrade itself reads its configuration.
        assert deployed.run(f"dpkg-query -W -f '${{db:Status-Status}}' {unattended.PACKAGE}").strip() == "installed"
        dry = deployed.run("unattended-upgrade --dry-run -d 2>&1 || true", timeout=600)
        allowed = [line for line in dry.splitlines() if line.startswith("Allowed origins are:")]
        assert allowed, dry[-3000:]
        origins = allowed[0].split(":", 1)[1].strip().strip("[]").replace("'", "").split(", ")
        assert origins and all("-security" in origin for origin in origins), allowed
        blacklist = next(line for line in dry.splitlines() if line.startswith("Initial blacklist:"))
        for name in ("docker-ce", "containerd.io$", "docker-compose-plugin$"):
            assert name.replace(".", "\\.") in blacklist or name in blacklist, blacklist

        # The controls on the real host.
        report = runner.collect([deployed.target(ssh_hardening=HARDENING, unattended_upgrades=UPDATES)])
        found = {r.control.id: (r.status, r.message) for r in report.results
                 if r.control.id in ("HI-SSH-001", "HI-SSH-002", "HI-SSH-003", "HI-UPD-001", "HI-UPD-002",
                                     "HI-DOCKER-007")}
        assert {key: status for key, (status, _) in found.items()} == {
            "HI-SSH-001": "passed", "HI-SSH-002": "passed", "HI-SSH-003": "passed", "HI-UPD-001": "passed",
            "HI-UPD-002": "passed", "HI-DOCKER-007": "passed"}, found

        again = deployed.deploy(ssh_hardening=HARDENING, unattended_upgrades=UPDATES)
        assert again.returncode == 0, again.output[-4000:]
        assert again.changed_operations() == 0, again.output[-4000:]

        # A change whose confirming login fails: reverted by itself; the deploy still connects.
        good = deployed.run(f"cat {sshd.DROPIN_PATH}")
        monkeypatch.setenv(sshd_confirm.TEST_USER_ENV, "hermes-e2e-nobody")
        broken = deployed.deploy(ssh_hardening={**HARDENING, "max_auth_tries": 5}, unattended_upgrades=UPDATES)
        monkeypatch.delenv(sshd_confirm.TEST_USER_ENV)
        assert broken.returncode != 0, broken.output[-4000:]
        assert "a second SSH connection with the deploy's key failed" in broken.output, broken.output[-4000:]
        deadline = time.monotonic() + HARDENING["confirm_seconds"] + 30
        while deployed.run(f"cat {sshd.DROPIN_PATH}") != good and time.monotonic() < deadline:
            time.sleep(2)
        assert deployed.run(f"cat {sshd.DROPIN_PATH}") == good, "the unconfirmed drop-in was not reverted"
        assert effective(deployed, "maxauthtries") == "4"
        assert vm.ssh("true", timeout=30).rc == 0
        after = deployed.deploy(ssh_hardening=HARDENING, unattended_upgrades=UPDATES)
        assert after.returncode == 0, after.output[-4000:]

        # Off: what hermes-infra wrote leaves; sshd offers passwords again as Debian's defaults say.
        off = deployed.deploy()
        assert off.returncode == 0, off.output[-4000:]
        for path in (sshd.DROPIN_PATH, sshd.REVERT_PATH, *unattended.PATHS):
            assert deployed.run(f"test -e {path} && echo present || echo gone").strip() == "gone", path
        assert "password" in offered_methods(vm.ssh_port)
        assert deployed.run("sshd -t && echo clean").strip() == "clean"
    finally:
        print(f"[timing] back to the bootstrapped state: {deployed.reset():.1f}s")
