"""HTML pages: self-contained, escaped, and what headless Chromium shows (Debian's `chromium`)."""
from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from hermes_infra.checks.reports import parse_report_specs, write_reports
from hermes_infra.daytwo import status
from hermes_infra.checks.report_html import render_check_html
from hermes_infra.daytwo.report_html import render_status_html

from tests.unit.test_checks import run_report  # noqa: F401 - the fixture
from tests.unit.test_daytwo_status import sample_output
from tests.unit.daytwo_fakes import host

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROBE = """<script>
const cells = [...document.querySelectorAll('td.s')].map(td => [td.textContent, getComputedStyle(td).backgroundColor]);
const verdict = document.getElementById('verdict');
document.title = JSON.stringify({text: document.body.innerText, verdict: verdict.innerText,
  verdictColor: getComputedStyle(verdict).backgroundColor, cells: cells,
  width: document.documentElement.scrollWidth});
</script>"""


def render_in_chromium(page: str, tmp_path: Path) -> dict:
    """Load the page in headless Chromium, with a probe script appended to a copy, and return what
    the browser computed: visible text, the verdict's colour, each status cell's colour."""
    probe_page = tmp_path / "probe.html"
    probe_page.write_text(page.replace("</body>", PROBE + "</body>"))
    result = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                             "--no-first-run", "--user-data-dir=" + str(tmp_path / "profile"),
                             "--dump-dom", probe_page.as_uri()], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    title = re.search(r"<title>(.*?)</title>", result.stdout, re.S).group(1)
    import html
    return json.loads(html.unescape(title))


def assert_self_contained(page: str) -> None:
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "external asset"
    assert "@import" not in page and "url(" not in page and "<script" not in page


def test_check_report_html_is_written_next_to_others(run_report, tmp_path):  # noqa: F811
    path = tmp_path / "r" / "check.html"
    write_reports(run_report, parse_report_specs([f"html={path}", "json=" + str(tmp_path / "c.json")]))
    page = path.read_text()
    assert_self_contained(page)
    assert "HI-HOST-001" in page and "prod-2" in page and "FAILED" in page


def test_host_text_is_escaped(run_report):  # noqa: F811
    run_report.hosts[0].results[1].message = "<img src=x onerror=alert(1)>"
    page = render_check_html(run_report)
    assert "<img src=x" not in page and "&lt;img src=x" in page


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium)")
def test_check_report_as_chromium_shows_it(run_report, tmp_path):  # noqa: F811
    shown = render_in_chromium(render_check_html(run_report), tmp_path)
    assert shown["verdict"] == "FAILED"
    assert shown["verdictColor"] == "rgb(179, 38, 30)"  # red at a glance
    colours = {label: colour for label, colour in shown["cells"]}
    assert colours["FAIL"] == "rgb(251, 213, 210)" and colours["PASS"] == "rgb(217, 242, 225)"
    text = shown["text"]
    # hosts by controls: a header per host, a row per control instance
    assert "prod-1" in text and "prod-2" in text and "HI-CTR-003" in text
    # remediation on each failure
    assert "Found: active swap is 0 MiB" in text
    assert "Fix: " in text and "cannot connect" in text
    assert text.count("Fix: ") >= 2


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium)")
def test_status_page_as_chromium_shows_it(tmp_path):
    up = status.parse_status(host("web1"), sample_output())
    down = status.parse_status(host("web2"), sample_output(health_code="000"))
    report = status.StatusReport([up, down], dt.datetime(2026, 11, 20, 10, tzinfo=dt.timezone.utc), 1.2)
    page = render_status_html(report)
    assert_self_contained(page)
    shown = render_in_chromium(page, tmp_path)
    assert shown["verdict"] == "UNHEALTHY" and shown["verdictColor"] == "rgb(179, 38, 30)"
    text = shown["text"]
    assert "web1" in text and "web2" in text and "1/2 gateways healthy" in text
    assert "DOWN (000)" in text and "model: no provider configured" in text
    assert "hermes-infra logs web2 --profile hermes" in text


def test_the_page_shows_every_fix_the_text_shows():
    """Issue 19: the page dropped hints the text gave (a missing container: `up`, not only `restart`)."""
    import html

    missing = status.parse_status(host("web1"), "\n".join([f"{status.SECTION} host", "100",
                                                           f"{status.SECTION} inspect hermes", "missing"]))
    degraded = status.parse_status(host("web2"), sample_output())
    down = status.parse_status(host("web3"), sample_output(health_code="000"))
    report = status.StatusReport([missing, degraded, down], dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc), 1.0)
    text = status.render_text(report)
    page = html.unescape(re.sub(r"<[^>]+>", " ", render_status_html(report)))
    fixes = [line.split("Fix: ", 1)[1].strip() for line in text.splitlines() if "Fix: " in line]
    assert len(fixes) >= 2 and any("hermes-infra up" in fix for fix in fixes)
    assert any("The model provider" in fix for fix in fixes)  # the readiness hint is a Fix: line too
    for fix in fixes:
        assert fix in " ".join(page.split()), fix
