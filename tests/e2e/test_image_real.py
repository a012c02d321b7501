"""The registry-free image runs the real Hermes gateway (built from PyPI, run from its rootfs
as uid 10000 with the image's own Env, WorkingDir and Entrypoint+Cmd)."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from hermes_infra.images import build as ib

IS_ROOT = os.geteuid() == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, headers: dict | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


# Runs the image's own config (User, Env, WorkingDir, Entrypoint + Cmd) in a chroot of its
# extracted rootfs, with the data dir bind-mounted at /opt/data like the volume. The private
# mount namespace makes every mount disappear with the process.
_RUN_WRAPPER = r"""
root="$1"; data="$2"; shift 2
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount --bind "$data" "$root/opt/data"
exec chroot "$@"
"""


def _chroot_argv(root: Path, data: Path, cfg: dict, args: list[str]) -> list[str]:
    c = cfg["config"]
    uid, gid = c["User"].split(":")
    return ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", _RUN_WRAPPER, "sh",
            str(root), str(data), f"--userspec={uid}:{gid}", f"--groups={gid}", str(root),
            "/usr/bin/env", "-i", *c["Env"], "/bin/sh", "-c", 'cd "$0" && exec "$@"', c["WorkingDir"],
            *c["Entrypoint"], *args]


@pytest.mark.skipif(not (IS_ROOT and shutil.which("debootstrap")), reason="needs root and debootstrap")
def test_real_image_serves_gateway(tmp_path):
    img = ib.build_image(ib.DEFAULT_VERSION)
    parsed = ib.read_archive(img.archive)
    assert parsed["image_id"] == img.image_id and parsed["ref"] == img.ref
    root = ib.extract_rootfs(img, tmp_path / "rootfs")
    assert os.stat(root / "opt/data").st_uid == 10000
    assert os.stat(root / "opt/hermes/bin/python").st_uid == 0
    assert list((root / "usr/local/share/ca-certificates").glob("**/*.crt")) == []
    # the fixed SQLite, and nothing of the suite it came from left behind for apt
    assert ib.parse_sqlite_version(img.sqlite_version) >= ib.SQLITE_FIXED_VERSION, img.sqlite_version
    assert not (root / "etc/apt/sources.list.d/hermes-infra-sqlite.sources").exists()
    assert not (root / "etc/apt/preferences.d/hermes-infra-sqlite").exists()

    data = tmp_path / "data"
    data.mkdir()
    port, key = _free_port(), secrets.token_hex(16)
    (data / ".env").write_text(f"API_SERVER_ENABLED=true\nAPI_SERVER_HOST=127.0.0.1\n"
                               f"API_SERVER_PORT={port}\nAPI_SERVER_KEY={key}\n")
    for p in (data, data / ".env"):
        os.chown(p, 10000, 10000)
    os.chmod(data, 0o700)
    argv = _chroot_argv(root, data, parsed["config"], parsed["config"]["config"]["Cmd"])
    with open(tmp_path / "gateway.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            t0 = time.monotonic()
            status = body = None
            while time.monotonic() - t0 < 90 and proc.poll() is None:
                try:
                    status, body = _get(base + "/health")
                    if status == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.5)
            assert status == 200, (tmp_path / "gateway.log").read_text()[-3000:]
            print(f"pid {proc.pid}: GET /health -> {status} {body.decode()} after {time.monotonic() - t0:.1f}s")
            assert json.loads(body)["version"] == img.version
            status, body = _get(base + "/v1/models")
            print(f"GET /v1/models without key -> {status} {body.decode()}")
            assert status == 401
            status, body = _get(base + "/v1/models", {"Authorization": f"Bearer {key}"})
            print(f"GET /v1/models with key -> {status} {body.decode()}")
            assert status == 200 and json.loads(body)["data"]
            # the process we started is the gateway itself, running as 10000
            assert os.stat(f"/proc/{proc.pid}").st_uid == 10000
            assert b"gateway" in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        finally:
            proc.terminate()
            try:
                print(f"stopped pid {proc.pid}: exit {proc.wait(15)}")
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert all(os.stat(p).st_uid == 10000 for p in data.rglob("*"))
    # one-off CLI with the same data dir, as `docker run --rm -v ...:/opt/data IMAGE pairing list`
    out = subprocess.run(_chroot_argv(root, data, parsed["config"], ["pairing", "list"]),
                         check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    print(f"pairing list -> {out.stdout.strip()}")
    assert ib._mounts_under(root) == []
