"""Report writers: a terminal table, JSON, JUnit XML and a self-contained HTML page, several at
once (InSpec/goss style).

A report spec is `FORMAT` (to stdout) or `FORMAT=PATH`: `text`, `text=check.txt`,
`json=check.json`, `json` / `json=-` (stdout), `junit=check.xml`, `html=check.html`.
"""
from __future__ import annotations

import datetime as dt
import json
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from hermes_infra.host.cleantext import clean
from hermes_infra.checks.results import HostReport, Result, all_results, counts, exit_code
from hermes_infra.checks.waivers import Waiver
from hermes_infra.settings.loading import SettingsError

FORMATS = ("text", "json", "junit", "html")
SCHEMA = "hermes-infra/check-report/v1"
LABELS = {"passed": "PASS", "failed": "FAIL", "error": "ERROR", "warning": "WARN", "skipped": "SKIP",
          "waived": "WAIVED"}


class ReportSpecError(SettingsError):
    pass


@dataclass(frozen=True)
class ReportSpec:
    format: str
    path: str | None  # None or "-" = stdout

    @property
    def to_stdout(self) -> bool:
        return self.path in (None, "-")


def parse_report_specs(specs: list[str] | None) -> list[ReportSpec]:
    parsed = []
    for spec in specs or ["text"]:
        fmt, _, path = spec.partition("=")
        fmt = fmt.strip().lower()
        if fmt not in FORMATS:
            raise ReportSpecError(f"unknown report format {fmt!r} in --report {spec!r}. "
                                  "Fix: text, json=PATH, junit=PATH or html=PATH")
        if "=" in spec and not path.strip():
            raise ReportSpecError(f"--report {spec!r} names no file. Fix: {fmt}=PATH, or {fmt} for the terminal")
        parsed.append(ReportSpec(fmt, path.strip() or None))
    if sum(1 for s in parsed if s.to_stdout) > 1:
        raise ReportSpecError("more than one report goes to the terminal. Fix: give all but one a file (json=out.json)")
    return parsed


@dataclass
class RunReport:
    hosts: list[HostReport]
    waivers: list[Waiver]
    started: dt.datetime
    seconds: float
    today: dt.date

    @property
    def results(self) -> list[Result]:
        return all_results(self.hosts)

    @property
    def exit_code(self) -> int:
        return exit_code(self.results)

    def waiver_notes(self) -> list[str]:
        notes = []
        for waiver in self.waivers:
            used = [r for r in self.results if r.waiver is waiver and r.status == "waived"]
            expired_hits = [r for r in self.results if r.expired_waiver is waiver]
            where = f"{waiver.control} on {waiver.hosts}" + ("" if waiver.subject == "*" else f" ({waiver.subject})")
            if not waiver.active(self.today):
                hits = f"; it would have covered {len(expired_hits)} failing check(s)" if expired_hits else ""
                notes.append(f"EXPIRED on {waiver.expires}: {where} no longer waives anything{hits}")
            elif used:
                notes.append(f"active until {waiver.expires}: {where} waives {len(used)} check(s): "
                             f"{waiver.justification}")
            else:
                notes.append(f"active until {waiver.expires}: {where} waives nothing (those checks pass)")
        return notes


# ------------------------------------------------------------------------------ text
def _cell(value: str, width: int) -> str:
    return value if len(value) <= width else value[: width - 1] + "~"


def render_text(run: RunReport) -> str:
    lines: list[str] = []
    for host in run.hosts:
        c = counts(host.results)
        lines.append(f"Host {host.name}{f' ({host.address})' if host.address else ''}: {c['total']} checks, "
                     f"{c['passed']} passed, {c['failed']} failed, {c['error']} errors, {c['warning']} warnings, "
                     f"{c['waived']} waived, {c['skipped']} skipped ({host.seconds:.1f}s)")
        if host.connection_error:
            lines.append(f"  cannot connect: {clean(host.connection_error, 2000)}")
        subject_width = max([len(r.subject) for r in host.results] + [7])
        lines.append(f"  {'STATUS':<7} {'CONTROL':<13} {'SUBJECT':<{subject_width}} {'SEVERITY':<9} {'CIS':<5} TITLE")
        for r in host.results:
            lines.append(f"  {LABELS[r.status]:<7} {r.control.id:<13} {clean(r.subject, 200):<{subject_width}} "
                         f"{r.control.severity:<9} {r.control.cis or '-':<5} {_cell(r.control.title, 90)}")
        problems = [r for r in host.results if r.status in ("failed", "error", "warning", "waived")]
        if problems:
            lines.append("")
        for r in problems:
            lines.append(f"  {LABELS[r.status]} {r.control.id} [{clean(r.subject, 200)}] {r.control.title}")
            # A message quotes what the host said (an agent can shape it): no escape sequence passes.
            lines.append(f"      found: {clean(r.message, 4000)}")
            if r.status == "waived":
                lines.append(f"      waived until {r.waiver.expires}: {r.waiver.justification}")
            else:
                if r.expired_waiver is not None:
                    lines.append(f"      waiver EXPIRED on {r.expired_waiver.expires}; it no longer waives this "
                                 f"({r.expired_waiver.justification})")
                lines.append(f"      fix:   {r.control.remediation}")
        lines.append("")
    c = counts(run.results)
    verdict = "FAILED" if run.exit_code else "PASSED"
    lines.append(f"{verdict}: {len(run.hosts)} host(s), {c['total']} checks: {c['passed']} passed, {c['failed']} "
                 f"failed, {c['error']} errors, {c['warning']} warnings (advisory), {c['waived']} waived, "
                 f"{c['skipped']} skipped in {run.seconds:.1f}s")
    for note in run.waiver_notes():
        lines.append(f"  waiver {note}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ json
def _result_dict(r: Result) -> dict:
    return {
        "control": r.control.id, "title": r.control.title, "severity": r.control.severity,
        "cis": r.control.cis, "subject": r.subject, "status": r.status, "outcome": r.outcome,
        "message": r.message, "remediation": r.control.remediation if r.outcome != "passed" else None,
        "duration_seconds": round(r.duration, 3),
        "waiver": r.waiver.describe() if r.waiver is not None else None,
        "expired_waiver": r.expired_waiver.describe() if r.expired_waiver is not None else None,
    }


def render_json(run: RunReport) -> str:
    document = {
        "schema": SCHEMA,
        "started_at": run.started.isoformat(timespec="seconds"),
        "duration_seconds": round(run.seconds, 2),
        "passed": run.exit_code == 0,
        "exit_code": run.exit_code,
        "summary": counts(run.results),
        "hosts": [{
            "name": host.name, "address": host.address, "connection_error": host.connection_error,
            "duration_seconds": round(host.seconds, 2), "summary": counts(host.results),
            "results": [_result_dict(r) for r in host.results],
        } for host in run.hosts],
        "waivers": [{**w.describe(), "expired": not w.active(run.today)} for w in run.waivers],
    }
    return json.dumps(document, indent=2) + "\n"


# ----------------------------------------------------------------------------- junit
def render_junit(run: RunReport) -> str:
    """One <testsuite> per host, one <testcase> per control instance.

    failed -> <failure>, error -> <error>, waived and skipped -> <skipped>; warnings (advisory)
    are passing test cases carrying the finding in <system-out>.
    """
    def suite_counts(results: list[Result]) -> dict[str, str]:
        c = counts(results)
        return {"tests": str(c["total"]), "failures": str(c["failed"]), "errors": str(c["error"]),
                "skipped": str(c["skipped"] + c["waived"])}

    root = ET.Element("testsuites", {"name": "hermes-infra check", **suite_counts(run.results),
                                     "time": f"{run.seconds:.3f}"})
    for host in run.hosts:
        suite = ET.SubElement(root, "testsuite", {"name": host.name, **suite_counts(host.results),
                                                  "time": f"{host.seconds:.3f}",
                                                  "timestamp": run.started.isoformat(timespec="seconds")})
        if host.connection_error:
            ET.SubElement(suite, "system-err").text = f"cannot connect: {clean(host.connection_error, 2000)}"
        for r in host.results:
            case = ET.SubElement(suite, "testcase", {
                "classname": f"hermes-infra.{host.name}", "name": f"{r.control.id} [{clean(r.subject, 200)}] {r.control.title}",
                "time": f"{r.duration:.3f}"})
            props = ET.SubElement(case, "properties")
            for key, value in (("control", r.control.id), ("severity", r.control.severity),
                               ("cis", r.control.cis or ""), ("subject", clean(r.subject, 200)), ("status", r.status)):
                ET.SubElement(props, "property", {"name": key, "value": value})
            # XML 1.0 cannot hold most control characters: a hostile message must not make the
            # report unreadable, nor reach a CI log's terminal as escape sequences.
            message = clean(r.message, 4000)
            text = f"{message}\nRemediation: {r.control.remediation}"
            if r.expired_waiver is not None:
                text += f"\nWaiver expired on {r.expired_waiver.expires}: {r.expired_waiver.justification}"
            if r.status == "failed":
                ET.SubElement(case, "failure", {"message": message, "type": r.control.severity}).text = text
            elif r.status == "error":
                ET.SubElement(case, "error", {"message": message, "type": "error"}).text = text
            elif r.status == "waived":
                ET.SubElement(case, "skipped", {
                    "message": f"waived until {r.waiver.expires}: {r.waiver.justification} ({r.outcome}: {message})"})
            elif r.status == "skipped":
                ET.SubElement(case, "skipped", {"message": message})
            elif r.status == "warning":
                ET.SubElement(case, "system-out").text = f"ADVISORY: {text}"
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# ------------------------------------------------------------------------------ html
def render_html(run: RunReport) -> str:
    """One self-contained page: verdict, controls by hosts, each failure with its remediation."""
    from hermes_infra.checks.report_html import render_check_html

    return render_check_html(run)


RENDERERS = {"text": render_text, "json": render_json, "junit": render_junit, "html": render_html}


def write_reports(run: RunReport, specs: list[ReportSpec], stdout: TextIO | None = None) -> None:
    stdout = stdout or sys.stdout
    for spec in specs:
        text = RENDERERS[spec.format](run)
        if spec.to_stdout:
            stdout.write(text)
            stdout.flush()
        else:
            path = Path(spec.path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
