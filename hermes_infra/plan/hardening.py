"""Container hardening the compose file applies, and that the checks expect.

CIS numbers are those of the CIS Docker Benchmark v1.6.0 (the numbering docker-bench-security
and the controls in :mod:`hermes_infra.checks` use).

The gateway's health check (CIS 5.27) must work in both images the toolkit runs: the official
one (Debian 13, s6-overlay, Python in a venv, curl not guaranteed) and the registry-free one
(Debian minbase + venv, no curl). Both have bash (Essential in Debian), so the probe is bash's
`/dev/tcp`: no curl, no Python start-up cost every 30 s, no `Origin` header (Hermes answers 403
to a foreign Origin, `/health` included). It runs inside the container, against the API's own
port, so it says whether the API server is up, independently of how the port is published.
"""
from __future__ import annotations

GATEWAY_API_PORT = 8642
"""The port the API server listens on inside the gateway container."""

GATEWAY_HEALTH_PROBE = (
    f"exec 3<>/dev/tcp/127.0.0.1/{GATEWAY_API_PORT} && "
    "printf 'GET /health HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && "
    "head -n1 <&3 | grep -q ' 200 '"
)
"""bash script: connect, send `GET /health` (HTTP/1.0, so the server closes the connection),
succeed only when the status line says 200. `\\r\\n` are printf escapes (backslash + letter
in the string), not control characters; there is no `$`, so compose interpolates nothing."""

GATEWAY_HEALTHCHECK: tuple[str, ...] = ("CMD", "bash", "-c", GATEWAY_HEALTH_PROBE)
"""compose `healthcheck.test` for a gateway (exec form: no `/bin/sh -c` wrapper, no shell
quoting). A tuple so nobody mutates the shared value: `list(GATEWAY_HEALTHCHECK)` for a Service."""

HEALTHCHECK_INTERVAL = "30s"
HEALTHCHECK_TIMEOUT = "10s"
HEALTHCHECK_RETRIES = 3
HEALTHCHECK_START_PERIOD = "60s"
# No `start_interval`: it needs Docker Engine 25 (API 1.44); Debian 12's docker.io is 20.10.

HEALTHCHECK_TIMING: dict[str, str | int] = {
    "interval": HEALTHCHECK_INTERVAL,
    "timeout": HEALTHCHECK_TIMEOUT,
    "retries": HEALTHCHECK_RETRIES,
    "start_period": HEALTHCHECK_START_PERIOD,
}
"""The compose `healthcheck` keys besides `test`, as templates/compose.yaml.j2 writes them
(a unit test keeps the template and these values equal)."""
