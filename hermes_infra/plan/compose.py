"""Compose projects: rendered from the template, and brought up only when their inputs changed.

The gateways (and `same-project` companions) share the project `hermes`; each `host-gateway`
companion gets a project of its own, as in the guides where the hub is a separate stack.
"""
from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass, field

from hermes_infra.plan import envfile
from hermes_infra.settings import topology
from hermes_infra.plan.capacity import EffectiveLimits
from hermes_infra.plan.hardening import GATEWAY_HEALTHCHECK
from hermes_infra.plan.render import render_template
from hermes_infra.settings.schema import CompanionSettings, HostSettings, gateway_for, publish_addresses
from hermes_infra.settings.sizes import parse_size

MAIN_PROJECT = "hermes"
LABEL_INPUTS = "io.hermes-infra.inputs"
LABEL_PROFILE = "io.hermes-infra.profile"
LABEL_IMAGE_ID = "io.hermes-infra.image-identity"
STAMP_NAME = ".hermes-infra-applied"


# Capabilities (F2). Docker's default set gives container root MKNOD (a device node of the host's
# disk in the data dir, F1), NET_RAW (spoofed packets, ARP on the bridge) and more. A gateway
# keeps only what the official image's s6-overlay init, running as root, does before it drops to
# uid 10000: chown/chmod of /opt/data and /run/s6 trees owned by hermes (CHOWN, FOWNER, and
# DAC_OVERRIDE to enter the 0700 data dir it does not own; FSETID so its chmod 03730 of s6's
# event dirs keeps the setgid bit), s6-setuidgid (SETUID, SETGID), and s6-supervise (root)
# signalling the uid 10000 gateway it supervises, which needs KILL. The registry-free image runs
# `hermes` as uid 10000 from the start: a non-root process has no effective capabilities, so the
# kept ones give it nothing (and no-new-privileges stops setuid files from granting them).
# Dropped: MKNOD, NET_RAW, NET_BIND_SERVICE (the ports are 8642 and 9119), SYS_CHROOT,
# AUDIT_WRITE, SETFCAP, SETPCAP: nothing in either image uses them.
GATEWAY_CAP_DROP = ("ALL",)
GATEWAY_CAP_ADD = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID")
# A companion is any image: its init may chown, drop to a user, bind port 80 or signal its
# children, so only what no ordinary service needs is dropped.
COMPANION_CAP_DROP = ("MKNOD", "NET_RAW", "SYS_CHROOT", "AUDIT_WRITE", "SETFCAP", "SETPCAP")


@dataclass
class Service:
    name: str
    image: str
    restart: str
    memory: str
    cpus: float
    pids: int
    command: list[str] | None = None
    entrypoint: list[str] | None = None
    environment: dict[str, str] = field(default_factory=dict)
    env_files: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    ports: list[str] = field(default_factory=list)
    depends_on: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    healthcheck: list[str] | None = None
    stop_grace_seconds: int = 60
    cap_drop: tuple[str, ...] = COMPANION_CAP_DROP
    cap_add: tuple[str, ...] = ()


def _compose_memory(size: str | int) -> str:
    return f"{parse_size(size) // (1024 * 1024)}m"


def port_binding(address: str, host_port: int, container_port: int) -> str:
    shown = f"[{address}]" if ":" in address else address
    return f"{shown}:{host_port}:{container_port}"


def project_dir(settings: HostSettings, companion: CompanionSettings | None = None) -> str:
    base = settings.project_dir.rstrip("/")
    if companion is None or companion.topology == "same-project":
        return base
    return f"{base}/companions/{companion.name}"


def project_name(companion: CompanionSettings | None = None) -> str:
    if companion is None or companion.topology == "same-project":
        return MAIN_PROJECT
    return f"{MAIN_PROJECT}-{companion.name}"


def compose_path(settings: HostSettings, companion: CompanionSettings | None = None) -> str:
    return f"{project_dir(settings, companion)}/compose.yaml"


def companion_env_path(settings: HostSettings, companion: CompanionSettings) -> str:
    return f"{settings.project_dir.rstrip('/')}/companions/{companion.name}.env"


def companion_secret_env(settings: HostSettings, companion: CompanionSettings, gateway_key: str) -> dict[str, str]:
    values = {key: secret.get_secret_value() for key, secret in companion.secret_env.items()}
    values[companion.api_key_env] = gateway_key
    return values


def gateway_services(settings: HostSettings, limits: dict[str, EffectiveLimits],
                     digests: dict[str, str], image_id: str | None) -> list[Service]:
    services = []
    for gateway in settings.gateways:
        limit = limits[gateway.name]
        ports = [port_binding(a, gateway.api.port, 8642) for a in publish_addresses(settings, gateway)]
        if gateway.dashboard.enabled:
            ports.append(port_binding(gateway.dashboard.publish_address, gateway.dashboard.port, 9119))
        labels = {LABEL_PROFILE: gateway.name, LABEL_INPUTS: digests[gateway.name]}
        if image_id:
            labels[LABEL_IMAGE_ID] = image_id
        services.append(Service(
            name=gateway.service_name, image=settings.image.ref, restart=gateway.restart,
            memory=_compose_memory(limit.memory_bytes), cpus=limit.cpus, pids=limit.pids,
            command=["gateway", "run"],
            environment={"TZ": gateway.timezone, "HERMES_HOME": "/opt/data",
                         "HERMES_UID": str(gateway.uid), "HERMES_GID": str(gateway.gid)},
            volumes=[f"{gateway.host_data_dir}:/opt/data"], ports=ports, labels=labels,
            healthcheck=list(GATEWAY_HEALTHCHECK), stop_grace_seconds=gateway.stop_grace_seconds,
            cap_drop=GATEWAY_CAP_DROP, cap_add=GATEWAY_CAP_ADD,
        ))
    return services


def companion_service(settings: HostSettings, companion: CompanionSettings, secret_digest: str) -> Service:
    gateway = gateway_for(settings, companion)
    environment = dict(companion.environment)
    environment.update({
        companion.api_base_url_env: topology.companion_api_url(settings, companion),
        companion.model_env: gateway.api.model_name,
        "HERMES_TIMEOUT_MS": str(companion.timeout_ms),
        "AUTO_REPLY": "true" if companion.auto_reply else "false",
    })
    return Service(
        name=companion.name, image=companion.image, restart=companion.restart,
        memory=_compose_memory(companion.memory), cpus=companion.cpus, pids=512,
        command=companion.command, entrypoint=companion.entrypoint, environment=environment,
        env_files=[companion_env_path(settings, companion)], volumes=list(companion.volumes),
        ports=list(companion.ports),
        depends_on=[gateway.service_name] if companion.topology == "same-project" else [],
        labels={LABEL_PROFILE: gateway.name, LABEL_INPUTS: secret_digest},
        cap_drop=COMPANION_CAP_DROP,
    )


def render_project(settings: HostSettings, project: str, services: list[Service]) -> str:
    return render_template("compose.yaml.j2", project=project, services=services,
                           log_max_size=settings.docker.log_max_size, log_max_file=settings.docker.log_max_file)


def secret_digest(values: dict[str, str]) -> str:
    return hashlib.sha256(envfile.render(values).encode()).hexdigest()[:16]


def compose_command(directory: str, project: str) -> str:
    """`docker compose` on a project, from its directory (as the deploy runs it)."""
    return f"cd {shlex.quote(directory)} && docker compose -p {shlex.quote(project)} -f compose.yaml"


def stamp_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
