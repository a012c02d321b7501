"""pyinfra starts while the locks are being taken, and waits at a gate.

Starting Python, loading the deploy and opening SSH cost a locked deploy as much as taking the
locks does (about a second each on a small VM). `GatedChild` starts pyinfra at once; pyinfra
loads and connects (which reads and changes nothing on a host) and then stops at
`wait_at_gate`, the first thing the deploy does for a host, until the parent holds every lock.
Its output is held back until then and dropped if the parent gives up, so a refused lock
prints the refusal and nothing of pyinfra's.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import select
import signal
import subprocess
import sys
import termios
import threading
import time

GATE_ENV = "HERMES_INFRA_GATE_FD"
OPEN = b"go\n"
GIVE_UP_EXIT = 3
INTERRUPT_GRACE_SECONDS = 20
DRAIN_SECONDS = 5
INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_passed = False
# pyinfra runs the deploy code of every host at once (greenlets): the first reads the gate, the
# others wait on this lock (gevent's once pyinfra has patched threading) until it has.
_gate_lock = threading.Lock()


def wait_at_gate() -> None:
    """In the deploy (the pyinfra child): block until the parent says go; exit at once, quietly,
    if it gives up or is gone. Without the gate (`--dry`, plain `pyinfra`) this returns at once."""
    with _gate_lock:
        _wait_at_gate()


def _wait_at_gate() -> None:
    global _passed
    if _passed:
        return
    fd_text = os.environ.pop(GATE_ENV, None)
    if not fd_text:
        _passed = True
        return
    fd = int(fd_text)
    received = b""
    try:
        while len(received) < len(OPEN):
            # select is gevent's once pyinfra has patched it: SSH keeps being served while we wait.
            select.select([fd], [], [])
            chunk = os.read(fd, len(OPEN) - len(received))
            if not chunk:
                break
            received += chunk
    finally:
        os.close(fd)
    if received != OPEN:
        os._exit(GIVE_UP_EXIT)
    _passed = True


class HeldStream:
    """Copies what the child writes on one stream to `target` (an fd), holding it back until
    `release()`; `drop()` throws it away."""

    def __init__(self, target: int):
        self.target = target
        self._lock = threading.Lock()
        self._held: list[bytes] | None = []
        self._dropped = False
        if os.isatty(target):
            # A terminal stays a terminal for the child: pyinfra keeps its colours and spinner.
            self.read_end, self.child_end = pty.openpty()
            try:
                size = fcntl.ioctl(target, termios.TIOCGWINSZ, b"\0" * 8)
                fcntl.ioctl(self.child_end, termios.TIOCSWINSZ, size)
            except OSError:
                pass
        else:
            self.read_end, self.child_end = os.pipe()
        self._thread = threading.Thread(target=self._pump, name="hermes-infra-child-output", daemon=True)

    def start(self) -> None:
        os.close(self.child_end)
        self._thread.start()

    def _pump(self) -> None:
        while True:
            try:
                # select first: once pyinfra_cli is imported (inventories), gevent has patched
                # threads into greenlets and select, and a bare read would stall them all.
                select.select([self.read_end], [], [])
                chunk = os.read(self.read_end, 65536)
            except OSError:  # a pty whose last writer is gone
                chunk = b""
            if not chunk:
                break
            with self._lock:
                if self._held is not None:
                    self._held.append(chunk)
                elif not self._dropped:
                    self._write(chunk)
        os.close(self.read_end)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.target, view)
            except BlockingIOError:
                select.select([], [self.target], [])
                continue
            view = view[written:]

    def release(self) -> None:
        with self._lock:
            held, self._held = self._held or [], None
            if not self._dropped:
                for chunk in held:
                    self._write(chunk)

    def drop(self) -> None:
        with self._lock:
            self._held, self._dropped = None, True

    def join(self) -> None:
        self._thread.join(DRAIN_SECONDS)


class GatedChild:
    """pyinfra, started now, held at the gate until `open()`; `give_up()` ends it unheard."""

    def __init__(self, argv: list[str], *, cwd: str, env: dict[str, str], stdout=None):
        if stdout is not None:
            stdout.flush()
            targets = (stdout.fileno(), stdout.fileno())
        else:
            sys.stdout.flush()
            sys.stderr.flush()
            targets = (sys.stdout.fileno(), sys.stderr.fileno())
        self.streams = [HeldStream(target) for target in targets]
        gate_read, self._gate = os.pipe()
        env = {**env, GATE_ENV: str(gate_read)}
        try:
            self.process = subprocess.Popen(argv, cwd=cwd, env=env, pass_fds=(gate_read,),
                                            stdout=self.streams[0].child_end, stderr=self.streams[1].child_end)
        finally:
            os.close(gate_read)
        for stream in self.streams:
            stream.start()

    def open(self) -> None:
        try:
            os.write(self._gate, OPEN)
        except BrokenPipeError:  # it ended before the gate (a connection failure): its output says why
            pass
        finally:
            os.close(self._gate)
            self._gate = -1
        for stream in self.streams:
            stream.release()

    def give_up(self) -> None:
        for stream in self.streams:
            stream.drop()
        if self._gate >= 0:
            os.close(self._gate)
            self._gate = -1
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in self.streams:
            stream.join()

    def wait(self) -> tuple[int, bool]:
        """Wait for pyinfra; on Ctrl-C, SIGTERM or SIGHUP give it SIGINT and a grace period to
        stop between commands, then kill it. Returns (exit code, interrupted).

        The signals go to a handler that only notes them and passes SIGINT on. A KeyboardInterrupt
        would not do: once gevent is patched in (importing pyinfra_cli does it), it is raised in
        whichever greenlet runs at that moment, and when that is a thread's (an SSH transport,
        an output pump, the lock heartbeat) the thread swallows it and the deploy runs on."""
        interrupted_at: list[float] = []

        def on_signal(signum, frame) -> None:
            if not interrupted_at:
                interrupted_at.append(time.monotonic())
            with contextlib.suppress(OSError):
                self.process.send_signal(signal.SIGINT)

        previous = {}
        try:
            for signum in INTERRUPT_SIGNALS:
                previous[signum] = signal.signal(signum, on_signal)
        except ValueError:  # not the main thread: signals are the main thread's to take
            pass
        try:
            while True:
                try:
                    code = self.process.wait(timeout=0.25)
                    break
                except subprocess.TimeoutExpired:
                    if interrupted_at and time.monotonic() - interrupted_at[0] > INTERRUPT_GRACE_SECONDS:
                        self.process.kill()
                except KeyboardInterrupt:  # raised before the handler was in place
                    on_signal(signal.SIGINT, None)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            for stream in self.streams:
                stream.join()
        return code, bool(interrupted_at)
