"""The batched read, run for real on this machine: every section parses, and pyinfra's own
facts (OS release, memory, CPUs) come back through their own parsers."""
from __future__ import annotations

import base64
import os
import subprocess

import pytest

from hermes_infra.host.hostfacts import (
    BACKGROUND,
    DataDirRequest,
    ProbeRequest,
    StateRequest,
    parse_state,
    state_command,
    state_sections,
)


def read(request: StateRequest):
    result = subprocess.run(["sh", "-c", state_command(request)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return parse_state(result.stdout.splitlines())


def test_batched_read_parses_on_a_real_machine(tmp_path):
    state = read(StateRequest(data_dirs=(DataDirRequest("hermes", str(tmp_path / "missing"), 10000, 10000),),
                              root_files=(str(tmp_path / "nope"),), packages=("bash",), image_ref="x:1"))
    assert state.os_release.get("id") == "debian"
    assert state.memory_mb > 256 and state.cpus >= 1
    assert state.packages.get("bash") == "installed"
    assert state.root_files.get(str(tmp_path / "nope")) is None
    assert state.data_dirs["hermes"]["dir"] == "missing"
    assert state.data_dirs["hermes"]["meta"]["kind"] == "missing"
    assert state.swap["swappiness"] >= 0


def test_root_files_come_back_with_owner_mode_and_exact_bytes_and_links_count_as_missing(tmp_path):
    regular = tmp_path / "compose.yaml"
    regular.write_bytes(b"services: {}\nno newline at the end")
    regular.chmod(0o600)
    empty = tmp_path / "empty"
    empty.write_text("")
    (tmp_path / "link").symlink_to(regular)
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    os.link(regular, tmp_path / "second-name")
    names = ["compose.yaml", "empty", "link", "dir", "fifo", "second-name", "missing"]
    state = read(StateRequest(root_files=tuple(str(tmp_path / name) for name in names)))
    found = state.root_files
    assert found[str(regular)]["text"].text == "services: {}\nno newline at the end"
    assert (found[str(regular)]["uid"], found[str(regular)]["mode"]) == (os.getuid(), "0600")
    assert found[str(empty)]["text"].text == "" and found[str(empty)]["mode"] == "0644"
    # A second name for the same file is still that file's content (tar stores a hard link).
    assert found[str(tmp_path / "second-name")]["text"].text == found[str(regular)]["text"].text
    for name in ("link", "dir", "fifo", "missing"):
        assert found.get(str(tmp_path / name)) is None, name
    assert "no newline" not in repr(found[str(regular)]["text"])


def test_a_truncated_root_file_stream_is_an_error_not_a_host_without_files(tmp_path):
    (tmp_path / "a").write_text("x" * 5000)
    command = state_command(StateRequest(root_files=(str(tmp_path / "a"),)))
    lines = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60).stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.endswith(" rootfiles")) + 1
    lines[at] = base64.b64encode(base64.b64decode(lines[at])[:700]).decode()
    with pytest.raises(ValueError, match="unreadable.*nothing was changed"):
        parse_state(lines)


def test_sections_that_print_secrets_stay_in_the_foreground():
    request = StateRequest(data_dirs=(DataDirRequest("hermes", "/root/.hermes", 10000, 10000),),
                           root_files=("/opt/hermes/wechat.env",),
                           probes=(ProbeRequest("hermes", "http://127.0.0.1:8642",
                                                DataDirRequest("hermes", "/root/.hermes", 10000, 10000), "hermes"),))
    kinds = {name.split(" ", 1)[0] for name, _ in state_sections(request)}
    assert {"datadir", "rootfiles", "probe", "dirmeta"} <= kinds
    assert "datadir" not in BACKGROUND and "rootfiles" not in BACKGROUND
    # The probe runs in the background: the key goes to curl through a pipe, never into its output.
    probe = next(body for name, body in state_sections(request) if name.startswith("probe"))
    assert "-H @-" in probe[0]


def apt_lock_holder(tmp_path, proc_locks: str) -> str:
    from hermes_infra.host import hostfacts

    locks = tmp_path / "locks"
    locks.write_text(proc_locks)
    files = []
    for path in hostfacts.APT_LOCKS:
        local = tmp_path / path.strip("/").replace("/", "_")
        local.write_text("")
        files.append(str(local))
    script = hostfacts.APT_LOCK_HOLDER.replace(" /proc/locks", f" {locks}")
    for path, local in zip(hostfacts.APT_LOCKS, files):
        script = script.replace(path, local)
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=10).stdout.strip()


def test_apt_lock_quick_check_matches_the_device_not_just_the_inode(tmp_path):
    """F15: an agent's POSIX lock on another filesystem's file with the same inode number is not
    the apt lock (and its comm is not shown as the holder)."""
    target = tmp_path / "var_lib_dpkg_lock"
    target.write_text("")
    st = target.stat()
    right = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pid = os.getpid()
    assert apt_lock_holder(tmp_path, f"1: POSIX  ADVISORY  WRITE {pid} 00:2f:{st.st_ino} 0 EOF\n") == ""
    with open(f"/proc/{pid}/comm") as handle:
        comm = handle.read().strip()
    assert apt_lock_holder(tmp_path, f"1: POSIX  ADVISORY  WRITE {pid} {right} 0 EOF\n") == f"{pid} {comm}"
    # a waiter is not a holder
    assert apt_lock_holder(tmp_path, f"1: -> POSIX  ADVISORY  WRITE {pid} {right} 0 EOF\n") == ""


def test_apt_lock_holder_name_is_cleaned_before_it_is_printed(monkeypatch):
    from hermes_infra.operations import docker_engine
    from tests.unit.hostfakes import converged, plan_for, settings

    warnings = []
    monkeypatch.setattr(docker_engine.logger, "warning", warnings.append)
    import dataclasses

    plan = plan_for(settings(), converged(settings())).docker
    held = dataclasses.replace(plan, apt_lock_holder="4242 evil\x1b]0;pwned\x07")
    from tests.unit.test_operations import run_op

    run_op(docker_engine.apt_locks_free, held)
    assert warnings and "\x1b" not in warnings[0] and "\x07" not in warnings[0]


# --- F4: the key goes only to the running container's own address --------------------------------

KEY = "probe-key-0123456789abcdef"


class Recorder:
    """A local HTTP server that answers like Hermes and records every Authorization header."""

    def __init__(self):
        import http.server
        import threading

        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                auth = self.headers.get("Authorization")
                seen.append((self.path, auth))
                ok = self.path == "/health" or auth == f"Bearer {KEY}"
                self.send_response(200 if ok else 401)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def fake_docker(tmp_path, address: str):
    """`docker inspect` as the engine answers the RUNNING_ADDRESSES template."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    docker = bin_dir / "docker"
    docker.write_text(f"#!/bin/sh\n[ \"$1\" = inspect ] && printf '%s\\n' {address!r}\n")
    docker.chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}"


def test_the_probe_sends_the_key_only_to_the_running_containers_own_address(tmp_path, monkeypatch):
    from hermes_infra.host import hostfacts

    data = tmp_path / "data"
    data.mkdir()
    (data / ".env").write_text(f"API_SERVER_KEY={KEY}\n")
    squatter, container = Recorder(), Recorder()
    monkeypatch.setattr(hostfacts, "API_CONTAINER_PORT", container.port)
    try:
        request = StateRequest(probes=(ProbeRequest("hermes", f"http://127.0.0.1:{squatter.port}",
                                                    DataDirRequest("hermes", str(data), os.getuid(), os.getgid()),
                                                    "hermes"),))
        [probe] = [body for name, body in state_sections(request) if name.startswith("probe")]

        def run(address: str) -> list[str]:
            env = dict(os.environ, PATH=fake_docker(tmp_path, address))
            return subprocess.run(["sh", "-c", probe[0]], capture_output=True, text=True, env=env,
                                  timeout=30).stdout.split()

        # not running: the published port's listener (whoever it is) answers, and gets no key
        assert run("") == ["200", "401", "000"]
        # running: the key goes to the container's address, never to the published port
        assert run("127.0.0.1 ") == ["200", "401", "200"]
        assert all(auth is None for _, auth in squatter.seen), squatter.seen
        assert container.seen == [("/v1/models", f"Bearer {KEY}")]
        # an address that is not an IPv4 address of digits and dots is not believed
        assert run("evil.example:80/x ") == ["200", "401", "000"]
    finally:
        squatter.close()
        container.close()


# --- destructive operations check the host first: what is at swap.path, whether a data dir is empty --

def test_the_swap_path_is_described_before_anything_touches_it(tmp_path):
    made = tmp_path / "swap-made"
    with open(made, "wb") as handle:
        handle.truncate(1 << 20)
    subprocess.run(["mkswap", str(made)], check=True, capture_output=True)
    data = tmp_path / "database"
    data.write_bytes(b"x" * 8192)
    link = tmp_path / "link"
    link.symlink_to(made)
    directory = tmp_path / "dir"
    directory.mkdir()
    (directory / "keep").write_text("mine")
    empty = tmp_path / "empty"
    empty.mkdir()
    found = {}
    for path in (made, data, link, tmp_path / "missing"):
        found[path.name] = read(StateRequest(swap_path=str(path))).swap
    assert (found["swap-made"]["kind"], found["swap-made"]["signature"]) == ("regular", True)
    assert (found["database"]["kind"], found["database"]["signature"]) == ("regular", False)
    assert (found["link"]["kind"], found["link"]["signature"]) == ("symlink", False)  # never followed
    assert found["missing"]["kind"] == "missing"
    state = read(StateRequest(data_dirs=(DataDirRequest("full", str(directory), 10000, 10000),
                                         DataDirRequest("empty", str(empty), 10000, 10000))))
    assert state.data_dirs["full"]["empty"] is False and state.data_dirs["empty"]["empty"] is True
