"""daemon.json (CIS daemon hardening) and the gateway health check the compose file carries."""
from __future__ import annotations

import http.server
import json
import shutil
import socket
import subprocess
import threading

import pytest
import yaml

from hermes_infra.plan import hardening
from hermes_infra.plan.compose import Service
from hermes_infra.plan.daemon import HARDENED_DEFAULTS, daemon_json, daemon_json_text
from hermes_infra.plan.render import render_template
from hermes_infra.settings.schema import DockerSettings


# ---------------------------------------------------------------------------- daemon.json
def test_defaults_rotate_logs_keep_containers_and_harden_the_daemon():
    assert daemon_json(DockerSettings()) == {
        "log-driver": "json-file",
        "log-opts": {"max-size": "10m", "max-file": "3"},
        "live-restore": True,
        "icc": False,
        "no-new-privileges": True,
    }


def test_mirrors_and_userland_proxy_only_when_set():
    options = daemon_json(DockerSettings(registry_mirrors=["https://mirror.example.com"], userland_proxy=False,
                                         live_restore=False, log_max_size="50m", log_max_file=5))
    assert options["registry-mirrors"] == ["https://mirror.example.com"]
    assert options["userland-proxy"] is False
    assert options["live-restore"] is False
    assert options["log-opts"] == {"max-size": "50m", "max-file": "5"}
    assert "userland-proxy" not in daemon_json(DockerSettings())
    assert "registry-mirrors" not in daemon_json(DockerSettings())


def test_daemon_options_override_everything_at_the_top_level():
    settings = DockerSettings(daemon_options={"icc": True, "log-opts": {"max-size": "1g"}, "data-root": "/srv/docker"})
    options = daemon_json(settings)
    assert options["icc"] is True                          # an operator may turn an item off on purpose
    assert options["no-new-privileges"] is True
    assert options["log-opts"] == {"max-size": "1g"}        # replaced, not merged (top-level keys win)
    assert options["data-root"] == "/srv/docker"
    options["log-opts"]["max-size"] = "changed"
    assert settings.daemon_options["log-opts"] == {"max-size": "1g"}  # a copy: settings are not aliased
    before = dict(HARDENED_DEFAULTS)
    daemon_json(DockerSettings())["icc"] = True
    assert before == HARDENED_DEFAULTS


def test_text_is_stable_sorted_json_with_a_final_newline():
    settings = DockerSettings(registry_mirrors=["https://m.example.com"])
    text = daemon_json_text(settings)
    assert text.endswith("}\n") and not text.endswith("\n\n")
    assert json.loads(text) == daemon_json(settings)
    assert text == json.dumps(daemon_json(settings), indent=2, sort_keys=True) + "\n"
    keys = [line.split('"')[1] for line in text.splitlines() if line.startswith('  "')]
    assert keys == sorted(keys)
    assert daemon_json_text(settings) == text


# ----------------------------------------------------------------- health check (CIS 5.27)
def test_health_check_is_exec_form_bash_without_curl_or_interpolation():
    check = hardening.GATEWAY_HEALTHCHECK
    assert isinstance(check, tuple) and check[:3] == ("CMD", "bash", "-c")
    probe = check[3]
    assert "/dev/tcp/127.0.0.1/8642" in probe and "GET /health HTTP/1.0" in probe
    assert "curl" not in probe and "python" not in probe and "Origin" not in probe
    assert "$" not in probe  # compose would interpolate it
    assert "\r" not in probe and "\n" not in probe and "\\r\\n" in probe  # printf escapes, not control chars
    assert hardening.HEALTHCHECK_TIMING == {"interval": "30s", "timeout": "10s", "retries": 3, "start_period": "60s"}


def service(**overrides) -> Service:
    values = {"name": "hermes", "image": "hermes:1", "restart": "unless-stopped", "memory": "1024m", "cpus": 1.0,
              "pids": 1024, "labels": {"io.hermes-infra.profile": "hermes"}}
    values.update(overrides)
    return Service(**values)


def render(*services: Service) -> dict:
    text = render_template("compose.yaml.j2", project="hermes", services=list(services), log_max_size="10m",
                           log_max_file=3)
    return yaml.safe_load(text)


def test_template_renders_the_health_check_for_services_that_have_one():
    doc = render(service(healthcheck=list(hardening.GATEWAY_HEALTHCHECK), stop_grace_seconds=60),
                 service(name="hub", stop_grace_seconds=20))
    gateway, hub = doc["services"]["hermes"], doc["services"]["hub"]
    assert gateway["healthcheck"] == {"test": list(hardening.GATEWAY_HEALTHCHECK), **hardening.HEALTHCHECK_TIMING}
    assert "start_interval" not in gateway["healthcheck"]  # needs Docker Engine 25; Debian 12 ships 20.10
    assert "healthcheck" not in hub
    assert (gateway["stop_grace_period"], hub["stop_grace_period"]) == ("60s", "20s")


def test_a_dollar_in_a_health_check_survives_compose_interpolation():
    doc = render(service(healthcheck=["CMD-SHELL", "test -n \"$HOME\""]))
    # compose turns `$$` back into `$`; a single `$` would be replaced by the host's variable
    assert doc["services"]["hermes"]["healthcheck"]["test"] == ["CMD-SHELL", "test -n \"$$HOME\""]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize(("code", "healthy"), [(200, True), (500, False), (403, False), (None, False)])
def test_the_probe_itself_against_a_local_server(code, healthy):
    """The exact probe, pointed at a local port: exit 0 only for a 200 status line."""
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append((self.path, self.headers.get("Origin")))
            self.send_response(code)
            self.end_headers()
            self.wfile.write(b'{"status": "ok"}')

        def log_message(self, *args):
            pass

    port = free_port()
    server = None
    if code is not None:
        server = http.server.HTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        probe = hardening.GATEWAY_HEALTH_PROBE.replace("/8642", f"/{port}")
        done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=15, check=False)
        assert (done.returncode == 0) is healthy, done.stderr
        if code is not None:
            assert seen == [("/health", None)]  # no Origin header: Hermes answers 403 to a foreign one
    finally:
        if server is not None:
            server.shutdown()
