"""The gate between a locked deploy and its pyinfra child, with a real child process: the child
starts before the locks are held, prints only once the gate opens, and is ended unheard when the
parent gives up."""
from __future__ import annotations

import os
import sys
import tempfile
import time

from hermes_infra.release.gate import GIVE_UP_EXIT, GatedChild

# Stands in for pyinfra: it "connects" (prints), waits at the gate, then "deploys" (touches a file).
CHILD = """
import os, sys
sys.path.insert(0, {root!r})
from hermes_infra.release.gate import wait_at_gate
print("Connecting", flush=True)
print("to stderr", file=sys.stderr, flush=True)
wait_at_gate()
wait_at_gate()  # a second host's deploy: already through
assert "HERMES_INFRA_GATE_FD" not in os.environ
open({marker!r}, "w").close()
print("deployed", flush=True)
"""


def start(tmp_path, output):
    marker = tmp_path / "deployed"
    script = CHILD.format(root=os.getcwd(), marker=str(marker))
    child = GatedChild([sys.executable, "-c", script], cwd=str(tmp_path), env=dict(os.environ), stdout=output)
    return child, marker


def wait_for(predicate, seconds=20):
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    return predicate()


def test_the_child_waits_at_the_gate_with_its_output_held_then_runs(tmp_path):
    with tempfile.TemporaryFile() as output:
        child, marker = start(tmp_path, output)
        time.sleep(1.0)  # long enough for the child to reach the gate
        assert not marker.exists() and child.process.poll() is None
        output.seek(0)
        assert output.read() == b""
        child.open()
        assert child.wait() == (0, False)
        output.seek(0)
        text = output.read().decode()
    assert marker.exists()
    assert "Connecting" in text and "to stderr" in text and text.index("Connecting") < text.index("deployed")


def test_giving_up_ends_the_child_before_it_does_anything_and_drops_its_output(tmp_path):
    with tempfile.TemporaryFile() as output:
        child, marker = start(tmp_path, output)
        wait_for(lambda: False, 0.5)
        child.give_up()
        assert child.process.returncode is not None
        output.seek(0)
        assert output.read() == b""
    assert not marker.exists()


def test_the_child_leaves_quietly_when_its_parent_is_gone(tmp_path):
    with tempfile.TemporaryFile() as output:
        child, marker = start(tmp_path, output)
        os.close(child._gate)  # what the parent's death does to the gate
        child._gate = -1
        assert child.process.wait(30) == GIVE_UP_EXIT
    assert not marker.exists()


def test_without_a_gate_the_deploy_does_not_wait(monkeypatch):
    from hermes_infra.release import gate

    monkeypatch.delenv(gate.GATE_ENV, raising=False)
    monkeypatch.setattr(gate, "_passed", False)
    started = time.monotonic()
    gate.wait_at_gate()
    assert time.monotonic() - started < 1


# pyinfra loads every host's deploy code at once, in greenlets: none may pass the gate early.
GREENLETS = """
from gevent import monkey
monkey.patch_all()
import gevent, sys
sys.path.insert(0, {root!r})
from hermes_infra.release.gate import wait_at_gate

def host(number):
    wait_at_gate()
    open({marker!r} + str(number), "w").close()

print("Connected", flush=True)
gevent.joinall([gevent.spawn(host, number) for number in range(3)], raise_error=True)
"""


def test_no_host_of_a_fleet_passes_the_gate_before_it_opens(tmp_path):
    marker = str(tmp_path / "host-")
    script = GREENLETS.format(root=os.getcwd(), marker=marker)
    with tempfile.TemporaryFile() as output:
        child = GatedChild([sys.executable, "-c", script], cwd=str(tmp_path), env=dict(os.environ), stdout=output)
        time.sleep(1.5)
        assert child.process.poll() is None and not list(tmp_path.glob("host-*"))
        child.open()
        assert child.wait() == (0, False)
        output.seek(0)
        assert b"Connected" in output.read()
    assert sorted(p.name for p in tmp_path.glob("host-*")) == ["host-0", "host-1", "host-2"]


def test_on_a_terminal_the_child_writes_to_a_terminal_of_its_own(tmp_path):
    """pyinfra keeps its colours and progress on a terminal: the child's stdout is a pty whose
    output reaches ours, held until the gate opens, with our window size."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    from hermes_infra.release.gate import HeldStream

    ours_master, ours = pty.openpty()  # "our terminal": we read what reaches it on ours_master
    fcntl.ioctl(ours, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 132, 0, 0))
    script = ("import os, sys, fcntl, termios, struct; "
              "rows, cols, _, _ = struct.unpack('HHHH', fcntl.ioctl(1, termios.TIOCGWINSZ, b'\\0' * 8)); "
              "print('tty' if os.isatty(1) else 'notty', rows, cols, flush=True)")
    stream = HeldStream(ours)
    import subprocess
    child = subprocess.Popen([sys.executable, "-c", script], stdout=stream.child_end)
    stream.start()
    assert child.wait(30) == 0
    time.sleep(0.2)
    assert not select.select([ours_master], [], [], 0.2)[0], "output reached the terminal before release()"
    stream.release()
    stream.join()
    received = b""
    while select.select([ours_master], [], [], 1)[0]:
        received += os.read(ours_master, 1024)
        if b"\n" in received:
            break
    os.close(ours_master)
    os.close(ours)
    assert received.split() == [b"tty", b"40", b"132"]


# The parent as `hermes-infra up` runs it: gevent patched in (pyinfra_cli's import does it) and
# a thread busy in Python (an SSH transport, an output pump). Ctrl-C must still reach pyinfra.
INTERRUPTED_PARENT = """
from gevent import monkey
monkey.patch_all()
import os, signal, sys, threading, time
sys.path.insert(0, {root!r})
from hermes_infra.release.gate import GatedChild

child_script = '''
import signal, sys, time
sys.path.insert(0, {root!r})
from hermes_infra.release.gate import wait_at_gate
wait_at_gate()
signal.signal(signal.SIGINT, lambda *a: (print("child got SIGINT", flush=True), sys.exit(0)))
time.sleep(60)
print("child ran to the end", flush=True)
'''

def busy():
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for _ in range(20000):
            pass
        time.sleep(0)

child = GatedChild([sys.executable, "-c", child_script], cwd={root!r}, env=dict(os.environ))
child.open()
for _ in range(3):
    threading.Thread(target=busy, daemon=True).start()
threading.Timer(1.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
started = time.monotonic()
print("wait:", child.wait(), round(time.monotonic() - started), flush=True)
"""


def test_ctrl_c_reaches_pyinfra_whichever_greenlet_it_lands_in(tmp_path):
    script = INTERRUPTED_PARENT.format(root=os.getcwd())
    import subprocess

    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=90)
    assert "child got SIGINT" in run.stdout, run.stdout + run.stderr
    assert "child ran to the end" not in run.stdout
    assert "wait: (0, True)" in run.stdout, run.stdout + run.stderr
