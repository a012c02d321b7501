"""Tests of hermes_infra.images.build.

The fast tests build docker-archives from a tiny fake rootfs (no debootstrap, no network).
`test_real_image_serves_gateway` is opt-in (HERMES_INFRA_REAL_IMAGE=1, root, debootstrap,
PyPI): it builds (or reuses from the cache) the real image and runs its gateway in a chroot.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import time
from pathlib import Path

import pytest

from hermes_infra.images import build as ib

IS_ROOT = os.geteuid() == 0


def make_rootfs(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text("ID=debian\n")
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/python3").write_bytes(b"\x7fELF fake")
    os.chmod(root / "usr/bin/python3", 0o755)
    (root / "usr/bin/python").symlink_to("python3")
    os.link(root / "usr/bin/python3", root / "usr/bin/python3.13")
    (root / "opt/hermes/bin").mkdir(parents=True)
    (root / "opt/hermes/bin/hermes").write_text("#!/bin/sh\n")
    (root / "opt/data").mkdir(parents=True)
    (root / "opt/data/.keep").write_text("")
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    (root / "dev").mkdir()
    os.mkfifo(root / "dev/fifo")
    if IS_ROOT:
        os.chown(root / "opt/data", 10000, 10000)
        os.chown(root / "opt/data/.keep", 10000, 10000)
        os.mknod(root / "dev/null", 0o666 | 0o020000, os.makedev(1, 3))
    # fixed mtimes: the same tree built twice gives the same bytes
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (1_700_000_000, 1_700_000_000), follow_symlinks=False)
    return root


def archive(tmp_path: Path, name: str = "img.tar", compress: int = 0, rootfs: Path | None = None, **kw):
    rootfs = rootfs or make_rootfs(tmp_path / "rootfs")
    kw.setdefault("ref", "hermes-agent:0.19.0-local")
    kw.setdefault("version", "0.19.0")
    kw.setdefault("recipe", "r" * 64)
    kw.setdefault("arch", "amd64")
    return ib.archive_rootfs(rootfs, tmp_path / name, compress=compress, **kw)


def members(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path, "r:*") as tar:
        return {m.name: m for m in tar.getmembers()}


def read_member(path: Path, name: str) -> bytes:
    with tarfile.open(path, "r:*") as tar:
        return tar.extractfile(name).read()


def test_manifest_config_and_layer_structure(tmp_path):
    info = archive(tmp_path)
    names = members(info.path)
    manifest = json.loads(read_member(info.path, "manifest.json"))
    assert len(manifest) == 1
    entry = manifest[0]
    layer_hex = info.diff_id.split(":")[1]
    assert entry["RepoTags"] == ["hermes-agent:0.19.0-local"]
    assert entry["Layers"] == [f"{layer_hex}/layer.tar"]
    assert entry["Config"] == info.image_id.split(":")[1] + ".json"
    for name in (entry["Config"], entry["Layers"][0], f"{layer_hex}/VERSION", f"{layer_hex}/json", "repositories"):
        assert name in names
    assert json.loads(read_member(info.path, "repositories")) == {"hermes-agent": {"0.19.0-local": layer_hex}}
    assert json.loads(read_member(info.path, f"{layer_hex}/json"))["id"] == layer_hex

    cfg_bytes = read_member(info.path, entry["Config"])
    assert cfg_bytes == info.config
    assert "sha256:" + hashlib.sha256(cfg_bytes).hexdigest() == info.image_id
    cfg = json.loads(cfg_bytes)
    assert cfg["architecture"] == "amd64" and cfg["os"] == "linux"
    assert cfg["created"] == ib.CREATED
    c = cfg["config"]
    assert c["User"] == "10000:10000"
    assert c["Entrypoint"] == ["/opt/hermes/bin/hermes"]
    assert c["Cmd"] == ["gateway", "run"]
    assert c["WorkingDir"] == "/opt/data"
    assert c["Volumes"] == {"/opt/data": {}}
    env = dict(e.split("=", 1) for e in c["Env"])
    assert env["PATH"].startswith("/opt/hermes/bin:")
    assert env["HERMES_HOME"] == "/opt/data"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["HERMES_UID"] == "10000" and env["HERMES_GID"] == "10000"
    assert c["Labels"]["io.hermes-infra.recipe"] == "r" * 64
    assert c["Labels"]["org.opencontainers.image.version"] == "0.19.0"
    assert c["Labels"]["org.opencontainers.image.source"].startswith("https://")
    assert cfg["rootfs"] == {"type": "layers", "diff_ids": [info.diff_id]}
    assert len(cfg["history"]) == 1 and "empty_layer" not in cfg["history"][0]


def test_diff_id_is_sha256_of_layer_and_read_archive_agrees(tmp_path):
    info = archive(tmp_path)
    layer = read_member(info.path, f"{info.diff_id.split(':')[1]}/layer.tar")
    assert "sha256:" + hashlib.sha256(layer).hexdigest() == info.diff_id
    assert len(layer) == info.layer_bytes
    parsed = ib.read_archive(info.path)
    assert parsed["image_id"] == info.image_id
    assert parsed["ref"] == "hermes-agent:0.19.0-local"
    assert parsed["diff_ids"] == [info.diff_id]


def test_layer_entries_owners_links_and_skipped_devices(tmp_path):
    info = archive(tmp_path)
    layer = read_member(info.path, f"{info.diff_id.split(':')[1]}/layer.tar")
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        entries = {m.name: m for m in tar.getmembers()}
    assert "." not in entries and "" not in entries
    assert not any(n.startswith(("/", "./")) for n in entries)
    assert entries["usr/bin/python"].issym() and entries["usr/bin/python"].linkname == "python3"
    # one of the two hardlinked names holds the data, the other is a link to it
    a, b = entries["usr/bin/python3"], entries["usr/bin/python3.13"]
    assert a.isfile() and b.islnk() and b.linkname == "usr/bin/python3"
    assert entries["tmp"].isdir() and entries["tmp"].mode == 0o1777
    assert entries["dev/fifo"].isfifo()
    assert "dev/null" not in entries
    assert entries["usr/bin/python3"].mode == 0o755
    assert all(m.uname == "" and m.gname == "" for m in entries.values())
    if IS_ROOT:
        assert (entries["opt/data"].uid, entries["opt/data"].gid) == (10000, 10000)
        assert (entries["opt/data/.keep"].uid, entries["opt/data/.keep"].gid) == (10000, 10000)
        assert (entries["etc/os-release"].uid, entries["etc/os-release"].gid) == (0, 0)
    else:
        uid = os.getuid()
        assert entries["opt/data"].uid == uid
    # pre-order: a directory comes before its contents
    order = list(entries)
    assert order.index("opt") < order.index("opt/data") < order.index("opt/data/.keep")


def test_reproducible_bytes(tmp_path):
    rootfs = make_rootfs(tmp_path / "rootfs")
    one = archive(tmp_path, "one.tar", rootfs=rootfs)
    two = archive(tmp_path, "two.tar", rootfs=rootfs)
    assert one.path.read_bytes() == two.path.read_bytes()
    g1 = archive(tmp_path, "one.tar.gz", compress=1, rootfs=rootfs)
    g2 = archive(tmp_path, "two.tar.gz", compress=1, rootfs=rootfs)
    assert g1.path.read_bytes() == g2.path.read_bytes()
    assert g1.image_id == one.image_id and g1.diff_id == one.diff_id
    # gzip'd archive: same tar inside
    assert gzip.decompress(g1.path.read_bytes()) == one.path.read_bytes()
    # another tag: same image id, other manifest
    other = archive(tmp_path, "other.tar", rootfs=rootfs, ref="example/hermes:x")
    assert other.image_id == one.image_id
    assert ib.read_archive(other.path)["refs"] == ["example/hermes:x"]


def test_read_archive_rejects_a_tampered_layer(tmp_path):
    info = archive(tmp_path)
    bad = tmp_path / "bad.tar"
    with tarfile.open(info.path) as src, tarfile.open(bad, "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read() if m.isfile() else None
            if m.name.endswith("layer.tar"):
                data = data[:-1024] + b"x" * 1024
            dst.addfile(m, io.BytesIO(data) if data is not None else None)
    with pytest.raises(ValueError, match="diff_id"):
        ib.read_archive(bad)


def test_recipe_hash_changes_with_inputs():
    kw = {"mirror": "http://deb.example/debian", "ca_certs": [], "arch": "amd64"}
    base = ib.recipe_hash("0.19.0", **kw)
    assert base == ib.recipe_hash("0.19.0", **kw)
    assert len(base) == 64
    assert ib.recipe_hash("0.19.1", **kw) != base
    assert ib.recipe_hash("0.19.0", extra_packages=["requests"], **kw) != base
    assert ib.recipe_hash("0.19.0", suite="bookworm", **kw) != base
    assert ib.recipe_hash("0.19.0", **{**kw, "mirror": "http://other/debian"}) != base
    assert ib.recipe_hash("0.19.0", keep_build_ca=True, **kw) != base


def test_recipe_hash_changes_with_the_suite_the_sqlite_library_comes_from(monkeypatch):
    kw = {"mirror": "http://deb.example/debian", "ca_certs": [], "arch": "amd64"}
    base = ib.recipe_hash("0.19.0", **kw)
    monkeypatch.setattr(ib, "SQLITE_SUITE", "sid")
    assert ib.recipe_hash("0.19.0", **kw) != base


def test_sqlite_step_pins_only_the_library_from_the_other_suite_and_leaves_no_source():
    script = ib._SQLITE_SCRIPT.format(mirror="http://deb.example/debian", suite="forky")
    pin = script.split("> \"$pin\"")[0].rsplit("printf ", 1)[1]
    assert "Package: libsqlite3-0\\nPin: release n=%s\\nPin-Priority: 990" in pin
    assert "Package: *\\nPin: release n=%s\\nPin-Priority: -1" in pin
    assert "install -y --no-install-recommends libsqlite3-0\n" in script
    assert script.rstrip().endswith('rm -f "$src" "$pin"')


@pytest.mark.parametrize(("text", "version"), [
    ("3.53.4", (3, 53, 4)), ("3.51.3", (3, 51, 3)), ("3.46.1", (3, 46, 1)), ("3.8", (3, 8)),
    ("", ()), ("3", ()), ("3.46.1\n", ()), ("3.x.1", ()), ("v3.51.3", ()), ("3.51.3 extra", ()),
])
def test_parse_sqlite_version(text, version):
    assert ib.parse_sqlite_version(text) == version


def test_a_built_image_older_than_the_fix_would_not_pass_the_minimum():
    assert ib.parse_sqlite_version("3.46.1") < ib.SQLITE_FIXED_VERSION <= ib.parse_sqlite_version("3.53.4")
    assert ib.parse_sqlite_version("garbage") < ib.SQLITE_FIXED_VERSION


def test_recipe_hash_ca_counts_only_when_kept(tmp_path):
    ca = tmp_path / "proxy.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    kw = {"mirror": "http://deb.example/debian", "arch": "amd64"}
    assert ib.recipe_hash("0.19.0", ca_certs=[ca], **kw) == ib.recipe_hash("0.19.0", ca_certs=[], **kw)
    kept = ib.recipe_hash("0.19.0", ca_certs=[ca], keep_build_ca=True, **kw)
    ca.write_text("-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n")
    assert ib.recipe_hash("0.19.0", ca_certs=[ca], keep_build_ca=True, **kw) != kept


@pytest.mark.parametrize("bad", ["", "0.19.0; rm -rf /", "--index-url=x", "1 2"])
def test_rejects_bad_versions(bad):
    with pytest.raises(ValueError):
        ib.recipe_hash(bad, mirror="http://m/debian", ca_certs=[], arch="amd64")


@pytest.mark.parametrize("bad", ["--index-url=http://evil", "-e .", ""])
def test_rejects_pip_options_as_extra_packages(bad):
    with pytest.raises(ValueError):
        ib.recipe_hash("0.19.0", extra_packages=[bad], mirror="http://m/debian", ca_certs=[], arch="amd64")


def test_make_ref():
    assert ib.make_ref("hermes-agent", "0.19.0-local") == "hermes-agent:0.19.0-local"
    assert ib.make_ref("registry.local/team/hermes", "x") == "registry.local/team/hermes:x"
    for repo, tag in (("Hermes", "x"), ("hermes", ""), ("hermes", "a:b"), ("", "x")):
        with pytest.raises(ValueError):
            ib.make_ref(repo, tag)


def _fake_cached_image(tmp_path, monkeypatch, compress=1) -> ib.BuiltImage:
    """A cache entry as build_image leaves it, from the fake rootfs (no debootstrap)."""
    monkeypatch.setenv("HERMES_INFRA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HERMES_INFRA_MIRROR", "http://deb.example/debian")
    rhash = ib.recipe_hash("0.19.0", mirror="http://deb.example/debian", arch=ib.host_arch())
    entry = ib.images_dir() / rhash
    entry.mkdir(parents=True)
    ref = "hermes-agent:0.19.0-local"
    info = ib.archive_rootfs(make_rootfs(tmp_path / "rootfs"), entry / ib._archive_name(ref, compress),
                             ref=ref, version="0.19.0", recipe=rhash, compress=compress)
    img = ib.BuiltImage(ref=ref, image_id=info.image_id, archive=info.path,
                        archive_sha256=ib._sha256_file(info.path), size_bytes=info.path.stat().st_size,
                        recipe_hash=rhash, version="0.19.0", diff_id=info.diff_id,
                        layer_bytes=info.layer_bytes, compress=compress)
    ib._write_image_json(entry, img)
    return img


def test_image_json_roundtrip_and_cache_hit(tmp_path, monkeypatch):
    img = _fake_cached_image(tmp_path, monkeypatch)
    meta = json.loads((img.archive.parent / "image.json").read_text())
    for key in ("ref", "image_id", "archive", "size_bytes", "archive_sha256", "recipe_hash", "version"):
        assert key in meta
    assert meta["archive"] == img.archive.name
    for where in (img.archive.parent, img.archive.parent / "image.json", img.archive):
        assert ib.load_built_image(where, verify=True) == img

    def no_build(*a, **k):
        raise AssertionError("cache hit expected")
    monkeypatch.setattr(ib, "build_rootfs", no_build)
    logs = []
    t = time.monotonic()
    assert ib.build_image("0.19.0", log=logs.append) == img
    assert time.monotonic() - t < 1
    assert any("cached" in line for line in logs)


def test_retag_rewraps_without_rebuilding(tmp_path, monkeypatch):
    img = _fake_cached_image(tmp_path, monkeypatch)
    monkeypatch.setattr(ib, "build_rootfs", lambda *a, **k: pytest.fail("no rebuild expected"))
    other = ib.build_image("0.19.0", repo="example/hermes", tag="prod", compress=0, log=lambda s: None)
    assert other.ref == "example/hermes:prod"
    assert other.image_id == img.image_id and other.recipe_hash == img.recipe_hash
    assert other.archive.name == "example_hermes_prod.tar" and other.archive.is_file()
    assert not img.archive.exists()  # the entry holds one archive
    assert ib.read_archive(other.archive)["refs"] == ["example/hermes:prod"]
    assert ib.load_built_image(other.archive.parent, verify=True) == other
    assert not list(ib.images_dir().glob(".tmp-*"))


def test_concurrent_builders_wait_for_one_build(tmp_path, monkeypatch):
    import threading

    from gevent import monkey
    if monkey.is_module_patched("threading"):
        # Another test imported pyinfra_cli, which gevent-patches threading in this process:
        # green threads cannot wait on flock(). Run this test in a clean interpreter instead.
        import subprocess
        import sys
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                 f"{__file__}::test_concurrent_builders_wait_for_one_build"],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-3000:]
        return
    monkeypatch.setenv("HERMES_INFRA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HERMES_INFRA_MIRROR", "http://deb.example/debian")
    calls = []

    def fake_build_rootfs(root, **kw):
        calls.append(root)
        time.sleep(0.5)  # the second builder arrives while this one holds the lock
        make_rootfs(root)
        return ib.RootfsContent(packages=("hermes-agent==0.19.0",), sqlite_version="3.53.4")

    monkeypatch.setattr(ib, "build_rootfs", fake_build_rootfs)
    results, logs = [], []
    threads = [threading.Thread(target=lambda: results.append(ib.build_image("0.19.0", log=logs.append)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(results) == 2 and results[0] == results[1]
    assert results[0].packages == ("hermes-agent==0.19.0",)
    assert results[0].sqlite_version == "3.53.4"
    assert json.loads((results[0].archive.parent / "image.json").read_text())["sqlite_version"] == "3.53.4"
    assert any("waiting for another build" in line for line in logs)
    entry = results[0].archive.parent
    assert entry.name == results[0].recipe_hash
    assert sorted(p.name for p in entry.iterdir()) == ["hermes-agent_0.19.0-local.tar.gz", "image.json"]
    assert not list(ib.images_dir().glob(".tmp-*"))
    assert ib.read_archive(results[0].archive)["image_id"] == results[0].image_id
    # force rebuilds even though the entry exists
    ib.build_image("0.19.0", force=True, log=lambda s: None)
    assert len(calls) == 2


def test_size_mismatch_is_detected(tmp_path, monkeypatch):
    img = _fake_cached_image(tmp_path, monkeypatch)
    with open(img.archive, "ab") as f:
        f.write(b"junk")
    with pytest.raises(ValueError):
        ib.load_built_image(img.archive.parent)


def test_mounts_under_parses_mountinfo(tmp_path):
    assert ib._mounts_under(tmp_path) == []
    assert "/proc" in ib._mounts_under("/proc")


# --- the real image (opt-in) ------------------------------------------------------------------

