"""Ctrl-C during an in-process pyinfra run: it reaches the main greenlet, whichever greenlet
runs when the signal lands (an SSH transport's, the lock heartbeat's, an operation's), so the
session can stop the operations and release the locks."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

INTERRUPTED_RUN = """
from gevent import monkey
monkey.patch_all()
import os, signal, sys, threading, time
import gevent
sys.path.insert(0, {root!r})
from hermes_infra.release.pyinfra_run import interrupts_to_main

def busy():
    # Threads are greenlets once patched: this one runs a lot and yields often (an SSH pump).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for _ in range(20000):
            pass
        time.sleep(0)

with interrupts_to_main():
    for _ in range(3):
        threading.Thread(target=busy, daemon=True).start()
    operations = [gevent.spawn(gevent.sleep, 60) for _ in range(2)]
    threading.Timer(1.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    started = time.monotonic()
    try:
        gevent.joinall(operations)
        print("the run went on to the end", flush=True)
    except KeyboardInterrupt:
        print("main got KeyboardInterrupt after", round(time.monotonic() - started), flush=True)
print("handler back:", signal.getsignal(signal.SIGINT) is signal.default_int_handler, flush=True)
"""


def test_ctrl_c_reaches_pyinfra_whichever_greenlet_it_lands_in():
    script = INTERRUPTED_RUN.format(root=os.getcwd())
    # A fresh process as an operator starts it: Ctrl-C at its default, whatever this one has.
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert "main got KeyboardInterrupt after" in run.stdout, run.stdout + run.stderr
    assert "went on to the end" not in run.stdout
    assert "handler back: True" in run.stdout, "Ctrl-C is Python's again after the run"
