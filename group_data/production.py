"""Production: Docker's official repository, a pinned image, 4G of swap."""
docker = {"install_source": "official"}
image = {"ref": "nousresearch/hermes-agent:v2026.9.14"}
swap = {"size": "4G"}
