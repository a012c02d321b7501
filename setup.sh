#!/usr/bin/env bash
# Installs what hermes-infra and its tests need on a Debian 12/13 control machine (as root):
# QEMU and debootstrap for the local VM, Chromium for the HTML report tests, psmisc (fuser) for
# the apt-lock tests, restic for the off-host backup tests, nftables (nft -c) for the firewall
# ruleset test, and the Python package with the dependency versions the suite was run with
# (constraints.txt; see "Tested versions" in the README).
set -euo pipefail
cd "$(dirname "$0")"
export DEBIAN_FRONTEND=noninteractive
PACKAGES=(qemu-system-x86 qemu-utils debootstrap e2fsprogs openssh-client ca-certificates curl
          chromium psmisc util-linux restic nftables)
missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}\n' "$package" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
python3 -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
echo "hermes-infra installed: $(python3 -m hermes_infra --help | head -n 1)"
