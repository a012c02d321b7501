"""Tests of hermes_infra.host.aptwait: the lock-wait snippet runs here under `sh` (dash on Debian)
against lock files in a temp dir, locked for real with fcntl by a Python child process
(the kind of lock apt, dpkg and unattended-upgrades take), read back through /proc/locks."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hermes_infra.host.aptwait import (
    APT_LOCK_EXIT,
    APT_LOCK_TIMEOUT_OPTION,
    APT_LOCKS,
    TIMEOUT_MARK,
    WAIT_MARK,
    wait_for_apt_locks_script,
)

pytestmark = pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux /proc/locks")

HOLDER = r"""
import fcntl, sys, time
handles = []
for path in sys.argv[2:]:
    handle = open(path, "r+")
    if sys.argv[1] != "open-only":
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    handles.append(handle)
print("ready", flush=True)
time.sleep(float(sys.argv[1]) if sys.argv[1] != "open-only" else 30)
"""


@pytest.fixture
def root(tmp_path) -> Path:
    base = tmp_path / "fake root"  # a space: the root prefix must be quoted
    for lock in APT_LOCKS:
        (base / lock.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (base / lock.lstrip("/")).write_text("")
    return base


class Holder:
    """A child process holding fcntl locks on some files for `seconds`."""

    def __init__(self, root: Path, locks: list[str], seconds: float | str):
        paths = [str(root / lock.lstrip("/")) for lock in locks]
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(seconds), *paths],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"
        self.pid = self.proc.pid
        self.comm = Path(f"/proc/{self.pid}/comm").read_text().strip()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()


def run(script: str, shell: str = "sh") -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run([shell, "-c", script], capture_output=True, text=True, timeout=30)
    return result, time.monotonic() - started


def test_no_lock_held_exits_at_once(root):
    result, seconds = run(wait_for_apt_locks_script(600, root=str(root)))
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "")
    assert seconds < 1


def test_missing_lock_files_are_not_held(tmp_path):
    result, seconds = run(wait_for_apt_locks_script(600, root=str(tmp_path / "nothing")))
    assert result.returncode == 0 and result.stderr == "" and seconds < 1


def test_open_but_unlocked_file_is_not_held(root):
    with Holder(root, ["/var/lib/dpkg/lock-frontend"], "open-only"):
        result, seconds = run(wait_for_apt_locks_script(600, root=str(root)))
    assert result.returncode == 0 and result.stderr == "" and seconds < 1


def test_waits_while_held_then_succeeds(root):
    with Holder(root, ["/var/lib/apt/lists/lock"], 1.5) as holder:
        result, seconds = run(wait_for_apt_locks_script(5, root=str(root), poll_seconds=0.1))
    assert result.returncode == 0, result.stderr
    assert 1.0 <= seconds < 4.5
    lines = result.stderr.splitlines()
    assert lines == [f"{WAIT_MARK} 5s for the apt lock held by {holder.comm} (pid {holder.pid}) "
                     "on /var/lib/apt/lists/lock"], "the waiting message is printed once"


def test_gives_up_after_the_bound_with_what_to_do(root):
    with Holder(root, ["/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock"], 20) as holder:
        result, seconds = run(wait_for_apt_locks_script(1, root=str(root), poll_seconds=0.2))
    assert result.returncode == APT_LOCK_EXIT
    assert 1.0 <= seconds < 3
    assert f"{WAIT_MARK} 1s for the apt lock held by {holder.comm} (pid {holder.pid})" in result.stderr
    assert (f"{TIMEOUT_MARK} after 1s: /var/lib/dpkg/lock-frontend is still held by "
            f"{holder.comm} (pid {holder.pid})") in result.stderr
    for advice in ("cloud-init status --wait", "systemctl stop unattended-upgrades", "apt_lock_timeout_seconds"):
        assert advice in result.stderr


def test_zero_timeout_checks_once(root):
    result, _ = run(wait_for_apt_locks_script(0, root=str(root)))
    assert result.returncode == 0
    with Holder(root, ["/var/cache/apt/archives/lock"], 20) as holder:
        # A 10 s poll: one wait would show as >= 10 s, while a busy machine still has headroom.
        result, seconds = run(wait_for_apt_locks_script(0, root=str(root), poll_seconds=10))
    assert result.returncode == APT_LOCK_EXIT and seconds < 5
    assert f"/var/cache/apt/archives/lock is still held by {holder.comm} (pid {holder.pid})" in result.stderr


def test_chains_and_runs_under_dash(root):
    shells = ["sh"] + (["dash"] if shutil.which("dash") else [])
    for shell in shells:
        result, _ = run(wait_for_apt_locks_script(5, root=str(root)) + " && echo next", shell)
        assert (result.returncode, result.stdout) == (0, "next\n"), (shell, result.stderr)
    with Holder(root, ["/var/lib/dpkg/lock"], 20):
        result, _ = run(wait_for_apt_locks_script(0, root=str(root)) + " && echo next || echo failed $?")
    assert result.stdout == f"failed {APT_LOCK_EXIT}\n"


@pytest.mark.skipif(not shutil.which("fuser"), reason="fuser (psmisc) not installed")
def test_fuser_fallback_when_proc_locks_is_unreadable(root):
    script = wait_for_apt_locks_script(5, root=str(root), poll_seconds=0.1, proc_locks="/nonexistent/locks")
    with Holder(root, ["/var/lib/dpkg/lock-frontend"], 1) as holder:
        result, seconds = run(script)
    assert result.returncode == 0 and seconds >= 0.5
    assert f"held by {holder.comm} (pid {holder.pid})" in result.stderr


def test_arguments_are_checked():
    with pytest.raises(ValueError):
        wait_for_apt_locks_script(-1)
    with pytest.raises(ValueError):
        wait_for_apt_locks_script(10, poll_seconds=0)
    script = wait_for_apt_locks_script(600)
    assert "T=600" in script and "R=''" in script and script.startswith("(") and script.endswith(")")


def test_apt_lock_timeout_option():
    assert APT_LOCK_TIMEOUT_OPTION(600) == "-o DPkg::Lock::Timeout=600"
    assert APT_LOCK_TIMEOUT_OPTION(0) == "-o DPkg::Lock::Timeout=0"
    with pytest.raises(ValueError):
        APT_LOCK_TIMEOUT_OPTION(-5)


def test_snippet_needs_no_awk_lsof_fuser_or_python():
    script = wait_for_apt_locks_script(600)
    for tool in ("awk", "lsof", "python", "flock", "perl"):
        assert tool not in script, tool
