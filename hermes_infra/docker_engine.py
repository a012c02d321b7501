"""Docker engine and compose v2: the apt source, conflicting packages, daemon.json, the service."""
from __future__ import annotations

import json

from pyinfra.api import deploy
from pyinfra.operations import apt, files, server, systemd

from hermes_infra.ops import managed_file
from hermes_infra.render import render_template
from hermes_infra.settings import DockerSettings

OFFICIAL_PACKAGES = ["docker-ce", "docker-ce-cli", "containerd.io", "docker-buildx-plugin", "docker-compose-plugin"]
DISTRO_PACKAGES = ["docker.io", "docker-cli", "docker-compose"]
# Installed side by side, these fight over /usr/bin/docker, containerd and the compose plugin.
CONFLICTS = {
    "official": ["docker.io", "docker-doc", "docker-compose", "docker-compose-v2", "podman-docker", "containerd", "runc"],
    "distro": ["docker-ce", "docker-ce-cli", "containerd.io", "docker-compose-plugin", "podman-docker"],
}
KEYRING = "/etc/apt/keyrings/docker.asc"
DAEMON_JSON = "/etc/docker/daemon.json"


def daemon_json_text(settings: DockerSettings) -> str:
    return json.dumps(settings.daemon_json(), indent=2, sort_keys=True) + "\n"


def official_source_text(settings: DockerSettings, codename: str) -> str:
    return render_template("docker.sources.j2", url=settings.official_repo_url, suite=codename, keyring=KEYRING)


def pinned(packages: list[str], version: str | None, engine_packages: tuple[str, ...]) -> list[str]:
    if not version:
        return packages
    return [f"{name}={version}" if name in engine_packages else name for name in packages]


@deploy("Docker engine")
def docker_engine(settings: DockerSettings, codename: str, backup_dir: str):
    apt.packages(name="Install apt prerequisites", packages=["ca-certificates", "curl"],
                 update=True, cache_time=3600, no_recommends=True)
    apt.packages(name="Remove packages that conflict with the chosen Docker",
                 packages=CONFLICTS[settings.install_source], present=False)
    # daemon.json goes in before the engine, so a fresh engine starts with it and an
    # installed one is restarted only when the file really changed.
    managed_file(name=f"Write {DAEMON_JSON}", path=DAEMON_JSON, content=daemon_json_text(settings),
                 backup_dir=backup_dir,
                 on_change="if systemctl is-active --quiet docker; then systemctl restart docker; fi")
    if settings.install_source == "official":
        files.directory(name="Create /etc/apt/keyrings", path="/etc/apt/keyrings", mode="0755")
        files.download(name="Download Docker's apt signing key", src=f"{settings.official_repo_url}/gpg",
                       dest=KEYRING, mode="0644")
        source = managed_file(name="Add Docker's apt repository (deb822, Signed-By)",
                              path="/etc/apt/sources.list.d/docker.sources",
                              content=official_source_text(settings, codename), backup_dir=backup_dir)
        apt.update(name="Update apt lists for Docker's repository", _if=source.did_change)
        packages = pinned(OFFICIAL_PACKAGES, settings.version, ("docker-ce", "docker-ce-cli"))
    else:
        packages = pinned(DISTRO_PACKAGES, settings.version, ("docker.io", "docker-cli"))
    apt.packages(name="Install Docker engine and compose v2", packages=packages, no_recommends=True)
    systemd.service(name="Enable and start Docker", service="docker", running=True, enabled=True)
    for user in settings.users:
        server.user(name=f"Add {user} to the docker group", user=user, groups=["docker"], append=True)
