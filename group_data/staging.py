"""Staging: Docker's official repository, smaller swap."""
docker = {"install_source": "official"}
swap = {"size": "1G"}
firewall = {"enabled": True}  # default-deny inbound, SSH always allowed (see group_data/production.py)
