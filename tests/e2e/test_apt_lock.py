"""apt lock waiting on a real VM: a deploy that meets apt/dpkg locks held by another process
(as unattended-upgrades or cloud-init hold them on a fresh VPS) waits for them with a message
naming the holder, and gives up after `apt_lock_timeout_seconds` with what to do, changing nothing.

The stand-in holder is a python3 process on the VM that takes the same fcntl locks apt takes
(dpkg frontend lock and apt lists lock). It keeps them until the deploy's lock wait has been
running for HOLD_AFTER_WAITER seconds (it spots the wait snippet among the VM's processes),
so the test does not depend on how long the deploy takes to reach its apt steps; it exits on
its own after its cap, and the test kills it by its pid in any case.
"""
from __future__ import annotations

import shlex
import time

from hermes_infra.host.aptwait import TIMEOUT_MARK, WAIT_MARK

PIDFILE = "/run/hermes-e2e-apt-lock.pid"
LOCKS = ("/var/lib/dpkg/lock-frontend", "/var/lib/apt/lists/lock")
HOLD_AFTER_WAITER = 25.0
# Text that is on the command line of the lock-wait snippet (`sh -c '<snippet>'`).
WAITER_MARKERS = (WAIT_MARK, "hi_holder")

HOLDER = r"""
import fcntl, os, sys, time
pidfile, cap, after = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
markers = [bytes.fromhex(m) for m in sys.argv[4].split(",")]
handles = []
for path in sys.argv[5:]:
    handle = open(path, "a")
    fcntl.lockf(handle, fcntl.LOCK_EX)  # blocks while the VM's own apt jobs hold it
    handles.append(handle)
with open(pidfile + ".tmp", "w") as out:
    out.write(str(os.getpid()))
os.replace(pidfile + ".tmp", pidfile)
me, started, seen = str(os.getpid()), time.monotonic(), None
while time.monotonic() - started < cap:
    if seen is None:
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or pid == me:
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                    text = cmdline.read()
            except OSError:
                continue
            if any(marker in text for marker in markers):
                seen = time.monotonic()
                break
    elif time.monotonic() - seen >= after:
        break
    time.sleep(0.5)
"""


def start_holder(deployed, cap: float, after: float = HOLD_AFTER_WAITER) -> tuple[int, str]:
    """Start the lock holder in the background on the VM; return its pid and process name
    once it holds every lock."""
    markers = ",".join(marker.encode().hex() for marker in WAITER_MARKERS)  # hex: not on our own command line
    args = " ".join(shlex.quote(a) for a in (PIDFILE, str(cap), str(after), markers, *LOCKS))
    # In a subshell: a background job of the SSH command's own shell dies with the session.
    deployed.run(f"rm -f {PIDFILE} && cd / && (setsid nohup python3 -c {shlex.quote(HOLDER)} {args} "
                 "</dev/null >/dev/null 2>&1 &)")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        pid = deployed.run(f"cat {PIDFILE} 2>/dev/null || true").strip()
        if pid:
            name = deployed.run(f"cat /proc/{pid}/comm").strip()
            held = deployed.run("cat /proc/locks")
            inodes = deployed.run("stat -c %i " + " ".join(LOCKS)).split()
            for inode in inodes:
                assert any(f" {pid} " in line and line.split()[5].endswith(f":{inode}")
                           for line in held.splitlines() if "->" not in line), held
            return int(pid), name
        time.sleep(1)
    raise AssertionError("the lock holder did not get the apt locks within 180s (is apt running on the VM?)")


def stop_holder(deployed, pid: int) -> None:
    deployed.run(f"kill {pid} 2>/dev/null; for i in $(seq 50); do [ -d /proc/{pid} ] || break; sleep 0.2; done; "
                 f"rm -f {PIDFILE}; ! [ -d /proc/{pid} ]")


def test_deploy_waits_for_a_held_apt_lock_and_names_the_holder(deployed):
    pid, name = start_holder(deployed, cap=240)
    try:
        run = deployed.deploy()
    finally:
        stop_holder(deployed, pid)
    assert run.returncode == 0, run.output[-5000:]
    assert run.seconds >= 20, f"the deploy did not wait for the lock ({run.seconds:.1f}s)"
    assert WAIT_MARK in run.output, run.output[-5000:]
    assert f"held by {name} (pid {pid})" in run.output, run.output[-5000:]
    print(f"\n[timing] deploy that waited for the apt lock: {run.seconds:.1f}s")


def test_deploy_gives_up_after_the_timeout_and_changes_nothing(deployed):
    container_before = deployed.run("docker inspect --format '{{.Id}}' hermes").strip()
    swappiness_before = deployed.run("cat /proc/sys/vm/swappiness").strip()
    pid, name = start_holder(deployed, cap=300, after=300)
    try:
        # A swappiness change that the deploy would make after its apt steps: it must not happen.
        run = deployed.deploy(apt_lock_timeout_seconds=5, swap={"size": "1G", "swappiness": 20})
        assert deployed.run(f"[ -d /proc/{pid} ] && echo alive || echo gone").strip() == "alive", "the holder left early"
    finally:
        stop_holder(deployed, pid)
    try:
        assert run.returncode != 0, run.output[-5000:]
        assert TIMEOUT_MARK in run.output, run.output[-5000:]
        assert f"is still held by {name} (pid {pid})" in run.output, run.output[-5000:]
        assert "cloud-init status --wait" in run.output and "unattended-upgrades" in run.output
        assert deployed.run("cat /proc/sys/vm/swappiness").strip() == swappiness_before == "10"
        assert "vm.swappiness = 10" in deployed.run("cat /etc/sysctl.d/60-hermes-infra-swap.conf")
        assert deployed.run("docker inspect --format '{{.Id}}' hermes").strip() == container_before
        assert '"600"' in deployed.run("cat /etc/apt/apt.conf.d/90hermes-infra-lock-timeout"), "a file was changed"
    finally:
        if deployed.run("cat /proc/sys/vm/swappiness").strip() != swappiness_before:
            restore = deployed.deploy()
            assert restore.returncode == 0, restore.output[-4000:]
    # With the lock released, the same settings deploy (then the defaults are put back).
    released = deployed.deploy(apt_lock_timeout_seconds=5)
    assert released.returncode == 0, released.output[-4000:]
    print(f"[timing] back to the bootstrapped state: {deployed.reset():.1f}s")
