"""Build the Hermes Agent Docker image without any registry, as a `docker load`-able archive.

Hosts that cannot reach Docker Hub still need the real gateway. This module builds an
image on the control machine from the PyPI release of `hermes-agent`:

1. `debootstrap --variant=minbase` a Debian rootfs (default trixie, Python 3.13) from the
   control machine's own mirror (`hostenv.debian_mirror()`);
2. in that rootfs (chroot, inside a private mount namespace so that no mount can leak):
   user/group `hermes` 10000:10000 with home `/opt/data`, a venv at `/opt/hermes` with
   `hermes-agent==<version>` and `aiohttp` (the API server needs it), slimmed down;
3. write a `docker save` style archive (manifest.json, config, one layer, repositories)
   with Python's tarfile: numeric owners, hardlinks and symlinks kept, device nodes skipped,
   fixed timestamps in the config so the same rootfs gives the same bytes;
4. cache it under `cache_dir()/hermes-images/<recipe-hash>/` with an `image.json`.

The image matches the official `nousresearch/hermes-agent` where the compose file can see
it: uid/gid 10000, `HERMES_HOME=/opt/data`, `VOLUME /opt/data`, and the `hermes` CLI as
entrypoint, so `docker run IMAGE gateway run` and
`docker run --rm -v /root/.hermes:/opt/data IMAGE pairing list` both work.
Unlike the official image there is no s6 supervisor: `hermes` is PID 1 (no `--user`
refusal, no `HERMES_UID` remapping; `HERMES_UID`/`HERMES_GID` are informative only).

The image ID that `docker load` reports is `sha256:<sha256 of the config JSON bytes>`
(`BuiltImage.image_id`); compare it with `docker image inspect --format '{{.Id}}' REF`
on the host to skip an upload.

CA certificates: the control machine's extra CAs (an intercepting or corporate proxy)
are installed in the rootfs for the build only and removed afterwards (the stock
bundle is regenerated) unless `keep_build_ca=True`. Reasons: a proxy CA is a fact of
the build network, not of the host the image runs on; baking a man-in-the-middle CA
into a production image makes every container trust that proxy; and it would tie the
image (and its ID) to the build machine. It would not help the gateway much anyway:
most Python HTTP clients in the venv (httpx/requests via certifi) ignore the system
bundle unless `SSL_CERT_FILE` is set. A host behind such a proxy should mount its CA
bundle and set `SSL_CERT_FILE`/`REQUESTS_CA_BUNDLE`, or build with `keep_build_ca=True`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import gzip
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO

from hermes_infra.host import hostenv

# Bump when the recipe changes in a way the hashed inputs below do not show.
RECIPE_VERSION = 1
DEFAULT_VERSION = "0.19.0"
DEFAULT_REPO = "hermes-agent"
DEFAULT_SUITE = "trixie"
# The suite whose libsqlite3-0 replaces the base suite's: trixie's 3.46.1 has the WAL-reset
# corruption bug (fixed in 3.51.3) and Hermes keeps its databases in WAL mode. The official image
# builds SQLite itself for the same reason; Debian's next release ships a fixed one (3.53.4 in
# forky, Depends: libc6 >= 2.38, trixie has 2.41), signed by the same archive key. Only this one
# package is pinned from there; the suite's lists are removed from the image afterwards.
SQLITE_SUITE = "forky"
# The first SQLite without the WAL-reset bug (3.7.0 to 3.51.2 have it): the image refuses an older
# one, and HI-DATA-005 (plan/sqlitecheck.py) judges a host's gateway by the same line.
SQLITE_FIXED_VERSION = (3, 51, 3)
# gzip level of the archive; 0 writes a plain tar. Measured on the 0.19.0 image (370 MB layer):
# level 1 -> 136 MB (37%) in ~6 s, level 6 -> 122 MB (33%) in ~17 s, level 9 -> 121 MB in ~60 s.
# gunzip of the whole archive: ~4 s native, ~11 s under x86 emulation (qemu-user), about what
# SSH's cipher costs under emulation for the 234 MB that gzip saves. So on a real VPS (native CPU,
# an upload link far slower than gunzip) level 1 saves most of the upload for a few seconds of
# CPU; level 6 saves 11% more at 3x the build-side time. An emulated local VM on a loopback link
# is about break-even: pass compress=0 there if measurements say so.
DEFAULT_COMPRESS = 1
HERMES_UID = 10000
HERMES_GID = 10000
DATA_DIR = "/opt/data"
VENV_DIR = "/opt/hermes"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "tzdata")
# Python packages always installed next to hermes-agent: the API server needs aiohttp.
ALWAYS_PIP = ("aiohttp",)
CREATED = "2025-01-01T00:00:00Z"
CREATED_EPOCH = 1735689600
IMAGE_SOURCE = "https://github.com/NousResearch/hermes-agent"
IMAGES_SUBDIR = "hermes-images"
IMAGE_JSON = "image.json"
BUILD_CA_DIR = "/usr/local/share/ca-certificates/hermes-infra-build"
IMAGE_PATH = "/opt/hermes/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

IMAGE_ENV = (
    f"PATH={IMAGE_PATH}",
    f"HERMES_HOME={DATA_DIR}",
    "PYTHONUNBUFFERED=1",
    # /opt/hermes is root-owned and immutable at run time (as in the official image);
    # the .pyc files were compiled by pip at install time.
    "PYTHONDONTWRITEBYTECODE=1",
    f"HERMES_UID={HERMES_UID}",
    f"HERMES_GID={HERMES_GID}",
)
ENTRYPOINT = (f"{VENV_DIR}/bin/hermes",)
CMD = ("gateway", "run")

# Environment variables of the control machine passed to pip inside the chroot.
# Local-only settings (file:// indexes, find-links dirs) are deliberately not passed:
# those paths do not exist in the rootfs.
_PASSTHROUGH_ENV = (
    "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
    "PIP_INDEX_URL", "PIP_DEFAULT_TIMEOUT", "PIP_RETRIES",
)

Log = Callable[[str], None]

# --- the recipe (hashed: changing any of these texts changes the recipe hash) ---------

_SETUP_SCRIPT = """\
if [ -d {build_ca_dir} ]; then update-ca-certificates >/dev/null; fi
groupadd --gid {gid} hermes
useradd --uid {uid} --gid {gid} --home-dir {data} --no-create-home --shell /bin/bash hermes
install -d -o {uid} -g {gid} -m 0700 {data}
python3 -m venv {venv}
{venv}/bin/pip install --no-cache-dir --disable-pip-version-check --no-input --progress-bar off {specs}
"""

_SQLITE_SCRIPT = """\
src=/etc/apt/sources.list.d/hermes-infra-sqlite.sources
pin=/etc/apt/preferences.d/hermes-infra-sqlite
printf 'Types: deb\\nURIs: %s\\nSuites: %s\\nComponents: main\\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\\n' \
  {mirror} {suite} > "$src"
printf 'Package: libsqlite3-0\\nPin: release n=%s\\nPin-Priority: 990\\n\\nPackage: *\\nPin: release n=%s\\nPin-Priority: -1\\n' \
  {suite} {suite} > "$pin"
update="apt-get -q update -o Acquire::Languages=none -o Dir::Etc::sourcelist=$src -o Dir::Etc::sourceparts=-"
if ! $update; then
  echo "hermes-infra: retrying without the Valid-Until check (a mirror that stopped syncing $src);" \
    "the signature is still checked, and the build refuses a library older than the fix" >&2
  $update -o Acquire::Check-Valid-Until=false
fi
apt-get -q install -y --no-install-recommends libsqlite3-0
rm -f "$src" "$pin"
"""

_RESTORE_CA_SCRIPT = """\
rm -rf {build_ca_dir}
update-ca-certificates --fresh >/dev/null
"""

_CLEANUP_SCRIPT = """\
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb \
  /var/cache/apt/archives/partial/* /var/cache/debconf/*-old /var/lib/dpkg/*-old \
  /root/.cache /tmp/* /tmp/.[!.]* /var/tmp/* /var/log/apt/* /var/log/bootstrap.log
rm -rf /usr/share/man/* /usr/share/info/*
find /usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete
find /usr/share/doc -mindepth 1 -type d -empty -delete
: > /etc/resolv.conf
echo localhost > /etc/hostname
"""


# --- public data -------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class BuiltImage:
    """One built image archive, as recorded in its `image.json`."""

    ref: str                 # "hermes-agent:0.19.0-local", the RepoTags entry
    image_id: str            # "sha256:<hex>": what `docker load` / `docker image inspect` report
    archive: Path            # absolute path of the archive (gzip'd tar or plain tar)
    archive_sha256: str      # hex sha256 of the archive file, for upload checks
    size_bytes: int          # size of the archive file
    recipe_hash: str         # hex; also the image label io.hermes-infra.recipe
    version: str             # hermes-agent version installed
    diff_id: str = ""        # "sha256:<hex>" of the uncompressed layer tar
    layer_bytes: int = 0     # size of the uncompressed layer tar
    compress: int = 0        # gzip level of the archive, 0 = plain tar
    suite: str = ""
    extra_packages: tuple[str, ...] = ()
    packages: tuple[str, ...] = ()  # `pip freeze` of the venv
    sqlite_version: str = ""  # what Python's sqlite3 module runs in the image

    @property
    def repo(self) -> str:
        return self.ref.rsplit(":", 1)[0]

    @property
    def tag(self) -> str:
        return self.ref.rsplit(":", 1)[1]

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["archive"] = self.archive.name  # relative to image.json: the cache dir may move
        data["extra_packages"] = list(self.extra_packages)
        data["packages"] = list(self.packages)
        return data


@dataclasses.dataclass(frozen=True)
class ArchiveInfo:
    """What `archive_rootfs` wrote."""

    path: Path
    image_id: str
    diff_id: str
    layer_bytes: int
    config: bytes


# --- recipe hash -----------------------------------------------------------------------------

_VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+!_-]*$")
_REPO_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_PIP_SPEC_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-\[\],<>=!~;:/@+ '\"]*$")


def _check_version(version: str) -> str:
    if not _VERSION_RE.match(version or ""):
        raise ValueError(f"invalid hermes-agent version {version!r}")
    return version


def _check_extra(pkgs: Iterable[str]) -> tuple[str, ...]:
    out = []
    for p in pkgs:
        p = str(p).strip()
        if not p or p.startswith("-") or not _PIP_SPEC_RE.match(p):
            raise ValueError(f"invalid extra pip requirement {p!r} (no options, one requirement each)")
        out.append(p)
    return tuple(out)


def make_ref(repo: str, tag: str) -> str:
    if not _REPO_RE.match(repo or ""):
        raise ValueError(f"invalid image repository {repo!r} (lowercase, [a-z0-9._-/])")
    if not _TAG_RE.match(tag or ""):
        raise ValueError(f"invalid image tag {tag!r}")
    return f"{repo}:{tag}"


def _ca_digest(certs: Sequence[Path]) -> list[list[str]]:
    return [[p.name, hashlib.sha256(p.read_bytes()).hexdigest()] for p in certs]


def recipe_inputs(version: str = DEFAULT_VERSION, *, extra_packages: Sequence[str] = (),
                  suite: str = DEFAULT_SUITE, mirror: str | None = None,
                  keep_build_ca: bool = False, ca_certs: Sequence[Path] | None = None,
                  arch: str | None = None) -> dict:
    """Everything that decides the image's content (not its tag nor the archive compression)."""
    mirror = (mirror or hostenv.debian_mirror()).rstrip("/")
    certs = list(hostenv.extra_ca_certificates() if ca_certs is None else ca_certs)
    return {
        "recipe_version": RECIPE_VERSION,
        "hermes_version": _check_version(version),
        "extra_packages": list(_check_extra(extra_packages)),
        "always_pip": list(ALWAYS_PIP),
        "suite": suite,
        "mirror": mirror,
        "arch": arch or host_arch(),
        "base_packages": list(BASE_PACKAGES),
        "scripts": [_SQLITE_SCRIPT, _SETUP_SCRIPT, _RESTORE_CA_SCRIPT, _CLEANUP_SCRIPT],
        "sqlite_suite": SQLITE_SUITE,
        "config": {"env": list(IMAGE_ENV), "entrypoint": list(ENTRYPOINT), "cmd": list(CMD),
                   "uid": HERMES_UID, "gid": HERMES_GID, "data": DATA_DIR, "venv": VENV_DIR,
                   "created": CREATED, "source": IMAGE_SOURCE},
        # The CA only shapes the image when it stays in it.
        "baked_ca": _ca_digest(certs) if keep_build_ca else None,
    }


def recipe_hash(version: str = DEFAULT_VERSION, **kwargs) -> str:
    """Hex sha256 over `recipe_inputs(...)`; the cache key and the io.hermes-infra.recipe label."""
    blob = json.dumps(recipe_inputs(version, **kwargs), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def host_arch() -> str:
    """OCI architecture of the control machine (debootstrap builds for it)."""
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386",
            "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}.get(machine, machine)


# --- image config and docker-archive writer (pure Python, no root needed) -------------------

def image_config(diff_ids: Sequence[str], *, version: str, recipe: str, suite: str = DEFAULT_SUITE,
                 arch: str = "amd64", extra_packages: Sequence[str] = ()) -> dict:
    """The image config JSON (docker image spec v1.2 / OCI image config)."""
    pip = " ".join([f"hermes-agent=={version}", *ALWAYS_PIP, *extra_packages])
    return {
        "architecture": arch,
        "os": "linux",
        "created": CREATED,
        "author": "hermes-infra",
        "config": {
            "User": f"{HERMES_UID}:{HERMES_GID}",
            "Env": list(IMAGE_ENV),
            "Entrypoint": list(ENTRYPOINT),
            "Cmd": list(CMD),
            "WorkingDir": DATA_DIR,
            "Volumes": {DATA_DIR: {}},
            "Labels": {
                "org.opencontainers.image.title": "hermes-agent",
                "org.opencontainers.image.description":
                    "Hermes Agent gateway from the PyPI release, built by hermes-infra without a registry",
                "org.opencontainers.image.source": IMAGE_SOURCE,
                "org.opencontainers.image.version": version,
                "org.opencontainers.image.base.name": f"debian:{suite} (debootstrap minbase)",
                "io.hermes-infra.recipe": recipe,
            },
        },
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [{
            "created": CREATED,
            "created_by": f"hermes-infra imagebuild: debootstrap --variant=minbase {suite}; "
                          f"python3 -m venv {VENV_DIR}; pip install {pip}",
            "comment": f"recipe {recipe}",
        }],
    }


def config_bytes(config: dict) -> bytes:
    """Canonical JSON bytes of a config; the image ID is the sha256 of exactly these bytes."""
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def _walk(root: Path, root_dev: int) -> Iterator[tuple[str, str, os.stat_result]]:
    """(relative name, full path, lstat) in a stable order, depth first, not crossing mounts."""
    stack = [("", str(root))]
    while stack:
        rel_dir, full_dir = stack.pop()
        with os.scandir(full_dir) as it:
            entries = sorted(it, key=lambda e: os.fsencode(e.name))
        subdirs = []
        for e in entries:
            rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
            st = os.lstat(e.path)
            yield rel, e.path, st
            if stat.S_ISDIR(st.st_mode) and st.st_dev == root_dev:
                subdirs.append((rel, e.path))
        stack.extend(reversed(subdirs))


def write_layer_tar(rootfs: Path | str, dest: Path | str) -> tuple[str, int]:
    """Write `rootfs` as a layer tar; return (hex sha256, size).

    Numeric uid/gid and modes (setuid included) are kept, names are empty, mtimes are
    whole seconds, hardlinks become link entries, symlinks stay symlinks, FIFOs are
    kept; character/block devices and sockets are skipped (the engine provides /dev).
    The root directory itself has no entry, as in `docker save`.
    """
    rootfs = Path(rootfs)
    root_dev = os.lstat(rootfs).st_dev
    seen: dict[tuple[int, int], str] = {}
    with open(dest, "wb") as raw, _tar_writer(raw) as tar:
        for rel, full, st in _walk(rootfs, root_dev):
            mode = st.st_mode
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISSOCK(mode):
                continue
            ti = tarfile.TarInfo(rel)
            ti.mode = stat.S_IMODE(mode)
            ti.uid, ti.gid = st.st_uid, st.st_gid
            ti.uname = ti.gname = ""
            ti.mtime = int(st.st_mtime)
            key = (st.st_dev, st.st_ino)
            if not stat.S_ISDIR(mode) and st.st_nlink > 1 and key in seen:
                ti.type, ti.linkname = tarfile.LNKTYPE, seen[key]
                tar.addfile(ti)
                continue
            if not stat.S_ISDIR(mode) and st.st_nlink > 1:
                seen[key] = rel
            if stat.S_ISREG(mode):
                ti.type, ti.size = tarfile.REGTYPE, st.st_size
                with open(full, "rb") as f:
                    tar.addfile(ti, f)
            elif stat.S_ISDIR(mode):
                ti.type = tarfile.DIRTYPE
                tar.addfile(ti)
            elif stat.S_ISLNK(mode):
                ti.type, ti.linkname = tarfile.SYMTYPE, os.readlink(full)
                tar.addfile(ti)
            elif stat.S_ISFIFO(mode):
                ti.type = tarfile.FIFOTYPE
                tar.addfile(ti)
    return _sha256_file(dest), os.path.getsize(dest)


def _tar_writer(fileobj: IO[bytes]) -> tarfile.TarFile:
    return tarfile.TarFile(fileobj=fileobj, mode="w", format=tarfile.PAX_FORMAT, copybufsize=1 << 20)


def _member(tar: tarfile.TarFile, name: str | tarfile.TarInfo) -> IO[bytes]:
    f = tar.extractfile(name)
    if f is None:
        raise ValueError(f"{name} is not a regular file in the archive")
    return f


def _sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _legacy_layer_json(layer_id: str, config: dict) -> bytes:
    """The per-layer `json` of the legacy (pre-manifest) format, for older engines."""
    legacy = {"id": layer_id, "created": config["created"], "os": config["os"],
              "architecture": config["architecture"], "config": config["config"],
              "container_config": {}}
    return json.dumps(legacy, sort_keys=True, separators=(",", ":")).encode()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = len(data), 0o644, CREATED_EPOCH
    tar.addfile(ti, io.BytesIO(data))


def write_docker_archive(dest: Path | str, *, layer: Path | str | None = None, config: bytes, ref: str,
                         compress: int = DEFAULT_COMPRESS, layer_fileobj: IO[bytes] | None = None,
                         layer_size: int | None = None) -> None:
    """Write a `docker save` archive with one layer (from a file, or a file object of known size).

    Layout: `<diff hex>/{VERSION,json,layer.tar}`, `<config sha>.json`, `manifest.json`,
    `repositories`. `compress` is a gzip level (1-9), 0 for a plain tar; the gzip header
    carries no name and mtime 0 so the output is reproducible.
    """
    cfg = json.loads(config)
    diff_ids = cfg["rootfs"]["diff_ids"]
    if len(diff_ids) != 1:
        raise ValueError("write_docker_archive writes exactly one layer")
    layer_id = diff_ids[0].split(":", 1)[1]
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    repo, tag = ref.rsplit(":", 1)
    manifest = [{"Config": config_name, "RepoTags": [ref], "Layers": [f"{layer_id}/layer.tar"]}]
    repositories = {repo: {tag: layer_id}}
    if not 0 <= compress <= 9:
        raise ValueError("compress is a gzip level 1-9, or 0 for none")

    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(open(dest, "wb"))
        out: IO[bytes] = raw
        if compress:
            gz = gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=compress, mtime=0)
            out = stack.enter_context(gz)  # type: ignore[arg-type]
        tar = stack.enter_context(_tar_writer(out))
        d = tarfile.TarInfo(layer_id)
        d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, CREATED_EPOCH
        tar.addfile(d)
        _add_bytes(tar, f"{layer_id}/VERSION", b"1.0")
        _add_bytes(tar, f"{layer_id}/json", _legacy_layer_json(layer_id, cfg))
        ti = tarfile.TarInfo(f"{layer_id}/layer.tar")
        ti.mode, ti.mtime = 0o644, CREATED_EPOCH
        if layer is not None:
            ti.size = os.path.getsize(layer)
            with open(layer, "rb") as f:
                tar.addfile(ti, f)
        else:
            if layer_fileobj is None or layer_size is None:
                raise ValueError("give layer, or layer_fileobj and layer_size")
            ti.size = layer_size
            tar.addfile(ti, layer_fileobj)
        _add_bytes(tar, config_name, config)
        _add_bytes(tar, "manifest.json", json.dumps(manifest, separators=(",", ":")).encode())
        _add_bytes(tar, "repositories", json.dumps(repositories, separators=(",", ":")).encode())


def archive_rootfs(rootfs: Path | str, dest: Path | str, *, ref: str, version: str, recipe: str,
                   compress: int = DEFAULT_COMPRESS, suite: str = DEFAULT_SUITE, arch: str | None = None,
                   extra_packages: Sequence[str] = ()) -> ArchiveInfo:
    """Turn a finished rootfs into a docker-archive at `dest` (one layer, the Hermes config)."""
    rootfs, dest = Path(rootfs), Path(dest)
    mounts = _mounts_under(rootfs)
    if mounts:
        raise RuntimeError(f"refusing to archive {rootfs}: mounts inside it: {mounts}")
    layer = dest.with_name(f".{dest.name}.layer.tar")
    try:
        layer_sha, layer_bytes = write_layer_tar(rootfs, layer)
        diff_id = f"sha256:{layer_sha}"
        cfg = config_bytes(image_config([diff_id], version=version, recipe=recipe, suite=suite,
                                         arch=arch or host_arch(), extra_packages=extra_packages))
        write_docker_archive(dest, layer=layer, config=cfg, ref=ref, compress=compress)
    finally:
        layer.unlink(missing_ok=True)
    return ArchiveInfo(path=dest, image_id="sha256:" + hashlib.sha256(cfg).hexdigest(),
                       diff_id=diff_id, layer_bytes=layer_bytes, config=cfg)


def _open_archive(path: Path | str) -> tarfile.TarFile:
    return tarfile.open(path, mode="r:*")


def read_archive(path: Path | str, *, check_layers: bool = True) -> dict:
    """Parse and check a docker-archive the way `docker load` does; return what it would load.

    Checks: manifest.json shape, the config file is named by the sha256 of its bytes,
    every layer listed exists, and (`check_layers`) each layer's sha256 equals its
    diff_id in the config. Returns {"ref", "refs", "image_id", "diff_ids", "config"}.
    Raises ValueError on any mismatch.
    """
    with _open_archive(path) as tar:
        names = set(tar.getnames())
        if "manifest.json" not in names:
            raise ValueError("no manifest.json")
        manifest = json.load(_member(tar, "manifest.json"))
        if not (isinstance(manifest, list) and len(manifest) == 1):
            raise ValueError("manifest.json must list exactly one image")
        entry = manifest[0]
        cfg_name, layers, refs = entry.get("Config"), entry.get("Layers"), entry.get("RepoTags") or []
        if cfg_name not in names:
            raise ValueError(f"config {cfg_name} missing")
        cfg_raw = _member(tar, cfg_name).read()
        digest = hashlib.sha256(cfg_raw).hexdigest()
        if cfg_name != f"{digest}.json":
            raise ValueError(f"config name {cfg_name} is not its sha256 {digest}")
        cfg = json.loads(cfg_raw)
        diff_ids = cfg.get("rootfs", {}).get("diff_ids", [])
        if cfg.get("rootfs", {}).get("type") != "layers" or len(diff_ids) != len(layers or []):
            raise ValueError("config rootfs.diff_ids does not match the manifest layers")
        for layer_name, diff_id in zip(layers, diff_ids):
            if layer_name not in names:
                raise ValueError(f"layer {layer_name} missing")
            if check_layers:
                h = hashlib.sha256()
                f = _member(tar, layer_name)
                while chunk := f.read(1 << 20):
                    h.update(chunk)
                if f"sha256:{h.hexdigest()}" != diff_id:
                    raise ValueError(f"layer {layer_name} sha256 {h.hexdigest()} != diff_id {diff_id}")
        if "repositories" in names:
            repos = json.load(_member(tar, "repositories"))
            for ref in refs:
                repo, tag = ref.rsplit(":", 1)
                if tag not in repos.get(repo, {}):
                    raise ValueError(f"repositories lacks {ref}")
    return {"ref": refs[0] if refs else None, "refs": refs, "image_id": f"sha256:{digest}",
            "diff_ids": diff_ids, "config": cfg}


def extract_rootfs(image: BuiltImage | Path | str, dest: Path | str) -> Path:
    """Unpack the image's layers into `dest` with numeric owners and modes (needs root).

    For running the image without an engine (chroot) and for inspection.
    """
    archive = image.archive if isinstance(image, BuiltImage) else Path(image)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    os.chmod(dest, 0o755)
    with _open_archive(archive) as tar:
        manifest = json.load(_member(tar, "manifest.json"))
        for layer_name in manifest[0]["Layers"]:
            src = _member(tar, layer_name)
            proc = subprocess.Popen(["tar", "-x", "-p", "--numeric-owner", "-f", "-", "-C", str(dest)],
                                    stdin=subprocess.PIPE)
            assert proc.stdin is not None
            try:
                shutil.copyfileobj(src, proc.stdin, 1 << 20)
            finally:
                proc.stdin.close()
                if proc.wait() != 0:
                    raise RuntimeError(f"tar failed extracting {layer_name} into {dest}")
    return dest


# --- mounts, locks, commands ------------------------------------------------------------------

def _mounts_under(path: Path | str) -> list[str]:
    """Mount points at or below `path` in this mount namespace."""
    base = os.path.realpath(path)
    found: list[str] = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        if len(fields) < 5:
            continue
        mnt = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        if mnt == base or mnt.startswith(base.rstrip("/") + "/"):
            found.append(mnt)
    return found


def _safe_rmtree(path: Path | str) -> None:
    """rmtree that never descends into a mount (a bound /dev or /proc would be a disaster)."""
    path = Path(path)
    if not path.exists():
        return
    mounts = _mounts_under(path)
    for mnt in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-R", mnt], check=False, capture_output=True)
    mounts = _mounts_under(path)
    if mounts:
        raise RuntimeError(f"not removing {path}: still mounted: {mounts}")
    shutil.rmtree(path)


@contextlib.contextmanager
def _file_lock(path: Path, log: Log) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"imagebuild: waiting for another build holding {path}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class BuildError(RuntimeError):
    pass


def _run(cmd: Sequence[str], logfile: Path, *, what: str, capture: bool = False, env: dict | None = None) -> str:
    with open(logfile, "ab") as lf:
        lf.write(f"\n$ {shlex.join(cmd)}\n".encode())
        lf.flush()
        proc = subprocess.run(list(cmd), check=False, stdout=subprocess.PIPE if capture else lf, stderr=lf,
                              env=env if env is not None else {**os.environ, "LC_ALL": "C.UTF-8"})
    if proc.returncode != 0:
        tail = "\n".join(logfile.read_text(errors="replace").splitlines()[-30:])
        raise BuildError(f"{what} failed (exit {proc.returncode}); last lines of {logfile}:\n{tail}")
    return proc.stdout.decode() if capture else ""


# Runs inside a private mount namespace: proc (and /dev if debootstrap left no nodes) are
# mounted for the chroot only, unmounted afterwards, and vanish with the namespace anyway.
_CHROOT_WRAPPER = r"""
root="$1"; shift
mount -t proc proc "$root/proc"
bound=""
if [ ! -c "$root/dev/null" ]; then mount --rbind /dev "$root/dev"; bound=1; fi
rc=0
chroot "$@" || rc=$?
if [ -n "$bound" ]; then umount -R "$root/dev" || umount -l "$root/dev"; fi
umount "$root/proc" || umount -l "$root/proc"
exit $rc
"""


def _chroot_env() -> list[str]:
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
           "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive", "PYTHONDONTWRITEBYTECODE": "1",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_ROOT_USER_ACTION": "ignore",
           "SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt",
           "PIP_CERT": "/etc/ssl/certs/ca-certificates.crt",
           "REQUESTS_CA_BUNDLE": "/etc/ssl/certs/ca-certificates.crt"}
    for k in _PASSTHROUGH_ENV:
        v = os.environ.get(k)
        if v and not (k == "PIP_INDEX_URL" and v.startswith("file:")):
            env[k] = v
    return [f"{k}={v}" for k, v in sorted(env.items())]


def _in_chroot(root: Path, script: str, logfile: Path, *, what: str, capture: bool = False,
               userspec: str | None = None, env: Sequence[str] | None = None) -> str:
    """Run `script` with /bin/sh in the rootfs, in a private mount namespace (proc mounted)."""
    opts = [f"--userspec={userspec}", f"--groups={userspec.split(':')[1]}"] if userspec else []
    cmd = ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", _CHROOT_WRAPPER, "sh",
           str(root), *opts, str(root), "/usr/bin/env", "-i", *(_chroot_env() if env is None else env),
           "/bin/sh", "-euc", script]
    try:
        return _run(cmd, logfile, what=what, capture=capture)
    finally:
        leaked = _mounts_under(root)
        for mnt in sorted(leaked, key=len, reverse=True):  # never expected: the namespace is private
            subprocess.run(["umount", "-R", "-l", mnt], check=False)


def _copy_resolv_conf(root: Path) -> None:
    target = root / "etc/resolv.conf"
    if target.is_symlink() or target.exists():
        target.unlink()
    try:
        target.write_text(Path("/etc/resolv.conf").read_text())
    except OSError:
        target.write_text("")


# --- the rootfs build ----------------------------------------------------------------------------

_SQLITE_VERSION_PY = "import sqlite3; print(sqlite3.sqlite_version)"


def parse_sqlite_version(text: str) -> tuple[int, ...]:
    """(3, 53, 4) from "3.53.4"; () for anything else (never passes a minimum)."""
    if not re.fullmatch(r"[0-9]{1,4}(\.[0-9]{1,4}){1,3}", text or ""):
        return ()
    return tuple(int(part) for part in text.split("."))


@dataclasses.dataclass(frozen=True)
class RootfsContent:
    """What `build_rootfs` measured in the finished rootfs."""

    packages: tuple[str, ...]  # `pip freeze --all` of the venv
    sqlite_version: str

def build_rootfs(root: Path, *, version: str = DEFAULT_VERSION, extra_packages: Sequence[str] = (),
                 suite: str = DEFAULT_SUITE, mirror: str | None = None, keep_build_ca: bool = False,
                 ca_certs: Sequence[Path] | None = None, debs_cache: Path | None = None,
                 logfile: Path, log: Log = print) -> RootfsContent:
    """debootstrap + a fixed SQLite + hermes user + venv into `root` (needs root)."""
    version = _check_version(version)
    extra = _check_extra(extra_packages)
    mirror = (mirror or hostenv.debian_mirror()).rstrip("/")
    certs = list(hostenv.extra_ca_certificates() if ca_certs is None else ca_certs)
    if os.geteuid() != 0:
        raise BuildError("building the image needs root (debootstrap, chroot)")
    for tool in ("debootstrap", "unshare", "chroot"):
        if not shutil.which(tool):
            raise BuildError(f"{tool} not found (apt-get install debootstrap util-linux coreutils)")
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)

    t = time.monotonic()
    log(f"imagebuild: debootstrap {suite} minbase from {mirror}")
    cmd = ["unshare", "--mount", "--propagation", "private", "--", "debootstrap", "--variant=minbase",
           "--components=main", f"--include={','.join(BASE_PACKAGES)}"]
    lock: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if debs_cache is not None:
        debs_cache.mkdir(parents=True, exist_ok=True)
        cmd.append(f"--cache-dir={debs_cache}")
        lock = _file_lock(debs_cache.with_name(debs_cache.name + ".lock"), log)
    cmd += [suite, str(root), mirror]
    with lock:
        _run(cmd, logfile, what="debootstrap")
    log(f"imagebuild: debootstrap done in {time.monotonic() - t:.0f}s")

    _copy_resolv_conf(root)
    ca_dir = root / BUILD_CA_DIR.lstrip("/")
    if certs:
        ca_dir.mkdir(parents=True, exist_ok=True)
        for i, cert in enumerate(certs):
            shutil.copyfile(cert, ca_dir / f"{i:02d}-{cert.name}")

    t = time.monotonic()
    log(f"imagebuild: libsqlite3-0 from {SQLITE_SUITE}")
    _in_chroot(root, _SQLITE_SCRIPT.format(mirror=shlex.quote(mirror), suite=shlex.quote(SQLITE_SUITE)),
               logfile, what=f"libsqlite3-0 from {SQLITE_SUITE}")
    log(f"imagebuild: libsqlite3-0 in {time.monotonic() - t:.0f}s")

    t = time.monotonic()
    specs = [f"hermes-agent=={version}", *ALWAYS_PIP, *extra]
    log(f"imagebuild: pip install {' '.join(specs)}")
    setup = _SETUP_SCRIPT.format(build_ca_dir=BUILD_CA_DIR, uid=HERMES_UID, gid=HERMES_GID, data=DATA_DIR,
                                 venv=VENV_DIR, specs=shlex.join(specs))
    _in_chroot(root, setup, logfile, what="user + venv + pip install")
    freeze = _in_chroot(root, f"{VENV_DIR}/bin/pip freeze --all", logfile, what="pip freeze", capture=True)
    log(f"imagebuild: venv ready in {time.monotonic() - t:.0f}s")

    # Smoke test as the runtime user: the venv must be readable and the CLI must start.
    smoke_env = [f"PATH={IMAGE_PATH}", "HERMES_HOME=/tmp/hermes-smoke", "HOME=/tmp/hermes-smoke",
                 "PYTHONDONTWRITEBYTECODE=1", "LANG=C.UTF-8"]
    out = _in_chroot(root, f"cd /tmp && {VENV_DIR}/bin/hermes --version", logfile, capture=True,
                     what="hermes --version as uid 10000", userspec=f"{HERMES_UID}:{HERMES_GID}", env=smoke_env)
    log(f"imagebuild: {out.strip().splitlines()[0] if out.strip() else 'hermes --version ok'}")
    sqlite_version = _in_chroot(root, f"{VENV_DIR}/bin/python3 -I -c {shlex.quote(_SQLITE_VERSION_PY)}", logfile,
                                capture=True, what="sqlite3 version as uid 10000",
                                userspec=f"{HERMES_UID}:{HERMES_GID}", env=smoke_env).strip()
    if parse_sqlite_version(sqlite_version) < SQLITE_FIXED_VERSION:
        raise BuildError(f"the image's SQLite is {sqlite_version!r}, older than "
                         f"{'.'.join(map(str, SQLITE_FIXED_VERSION))} (the WAL-reset bug); "
                         f"does the mirror {mirror} carry {SQLITE_SUITE}?")
    log(f"imagebuild: SQLite {sqlite_version}")

    if certs and not keep_build_ca:
        _in_chroot(root, _RESTORE_CA_SCRIPT.format(build_ca_dir=BUILD_CA_DIR), logfile, what="restore CA bundle")
    _in_chroot(root, _CLEANUP_SCRIPT, logfile, what="cleanup")
    for leftover in (root / "debootstrap",):
        if leftover.exists():
            _safe_rmtree(leftover)
    return RootfsContent(packages=tuple(line for line in freeze.splitlines() if line.strip()),
                         sqlite_version=sqlite_version)


# --- cache and public API --------------------------------------------------------------------------

def images_dir() -> Path:
    d = hostenv.cache_dir() / IMAGES_SUBDIR
    d.mkdir(parents=True, exist_ok=True)
    return d


def _archive_name(ref: str, compress: int) -> str:
    repo, tag = ref.rsplit(":", 1)
    return f"{repo.replace('/', '_')}_{tag}.tar" + (".gz" if compress else "")


def load_built_image(path_or_dir: Path | str, *, verify: bool = False) -> BuiltImage:
    """Read `image.json` (given it, its directory, or the archive beside it).

    `verify=True` also re-hashes the archive and compares it with the recorded sha256.
    """
    p = Path(path_or_dir)
    meta = p / IMAGE_JSON if p.is_dir() else (p if p.name == IMAGE_JSON else p.with_name(IMAGE_JSON))
    data = json.loads(meta.read_text())
    archive = meta.parent / data["archive"]
    if not archive.is_file():
        raise FileNotFoundError(f"{meta}: archive {archive} is missing")
    fields = {f.name for f in dataclasses.fields(BuiltImage)}
    data = {k: v for k, v in data.items() if k in fields}
    data["archive"] = archive.resolve()
    data["extra_packages"] = tuple(data.get("extra_packages") or ())
    data["packages"] = tuple(data.get("packages") or ())
    img = BuiltImage(**data)
    if archive.stat().st_size != img.size_bytes:
        raise ValueError(f"{archive}: size {archive.stat().st_size} != recorded {img.size_bytes}")
    if verify and _sha256_file(archive) != img.archive_sha256:
        raise ValueError(f"{archive}: sha256 differs from {meta}")
    return img


def _write_image_json(out_dir: Path, img: BuiltImage) -> None:
    tmp = out_dir / (IMAGE_JSON + ".tmp")
    tmp.write_text(json.dumps(img.to_json(), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out_dir / IMAGE_JSON)


def _rewrap(cached: BuiltImage, out_dir: Path, ref: str, compress: int) -> BuiltImage:
    """Same image (same layer and config, so the same image ID), other tag or compression."""
    dest = out_dir / _archive_name(ref, compress)
    with _open_archive(cached.archive) as tar:
        manifest = json.load(_member(tar, "manifest.json"))[0]
        cfg = _member(tar, manifest["Config"]).read()
        member = tar.getmember(manifest["Layers"][0])
        write_docker_archive(dest, config=cfg, ref=ref, compress=compress,
                             layer_fileobj=_member(tar, member), layer_size=member.size)
    return dataclasses.replace(cached, ref=ref, archive=dest, compress=compress,
                               archive_sha256=_sha256_file(dest), size_bytes=dest.stat().st_size)


def _swap_into_place(out_dir: Path, final: Path, tmp: Path) -> None:
    if final.exists():
        old = tmp / "old"
        os.rename(final, old)
    os.rename(out_dir, final)


def build_image(version: str = DEFAULT_VERSION, *, repo: str = DEFAULT_REPO, tag: str | None = None,
                extra_packages: Sequence[str] = (), compress: int = DEFAULT_COMPRESS,
                suite: str = DEFAULT_SUITE, mirror: str | None = None, keep_build_ca: bool = False,
                force: bool = False, log: Log = print) -> BuiltImage:
    """Build (or find in the cache) the Hermes Agent image archive for `version`.

    Cache: `cache_dir()/hermes-images/<recipe-hash>/{image.json, <repo>_<tag>.tar[.gz], build.log}`.
    The recipe hash covers what goes into the image (version, extra packages, suite,
    mirror, recipe scripts and config, the CA certs if kept); asking again with the
    same inputs returns the cached image at once. Another tag or compression of a
    cached image rewrites only the archive (same image ID, no rebuild). Concurrent
    builders of one hash wait on an fcntl lock; a build happens in a temp dir beside
    the cache entry and is renamed into place when complete. `force` rebuilds.
    """
    tag = tag or f"{version}-local"
    ref = make_ref(repo, tag)
    if not 0 <= int(compress) <= 9:
        raise ValueError("compress is a gzip level 1-9, or 0 for a plain tar")
    compress = int(compress)
    extra = _check_extra(extra_packages)
    mirror = (mirror or hostenv.debian_mirror()).rstrip("/")
    certs = hostenv.extra_ca_certificates()
    arch = host_arch()
    rhash = recipe_hash(version, extra_packages=extra, suite=suite, mirror=mirror,
                        keep_build_ca=keep_build_ca, ca_certs=certs, arch=arch)
    base = images_dir()
    final = base / rhash

    with _file_lock(base / f"{rhash}.lock", log):
        cached = None
        if not force and (final / IMAGE_JSON).is_file():
            try:
                cached = load_built_image(final)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log(f"imagebuild: ignoring broken cache entry {final}: {exc}")
        if cached and cached.ref == ref and cached.compress == compress:
            log(f"imagebuild: cached {ref} {cached.image_id[:19]} ({final})")
            return cached

        for stale in base.glob(f".tmp-{rhash}-*"):  # left by a killed build of this hash
            log(f"imagebuild: removing stale {stale}")
            _safe_rmtree(stale)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{rhash}-", dir=base))
        out_dir = tmp / "out"
        out_dir.mkdir()
        try:
            if cached:
                log(f"imagebuild: re-wrapping cached image as {ref} (gzip level {compress})")
                for extra_file in ("build.log",):
                    if (final / extra_file).exists():
                        shutil.copy2(final / extra_file, out_dir / extra_file)
                img = _rewrap(cached, out_dir, ref, compress)
                img = dataclasses.replace(img, archive=final / img.archive.name)
                _write_image_json(out_dir, img)
                _swap_into_place(out_dir, final, tmp)
                return img

            t0 = time.monotonic()
            logfile = out_dir / "build.log"
            rootfs = tmp / "rootfs"
            content = build_rootfs(rootfs, version=version, extra_packages=extra, suite=suite, mirror=mirror,
                                  keep_build_ca=keep_build_ca, ca_certs=certs, debs_cache=base / "debs",
                                  logfile=logfile, log=log)
            t = time.monotonic()
            dest = out_dir / _archive_name(ref, compress)
            info = archive_rootfs(rootfs, dest, ref=ref, version=version, recipe=rhash, compress=compress,
                                  suite=suite, arch=arch, extra_packages=extra)
            _safe_rmtree(rootfs)
            img = BuiltImage(ref=ref, image_id=info.image_id, archive=final / dest.name,
                             archive_sha256=_sha256_file(dest), size_bytes=dest.stat().st_size,
                             recipe_hash=rhash, version=version, diff_id=info.diff_id,
                             layer_bytes=info.layer_bytes, compress=compress, suite=suite,
                             extra_packages=extra, packages=content.packages,
                             sqlite_version=content.sqlite_version)
            _write_image_json(out_dir, img)
            log(f"imagebuild: archive {img.size_bytes / 1e6:.0f} MB (layer {info.layer_bytes / 1e6:.0f} MB) "
                f"in {time.monotonic() - t:.0f}s")
            _swap_into_place(out_dir, final, tmp)
            log(f"imagebuild: built {ref} {img.image_id[:19]} in {time.monotonic() - t0:.0f}s -> {final}")
            return img
        finally:
            _safe_rmtree(tmp)
