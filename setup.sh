#!/usr/bin/env bash
# Installs what hermes-infra and its tests need on a Debian 12/13 control machine (as root):
# QEMU and debootstrap for the local VM, Chromium for the HTML report tests, psmisc (fuser) for
# the apt-lock tests, restic for the off-host backup tests, nftables (nft -c) for the firewall
# ruleset test, caddy's binary (caddy validate) for the TLS proxy's Caddyfile test, and the Python
# package with the dependency versions the suite was run with (constraints.txt; see "Tested
# versions" in the README).
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
# Debian's caddy binary alone, for the test that runs `caddy validate` on the TLS proxy's Caddyfile
# (the package itself would start a web server on :80 wherever systemd runs).
CADDY=/usr/local/lib/hermes-infra/caddy
if [ ! -x "$CADDY" ]; then
  echo "unpacking Debian's caddy binary to $CADDY"
  tmp=$(mktemp -d)
  ( cd "$tmp" && { apt-get download -q caddy 2>/dev/null || { apt-get update -q && apt-get download -q caddy; }; } \
    && dpkg-deb -x caddy_*.deb root ) && install -D -m 0755 "$tmp/root/usr/bin/caddy" "$CADDY" \
    || echo "could not unpack caddy: the Caddyfile test will say so" >&2
  rm -rf "$tmp"
fi
python3 -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
echo "hermes-infra installed: $(python3 -m hermes_infra --help | head -n 1)"
