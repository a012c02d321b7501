"""What goes into the base VM image, and the hash that names its cache entry.

The image is expensive (minutes of debootstrap), so it is cached under a directory named
after a hash of *everything that affects its contents*: suite, package list, the
configure script text, the mirror, the CA certificates baked in, disk size, hostname and
RECIPE_VERSION (bump it whenever the Python build steps in image.py change behaviour).
Anything not in the hash must not change the image, or a stale cache would be reused.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hermes_infra.host.hostenv import debian_mirror, extra_ca_certificates

#: Bump when image.py's build steps change in a way the other inputs do not capture.
RECIPE_VERSION = 1

#: Packages debootstrap adds to the base system. Docker is deliberately absent:
#: installing it is the toolkit's job, and the VM is where that job is tested.
BASE_PACKAGES: tuple[str, ...] = (
    "systemd-sysv",
    "openssh-server",
    "linux-image-amd64",
    "iproute2",
    "ca-certificates",
    "sudo",
    "python3",
    "curl",
    "dbus",
    "systemd-timesyncd",
    "e2fsprogs",
)

#: Shell run on the build host with the rootfs as $1 (commands that must see the
#: guest's own binaries go through `in_root`). Its text is part of the recipe hash.
#: Inputs come from HERMES_* environment variables set by image.py.
CONFIGURE_SCRIPT = r"""
set -eu
ROOT="$1"
in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }

# Identity: every VM booted from the image gets its own machine-id at first boot.
echo "$HERMES_HOSTNAME" > "$ROOT/etc/hostname"
cat > "$ROOT/etc/hosts" <<EOF
127.0.0.1	localhost
127.0.1.1	$HERMES_HOSTNAME
::1	localhost ip6-localhost ip6-loopback
EOF
: > "$ROOT/etc/machine-id"
rm -f "$ROOT/var/lib/dbus/machine-id"

# Disk: the whole virtio disk is the root filesystem (no partition table).
printf '# <fs> <mount point> <type> <options> <dump> <pass>\n/dev/vda / ext4 defaults 0 1\n' > "$ROOT/etc/fstab"

# Network: DHCP from QEMU user networking; its DNS relay is always 10.0.2.3.
mkdir -p "$ROOT/etc/systemd/network"
cat > "$ROOT/etc/systemd/network/20-wired.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
DHCP=yes
EOF
in_root systemctl enable systemd-networkd.service
rm -f "$ROOT/etc/resolv.conf"
echo "nameserver 10.0.2.3" > "$ROOT/etc/resolv.conf"

# Apt: the same mirror the image was built from, deb822 style.
rm -f "$ROOT/etc/apt/sources.list"
mkdir -p "$ROOT/etc/apt/sources.list.d" "$ROOT/etc/apt/apt.conf.d"
{
  printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\n' \
    "$HERMES_MIRROR" "$HERMES_SUITE" "$HERMES_SUITE"
  if [ -n "$HERMES_SECURITY_MIRROR" ]; then
    printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\n' \
      "$HERMES_SECURITY_MIRROR" "$HERMES_SUITE"
  fi
} > "$ROOT/etc/apt/sources.list.d/debian.sources"
# Snapshot mirrors serve Release files past their Valid-Until date.
echo 'Acquire::Check-Valid-Until "false";' > "$ROOT/etc/apt/apt.conf.d/99hermes-infra"
# Unattended apt runs would race the toolkit's own apt calls.
in_root systemctl mask apt-daily.timer apt-daily-upgrade.timer

# SSH: root by key only. Host keys come from openssh-server's postinst in the rootfs;
# they are shared by every VM of this image, which lets the client pin them.
install -d -m 0700 "$ROOT/root/.ssh"
install -m 0600 "$HERMES_AUTHORIZED_KEY" "$ROOT/root/.ssh/authorized_keys"
mkdir -p "$ROOT/etc/ssh/sshd_config.d"
cat > "$ROOT/etc/ssh/sshd_config.d/10-hermes-infra.conf" <<'EOF'
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
EOF
if ! ls "$ROOT"/etc/ssh/ssh_host_*_key >/dev/null 2>&1; then
  in_root ssh-keygen -A
fi

# TLS: trust the control machine's extra CAs (intercepting / corporate proxies).
if [ -n "$HERMES_CA_DIR" ]; then
  install -d "$ROOT/usr/local/share/ca-certificates/hermes-infra"
  for crt in "$HERMES_CA_DIR"/*.crt; do
    [ -e "$crt" ] || continue
    install -m 0644 "$crt" "$ROOT/usr/local/share/ca-certificates/hermes-infra/"
  done
  in_root update-ca-certificates
fi
"""


@dataclass(frozen=True)
class ImageRecipe:
    """Inputs of the base image. Defaults give the product's Debian 13 VM.

    `mirror=None` means "the control machine's own mirror" (hostenv.debian_mirror()),
    resolved when hashing or building so that the hash names the mirror actually used.
    """

    suite: str = "trixie"
    packages: tuple[str, ...] = BASE_PACKAGES
    mirror: str | None = None
    include_ca_certs: bool = True
    disk_size: str = "12G"
    hostname: str = "hermes-vm"
    #: Add `<mirror>-security` to apt sources if that sibling serves `<suite>-security`
    #: (probed at build time, so the probe result itself is not in the hash).
    security_updates: bool = True
    configure_script: str = field(default=CONFIGURE_SCRIPT, repr=False)

    def resolved_mirror(self) -> str:
        return (self.mirror or debian_mirror()).rstrip("/")

    def ca_certificates(self) -> list[Path]:
        return extra_ca_certificates() if self.include_ca_certs else []


def recipe_inputs(recipe: ImageRecipe) -> dict[str, Any]:
    """Canonical, JSON-able description of everything that affects the image."""
    return {
        "recipe_version": RECIPE_VERSION,
        "suite": recipe.suite,
        # debootstrap does not care about order; sorting keeps the hash stable.
        "packages": sorted(set(recipe.packages)),
        "mirror": recipe.resolved_mirror(),
        "security_updates": recipe.security_updates,
        "disk_size": recipe.disk_size,
        "hostname": recipe.hostname,
        "configure_script_sha256": hashlib.sha256(recipe.configure_script.encode()).hexdigest(),
        # Contents, not just names: a rotated proxy CA must produce a new image.
        "ca_certificates": [
            {"name": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
            for path in recipe.ca_certificates()
        ],
    }


def recipe_hash(recipe: ImageRecipe) -> str:
    """Short hex digest naming the image's cache directory."""
    canonical = json.dumps(recipe_inputs(recipe), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
