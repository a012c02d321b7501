"""`hermes-infra check TARGET [--report FORMAT[=PATH]]... [--waivers FILE]`.

Whatever the reports, the terminal always gets the recap (each host's counts, what failed, the
verdict) and where each report file went: `--report html=PATH` alone used to print nothing and
exit 1, which read as a crash."""
from __future__ import annotations

import sys
from typing import TextIO

from hermes_infra import commands
from hermes_infra.checks.controls import all_controls
from hermes_infra.checks.reports import LABELS, RunReport, parse_report_specs, render_text, write_reports
from hermes_infra.checks.results import counts
from hermes_infra.checks.runner import collect
from hermes_infra.checks.waivers import load_waivers
from hermes_infra.host.cleantext import clean


def recap(run: RunReport) -> str:
    """Each host's counts and its failures (by control), then the verdict and waiver notes."""
    lines = []
    for host in run.hosts:
        c = counts(host.results)
        lines.append(f"Host {host.name}: {c['total']} checks, {c['passed']} passed, {c['failed']} failed, "
                     f"{c['error']} errors, {c['warning']} warnings")
        if host.connection_error:
            lines.append(f"  cannot connect: {clean(host.connection_error, 400)}")
            continue
        for r in host.results:
            if r.status in ("failed", "error"):
                lines.append(f"  {LABELS[r.status]} {r.control.id} [{clean(r.subject, 200)}] {r.control.title}")
    verdict = render_text(run).rstrip("\n").split("\n\n")[-1]
    return "\n".join(lines + [verdict]) + "\n"


def run(args, target: commands.Target, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Exit 0: every control passes (or is waived / advisory); 1: a control fails; 2: bad input
    (raised as SettingsError before any host is contacted)."""
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    specs = parse_report_specs(list(args.report or []) or ["text"])
    waivers = load_waivers(args.waivers, known_ids={c.id for c in all_controls()})
    report = collect([target], waivers)
    write_reports(report, specs, stdout)
    if not any(spec.to_stdout and spec.format == "text" for spec in specs):
        # A JSON or JUnit report on stdout stays parseable: the recap then goes to stderr.
        (stderr if any(spec.to_stdout for spec in specs) else stdout).write(recap(report))
    for spec in specs:
        if not spec.to_stdout:
            print(f"{spec.format} report: {spec.path}", file=stderr)
    return report.exit_code
