"""Build (once) and find (every time) the cached base image of the local VM.

Layout: `cache_dir()/vm-images/<recipe-hash>/` holds `base.qcow2`, `vmlinuz`, `initrd.img`,
the image's SSH key pair `id_ed25519[.pub]`, the guest's SSH host public keys
`ssh_host_keys.pub` (so clients can pin them), `recipe.json` and `build.log`.

Guarantees:
- The final directory appears only by an atomic rename of a fully built temp directory,
  so a failed or interrupted build never leaves a half cache entry.
- An fcntl lock per hash serialises builders: a second process waits, then reuses.
- The build runs natively on the host (debootstrap + mkfs.ext4 -d), no loop mounts and
  no VM, which is what makes it work on a CI runner without KVM.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shlex
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hermes_infra.host.hostenv import cache_dir, private_dir
from hermes_infra.localvm.errors import ImageBuildError
from hermes_infra.localvm.recipe import ImageRecipe, recipe_hash, recipe_inputs

log = logging.getLogger(__name__)

_REQUIRED_TOOLS = ("debootstrap", "chroot", "mkfs.ext4", "qemu-img", "ssh-keygen")


@dataclass(frozen=True)
class BaseImage:
    """A built, cached base image; VMs boot from copy-on-write overlays of `qcow2`."""

    qcow2: Path
    kernel: Path
    initrd: Path
    ssh_key: Path
    recipe_hash: str

    @property
    def directory(self) -> Path:
        return self.qcow2.parent

    @property
    def host_keys(self) -> Path:
        """The guest's SSH host public keys, one `type base64` line each."""
        return self.directory / "ssh_host_keys.pub"

    @classmethod
    def at(cls, directory: Path) -> BaseImage:
        return cls(
            qcow2=directory / "base.qcow2",
            kernel=directory / "vmlinuz",
            initrd=directory / "initrd.img",
            ssh_key=directory / "id_ed25519",
            recipe_hash=directory.name,
        )

    def is_complete(self) -> bool:
        return all(p.is_file() for p in (self.qcow2, self.kernel, self.initrd, self.ssh_key, self.host_keys))


def images_dir() -> Path:
    return private_dir(cache_dir() / "vm-images")


def find_image(recipe: ImageRecipe | None = None) -> BaseImage | None:
    """The cached image for `recipe`, or None. Cheap: hashes the recipe, stats files."""
    image = BaseImage.at(images_dir() / recipe_hash(recipe or ImageRecipe()))
    return image if image.is_complete() else None


def ensure_image(recipe: ImageRecipe | None = None, *, rebuild: bool = False) -> BaseImage:
    """Return the cached image for `recipe`, building it first if needed (needs root)."""
    recipe = recipe or ImageRecipe()
    digest = recipe_hash(recipe)
    final = images_dir() / digest
    if not rebuild and BaseImage.at(final).is_complete():
        return BaseImage.at(final)
    with _build_lock(digest):
        # Another process may have finished the same build while we waited.
        if not rebuild and BaseImage.at(final).is_complete():
            return BaseImage.at(final)
        _remove_stale_builds(digest)
        work = images_dir() / f".build-{digest}-{os.getpid()}"
        work.mkdir(mode=0o700)  # published by rename: the image dir stays private (its disk has host keys)
        try:
            _build(recipe, work)
            _publish(work, final)
        finally:
            _remove_tree(work)
    return BaseImage.at(final)


@contextlib.contextmanager
def _build_lock(digest: str) -> Iterator[None]:
    lock_path = images_dir() / f".{digest}.lock"
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another process is building image %s; waiting for it", digest)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(recipe: ImageRecipe, work: Path) -> None:
    _check_prerequisites()
    started = time.monotonic()
    build_log = work / "build.log"
    rootfs = work / "rootfs"
    mirror = recipe.resolved_mirror()

    log.info("building base image %s from %s (%s); this takes a few minutes", work.name, mirror, recipe.suite)
    key = work / "id_ed25519"
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hermes-infra-localvm", "-f", str(key)], build_log)
    os.chmod(key, 0o600)

    log.info("debootstrap %s", recipe.suite)
    _run(
        [
            "debootstrap", "--arch=amd64", "--components=main",
            "--include=" + ",".join(recipe.packages),
            recipe.suite, str(rootfs), mirror,
        ],
        build_log,
    )

    log.info("configuring the rootfs")
    ca_dir = work / "ca"
    ca_dir.mkdir()
    for index, cert in enumerate(recipe.ca_certificates()):
        # Prefix keeps same-named certificates from different subdirectories apart.
        shutil.copyfile(cert, ca_dir / f"{index:02d}-{cert.name}")
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HERMES_HOSTNAME": recipe.hostname,
        "HERMES_SUITE": recipe.suite,
        "HERMES_MIRROR": mirror,
        "HERMES_SECURITY_MIRROR": _security_mirror(mirror, recipe.suite) if recipe.security_updates else "",
        "HERMES_AUTHORIZED_KEY": str(work / "id_ed25519.pub"),
        "HERMES_CA_DIR": str(ca_dir) if recipe.include_ca_certs else "",
    }
    _run(["/bin/sh", "-c", recipe.configure_script, "configure", str(rootfs)], build_log, env=env)

    host_keys = sorted((rootfs / "etc/ssh").glob("ssh_host_*_key.pub"))
    if not host_keys:
        raise ImageBuildError("the rootfs has no SSH host keys after configuration")
    (work / "ssh_host_keys.pub").write_text(
        "".join(" ".join(p.read_text().split()[:2]) + "\n" for p in host_keys)
    )

    shutil.copyfile(_newest(rootfs / "boot", "vmlinuz-*"), work / "vmlinuz")
    shutil.copyfile(_newest(rootfs / "boot", "initrd.img-*"), work / "initrd.img")

    log.info("creating the %s ext4 disk and converting it to qcow2", recipe.disk_size)
    _unmount_under(rootfs)
    raw = work / "img.raw"
    _run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(rootfs), str(raw), recipe.disk_size], build_log)
    _run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(work / "base.qcow2")], build_log)
    raw.unlink()
    _remove_tree(rootfs)
    _remove_tree(ca_dir)
    # VMs only ever read the base through overlays; make accidental writes fail. Owner only: it
    # holds the VM's SSH host private keys.
    os.chmod(work / "base.qcow2", 0o400)

    meta = {
        "inputs": recipe_inputs(recipe),
        "security_mirror": env["HERMES_SECURITY_MIRROR"],
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": round(time.monotonic() - started, 1),
    }
    (work / "recipe.json").write_text(json.dumps(meta, indent=2) + "\n")
    log.info("base image built in %.0f s", meta["build_seconds"])


def _publish(work: Path, final: Path) -> None:
    """Atomically swap the finished build into place (rename within one directory)."""
    old = None
    if final.exists():
        # Rebuild: VMs still running keep their open file handle on the old base.
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.rename(final, old)
    os.rename(work, final)
    if old is not None:
        _remove_tree(old)


def _check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise ImageBuildError("building the VM image needs root (debootstrap, chroot); run as root or use sudo")
    missing = [tool for tool in _REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        raise ImageBuildError(
            f"missing tools: {', '.join(missing)}; install with: "
            "apt-get install -y --no-install-recommends debootstrap qemu-utils qemu-system-x86 e2fsprogs openssh-client"
        )


def _security_mirror(mirror: str, suite: str) -> str:
    """`<mirror>-security` if it serves `<suite>-security`, else "" (offline mirrors)."""
    candidate = mirror + "-security"
    try:
        with urllib.request.urlopen(f"{candidate}/dists/{suite}-security/InRelease", timeout=15) as resp:
            return candidate if resp.status == 200 else ""
    except (urllib.error.URLError, OSError, ValueError):
        return ""


def _run(cmd: list[str], build_log: Path, env: dict[str, str] | None = None) -> None:
    with open(build_log, "a") as out:
        shown = [arg if len(arg) <= 120 else arg[:40] + "..." for arg in cmd]
        out.write(f"\n$ {shlex.join(shown)}\n")
        out.flush()
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    if proc.returncode != 0:
        tail = "\n".join(build_log.read_text(errors="replace").splitlines()[-30:])
        raise ImageBuildError(f"{cmd[0]} failed with exit code {proc.returncode}; last lines of the build log:\n{tail}")


def _newest(directory: Path, pattern: str) -> Path:
    matches = sorted(directory.glob(pattern))
    if not matches:
        raise ImageBuildError(f"no {pattern} in {directory}: did linux-image-amd64 install?")
    return matches[-1]


def _remove_stale_builds(digest: str) -> None:
    """Temp dirs of killed builds of this hash (safe: we hold this hash's lock)."""
    for stale in images_dir().glob(f".build-{digest}-*"):
        log.info("removing stale build directory %s", stale)
        _remove_tree(stale)


def _unmount_under(path: Path) -> None:
    """Unmount anything a killed debootstrap left mounted inside the rootfs (/proc, /sys)."""
    prefix = str(path.resolve()) + "/"
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return
    points = [line.split()[1].replace("\\040", " ") for line in mounts if len(line.split()) > 1]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)


def _remove_tree(path: Path) -> None:
    if path.exists():
        _unmount_under(path)
        shutil.rmtree(path, ignore_errors=True)
