"""Free loopback TCP ports for QEMU's host forwards.

Picked by binding to port 0 on 127.0.0.1 and letting the kernel choose. Another process
can grab the port between our close() and QEMU's bind(); vm.py handles that rare race by
retrying the boot with fresh ports when QEMU reports a forwarding failure.
"""
from __future__ import annotations

import contextlib
import socket

LOOPBACK = "127.0.0.1"


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """`count` distinct free ports: all probe sockets stay open until every port is picked."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


def free_port(host: str = LOOPBACK) -> int:
    """One free port on `host` (127.0.0.1 unless told otherwise)."""
    return free_ports(1, host)[0]


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True when nothing listens on host:port right now (SO_REUSEADDR like QEMU's own bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True
