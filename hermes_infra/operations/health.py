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


READY_VERDICT = r"""
import json, re, sys
try:
    body = json.loads(sys.stdin.read())
except ValueError:
    body = None
if not isinstance(body, dict):
    print("unreadable")
    sys.exit()
checks = body.get("readiness") if isinstance(body.get("readiness"), dict) else {}
checks = checks.get("checks") if isinstance(checks.get("checks"), dict) else {}
bad = [name for name, check in checks.items() if not (isinstance(check, dict) and check.get("status") == "ok")]
status = body.get("status") if isinstance(body.get("status"), str) else "?"
word = lambda text: re.sub(r"[^a-z0-9_]", "?", str(text).lower())[:40]
print("ok" if status == "ok" else "not-ready:" + word(status) + ":" + ",".join(word(name) for name in bad[:10]))
"""
"""Reads the agent's `/health/detailed` answer by meaning (JSON) and prints one word built only
of `[a-z0-9_?:,-]`: the gate's message can show it without the agent writing to the terminal."""


def ready_script(container: str, data_dir: DataDirRequest, timeout: int, interval: float) -> str:
    """Wait (within the same deadline) until `/health/detailed` on the container's own address,
    with the key, says `status: ok`: a gateway without a model provider is alive but degraded."""
    return f"""
while :; do
  verdict=$( {key_header_script(data_dir)} | curl -s --max-time 5 -H @- "$hi_api/health/detailed" 2>/dev/null | head -c 65536 \
    | {{ if command -v python3 >/dev/null 2>&1; then python3 -c {shlex.quote(READY_VERDICT)}; else cat >/dev/null; echo nopython3; fi; }} )
  [ "$verdict" = ok ] && break
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "hermes-infra: $hi_container is alive but not ready within {int(timeout)}s (/health/detailed: $verdict; health.require_ready is set)." >&2
    echo "Check: a failing model check means no model provider: set gateways[].config.model (provider, default, base_url, api_key; see the README's 'The model provider')." >&2
    exit 1
  fi
  sleep {interval}
done
echo "$hi_container: /health/detailed status ok (ready)"
"""


def gate_script(url: str, container: str, data_dir: DataDirRequest, timeout: int, interval: float,
                container_port: int | None = None, require_ready: bool = False) -> str:
    curl = "curl -s -o /dev/null -w '%{http_code}' --max-time 5"
    ready = ready_script(container, data_dir, timeout, interval) if require_ready else ""
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
{ready}""".strip()


@operation(is_idempotent=True)
def healthy(plan: HealthPlan):
    """Wait until the gateway answers; nothing to do when it answered before the deploy and
    nothing it depends on changed."""
    if not plan.gate_needed:
        host.noop(f"{plan.container} is healthy at {plan.url}")
        return
    yield gate_script(plan.url, plan.container, plan.data_dir, plan.timeout, plan.interval,
                      require_ready=plan.require_ready)
