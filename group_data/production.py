"""Production: Docker's official repository, a pinned image, 4G of swap."""
docker = {"install_source": "official"}
image = {"ref": "nousresearch/hermes-agent:0.23.5"}
swap = {"size": "4G"}
# Default-deny inbound (SSH always allowed); a port published on a public address must be listed
# in `allow` to be reachable, e.g. {"enabled": True, "allow": [{"port": 443, "allow_from": ["203.0.113.0/24"]}]}.
firewall = {"enabled": True}
# Key-only SSH logins (refused while a deploy logs in with a password); automatic security
# updates from the security pocket only, Docker's packages never, no automatic reboot.
ssh_hardening = {"enabled": True}
unattended_upgrades = {"enabled": True, "automatic_reboot": False}
