"""The QEMU process of one VM: its command line, and signalling it safely.

Safety rules this module enforces:
- Every host forward binds 127.0.0.1 only: a disposable VM with a root key baked into a
  cached image must never be reachable from the network.
- A VM process is only ever signalled by the pid from its own pidfile, and only after
  /proc/<pid>/cmdline proves it is still QEMU running that VM's overlay (pids get
  reused). Never by process name.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hermes_infra.localvm.accel import Accel
from hermes_infra.localvm.ports import LOOPBACK

QEMU_BINARY = "qemu-system-x86_64"
# clocksource=hpet: under TCG the guest's TSC follows this machine's clock, while QEMU's own timers
# (HPET, APIC) follow its virtual clock, which a restored snapshot resumes from where it was saved.
# A guest timing itself by the TSC then finds, after `loadvm`, that the time since the save has
# jumped by, and its Go programs (dockerd, docker-proxy) stop answering for about that long
# (measured: a gap of 60 s, about 60 s without /health; 5 minutes, 5 minutes and more). With the
# HPET as its clock the guest resumes where it was saved, and answers at once (5.5 s after a restore).
KERNEL_CMDLINE = "root=/dev/vda rw console=ttyS0 net.ifnames=0 clocksource=hpet"
DEFAULT_MEMORY_MB = 3072
DEFAULT_CPUS = 2


@dataclass(frozen=True)
class QemuSpec:
    """Everything that goes on one VM's QEMU command line."""

    name: str
    kernel: Path
    initrd: Path
    overlay: Path
    serial_log: Path
    pidfile: Path
    ssh_port: int
    #: guest port -> host port on 127.0.0.1
    forwards: Mapping[int, int] = field(default_factory=dict)
    memory_mb: int = DEFAULT_MEMORY_MB
    cpus: int = DEFAULT_CPUS
    accel: Accel = "tcg"
    #: HMP monitor socket; lets the library add forwards and power down without SSH.
    monitor: Path | None = None
    append: str = KERNEL_CMDLINE


def accel_args(accel: Accel) -> list[str]:
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    # Multi-threaded TCG with a big translation cache: the fastest pure-software setup.
    return ["-accel", "tcg,thread=multi,tb-size=256", "-cpu", "max"]


def hostfwd(host_port: int, guest_port: int) -> str:
    for port in (host_port, guest_port):
        if not (isinstance(port, int) and 0 < port < 65536):
            raise ValueError(f"invalid port {port!r}")
    return f"hostfwd=tcp:{LOOPBACK}:{host_port}-:{guest_port}"


def netdev_arg(ssh_port: int, forwards: Mapping[int, int]) -> str:
    rules = [hostfwd(ssh_port, 22)]
    rules += [hostfwd(host, guest) for guest, host in sorted(forwards.items())]
    return ",".join(["user", "id=n0", *rules])


def qemu_command(spec: QemuSpec, qemu: str = QEMU_BINARY) -> list[str]:
    """The full argv that boots `spec` as a daemonized, headless VM."""
    cmd = [
        qemu,
        "-name", spec.name,
        *accel_args(spec.accel),
        "-smp", str(spec.cpus),
        "-m", str(spec.memory_mb),
        "-kernel", str(spec.kernel),
        "-initrd", str(spec.initrd),
        "-append", spec.append,
        # cache=unsafe: the overlay is disposable, so skip host fsyncs (much faster I/O).
        "-drive", f"file={spec.overlay},if=virtio,format=qcow2,cache=unsafe",
        "-netdev", netdev_arg(spec.ssh_port, spec.forwards),
        "-device", "virtio-net-pci,netdev=n0",
        "-device", "virtio-rng-pci",
        "-display", "none",
        "-serial", f"file:{spec.serial_log}",
    ]
    if spec.monitor is not None:
        cmd += ["-monitor", f"unix:{spec.monitor},server=on,wait=off"]
    cmd += ["-daemonize", "-pidfile", str(spec.pidfile)]
    return cmd


def create_overlay(base: Path, overlay: Path) -> None:
    """Copy-on-write disk over the read-only base image; only the VM's changes land here.

    Owner only (0600, created under umask 077): every guest write lands in it, the gateway's
    `.env` with the API key included."""
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(overlay)],
        check=True, capture_output=True, text=True, umask=0o077,
    )
    os.chmod(overlay, 0o600)


def read_pidfile(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """True for a live process; a zombie (exited, not yet reaped) counts as dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the parenthesised command name, which may contain spaces.
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def is_vm_process(pid: int, marker: Path) -> bool:
    """Is `pid` a live QEMU whose command line names `marker` (the VM's overlay)?"""
    if not pid_alive(pid):
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(argv) and b"qemu-system" in argv[0] and any(str(marker).encode() in arg for arg in argv)


def wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.2)
    return not pid_alive(pid)


def terminate(pid: int, marker: Path, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; only if `pid` is still this VM's QEMU."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if not is_vm_process(pid, marker):
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if wait_exit(pid, wait):
            return


def monitor_command(sock_path: Path, command: str, timeout: float = 5.0) -> str:
    """Send one HMP command to the VM's monitor socket and return its reply text."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(sock_path))
        _read_until_prompt(sock)
        sock.sendall(command.encode() + b"\n")
        reply = _read_until_prompt(sock)
    # HMP echoes the command line (with terminal escapes) before the answer.
    lines = [line for line in reply.splitlines() if command not in line]
    return "\n".join(lines).strip()


def _read_until_prompt(sock: socket.socket) -> str:
    data = b""
    while not data.rstrip().endswith(b"(qemu)"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").replace("(qemu)", "")
