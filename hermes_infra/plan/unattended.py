"""Automatic security updates (setting unattended_upgrades): the apt configuration files, pure.

Two files. `20auto-upgrades` is the one Debian's and Ubuntu's own setup writes (APT::Periodic:
refresh the lists and run unattended-upgrade daily). `52hermes-infra-unattended-upgrades` is
read after the package's `50unattended-upgrades` (apt reads the directory in name order) and
`#clear`s its origin lists first: a list in a later file would otherwise be appended to, and
Debian's default also takes the stable point-release origin. Docker's packages are in the
blacklist (a new dockerd or containerd restarts the daemon, and with it every gateway that
live-restore does not keep, at a time nobody chose); the lists are appended to, so an
operator's own entries in 50unattended-upgrades stay.

Only files that start with hermes-infra's marker are removed when the setting is off.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hermes_infra.host.hostfacts import APT_TIMERS, HostState
from hermes_infra.settings.schema import HostSettings

PACKAGE = "unattended-upgrades"
PERIODIC_PATH = "/etc/apt/apt.conf.d/20auto-upgrades"
CONFIG_PATH = "/etc/apt/apt.conf.d/52hermes-infra-unattended-upgrades"
PATHS = (PERIODIC_PATH, CONFIG_PATH)
MARKER = "// Written by hermes-infra (setting unattended_upgrades)."
# The distribution's security pocket only (unattended-upgrade expands the ${...} itself).
ORIGINS = {
    "debian": ("Origins-Pattern", "origin=Debian,codename=${distro_codename}-security,label=Debian-Security"),
    "ubuntu": ("Allowed-Origins", "${distro_id}:${distro_codename}-security"),
}
# Python regular expressions, matched at the start of a package name.
DOCKER_BLACKLIST = ("docker-ce", "docker-buildx-plugin$", "docker-compose-plugin$", r"containerd\.io$",
                    r"docker\.io$", "containerd$", "runc$")


@dataclass(frozen=True)
class UnattendedPlan:
    enabled: bool
    files: tuple[Any, ...] = ()
    """RootFilePlans of PATHS (none when off)."""
    installed: bool = False
    """The unattended-upgrades package is installed."""
    remove: tuple[str, ...] = ()
    """Files hermes-infra wrote that are on the host (removed when off)."""
    timers_off: tuple[str, ...] = ()
    """apt's daily timers that are not enabled (masked on some images): enabled when on."""


def periodic_text() -> str:
    return "\n".join([
        MARKER,
        'APT::Periodic::Update-Package-Lists "1";',
        'APT::Periodic::Unattended-Upgrade "1";',
        'APT::Periodic::AutocleanInterval "7";',
    ]) + "\n"


def config_text(settings: HostSettings, os_id: str) -> str:
    wanted = settings.unattended_upgrades
    key, origin = ORIGINS[os_id]
    blacklist = "".join(f'\n    "{name}";' for name in DOCKER_BLACKLIST)
    return "\n".join([
        MARKER,
        "// Read after 50unattended-upgrades: its origins are cleared, security updates only.",
        "#clear Unattended-Upgrade::Origins-Pattern;",
        "#clear Unattended-Upgrade::Allowed-Origins;",
        f'Unattended-Upgrade::{key} {{\n    "{origin}";\n}};',
        "// Docker's engine is upgraded by the operator (hermes-infra up), never behind their back.",
        f"Unattended-Upgrade::Package-Blacklist {{{blacklist}\n}};",
        f'Unattended-Upgrade::Automatic-Reboot "{"true" if wanted.automatic_reboot else "false"}";',
        f'Unattended-Upgrade::Automatic-Reboot-Time "{wanted.reboot_time}";',
    ]) + "\n"


def ours(current: dict | None) -> bool:
    return current is not None and current["text"].text.startswith(MARKER)


def plan_unattended(settings: HostSettings, state: HostState, os_id: str,
                    root_file: Callable[..., Any]) -> UnattendedPlan:
    """`os_id`: the os-release ID the plan already checked is supported (debian, ubuntu)."""
    installed = state.packages.get(PACKAGE) == "installed"
    if not settings.unattended_upgrades.enabled:
        return UnattendedPlan(enabled=False, installed=installed,
                              remove=tuple(path for path in PATHS if ours(state.root_files.get(path))))
    return UnattendedPlan(enabled=True, installed=installed,
                          timers_off=tuple(t for t in APT_TIMERS if state.apt_timers.get(t) != "enabled"),
                          files=(root_file(PERIODIC_PATH, periodic_text()),
                                 root_file(CONFIG_PATH, config_text(settings, os_id))))
