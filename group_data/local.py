"""Settings for the local VM (group `local`, from inventory/local.py).

The VM reaches Debian's mirror but not Docker Hub, like many real hosts: Docker comes from
Debian's packages and the image is the one `hermes-infra image build` made from PyPI.
"""
from hermes_infra.trylocal import local_image_dir

docker = {"install_source": "distro"}
image = {"ref": "hermes-agent:0.19.0-local", "source": "archive", "archive": str(local_image_dir())}
swap = {"size": "1G"}
