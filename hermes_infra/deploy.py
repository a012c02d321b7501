"""The whole host, as a list of what it should be. `deploy.py` at the top calls `hermes_host()`."""
from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy

from hermes_infra import compose, datadir, docker_engine, envfile, health, image, profiles, swap
from hermes_infra.facts import DebianRelease, HostResources
from hermes_infra.loading import settings_for_host
from hermes_infra.ops import managed_file
from hermes_infra.preflight import preflight
from hermes_infra.settings import HostSettings


@deploy("Hermes gateway host")
def hermes_host(settings: HostSettings | None = None):
    settings = settings or settings_for_host(host)
    release = host.get_fact(DebianRelease)
    resources = host.get_fact(HostResources)
    plan = preflight(settings, release, resources)

    docker_engine.docker_engine(settings.docker, release["codename"], settings.backup_dir)
    swap.swap(settings.swap)
    image.image(settings.image)
    for gateway in settings.gateways:
        datadir.data_dir(gateway, settings.backup_dir)
    companion_files(settings)
    profiles.retire_removed_profiles(name="Retire profiles and companions removed from the settings", settings=settings)
    managed_file(name="Record the profiles this host runs", path=profiles.manifest_path(settings),
                 content=profiles.manifest_text(settings), backup_dir=settings.backup_dir)
    compose_projects(settings, plan)
    for gateway in settings.gateways:
        health.healthy(
            name=f"Health gate: {gateway.service_name} answers /health and /v1/models",
            url=health.probe_url(settings, gateway), container=gateway.service_name,
            env_path=datadir.env_path(gateway), timeout=settings.health.timeout_seconds,
            interval=settings.health.interval_seconds,
        )


def companion_files(settings: HostSettings) -> None:
    for companion in settings.companions:
        gateway = settings.gateway_for(companion)

        def content(_current, companion=companion, gateway=gateway):
            return envfile.render(compose.companion_secret_env(settings, companion, datadir.api_key(gateway)))

        managed_file(name=f"Companion {companion.name}: env file (0600, values not shown)",
                     path=compose.companion_env_path(settings, companion), content=content, mode="0600",
                     backup_dir=settings.backup_dir)


def compose_projects(settings: HostSettings, plan) -> None:
    def companion_digest(companion):
        gateway = settings.gateway_for(companion)
        return compose.secret_digest(compose.companion_secret_env(settings, companion, datadir.api_key(gateway)))

    def main_project() -> str:
        digests = {g.name: datadir.inputs_digest(g) for g in settings.gateways}
        services = compose.gateway_services(settings, plan.limits, digests, plan.image_id)
        services += [compose.companion_service(settings, c, companion_digest(c))
                     for c in settings.companions if c.topology == "same-project"]
        return compose.render_project(settings, compose.MAIN_PROJECT, services)

    main_services = [g.service_name for g in settings.gateways]
    main_services += [c.name for c in settings.companions if c.topology == "same-project"]
    managed_file(name=f"Compose file {compose.compose_path(settings)}", path=compose.compose_path(settings),
                 content=lambda _current: main_project(), backup_dir=settings.backup_dir)
    compose.compose_up(name=f"Compose project {compose.MAIN_PROJECT} up", project=compose.MAIN_PROJECT,
                       directory=compose.project_dir(settings), content=main_project, services=main_services,
                       drift_checked=tuple(g.service_name for g in settings.gateways))

    for companion in settings.companions:
        if companion.topology != "host-gateway":
            continue

        def separate(companion=companion) -> str:
            service = compose.companion_service(settings, companion, companion_digest(companion))
            return compose.render_project(settings, compose.project_name(companion), [service])

        managed_file(name=f"Compose file {compose.compose_path(settings, companion)}",
                     path=compose.compose_path(settings, companion),
                     content=lambda _current, separate=separate: separate(), backup_dir=settings.backup_dir)
        compose.compose_up(name=f"Compose project {compose.project_name(companion)} up",
                           project=compose.project_name(companion), directory=compose.project_dir(settings, companion),
                           content=separate, services=[companion.name])

