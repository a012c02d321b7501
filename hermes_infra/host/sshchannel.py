"""One command over one SSH channel of an open paramiko transport, with bytes on stdin and
stdout: what pyinfra's own command runner cannot do (its stdin is text lines, its output is
read as text), and what both a `docker load` streamed from the control machine and the day-two
commands (backups are archives) need."""
from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

CHUNK = 1 << 16


@dataclass(frozen=True)
class RunResult:
    rc: int
    stdout: bytes
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", errors="replace")


def exchange(transport, command: str, *, stdin: bytes | BinaryIO | None = None,
             on_stdout: Callable[[bytes], None] | None = None, timeout: float | None = None) -> RunResult:
    """Run `command` (shell text as the login shell gets it) on a new channel; stdin is sent
    while stdout and stderr are read, so neither side's window can fill and stall the other.

    Every side blocks on the channel instead of polling it: a polling loop next to a sender
    cost a CPU core on the control machine and halved the rate of a `docker load` stream."""
    channel = transport.open_session()
    channel.exec_command(command)
    workers = []

    def start(target) -> None:
        worker = threading.Thread(target=target, daemon=True)
        worker.start()
        workers.append(worker)

    if stdin is None:
        channel.shutdown_write()
    else:
        def feed() -> None:
            try:
                # In chunks: paramiko's sendall re-slices what is left after every packet,
                # which for one large bytes object is quadratic (48 MB took 15 s of CPU).
                source = io.BytesIO(stdin) if isinstance(stdin, bytes) else stdin
                while chunk := source.read(CHUNK):
                    channel.sendall(chunk)
            except OSError:
                pass  # the command exited before reading everything: its exit status says why
            finally:
                with contextlib.suppress(OSError):
                    channel.shutdown_write()
        start(feed)
    err = bytearray()

    def drain_stderr() -> None:
        while data := channel.recv_stderr(CHUNK):
            err.extend(data)
    start(drain_stderr)
    timed_out = threading.Event()
    timer = None
    if timeout is not None:
        def expire() -> None:
            timed_out.set()
            channel.close()
        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        timer.start()
    out = bytearray()
    while data := channel.recv(CHUNK):
        if on_stdout is not None:
            on_stdout(data)
        else:
            out.extend(data)
    rc = channel.recv_exit_status()
    if timer is not None:
        timer.cancel()
    channel.close()
    for worker in workers:
        worker.join(timeout=5)
    if timed_out.is_set():
        return RunResult(124, bytes(out), err.decode(errors="replace") + f"\ntimed out after {timeout}s")
    return RunResult(rc, bytes(out), err.decode("utf-8", errors="replace"))
