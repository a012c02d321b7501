"""Declarative removal on a real host (issue 17): a `.env` key and a `config.yaml` key that
hermes-infra wrote and that left the settings are shown as removed by `--dry` (no secret
printed), removed by the next deploy, and the run after that is converged; a key the operator
added by hand stays throughout."""
from __future__ import annotations

ENV = "/root/.hermes/.env"
CONFIG = "/root/.hermes/config.yaml"
SECRET = "sk-declarative-e2e-must-never-be-printed"
EXTRA = [{"name": "hermes", "env": {"DECLARATIVE_E2E_TOKEN": SECRET},
          "config": {"extra": {"hermes_infra_e2e.marker": "declarative"}}}]
OPERATOR_LINE = "OPERATOR_E2E_KEY=kept-by-hand"


def test_a_key_that_left_the_settings_is_shown_then_removed_and_operator_keys_stay(deployed):
    try:
        first = deployed.deploy(gateways=EXTRA)
        assert first.returncode == 0, first.output[-4000:]
        assert f"DECLARATIVE_E2E_TOKEN={SECRET}" in deployed.run(f"cat {ENV}")
        assert "marker: declarative" in deployed.run(f"cat {CONFIG}")
        deployed.run(f"printf '%s\\n' {OPERATOR_LINE!r} >> {ENV}")

        dry = deployed.deploy(dry=True)
        assert dry.returncode == 0, dry.output[-4000:]
        assert "-DECLARATIVE_E2E_TOKEN=<redacted>" in dry.output, dry.output[-4000:]
        assert "+DECLARATIVE_E2E_TOKEN" not in dry.output
        assert "-  marker: declarative" in dry.output, dry.output[-4000:]
        assert "OPERATOR_E2E_KEY=<redacted>" in dry.output or "OPERATOR_E2E_KEY" not in dry.output
        assert "-OPERATOR_E2E_KEY" not in dry.output, "an operator key is never removed"
        assert SECRET not in dry.output and deployed.api_key() not in dry.output
        assert "kept-by-hand" not in dry.output
        assert SECRET in deployed.run(f"cat {ENV}"), "a dry run wrote to the host"

        removal = deployed.deploy()
        assert removal.returncode == 0, removal.output[-4000:]
        env = deployed.run(f"cat {ENV}")
        assert "DECLARATIVE_E2E_TOKEN" not in env and OPERATOR_LINE in env
        assert "hermes_infra_e2e" not in deployed.run(f"cat {CONFIG}")
        record = deployed.run("cat /opt/hermes/managed-keys.json")
        assert "DECLARATIVE_E2E_TOKEN" not in record and SECRET not in record
        assert deployed.run("stat -c '%U %a' /opt/hermes/managed-keys.json").strip() == "root 600"
        assert SECRET not in removal.output

        again = deployed.deploy()
        assert again.returncode == 0, again.output[-4000:]
        assert again.changed_operations() == 0, again.output[-4000:]
    finally:
        print(f"[timing] back to the bootstrapped state: {deployed.reset():.1f}s")
    assert "DECLARATIVE_E2E_TOKEN" not in deployed.run(f"cat {ENV}")
