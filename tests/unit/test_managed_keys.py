"""Declarative removal: a key hermes-infra wrote into `.env` or `config.yaml` that left the
settings goes on the next deploy; operator and Hermes keys stay (fresh, converged, removed,
operator, Hermes, hostile record)."""
from __future__ import annotations

import json

import pytest
import yaml

from hermes_infra.plan import configfile, envfile, managedkeys
from hermes_infra.plan.hostplan import managed_keys_path
from hermes_infra.host.safeio import FileRead
from tests.unit.hostfakes import converged, fresh, plan_for, root_file, settings

SECRET = "sk-extra-secret-value-0123456789"
WITH_EXTRA = {"env": {"EXTRA_PROVIDER_KEY": SECRET, "KEPT_KEY": "kept-value"},
              "config": {"model": {"provider": "custom", "base_url": "http://10.0.0.5:8000/v1"},
                         "extra": {"display.tool_progress": False, "memory": {"limit": 5}}}}
WITHOUT_EXTRA = {"env": {"KEPT_KEY": "kept-value"}, "config": {"model": {"provider": "custom"}}}


def _edit(facts, name: str, change) -> None:
    files = facts.state.data_dirs["hermes"]["files"]
    read = files[name]
    files[name] = FileRead("regular", change(read.text), read.owner)


def _record(plan) -> dict:
    return json.loads(plan.managed_keys.content)


def _config(plan) -> dict:
    return yaml.safe_load(plan.gateways[0].config.content)


def test_fresh_host_records_every_managed_key_and_removes_nothing():
    plan = plan_for(settings(gateways=[WITH_EXTRA]), fresh())
    entry = _record(plan)["profiles"]["hermes"]
    assert entry["data_dir"] == "/root/.hermes"
    assert {"API_SERVER_KEY", "EXTRA_PROVIDER_KEY", "KEPT_KEY"} <= set(entry["env"])
    assert {"model.provider", "model.base_url", "display.tool_progress", "memory"} <= set(entry["config"])
    assert plan.managed_keys.content_changed and plan.managed_keys.mode == "0600"
    assert plan.managed_keys.path == "/opt/hermes/managed-keys.json"
    assert SECRET not in plan.managed_keys.content and plan.gateways[0].api_key not in plan.managed_keys.content
    assert plan.gateways[0].env.removed_keys == () and plan.gateways[0].config.removed_keys == ()


def test_converged_host_changes_nothing_the_record_included():
    host = settings(gateways=[WITH_EXTRA])
    plan = plan_for(host, converged(host))
    assert not plan.managed_keys.content_changed and not plan.managed_keys.meta_changed
    assert not plan.gateways[0].env.content_changed and not plan.gateways[0].config.content_changed


def test_a_key_that_left_the_settings_is_removed_and_the_record_follows():
    before = settings(gateways=[WITH_EXTRA])
    facts = converged(before)
    facts.state.data_dirs["hermes"]["files"][".env"] = FileRead(
        "regular", facts.state.data_dirs["hermes"]["files"][".env"].text + "OPERATOR_KEY=mine\n", (10000, 10000, "0600"))
    after = settings(gateways=[WITHOUT_EXTRA])
    plan = plan_for(after, facts)
    env, config = plan.gateways[0].env, plan.gateways[0].config
    assert env.removed_keys == ("EXTRA_PROVIDER_KEY",) and env.content_changed
    assert "EXTRA_PROVIDER_KEY" not in envfile.parse(env.content)
    assert envfile.parse(env.content)["KEPT_KEY"] == "kept-value"
    assert envfile.parse(env.content)["OPERATOR_KEY"] == "mine"
    assert config.removed_keys == ("display.tool_progress", "memory", "model.base_url")
    tree = _config(plan)
    assert tree["model"] == {"provider": "custom"} and "memory" not in tree
    assert "display" not in tree, "a mapping emptied by the removal is removed with it"
    assert tree["security"]["allow_lazy_installs"] is False
    entry = _record(plan)["profiles"]["hermes"]
    assert "EXTRA_PROVIDER_KEY" not in entry["env"] and "model.base_url" not in entry["config"]
    assert plan.managed_keys.content_changed
    assert plan.revision != plan_for(before, facts).revision
    assert plan.projects[0].up_reason, "the gateway restarts to drop the removed key"


def test_after_the_removal_the_next_run_is_converged():
    before, after = settings(gateways=[WITH_EXTRA]), settings(gateways=[WITHOUT_EXTRA])
    facts = converged(before)
    removal = plan_for(after, facts)
    owner = (10000, 10000, "0600")
    facts.state.data_dirs["hermes"]["files"][".env"] = FileRead("regular", removal.gateways[0].env.content, owner)
    facts.state.data_dirs["hermes"]["files"]["config.yaml"] = FileRead("regular", removal.gateways[0].config.content, owner)
    facts.state.root_files[managed_keys_path(after)] = root_file(removal.managed_keys.content, "0600")
    again = plan_for(after, facts)
    assert not again.gateways[0].env.content_changed and not again.gateways[0].config.content_changed
    assert not again.managed_keys.content_changed
    # The revision is that of what runs after the removal, the same the run that removed it recorded.
    assert again.revision == removal.revision


def test_operator_keys_are_never_removed_even_under_a_managed_name():
    host = settings(gateways=[WITH_EXTRA])
    facts = converged(host)
    # The operator added a key by hand and config the settings never named.
    _edit(facts, ".env", lambda text: text + "OPENAI_API_KEY=operator-own\n")
    _edit(facts, "config.yaml", lambda text: text + "agent:\n  max_turns: 7\n")
    plan = plan_for(settings(gateways=[WITHOUT_EXTRA]), facts)
    assert envfile.parse(plan.gateways[0].env.content)["OPENAI_API_KEY"] == "operator-own"
    assert _config(plan)["agent"] == {"max_turns": 7}


def test_a_value_hermes_rewrote_is_hermes_own_and_stays():
    host = settings(gateways=[{"env": {"TELEGRAM_HOME_CHANNEL": "set-by-settings"},
                               "config": {"extra": {"display.tool_progress": False}}}])
    facts = converged(host)
    # Hermes (a WeChat login, `hermes config set`) wrote its own values over the managed ones.
    _edit(facts, ".env", lambda text: text.replace("TELEGRAM_HOME_CHANNEL=set-by-settings", "TELEGRAM_HOME_CHANNEL=from-login"))
    _edit(facts, "config.yaml", lambda text: text.replace("tool_progress: false", "tool_progress: true"))
    plan = plan_for(settings(), facts)
    assert envfile.parse(plan.gateways[0].env.content)["TELEGRAM_HOME_CHANNEL"] == "from-login"
    assert _config(plan)["display"] == {"tool_progress": True}
    assert plan.gateways[0].env.removed_keys == () and plan.gateways[0].config.removed_keys == ()
    assert "TELEGRAM_HOME_CHANNEL" not in _record(plan)["profiles"]["hermes"]["env"]


def test_an_existing_host_without_a_record_removes_nothing_and_gets_one():
    before = settings(gateways=[WITH_EXTRA])
    facts = converged(before)
    del facts.state.root_files[managed_keys_path(before)]
    plan = plan_for(settings(gateways=[WITHOUT_EXTRA]), facts)
    assert envfile.parse(plan.gateways[0].env.content)["EXTRA_PROVIDER_KEY"] == SECRET
    assert plan.gateways[0].config.removed_keys == ()
    assert plan.managed_keys.content_changed and "KEPT_KEY" in _record(plan)["profiles"]["hermes"]["env"]


def _hostile_records(good: str) -> list[str]:
    record = json.loads(good)
    forged = json.loads(good)
    forged["profiles"]["hermes"]["env"]["OPERATOR_KEY"] = "0" * 16
    other_dir = json.loads(good)
    other_dir["profiles"]["hermes"]["data_dir"] = "/srv/elsewhere"
    bad_name = json.loads(good)
    bad_name["profiles"]["hermes"]["env"]["A\nB"] = "0" * 16
    bad_salt = dict(record, salt="../../etc")
    return ["{not json", "[]", json.dumps({"version": 2, "profiles": {}}), json.dumps(bad_salt),
            json.dumps(dict(record, profiles={"hermes": "x"})), json.dumps(bad_name), "[" * 100000,
            json.dumps(forged), json.dumps(other_dir)]


@pytest.mark.parametrize("index", range(9))
def test_a_malformed_or_forged_record_removes_nothing_it_should_not(index):
    before = settings(gateways=[WITH_EXTRA])
    facts = converged(before)
    path = managed_keys_path(before)
    hostile = _hostile_records(facts.state.root_files[path]["text"].text)[index]
    facts.state.root_files[path] = root_file(hostile, "0600")
    _edit(facts, ".env", lambda text: text + "OPERATOR_KEY=mine\n")
    plan = plan_for(settings(gateways=[WITHOUT_EXTRA]), facts)
    values = envfile.parse(plan.gateways[0].env.content)
    assert values["OPERATOR_KEY"] == "mine"
    if index < 7 or index == 8:  # unreadable, or for another data dir: nothing removed
        assert values["EXTRA_PROVIDER_KEY"] == SECRET and plan.gateways[0].config.removed_keys == ()
    assert plan.managed_keys.content_changed
    assert managedkeys.parse(plan.managed_keys.content) is not None


def test_merges_remove_every_assignment_and_nested_paths():
    text = "# keep me\nA=1\nexport GONE=x\nB=2\nGONE=y\n"
    merged = envfile.merge(text, {"A": "1", "B": "2"}, remove=("GONE", "ABSENT"))
    assert merged.text == "# keep me\nA=1\nB=2\n" and merged.removed_keys == ("GONE",)
    config = configfile.merge("a:\n  b:\n    c: 1\n  d: 2\n", {}, remove=("a.b.c", "x.y"))
    assert yaml.safe_load(config.text) == {"a": {"d": 2}} and config.removed_keys == ("a.b.c",)
