"""`sshchannel.exchange` against a channel that behaves like paramiko's: blocking reads that
return b"" at EOF, a send window, an exit status after the command ends."""
from __future__ import annotations

import io
import threading

from hermes_infra.sshchannel import exchange


class FakeCommand:
    """A remote command: counts stdin until EOF (or `hang`s), writes stdout and stderr, exits."""

    def __init__(self, stdout=b"", stderr=b"", rc=0, hang=False):
        self.stdout, self.stderr, self.rc, self.hang = stdout, stderr, rc, hang
        self.stdin = bytearray()
        self.largest_send = 0
        self.command = None
        self.eof = threading.Event()
        self.closed = threading.Event()

    # paramiko Channel
    def exec_command(self, command):
        self.command = command

    def sendall(self, data):
        self.largest_send = max(self.largest_send, len(data))
        self.stdin.extend(data)

    def shutdown_write(self):
        self.eof.set()

    def _finished(self):
        if self.hang:
            self.closed.wait(10)
        else:
            self.eof.wait(10)

    def recv(self, size):
        self._finished()
        data, self.stdout = self.stdout[:size], self.stdout[size:]
        return data

    def recv_stderr(self, size):
        self._finished()
        data, self.stderr = self.stderr[:size], self.stderr[size:]
        return data

    def recv_exit_status(self):
        return -1 if self.closed.is_set() else self.rc

    def close(self):
        self.closed.set()

    def transport(self):
        return type("Transport", (), {"open_session": lambda _: self})()


def test_stdout_and_stderr_come_back_apart_with_the_exit_status():
    command = FakeCommand(stdout=b"x" * 200_000, stderr=b"warning\n", rc=3)
    result = exchange(command.transport(), "tar -c .")
    assert (result.rc, result.stdout, result.stderr) == (3, b"x" * 200_000, "warning\n")
    assert command.command == "tar -c ." and command.eof.is_set()


def test_stdin_arrives_whole_and_in_chunks_from_bytes_and_from_a_file():
    payload = bytes(range(256)) * 3000
    for stdin in (payload, io.BytesIO(payload)):
        command = FakeCommand(stdout=b"ok")
        result = exchange(command.transport(), "docker load -q", stdin=stdin)
        assert result.rc == 0 and result.text == "ok"
        assert bytes(command.stdin) == payload
        # paramiko re-slices the rest of a sendall after every packet: big sends are quadratic
        assert command.largest_send <= 1 << 16


def test_stdout_can_be_streamed_to_a_callback():
    command = FakeCommand(stdout=b"a" * 150_000)
    seen = bytearray()
    result = exchange(command.transport(), "cat", on_stdout=seen.extend)
    assert seen == b"a" * 150_000 and result.stdout == b""


def test_a_command_that_does_not_end_times_out_and_its_channel_is_closed():
    command = FakeCommand(hang=True)
    result = exchange(command.transport(), "sleep infinity", timeout=0.2)
    assert result.rc == 124 and "timed out after 0.2s" in result.stderr
    assert command.closed.is_set()
