"""Choose QEMU's accelerator: KVM where it really works, TCG everywhere else.

`/dev/kvm` existing is not enough: nested/PVM hosts expose a /dev/kvm on which a stock
Debian kernel hangs or QEMU aborts ("failed to set MSR 0x10a"). So KVM is used only when
the CPU advertises vmx/svm, /dev/kvm opens read-write, AND a probe boot of the image's
kernel reaches its root-mount panic. The verdict is cached per host (kernel, QEMU binary,
/dev/kvm) because the probe costs seconds. `HERMES_INFRA_ACCEL=kvm|tcg` overrides.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Literal

from hermes_infra.host.hostenv import cache_dir

log = logging.getLogger(__name__)

Accel = Literal["kvm", "tcg"]
_PROBE_TIMEOUT = 60
_memo: dict[str, Accel] = {}


def cpu_has_virtualization(cpuinfo: str | None = None) -> bool:
    """True when /proc/cpuinfo's flags include vmx (Intel) or svm (AMD)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            if flags & {"vmx", "svm"}:
                return True
    return False


def kvm_device_usable(path: str = "/dev/kvm") -> bool:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def detect_accel(kernel: Path | None = None, qemu: str = "qemu-system-x86_64") -> Accel:
    """"kvm" or "tcg" for this host; `kernel` is what a KVM probe boots (none: no KVM)."""
    override = os.environ.get("HERMES_INFRA_ACCEL", "").strip().lower()
    if override in ("kvm", "tcg"):
        return override  # type: ignore[return-value]
    if not cpu_has_virtualization() or not kvm_device_usable() or kernel is None:
        return "tcg"
    key = _host_key(qemu)
    if key in _memo:
        return _memo[key]
    cache_file = cache_dir() / "accel.json"
    try:
        cached = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cached = {}
    if cached.get(key) in ("kvm", "tcg"):
        _memo[key] = cached[key]
        return _memo[key]
    verdict: Accel = "kvm" if probe_kvm(kernel, qemu) else "tcg"
    log.info("accelerator for this host: %s", verdict)
    cached[key] = verdict
    tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(cached, indent=2))
    os.replace(tmp, cache_file)
    _memo[key] = verdict
    return verdict


def probe_kvm(kernel: Path, qemu: str = "qemu-system-x86_64") -> bool:
    """Boot `kernel` under KVM with no disk; success = it gets as far as the root-mount panic."""
    with tempfile.TemporaryDirectory(prefix="hermes-kvm-probe-") as tmp:
        serial = Path(tmp) / "serial.log"
        cmd = [
            qemu, "-accel", "kvm", "-cpu", "host", "-m", "256", "-smp", "1",
            "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1 root=/dev/nonexistent",
            "-display", "none", "-serial", f"file:{serial}", "-no-reboot", "-nodefaults",
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_PROBE_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.info("KVM probe boot hung; using TCG")
            return False
        except OSError as exc:
            log.info("KVM probe could not start QEMU (%s); using TCG", exc)
            return False
        output = serial.read_text(errors="replace") if serial.exists() else ""
        ok = proc.returncode == 0 and ("Kernel panic" in output or "VFS: Unable to mount root" in output)
        if not ok:
            log.info("KVM probe failed (rc=%s, %s); using TCG", proc.returncode, proc.stderr.strip()[-200:])
        return ok


def _host_key(qemu: str) -> str:
    """Identity of (host kernel, QEMU build, /dev/kvm): a change re-runs the probe."""
    uname = os.uname()
    parts = [uname.release, uname.version, uname.machine, qemu]
    for path in (qemu if os.path.isabs(qemu) else _which(qemu), "/dev/kvm"):
        try:
            st = os.stat(path) if path else None
            parts.append(f"{st.st_mtime_ns}:{st.st_rdev}" if st else "-")
        except OSError:
            parts.append("-")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _which(name: str) -> str | None:
    from shutil import which

    return which(name)
