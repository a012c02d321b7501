"""The on-host watchdog (setting `alerts`) and the Prometheus node exporter it feeds (setting
`metrics`), as files: pure, from settings and facts.

A systemd timer runs `/usr/local/sbin/hermes-infra-alerts` (python3, root's, 0700, rendered from
`templates/alerts_watchdog.py.j2`) every `alerts.interval_seconds`. What it needs is one root
0600 JSON file, `/etc/hermes-infra/alerts.json`: the receivers (their URLs and tokens are
secrets), each gateway's container, data dir, owner and API key (for `/health/detailed`), the
scheduled backup's record, the off-host upload's record and restic log (`offsite.last_run_path`,
`offsite.log_path`), the free-space threshold. The units hold no secret and no
argument but the script's path. Its state (the last value of every check, messages still to
deliver) is `/var/lib/hermes-infra/alerts/state.json`, root's, 0600 in a 0700 directory.

With `metrics`, Debian's `prometheus-node-exporter` is installed; a systemd drop-in (ours
alone: the package's conffile `/etc/default/prometheus-node-exporter` is left as it is) sets its
listen address and the textfile collector's directory, where the watchdog writes `hermes.prom`.
The drop-in is written before the package is installed, so the exporter's first start already
listens where the settings say, never on every interface.
"""
from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hermes_infra.host import lockcommands
from hermes_infra.plan import backup_timer, offsite
from hermes_infra.plan.render import render_template
from hermes_infra.settings.schema import AlertReceiverSettings, HostSettings

SCRIPT = "/usr/local/sbin/hermes-infra-alerts"
CONFIG = "/etc/hermes-infra/alerts.json"
SERVICE = "/etc/systemd/system/hermes-infra-alerts.service"
TIMER = "/etc/systemd/system/hermes-infra-alerts.timer"
TIMER_UNIT = "hermes-infra-alerts.timer"
SERVICE_UNIT = "hermes-infra-alerts.service"
STATE_DIR = f"{lockcommands.STATE_DIR}/alerts"
STATE_FILE = f"{STATE_DIR}/state.json"
PATHS = (SCRIPT, CONFIG, SERVICE, TIMER)
PYTHON_PACKAGE = "python3"

EXPORTER_PACKAGE = "prometheus-node-exporter"
EXPORTER_UNIT = "prometheus-node-exporter.service"
EXPORTER_BINARY = "/usr/bin/prometheus-node-exporter"
EXPORTER_DROPIN = "/etc/systemd/system/prometheus-node-exporter.service.d/hermes-infra.conf"
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
"""Debian's textfile collector directory (the package creates it)."""
TEXTFILE = f"{TEXTFILE_DIR}/hermes.prom"
METRICS_PATHS = (EXPORTER_DROPIN,)

CONTAINER_API_PORT = 8642


def receiver_config(receiver: AlertReceiverSettings, index: int) -> dict[str, Any]:
    """One receiver as the script reads it (secrets in clear: this goes only into CONFIG, 0600)."""
    entry: dict[str, Any] = {"label": receiver.name or f"{receiver.kind}-{index + 1}", "kind": receiver.kind}
    if receiver.kind == "telegram":
        entry.update(bot_token=receiver.bot_token.get_secret_value() if receiver.bot_token else None,
                     chat_id=receiver.chat_id, api_url=receiver.api_url)
    else:
        entry["url"] = receiver.secret_url.get_secret_value() if receiver.secret_url else None
    if receiver.sign_secret is not None:
        entry["secret"] = receiver.sign_secret.get_secret_value()
    return entry


def config_text(settings: HostSettings, host: str, api_keys: dict[str, str],
                memory_limits: dict[str, int] | None = None) -> str:
    """CONFIG's bytes: sorted keys, one trailing newline, so the same settings give the same file."""
    backups = settings.scheduled_backups.schedule is not None
    # Scheduled or manual, every backup uploads when offsite is set: its record does not need a schedule.
    uploads = settings.scheduled_backups.offsite is not None
    gateways = [{
        "profile": g.name, "container": g.service_name, "data_dir": g.host_data_dir, "uid": g.uid, "gid": g.gid,
        "port": CONTAINER_API_PORT, "api_key": api_keys[g.name],
        "backup_record": backup_timer.last_run_path(settings, g.name) if backups else None,
        "offsite_record": offsite.last_run_path(settings, g.name) if uploads else None,
        "offsite_log": offsite.log_path(settings, g.name) if uploads else None,
        "memory_limit": (memory_limits or {}).get(g.name),
    } for g in settings.gateways]
    alerts = settings.alerts
    config = {
        "host": host, "gateways": gateways, "state_file": STATE_FILE,
        "lock_dir": lockcommands.LOCK_DIR, "lock_stale_seconds": lockcommands.STALE_AFTER_SECONDS,
        "interval_seconds": alerts.interval_seconds if alerts else 60,
        "min_free_percent": alerts.min_free_percent if alerts else 10,
        "receivers": [receiver_config(r, i) for i, r in enumerate(alerts.receivers)] if alerts else [],
        "textfile": TEXTFILE if settings.metrics is not None else None,
    }
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


def script_text() -> str:
    return render_template("alerts_watchdog.py.j2", config_path=CONFIG)


def interval_of(settings: HostSettings) -> int:
    return settings.alerts.interval_seconds if settings.alerts else 60


def units(interval: int) -> dict[str, str]:
    """The service runs the script once (no argument but its path: nothing secret); the timer
    starts it `interval` seconds after each run ended, so two rounds never overlap."""
    interval = int(interval)
    return {
        SERVICE: ("[Unit]\nDescription=hermes-infra: watch the Hermes gateways and send alerts\n"
                  "After=docker.service\n\n"
                  f"[Service]\nType=oneshot\nExecStart=/usr/bin/python3 {SCRIPT}\nNice=5\n"
                  f"TimeoutStartSec={max(60, interval * 2)}\nUMask=0077\n"),
        TIMER: ("[Unit]\nDescription=hermes-infra: run the Hermes watchdog every "
                f"{interval} s\n\n[Timer]\nOnActiveSec=10s\nOnUnitInactiveSec={interval}s\nAccuracySec=1s\n\n"
                "[Install]\nWantedBy=timers.target\n"),
    }


def exporter_dropin(settings: HostSettings) -> str:
    """The exporter's command line: the settings' address, the textfile directory. Replaces the
    package's ExecStart (and its $ARGS), so the conffile cannot widen the listen address."""
    metrics = settings.metrics
    assert metrics is not None
    address = f"[{metrics.listen_address}]" if ":" in metrics.listen_address else metrics.listen_address
    listen = shlex.quote(f"--web.listen-address={address}:{metrics.port}")
    textfile = shlex.quote(f"--collector.textfile.directory={TEXTFILE_DIR}")
    return ("# Managed by hermes-infra (setting metrics): replaced by each deploy.\n[Service]\nExecStart=\n"
            f"ExecStart={EXPORTER_BINARY} {listen} {textfile}\n")


def exporter_url(settings: HostSettings) -> str:
    metrics = settings.metrics
    assert metrics is not None
    address = f"[{metrics.listen_address}]" if ":" in metrics.listen_address else metrics.listen_address
    return f"http://{address}:{metrics.port}/metrics"


@dataclass(frozen=True)
class AlertsPlan:
    """The watchdog: its files when `alerts` or `metrics` is set, what to remove when neither is."""

    wanted: bool
    files: tuple
    """RootFilePlan of the script (0700), the config (0600, secret) and the two units."""
    present: tuple[str, ...]
    """Watchdog files found on the host (removed when it is no longer wanted)."""
    enabled: bool
    active: bool
    python_missing: bool
    interval: int = 60

    @property
    def files_changed(self) -> bool:
        return any(f.content_changed or f.meta_changed for f in self.files)


@dataclass(frozen=True)
class MetricsPlan:
    """The node exporter: its drop-in and package when `metrics` is set."""

    wanted: bool
    dropin: Any
    """RootFilePlan of the drop-in, or None when metrics is unset."""
    dropin_present: bool
    installed: bool
    enabled: bool
    active: bool
    url: str | None = None


def plan_alerts(settings: HostSettings, state, host: str, api_keys: dict[str, str],
                root_file: Callable[..., Any], memory_limits: dict[str, int] | None = None) -> AlertsPlan:
    """`root_file(path, content, mode, secret)` builds a RootFilePlan against the host's facts."""
    wanted = settings.alerts is not None or settings.metrics is not None
    files: tuple = ()
    interval = interval_of(settings)
    if wanted:
        files = (root_file(SCRIPT, script_text(), "0700"),
                 root_file(CONFIG, config_text(settings, host, api_keys, memory_limits), "0600", True),
                 *(root_file(path, text) for path, text in units(interval).items()))
    return AlertsPlan(wanted=wanted, files=files, interval=interval,
                      present=tuple(p for p in PATHS if state.root_files.get(p) is not None),
                      enabled=state.alerts_timer_enabled, active=state.alerts_timer_active,
                      python_missing=wanted and state.packages.get(PYTHON_PACKAGE) != "installed")


def plan_metrics(settings: HostSettings, state, root_file: Callable[..., Any]) -> MetricsPlan:
    wanted = settings.metrics is not None
    return MetricsPlan(
        wanted=wanted, dropin=root_file(EXPORTER_DROPIN, exporter_dropin(settings)) if wanted else None,
        dropin_present=state.root_files.get(EXPORTER_DROPIN) is not None,
        installed=state.packages.get(EXPORTER_PACKAGE) == "installed",
        enabled=state.exporter_enabled, active=state.exporter_active,
        url=exporter_url(settings) if wanted else None)


def requested_packages(settings: HostSettings) -> tuple[str, ...]:
    """Packages whose state the batched read asks dpkg for."""
    return (PYTHON_PACKAGE, EXPORTER_PACKAGE)


def requested_files(settings: HostSettings) -> tuple[str, ...]:
    return (*PATHS, *METRICS_PATHS)
