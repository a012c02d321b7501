"""One disposable local VM: boot it from an overlay, reach it, reboot it, get rid of it.

A VM lives in `cache_dir()/vms/<name>/`: `vm.qcow2` (copy-on-write overlay of the cached
base image), `serial.log` (console: the first place to look when boot fails), `vm.pid`,
`monitor.sock`, `known_hosts` and `state.json`. The directory *is* the VM: `destroy()`
stops QEMU (by its pidfile pid only) and deletes it, and `LocalVM.load(name)` lets any
later process pick a running VM back up.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from hermes_infra.host.hostenv import cache_dir, private_dir
from hermes_infra.localvm.accel import Accel, detect_accel
from hermes_infra.localvm.errors import LocalVMError, VMBootError, VMNotFound
from hermes_infra.localvm.image import BaseImage
from hermes_infra.localvm.ports import LOOPBACK, free_ports
from hermes_infra.localvm.qemu import (
    DEFAULT_CPUS,
    DEFAULT_MEMORY_MB,
    QemuSpec,
    create_overlay,
    is_vm_process,
    monitor_command,
    qemu_command,
    read_pidfile,
    terminate,
    wait_exit,
)
from hermes_infra.localvm.ssh import SSHConnection, SSHResult, known_hosts_lines
from hermes_infra.localvm.state import STATE_FILE, VMState, load_state, save_state

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_BOOT_ATTEMPTS = 3  # a free port can be taken between our probe and QEMU's bind
_MAX_UNIX_PATH = 100  # sun_path is 108 bytes; leave room

DEFAULT_SSH_TIMEOUT = 600.0  # TCG on 2 shared cores: ~30 s alone, minutes when busy


def vms_dir() -> Path:
    return private_dir(cache_dir() / "vms")


def vm_dir(name: str) -> Path:
    if not _NAME_RE.match(name):
        raise ValueError(f"invalid VM name {name!r}: use letters, digits, '.', '_', '-'")
    return vms_dir() / name


_lock_guard = threading.Lock()
_held_locks: dict[str, int] = {}


@contextlib.contextmanager
def vm_lock(name: str) -> Iterator[None]:
    """Inter-process lock on one VM name (re-entrant within this process)."""
    vm_dir(name)  # validates the name
    with _lock_guard:
        depth = _held_locks.get(name, 0)
        _held_locks[name] = depth + 1
    if depth:
        try:
            yield
        finally:
            with _lock_guard:
                _held_locks[name] -= 1
        return
    handle = open(vms_dir() / f".{name}.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        with _lock_guard:
            _held_locks.pop(name, None)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


class LocalVM:
    """Handle on a VM described by `vms/<name>/state.json` (running or not)."""

    def __init__(self, directory: Path, state: VMState) -> None:
        self.directory = directory
        self.state = state

    # ----------------------------------------------------------------- creation / lookup
    @classmethod
    def boot(
        cls,
        name: str,
        image: BaseImage,
        *,
        memory_mb: int = DEFAULT_MEMORY_MB,
        cpus: int = DEFAULT_CPUS,
        forwards: Iterable[int] = (),
        accel: Accel | None = None,
        replace: bool = False,
        disk: Path | None = None,
    ) -> LocalVM:
        """Start QEMU for a new VM `name` (does not wait for SSH: see wait_for_ssh).

        `forwards` are guest TCP ports, each reachable on its own free 127.0.0.1 port.
        An existing VM of that name is an error unless `replace`, which destroys it.
        `disk` starts the VM from a disk saved by `save_disk` (itself an overlay of `image`)
        instead of the bare base image: a host already provisioned, in seconds.
        """
        guest_ports = sorted({int(p) for p in forwards} - {22})
        directory = vm_dir(name)
        with vm_lock(name):
            if directory.exists():
                previous = cls._try_load(directory)
                if previous is not None and previous.is_running() and not replace:
                    raise LocalVMError(f"VM {name!r} is already running (pid {previous.pid}); destroy it first")
                if previous is not None:
                    previous._stop_process(graceful=False)
                _kill_by_pidfile(directory)  # a VM whose state.json was lost or never written
                shutil.rmtree(directory)
            private_dir(directory)
            try:
                accel = accel or detect_accel(image.kernel)
                return cls._start(name, directory, image, memory_mb, cpus, guest_ports, accel, disk)
            except BaseException:
                # Includes KeyboardInterrupt after QEMU daemonized: never leave it running.
                _kill_by_pidfile(directory)
                shutil.rmtree(directory, ignore_errors=True)
                raise

    @classmethod
    def _start(cls, name: str, directory: Path, image: BaseImage, memory_mb: int, cpus: int,
               guest_ports: list[int], accel: Accel, disk: Path | None = None) -> LocalVM:
        overlay = directory / "vm.qcow2"
        create_overlay(disk or image.qcow2, overlay)
        monitor = directory / "monitor.sock"
        stderr = ""
        for attempt in range(1, _BOOT_ATTEMPTS + 1):
            ports = free_ports(1 + len(guest_ports))
            spec = QemuSpec(
                name=f"hermes-{name}", kernel=image.kernel, initrd=image.initrd, overlay=overlay,
                serial_log=directory / "serial.log", pidfile=directory / "vm.pid",
                ssh_port=ports[0], forwards=dict(zip(guest_ports, ports[1:], strict=True)),
                memory_mb=memory_mb, cpus=cpus, accel=accel,
                monitor=monitor if len(str(monitor)) < _MAX_UNIX_PATH else None,
            )
            proc = subprocess.run(qemu_command(spec), capture_output=True, text=True, timeout=120,
                                  stdin=subprocess.DEVNULL)
            if proc.returncode == 0:
                break
            stderr = (proc.stderr or proc.stdout).strip()
            if "forward" not in stderr.lower() or attempt == _BOOT_ATTEMPTS:
                raise VMBootError(f"QEMU failed to start VM {name!r} (exit {proc.returncode}): {stderr}")
            log.info("host port taken before QEMU bound it; retrying with new ports")
        pid = read_pidfile(spec.pidfile)
        if pid is None:
            raise VMBootError(f"QEMU started but wrote no pidfile {spec.pidfile}")
        known_hosts = directory / "known_hosts"
        known_hosts.write_text(known_hosts_lines(image.host_keys.read_text(), spec.ssh_port))
        state = VMState(
            name=name, pid=pid, ssh_port=spec.ssh_port, forwards=dict(spec.forwards),
            key_path=image.ssh_key, overlay=overlay, known_hosts=known_hosts,
            kernel=image.kernel, initrd=image.initrd, base_image=disk or image.qcow2,
            recipe_hash=image.recipe_hash, memory_mb=memory_mb, cpus=cpus, accel=accel,
            started_at=time.time(),
        )
        save_state(directory, state)
        log.info("VM %s started (pid %s, %s, ssh on %s:%s)", name, pid, accel, LOOPBACK, spec.ssh_port)
        return cls(directory, state)

    @classmethod
    def load(cls, name: str) -> LocalVM:
        """The VM recorded under `name`; raises VMNotFound if there is none."""
        vm = cls._try_load(vm_dir(name))
        if vm is None:
            raise VMNotFound(f"no local VM named {name!r} in {vms_dir()}")
        return vm

    @classmethod
    def _try_load(cls, directory: Path) -> LocalVM | None:
        try:
            return cls(directory, load_state(directory))
        except (OSError, ValueError, TypeError, KeyError):
            return None

    # ----------------------------------------------------------------------- facts
    @property
    def name(self) -> str:
        return self.state.name

    @property
    def pid(self) -> int | None:
        return self.state.pid

    @property
    def ssh_port(self) -> int:
        return self.state.ssh_port

    @property
    def forwards(self) -> dict[int, int]:
        """guest port -> host port on 127.0.0.1"""
        return dict(self.state.forwards)

    @property
    def serial_log(self) -> Path:
        return self.directory / "serial.log"

    def host_port(self, guest_port: int) -> int:
        """The 127.0.0.1 port that reaches `guest_port` in the VM."""
        if guest_port == 22:
            return self.ssh_port
        try:
            return self.state.forwards[guest_port]
        except KeyError:
            raise LocalVMError(f"guest port {guest_port} of VM {self.name!r} is not forwarded") from None

    def is_running(self) -> bool:
        pid = self.state.pid
        return pid is not None and is_vm_process(pid, self.state.overlay)

    def connection(self) -> SSHConnection:
        return SSHConnection(port=self.ssh_port, key_path=self.state.key_path, known_hosts=self.state.known_hosts)

    def pyinfra_host(self, alias: str | None = None) -> tuple[str, dict]:
        """Inventory entry for pyinfra: `(alias, {"ssh_hostname": "127.0.0.1", ...})`."""
        return self.connection().pyinfra_host(alias or f"hermes-vm-{self.name}")

    def serial_tail(self, lines: int = 40) -> str:
        try:
            text = self.serial_log.read_text(errors="replace")
        except OSError:
            return "(no serial log)"
        return "\n".join(text.replace("\r", "").splitlines()[-lines:])

    def __repr__(self) -> str:
        status = "running" if self.is_running() else "stopped"
        return f"<LocalVM {self.name} {status} pid={self.pid} ssh=127.0.0.1:{self.ssh_port} forwards={self.forwards}>"

    # --------------------------------------------------------------------- talking
    def ssh(self, command: str, *, timeout: float | None = 300, input: str | None = None,
            check: bool = False) -> SSHResult:
        """Run `command` as root in the guest: (rc, stdout, stderr). `check` raises on rc != 0."""
        result = self.connection().run(command, timeout=timeout, input=input)
        if check and result.rc != 0:
            raise LocalVMError(f"{command!r} failed in VM {self.name!r} (rc {result.rc}): {result.stderr.strip()}")
        return result

    def wait_for_ssh(self, timeout: float = DEFAULT_SSH_TIMEOUT, *, not_boot_id: str | None = None) -> float:
        """Retry a real SSH login until it runs a command; returns the seconds waited.

        With `not_boot_id`, an answer from that (old) boot does not count: used by reboot().
        Raises VMBootError with the serial console tail on timeout or if QEMU dies.
        """
        start = time.monotonic()
        deadline = start + timeout
        last = SSHResult(-1, "", "not tried")
        while True:
            if not self.is_running():
                raise VMBootError(f"QEMU of VM {self.name!r} exited while waiting for SSH.\n"
                                  f"serial log tail:\n{self.serial_tail()}")
            last = self.connection().run("cat /proc/sys/kernel/random/boot_id", timeout=30, connect_timeout=5)
            if last.rc == 0 and last.stdout.strip() and last.stdout.strip() != not_boot_id:
                return time.monotonic() - start
            if time.monotonic() >= deadline:
                raise VMBootError(
                    f"VM {self.name!r} did not answer SSH on 127.0.0.1:{self.ssh_port} within {timeout:.0f} s "
                    f"(last: rc {last.rc} {last.stderr.strip()[-200:]}).\nserial log tail:\n{self.serial_tail()}"
                )
            time.sleep(2)

    def boot_id(self) -> str:
        """The guest kernel's boot id: changes on every boot."""
        return self.ssh("cat /proc/sys/kernel/random/boot_id", timeout=60, check=True).stdout.strip()

    def reboot(self, timeout: float = DEFAULT_SSH_TIMEOUT) -> float:
        """Reboot the guest (same QEMU process) and wait until SSH answers from the new boot."""
        old = self.boot_id()
        start = time.monotonic()
        self.ssh("systemctl reboot", timeout=30)  # the connection may drop: rc is meaningless
        self.wait_for_ssh(timeout, not_boot_id=old)
        return time.monotonic() - start

    def add_forward(self, guest_port: int) -> int:
        """Forward one more guest port at runtime (via QEMU's monitor); returns the host port."""
        if guest_port == 22 or guest_port in self.state.forwards:
            return self.host_port(guest_port)
        monitor = self.directory / "monitor.sock"
        if not self.is_running() or not monitor.exists():
            raise LocalVMError(f"cannot add a forward to VM {self.name!r}: not running or no monitor")
        with vm_lock(self.name):
            for _ in range(_BOOT_ATTEMPTS):
                (host_port,) = free_ports(1)
                reply = monitor_command(monitor, f"hostfwd_add n0 tcp:{LOOPBACK}:{host_port}-:{guest_port}")
                if not reply:
                    self.state.forwards[guest_port] = host_port
                    save_state(self.directory, self.state)
                    return host_port
            raise LocalVMError(f"QEMU refused to forward guest port {guest_port}: {reply}")

    def save_disk(self, target: Path, timeout: float = 900.0) -> Path:
        """A point-in-time copy of the running VM's disk as a qcow2 overlay of the same base
        image (QEMU's `drive_backup`, sync=top: only what this VM wrote), for `boot(disk=...)`.

        The guest's page cache is flushed first, so the copy holds everything written until
        now; it is crash-consistent (ext4 replays its journal on the next boot), which is what
        a provisioned host needs. QEMU keeps running and the guest is not paused.
        """
        monitor = self.directory / "monitor.sock"
        if not self.is_running() or not monitor.exists():
            raise LocalVMError(f"cannot save the disk of VM {self.name!r}: not running or no monitor")
        if target.exists():
            raise LocalVMError(f"{target} exists; a saved disk is never overwritten")
        self.ssh("sync", timeout=300, check=True)
        reply = monitor_command(monitor, f"drive_backup virtio0 {target} qcow2")
        if reply:
            raise LocalVMError(f"QEMU refused to save the disk of VM {self.name!r}: {reply}")
        deadline = time.monotonic() + timeout
        while "No active jobs" not in (jobs := monitor_command(monitor, "info block-jobs")):
            if time.monotonic() >= deadline or not self.is_running():
                raise LocalVMError(f"saving the disk of VM {self.name!r} did not finish: {jobs}")
            time.sleep(0.5)
        if not target.is_file():
            raise LocalVMError(f"QEMU finished saving the disk of VM {self.name!r} but {target} is missing")
        target.chmod(0o600)  # it holds the guest's secrets (API keys in .env)
        return target

    def save_state(self, tag: str) -> None:
        """Save the whole running VM (memory, devices and disk) under `tag`, inside its own
        overlay (QEMU's `savevm`); `restore_state(tag)` brings it back in about a second.
        Under TCG that is what makes "start from a deployed, settled host" cheap: a snapshot
        restore instead of a redeploy and a gateway start."""
        self._snapshot_command("savevm", tag)

    def restore_state(self, tag: str, timeout: float = 120.0) -> None:
        """Go back to the state saved as `tag`: every process, file and container as it was.

        The guest clock is then set from this machine's: the guest resumes at its saved time,
        and timestamps (audit records, lock ages, timers) must keep moving forward."""
        self._snapshot_command("loadvm", tag)
        self.wait_for_ssh(timeout)
        self.ssh(f"date -u -s @{int(time.time())} >/dev/null", timeout=60, check=True)

    def _snapshot_command(self, verb: str, tag: str) -> None:
        if not _NAME_RE.match(tag):
            raise ValueError(f"invalid snapshot tag {tag!r}: use letters, digits, '.', '_', '-'")
        monitor = self.directory / "monitor.sock"
        if not self.is_running() or not monitor.exists():
            raise LocalVMError(f"cannot {verb} VM {self.name!r}: not running or no monitor")
        # A savevm of a VM with docker's memory in use takes seconds; the monitor answers after.
        reply = monitor_command(monitor, f"{verb} {tag}", timeout=600)
        if reply:
            raise LocalVMError(f"QEMU's {verb} {tag} failed for VM {self.name!r}: {reply}")

    # -------------------------------------------------------------------- stopping
    def shutdown(self, timeout: float = 180.0) -> None:
        """Clean power-off: `systemctl poweroff` in the guest, then wait for QEMU to exit.

        Falls back to an ACPI power-down via the monitor, then SIGTERM, then SIGKILL, all
        aimed at the pidfile's pid and only while it is still this VM's QEMU.
        """
        self._stop_process(graceful=True, timeout=timeout)

    def destroy(self, *, graceful: bool = False) -> None:
        """Stop the VM and delete its directory. Not graceful by default: the disk is discarded
        anyway, and SIGTERM ends QEMU at once instead of a 10-30 s guest shutdown under TCG."""
        with vm_lock(self.name):
            self._stop_process(graceful=graceful)
            if self.is_running():
                raise LocalVMError(f"VM {self.name!r} (pid {self.pid}) is still running; not deleting it")
            shutil.rmtree(self.directory, ignore_errors=True)
        log.info("VM %s destroyed", self.name)

    def _stop_process(self, *, graceful: bool, timeout: float = 180.0) -> None:
        pid = self.state.pid
        if pid is None or not self.is_running():
            return
        if graceful:
            self.ssh("systemctl poweroff", timeout=30)
            if not wait_exit(pid, timeout):
                monitor = self.directory / "monitor.sock"
                with contextlib.suppress(OSError):
                    if monitor.exists():
                        monitor_command(monitor, "system_powerdown")
                wait_exit(pid, 30)
        terminate(pid, self.state.overlay)
        if not self.is_running() and self.directory.exists() and (self.directory / STATE_FILE).exists():
            self.state.pid = None
            save_state(self.directory, self.state)


def _kill_by_pidfile(directory: Path) -> None:
    pid = read_pidfile(directory / "vm.pid")
    if pid is not None:
        terminate(pid, directory / "vm.qcow2")


def list_vms() -> list[LocalVM]:
    """Every VM with a state file in the cache, running or not."""
    found = []
    for directory in sorted(vms_dir().iterdir()):
        if directory.is_dir():
            vm = LocalVM._try_load(directory)
            if vm is not None:
                found.append(vm)
    return found
