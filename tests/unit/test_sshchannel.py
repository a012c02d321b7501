"""`sshchannel.exchange` against a channel that behaves like paramiko's: blocking reads that
return b"" at EOF, a send window, an exit status after the command ends."""
from __future__ import annotations

import io

from hermes_infra.host.sshchannel import exchange
from tests.unit.hostfakes import FakeCommand


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
