"""/etc/docker/daemon.json: log rotation, live-restore, mirrors, and the CIS daemon hardening.

CIS Docker Benchmark v1.6.0 items applied here (the checks HI-DOCKER-003..006 verify them):

- 2.2  `"icc": false`: no traffic between containers on the *default* bridge (`docker0`).
  Docker's `--icc` flag is the default bridge's `com.docker.network.bridge.enable_icc`; networks
  compose creates (`<project>_default`) are user-defined bridges with their own `enable_icc`
  (default true), so a `same-project` companion still reaches `hermes:8642`, and a
  `host-gateway` companion reaches the gateway through a published port, which `icc` does not
  govern. Only containers started by hand on `docker0` lose each other.
- 2.14 `"no-new-privileges": true`: the default for every container (compose also sets
  `no-new-privileges:true` on each service, CIS 5.26), so a one-off container started by hand
  is covered too.
- 2.13-ish / 2.15: json-file with max-size/max-file, live-restore as set.

`docker.daemon_options` are merged over all of this, key by key at the top level (they win), so
an operator can turn an item off on purpose; the checks then report it as skipped with the
reason instead of failing.

Applying `icc` needs the daemon restarted with no container running: with live-restore on and
containers running, dockerd keeps the old default-bridge configuration ("there are running
containers, updated network configuration will not take affect").
"""
from __future__ import annotations

import copy
import json
from typing import Any

from hermes_infra.settings.schema import DockerSettings

HARDENED_DEFAULTS: dict[str, Any] = {
    "icc": False,
    "no-new-privileges": True,
}
"""daemon.json keys hermes-infra always sets (unless docker.daemon_options overrides them)."""


def daemon_json(settings: DockerSettings) -> dict[str, Any]:
    """The daemon.json content these settings stand for."""
    options: dict[str, Any] = {
        "log-driver": "json-file",
        "log-opts": {"max-size": settings.log_max_size, "max-file": str(settings.log_max_file)},
        "live-restore": settings.live_restore,
    }
    options.update(copy.deepcopy(HARDENED_DEFAULTS))
    if settings.registry_mirrors:
        options["registry-mirrors"] = list(settings.registry_mirrors)
    if settings.userland_proxy is not None:
        options["userland-proxy"] = settings.userland_proxy
    options.update(copy.deepcopy(dict(settings.daemon_options)))
    return options


def daemon_json_text(settings: DockerSettings) -> str:
    """daemon.json as written to the host: stable key order, so an unchanged file compares equal."""
    return json.dumps(daemon_json(settings), indent=2, sort_keys=True) + "\n"
