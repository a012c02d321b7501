"""Changes always shown, secrets never: the dry run's diff of every managed file (plan vs facts)."""
from __future__ import annotations

import logging

from hermes_infra.plan import plandiff
from hermes_infra.host.safeio import FileRead
from tests.unit.hostfakes import converged, fresh, plan_for, settings

OLD, NEW = "sk-old-secret-value-111111", "sk-new-secret-value-222222"
HUB = {"name": "hub", "image": "example/hub:1.2", "secret_env": {"HUB_TOKEN": "hub-secret-value-123"}}


def _gateway(memory: str | None = None, secret: str = OLD, **extra) -> dict:
    gateway = {"env": {"OPENROUTER_API_KEY": secret}, "config": {"model": {"provider": "custom", "base_url": "http://10.0.0.5:8000/v1",
                                                                          "api_key": secret}}}
    if memory:
        gateway["limits"] = {"memory": memory}
    return {**gateway, **extra}


def _text(plan) -> str:
    return "\n".join(plandiff.plan_diff(plan))


def test_a_changed_limit_and_a_changed_secret_show_the_limit_and_a_masked_secret():
    facts = converged(settings(gateways=[_gateway()], companions=[HUB]))
    plan = plan_for(settings(gateways=[_gateway("1G", NEW)], companions=[HUB]), facts)
    text = _text(plan)
    assert '-    mem_limit: "3403m"' in text and '+    mem_limit: "1024m"' in text
    assert "-OPENROUTER_API_KEY=<redacted>" in text and "+OPENROUTER_API_KEY=<redacted> (changed)" in text
    assert "+  api_key: <redacted> (changed)" in text
    assert "--- /root/.hermes/.env (on the host)" in text and "+++ /opt/hermes/compose.yaml (planned)" in text
    for secret in (OLD, NEW, plan.gateways[0].api_key, "hub-secret-value-123"):
        assert secret not in text


def test_a_converged_host_shows_no_change():
    host = settings(gateways=[_gateway()], companions=[HUB])
    assert plandiff.plan_diff(plan_for(host, converged(host))) == []


def test_a_fresh_host_shows_every_file_created_without_a_secret():
    plan = plan_for(settings(gateways=[_gateway()], companions=[HUB]), fresh())
    text = _text(plan)
    for path in ("/etc/docker/daemon.json", "/opt/hermes/compose.yaml", "/opt/hermes/managed-keys.json",
                 "/root/.hermes/.env", "/root/.hermes/config.yaml", "/opt/hermes/companions/hub.env",
                 "/etc/sysctl.d/60-hermes-infra-swap.conf"):
        assert f"+++ {path} (planned)" in text, path
    assert "/etc/fstab: + /swapfile none swap sw 0 0" in text
    assert "+OPENROUTER_API_KEY=<redacted>" in text and "+HUB_TOKEN=<redacted>" in text
    assert "+API_SERVER_PORT=8642" in text and "+API_SERVER_KEY=<redacted>" in text, "settings shown, secrets not"
    assert not any(secret in text for secret in (OLD, plan.gateways[0].api_key, "hub-secret-value-123"))


def test_dry_run_after_a_key_left_the_settings_shows_its_removal():
    facts = converged(settings(gateways=[_gateway(env={"OPENROUTER_API_KEY": OLD, "EXTRA_TOKEN": "x-secret-1"})]))
    text = _text(plan_for(settings(gateways=[_gateway()]), facts))
    assert "-EXTRA_TOKEN=<redacted>" in text and "+EXTRA_TOKEN" not in text
    assert '-        "EXTRA_TOKEN": ' in text, "the record drops it too"
    assert "x-secret-1" not in text


def test_hostile_env_lines_are_masked_and_cannot_reach_the_terminal():
    host = settings(gateways=[_gateway()])
    facts = converged(host)
    read = facts.state.data_dirs["hermes"]["files"][".env"]
    planted = read.text + "# OLD_KEY=sk-commented-out-secret\nstray-secret-line\nEVIL\x1b]0;pwned\x07=1\nX=\x1b[2J\n"
    facts.state.data_dirs["hermes"]["files"][".env"] = FileRead("regular", planted, read.owner)
    plan = plan_for(settings(gateways=[_gateway(secret=NEW)]), facts)
    text = _text(plan)
    assert "sk-commented-out-secret" not in text and "stray-secret-line" not in text
    assert "\x1b" not in text and "\x07" not in text
    assert NEW not in text and OLD not in text


def test_the_deploy_prints_the_diff_in_one_block_when_asked(monkeypatch, caplog):
    from hermes_infra.release import deploy
    from hermes_infra.commands import SHOW_DIFF_ENV

    facts = converged(settings(gateways=[_gateway()]))
    plan = plan_for(settings(gateways=[_gateway("1G", NEW)]), facts)
    # pyinfra's CLI logging (set up once a process, by any in-process run before this test)
    # stops propagation to the root logger, where caplog listens.
    monkeypatch.setattr(logging.getLogger("pyinfra"), "propagate", True)
    with caplog.at_level(logging.INFO, logger="pyinfra"):
        deploy.print_diff(plan)
    assert len(caplog.records) == 1 and "mem_limit" in caplog.text and NEW not in caplog.text
    monkeypatch.setenv(SHOW_DIFF_ENV, "1")
    assert deploy.show_diff()
