"""Who reaches whom: which gateway a companion talks to, where each API port is published,
and the URL a companion uses. Derived from settings; used by validation, the plan and the checks."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hermes_infra.settings.schema import CompanionSettings, GatewaySettings, HostSettings


def gateway_for(settings: HostSettings, companion: CompanionSettings) -> GatewaySettings:
    if companion.gateway is None:
        return settings.gateways[0]
    for gateway in settings.gateways:
        if gateway.name == companion.gateway:
            return gateway
    raise ValueError(
        f"companions[{companion.name}].gateway is {companion.gateway!r}, which is not a profile. "
        f"Fix: one of {', '.join(g.name for g in settings.gateways)}"
    )

def publish_addresses(settings: HostSettings, gateway: GatewaySettings) -> list[str]:
    """Host addresses the gateway's API port is bound to (explicit, or derived)."""
    if gateway.api.publish_addresses is not None:
        return list(gateway.api.publish_addresses)
    addresses = ["127.0.0.1"]
    if any(c.topology == "host-gateway" and _targets(settings, c, gateway) for c in settings.companions):
        addresses.append(settings.docker.bridge_gateway_ip)
    return addresses

def _targets(settings: HostSettings, companion: CompanionSettings, gateway: GatewaySettings) -> bool:
    return (companion.gateway or settings.gateways[0].name) == gateway.name

def companion_api_url(settings: HostSettings, companion: CompanionSettings) -> str:
    gateway = gateway_for(settings, companion)
    if companion.topology == "same-project":
        return f"http://{gateway.service_name}:8642/v1"
    return f"http://host.docker.internal:{gateway.api.port}/v1"
