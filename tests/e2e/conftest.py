"""End-to-end fixtures: one real Debian 13 VM (QEMU) per test session, deployed into with the
real toolkit. Tests that change the host's settings put them back before they end, so the
tests share one VM (a fresh VM costs ~4 minutes under software emulation).

The cold bootstrap of that VM is the run's proof that a fresh host converges; right after it,
the VM's disk is saved (`LocalVM.save_disk`), and a second host boots from that disk instead of
being bootstrapped again (see `second_vm`)."""
from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import ClassVar
from pathlib import Path

import pytest

from hermes_infra import commands, trylocal
from hermes_infra.images import build as imagebuild
from hermes_infra.localvm import LocalVM, disposable_vm, ensure_image, ensure_vm
from hermes_infra.localvm.qemu import monitor_command


REPO = Path(__file__).resolve().parents[2]
_config = None


def report(line: str) -> None:
    """A line on the terminal now, outside pytest's capture: what CI's log must show even when
    the run is cut off before its summary."""
    terminal = _config.pluginmanager.get_plugin("terminalreporter") if _config is not None else None
    capture = _config.pluginmanager.get_plugin("capturemanager") if _config is not None else None
    if terminal is None or capture is None:
        print(line)
        return
    # Called from inside a test or fixture, where pytest captures the output: step out of it.
    with capture.global_and_fixture_disabled():
        terminal.write_line("")
        terminal.write_line(line)
BOOTSTRAPPED = "bootstrapped"  # the session VM's saved state right after its cold bootstrap


def pytest_collection_modifyitems(items):
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


_failed_in_module: dict[str, list[str]] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and "deployed" in item.fixturenames:
        _failed_in_module.setdefault(item.module.__name__, []).append(item.name)


@pytest.fixture(scope="session", autouse=True)
def _terminal_for_reports(request):
    """The session's config, for `report` (set once, before any test of the session runs)."""
    global _config
    _config = request.config


@pytest.fixture(scope="module", autouse=True)
def bootstrapped_again_after_a_failed_module(request):
    """A test that fails half-way skips its own clean-up and leaves the shared VM changed; the
    next test files would then fail for its reason, not theirs. After a module in which a test
    on the shared VM failed, the VM goes back to its saved bootstrapped state, so one failure
    stays in its own file. (Not after each failed test: a module's own fixtures, a provider
    started on the VM or images built there, must outlive one failure.)"""
    yield
    failed = _failed_in_module.pop(request.module.__name__, [])
    if failed:
        host = request.getfixturevalue("deployed")
        report(f"[recovery] {request.module.__name__}: {len(failed)} failed ({', '.join(failed)[:200]}): "
               f"VM back to its bootstrapped state in {host.reset():.1f}s")


@dataclass
class DeployRun:
    returncode: int
    output: str
    seconds: float

    def changed_operations(self) -> int:
        """The "Success" column of pyinfra's grand total: operations that changed something."""
        for line in self.output.splitlines():
            if line.strip().startswith("Grand total"):
                cells = line.split()
                return 0 if cells[3] == "-" else int(cells[3])
        raise AssertionError(f"no results table in the deploy output:\n{self.output[-3000:]}")


@dataclass
class DeployedHost:
    """A VM and the local settings it was deployed with; `deploy(**sections)` redeploys."""

    vm: LocalVM
    image_dir: Path
    first_run: DeployRun | None = None
    timings: dict[str, float] = field(default_factory=dict)
    disk: Path | None = None  # this VM's disk as saved right after its cold bootstrap
    restores_fell_back: ClassVar[int] = 0  # resets that needed the redeploy, this session

    def target(self, **sections) -> commands.Target:
        target = trylocal.local_target(self.vm, self.image_dir)
        for key, value in sections.items():
            target.data[key] = json.dumps(value)
        return target

    def deploy(self, *extra: str, dry: bool = False, **sections) -> DeployRun:
        """`hermes-infra up` with these settings sections, exactly as an operator runs it."""
        started = time.monotonic()
        argv = [sys.executable, "-m", "hermes_infra", "up", *self.target(**sections).cli_args()]
        if dry:
            argv.append("--dry")
        if extra:
            argv += ["--", *extra]
        result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                stdin=subprocess.DEVNULL, cwd=REPO)
        run = DeployRun(result.returncode, result.stdout, time.monotonic() - started)
        # Deploys are most of the suite's VM time: each one's cost, for bench/README.md's table.
        try:
            changed = f"{run.changed_operations()} operations changed"
        except AssertionError:
            changed = "no results table"
        print(f"[timing] deploy{' --dry' if dry else ''} ({', '.join(sections) or 'default settings'}): "
              f"{run.seconds:.1f}s, exit {run.returncode}, {changed}")
        return run

    def reset(self) -> float:
        """Back to the host as its cold bootstrap left it (memory, disk, every container), in a
        second or two instead of a redeploy and a gateway start; for tests whose cleanup is not
        what they prove. Returns the seconds it took.

        Should the restored state not answer (QEMU's loadvm failing, or a gateway that does not
        come back in it), the VM is rebooted, and redeployed with the default settings (where every
        test leaves the host too) only when the gateway does not come back by itself: slower,
        same host. What went
        wrong is printed to the terminal as it happens (`[reset]`), whether or not a test fails."""
        started = time.monotonic()
        if DeployedHost.restores_fell_back:
            # Seen on this machine already: a restored state that does not answer, and a second
            # loadvm undoes the redeploy that fixed the first. Redeploy only, from here on.
            problem = "a restored state did not answer earlier in this session"
        else:
            try:
                self.vm.restore_state(BOOTSTRAPPED)
                # The restored guest resumes mid-flight (its clock just set forward): give the
                # gateway a moment rather than fail on the first curl.
                code = self._health_within(30)
                if code == "200":
                    return time.monotonic() - started
                problem = (f"the restored gateway does not answer /health ({code or 'no answer'}) within 30 s; "
                           f"{self._diagnosis()}")
            except Exception as error:  # noqa: BLE001 - reported, then the slow path below
                problem = f"restoring the saved state failed: {type(error).__name__}: {str(error)[:400]}"
        first = not DeployedHost.restores_fell_back
        DeployedHost.restores_fell_back += 1
        report(f"[reset] {problem}; falling back to {'a reboot and ' if first else ''}a redeploy")
        if first:
            # A guest restored into a state that does not answer is not trusted further: a
            # fresh boot (its kernel's clock and timers new) before the redeploy.
            if self.vm.ssh("true", timeout=30).rc != 0:
                monitor_command(self.vm.directory / "monitor.sock", "cont")  # a failed loadvm leaves it paused
            try:
                self.vm.reboot()
            except Exception:  # noqa: BLE001 - no SSH to ask for a reboot: the machine's reset
                monitor_command(self.vm.directory / "monitor.sock", "system_reset")
                self.vm.wait_for_ssh()
            # The disk is the bootstrapped one (loadvm restored it): the gateway comes back by its
            # restart policy, and a redeploy is needed only when it does not.
            code = self._health_within(180)
            if code == "200":
                report(f"[reset] rebooted instead in {time.monotonic() - started:.1f}s")
                return time.monotonic() - started
            report(f"[reset] no /health ({code or 'no answer'}) within 180 s of the reboot; {self._diagnosis()}")
        run = self.deploy()
        assert run.returncode == 0, f"{problem}; the redeploy that should have fixed it failed:\n{run.output[-4000:]}"
        report(f"[reset] redeployed instead in {time.monotonic() - started:.1f}s")
        return time.monotonic() - started

    def _health_within(self, seconds: float) -> str:
        deadline, code = time.monotonic() + seconds, ""
        while time.monotonic() < deadline:
            code = self.http_status("http://127.0.0.1:8642/health")
            if code == "200":
                break
            time.sleep(2)
        return code

    def _diagnosis(self) -> str:
        state = self.vm.ssh("docker ps -a --format '{{.Names}} {{.Status}}' | tr '\\n' ';'; "
                            "docker inspect -f '{{.State.Status}} exit={{.State.ExitCode}} oom={{.State.OOMKilled}} "
                            "started={{.State.StartedAt}}' hermes; date -u +%FT%TZ; "
                            "cat /sys/devices/system/clocksource/clocksource0/current_clocksource; uptime", timeout=60)
        return f"VM says: {' | '.join(state.stdout.split(chr(10)))[:500]!r} (rc {state.rc})"

    def run(self, command: str, timeout: float = 300) -> str:
        """Run a command on the VM; fail the test on a non-zero exit."""
        result = self.vm.ssh(command, timeout=timeout)
        if result.rc == 255:  # ssh itself failed (its LogLevel=ERROR keeps the reason quiet): say what the VM did
            assert False, (f"{command[:300]!r} failed (255, ssh itself): {result.stderr[-500:]}\n"
                           f"QEMU running: {self.vm.is_running()}; serial console:\n{self.vm.serial_tail(20)}")
        assert result.rc == 0, f"{command!r} failed ({result.rc}): {result.stdout}\n{result.stderr}"
        return result.stdout

    def api_key(self, data_dir: str = "/root/.hermes") -> str:
        return self.run(f"sed -n 's/^API_SERVER_KEY=//p' {data_dir}/.env").strip()

    def http_status(self, url: str, key: str | None = None, container: str | None = None) -> str:
        """Status code of GET `url` from the VM (or from inside `container`); the key goes
        through stdin, never into a process argument."""
        header = f"printf 'Authorization: Bearer %s\\n' '{key}' | " if key else "true | "
        curl = "curl -s -o /dev/null -w '%{http_code}' --max-time 10 -H @- " + url
        if container:
            return self.run(f"{header}docker exec -i {container} {curl} || true").strip()
        return self.run(f"{header}{curl} || true").strip()


@pytest.fixture(scope="session")
def local_image() -> Path:
    """The registry-free Hermes image, and the VM base image built beside it: on a fresh
    machine both are built (about 1 and 2 minutes, much of it waiting on the apt mirror), so
    they are built at the same time."""
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        vm_image = pool.submit(ensure_image)
        built = imagebuild.build_image(log=lambda message: None)
        hermes_seconds = time.monotonic() - started
        vm_image.result()
    print(f"\n[timing] hermes image build or cache hit: {hermes_seconds:.1f}s, "
          f"with the VM base image: {time.monotonic() - started:.1f}s")
    return built.archive.parent


@contextlib.contextmanager
def session_vm():
    """A fresh disposable VM; `HERMES_INFRA_E2E_VM=name` reuses (and keeps) a named VM instead,
    to iterate on one test without paying a boot and a bootstrap each time."""
    name = os.environ.get("HERMES_INFRA_E2E_VM")
    if name:
        yield ensure_vm(name)
    else:
        with disposable_vm("e2e") as vm:
            yield vm


@pytest.fixture(scope="session")
def saved_disks(tmp_path_factory) -> Path:
    """Where the session's saved VM disks go (0700: they hold the guests' API keys)."""
    path = tmp_path_factory.mktemp("vm-disks")
    path.chmod(0o700)
    return path


@pytest.fixture(scope="session")
def deployed(local_image, saved_disks) -> DeployedHost:
    started = time.monotonic()
    with session_vm() as vm:
        host = DeployedHost(vm=vm, image_dir=local_image)
        host.timings["vm_boot"] = time.monotonic() - started
        host.first_run = host.deploy()
        host.timings["bootstrap"] = host.first_run.seconds
        print(f"\n[timing] VM boot to SSH: {host.timings['vm_boot']:.1f}s, "
              f"bootstrap deploy: {host.first_run.seconds:.1f}s")
        assert host.first_run.returncode == 0, host.first_run.output[-6000:]
        saving = time.monotonic()
        host.disk = vm.save_disk(saved_disks / "bootstrapped.qcow2")
        vm.save_state(BOOTSTRAPPED)
        print(f"[timing] bootstrapped disk and VM state saved: {time.monotonic() - saving:.1f}s")
        yield host


# What a deploy put on a host, beyond the host-level provisioning (Docker, the images, swap,
# daemon.json): removed from a clone of the bootstrapped disk, it leaves a VPS on which Docker
# and the image are already there and no gateway has ever run.
UNDEPLOY = """set -e
ids=$(docker ps -aq); [ -z "$ids" ] || docker rm -f $ids >/dev/null
systemctl disable --now hermes-infra-backup.timer >/dev/null 2>&1 || true
rm -rf /root/.hermes /root/.hermes[.-]* /opt/hermes /var/lib/hermes-infra /var/log/hermes-infra \
       /var/backups/hermes-infra /var/cache/hermes-infra /etc/systemd/system/hermes-infra-* \
       /usr/local/sbin/hermes-infra-*
systemctl daemon-reload
"""


@pytest.fixture(scope="session")
def second_vm(local_image, deployed):
    """A second VM, shared by every test that needs two hosts (a rollout over two hosts, a
    restore onto a new VPS). It boots from the first VM's disk as saved right after its cold
    bootstrap (the cold path is proven there, once), with every trace of the deployment
    removed: Docker and the image are there, no gateway, data dir or record of one. Tests that
    deploy into it leave it deployed with default settings."""
    started = time.monotonic()
    with disposable_vm("e2e2", image=None, disk=deployed.disk) as vm:
        result = vm.ssh(UNDEPLOY, timeout=300)
        assert result.rc == 0, result.stdout + result.stderr
        left = vm.ssh("docker ps -aq; ls -d /root/.hermes* /opt/hermes /var/lib/hermes-infra 2>/dev/null; true")
        assert left.stdout.split() == [], f"the clone still holds a deployment: {left.stdout}"
        print(f"\n[timing] second VM from the saved disk, boot to SSH and undeploy: {time.monotonic() - started:.1f}s")
        yield DeployedHost(vm=vm, image_dir=local_image)
