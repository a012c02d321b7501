"""Rendering: the compose file, daemon.json, the apt source; secrets never in the compose file."""
from __future__ import annotations

import json

import yaml

from hermes_infra.plan import compose, daemon, envfile
from hermes_infra.plan.capacity import HostResources, derive_limits
from hermes_infra.settings.loading import settings_from_raw
from hermes_infra.settings.schema import GIB
from tests.unit.hostfakes import fresh, plan_for

SECRETS = {"OPENROUTER_API_KEY": "sk-or-v1-verysecretvalue", "TELEGRAM_BOT_TOKEN": "12345:telegram-secret"}


def two_profiles_with_hubs():
    return settings_from_raw({
        "gateways": [
            {"name": "hermes", "env": SECRETS, "api": {"key": "k3J9-vQ2x_Lm8pR4tZ7w-api"}},
            {"name": "coder", "api": {"port": 8643}, "limits": {"memory": "1G", "cpus": 1}},
        ],
        "companions": [
            {"name": "wechat-hub", "image": "hub:1.2", "secret_env": {"HUB_PASSWORD": "hub-password-secret"},
             "environment": {"LOG_LEVEL": "info"}, "ports": ["127.0.0.1:3000:3000"]},
            {"name": "inner-hub", "image": "hub:1.2", "gateway": "coder", "topology": "same-project"},
        ],
    })


def render_main(settings):
    limits = derive_limits(settings, HostResources(memory_bytes=4 * GIB, cpus=4))
    digests = {g.name: "digest-" + g.name for g in settings.gateways}
    services = compose.gateway_services(settings, limits, digests, "sha256:abc")
    services += [compose.companion_service(settings, c, "cdigest") for c in settings.companions
                 if c.topology == "same-project"]
    return compose.render_project(settings, "hermes", services)


def test_compose_is_valid_yaml_with_limits_and_bindings():
    settings = two_profiles_with_hubs()
    doc = yaml.safe_load(render_main(settings))
    hermes = doc["services"]["hermes"]
    assert hermes["image"] == settings.image.ref
    assert hermes["restart"] == "unless-stopped"
    assert hermes["command"] == ["gateway", "run"]
    assert hermes["volumes"] == ["/root/.hermes:/opt/data"]
    # the host-gateway hub talks to `hermes`, so it is published on loopback and the bridge
    assert hermes["ports"] == ["127.0.0.1:8642:8642", "172.17.0.1:8642:8642"]
    assert hermes["extra_hosts"] == ["host.docker.internal:host-gateway"]
    assert hermes["security_opt"] == ["no-new-privileges:true"]
    assert hermes["pids_limit"] == 1024
    assert hermes["logging"]["options"] == {"max-size": "10m", "max-file": "3"}
    assert "network_mode" not in hermes and "privileged" not in hermes
    coder = doc["services"]["hermes-coder"]
    assert coder["mem_limit"] == "1024m" and coder["cpus"] == 1
    assert coder["ports"] == ["127.0.0.1:8643:8642"]
    assert coder["volumes"] == ["/root/.hermes-coder:/opt/data"]
    # the explicit 1G leaves 3.5G - 1G for the other profile
    assert hermes["mem_limit"] == f"{int(2.5 * 1024)}m"


def test_same_project_companion_wiring():
    settings = two_profiles_with_hubs()
    hub = yaml.safe_load(render_main(settings))["services"]["inner-hub"]
    assert hub["environment"]["HERMES_API_BASE_URL"] == "http://hermes-coder:8642/v1"
    assert hub["environment"]["HERMES_MODEL"] == "hermes-agent"
    assert hub["environment"]["HERMES_TIMEOUT_MS"] == "120000"
    assert hub["env_file"] == ["/opt/hermes/companions/inner-hub.env"]
    assert hub["depends_on"] == ["hermes-coder"]


def test_host_gateway_companion_is_its_own_project():
    settings = two_profiles_with_hubs()
    companion = settings.companions[0]
    text = compose.render_project(settings, compose.project_name(companion),
                                  [compose.companion_service(settings, companion, "d")])
    doc = yaml.safe_load(text)
    assert doc["name"] == "hermes-wechat-hub"
    hub = doc["services"]["wechat-hub"]
    assert hub["extra_hosts"] == ["host.docker.internal:host-gateway"]
    assert hub["environment"]["HERMES_API_BASE_URL"] == "http://host.docker.internal:8642/v1"
    assert hub["environment"]["LOG_LEVEL"] == "info"
    assert hub["ports"] == ["127.0.0.1:3000:3000"]
    assert compose.compose_path(settings, companion) == "/opt/hermes/companions/wechat-hub/compose.yaml"


def test_no_secret_ever_lands_in_a_compose_file():
    settings = two_profiles_with_hubs()
    texts = [render_main(settings)]
    for companion in settings.companions:
        texts.append(compose.render_project(settings, "p", [compose.companion_service(settings, companion, "d")]))
    secrets = [*SECRETS.values(), "hub-password-secret", "k3J9-vQ2x_Lm8pR4tZ7w-api"]
    for text in texts:
        for secret in secrets:
            assert secret not in text


def test_companion_env_file_holds_the_gateway_key():
    settings = two_profiles_with_hubs()
    values = compose.companion_secret_env(settings, settings.companions[0], "the-gateway-key-123456")
    assert values == {"HUB_PASSWORD": "hub-password-secret", "HERMES_API_KEY": "the-gateway-key-123456"}
    assert envfile.parse(envfile.render(values)) == values


def test_ipv6_binding_is_bracketed():
    assert compose.port_binding("::1", 8642, 8642) == "[::1]:8642:8642"


def test_daemon_json_options():
    settings = settings_from_raw({"docker": {"registry_mirrors": ["https://mirror.example.com"],
                                             "daemon_options": {"userland-proxy": False}}})
    doc = json.loads(daemon.daemon_json_text(settings.docker))
    assert doc["registry-mirrors"] == ["https://mirror.example.com"]
    assert doc["userland-proxy"] is False and doc["live-restore"] is True


def test_official_source_is_deb822_with_signed_by():
    text = plan_for(settings_from_raw({}), fresh()).docker.sources.content
    assert "Types: deb\n" in text and "Suites: trixie\n" in text
    assert "Signed-By: /etc/apt/keyrings/docker.asc" in text
    assert "URIs: https://download.docker.com/linux/debian" in text


def test_version_pin_applies_to_engine_packages_only():
    packages = plan_for(settings_from_raw({"docker": {"version": "5:27.3.1-1"}}), fresh()).docker.packages
    assert "docker-ce=5:27.3.1-1" in packages and "docker-compose-plugin" in packages


def test_capabilities_are_dropped_for_gateways_and_companions():
    """F2: container root gets no MKNOD (device nodes of host disks in the data dir) and no NET_RAW."""
    settings = two_profiles_with_hubs()
    doc = yaml.safe_load(render_main(settings))
    for name in ("hermes", "hermes-coder"):
        service = doc["services"][name]
        assert service["cap_drop"] == ["ALL"]
        assert service["cap_add"] == ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID"]
    hub = doc["services"]["inner-hub"]
    assert {"MKNOD", "NET_RAW", "SYS_CHROOT", "AUDIT_WRITE", "SETFCAP", "SETPCAP"} <= set(hub["cap_drop"])
    assert "cap_add" not in hub
    separate = yaml.safe_load(compose.render_project(
        settings, "wechat-hub", [compose.companion_service(settings, settings.companions[0], "c")]))
    assert "MKNOD" in separate["services"]["wechat-hub"]["cap_drop"]
