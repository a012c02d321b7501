"""Facts about the control machine that image builders and the local VM share.

The control machine is where hermes-infra runs (a laptop, a CI runner). Images are
built here and VMs boot here, so they inherit its apt mirror and its extra CA
certificates: behind an intercepting proxy, a VM without those cannot reach PyPI.
"""
from __future__ import annotations

import glob
import os
import re
from pathlib import Path

DEFAULT_MIRROR = "http://deb.debian.org/debian"


def private_dir(path: Path) -> Path:
    """`path` as a directory only its owner can enter (0700), made if missing.

    The caches hold VM disks (the guest's `.env` with the API key and every provider key, its
    SSH host keys), so no other local user may read them. A dir made by an older hermes-infra
    at 0755 is closed on the next use; one owned by someone else is left as it is.
    """
    old = os.umask(0o077)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    finally:
        os.umask(old)
    info = path.stat()
    if info.st_uid == os.geteuid() and info.st_mode & 0o077:
        path.chmod(0o700)
    return path


def cache_dir() -> Path:
    """Root of every cache hermes-infra keeps (images, VMs); `HERMES_INFRA_CACHE` overrides.
    Private to its owner (0700): see `private_dir`."""
    override = os.environ.get("HERMES_INFRA_CACHE")
    base = Path(override) if override else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hermes-infra"
    return private_dir(base)


def debian_mirror() -> str:
    """The Debian mirror this machine's own apt sources use (`HERMES_INFRA_MIRROR` overrides).

    Reused for debootstrap and for the VM's apt sources so that a machine that only
    reaches one mirror builds images from that mirror.
    """
    override = os.environ.get("HERMES_INFRA_MIRROR")
    if override:
        return override.rstrip("/")
    candidates = sorted(glob.glob("/etc/apt/sources.list.d/*.sources")) + ["/etc/apt/sources.list"]
    candidates += sorted(glob.glob("/etc/apt/sources.list.d/*.list"))
    for path in candidates:
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        for url in re.findall(r"(?m)^(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", text):
            url = url.rstrip("/")
            if url.endswith("/debian") and "security" not in url:
                return url
    return DEFAULT_MIRROR


def extra_ca_certificates() -> list[Path]:
    """CA certificates added to this machine by hand (corporate or intercepting proxies)."""
    return sorted(Path(p) for p in glob.glob("/usr/local/share/ca-certificates/**/*.crt", recursive=True))
