"""Alerts and metrics as settings: validation by meaning, the files the plan holds (script,
config with the secrets, units, the exporter's drop-in), the operations on a fresh, converged,
drifted and unset host, and `alerts test`."""
from __future__ import annotations

import json
import subprocess

import pytest

from hermes_infra.daytwo import alerts as alerts_cmd
from hermes_infra.daytwo.remote import DayTwoError, HostTarget
from hermes_infra.host.sshchannel import RunResult
from hermes_infra.operations.alerts import exporter_running, timer_running
from hermes_infra.plan import alerts, offsite
from hermes_infra.settings.loading import SettingsError
from tests.unit.hostfakes import converged, fresh, plan_for, root_file, run_op, settings

WECOM_URL = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=wecom-key-Zq81XbVt0PLm"
TG_TOKEN = "123456789:AAH-telegram-token-Zq81XbVt0PLmNw4Y5"
DING_SECRET = "SECdingtalk-signing-secret-Zq81XbVt"
ALERTS = {"alerts": {"interval_seconds": 30, "min_free_percent": 15, "receivers": [
    {"kind": "webhook", "name": "ops", "secret_url": "http://127.0.0.1:8999/hook"},
    {"kind": "wecom", "secret_url": WECOM_URL},
    {"kind": "telegram", "bot_token": TG_TOKEN, "chat_id": -1001234567890},
    {"kind": "dingtalk", "secret_url": "https://oapi.dingtalk.com/robot/send?access_token=ding-Zq81XbVt0PLm",
     "sign_secret": DING_SECRET},
]}}
SECRETS = (WECOM_URL, TG_TOKEN, DING_SECRET, "ding-Zq81XbVt0PLm")


def _refused(**sections) -> str:
    with pytest.raises(SettingsError) as error:
        settings(**sections)
    return str(error.value)


# --- settings ---------------------------------------------------------------------------------

@pytest.mark.parametrize("url, why", [
    ("http://hooks.example.com/x", "plain http to a host name"),
    ("http://203.0.113.9/x", "plain http to 203.0.113.9"),
    ("http://10.0.0.5/x", "plain http to 10.0.0.5"),
    ("ftp://example.com/x", "not an http(s) URL"),
    ("https:///path-only", "not an http(s) URL with a host"),
    ("https://example.com:99999/x", "does not parse"),
    ("https://example.com/a b", "not a URL"),
])
def test_a_receiver_url_is_parsed_and_plain_http_goes_only_to_this_host(url, why):
    message = _refused(alerts={"receivers": [{"kind": "webhook", "secret_url": url}]})
    assert why in message and "Fix:" in message
    assert url not in message, "a webhook URL may carry a key: never repeated"


def test_http_to_loopback_and_the_bridge_address_is_accepted():
    for url in ("http://127.0.0.1:8999/hook", "http://[::1]:8999/", "http://172.17.0.1:9000/x"):
        assert settings(alerts={"receivers": [{"kind": "webhook", "secret_url": url}]}).alerts
    custom = {"docker": {"bridge_gateway_ip": "172.20.0.1"}}
    assert "plain http" in _refused(alerts={"receivers": [{"kind": "webhook", "secret_url": "http://172.17.0.1/x"}]},
                                    **custom)
    assert settings(alerts={"receivers": [{"kind": "webhook", "secret_url": "http://172.20.0.1/x"}]}, **custom).alerts


def test_a_receiver_kind_is_from_the_allow_list_and_needs_its_own_fields():
    assert "webhook" in _refused(alerts={"receivers": [{"kind": "slack", "secret_url": "https://x.example/y"}]})
    assert "needs secret_url" in _refused(alerts={"receivers": [{"kind": "feishu"}]})
    assert "needs bot_token and chat_id" in _refused(alerts={"receivers": [{"kind": "telegram"}]})
    assert "sign_secret means nothing to a wecom receiver" in _refused(
        alerts={"receivers": [{"kind": "wecom", "secret_url": WECOM_URL, "sign_secret": DING_SECRET}]})
    assert "bot_token means nothing to a webhook" in _refused(
        alerts={"receivers": [{"kind": "webhook", "secret_url": WECOM_URL, "bot_token": TG_TOKEN}]})
    assert "receivers" in _refused(alerts={"receivers": []})


def test_telegram_chat_ids_are_typed_and_tokens_shaped():
    def telegram(**fields):
        return {"alerts": {"receivers": [{"kind": "telegram", "bot_token": TG_TOKEN, "chat_id": 42, **fields}]}}

    assert settings(**telegram(chat_id="@hermes_ops")).alerts.receivers[0].chat_id == "@hermes_ops"
    assert "neither a number nor a channel" in _refused(**telegram(chat_id="-100123"))
    message = _refused(**telegram(bot_token="not-a-token"))
    assert "not a Telegram bot token" in message and "not-a-token" not in message
    assert "plain http" in _refused(**telegram(api_url="http://bot.example.com"))


def test_the_exporter_listens_on_loopback_or_the_bridge_unless_allowed():
    assert settings(metrics={}).metrics.listen_address == "127.0.0.1"
    assert settings(metrics={"listen_address": "172.17.0.1"}).metrics
    message = _refused(metrics={"listen_address": "0.0.0.0"})
    assert "metrics.allow_public" in message and "Fix:" in message
    assert "not a canonical IPv4" in _refused(metrics={"listen_address": "127.1"})
    assert settings(metrics={"listen_address": "0.0.0.0", "allow_public": True}).metrics.allow_public


def test_receiver_names_are_unique():
    hook = {"kind": "webhook", "name": "ops", "secret_url": "https://x.example/y"}
    assert "used twice" in _refused(alerts={"receivers": [hook, hook]})


# --- the plan ---------------------------------------------------------------------------------

def test_the_plan_holds_script_config_and_units_with_secrets_only_in_the_0600_config():
    host = settings(**ALERTS)
    plan = plan_for(host, fresh())
    files = {f.path: f for f in plan.alerts.files}
    assert list(files) == [alerts.SCRIPT, alerts.CONFIG, alerts.SERVICE, alerts.TIMER]
    assert files[alerts.SCRIPT].mode == "0700" and files[alerts.CONFIG].mode == "0600"
    assert files[alerts.CONFIG].secret and not files[alerts.SCRIPT].secret
    config = json.loads(files[alerts.CONFIG].content)
    assert [r["label"] for r in config["receivers"]] == ["ops", "wecom-2", "telegram-3", "dingtalk-4"]
    assert config["receivers"][1]["url"] == WECOM_URL and config["receivers"][2]["bot_token"] == TG_TOKEN
    assert config["receivers"][3]["secret"] == DING_SECRET
    gateway = config["gateways"][0]
    assert gateway["api_key"] == plan.gateways[0].api_key and gateway["container"] == "hermes"
    assert (gateway["uid"], gateway["gid"], gateway["data_dir"]) == (10000, 10000, "/root/.hermes")
    assert gateway["memory_limit"] == plan.gateways[0].limits.memory_bytes
    assert gateway["backup_record"] is None and config["textfile"] is None
    assert config["min_free_percent"] == 15 and config["state_file"] == "/var/lib/hermes-infra/alerts/state.json"
    for path in (alerts.SCRIPT, alerts.SERVICE, alerts.TIMER):
        assert not any(secret in files[path].content for secret in (*SECRETS, plan.gateways[0].api_key)), path
    assert "ExecStart=/usr/bin/python3 /usr/local/sbin/hermes-infra-alerts\n" in files[alerts.SERVICE].content
    assert "OnUnitInactiveSec=30s" in files[alerts.TIMER].content
    assert plan.alerts.python_missing and not plan.metrics.wanted


def test_the_rendered_script_is_python_that_compiles_and_names_its_config(tmp_path):
    text = alerts.script_text()
    assert text.startswith("#!/usr/bin/python3\n") and 'CONFIG = "/etc/hermes-infra/alerts.json"' in text
    compile(text, "hermes-infra-alerts", "exec")
    assert "{{.State.Running}}" in text, "Go templates reach docker as written"


def test_the_config_names_the_backup_record_and_the_textfile_when_set():
    host = settings(**ALERTS, scheduled_backups={"schedule": "daily"}, metrics={})
    config = json.loads(plan_for(host, fresh()).alerts.files[1].content)
    assert config["gateways"][0]["backup_record"] == "/var/backups/hermes-infra/scheduled/hermes.last.json"
    assert config["textfile"] == "/var/lib/prometheus/node-exporter/hermes.prom"
    assert config["gateways"][0]["offsite_record"] is None and config["gateways"][0]["offsite_log"] is None


def test_the_config_names_the_offsite_record_and_restic_log_when_offsite_is_set():
    from tests.unit.test_offsite import s3

    for schedule in ("daily", None):  # manual backups upload too
        host = settings(**ALERTS, scheduled_backups={"schedule": schedule, "offsite": s3()})
        gateway = json.loads(plan_for(host, fresh()).alerts.files[1].content)["gateways"][0]
        assert gateway["offsite_record"] == offsite.last_run_path(host, "hermes") \
            == "/var/backups/hermes-infra/offsite/hermes.last.json"
        assert gateway["offsite_log"] == offsite.log_path(host, "hermes") \
            == "/var/backups/hermes-infra/offsite/hermes.restic.log"
        assert 'log="$records/$profile.restic.log"' in offsite.upload_script_text(host, "vm"), \
            "the path the alert names is the one the upload script writes"


def test_metrics_alone_installs_the_watchdog_without_receivers_and_the_exporter_on_loopback():
    plan = plan_for(settings(metrics={"port": 9101}), fresh())
    assert plan.alerts.wanted and json.loads(plan.alerts.files[1].content)["receivers"] == []
    dropin = plan.metrics.dropin
    assert dropin.path == "/etc/systemd/system/prometheus-node-exporter.service.d/hermes-infra.conf"
    assert "ExecStart=\nExecStart=/usr/bin/prometheus-node-exporter --web.listen-address=127.0.0.1:9101 " \
           "--collector.textfile.directory=/var/lib/prometheus/node-exporter\n" in dropin.content
    assert plan.metrics.url == "http://127.0.0.1:9101/metrics"
    v6 = plan_for(settings(metrics={"listen_address": "::1"}), fresh())
    assert "--web.listen-address=[::1]:9100" in v6.metrics.dropin.content


def test_nothing_is_planned_without_alerts_or_metrics():
    plan = plan_for(settings(), fresh())
    assert not plan.alerts.wanted and plan.alerts.files == () and plan.metrics.dropin is None


# --- the operations ---------------------------------------------------------------------------

def _installed(host, **extra):
    facts = converged(host)
    plan = plan_for(host, facts)
    for file in (*plan.alerts.files, *([plan.metrics.dropin] if plan.metrics.dropin else [])):
        facts.state.root_files[file.path] = root_file(file.content, file.mode)
    facts.state.alerts_timer_enabled = facts.state.alerts_timer_active = True
    facts.state.packages.update({"python3": "installed", "prometheus-node-exporter": "installed"})
    facts.state.exporter_enabled = facts.state.exporter_active = bool(plan.metrics.wanted)
    for key, value in extra.items():
        setattr(facts.state, key, value)
    return facts


def test_a_fresh_host_gets_the_timer_started_and_python_installed():
    plan = plan_for(settings(**ALERTS), fresh())
    assert run_op(timer_running, plan.alerts).commands == [
        "systemctl daemon-reload && systemctl enable hermes-infra-alerts.timer && systemctl restart hermes-infra-alerts.timer"]
    assert plan.alerts.python_missing


def test_a_converged_host_changes_nothing_and_a_drifted_one_is_put_back():
    host = settings(**ALERTS, metrics={})
    facts = _installed(host)
    plan = plan_for(host, facts)
    assert not plan.alerts.python_missing and not plan.alerts.files_changed
    assert not run_op(timer_running, plan.alerts).changed
    assert not run_op(exporter_running, plan.metrics).changed
    facts.state.alerts_timer_active = False  # stopped by hand
    assert run_op(timer_running, plan_for(host, facts).alerts).changed
    facts.state.root_files[alerts.CONFIG] = root_file("{}", "0600")  # edited by hand
    drifted = plan_for(host, facts)
    assert [f.path for f in drifted.alerts.files if f.content_changed] == [alerts.CONFIG]
    facts.state.root_files[alerts.SCRIPT] = root_file(alerts.script_text(), "0755")  # mode widened
    assert [f.path for f in plan_for(host, facts).alerts.files if f.meta_changed] == [alerts.SCRIPT]
    facts.state.exporter_active = False
    assert "systemctl restart prometheus-node-exporter.service" in run_op(
        exporter_running, plan_for(host, facts).metrics).commands[-1]


def test_a_new_interval_rewrites_the_timer_and_restarts_it():
    host = settings(**ALERTS)
    facts = _installed(host)
    other = settings(alerts={**ALERTS["alerts"], "interval_seconds": 120})
    plan = plan_for(other, facts)
    assert [f.path for f in plan.alerts.files if f.content_changed] == [alerts.CONFIG, alerts.SERVICE, alerts.TIMER]
    assert "systemctl restart hermes-infra-alerts.timer" in run_op(timer_running, plan.alerts).commands[-1]


def test_removing_alerts_removes_the_timer_its_files_and_state():
    facts = _installed(settings(**ALERTS))
    plan = plan_for(settings(), facts)
    commands = run_op(timer_running, plan.alerts).commands
    assert commands[0] == "systemctl disable --now hermes-infra-alerts.timer hermes-infra-alerts.service 2>/dev/null || true"
    assert commands[1] == ("rm -f /usr/local/sbin/hermes-infra-alerts /etc/hermes-infra/alerts.json "
                           "/etc/systemd/system/hermes-infra-alerts.service /etc/systemd/system/hermes-infra-alerts.timer "
                           "&& rm -rf /var/lib/hermes-infra/alerts && systemctl daemon-reload")
    assert not run_op(timer_running, plan_for(settings(), converged(settings())).alerts).changed


def test_removing_metrics_stops_the_exporter_and_removes_its_drop_in_and_textfile():
    facts = _installed(settings(metrics={}))
    commands = run_op(exporter_running, plan_for(settings(), facts).metrics).commands
    assert commands == ["systemctl disable --now prometheus-node-exporter.service 2>/dev/null || true",
                        "rm -f /etc/systemd/system/prometheus-node-exporter.service.d/hermes-infra.conf "
                        "/var/lib/prometheus/node-exporter/hermes.prom && systemctl daemon-reload"]
    untouched = converged(settings())
    untouched.state.packages["prometheus-node-exporter"] = "installed"  # the operator's own exporter
    assert not run_op(exporter_running, plan_for(settings(), untouched).metrics).changed


def test_the_deploy_writes_the_drop_in_before_installing_the_exporter():
    from hermes_infra.release import deploy

    text = open(deploy.__file__).read()
    body = text[text.index("def watchdog("):]
    assert body.index("metrics.dropin") < body.index("apt_installed") < body.index("timer_running")


# --- alerts test ------------------------------------------------------------------------------

class FakeRemote:
    def __init__(self, result: RunResult):
        self.result, self.commands, self.closed = result, [], False

    def run(self, command, **_):
        self.commands.append(command)
        return self.result

    def close(self):
        self.closed = True


def _host(**sections) -> HostTarget:
    return HostTarget("vm", connection=None, settings=settings(**sections))


def test_alerts_test_runs_the_watchdog_on_the_host_and_prints_each_receiver(capsys):
    remote = FakeRemote(RunResult(0, b"ops (webhook): sent\nwecom-2 (wecom): FAILED: HTTP 403\x1b[31m\n", ""))
    lines = []
    assert alerts_cmd.test([_host(**ALERTS)], remote_for=lambda h: remote, say=lines.append) == 0
    assert lines[0] == "vm: ops (webhook): sent" and "\x1b" not in lines[1]
    assert remote.commands == [alerts_cmd.test_command()] and remote.closed
    assert not any(secret in remote.commands[0] for secret in SECRETS)
    assert subprocess.run(["sh", "-n", "-c", remote.commands[0]]).returncode == 0


def test_alerts_test_says_what_to_do_when_nothing_is_set_or_installed():
    with pytest.raises(DayTwoError, match="alerts is not set"):
        alerts_cmd.test([_host()], remote_for=lambda h: FakeRemote(RunResult(0, b"", "")))
    lines = []
    rc = alerts_cmd.test([_host(**ALERTS)], remote_for=lambda h: FakeRemote(RunResult(3, b"", "")), say=lines.append)
    assert rc == 1 and "not installed" in lines[0] and "hermes-infra up" in lines[0]


def test_alerts_test_is_on_the_command_line():
    from hermes_infra.cli import build_parser

    args = build_parser().parse_args(["alerts", "test", "root@203.0.113.7"])
    assert args.alerts_command == "test" and callable(args.func)


def test_the_batched_read_asks_for_the_watchdogs_timer_the_exporter_and_their_files():
    from hermes_infra.host.hostfacts import SECTION, parse_state, state_command
    from hermes_infra.plan.hostplan import fact_request

    request = fact_request(settings(**ALERTS))
    assert {alerts.CONFIG, alerts.SCRIPT, alerts.EXPORTER_DROPIN} <= set(request.root_files)
    assert {"python3", "prometheus-node-exporter"} <= set(request.packages)
    assert "hermes-infra-alerts.timer prometheus-node-exporter.service" in state_command(request)
    state = parse_state([f"{SECTION} services", "Id=docker.service", "UnitFileState=enabled", "ActiveState=active", "",
                         "Id=hermes-infra-alerts.timer", "UnitFileState=enabled", "ActiveState=active", "",
                         "Id=prometheus-node-exporter.service", "UnitFileState=disabled", "ActiveState=inactive"])
    assert (state.alerts_timer_enabled, state.alerts_timer_active) == (True, True)
    assert (state.exporter_enabled, state.exporter_active, state.backup_timer_enabled) == (False, False, False)
