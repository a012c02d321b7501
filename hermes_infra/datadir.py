"""The Hermes data dir: ownership, the merged `.env`, the merged `config.yaml`.

Only `.env` and `config.yaml` are ever written. Runtime state (WeChat login, pairing, cron,
sessions, memories, skills, logs, state.db) is never touched: a redeploy must not log the
operator out of WeChat.
"""
from __future__ import annotations

import hashlib
import json
import secrets
import shlex

from pyinfra import host
from pyinfra.api import deploy, operation

from hermes_infra import configfile, envfile
from hermes_infra.facts import FileMeta, ForeignOwnedFiles, read_text
from hermes_infra.ops import fail, managed_file
from hermes_infra.settings import GatewaySettings, check_api_key

# Keys generated during this run, so every operation of the run (the .env, the companions'
# env files, the compose labels) agrees on one value before it exists on the host.
_generated_keys: dict[tuple[str, str], str] = {}


def env_path(gateway: GatewaySettings) -> str:
    return f"{gateway.host_data_dir.rstrip('/')}/.env"


def config_path(gateway: GatewaySettings) -> str:
    return f"{gateway.host_data_dir.rstrip('/')}/config.yaml"


def decide_api_key(gateway: GatewaySettings, current_env: str | None, host_name: str) -> str:
    """The operator's key if given; else the key already on the host; else a new random one."""
    if gateway.api.key is not None:
        return gateway.api.key.get_secret_value()
    existing = envfile.parse(current_env or "").get("API_SERVER_KEY")
    if existing:
        try:
            return check_api_key(existing, f"API_SERVER_KEY in {env_path(gateway)} on the host")
        except ValueError as error:
            fail(f"{error}. Or remove the line and hermes-infra generates a valid key")
    return _generated_keys.setdefault((host_name, gateway.name), secrets.token_urlsafe(32))


def env_values(gateway: GatewaySettings, current_env: str | None, host_name: str) -> dict[str, str]:
    values = gateway.managed_env()
    values["API_SERVER_KEY"] = decide_api_key(gateway, current_env, host_name)
    return values


def current_env(gateway: GatewaySettings) -> str | None:
    return read_text(env_path(gateway))


def api_key(gateway: GatewaySettings) -> str:
    """The key the gateway will run with after this deploy (reads the host's `.env`)."""
    return decide_api_key(gateway, current_env(gateway), host.name)


def inputs_digest(gateway: GatewaySettings) -> str:
    """A digest of everything the container reads at start that is not in the compose file.

    Put in a compose label, it makes compose recreate exactly the containers whose managed
    `.env` or `config.yaml` values changed. Keys added by hand do not count: they are the
    operator's to restart for.
    """
    payload = json.dumps([env_values(gateway, current_env(gateway), host.name),
                          gateway.config.managed()], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@operation()
def directory(path: str, uid: int, gid: int, mode: str):
    """A directory with a numeric owner (the container's uid has no name on the host)."""
    meta = host.get_fact(FileMeta, path=path)
    quoted = shlex.quote(path)
    if meta is None:
        yield f"install -d -o {uid} -g {gid} -m {mode} {quoted}"
    elif (meta["uid"], meta["gid"], meta["mode"]) != (uid, gid, mode.rjust(4, "0")):
        yield f"chown {uid}:{gid} {quoted} && chmod {mode} {quoted}"
    else:
        host.noop(f"{path} exists with owner {uid}:{gid} and mode {mode}")


@operation()
def owned_by(path: str, uid: int, gid: int):
    """Every file under the data dir belongs to the container user (the official image's
    entrypoint does the same at start; our registry-free image runs as that user directly)."""
    foreign = host.get_fact(ForeignOwnedFiles, path=path, uid=uid, gid=gid)
    if not foreign:
        host.noop(f"everything under {path} belongs to {uid}:{gid}")
        return
    yield f"chown -R -h {uid}:{gid} {shlex.quote(path)}"


@deploy("Hermes data dir")
def data_dir(gateway: GatewaySettings, backup_dir: str):
    directory(name=f"Data dir {gateway.host_data_dir} owned by {gateway.uid}:{gateway.gid}",
              path=gateway.host_data_dir, uid=gateway.uid, gid=gateway.gid, mode="0700")

    owned_by(name=f"Files under {gateway.host_data_dir} belong to {gateway.uid}:{gateway.gid}",
             path=gateway.host_data_dir, uid=gateway.uid, gid=gateway.gid)

    def merged_env(current: str | None) -> str:
        return envfile.merge(current, env_values(gateway, current, host.name)).text

    def merged_config(current: str | None) -> str:
        try:
            return configfile.merge(current, gateway.config.managed(), config_path(gateway)).text
        except configfile.ConfigYamlError as error:
            fail(str(error))

    managed_file(name=f"Merge managed keys into {env_path(gateway)} (0600, values not shown)",
                 path=env_path(gateway), content=merged_env, mode="0600",
                 uid=gateway.uid, gid=gateway.gid, backup_dir=backup_dir)
    managed_file(name=f"Merge managed keys into {config_path(gateway)}",
                 path=config_path(gateway), content=merged_config, mode="0600",
                 uid=gateway.uid, gid=gateway.gid, backup_dir=backup_dir)

