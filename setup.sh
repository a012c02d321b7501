#!/usr/bin/env bash
# Installs what hermes-infra and its tests need on a Debian 12/13 control machine (as root):
# QEMU and debootstrap for the local VM, and the Python package with its dependencies.
set -euo pipefail
cd "$(dirname "$0")"
export DEBIAN_FRONTEND=noninteractive
if ! command -v qemu-system-x86_64 >/dev/null || ! command -v debootstrap >/dev/null \
   || ! command -v qemu-img >/dev/null || ! command -v mkfs.ext4 >/dev/null || ! command -v ssh >/dev/null; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends \
    qemu-system-x86 qemu-utils debootstrap e2fsprogs openssh-client ca-certificates curl
fi
python3 -m pip install -q --disable-pip-version-check -e '.[test]'
echo "hermes-infra installed: $(python3 -m hermes_infra --help | head -n 1)"
