"""Secrets never echoed: a refused `up` shows its suggested commands with `--data` secrets
redacted, and pyinfra gets the settings in memory (it runs in this process), never in an argv."""
from __future__ import annotations

import json
import typing

import pytest
from pydantic import BaseModel, SecretStr

from hermes_infra import commands
from hermes_infra.release import up as up_module
from hermes_infra.release.up import up
from hermes_infra.settings.schema import HostSettings

SECRETS = [f"secret-value-{n}-Qw8vT2mZp9Lx4Rn7" for n in range(10)]
DATA = {
    "gateways": json.dumps([{
        "name": "hermes", "api": {"key": SECRETS[0], "port": 8642},
        "env": {"OPENAI_API_KEY": SECRETS[1], "PLAIN_LOOKING": SECRETS[2]},
        "weixin": {"token": SECRETS[3], "dm_policy": "pairing"},
        "dashboard": {"basic_auth_password_hash": SECRETS[4]},
        "config": {"model": {"provider": "custom", "api_key": SECRETS[5]},
                   "extra": {"providers.x.key": SECRETS[6], "display.tool_progress": False}},
    }]),
    "companions": json.dumps([{"name": "hub", "secret_env": {"HUB_ANYTHING": SECRETS[7]}}]),
    "ssh_password": SECRETS[8],
    "API_TOKEN": SECRETS[9],
    "swap": json.dumps({"size": "4G"}),
}


def _secret_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every SecretStr setting of the schema, as `section.field` names."""
    found = []
    for name, info in model.model_fields.items():
        for kind in [info.annotation, *typing.get_args(info.annotation)]:
            inner = [kind, *typing.get_args(kind)]
            if SecretStr in inner or any(SecretStr in typing.get_args(a) for a in inner):
                found.append(prefix + name)
            elif isinstance(kind, type) and issubclass(kind, BaseModel):
                found += _secret_paths(kind, f"{prefix}{name}.")
    return found


def test_every_secret_setting_of_the_schema_is_redacted_by_its_name():
    paths = set(_secret_paths(HostSettings))
    assert {"gateways.api.key", "gateways.env", "gateways.weixin.token", "companions.secret_env"} <= paths
    for path in paths:
        name = path.rsplit(".", 1)[-1]
        assert commands.SECRET_NAME.search(name) or name in commands.SECRET_MAPS, path


def test_echoed_command_redacts_every_secret_and_keeps_the_rest():
    target = commands.Target("root@203.0.113.7", port=2222, data=dict(DATA))
    shown = " ".join(target.shown_cli_args())
    for secret in SECRETS:
        assert secret not in shown
    assert "<redacted>" in shown and '"size": "4G"' in shown and "pairing" in shown and "custom" in shown
    assert "OPENAI_API_KEY" in shown, "names stay, so the operator knows what to give again"
    assert any(SECRETS[0] in arg for arg in target.cli_args()), "the arguments to run keep their values"
    from hermes_infra.release.session import release_hint

    hint = release_hint(target)
    assert hint.startswith("hermes-infra lock release root@203.0.113.7") and "--limit HOST" in hint
    assert not any(secret in hint for secret in SECRETS)


def test_a_refused_up_prints_no_secret(tmp_path, monkeypatch, capsys):
    from hermes_infra.release import audit, lock
    from tests.unit.releasefakes import World

    lock_dir = str(tmp_path / "lock")
    monkeypatch.setattr(lock, "LOCK_DIR", lock_dir)
    monkeypatch.setattr(audit, "AUDIT_PATH", str(tmp_path / "audit.jsonl"))
    monkeypatch.setattr(commands, "validate", lambda target: {"web-1": None})
    world = World(lock_dir).install(monkeypatch)
    world.remotes["web-1"].run(lock.acquire_command(lock.Holder(command="up", pid=1, machine="elsewhere"), lock_dir))
    assert up(commands.Target("web-1", data=dict(DATA))) == 3
    err = capsys.readouterr().err
    assert "--lock-wait" in err and "hermes-infra lock" in err and "<redacted>" in err
    assert not any(secret in err for secret in SECRETS)


def test_pyinfra_gets_the_settings_in_memory_and_no_process_is_started(monkeypatch):
    """The settings reach pyinfra's own option parsing as `--data`, in this process: no child
    process (whose arguments every user of the machine can read) and no file."""
    from hermes_infra.release.pyinfra_run import PyinfraRun

    def no_process(*args, **kwargs):
        raise AssertionError(f"a process was started: {args}")

    monkeypatch.setattr(up_module.subprocess, "Popen", no_process)
    target = commands.Target("web-1", data=dict(DATA))
    run = PyinfraRun(target, extra=["--diff", "--limit", "web-1"])
    assert not any(secret in " ".join(target.pyinfra_args()) for secret in SECRETS)
    pairs = dict(arg.split("=", 1) for arg in run.params["data"])
    assert pairs == DATA, "pyinfra gets exactly the --data the operator gave"
    assert run.params["diff"] and run.params["limit"] == ("web-1",) and run.params["yes"] and not run.params["dry"]


def test_dry_run_starts_no_process_and_shows_every_managed_file(monkeypatch):
    from hermes_infra.release.pyinfra_run import PyinfraRun

    seen = {}

    def run_unlocked(target, *, dry, extra=None):
        seen.update(params=PyinfraRun(target, dry=dry, extra=extra).params, dry=dry)
        return 0

    def no_process(*args, **kwargs):
        raise AssertionError(f"a process was started: {args}")

    monkeypatch.setattr(commands, "validate", lambda target: {})
    monkeypatch.setattr(up_module, "run_unlocked", run_unlocked)
    monkeypatch.setattr(up_module.subprocess, "Popen", no_process)
    assert up(commands.Target("web-1", data=dict(DATA)), dry=True) == 0
    assert seen["dry"] and seen["params"]["dry"] and not seen["params"]["yes"], "--dry: change detection shown"
    assert dict(arg.split("=", 1) for arg in seen["params"]["data"]) == DATA


@pytest.mark.parametrize("value, shown", [("plain", "plain"), ("4", "4"), ('{"size": "4G"}', '{"size": "4G"}')])
def test_values_without_secrets_are_shown_as_given(value, shown):
    assert commands.redact_data_value("swap", value) == shown
