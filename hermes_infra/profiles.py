"""Profiles that left the settings: their container goes, their data stays (archived first).

The host keeps a small manifest of the profiles it runs, so a later deploy knows which data
dir belonged to a profile that is no longer in the settings.
"""
from __future__ import annotations

import json
import shlex
import time

from pyinfra import host
from pyinfra.api import operation

from hermes_infra.facts import read_text
from hermes_infra.settings import HostSettings


def manifest_path(settings: HostSettings) -> str:
    return f"{settings.project_dir.rstrip('/')}/profiles.json"


def manifest_text(settings: HostSettings) -> str:
    profiles = {g.name: {"service": g.service_name, "data_dir": g.host_data_dir} for g in settings.gateways}
    return json.dumps({"profiles": profiles}, indent=2, sort_keys=True) + "\n"


def removed_profiles(previous_manifest: str | None, settings: HostSettings) -> dict[str, dict]:
    if not previous_manifest:
        return {}
    try:
        previous = json.loads(previous_manifest).get("profiles", {})
    except json.JSONDecodeError:
        return {}
    current = {g.name for g in settings.gateways}
    return {name: info for name, info in previous.items() if name not in current}


@operation()
def retire_removed_profiles(settings: HostSettings):
    """Stop the containers of profiles no longer in the settings; archive (and purge if asked) their data."""
    removed = removed_profiles(read_text(manifest_path(settings)), settings)
    if not removed:
        host.noop("no profile was removed")
        return
    stamp = time.strftime("%Y%m%dT%H%M%S")
    backup_dir = settings.backup_dir.rstrip("/")
    for name, info in removed.items():
        data_dir = info["data_dir"]
        archive = f"{backup_dir}/profile-{name}-{stamp}.tar.gz"
        yield f"docker rm -f {shlex.quote(info['service'])} >/dev/null 2>&1 || true"
        yield (f"if [ -d {shlex.quote(data_dir)} ]; then install -d -m 0700 {shlex.quote(backup_dir)} && "
               f"tar -C / -czf {shlex.quote(archive)} {shlex.quote(data_dir.lstrip('/'))} && chmod 0600 {shlex.quote(archive)}; fi")
        if settings.purge_removed_gateways:
            yield f"rm -rf --one-file-system {shlex.quote(data_dir)}"
