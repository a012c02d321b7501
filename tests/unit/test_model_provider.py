"""The model provider's key goes where Hermes 0.19.0 reads it: config.yaml `model.api_key` for a
custom endpoint, the provider's own `.env` variable for a named one; settings that would leave
the provider with `Bearer no-key-required` are refused before any host is touched."""
from __future__ import annotations

import pytest
import yaml

from hermes_infra.plan import envfile, plandiff
from hermes_infra.settings import providers
from hermes_infra.settings.loading import SettingsError, collect, settings_from_raw
from tests.unit.hostfakes import converged, fresh, plan_for, settings

KEY = "sk-provider-secret-0123456789abcdef"
CUSTOM = {"provider": "custom", "default": "my-model", "base_url": "http://10.0.0.5:8000/v1", "api_key": KEY}


def _files(model: dict, **gateway):
    plan = plan_for(settings(gateways=[{"config": {"model": model}, **gateway}]), fresh())
    return envfile.parse(plan.gateways[0].env.content), yaml.safe_load(plan.gateways[0].config.content), plan


def _refused(model: dict, *shown: str, **gateway) -> str:
    with pytest.raises(SettingsError) as caught:
        settings_from_raw(collect([{"gateways": [{"config": {"model": model}, **gateway}]}]))
    message = str(caught.value)
    for text in ("gateways[0]", "Fix", *shown):
        assert text in message, message
    assert KEY not in message
    return message


def test_a_custom_endpoints_key_is_written_to_config_yaml_and_not_to_env():
    env, config, _ = _files(CUSTOM)
    assert config["model"] == {"provider": "custom", "default": "my-model", "base_url": "http://10.0.0.5:8000/v1",
                               "api_key": KEY}
    assert KEY not in env.values()


@pytest.mark.parametrize("provider, variable", [("openrouter", "OPENROUTER_API_KEY"), ("anthropic", "ANTHROPIC_API_KEY"),
                                                ("openai-api", "OPENAI_API_KEY"), ("claude", "ANTHROPIC_API_KEY"),
                                                ("gemini", "GOOGLE_API_KEY"), ("deepseek", "DEEPSEEK_API_KEY")])
def test_a_named_providers_key_is_written_to_its_env_variable_and_not_to_config_yaml(provider, variable):
    env, config, plan = _files({"provider": provider, "default": "some/model", "api_key": KEY})
    assert env[variable] == KEY
    assert config["model"] == {"provider": provider, "default": "some/model"}
    assert plan.gateways[0].managed_entry["env"].keys() >= {variable}


def test_an_ollama_alias_is_a_custom_endpoint():
    _, config, _ = _files({**CUSTOM, "provider": "ollama"})
    assert config["model"]["api_key"] == KEY


def test_the_plan_diff_masks_the_key_in_config_yaml_and_in_env():
    for model in (CUSTOM, {"provider": "openrouter", "api_key": KEY}):
        host = settings(gateways=[{"config": {"model": model}}])
        text = "\n".join(plandiff.plan_diff(plan_for(host, fresh())))
        assert KEY not in text and "<redacted>" in text
        changed = settings(gateways=[{"config": {"model": {**model, "api_key": KEY[::-1]}}}])
        text = "\n".join(plandiff.plan_diff(plan_for(changed, converged(host))))
        assert KEY not in text and KEY[::-1] not in text and "(changed)" in text


def test_bare_openai_is_refused_with_the_name_hermes_knows():
    _refused({"provider": "openai", "api_key": KEY}, "'openai'", "openai-api")


def test_a_key_without_a_provider_is_refused():
    _refused({"api_key": KEY}, "config.model.provider", "custom")


def test_a_custom_key_without_base_url_is_refused_because_hermes_would_not_send_it():
    _refused({"provider": "custom", "api_key": KEY}, "base_url", "no-key-required")


def test_a_key_for_a_provider_whose_key_place_is_unknown_is_refused():
    _refused({"provider": "nous", "api_key": KEY}, "'nous'", "openrouter")


def test_openrouter_with_a_base_url_is_refused_because_hermes_ignores_it():
    _refused({"provider": "openrouter", "base_url": "http://10.0.0.5/v1"}, "base_url", "custom")


def test_the_key_set_twice_is_refused():
    _refused({"provider": "openrouter", "api_key": KEY}, "OPENROUTER_API_KEY", env={"OPENROUTER_API_KEY": KEY[::-1]})


def test_openai_api_key_for_a_custom_endpoint_is_refused_as_the_readme_once_advised():
    message = _refused({"provider": "custom", "base_url": "http://host.docker.internal:18080/v1"}, "OPENAI_API_KEY",
                       "no-key-required", "config.model.api_key", env={"OPENAI_API_KEY": KEY})
    assert "host.docker.internal" in message
    # ...but it is what an openai.com endpoint reads.
    settings_from_raw(collect([{"gateways": [{"config": {"model": {"provider": "custom",
                                                                    "base_url": "https://api.openai.com/v1"}},
                                              "env": {"OPENAI_API_KEY": KEY}}]}]))


def test_every_key_variable_is_a_secret_name_the_diff_masks():
    for variable in providers.KEY_ENVS:
        assert not plandiff.PLAIN_ENV.fullmatch(variable)
