"""Run the controls against hosts: settings from the same place the deploy reads them, one SSH
connection per host, hosts in parallel, waivers applied, reports written, an exit code."""
from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TextIO

from hermes_infra import commands
from hermes_infra.checks import connect
from hermes_infra.checks.context import HostContext, subjects_for
from hermes_infra.checks.controls import all_controls
from hermes_infra.checks.registry import Control
from hermes_infra.checks.reports import RunReport, parse_report_specs, write_reports
from hermes_infra.checks.results import HostReport, Result, apply_waivers, evaluate
from hermes_infra.checks.waivers import Waiver, load_waivers
from hermes_infra.settings.loading import SettingsError
from hermes_infra.settings.schema import HostSettings

MAX_PARALLEL_HOSTS = 8


@dataclass
class CheckTarget:
    """One host to check: how to reach it and what it should be."""

    name: str
    connection: connect.Connection
    settings: HostSettings


def resolve(targets: Iterable[commands.Target]) -> list[CheckTarget]:
    """Inventory hosts with their validated settings (raises SettingsError before connecting)."""
    found: dict[str, CheckTarget] = {}
    for target in targets:
        settings = commands.validate(target)
        for inventory_host in commands.load_inventory(target):
            try:
                connection = connect.connection_for(inventory_host, sudo=target.sudo)
            except ValueError as error:
                raise SettingsError(str(error)) from None
            found[inventory_host.name] = CheckTarget(inventory_host.name, connection, settings[inventory_host.name])
    return list(found.values())


def instances(settings: HostSettings, controls: list[Control] | None = None):
    """(control, subject) pairs the settings call for, in report order."""
    for control in controls or all_controls():
        for subject in subjects_for(control.scope, settings):
            yield control, subject


def check_context(ctx: HostContext, controls: list[Control] | None = None) -> list[Result]:
    return [evaluate(control, ctx, subject, ctx.name) for control, subject in instances(ctx.settings, controls)]


def check_host(target: CheckTarget, controls: list[Control] | None = None) -> HostReport:
    """Every control instance on one host over one connection; never raises."""
    started = time.monotonic()
    report = HostReport(name=target.name, address=target.connection.address)
    host = connect.testinfra_host(target.connection)
    try:
        try:
            probe = host.run("true")
            if probe.rc != 0:
                raise RuntimeError(f"`true` exited {probe.rc}: {probe.stderr.strip()[:200]}")
        except Exception as error:  # noqa: BLE001 - unreachable host: every check is an error
            report.connection_error = f"{type(error).__name__}: {error}"[:500]
            report.results = [Result(host=target.name, control=control, subject=subject.label, status="error",
                                     message=f"cannot connect to {target.connection.address}: "
                                             f"{report.connection_error}")
                              for control, subject in instances(target.settings, controls)]
            return report
        report.results = check_context(HostContext(host, target.settings, target.name), controls)
        return report
    finally:
        connect.close(host)
        report.seconds = time.monotonic() - started


def check_targets(targets: list[CheckTarget], controls: list[Control] | None = None) -> list[HostReport]:
    if len(targets) <= 1:
        return [check_host(t, controls) for t in targets]
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_HOSTS, len(targets))) as pool:
        return list(pool.map(lambda t: check_host(t, controls), targets))


def collect(targets: list[commands.Target], waivers: str | list[Waiver] | None = None,
            today: dt.date | None = None, controls: list[Control] | None = None) -> RunReport:
    """Resolve, check and apply waivers; the RunReport every writer renders."""
    today = today or dt.date.today()
    known = {c.id for c in all_controls()}
    waiver_list = waivers if isinstance(waivers, list) else load_waivers(waivers, known_ids=known)
    resolved = resolve(targets)
    started_at, started = dt.datetime.now().astimezone(), time.monotonic()
    hosts = check_targets(resolved, controls)
    for host in hosts:
        apply_waivers(host.results, waiver_list, today)
    return RunReport(hosts=hosts, waivers=waiver_list, started=started_at, seconds=time.monotonic() - started,
                     today=today)


def run_checks(targets: list[commands.Target], reports: list[str], waivers: str | None = None, *,
               stdout: TextIO | None = None, today: dt.date | None = None) -> int:
    """Check every host of `targets`, write `reports` (`text`, `json=PATH`, `junit=PATH`, ...).

    Returns 0 when no control fails (after waivers; advisory findings do not count), 1 otherwise.
    Bad report specs, waivers or settings raise SettingsError before any host is contacted.
    """
    specs = parse_report_specs(reports)
    known = {c.id for c in all_controls()}
    waiver_list = load_waivers(waivers, known_ids=known)
    run = collect(targets, waiver_list, today=today)
    write_reports(run, specs, stdout or sys.stdout)
    return run.exit_code
