"""Staging: Docker's official repository, smaller swap."""
docker = {"install_source": "official"}
swap = {"size": "1G"}
