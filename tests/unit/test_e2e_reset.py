"""The e2e suite's reset (tests/e2e/conftest.py) on a fake VM: the fallback path runs only on a
machine where a restored state does not answer, so its control flow is proven here."""
from __future__ import annotations

from pathlib import Path

import pytest

from hermes_infra.localvm.errors import LocalVMError
from hermes_infra.localvm.ssh import SSHResult
from tests.e2e import conftest as e2e


class FakeVM:
    def __init__(self, restore_error: Exception | None = None, health: str = "200", ssh_ok: bool = True):
        self.restore_error, self.health, self.ssh_ok = restore_error, health, ssh_ok
        self.directory = Path("/nonexistent")
        self.commands: list[str] = []

    def restore_state(self, tag: str) -> None:
        self.commands.append(f"loadvm {tag}")
        if self.restore_error:
            raise self.restore_error

    def reboot(self) -> float:
        self.commands.append("reboot")
        return 1.0

    def ssh(self, command: str, timeout: float = 300, **_) -> SSHResult:
        self.commands.append(command)
        if "curl" in command:
            return SSHResult(0, self.health, "")
        return SSHResult(0 if self.ssh_ok else 255, "hermes Up 3 minutes (healthy);", "")


@pytest.fixture()
def host(monkeypatch):
    monkeypatch.setattr(e2e.DeployedHost, "restores_fell_back", 0)
    monkeypatch.setattr(e2e.time, "sleep", lambda seconds: None)
    clock = iter(range(0, 1_000_000, 5))  # every look at the clock: 5 s later
    monkeypatch.setattr(e2e.time, "monotonic", lambda: next(clock))
    lines: list[str] = []
    monkeypatch.setattr(e2e, "report", lines.append)

    def make(vm: FakeVM, deploy_rc: int = 0):
        deployed = e2e.DeployedHost(vm=vm, image_dir=Path("/nonexistent"))
        deployed.deploys = []
        monkeypatch.setattr(deployed, "deploy", lambda *a, **k: deployed.deploys.append(k) or
                            e2e.DeployRun(deploy_rc, "deploy output", 1.0))
        return deployed, lines
    return make


def test_a_restore_that_answers_is_all_a_reset_does(host):
    deployed, lines = host(FakeVM())
    deployed.reset()
    assert deployed.deploys == [] and lines == []
    assert deployed.vm.commands[0] == "loadvm bootstrapped"


def test_a_failed_loadvm_reboots_and_a_gateway_that_comes_back_is_not_redeployed(host):
    deployed, lines = host(FakeVM(restore_error=LocalVMError("QEMU's loadvm bootstrapped failed: no snapshot")))
    deployed.reset()
    assert "reboot" in deployed.vm.commands and deployed.deploys == []
    assert lines[0].startswith("[reset] restoring the saved state failed: LocalVMError: QEMU's loadvm")
    assert lines[-1].startswith("[reset] rebooted instead in")
    assert e2e.DeployedHost.restores_fell_back == 1


def test_a_failed_loadvm_whose_gateway_stays_down_after_the_reboot_is_redeployed_and_says_why(host):
    deployed, lines = host(FakeVM(restore_error=LocalVMError("QEMU's loadvm bootstrapped failed: no snapshot"),
                                  health="000"))
    deployed.reset()
    assert deployed.vm.commands.index("reboot") < len(deployed.vm.commands) and deployed.deploys == [{}]
    assert "no /health (000) within 180 s of the reboot" in lines[1] and "hermes Up 3 minutes" in lines[1]
    assert lines[-1].startswith("[reset] redeployed instead in")


def test_a_restored_gateway_that_does_not_answer_is_rebooted_and_redeployed_and_not_restored_again(host):
    deployed, lines = host(FakeVM(health="000"))
    deployed.reset()
    assert "does not answer /health (000) within 30 s" in lines[0] and "hermes Up 3 minutes" in lines[0]
    assert "reboot" in deployed.vm.commands
    deployed.vm.commands.clear()
    deployed.reset()
    # Once seen, the saved state is not loaded again (it would undo the fix): a redeploy only.
    assert "did not answer earlier in this session" in lines[3]
    assert deployed.vm.commands == [] and deployed.deploys == [{}, {}]


def test_a_redeploy_that_fails_too_fails_the_reset_with_both_reasons(host):
    deployed, _ = host(FakeVM(health="000"), deploy_rc=1)
    with pytest.raises(AssertionError, match="does not answer /health.*the redeploy that should have fixed it failed"):
        deployed.reset()
