"""The health gate script, run for real in a local shell against small local HTTP servers."""
from __future__ import annotations

import http.server
import os
import socket
import subprocess
import threading

import pytest

from hermes_infra.operations.health import gate_script
from hermes_infra.host.hostfacts import DataDirRequest

KEY = "k3J9-vQ2x_Lm8pR4tZ7w-gate-key"


class FakeGateway(http.server.BaseHTTPRequestHandler):
    """Answers like Hermes's API server: /health open, /v1/models behind the bearer key."""

    health_status = 200

    def do_GET(self):  # noqa: N802
        if self.path == "/health":
            status = self.health_status
        elif self.path == "/v1/models":
            status = 200 if self.headers.get("Authorization") == f"Bearer {KEY}" else 401
        else:
            status = 404
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeGateway)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fake_docker(directory, address: str = "127.0.0.1") -> dict:
    """`docker inspect` of a running container at `address` (empty: not running), as PATH."""
    bin_dir = directory / "fakebin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "docker").write_text(f"#!/bin/sh\n[ \"$1\" = inspect ] && printf '%s\\n' '{address}'\nexit 0\n")
    (bin_dir / "docker").chmod(0o755)
    return dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")


def run_gate(url: str, env_path, timeout: int = 3, address: str = "127.0.0.1",
             container_port: int | None = None) -> subprocess.CompletedProcess:
    data_dir = DataDirRequest("hermes", str(env_path.parent), os.getuid(), os.getgid())
    port = container_port or int(url.rsplit(":", 1)[1])
    return subprocess.run(["sh", "-c", gate_script(url, "hermes", data_dir, timeout, 0.2, port)],
                          capture_output=True, text=True, timeout=60, env=fake_docker(env_path.parent.parent, address))


def test_gate_does_not_follow_a_planted_link(server, tmp_path):
    secret = tmp_path / "outside"
    secret.write_text(f"API_SERVER_KEY={KEY}\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / ".env").symlink_to(secret)
    result = run_gate(f"http://127.0.0.1:{server.server_port}", tmp_path / "data" / ".env")
    assert result.returncode == 1  # the key behind the link was not read
    assert "and 401 with it (want 200)" in result.stderr


def test_gate_passes_with_the_key_from_the_env_file(server, tmp_path):
    env = tmp_path / ".env"
    env.write_text(f"OTHER=1\nAPI_SERVER_KEY={KEY}\n")
    result = run_gate(f"http://127.0.0.1:{server.server_port}", env)
    assert result.returncode == 0, result.stderr
    assert "/health 200, /v1/models 401 without key, 200 with key" in result.stdout
    assert KEY not in result.stdout + result.stderr


def test_gate_fails_when_the_key_is_wrong(server, tmp_path):
    env = tmp_path / ".env"
    env.write_text("API_SERVER_KEY=another-key-another-key\n")
    result = run_gate(f"http://127.0.0.1:{server.server_port}", env)
    assert result.returncode == 1
    assert "gave 401 without the key (want 401) and 401 with it (want 200)" in result.stderr


def test_gate_times_out_with_what_to_check(tmp_path):
    result = run_gate(f"http://127.0.0.1:{closed_port()}", tmp_path / ".env", timeout=2)
    assert result.returncode == 1
    assert "did not answer GET" in result.stderr and "within 2s" in result.stderr
    assert "API_SERVER_KEY" in result.stderr and "last lines of the container log" in result.stderr


def test_a_data_dir_with_shell_syntax_stays_text_in_the_gate(tmp_path):
    """F14: the data dir reaches the gate's messages quoted; `$(…)` and backticks never run."""
    planted = tmp_path / "INJECTED"
    data = tmp_path / f"h$(touch INJECTED)`touch INJECTED`\"x"
    data.mkdir()
    result = subprocess.run(["sh", "-c", gate_script(f"http://127.0.0.1:{closed_port()}", "hermes",
                                                     DataDirRequest("hermes", str(data), os.getuid(), os.getgid()),
                                                     1, 0.2)],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 1
    assert not planted.exists()
    assert f"API_SERVER_KEY in {data}/.env" in result.stderr


def test_the_key_goes_only_to_the_running_containers_address(tmp_path):
    """F4: whoever listens on the published port (a local user who bound it while the gateway
    was down) answers /health and the anonymous request like Hermes, and never gets the key."""
    seen = []

    class Squatter(FakeGateway):
        def do_GET(self):  # noqa: N802
            seen.append(self.headers.get("Authorization"))
            super().do_GET()

    squatter = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Squatter)
    threading.Thread(target=squatter.serve_forever, daemon=True).start()
    try:
        env = tmp_path / "data" / ".env"
        env.parent.mkdir()
        env.write_text(f"API_SERVER_KEY={KEY}\n")
        url = f"http://127.0.0.1:{squatter.server_port}"
        stopped = run_gate(url, env, address="", container_port=closed_port())
        assert stopped.returncode == 1 and "container not running: the key was not sent" in stopped.stderr
        running_elsewhere = run_gate(url, env, container_port=closed_port())
        assert running_elsewhere.returncode == 1
        assert seen and all(auth is None for auth in seen), seen
    finally:
        squatter.shutdown()
        squatter.server_close()
