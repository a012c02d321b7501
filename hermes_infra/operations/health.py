"""The health gate: a deploy is done when the API answers, not when a process exists.

Hermes keeps its process alive when the API server fails to start (bad key, missing aiohttp),
so only an HTTP answer proves anything: `/health` 200 without an `Origin` header (CORS would
give 403), `/v1/models` 401 without the key on the published port, and 200 with the key on the
running container's own address (`hostfacts.container_api_script`: the key never goes to a port
another local user could have bound).
"""
from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import operation

from hermes_infra.host.hostfacts import DataDirRequest, container_api_script, key_header_script
from hermes_infra.plan.hostplan import HealthPlan


def gate_script(url: str, container: str, data_dir: DataDirRequest, timeout: int, interval: float,
                container_port: int | None = None) -> str:
    curl = "curl -s -o /dev/null -w '%{http_code}' --max-time 5"
    # Settings reach the messages through quoted variables, never pasted into "…" (F14: a data
    # dir with `$(…)` in it stays text).
    return f"""
hi_url={shlex.quote(url)}
hi_container={shlex.quote(container)}
hi_env={shlex.quote(data_dir.directory + "/.env")}
deadline=$(( $(date +%s) + {int(timeout)} ))
code=000
while :; do
  code=$({curl} {shlex.quote(url + '/health')} || true)
  [ "$code" = 200 ] && break
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "hermes-infra: $hi_container did not answer GET $hi_url/health with 200 within {int(timeout)}s (last: $code)." >&2
    echo "Check: the container state below, API_SERVER_KEY in $hi_env (>= 16 chars, no placeholder), aiohttp in the image, the port mapping." >&2
    docker ps -a --filter "name=^$hi_container\\$" --format '{{{{.Names}}}}: {{{{.Status}}}}' >&2
    echo "--- last lines of the container log ---" >&2
    docker logs --tail 40 "$hi_container" 2>&1 | sed 's/^/  /' >&2
    exit 1
  fi
  sleep {interval}
done
anon=$({curl} {shlex.quote(url + '/v1/models')} || true)
# The key goes to the running container's own address only, never to whoever answers on the
# published port (a local user can bind it while the gateway is down).
hi_api=$({container_api_script(container, container_port)})
if [ -n "$hi_api" ]; then
  authed=$( {key_header_script(data_dir)} | {curl} -H @- "$hi_api/v1/models" || true)
else
  authed="000 (container not running: the key was not sent)"
fi
if [ "$anon" != 401 ] || [ "$authed" != 200 ]; then
  echo "hermes-infra: $hi_container /health is 200 but /v1/models gave $anon without the key (want 401) and $authed with it (want 200)." >&2
  echo "Check: API_SERVER_KEY in $hi_env is the key clients use; API_SERVER_CORS_ORIGINS." >&2
  exit 1
fi
echo "$hi_container: /health 200, /v1/models 401 without key, 200 with key"
""".strip()


@operation(is_idempotent=True)
def healthy(plan: HealthPlan):
    """Wait until the gateway answers; nothing to do when it answered before the deploy and
    nothing it depends on changed."""
    if not plan.gate_needed:
        host.noop(f"{plan.container} is healthy at {plan.url}")
        return
    yield gate_script(plan.url, plan.container, plan.data_dir, plan.timeout, plan.interval)
