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
    from hermes_infra import compose

    profiles = {g.name: {"service": g.service_name, "data_dir": g.host_data_dir} for g in settings.gateways}
    companions = {c.name: {"project": compose.project_name(c), "directory": compose.project_dir(settings, c),
                           "env_file": compose.companion_env_path(settings, c)} for c in settings.companions}
    return json.dumps({"profiles": profiles, "companions": companions}, indent=2, sort_keys=True) + "\n"


def _previous(manifest: str | None, section: str) -> dict[str, dict]:
    if not manifest:
        return {}
    try:
        return json.loads(manifest).get(section, {})
    except json.JSONDecodeError:
        return {}


def removed_profiles(previous_manifest: str | None, settings: HostSettings) -> dict[str, dict]:
    current = {g.name for g in settings.gateways}
    return {name: info for name, info in _previous(previous_manifest, "profiles").items() if name not in current}


def removed_companions(previous_manifest: str | None, settings: HostSettings) -> dict[str, dict]:
    from hermes_infra import compose

    current = {(c.name, compose.project_name(c)) for c in settings.companions}
    return {name: info for name, info in _previous(previous_manifest, "companions").items()
            if (name, info.get("project")) not in current}


@operation()
def retire_removed_profiles(settings: HostSettings):
    """Stop the containers of profiles and companions no longer in the settings; archive (and
    purge if asked) the data dirs of removed profiles."""
    manifest = read_text(manifest_path(settings))
    removed = removed_profiles(manifest, settings)
    companions = removed_companions(manifest, settings)
    if not removed and not companions:
        host.noop("no profile or companion was removed")
        return
    for name, info in companions.items():
        # Its container only: a companion's volumes are the operator's data.
        if info.get("project") != "hermes":
            yield (f"if [ -f {shlex.quote(info['directory'])}/compose.yaml ]; then cd {shlex.quote(info['directory'])} && "
                   f"docker compose -p {shlex.quote(info['project'])} -f compose.yaml down --remove-orphans; fi")
        else:
            yield f"docker rm -f {shlex.quote(name)} >/dev/null 2>&1 || true"
        yield f"rm -f {shlex.quote(info['env_file'])}"
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
