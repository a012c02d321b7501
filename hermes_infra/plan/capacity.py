"""What a host can give its containers: explicit limits checked against it, missing ones derived."""
from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel

from hermes_infra.settings.sizes import format_bytes, parse_size

if TYPE_CHECKING:
    from hermes_infra.settings.schema import HostSettings

MIB = 1024**2


class HostResources(BaseModel):
    """What a host has, from facts: used to derive and bound the container limits."""

    memory_bytes: int
    cpus: int


class EffectiveLimits(BaseModel):
    memory_bytes: int
    cpus: float
    pids: int

    @property
    def memory(self) -> str:
        return format_bytes(self.memory_bytes)


def derive_limits(settings: HostSettings, resources: HostResources) -> dict[str, EffectiveLimits]:
    """Per-gateway limits: explicit ones are checked against the host, missing ones derived.

    Derived limits split what the host can give (RAM x 7/8 with at least 512 MiB left to the
    OS, cores x 5/8 with at least 0.5) evenly between the gateways that have no explicit limit.
    """
    ram = resources.memory_bytes
    available_memory = max(min(ram * 7 // 8, ram - 512 * MIB), 256 * MIB)
    available_cpus = max(round(resources.cpus * 5 / 8, 2), 0.5)
    explicit_memory = sum(parse_size(g.limits.memory) for g in settings.gateways if g.limits.memory)
    companion_memory = sum(parse_size(c.memory) for c in settings.companions)
    missing_memory = [g for g in settings.gateways if not g.limits.memory]
    missing_cpus = [g for g in settings.gateways if g.limits.cpus is None]

    for gateway in settings.gateways:
        if gateway.limits.memory and parse_size(gateway.limits.memory) > ram:
            raise ValueError(
                f"gateways[{gateway.name}].limits.memory is {gateway.limits.memory} but the host has only "
                f"{format_bytes(ram)} of RAM. Fix: at most {format_bytes(available_memory)}, or leave it unset"
            )
        if gateway.limits.cpus is not None and gateway.limits.cpus > resources.cpus:
            raise ValueError(
                f"gateways[{gateway.name}].limits.cpus is {gateway.limits.cpus} but the host has only "
                f"{resources.cpus} CPUs. Fix: at most {resources.cpus}, or leave it unset"
            )
    if explicit_memory + companion_memory > ram:
        raise ValueError(
            f"the memory limits of all gateways and companions add up to {format_bytes(explicit_memory + companion_memory)}, "
            f"more than the host's {format_bytes(ram)} of RAM. Fix: lower gateways[*].limits.memory"
        )
    share_memory = max((available_memory - explicit_memory) // max(len(missing_memory), 1), 256 * MIB)
    if missing_memory and available_memory - explicit_memory < 256 * MIB * len(missing_memory):
        raise ValueError(
            f"the host's {format_bytes(ram)} of RAM leaves no room for gateways "
            f"{', '.join(g.name for g in missing_memory)} after the explicit limits. Fix: set their limits.memory"
        )
    share_cpus = max(round(available_cpus / max(len(missing_cpus), 1), 2), 0.25)
    limits = {}
    for gateway in settings.gateways:
        memory = parse_size(gateway.limits.memory) if gateway.limits.memory else share_memory
        memory -= memory % MIB
        cpus = gateway.limits.cpus if gateway.limits.cpus is not None else share_cpus
        limits[gateway.name] = EffectiveLimits(memory_bytes=memory, cpus=cpus, pids=gateway.limits.pids)
    return limits
