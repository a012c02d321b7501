"""One test per validation rule: bad input is refused with the setting, the value and the fix."""
from __future__ import annotations

import pytest

from hermes_infra.plan import daemon
from hermes_infra.settings import topology
from hermes_infra.plan.capacity import HostResources, derive_limits
from hermes_infra.settings.loading import SettingsError, collect, settings_from_raw
from hermes_infra.settings.schema import GIB, HostSettings, publish_addresses


def refused(raw: dict) -> str:
    with pytest.raises(SettingsError) as caught:
        settings_from_raw(raw)
    return str(caught.value)


def test_defaults_are_valid_and_follow_the_guides():
    settings = settings_from_raw({})
    gateway = settings.gateways[0]
    assert gateway.host_data_dir == "/root/.hermes"
    assert (gateway.uid, gateway.gid) == (10000, 10000)
    assert gateway.restart == "unless-stopped"
    assert gateway.api.port == 8642
    assert publish_addresses(settings, gateway) == ["127.0.0.1"]
    assert settings.image.ref == "nousresearch/hermes-agent:0.23.5"
    assert (settings.backup_keep, settings.apt_lock_timeout_seconds, gateway.stop_grace_seconds) == (5, 600, 60)
    assert daemon.daemon_json(settings.docker)["live-restore"] is True
    assert daemon.daemon_json(settings.docker)["log-opts"] == {"max-size": "10m", "max-file": "3"}


def test_short_api_key_is_refused_without_echoing_it():
    message = refused({"gateways": [{"api": {"key": "tooshort-secret"}}]})
    assert "gateways[0].api.key" in message and "at least 16" in message
    assert "tooshort-secret" not in message


@pytest.mark.parametrize("key", ["your-api-key-goes-here", "CHANGEME-CHANGEME-123", "x" * 32, "abababababababababab"])
def test_placeholder_api_key_is_refused(key):
    message = refused({"gateways": [{"api": {"key": key}}]})
    assert "gateways[0].api.key" in message and "placeholder" in message
    assert key not in message


def test_random_api_key_is_accepted():
    assert settings_from_raw({"gateways": [{"api": {"key": "k3J9-vQ2x_Lm8pR4tZ7w"}}]})


def test_latest_image_is_refused_with_the_fix():
    message = refused({"image": {"ref": "nousresearch/hermes-agent:latest"}})
    assert "image" in message and "pin a tag" in message


def test_untagged_image_is_refused():
    assert "not pinned" in refused({"image": {"ref": "nousresearch/hermes-agent"}})


def test_latest_allowed_when_asked():
    settings = settings_from_raw({"image": {"ref": "x/y:latest", "allow_latest": True}})
    assert settings.image.ref == "x/y:latest"


def test_archive_source_needs_an_archive():
    assert "image.archive" in refused({"image": {"source": "archive"}})


def test_bad_swap_size():
    message = refused({"swap": {"size": "lots"}})
    assert "swap.size" in message and "'lots'" in message and "4G" in message


def test_swap_zero_is_allowed():
    assert settings_from_raw({"swap": {"size": "0"}}).swap.size_bytes == 0


def test_swappiness_range():
    assert "swap.swappiness" in refused({"swap": {"swappiness": 150}})


def test_unknown_setting_is_refused():
    message = refused({"swap": {"sise": "4G"}})
    assert "swap.sise" in message and "unknown setting" in message and "did you mean 'size'" in message


def test_unknown_top_level_name_is_refused():
    message = refused(collect([{"gatways": [{"name": "coder"}], "ssh_user": "root", "_x": 1}]))
    assert "gatways" in message and "did you mean 'gateways'" in message


def test_unsafe_profile_name():
    message = refused({"gateways": [{"name": "My Bot/../x"}]})
    assert "gateways[0].name" in message and "lowercase" in message


def test_duplicate_profile_names():
    assert "used twice" in refused({"gateways": [{"name": "a"}, {"name": "a", "api": {"port": 8643}}]})


def test_two_profiles_on_one_port():
    message = refused({"gateways": [{"name": "a"}, {"name": "b"}]})
    assert "gateways[b].api.port is 8642" in message and "already used" in message


def test_two_profiles_sharing_a_bot_token():
    token = {"TELEGRAM_BOT_TOKEN": "123456:abcdefghijklmnop"}
    message = refused({"gateways": [{"name": "a", "env": token}, {"name": "b", "api": {"port": 8643}, "env": token}]})
    assert "TELEGRAM_BOT_TOKEN" in message and "bot token" in message
    assert "abcdefghijklmnop" not in message


def test_two_profiles_sharing_a_weixin_token():
    weixin = {"token": "wx-token-value-123", "account_id": "acc1"}
    message = refused({"gateways": [{"name": "a", "weixin": weixin},
                                    {"name": "b", "api": {"port": 8643}, "weixin": weixin}]})
    assert "WEIXIN" in message


def test_two_profiles_sharing_a_data_dir():
    message = refused({"gateways": [{"name": "a", "data_dir": "/srv/h"},
                                    {"name": "b", "api": {"port": 8643}, "data_dir": "/srv/h"}]})
    assert "data dir" in message


def test_public_api_needs_allow_public():
    message = refused({"gateways": [{"api": {"publish_addresses": ["0.0.0.0"]}}]})
    assert "0.0.0.0" in message and "allow_public" in message
    assert settings_from_raw({"gateways": [{"api": {"publish_addresses": ["0.0.0.0"], "allow_public": True}}]})


def test_companion_via_host_gateway_cannot_use_loopback_only():
    message = refused({
        "gateways": [{"api": {"publish_addresses": ["127.0.0.1"]}}],
        "companions": [{"name": "hub", "image": "hub:1.0"}],
    })
    assert "host.docker.internal" in message and "172.17.0.1" in message


def test_companion_via_host_gateway_gets_bridge_address_by_default():
    settings = settings_from_raw({"companions": [{"name": "hub", "image": "hub:1.0"}]})
    assert publish_addresses(settings, settings.gateways[0]) == ["127.0.0.1", "172.17.0.1"]
    assert topology.companion_api_url(settings, settings.companions[0]) == "http://host.docker.internal:8642/v1"


def test_same_project_companion_uses_service_name():
    settings = settings_from_raw({"companions": [{"name": "hub", "image": "hub:1.0", "topology": "same-project"}]})
    assert publish_addresses(settings, settings.gateways[0]) == ["127.0.0.1"]
    assert topology.companion_api_url(settings, settings.companions[0]) == "http://hermes:8642/v1"


def test_companion_for_unknown_gateway():
    assert "not a profile" in refused({"companions": [{"name": "hub", "image": "h:1", "gateway": "nope"}]})


def test_companion_port_without_address():
    assert "every interface" in refused({"companions": [{"name": "hub", "image": "h:1", "ports": ["3000:3000"]}]})


def test_weixin_open_policy_needs_allow_all():
    assert "allow_all_users" in refused({"gateways": [{"weixin": {"dm_policy": "open"}}]})


def test_weixin_allowlist_needs_users():
    assert "allowed_users" in refused({"gateways": [{"weixin": {"dm_policy": "allowlist"}}]})


def test_unknown_allowlist_platform():
    assert "unknown platform" in refused({"gateways": [{"allowed_users": {"myspace": ["1"]}}]})


def test_api_key_through_env_is_refused():
    assert "api.key" in refused({"gateways": [{"env": {"API_SERVER_KEY": "x" * 32}}]})


def test_env_value_with_newline():
    message = refused({"gateways": [{"env": {"A_KEY": "one\ntwo"}}]})
    assert "gateways[0].env.A_KEY" in message and "newline" in message and "two" not in message


def test_dashboard_exposed_without_auth():
    message = refused({"gateways": [{"dashboard": {"enabled": True, "publish_address": "0.0.0.0"}}]})
    assert "basic auth" in message


def test_registry_mirror_must_be_url():
    assert "registry mirror" in refused({"docker": {"registry_mirrors": ["mirror.local"]}})


def test_bad_memory_limit():
    assert "limits.memory" in refused({"gateways": [{"limits": {"memory": "100M"}}]})


def test_limits_derived_like_the_guide():
    limits = derive_limits(HostSettings(), HostResources(memory_bytes=4 * GIB, cpus=4))["hermes"]
    assert limits.memory_bytes == int(3.5 * GIB)
    assert limits.cpus == 2.5


def test_explicit_limits_above_the_host_are_refused():
    settings = settings_from_raw({"gateways": [{"limits": {"memory": "8G"}}]})
    with pytest.raises(ValueError, match="only 4G of RAM"):
        derive_limits(settings, HostResources(memory_bytes=4 * GIB, cpus=4))
    settings = settings_from_raw({"gateways": [{"limits": {"cpus": 6}}]})
    with pytest.raises(ValueError, match="only 4 CPUs"):
        derive_limits(settings, HostResources(memory_bytes=4 * GIB, cpus=4))


def test_sum_of_profile_memory_above_host_is_refused():
    settings = settings_from_raw({"gateways": [
        {"name": "a", "limits": {"memory": "3G"}},
        {"name": "b", "api": {"port": 8643}, "limits": {"memory": "3G"}},
    ]})
    with pytest.raises(ValueError, match="add up to 6G"):
        derive_limits(settings, HostResources(memory_bytes=4 * GIB, cpus=4))


def test_derived_limits_split_between_profiles():
    settings = settings_from_raw({"gateways": [{"name": "a"}, {"name": "b", "api": {"port": 8643}}]})
    limits = derive_limits(settings, HostResources(memory_bytes=4 * GIB, cpus=4))
    assert limits["a"].memory_bytes + limits["b"].memory_bytes <= int(3.5 * GIB)
    assert limits["a"].cpus == limits["b"].cpus == 1.25


def test_layers_merge_key_by_key():
    raw = collect([{"swap": {"size": "2G", "swappiness": 10}}, {"swap": {"size": "4G"}},
                   {"docker": '{"install_source": "distro"}'}])
    assert raw == {"swap": {"size": "4G", "swappiness": 10}, "docker": {"install_source": "distro"}}
