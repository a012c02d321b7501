"""Every setting is validated before any connection: the message names the setting's path,
the value (never a secret) and the fix. One test (or parameter set) per rule."""
from __future__ import annotations

import json

import pytest

from hermes_infra import commands
from hermes_infra.settings import schema as settings_module
from hermes_infra.settings.loading import (
    SettingsError,
    collect,
    host_data_layers,
    pyinfra_data_names,
    settings_for_host,
    settings_from_raw,
)
from hermes_infra.settings.schema import (
    DEFAULT_IMAGE,
    HostSettings,
    check_api_key,
    parse_image_reference,
    parse_port_spec,
)

DIGEST = "sha256:" + "0123456789abcdef" * 4


def refused(raw: dict, **kwargs) -> str:
    with pytest.raises(SettingsError) as caught:
        settings_from_raw(collect([raw]), **kwargs)
    message = str(caught.value)
    assert "Fix" in message, message
    return message


def accepted(raw: dict, **kwargs) -> HostSettings:
    return settings_from_raw(collect([raw]), **kwargs)


def two(first: dict, second: dict) -> dict:
    """Two profiles on their own ports (so only the rule under test can fail)."""
    return {"gateways": [{"name": "a", **first}, {"name": "b", "api": {"port": 8643}, **second}]}


# ----------------------------------------------------------------------------- unknown names
@pytest.mark.parametrize("raw, where, suggestion", [
    ({"gateways": [{"limts": {"memory": "1G"}}]}, "gateways[0].limts", "limits"),
    ({"gateways": [{"api": {"prot": 8643}}]}, "gateways[0].api.prot", "port"),
    ({"swap": {"sise": "4G"}}, "swap.sise", "size"),
    ({"docker": {"log_max_sise": "10m"}}, "docker.log_max_sise", "log_max_size"),
    ({"companions": [{"name": "hub", "image": "h:1", "enviroment": {}}]}, "companions[0].enviroment", "environment"),
    ({"gateways": [{"weixin": {"dm_polcy": "open"}}]}, "gateways[0].weixin.dm_polcy", "dm_policy"),
    ({"gatways": [{"name": "x"}]}, "gatways", "gateways"),
    ({"Swap": {"size": "1G"}}, "Swap", "swap"),
    ({"ssh_prot": 2222}, "ssh_prot", "ssh_port"),
])
def test_unknown_names_are_refused_with_did_you_mean(raw, where, suggestion):
    message = refused(raw)
    assert f"{where}: unknown setting; did you mean {suggestion!r}?" in message


def test_unknown_name_without_a_close_match_lists_the_settings():
    message = refused({"gateways": [{"zzzzzz": 1}]})
    assert "gateways[0].zzzzzz: unknown setting. Fix" in message and "data_dir" in message


def test_top_level_typo_in_group_data_is_not_silently_ignored():
    # a typo used to deploy the defaults
    message = refused({"gatways": [{"name": "coder"}], "swap": {"size": "1G"}})
    assert "gatways" in message and "extra_data_names" in message


def test_pyinfra_own_names_and_underscore_names_are_accepted():
    names = pyinfra_data_names()
    for name in ("ssh_port", "ssh_user", "ssh_key", "ssh_known_hosts_file", "ssh_strict_host_key_checking",
                 "ssh_hostname", "ssh_allow_agent", "ssh_look_for_keys", "_sudo", "_sudo_user", "_su_user",
                 "docker_identifier", "chroot_directory"):
        assert name in names
    raw = collect([{"ssh_user": "root", "ssh_key": "/k", "_sudo": True, "_my_helper": 3, "swap": {"size": "1G"}},
                   {"ssh_strict_host_key_checking": "yes", "ssh_port": 2222}])
    settings = settings_from_raw(raw)
    assert settings.swap.size == "1G"


def test_local_vm_data_names_are_accepted():
    from pathlib import Path

    from hermes_infra.localvm.ssh import SSHConnection

    for known_hosts in (None, Path("/k/known_hosts")):
        data = SSHConnection(port=2222, key_path=Path("/k/id"), known_hosts=known_hosts).pyinfra_data()
        assert accepted(data).gateways[0].name == "hermes"


def test_extra_data_names_is_the_escape_hatch():
    assert "my_app_config" in refused({"my_app_config": {"x": 1}})
    settings = accepted({"my_app_config": {"x": 1}, "extra_data_names": ["my_app_config"]})
    assert settings.extra_data_names == ["my_app_config"]
    # from a lower layer, as JSON from --data, too
    raw = collect([{"extra_data_names": ["my_app_config"]}, {"my_app_config": 1}])
    assert settings_from_raw(raw)
    raw = collect([{"extra_data_names": '["my_app_config"]'}, {"my_app_config": 1}])
    assert settings_from_raw(raw)


def test_functions_and_modules_in_group_data_are_not_settings():
    import os

    def helper():
        return 1

    assert accepted({"helper": helper, "os_module": os, "swap": {"size": "1G"}})


def test_inventory_with_pyinfra_keys_and_a_typo(tmp_path):
    (tmp_path / "group_data").mkdir()
    (tmp_path / "group_data" / "all.py").write_text(
        'import os\nswap = {"size": "2G", "swappiness": 5}\nssh_user = "deploy"\n_private = 1\n')
    (tmp_path / "group_data" / "web.py").write_text('swap = {"swappiness": 20}\nssh_port = 2200\n')
    (tmp_path / "group_data" / "eu.py").write_text('swap = {"size": "3G"}\n')
    (tmp_path / "inv.py").write_text('web = [("a", {"ssh_hostname": "192.0.2.1"})]\neu = ["a"]\n')
    target = commands.Target(str(tmp_path / "inv.py"), data={"docker": '{"install_source": "distro"}'},
                             cwd=str(tmp_path))
    [host] = commands.load_inventory(target)
    settings = settings_for_host(host)
    # each group is its own layer: the two groups' swap dicts merge key by key
    assert (settings.swap.size, settings.swap.swappiness) == ("3G", 20)
    assert settings.docker.install_source == "distro"
    layers = host_data_layers(host)
    assert any(layer.get("ssh_port") == 2200 for layer in layers)

    # pyinfra caches group data files by name: a second inventory in its own directory
    other = tmp_path / "other"
    (other / "group_data").mkdir(parents=True)
    (other / "group_data" / "eu.py").write_text('gatways = [{"name": "coder"}]\nssh_user = "root"\n')
    (other / "inv.py").write_text('eu = [("a", {"ssh_hostname": "192.0.2.1"})]\n')
    [host] = commands.load_inventory(commands.Target(str(other / "inv.py"), cwd=str(other)))
    with pytest.raises(SettingsError, match=r"gatways: unknown setting; did you mean 'gateways'"):
        settings_for_host(host)


def test_override_data_with_ssh_settings_is_accepted(tmp_path):
    target = commands.Target("root@192.0.2.7", port=2222, key="/k", data={"swap": '{"size": "4G"}'},
                             cwd=str(tmp_path))
    [host] = commands.load_inventory(target)
    settings = settings_for_host(host)
    assert settings.swap.size == "4G"


# ----------------------------------------------------------------------------- paths
@pytest.mark.parametrize("given, stored", [
    ("/root/.hermes/", "/root/.hermes"),
    ("/root//.hermes", "/root/.hermes"),
    ("//root/.hermes", "/root/.hermes"),
    ("/root/./.hermes/.", "/root/.hermes"),
    ("/srv/hermes/coder", "/srv/hermes/coder"),
    ("/home/bot/hermes", "/home/bot/hermes"),
    ("/var/lib/hermes", "/var/lib/hermes"),
])
def test_data_dirs_are_normalized(given, stored):
    gateway = accepted({"gateways": [{"data_dir": given}]}).gateways[0]
    assert gateway.data_dir == stored and gateway.host_data_dir == stored


def test_normalized_data_dirs_compare_equal():
    message = refused(two({"data_dir": "/root/.hermes/"}, {"data_dir": "/root/.hermes"}))
    assert "data dir '/root/.hermes' is used by two profiles" in message


@pytest.mark.parametrize("given, words", [
    ("data", "Docker named volume"),
    ("~/.hermes", "Docker named volume"),
    ("./hermes", "Docker named volume"),
    ("/", "root directory"),
    ("/root/..", "'..'"),
    ("/etc", "/etc"),
    ("/etc/hermes", "under /etc"),
    ("/usr/local/hermes", "under /usr"),
    ("/proc/1", "under /proc"),
    ("/sys/x", "under /sys"),
    ("/dev/hermes", "under /dev"),
    ("/run/hermes", "under /run"),
    ("/boot/hermes", "under /boot"),
    ("/var/lib/docker", "/var/lib/docker"),
    ("/var/lib/docker/volumes/x", "under /var/lib/docker"),
    ("/var/lib", "outside where a data dir may live"),
    ("/var", "outside where a data dir may live"),
    ("/root", "outside where a data dir may live"),
    ("/root/", "outside where a data dir may live"),
    ("/home", "outside where a data dir may live"),
    ("/opt", "outside where a data dir may live"),
    ("/srv", "outside where a data dir may live"),
    ("/bin", "is /bin"),
    ("/lib64", "under /lib64"),
    ("/tmp", "is /tmp"),
    ("/tmp/hermes", "world-writable /tmp"),
    ("/var/tmp/hermes", "world-writable /var/tmp"),
    ("/dev/shm/hermes", "under /dev"),
    ("/root/.hermes:rw", "':'"),
    ("/root/.her\nmes", "newline"),
])
def test_bad_data_dirs_are_refused(given, words):
    message = refused({"gateways": [{"data_dir": given}]})
    assert "gateways[0].data_dir" in message and words in message


def test_world_writable_rule_holds_for_data_dirs_only_and_dev_shm():
    message = refused({"gateways": [{"data_dir": "/dev/shm/h"}]})
    assert "/dev" in message


def test_nested_data_dirs_are_refused_in_both_directions():
    message = refused(two({"data_dir": "/srv/hermes"}, {"data_dir": "/srv/hermes/b"}))
    assert "gateways[b].data_dir '/srv/hermes/b' is inside gateways[a].data_dir '/srv/hermes'" in message
    message = refused(two({"data_dir": "/srv/hermes/a"}, {"data_dir": "/srv/hermes"}))
    assert "gateways[a].data_dir '/srv/hermes/a' is inside gateways[b].data_dir '/srv/hermes'" in message
    # a derived default counts too
    message = refused({"gateways": [{"name": "hermes"}, {"name": "b", "api": {"port": 8643},
                                                         "data_dir": "/root/.hermes/profiles/b"}]})
    assert "inside gateways[hermes].data_dir (default /root/.hermes)" in message
    # a shared prefix is not nesting
    assert accepted(two({"data_dir": "/srv/hermes"}, {"data_dir": "/srv/hermes-b"}))


@pytest.mark.parametrize("setting, value, relation", [
    ("project_dir", "/root/.hermes", "is gateways[hermes].data_dir"),
    ("project_dir", "/root/.hermes/compose", "is inside"),
    ("backup_dir", "/root/.hermes/backups", "is inside"),
    ("backup_dir", "/root", "outside where the backup directory may live"),
    ("project_dir", "/srv/all", "contains"),
])
def test_owned_dirs_stay_out_of_data_dirs(setting, value, relation):
    raw = {setting: value}
    if relation == "contains":
        raw["gateways"] = [{"data_dir": "/srv/all/hermes"}]
    message = refused(raw)
    assert setting in message and relation in message


def test_remote_cache_dir_is_checked_and_normalized():
    assert accepted({"image": {"remote_cache_dir": "/var/cache/hermes-infra/images/"}}).image.remote_cache_dir == \
        "/var/cache/hermes-infra/images"
    message = refused({"image": {"remote_cache_dir": "/var/lib/docker/tmp"}})
    assert "image.remote_cache_dir" in message and "/var/lib/docker" in message
    message = refused({"image": {"remote_cache_dir": "cache"}})
    assert "image.remote_cache_dir" in message and "absolute" in message


def test_project_and_backup_dirs_are_normalized():
    settings = accepted({"project_dir": "/opt/hermes/", "backup_dir": "/var/backups//hermes-infra"})
    assert (settings.project_dir, settings.backup_dir) == ("/opt/hermes", "/var/backups/hermes-infra")
    assert "project_dir" in refused({"project_dir": "opt/hermes"})
    assert "backup_dir" in refused({"backup_dir": "/etc/backups"})


@pytest.mark.parametrize("given, words", [
    ("swapfile", "not an absolute path"),
    ("/swap/", "looks like a directory"),
    ("/var/lib", "outside where the swap file may live"),
    ("/srv/.", "looks like a directory"),
    ("/", "looks like a directory"),
    ("/etc", "is /etc"),
    ("/tmp/swapfile", "under /tmp"),
    ("/proc/swap", "under /proc"),
    ("/sys/swap", "under /sys"),
    ("/dev/swap", "under /dev"),
    ("/run/swap", "under /run"),
])
def test_bad_swap_paths(given, words):
    message = refused({"swap": {"path": given}})
    assert "swap.path" in message and words in message


def test_swap_path_is_normalized():
    assert accepted({"swap": {"path": "//var//swapfile"}}).swap.path == "/var/swapfile"
    assert accepted({}).swap.path == "/swapfile"


# ----------------------------------------------------------------------------- control characters
@pytest.mark.parametrize("raw, where", [
    ({"gateways": [{"api": {"model_name": "model\nX=1"}}]}, "gateways[0].api.model_name"),
    ({"gateways": [{"api": {"cors_origins": ["https://a", "https://b\r"]}}]}, "gateways[0].api.cors_origins[1]"),
    ({"gateways": [{"weixin": {"account_id": "acc\n"}}]}, "gateways[0].weixin.account_id"),
    ({"gateways": [{"weixin": {"home_channel": "ch\t1"}}]}, "gateways[0].weixin.home_channel"),
    ({"gateways": [{"weixin": {"dm_policy": "allowlist", "allowed_users": ["u1", "u\x00"]}}]},
     "gateways[0].weixin.allowed_users[1]"),
    ({"gateways": [{"allowed_users": {"TELEGRAM": ["1", "2\n3"]}}]}, "gateways[0].allowed_users.TELEGRAM[1]"),
    ({"gateways": [{"env": {"OPENAI_API_KEY": "sk\x7f"}}]}, "gateways[0].env.OPENAI_API_KEY"),
    ({"gateways": [{"dashboard": {"basic_auth_username": "admin\n"}}]}, "gateways[0].dashboard.basic_auth_username"),
    ({"gateways": [{"timezone": "Etc/UTC\n"}]}, "gateways[0].timezone"),
    ({"companions": [{"name": "hub", "image": "h:1", "environment": {"A": "1\n2"}}]}, "companions[0].environment.A"),
    ({"companions": [{"name": "hub", "image": "h:1", "secret_env": {"A": "s\ns"}}]}, "companions[0].secret_env.A"),
    ({"companions": [{"name": "hub", "image": "h:1", "ports": ["127.0.0.1:3000:3000\n"]}]}, "companions[0].ports[0]"),
    ({"companions": [{"name": "hub", "image": "h:1", "volumes": ["/a:/b\n"]}]}, "companions[0].volumes[0]"),
    ({"companions": [{"name": "hub", "image": "h:1", "command": ["run", "x\ny"]}]}, "companions[0].command[1]"),
    ({"companions": [{"name": "hub", "image": "h:1", "entrypoint": ["\x1b[31m"]}]}, "companions[0].entrypoint[0]"),
])
def test_control_characters_are_refused_everywhere(raw, where):
    message = refused(raw)
    assert f"{where}:" in message and ("control character" in message or "contains" in message)


def test_control_characters_in_secrets_are_refused_without_echo():
    for raw in ({"gateways": [{"env": {"TOKEN_X": "sekrit-one\nsekrit-two"}}]},
                {"gateways": [{"weixin": {"token": "sekrit-one\nsekrit-two"}}]},
                {"gateways": [{"dashboard": {"basic_auth_password_hash": "sekrit-one\nsekrit-two"}}]},
                {"companions": [{"name": "hub", "image": "h:1", "secret_env": {"X": "sekrit-one\nsekrit-two"}}]}):
        message = refused(raw)
        assert "newline" in message and "sekrit" not in message


@pytest.mark.parametrize("raw, where, name", [
    ({"gateways": [{"env": {"bad key": "v"}}]}, "gateways[0].env", "'bad key'"),
    ({"gateways": [{"env": {"1ST": "v"}}]}, "gateways[0].env", "'1ST'"),
    ({"gateways": [{"env": {"A-B": "v"}}]}, "gateways[0].env", "'A-B'"),
    ({"companions": [{"name": "hub", "image": "h:1", "environment": {"X=Y": "1"}}]}, "companions[0].environment",
     "'X=Y'"),
    ({"companions": [{"name": "hub", "image": "h:1", "secret_env": {"A B": "1"}}]}, "companions[0].secret_env",
     "'A B'"),
    ({"companions": [{"name": "hub", "image": "h:1", "api_key_env": "HUB KEY"}]}, "companions[0].api_key_env",
     "'HUB KEY'"),
    ({"companions": [{"name": "hub", "image": "h:1", "model_env": "9MODEL"}]}, "companions[0].model_env", "'9MODEL'"),
    ({"companions": [{"name": "hub", "image": "h:1", "api_base_url_env": "URL\n"}]},
     "companions[0].api_base_url_env", "'URL\\n'"),
])
def test_variable_names_are_checked(raw, where, name):
    message = refused(raw)
    assert f"{where}: {name} is not a valid variable name" in message


def test_good_text_values_pass():
    settings = accepted({
        "gateways": [{"api": {"model_name": "hermes 3 (beta)", "cors_origins": ["https://app.example.com"]},
                      "env": {"OPENROUTER_API_KEY": "sk-or-v1-abc def", "_PRIVATE": "x"},
                      "allowed_users": {"telegram": ["123"]}, "timezone": "Asia/Shanghai",
                      "weixin": {"account_id": "wx_1", "home_channel": "u@im.wechat"}}],
        "companions": [{"name": "hub", "image": "example/wechat-hub:1.4.2", "environment": {"LOG_LEVEL": "debug"},
                        "secret_env": {"HUB_TOKEN": "tok en"}, "command": ["--port", "3000"]}],
    })
    assert settings.gateways[0].allowed_users == {"TELEGRAM": ["123"]}


@pytest.mark.parametrize("key, words", [
    ("abcdefgh ijklmnopqrs", "whitespace"),
    ("abcdefghijklmnopqrs\t", "whitespace"),
    ("abcdefghijklmnopqrs\x01", "control character"),
    ("abcdefgh'ijklmnopqrs", "quote"),
    ('abcdefgh"ijklmnopqrs', "quote"),
    ("abcdefgh#ijklmnopqrs", "'#'"),
    ("abcdefgh\\ijklmnopqrs", "'\\'"),
    ("abcdefgh$ijklmnopqrs", "'$'"),
])
def test_api_key_must_be_canonical_in_a_dotenv_line(key, words):
    message = refused({"gateways": [{"api": {"key": key}}]})
    assert "gateways[0].api.key" in message and words in message
    assert "ijklmnop" not in message and "abcdefgh" not in message
    with pytest.raises(ValueError) as caught:
        check_api_key(key, "API_SERVER_KEY on the host")
    assert "ijklmnop" not in str(caught.value)


def test_good_api_keys_pass():
    for key in ("k3J9-vQ2x_Lm8pR4tZ7w", "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6", "Zm9vYmFy.cXV4LWJheg~~"):
        assert accepted({"gateways": [{"api": {"key": key}}]}).gateways[0].api.key.get_secret_value() == key


# ----------------------------------------------------------------------------- image references
@pytest.mark.parametrize("ref", [
    DEFAULT_IMAGE,
    "nousresearch/hermes-agent:0.23.3",
    f"nousresearch/hermes-agent@{DIGEST}",
    f"nousresearch/hermes-agent:latest@{DIGEST}",
    f"nousresearch/hermes-agent:0.23.3@{DIGEST}",
    "hermes-agent:0.19.0-local",
    "mirror.example.com:5000/nousresearch/hermes-agent:0.23.3",
    "localhost:5000/hermes:1",
    "registry.example.com/a/b/c:v1.2_3",
    "a__b/c--d.e:X_y",
])
def test_good_image_references_pass(ref):
    assert accepted({"image": {"ref": ref}}).image.ref == ref


@pytest.mark.parametrize("ref, hint", [
    ("NousResearch/hermes-agent:0.23.3", "lowercase"),
    ("nousresearch/Hermes-Agent:1", "lowercase"),
    ("https://docker.io/nousresearch/hermes-agent:1", "no URL scheme"),
    ("nousresearch/hermes-agent:1 ", "no whitespace"),
    ("nousresearch/hermes-agent@sha256:abc", "64 lowercase hex"),
    ("nousresearch//hermes-agent:1", "not a valid image reference"),
    ("nousresearch/hermes-agent:", "not a valid image reference"),
    ("nousresearch/hermes-agent:.1", "not a valid image reference"),
    ("-x/y:1", "not a valid image reference"),
    ("x/y:" + "a" * 129, "not a valid image reference"),
    ("", "not a valid image reference"),
])
def test_malformed_image_references_are_refused(ref, hint):
    message = refused({"image": {"ref": ref}})
    assert "image.ref" in message and hint in message
    message = refused({"companions": [{"name": "hub", "image": ref}]})
    assert "companions[0].image" in message and hint in message


@pytest.mark.parametrize("ref, why", [
    ("nousresearch/hermes-agent", "no tag and no digest"),
    ("nousresearch/hermes-agent:latest", "moving tag 'latest'"),
    ("nousresearch/hermes-agent:stable", "moving tag 'stable'"),
    ("nousresearch/hermes-agent:main", "moving tag 'main'"),
])
def test_unpinned_images_are_refused_unless_allowed(ref, why):
    message = refused({"image": {"ref": ref}})
    assert "image.ref" in message and "not pinned" in message and why in message
    assert "nousresearch/hermes-agent:0.23.5" in message and "@sha256:" in message
    assert accepted({"image": {"ref": ref, "allow_latest": True}}).image.ref == ref
    message = refused({"companions": [{"name": "hub", "image": ref.replace("nousresearch/hermes-agent", "ex/hub")}]})
    assert "companions[hub].image" in message and "not pinned" in message and "ex/hub:<version>" in message
    assert accepted({"image": {"allow_latest": True}, "companions": [{"name": "hub", "image": "ex/hub:latest"}]})


def test_digest_counts_as_pinned():
    assert parse_image_reference(f"x/y:latest@{DIGEST}").pinned
    assert parse_image_reference("x/y:1.2.3").pinned
    assert not parse_image_reference("x/y").pinned
    assert accepted({"companions": [{"name": "hub", "image": f"ex/hub@{DIGEST}"}]})


def test_default_image_is_upstream_semver_tag():
    assert HostSettings().image.ref == "nousresearch/hermes-agent:0.23.5"
    assert "v2026" not in HostSettings.model_fields["image"].default.ref
    assert "v2026" not in (settings_module.ImageSettings.model_fields["ref"].description or "")


# ----------------------------------------------------------------------------- time zones
@pytest.mark.parametrize("zone", ["Etc/UTC", "UTC", "Europe/Berlin", "Asia/Shanghai", "America/Argentina/Buenos_Aires"])
def test_iana_time_zones_pass(zone):
    assert accepted({"gateways": [{"timezone": zone}]}).gateways[0].timezone == zone


@pytest.mark.parametrize("zone, guess", [
    ("Europe/Berln", "Europe/Berlin"),
    ("europe/berlin", "Europe/Berlin"),
    ("Asia/Shangai", "Asia/Shanghai"),
])
def test_time_zone_typo_gets_a_did_you_mean(zone, guess):
    message = refused({"gateways": [{"timezone": zone}]})
    assert "gateways[0].timezone" in message and f"did you mean {guess!r}" in message


def test_unknown_time_zone_is_refused():
    message = refused({"gateways": [{"timezone": "Mars/Olympus_Mons"}]})
    assert "gateways[0].timezone" in message and "not an IANA time zone" in message


def test_time_zone_fallback_without_a_tz_database(monkeypatch):
    monkeypatch.setattr(settings_module, "known_timezones", lambda: frozenset())
    assert accepted({"gateways": [{"timezone": "Some/Zone_Name+1"}]})
    message = refused({"gateways": [{"timezone": "not a zone"}]})
    assert "gateways[0].timezone" in message and "not a time zone name" in message


# ----------------------------------------------------------------------------- ports
def test_api_port_on_the_ssh_port_is_refused():
    message = refused({"gateways": [{"name": "coder", "api": {"port": 22}}]})
    assert "gateways[coder].api.port is 22, the host's SSH port" in message


def test_ssh_port_comes_from_host_data():
    raw = {"gateways": [{"name": "coder", "api": {"port": 2222}}]}
    assert accepted(raw)
    message = refused({**raw, "ssh_port": 2222})
    assert "gateways[coder].api.port is 2222, the host's SSH port" in message
    message = refused(raw, ssh_port=2222)
    assert "gateways[coder].api.port is 2222, the host's SSH port" in message
    assert accepted({"gateways": [{"name": "coder", "api": {"port": 22}}], "ssh_port": 2222})


def test_ssh_port_reaches_validation_through_pyinfra_inventory(tmp_path):
    target = commands.Target("root@192.0.2.7", port=8642, cwd=str(tmp_path))
    [host] = commands.load_inventory(target)
    with pytest.raises(SettingsError, match=r"gateways\[hermes\].api.port is 8642, the host's SSH port"):
        settings_for_host(host)


def test_bad_ssh_port_data_is_reported():
    message = refused({"ssh_port": "ssh"})
    assert "ssh_port: value 'ssh' is not a port number" in message


def test_dashboard_port_collisions():
    message = refused({"gateways": [{"dashboard": {"enabled": True, "port": 8642}}]})
    assert "gateways[hermes].dashboard.port is 8642, already used by gateways[hermes].api.port" in message
    message = refused({"gateways": [{"dashboard": {"enabled": True, "port": 22}}]})
    assert "gateways[hermes].dashboard.port is 22, the host's SSH port" in message
    # a disabled dashboard publishes nothing
    assert accepted(two({"dashboard": {"port": 9119}}, {"dashboard": {"port": 9119}}))


@pytest.mark.parametrize("spec, owner", [
    ("127.0.0.1:8642:3000", "gateways[hermes].api.port"),
    ("127.0.0.1:22:22", "the host's SSH port"),
    ("[::1]:8642:3000/tcp", "gateways[hermes].api.port"),
    ("127.0.0.1:8640-8650:8640-8650", "gateways[hermes].api.port"),
])
def test_companion_host_ports_collide_with_gateways_and_ssh(spec, owner):
    message = refused({"companions": [{"name": "hub", "image": "h:1", "ports": [spec]}]})
    assert "companions[hub].ports[0]" in message and owner in message


def test_companion_ports_collide_with_each_other_but_not_across_protocols():
    message = refused({"companions": [{"name": "hub", "image": "h:1", "ports": ["127.0.0.1:3000:3000"]},
                                      {"name": "hub2", "image": "h:1", "ports": ["172.17.0.1:3000:80"]}]})
    assert "companions[hub2].ports[0]" in message and "already used by companions[hub].ports[0]" in message
    assert accepted({"companions": [{"name": "hub", "image": "h:1",
                                     "ports": ["127.0.0.1:3000:3000", "127.0.0.1:3000:3000/udp"]}]})


@pytest.mark.parametrize("spec, words", [
    ("3000:3000", "every interface"),
    ("3000", "every interface"),
    ("0.0.0.0:3000:3000", "every interface"),
    ("[::]:3000:3000", "every interface"),
    ("myhost:3000:3000", "not an IP address"),
    ("127.0.0.1:70000:3000", "not a port"),
    ("127.0.0.1:0:3000", "not a port"),
    ("127.0.0.1:3000:3000/http", "protocol"),
    ("127.0.0.1:3000-3001:80-82", "ranges"),
])
def test_bad_companion_ports(spec, words):
    message = refused({"companions": [{"name": "hub", "image": "h:1", "ports": [spec]}]})
    assert "companions[0].ports" in message and words in message


def test_port_spec_parsing():
    assert parse_port_spec("127.0.0.1:3000:80") == ("127.0.0.1", (3000,), "tcp")
    assert parse_port_spec("[::1]:53:53/udp") == ("::1", (53,), "udp")
    assert parse_port_spec("127.0.0.1:3000-3001:3000-3001").host_ports == (3000, 3001)


# ----------------------------------------------------------------------------- companion variables
@pytest.mark.parametrize("field, key, instead", [
    ("environment", "HERMES_API_KEY", "api.key"),
    ("secret_env", "HERMES_API_KEY", "api.key"),
    ("environment", "HERMES_MODEL", "api.model_name"),
    ("secret_env", "HERMES_API_BASE_URL", "topology"),
    ("environment", "HERMES_TIMEOUT_MS", "timeout_ms"),
    ("secret_env", "AUTO_REPLY", "auto_reply"),
])
def test_companion_cannot_set_what_settings_set(field, key, instead):
    message = refused({"companions": [{"name": "hub", "image": "h:1", field: {key: "sk-should-not-show-1234"}}]})
    assert f"companions[hub].{field}.{key}" in message and instead in message
    assert "sk-should-not-show" not in message


def test_companion_renamed_variables_are_the_ones_checked():
    base = {"name": "hub", "image": "h:1", "api_key_env": "HUB_KEY"}
    message = refused({"companions": [{**base, "secret_env": {"HUB_KEY": "sk-should-not-show-1234"}}]})
    assert "companions[hub].secret_env.HUB_KEY" in message and "sk-should-not-show" not in message
    # the default name is free once renamed
    assert accepted({"companions": [{**base, "secret_env": {"HERMES_API_KEY": "k3J9-vQ2x_Lm8pR4"}}]})


def test_companion_variable_names_must_differ_and_not_be_duplicated():
    message = refused({"companions": [{"name": "hub", "image": "h:1", "model_env": "HERMES_API_KEY"}]})
    assert "must be different" in message
    message = refused({"companions": [{"name": "hub", "image": "h:1", "environment": {"A": "1"},
                                       "secret_env": {"A": "sk-should-not-show-1234"}}]})
    assert "both environment and secret_env" in message and "sk-should-not-show" not in message


# ----------------------------------------------------------------------------- secrets never echoed
MARK = "sk-MARKER-9f8e7d6c5b4a39281706"

WRONG_SHAPES = [
    {"gateways": MARK},
    {"gateways": [MARK]},
    {"gateways": [{"api": MARK}]},
    {"gateways": [{"api": [MARK]}]},
    {"gateways": [{"api": {"key": [MARK]}}]},
    {"gateways": [{"api": {"key": {"value": MARK}}}]},
    {"gateways": [{"api": {"key": MARK + " x"}}]},
    {"gateways": [{"api": {"key": MARK + "$"}}]},
    {"gateways": [{"api": {"kye": MARK}}]},
    {"gateways": [{"env": MARK}]},
    {"gateways": [{"env": [MARK]}]},
    {"gateways": [{"env": [f"OPENAI_API_KEY={MARK}"]}]},
    {"gateways": [{"env": {"OPENAI_API_KEY": [MARK]}}]},
    {"gateways": [{"env": {"OPENAI_API_KEY": {"v": MARK}}}]},
    {"gateways": [{"env": {"OPENAI_API_KEY": MARK + "\n"}}]},
    {"gateways": [{"env": {"bad key": MARK}}]},
    {"gateways": [{"env": {"API_SERVER_KEY": MARK}}]},
    {"gateways": [{"weixin": MARK}]},
    {"gateways": [{"weixin": [MARK]}]},
    {"gateways": [{"weixin": {"token": [MARK]}}]},
    {"gateways": [{"weixin": {"token": 12345678901234567}}]},
    {"gateways": [{"weixin": {"token": MARK + "\r"}}]},
    {"gateways": [{"weixin": {"tokn": MARK}}]},
    {"gateways": [{"dashboard": MARK}]},
    {"gateways": [{"dashboard": {"basic_auth_password_hash": [MARK]}}]},
    {"gateways": [{"dashboard": {"basic_auth_password_hash": MARK + "\n"}}]},
    {"gateways": [{"dashboard": {"enabled": True, "publish_address": "0.0.0.0",
                                 "basic_auth_password_hash": MARK}}]},
    {"gateways": [{"config": MARK}]},
    {"gateways": [{"name": "a", "env": {"TELEGRAM_BOT_TOKEN": MARK}},
                  {"name": "b", "api": {"port": 8643}, "env": {"TELEGRAM_BOT_TOKEN": MARK}}]},
    {"gateways": [{"weixin": {"token": MARK, "dm_policy": "open"}}]},
    {"companions": MARK},
    {"companions": [MARK]},
    {"companions": [{"name": "hub", "image": "h:1", "secret_env": MARK}]},
    {"companions": [{"name": "hub", "image": "h:1", "secret_env": [f"A={MARK}"]}]},
    {"companions": [{"name": "hub", "image": "h:1", "secret_env": {"A": [MARK]}}]},
    {"companions": [{"name": "hub", "image": "h:1", "secret_env": {"A": MARK + "\x00"}}]},
    {"companions": [{"name": "hub", "image": "h:1", "secret_env": {"HERMES_API_KEY": MARK}}]},
    {"companions": [{"name": "hub", "image": "h:1", "secret_env": {"A": MARK}, "environment": {"A": "1"}}]},
    {"companions": [{"name": "hub", "image": "h:1", "secret_env": {"A": MARK}, "gateway": "nope"}]},
    {"companions": [{"name": "hub", "image": "h:1", "secret_env": {"A": MARK}, "ports": ["3000:3000"]}]},
    {"docker": MARK},
    {"swap": [MARK]},
    {"image": MARK},
    {"health": [MARK]},
    {"api_key": MARK},
    {"gateways": [{"api": {"key": MARK}, "limits": {"memory": "1M"}}]},
    {"gateways": [{"api": {"key": MARK}, "data_dir": "/etc/x"}]},
    {"gateways": [{"name": "Bad Name", "api": {"key": MARK}, "env": {"X_TOKEN": MARK}}]},
    {"gateways": [{"config": {"model": {"api_key": MARK}}, "limits": {"memory": "1M"}}]},
]


@pytest.mark.parametrize("raw", WRONG_SHAPES, ids=range(len(WRONG_SHAPES)))
def test_no_input_shape_echoes_a_secret(raw):
    with pytest.raises(SettingsError) as caught:
        settings_from_raw(collect([raw]))
    message = str(caught.value)
    assert "MARKER" not in message, message
    assert "9f8e7d6c5b4a" not in message, message
    section = next(iter(raw))
    assert section in message and "Fix" in message, message


def test_wrong_shapes_still_name_the_location():
    assert "gateways[0].api: Input should be a valid dictionary" in refused({"gateways": [{"api": MARK}]})
    assert "gateways[0]: Input should be a valid dictionary" in refused({"gateways": [MARK]})
    assert "companions[0].secret_env: Input should be a valid dictionary" in refused(
        {"companions": [{"name": "hub", "image": "h:1", "secret_env": [f"A={MARK}"]}]})
    assert "gateways[0].weixin: Input should be a valid dictionary" in refused({"gateways": [{"weixin": MARK}]})


def test_plain_values_are_still_shown():
    assert "value 'lots'" in refused({"gateways": [{"limits": {"pids": "lots"}}]})
    assert "value 150" in refused({"swap": {"swappiness": 150}})
    assert "value 'no'" in refused({"gateways": [{"restart": "no"}]})
    assert "'Europe/Berln'" in refused({"gateways": [{"timezone": "Europe/Berln"}]})


def test_every_message_has_a_fix_for_builtin_errors():
    for raw in ({"swap": {"swappiness": "x"}}, {"docker": {"live_restore": "maybe"}}, {"gateways": "x"},
                {"health": {"interval_seconds": -1}}, {"companions": [{"image": "h:1"}]}):
        message = refused(raw)
        assert all("Fix" in line for line in message.splitlines()[1:]), message


def test_several_cross_check_problems_are_reported_together():
    message = refused({"gateways": [{"name": "a", "api": {"port": 22}}, {"name": "b", "api": {"port": 22}}],
                       "project_dir": "/root/.hermes-a/x"})
    lines = message.splitlines()[1:]
    assert len(lines) >= 3 and all(line.startswith("  - ") and "Fix" in line for line in lines)


# ----------------------------------------------------------------------------- new settings
def test_new_settings_defaults_and_bounds():
    settings = accepted({})
    assert settings.backup_keep == 5
    assert settings.apt_lock_timeout_seconds == 600
    assert settings.gateways[0].stop_grace_seconds == 60
    assert accepted({"backup_keep": 1, "apt_lock_timeout_seconds": 0,
                     "gateways": [{"stop_grace_seconds": 3600}]}).backup_keep == 1
    for raw, where in (({"backup_keep": 0}, "backup_keep"), ({"backup_keep": 1001}, "backup_keep"),
                       ({"apt_lock_timeout_seconds": -1}, "apt_lock_timeout_seconds"),
                       ({"gateways": [{"stop_grace_seconds": 5}]}, "gateways[0].stop_grace_seconds"),
                       ({"gateways": [{"stop_grace_seconds": 3601}]}, "gateways[0].stop_grace_seconds")):
        assert where in refused(raw)


# ----------------------------------------------------------------------------- smaller checks
@pytest.mark.parametrize("raw, where", [
    ({"docker": {"version": "5:27.3.1 ; rm -rf /"}}, "docker.version"),
    ({"docker": {"users": ["Bad User"]}}, "docker.users"),
    ({"docker": {"bridge_gateway_ip": "172.17.0"}}, "docker.bridge_gateway_ip"),
    ({"docker": {"official_repo_url": "download.docker.com"}}, "docker.official_repo_url"),
    ({"image": {"pull_mirror": "https://mirror.example.com"}}, "image.pull_mirror"),
    ({"gateways": [{"dashboard": {"publish_address": "my-host"}}]}, "gateways[0].dashboard.publish_address"),
    ({"gateways": [{"api": {"publish_addresses": ["my-host"]}}]}, "gateways[0].api.publish_addresses"),
])
def test_smaller_checks(raw, where):
    assert where in refused(raw)


def test_good_docker_settings_pass():
    assert accepted({"docker": {"version": "5:27.3.1-1~debian.13~trixie", "users": ["deploy"],
                                "official_repo_url": "https://mirror.example.com/docker/"},
                     "image": {"pull_mirror": "mirror.example.com:5000"}})


def test_collect_keeps_settings_and_ssh_port_only():
    raw = collect([{"swap": {"size": "1G"}, "ssh_user": "root", "_sudo": True}, {"ssh_port": 2200}])
    assert raw == {"swap": {"size": "1G"}, "ssh_port": 2200}
    assert json.dumps(raw)


# ----------------------------------------------------------------------------- decided by meaning
SECRET = "Zq8x7Yp-real-token-9f8e7d6c"


def refused_naming(raw: dict, setting: str, *shown: str) -> str:
    """Refused with the setting's path, the value (each of `shown`) and a fix, no secret."""
    message = refused(raw)
    assert setting in message, message
    for text in shown:
        assert text in message, message
    assert SECRET not in message, message
    return message


@pytest.mark.parametrize("raw, setting, shown", [
    ({"gateways": [{"api": {"port": True}}]}, "gateways[0].api.port", "True"),
    ({"gateways": [{"api": {"port": "8642"}}]}, "gateways[0].api.port", "'8642'"),
    ({"gateways": [{"api": {"port": 8642.0}}]}, "gateways[0].api.port", "8642.0"),
    ({"gateways": [{"limits": {"pids": 1024.5}}]}, "gateways[0].limits.pids", "1024.5"),
    ({"gateways": [{"limits": {"cpus": float("inf")}}]}, "gateways[0].limits.cpus", "inf"),
    ({"gateways": [{"limits": {"cpus": float("nan")}}]}, "gateways[0].limits.cpus", "nan"),
    ({"gateways": [{"limits": {"cpus": "2"}}]}, "gateways[0].limits.cpus", "'2'"),
    ({"health": {"interval_seconds": float("inf")}}, "health.interval_seconds", "inf"),
    ({"backup_keep": True}, "backup_keep", "True"),
    ({"purge_removed_gateways": 1}, "purge_removed_gateways", "1"),
    ({"purge_removed_gateways": "yes"}, "purge_removed_gateways", "'yes'"),
    ({"swap": {"swappiness": "10"}}, "swap.swappiness", "'10'"),
    ({"gateways": [{"limits": {"memory": "1024"}}]}, "gateways[0].limits.memory", "unit"),
    ({"gateways": [{"limits": {"memory": 1024}}]}, "gateways[0].limits.memory", "1024"),
    ({"swap": {"size": "2048"}}, "swap.size", "unit"),
    ({"swap": {"size": 0}}, "swap.size", "0"),
    ({"companions": [{"name": "hub", "image": "h:1", "memory": "512"}]}, "companions[0].memory", "unit"),
    ({"companions": [{"name": "hub", "image": "h:1", "cpus": float("inf")}]}, "companions[0].cpus", "inf"),
    ({"companions": [{"name": "hub", "image": "h:1", "timeout_ms": True}]}, "companions[0].timeout_ms", "True"),
])
def test_no_silent_coercion(raw, setting, shown):
    refused_naming(raw, setting, shown)


def test_an_integer_is_not_a_secret_and_is_not_shown():
    message = refused_naming({"gateways": [{"env": {"OPENAI_API_KEY": 123456789012345}}]}, "gateways[0].env")
    assert "123456789012345" not in message
    message = refused_naming({"gateways": [{"api": {"key": 98765432109876543}}]}, "gateways[0].api.key")
    assert "98765432109876543" not in message


def test_strict_values_from_data_still_work():
    # pyinfra's --data turns `8643` into an int and JSON into lists and dicts
    from pyinfra_cli.util import parse_cli_arg

    raw = collect([{"backup_keep": parse_cli_arg("3"), "purge_removed_gateways": parse_cli_arg("true"),
                    "gateways": parse_cli_arg('[{"api": {"port": 8643}, "limits": {"cpus": 1.5, "memory": "1G"}}]'),
                    "swap": parse_cli_arg('{"size": "0"}')}])
    settings = settings_from_raw(raw)
    assert (settings.backup_keep, settings.purge_removed_gateways, settings.gateways[0].api.port) == (3, True, 8643)
    assert settings.gateways[0].limits.cpus == 1.5 and settings.swap.size_bytes == 0
    assert accepted({"gateways": [{"limits": {"cpus": 2}}]}).gateways[0].limits.cpus == 2.0
    assert accepted({"gateways": [{"limits": {"memory": "3.5G"}}]})


UNSPECIFIED = ["0.0.0.0", "::", "0:0:0:0:0:0:0:0", "::ffff:0.0.0.0", "::0"]
NON_CANONICAL = ["0", "0x0", "0.0", "127.1", "0177.0.0.1", "0x7f.0.0.1", "00.0.0.0", "2130706433"]
REACHABLE = ["192.168.1.10", "10.0.0.5", "203.0.113.7", "8.8.8.8", "169.254.1.1", "fe80::1", "2001:db8::1",
             "fd00::1", "172.18.0.1"]


@pytest.mark.parametrize("address", UNSPECIFIED + REACHABLE)
def test_reachable_api_addresses_need_allow_public(address):
    message = refused_naming({"gateways": [{"api": {"publish_addresses": [address]}}]},
                             "gateways[hermes].api.publish_addresses", "allow_public")
    assert "127.0.0.1" in message
    assert accepted({"gateways": [{"api": {"publish_addresses": [address], "allow_public": True}}]})


@pytest.mark.parametrize("address", NON_CANONICAL + ["[::]", "[::1]", "fe80::1%eth0", "localhost", "my-host",
                                                      " 127.0.0.1", "224.0.0.1", "255.255.255.255"])
def test_odd_spellings_are_refused_even_when_public_is_allowed(address):
    raw = {"gateways": [{"api": {"publish_addresses": [address], "allow_public": True}}]}
    message = refused_naming(raw, "gateways[0].api.publish_addresses", repr(address), "Fix")
    if address in NON_CANONICAL:
        assert "canonical" in message


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1", "172.17.0.1"])
def test_loopback_and_bridge_addresses_pass_without_the_flag(address):
    assert accepted({"gateways": [{"api": {"publish_addresses": [address]}}]})


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "192.168.1.10", "203.0.113.7", "::ffff:0.0.0.0", "fe80::1"])
def test_dashboard_beyond_loopback_needs_its_flag_and_auth(address):
    auth = {"basic_auth_username": "ops", "basic_auth_password_hash": "$2b$12$abcdefghijklmnopqrstuv"}
    dashboard = {"enabled": True, "publish_address": address, **auth}
    refused_naming({"gateways": [{"dashboard": dashboard}]}, "dashboard", "allow_public")
    assert accepted({"gateways": [{"dashboard": {**dashboard, "allow_public": True}}]})
    assert "basic auth" in refused({"gateways": [{"dashboard": {"enabled": True, "publish_address": address,
                                                                "allow_public": True}}]})


@pytest.mark.parametrize("spec", ["192.168.1.10:3000:3000", "203.0.113.7:3000:3000", "[2001:db8::1]:3000:3000",
                                  "10.1.2.3:3000:3000", "[fe80::1]:3000:3000", "169.254.9.9:3000:3000"])
def test_companion_ports_beyond_loopback_need_allow_public(spec):
    companion = {"name": "hub", "image": "h:1", "ports": [spec]}
    refused_naming({"companions": [companion]}, "companions[hub].ports[0]", "allow_public")
    assert accepted({"companions": [{**companion, "allow_public": True}]})


@pytest.mark.parametrize("spec", ["0:3000:3000", "0x0:3000:3000", "127.1:3000:3000", "[::ffff:0.0.0.0]:3000:3000",
                                  "0.0.0.0:3000:3000", "localhost:3000:3000"])
def test_companion_ports_on_every_interface_or_odd_spellings_are_refused(spec):
    companion = {"name": "hub", "image": "h:1", "ports": [spec], "allow_public": True}
    refused_naming({"companions": [companion]}, "companions[0].ports", "Fix")


@pytest.mark.parametrize("address", ["127.0.0.1", "0.0.0.0", "8.8.8.8", "172.17.1", "::1", "169.254.0.1"])
def test_bridge_gateway_ip_is_a_private_ipv4_address(address):
    refused_naming({"docker": {"bridge_gateway_ip": address}}, "docker.bridge_gateway_ip", repr(address))


SYSTEM_PATHS = ["/etc", "/etc/hermes", "/root/.ssh", "/home/bob/.ssh/hermes", "/root/.config", "/home/bob/.bashrc",
                "/var/run/docker.sock", "/run/docker", "/run/containerd", "/var/lib/docker/volumes/x",
                "/var/lib/containerd/x", "/proc/1", "/sys/kernel", "/dev/sda", "/boot/grub", "/lib/modules/6.1",
                "/usr/local/hermes", "/bin/hermes", "/sbin/x", "/lib64/x", "/libx32/y"]


@pytest.mark.parametrize("path", SYSTEM_PATHS)
@pytest.mark.parametrize("raw_for, setting", [
    (lambda p: {"gateways": [{"data_dir": p}]}, "gateways[0].data_dir"),
    (lambda p: {"project_dir": p}, "project_dir"),
    (lambda p: {"backup_dir": p}, "backup_dir"),
    (lambda p: {"image": {"remote_cache_dir": p}}, "image.remote_cache_dir"),
])
def test_system_paths_are_refused_for_every_directory_setting(raw_for, setting, path):
    refused_naming(raw_for(path), setting, repr(path), "path_overrides")


@pytest.mark.parametrize("path", ["/etc/passwd", "/etc/shadow", "/bin/bash", "/usr/bin/dockerd", "/boot/vmlinuz",
                                  "/var/lib/dpkg/status", "/root/.ssh/authorized_keys", "/var/run/docker.sock",
                                  "/home/bob/notes.txt", "/srv/data/db.sqlite", "/var/log/syslog"])
def test_swap_path_naming_an_existing_system_file_is_refused(path):
    # the swap operation starts with `rm -f <path>`
    refused_naming({"swap": {"path": path}}, "swap.path", repr(path), "Fix")


@pytest.mark.parametrize("path", ["/swapfile", "/swap.img", "/var/swap", "/mnt/disk1/swapfile", "/srv/swap/swapfile",
                                  "/var/lib/hermes-infra/swapfile"])
def test_swap_files_where_swap_files_live_pass(path):
    assert accepted({"swap": {"path": path}}).swap.path == path


@pytest.mark.parametrize("path, char", [
    ("/root/.hermes-$(id)", "'$'"), ("/root/.hermes`id`", "'`'"), ("/root/.hermes;rm", "';'"),
    ("/root/her mes", "' '"), ('/root/.hermes"x', "'\"'"), ("/root/.hermes*", "'*'"), ("/root/.hermes\\x", "'\\\\'"),
    ("/root/.hermes&x", "'&'"), ("/root/.hermes|x", "'|'"), ("/root/.hermes,x", "','"),
])
def test_shell_metacharacters_in_paths_are_refused(path, char):
    for raw, setting in (({"gateways": [{"data_dir": path}]}, "gateways[0].data_dir"), ({"backup_dir": path}, "backup_dir"),
                         ({"swap": {"path": path.replace(".hermes", "swapfile")}}, "swap.path")):
        message = refused_naming(raw, setting, "Fix")
        assert char in message, message


@pytest.mark.parametrize("path", ["/root/../etc", "/srv/hermes/../../etc", "/opt/hermes/..", "/root/.hermes/../x"])
def test_dotdot_is_refused_not_normalized(path):
    refused_naming({"gateways": [{"data_dir": path}]}, "gateways[0].data_dir", "'..'")


def test_path_overrides_need_a_reason_and_must_be_used():
    volume = {"name": "hub", "image": "h:1", "volumes": ["/var/run/docker.sock:/var/run/docker.sock:ro"]}
    refused_naming({"companions": [volume]}, "companions[hub].volumes[0]", "/var/run/docker.sock", "path_overrides")
    override = {"path": "/var/run/docker.sock", "reason": "the hub starts its own worker containers"}
    assert accepted({"companions": [volume], "path_overrides": [override]})
    for reason in ("", "   ", None, 3):
        message = refused({"companions": [volume], "path_overrides": [{**override, "reason": reason}]})
        assert "path_overrides[0].reason" in message
    message = refused({"path_overrides": [override]})
    assert "path_overrides" in message and "no path setting holds" in message
    data = {"gateways": [{"data_dir": "/mnt/big/hermes"}]}
    assert "outside where a data dir may live" in refused(data)
    assert accepted({**data, "path_overrides": [{"path": "/mnt/big/hermes", "reason": "the big disk"}]})


@pytest.mark.parametrize("raw, words", [
    ({"swap": {"path": "/root/.hermes/swapfile"}}, "swap.path '/root/.hermes/swapfile'"),
    ({"companions": [{"name": "hub", "image": "h:1", "volumes": ["/root/.hermes:/data"]}]}, "is gateways"),
    ({"companions": [{"name": "hub", "image": "h:1", "volumes": ["/root/.hermes/workspace:/w"]}]}, "is inside"),
    ({"companions": [{"name": "hub", "image": "h:1", "volumes": ["/opt/hermes/companions:/c"]}]}, "project_dir"),
    ({"docker": {"daemon_options": {"data-root": "/root/.hermes/docker"}}}, "docker.daemon_options.data-root"),
    ({"backup_dir": "/opt/hermes/backups"}, "backup_dir '/opt/hermes/backups' is inside project_dir"),
])
def test_no_two_path_settings_overlap(raw, words):
    refused_naming(raw, words, "Fix")


def test_the_agent_never_holds_the_swap_file_even_with_an_override():
    raw = {"swap": {"path": "/root/.hermes/swapfile"},
           "path_overrides": [{"path": "/root/.hermes/swapfile", "reason": "no other disk"}]}
    assert "is inside" in refused(raw)


@pytest.mark.parametrize("options, words", [
    ({"hosts": ["tcp://0.0.0.0:2375"]}, "tcp://0.0.0.0:2375"),
    ({"hosts": ["unix:///var/run/docker.sock", "tcp://127.0.0.1:2375"]}, "tcp://127.0.0.1:2375"),
    ({"hosts": ["fd://"]}, "fd://"),
    ({"hosts": ["ssh://me@host"]}, "unix socket"),
    ({"-H": "tcp://0.0.0.0:2376"}, "listener"),
    ({"host": ["tcp://0.0.0.0:2376"]}, "listener"),
    ({"tlsverify": False}, "certificate"),
    ({"tls": False}, "certificate"),
    ({"api-cors-header": "*"}, "browser"),
    ({"metrics-addr": "0.0.0.0:9323"}, "metrics"),
    ({"insecure-registries": ["registry.example.com:5000"]}, "plain HTTP"),
    ({"insecure-registries": ["10.0.0.0/8"]}, "plain HTTP"),
])
def test_daemon_options_that_expose_the_engine_are_refused(options, words):
    refused_naming({"docker": {"daemon_options": options}}, "docker.daemon_options", words, "Fix")


@pytest.mark.parametrize("options, words", [
    ({"live-restor": True}, "did you mean 'live-restore'"),
    ({"not-a-key": 1}, "not a daemon.json key"),
    ({"icc": "false"}, "true or false"),
    ({"icc": 0}, "true or false"),
    ({"mtu": "1500"}, "a whole number"),
    ({"mtu": True}, "a whole number"),
    ({"dns": "1.1.1.1"}, "a list of text values"),
    ({"log-opts": {"max-file": 3}}, "a mapping of text values"),
    ({"log-level": "verbose"}, "one of debug"),
    ({"data-root": "srv/docker"}, "absolute"),
])
def test_daemon_options_are_checked_against_dockerd_keys_and_types(options, words):
    refused_naming({"docker": {"daemon_options": options}}, f"docker.daemon_options.{next(iter(options))}", words)


def test_daemon_options_that_turn_hardening_off_stay_accepted():
    options = {"icc": True, "no-new-privileges": False, "userland-proxy": False, "hosts": ["unix:///run/docker.sock"],
               "metrics-addr": "127.0.0.1:9323", "insecure-registries": ["127.0.0.1:5000"], "mtu": 1450,
               "dns": ["1.1.1.1"], "log-opts": {"max-size": "1g"}, "data-root": "/srv/docker", "tlsverify": True}
    assert accepted({"docker": {"daemon_options": options}}).docker.daemon_options == options


@pytest.mark.parametrize("key, owner", [
    ("model", "config.model"), ("model.provider", "config.model.provider"), ("model.base_url", "config.model.base_url"),
    ("security", "config.allow_lazy_installs"), ("security.tirith_enabled", "config.tirith_enabled"),
    ("tool_loop_guardrails", "config.tool_loop_hard_stop"),
    ("tool_loop_guardrails.hard_stop_enabled.x", "config.tool_loop_hard_stop"),
])
def test_config_extra_cannot_set_what_a_typed_setting_writes(key, owner):
    refused_naming({"gateways": [{"config": {"extra": {key: 1}}}]}, "gateways[0].config.extra", repr(key), owner)


def test_config_extra_keys_are_dotted_names_and_free_keys_pass():
    for key in ("", "a..b", ".a", "a b", "a.$x"):
        refused_naming({"gateways": [{"config": {"extra": {key: 1}}}]}, "gateways[0].config.extra", "dotted")
    assert accepted({"gateways": [{"config": {"extra": {"display.tool_progress": False, "model.context_length": 8192,
                                                        "security.other": True}}}]})


@pytest.mark.parametrize("url", ["ftp://10.0.0.5/v1", "10.0.0.5:8000/v1", "http://", "file:///etc/passwd",
                                 "javascript:alert(1)", "http://10.0.0.5:port/v1"])
def test_model_base_url_is_an_http_url(url):
    refused_naming({"gateways": [{"config": {"model": {"base_url": url}}}]}, "gateways[0].config.model.base_url", "Fix")


@pytest.mark.parametrize("url", [f"http://user:{SECRET}@10.0.0.5:8000/v1", f"https://{SECRET}@api.example.com/v1",
                                 f"https://:{SECRET}@api.example.com/v1"])
def test_model_base_url_with_credentials_is_refused_without_echo(url):
    message = refused_naming({"gateways": [{"config": {"model": {"base_url": url}}}]},
                             "gateways[0].config.model.base_url", "api_key")
    assert SECRET not in message


def test_typed_model_is_written_as_before():
    settings = accepted({"gateways": [{"config": {"model": {"provider": "custom", "default": "my-model",
                                                            "base_url": "http://10.0.0.5:8000/v1", "api_key": SECRET}}}]})
    managed = settings.gateways[0].config.managed()
    assert managed["model.provider"] == "custom" and managed["model.api_key"] == SECRET
    assert "model.base_url" in managed and "model.unset" not in managed
    assert SECRET not in repr(settings)
    refused_naming({"gateways": [{"config": {"model": {"provdier": "custom"}}}]}, "gateways[0].config.model.provdier")


PLACEHOLDERS = ["changeme", "CHANGE_ME", "<your-token>", "your-token-here", "xxxxxxxxxxxx", "${TELEGRAM_BOT_TOKEN}",
                "TODO", "placeholder", "example-token-123", "...", "", "   "]


@pytest.mark.parametrize("value", PLACEHOLDERS)
@pytest.mark.parametrize("raw_for, setting", [
    (lambda v: {"gateways": [{"env": {"TELEGRAM_BOT_TOKEN": v}}]}, "gateways[0].env"),
    (lambda v: {"gateways": [{"env": {"OPENROUTER_API_KEY": v}}]}, "gateways[0].env"),
    (lambda v: {"gateways": [{"env": {"SMTP_PASSWORD": v}}]}, "gateways[0].env"),
    (lambda v: {"gateways": [{"env": {"SLACK_APP_SECRET": v}}]}, "gateways[0].env"),
    (lambda v: {"gateways": [{"weixin": {"token": v}}]}, "gateways[0].weixin.token"),
    (lambda v: {"gateways": [{"config": {"model": {"api_key": v}}}]}, "gateways[0].config.model.api_key"),
    (lambda v: {"companions": [{"name": "hub", "image": "h:1", "secret_env": {"HUB_TOKEN": v}}]},
     "companions[0].secret_env"),
])
def test_placeholder_credentials_are_refused_everywhere(raw_for, setting, value):
    message = refused_naming(raw_for(value), setting, "Fix")
    if len(value.strip()) >= 6:
        assert value not in message


def test_plain_companion_environment_cannot_hold_a_credential():
    raw = {"companions": [{"name": "hub", "image": "h:1", "environment": {"HUB_TOKEN": SECRET}}]}
    message = refused_naming(raw, "companions[hub].environment.HUB_TOKEN", "secret_env")
    assert SECRET not in message


@pytest.mark.parametrize("key, owner", [
    ("API_SERVER_MODEL_NAME", "api.model_name"), ("API_SERVER_CORS_ORIGINS", "api.cors_origins"),
    ("API_SERVER_HOST", "api"), ("WEIXIN_TOKEN", "weixin"), ("WEIXIN_ACCOUNT_ID", "weixin"),
    ("HERMES_DASHBOARD", "dashboard"), ("HERMES_DASHBOARD_BASIC_AUTH_PASSWORD_HASH", "dashboard"),
    ("HERMES_UID", "uid"), ("HERMES_SKIP_CONFIG_MIGRATION", "hermes-infra"), ("TZ", "timezone"),
    ("TELEGRAM_ALLOWED_USERS", "allowed_users"), ("GATEWAY_ALLOWED_USERS", "allowed_users"),
])
def test_env_cannot_set_what_typed_settings_write(key, owner):
    message = refused_naming({"gateways": [{"env": {key: SECRET}}]}, f"env.{key}", owner)
    assert SECRET not in message


@pytest.mark.parametrize("interval, timeout", [(300, 300), (400, 300), (10.5, 10), (60, 10)])
def test_health_interval_shorter_than_its_timeout(interval, timeout):
    refused_naming({"health": {"interval_seconds": interval, "timeout_seconds": timeout}}, "health", "interval_seconds",
                   "Fix")


@pytest.fixture(params=[True, False], ids=["systemd-analyze", "parser"])
def calendar_checker(request, monkeypatch):
    """Calendars judged by systemd-analyze, then by the parser alone (as where it is missing)."""
    if not request.param:
        monkeypatch.setattr(settings_module.shutil, "which", lambda name: None)
    elif settings_module.shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here")
    settings_module.calendar_gap_seconds.cache_clear()
    yield
    settings_module.calendar_gap_seconds.cache_clear()


@pytest.mark.parametrize("schedule", ["minutely", "*:*", "*:0/15", "*-*-* *:00,30", "hourly hourly", "03:60",
                                      "*-13-01", "Mon..Funday 03:00", "*:*:0/10", "2024-02-30x"])
def test_backup_calendars_systemd_accepts_and_not_too_often(schedule, calendar_checker):
    refused_naming({"scheduled_backups": {"schedule": schedule}}, "scheduled_backups.schedule", repr(schedule), "Fix")


@pytest.mark.parametrize("schedule", ["daily", "weekly", "hourly", "*-*-* 03:30", "Mon..Fri 02:00", "Sun *-*-* 04:00:00",
                                      "*-*-01 05:00 UTC", "Sat,Sun 01:15"])
def test_good_backup_calendars_pass_both_ways(schedule, calendar_checker):
    assert accepted({"scheduled_backups": {"schedule": schedule}}).scheduled_backups.schedule == schedule


@pytest.mark.parametrize("raw, where", [
    ({"path_overrides": [{"path": "/var/run/docker.sock", "reason": "line\nbreak"}]}, "path_overrides[0].reason"),
    ({"gateways": [{"config": {"extra": {"display.name": "a\x1bb"}}}]}, "gateways[0].config.extra.display.name"),
    ({"docker": {"daemon_options": {"labels": ["a\nb"]}}}, "docker.daemon_options.labels[0]"),
    ({"gateways": [{"config": {"model": {"default": "m\r"}}}]}, "gateways[0].config.model.default"),
    ({"docker": {"users": ["deploy\n"]}}, "docker.users"),
    ({"image": {"archive": "/a\tb"}}, "image.archive"),
])
def test_no_string_setting_holds_a_control_character(raw, where):
    message = refused(raw)
    assert where in message and "Fix" in message
