"""Self-contained HTML pages people look at: `check --report html=PATH` here, and the shared
page frame that `status --html PATH` (`daytwo/report_html.py`) uses too.

One file, no external assets (inline CSS, no script, no font or image fetched), readable
offline and attachable to a ticket. The check page is a matrix of controls (rows) by hosts
(columns) with a coloured status in each cell, then every failure with what was found and its
remediation. Every value is HTML-escaped: messages carry text from the hosts (an agent may have
written it).
"""
from __future__ import annotations

import html
from collections import OrderedDict

from hermes_infra.checks.results import counts

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1d2330;background:#fff}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:24px 0 8px}
.meta{color:#5b6478;margin-bottom:16px}
.verdict{display:inline-block;padding:4px 12px;border-radius:4px;font-weight:700;color:#fff}
.verdict.pass{background:#1f7a3d} .verdict.fail{background:#b3261e} .verdict.warn{background:#8a6d00}
table{border-collapse:collapse;margin:8px 0 16px} th,td{border:1px solid #d5d9e2;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f1f3f7;position:sticky;top:0}
td.s{font-weight:700;text-align:center;white-space:nowrap}
.passed{background:#d9f2e1;color:#14532d} .failed{background:#fbd5d2;color:#7f1d1d} .error{background:#fde2c8;color:#7c2d12}
.warning{background:#fff3bf;color:#6b4f00} .waived{background:#e3e8f4;color:#29354f} .skipped{background:#f4f4f4;color:#666}
.none{color:#aaa}
.finding{border-left:4px solid #b3261e;padding:6px 12px;margin:8px 0;background:#fff7f6}
.finding.error{border-color:#c2410c;background:#fff8f1} .finding.warning{border-color:#b08900;background:#fffbea}
.finding.waived{border-color:#5b6b91;background:#f6f8fc}
.finding b{display:block} .fix{margin-top:4px} .fix i{font-style:normal;font-weight:700}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
"""

LABELS = {"passed": "PASS", "failed": "FAIL", "error": "ERROR", "warning": "WARN", "skipped": "SKIP", "waived": "WAIVED"}


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


def render_check_html(run) -> str:
    """A `checks.reports.RunReport` as one page: verdict, controls x hosts, findings with fixes."""
    total = counts(run.results)
    passed = run.exit_code == 0
    parts = ["<h1>hermes-infra compliance check</h1>",
             f"<div class=\"meta\">{esc(run.started.isoformat(timespec='seconds'))}, {len(run.hosts)} host(s), "
             f"{run.seconds:.1f}s</div>",
             f"<p><span class=\"verdict {'pass' if passed else 'fail'}\" id=\"verdict\">"
             f"{'PASSED' if passed else 'FAILED'}</span> "
             f"{total['total']} checks: {total['passed']} passed, {total['failed']} failed, {total['error']} errors, "
             f"{total['warning']} warnings (advisory), {total['waived']} waived, {total['skipped']} skipped</p>"]
    rows: OrderedDict[tuple[str, str], dict] = OrderedDict()
    for host in run.hosts:
        for r in host.results:
            rows.setdefault((r.control.id, r.subject), {"control": r.control, "cells": {}})["cells"][host.name] = r
    head = "".join(f"<th>{esc(h.name)}</th>" for h in run.hosts)
    parts.append(f"<h2>Controls by host</h2><table id=\"matrix\"><thead><tr><th>Control</th><th>Subject</th>"
                 f"<th>Severity</th><th>CIS</th><th>Title</th>{head}</tr></thead><tbody>")
    for (control_id, subject), row in rows.items():
        control = row["control"]
        cells = []
        for host in run.hosts:
            r = row["cells"].get(host.name)
            if r is None:
                cells.append("<td class=\"s none\">-</td>")
            else:
                cells.append(f"<td class=\"s {esc(r.status)}\" title=\"{esc(r.message)}\">{LABELS[r.status]}</td>")
        parts.append(f"<tr><td><code>{esc(control_id)}</code></td><td>{esc(subject)}</td><td>{esc(control.severity)}"
                     f"</td><td>{esc(control.cis or '-')}</td><td>{esc(control.title)}</td>{''.join(cells)}</tr>")
    parts.append("</tbody></table>")
    findings = [(h, r) for h in run.hosts for r in h.results if r.status in ("failed", "error", "warning", "waived")]
    errors = [h for h in run.hosts if h.connection_error]
    parts.append(f"<h2>Findings ({len(findings)})</h2>")
    for host in errors:
        parts.append(f"<div class=\"finding error\"><b>{esc(host.name)}: cannot connect</b>"
                     f"{esc(host.connection_error)}</div>")
    for host, r in findings:
        fix = (f"<div class=\"waived-note\">waived until {esc(r.waiver.expires)}: {esc(r.waiver.justification)}</div>"
               if r.status == "waived" else f"<div class=\"fix\"><i>Fix:</i> {esc(r.control.remediation)}</div>")
        parts.append(f"<div class=\"finding {esc(r.status)}\"><b>{LABELS[r.status]} {esc(r.control.id)} on "
                     f"{esc(host.name)} [{esc(r.subject)}]: {esc(r.control.title)}</b>"
                     f"<div>Found: {esc(r.message)}</div>{fix}</div>")
    if not findings and not errors:
        parts.append("<p>None: every control passes.</p>")
    notes = run.waiver_notes()
    if notes:
        parts.append("<h2>Waivers</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    return page("hermes-infra check: " + ("PASSED" if passed else "FAILED"), "\n".join(parts))
