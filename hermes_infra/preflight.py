"""Checks that need the host's facts (RAM, cores, release), run before any operation executes.

pyinfra prepares every operation of every host before executing the first one, so an error
raised here stops the whole run with nothing changed on any host.
"""
from __future__ import annotations

from dataclasses import dataclass

from pyinfra.api.exceptions import PyinfraError

from hermes_infra.image import ImageArchiveError, expected_image_id
from hermes_infra.settings import EffectiveLimits, HostResources, HostSettings, derive_limits

SUPPORTED = {"debian": ("bookworm", "trixie", "forky")}


class PreflightError(PyinfraError):
    """The host cannot take these settings; the message says which setting and the fix."""


@dataclass(frozen=True)
class Plan:
    limits: dict[str, EffectiveLimits]
    image_id: str | None


def check_release(settings: HostSettings, release: dict) -> None:
    os_id, codename = release.get("id", ""), release.get("codename", "")
    if os_id != "debian":
        raise PreflightError(f"the host runs {os_id or 'an unknown OS'!r}; hermes-infra supports Debian 12 and 13. "
                             "Fix: use a Debian host")
    if codename == "bookworm" and settings.docker.install_source == "distro":
        raise PreflightError(
            "docker.install_source is 'distro' but Debian 12 (bookworm) ships only compose v1. "
            "Fix: use docker.install_source: official on Debian 12, or a Debian 13 host"
        )


def preflight(settings: HostSettings, release: dict, resources: dict) -> Plan:
    check_release(settings, release)
    try:
        limits = derive_limits(settings, HostResources(**resources))
        image_id = expected_image_id(settings.image)
    except (ValueError, ImageArchiveError) as error:
        raise PreflightError(str(error)) from None
    return Plan(limits=limits, image_id=image_id)
