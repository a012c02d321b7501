"""`.env` and `config.yaml` merges: unknown keys survive, managed keys win, nothing else moves."""
from __future__ import annotations

import pytest
import yaml

from hermes_infra.plan import configfile, envfile

OPERATOR_FILE = """# my notes
OPENROUTER_API_KEY=sk-or-operator
API_SERVER_KEY=old-key-old-key-old-key

WEIXIN_TOKEN="token with spaces"
export CUSTOM_FLAG=1
"""


def test_unknown_keys_and_comments_survive_byte_for_byte():
    merged = envfile.merge(OPERATOR_FILE, {"API_SERVER_KEY": "new-key-new-key-new-key", "API_SERVER_PORT": "8642"})
    lines = merged.text.splitlines()
    assert lines[0] == "# my notes"
    assert "OPENROUTER_API_KEY=sk-or-operator" in lines
    assert 'WEIXIN_TOKEN="token with spaces"' in lines
    assert "export CUSTOM_FLAG=1" in lines
    assert envfile.parse(merged.text)["API_SERVER_KEY"] == "new-key-new-key-new-key"
    assert envfile.parse(merged.text)["API_SERVER_PORT"] == "8642"
    assert set(merged.changed_keys) == {"API_SERVER_KEY", "API_SERVER_PORT"}


def test_managed_key_replaced_in_place_not_appended():
    merged = envfile.merge(OPERATOR_FILE, {"API_SERVER_KEY": "new-key-new-key-new-key"})
    lines = merged.text.splitlines()
    assert lines[2] == "API_SERVER_KEY=new-key-new-key-new-key"
    assert sum(line.startswith("API_SERVER_KEY=") for line in lines) == 1


def test_duplicate_assignments_collapse_to_one():
    merged = envfile.merge("A=1\nB=2\nA=3\n", {"A": "9"})
    assert merged.text == "B=2\nA=9\n"


def test_no_change_returns_the_same_text():
    text = "A=1\nB='two words'\n"
    merged = envfile.merge(text, {"A": "1", "B": "two words"})
    assert merged.text == text and not merged.changed


def test_new_file_gets_a_header_and_values_round_trip():
    values = {"K1": "plain", "K2": "with space", "K3": "it's", "K4": "", "K5": 'a"b$c'}
    merged = envfile.merge(None, values)
    assert envfile.MANAGED_HEADER in merged.text
    assert envfile.parse(merged.text) == values


def test_parse_handles_export_quotes_and_comments():
    parsed = envfile.parse("# c\nexport A=1\nB = 'x y'\nC=val # note\n#D=4\nbad line\n")
    assert parsed == {"A": "1", "B": "x y", "C": "val"}


CONFIG = """model:
  provider: openrouter
  default: some/model
security:
  allow_lazy_installs: true
  redact_secrets: true
display:
  tool_progress: all
"""


def test_config_managed_keys_set_others_kept():
    merged = configfile.merge(CONFIG, {"security.allow_lazy_installs": False,
                                       "tool_loop_guardrails.hard_stop_enabled": True})
    tree = yaml.safe_load(merged.text)
    assert tree["security"] == {"allow_lazy_installs": False, "redact_secrets": True}
    assert tree["tool_loop_guardrails"] == {"hard_stop_enabled": True}
    assert tree["model"] == {"provider": "openrouter", "default": "some/model"}
    assert tree["display"] == {"tool_progress": "all"}


def test_config_equal_values_mean_no_rewrite_even_if_formatted_differently():
    text = "security: {allow_lazy_installs: false}\n# a comment Hermes keeps\n"
    merged = configfile.merge(text, {"security.allow_lazy_installs": False})
    assert merged.text == text and not merged.changed


def test_config_scalar_replaced_by_mapping_when_needed():
    merged = configfile.merge("security: off\n", {"security.allow_lazy_installs": False})
    assert yaml.safe_load(merged.text) == {"security": {"allow_lazy_installs": False}}


def test_invalid_yaml_is_refused_not_overwritten():
    with pytest.raises(configfile.ConfigYamlError, match="not valid YAML"):
        configfile.merge("a: [unclosed\n", {"x.y": 1})
