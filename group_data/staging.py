"""Staging: Docker's official repository, smaller swap."""
docker = {"install_source": "official"}
swap = {"size": "1G"}
firewall = {"enabled": True}  # default-deny inbound, SSH always allowed (see group_data/production.py)
ssh_hardening = {"enabled": True}  # key-only logins, confirmed by a second SSH login
unattended_upgrades = {"enabled": True}  # security updates only, Docker's packages excluded
