"""Production: Docker's official repository, a pinned image, 4G of swap."""
docker = {"install_source": "official"}
image = {"ref": "nousresearch/hermes-agent:0.23.5"}
swap = {"size": "4G"}
