"""`status --html PATH`: the `status` table as one self-contained page, in the frame and colours
of the check report (`checks/report_html.py`). Every value is HTML-escaped: the rows carry text
from the hosts (an agent may have written it).
"""
from __future__ import annotations

from hermes_infra.checks.report_html import esc, page


def render_status_html(report) -> str:
    """A `daytwo.status.StatusReport` as one page: one row per host and profile."""
    from hermes_infra.daytwo import status as st

    healthy = report.exit_code == 0
    total = sum(len(h.gateways) for h in report.hosts)
    good = sum(1 for h in report.hosts for g in h.gateways if g.healthy)
    ready = sum(1 for h in report.hosts for g in h.gateways if g.ready)
    # Alive decides pass or fail (the exit code); a live gateway that cannot answer a message
    # is a warning the page must not call plain HEALTHY.
    verdict, css = ("UNHEALTHY", "fail") if not healthy else ("HEALTHY", "pass") if ready == total else \
        ("HEALTHY, NOT READY", "warn")
    parts = ["<h1>hermes-infra status</h1>",
             f"<div class=\"meta\">{esc(report.started.isoformat(timespec='seconds'))}, {len(report.hosts)} host(s), "
             f"{report.seconds:.1f}s</div>",
             f"<p><span class=\"verdict {css}\" id=\"verdict\">{verdict}</span> {good}/{total} gateways healthy, "
             f"{ready}/{total} ready</p>",
             "<table id=\"status\"><thead><tr>" + "".join(f"<th>{esc(c)}</th>" for c in st.COLUMNS)
             + "<th>LAST DEPLOY</th></tr></thead><tbody>"]
    for host in report.hosts:
        if host.error:
            parts.append(f"<tr><td>{esc(host.name)}</td><td colspan=\"{len(st.COLUMNS)}\" class=\"error\">"
                         f"cannot read status: {esc(host.error)}</td></tr>")
            continue
        for g, row in zip(host.gateways, st.rows(type(report)([host], report.started, report.seconds))):
            cells = []
            for column, value in zip(st.COLUMNS, row):
                css = ""
                if column == "STATE":
                    css = "passed" if g.state == "running" else "failed"
                elif column == "HEALTH":
                    css = "passed" if g.health_code == "200" else "failed"
                elif column == "READY":
                    css = "passed" if g.ready else "warning" if g.ready_status else ""
                elif column == "OOM" and g.oom_kills:
                    css = "failed"
                cells.append(f"<td class=\"{css}\">{esc(value)}</td>")
            parts.append(f"<tr>{''.join(cells)}<td>{esc(st.deploy_cell(host.last_deploy))}</td></tr>")
    parts.append("</tbody></table>")
    notes = []
    for host in report.hosts:
        for item in st.attention(host):
            details = "<br>".join(esc(detail) for detail in item.details)
            fix = f"<div class=\"fix\"><i>Fix:</i> {esc(item.fix)}</div>" if item.fix else ""
            notes.append(f"<div class=\"finding{' warning' if item.level == 'warning' else ''}\"><b>{esc(host.name)}/"
                         f"{esc(item.profile)}: {esc(item.finding)}</b>{details}{fix}</div>")
    if notes:
        parts.append("<h2>Attention</h2>" + "\n".join(notes))
    return page("hermes-infra status: " + verdict, "\n".join(parts))
