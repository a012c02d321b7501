"""The URL a companion uses to reach its gateway. Derived from settings; used by the plan and
the checks (which gateway a companion talks to and where each API port is published are in
`settings.schema`, whose validators check them)."""
from __future__ import annotations

from hermes_infra.settings.schema import CompanionSettings, HostSettings, gateway_for


def companion_api_url(settings: HostSettings, companion: CompanionSettings) -> str:
    gateway = gateway_for(settings, companion)
    if companion.topology == "same-project":
        return f"http://{gateway.service_name}:8642/v1"
    return f"http://host.docker.internal:{gateway.api.port}/v1"
