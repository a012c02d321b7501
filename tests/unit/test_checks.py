"""Compliance checks without a host: the registry, waivers, report writers, exit codes."""
from __future__ import annotations

import datetime as dt
import io
import json
import re
import xml.etree.ElementTree as ET

import pytest

from hermes_infra.checks import REGISTRY, all_controls, controls_markdown
from hermes_infra.checks.controls import get_control
from hermes_infra.checks.registry import SCOPES, SEVERITIES, control
from hermes_infra.checks.reports import (
    ReportSpec,
    ReportSpecError,
    RunReport,
    parse_report_specs,
    render_json,
    render_junit,
    render_text,
    write_reports,
)
from hermes_infra.checks.results import HostReport, Result, apply_waivers, counts, exit_code
from hermes_infra.checks.waivers import Waiver, WaiverError, find_waiver, load_waivers, parse_waivers

TODAY = dt.date(2026, 6, 15)

# IDs are part of the product's interface (waivers, audit trails, dashboards refer to them):
# this list may grow, but an ID must never disappear or change meaning.
STABLE = {
    "HI-DOCKER-001": ("host", None), "HI-DOCKER-002": ("host", None), "HI-DOCKER-003": ("host", "2.13"),
    "HI-DOCKER-004": ("host", "2.15"), "HI-HOST-001": ("host", None), "HI-HOST-002": ("host", None),
    "HI-SSH-001": ("host", None), "HI-DATA-001": ("gateway", None), "HI-DATA-002": ("gateway", None),
    "HI-DATA-003": ("gateway", None), "HI-DATA-004": ("gateway", None),
    "HI-DATA-005": ("gateway", None), "HI-CTR-001": ("container", None),
    "HI-CTR-002": ("container", "5.15"), "HI-CTR-003": ("container", "5.11"), "HI-CTR-004": ("container", "5.12"),
    "HI-CTR-005": ("container", "5.29"), "HI-CTR-006": ("container", "5.5"), "HI-CTR-007": ("container", "5.10"),
    "HI-CTR-008": ("container", "5.32"), "HI-CTR-009": ("container", "5.26"), "HI-CTR-010": ("container", None),
    "HI-API-001": ("gateway", "5.14"), "HI-API-002": ("gateway", None), "HI-API-003": ("gateway", None),
    "HI-API-004": ("gateway", None), "HI-API-005": ("gateway", None), "HI-CMP-001": ("companion", None),
    # added with the CIS daemon hardening and the gateway health check
    "HI-DOCKER-005": ("host", "2.2"), "HI-DOCKER-006": ("host", "2.14"), "HI-CTR-011": ("gateway", "5.27"),
    # added with the capability drop (security review F2)
    "HI-CTR-012": ("container", "5.4"),
    # added with Hermes 0.23.x's note that `init: true` drops s6's supervision
    "HI-CTR-013": ("gateway", None),
    # added with the agent as code (issue 22)
    "HI-AGT-001": ("scheduled", None),
    # added with the host firewall (issue 21)
    "HI-FW-001": ("firewall", None), "HI-FW-002": ("firewall", None), "HI-FW-003": ("firewall", None),
    "HI-FW-004": ("firewall", None),
    # added with SSH hardening, automatic security updates and the icc audit (issue 21)
    "HI-SSH-002": ("ssh_hardening", None), "HI-SSH-003": ("ssh_hardening", None), "HI-UPD-001": ("updates", None),
    "HI-UPD-002": ("updates", None), "HI-DOCKER-007": ("host", "2.2"),
    # added with the TLS proxy (issue 21)
    "HI-TLS-001": ("tls_proxy", None), "HI-TLS-002": ("tls_proxy", "5.14"), "HI-TLS-003": ("tls_proxy", None),
}
CONTROL_COUNT = 46  # the README's controls table has one row per control




# ---------------------------------------------------------------------------- registry
def test_every_stable_id_is_registered_with_its_scope_and_cis_number():
    registered = {c.id: (c.scope, c.cis) for c in all_controls()}
    assert {key: registered.get(key) for key in STABLE} == STABLE


def test_the_control_count_is_what_the_docs_say():
    assert len(all_controls()) == CONTROL_COUNT == len(STABLE)


def test_cis_numbers_follow_benchmark_v1_6_0():
    # CIS Docker Benchmark v1.6.0 numbering (as docker-bench-security uses it); older editions
    # number the same items differently (e.g. icc is 2.1 and the daemon no-new-privileges 2.18
    # in v1.1.0), so one edition throughout keeps an auditor's cross-reference straight.
    cis = {c.id: c.cis for c in all_controls() if c.cis}
    assert cis == {"HI-DOCKER-003": "2.13", "HI-DOCKER-004": "2.15", "HI-DOCKER-005": "2.2", "HI-DOCKER-006": "2.14",
                   "HI-CTR-002": "5.15", "HI-CTR-003": "5.11", "HI-CTR-004": "5.12", "HI-CTR-005": "5.29",
                   "HI-CTR-006": "5.5", "HI-CTR-007": "5.10", "HI-CTR-008": "5.32", "HI-CTR-009": "5.26",
                   "HI-CTR-011": "5.27", "HI-CTR-012": "5.4", "HI-API-001": "5.14", "HI-TLS-002": "5.14",
                   "HI-DOCKER-007": "2.2"}


def test_ids_are_unique_and_well_formed():
    ids = [c.id for c in all_controls()]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"HI-[A-Z]+-\d{3}", i) for i in ids)


def test_registering_an_id_twice_is_refused():
    with pytest.raises(ValueError, match="registered twice"):
        control("HI-CTR-001", "again", severity="low", scope="host", remediation="x")(lambda ctx, subject: None)
    assert REGISTRY["HI-CTR-001"].title == "Container is running"


def test_every_control_is_complete():
    for c in all_controls():
        assert c.title and c.remediation.strip(), c.id
        assert c.severity in SEVERITIES and c.scope in SCOPES, c.id
        assert callable(c.check), c.id
        assert c.cis is None or re.fullmatch(r"\d+\.\d+", c.cis), c.id


def test_ssh_password_login_is_advisory():
    assert get_control("HI-SSH-001").severity == "advisory"
    assert [c.id for c in all_controls() if c.severity == "advisory"] == ["HI-SSH-001", "HI-API-005"]


def test_markdown_table_has_one_row_per_control_and_five_columns():
    text = controls_markdown()
    rows = text.strip().splitlines()
    assert rows[0] == "| ID | Title | Severity | CIS | Remediation |"
    assert len(rows) == 2 + len(all_controls())
    for row, c in zip(rows[2:], all_controls(), strict=True):
        cells = re.split(r"(?<!\\)\|", row)[1:-1]
        assert len(cells) == 5, row
        assert cells[0].strip() == f"`{c.id}`"
        assert cells[2].strip() == c.severity
        assert cells[3].strip() == (c.cis or "-")
    assert "| `HI-CTR-003` | Memory limit is set to the configured or derived value | high | 5.11 |" in text


# ----------------------------------------------------------------------------- waivers
def waiver(**overrides) -> Waiver:
    values = {"control": "HI-SSH-001", "hosts": "prod-*", "justification": "provider console needs it (OPS-1)",
              "expires": "2026-06-15"}
    values.update(overrides)
    return Waiver.model_validate(values)


def test_waiver_matches_control_host_pattern_and_subject():
    w = waiver(control="HI-CTR-00[345]", subject="gateway:*")
    assert w.matches("HI-CTR-003", "prod-1", "gateway:hermes")
    assert not w.matches("HI-CTR-006", "prod-1", "gateway:hermes")
    assert not w.matches("HI-CTR-003", "staging-1", "gateway:hermes")
    assert not w.matches("HI-CTR-003", "prod-1", "companion:hub")
    assert waiver(subject="hub").matches("HI-SSH-001", "prod-2", "companion:hub")  # bare name works too


def test_waiver_is_active_through_its_expiry_day_only():
    w = waiver(expires="2026-06-15")
    assert w.active(dt.date(2026, 6, 15))
    assert not w.active(dt.date(2026, 6, 16))
    active, expired = find_waiver([w], "HI-SSH-001", "prod-1", "host", dt.date(2026, 6, 16))
    assert (active, expired) == (None, w)
    active, expired = find_waiver([w, waiver(expires="2027-01-01")], "HI-SSH-001", "prod-1", "host",
                                  dt.date(2026, 6, 16))
    assert active.expires == dt.date(2027, 1, 1) and expired is None


def test_waivers_file_is_validated(tmp_path):
    path = tmp_path / "waivers.yaml"
    path.write_text("waivers:\n  - control: HI-SSH-001\n    host: 'prod-*'\n"
                    "    justification: provider console needs it\n    expires: 2026-12-31\n")
    [loaded] = load_waivers(path, known_ids={"HI-SSH-001"})
    assert (loaded.hosts, loaded.expires) == ("prod-*", dt.date(2026, 12, 31))

    with pytest.raises(WaiverError, match=r"waivers\[0\]\.expires: is required"):
        parse_waivers([{"control": "HI-SSH-001", "justification": "because we must"}])
    with pytest.raises(WaiverError, match=r"waivers\[0\]\.justification"):
        parse_waivers([{"control": "HI-SSH-001", "justification": "", "expires": "2026-01-01"}])
    with pytest.raises(WaiverError, match="matches no control"):
        parse_waivers([{"control": "HI-SHH-001", "justification": "typo in the id", "expires": "2026-01-01"}],
                      known_ids={"HI-SSH-001"})
    with pytest.raises(WaiverError, match="unknown setting|Extra inputs"):
        parse_waivers([{"control": "HI-SSH-001", "justification": "ok ok ok ok", "expires": "2026-01-01",
                        "expiry": "2027-01-01"}])
    with pytest.raises(WaiverError, match="cannot read"):
        load_waivers(tmp_path / "missing.yaml")


# ------------------------------------------------------------------- results and waivers
def result(control_id: str, status: str, host: str = "prod-1", subject: str = "host", message: str = "") -> Result:
    return Result(host=host, control=get_control(control_id), subject=subject, status=status,
                  message=message or f"{status} details", duration=0.01)


def test_apply_waivers_waives_failures_only_while_active():
    results = [result("HI-SSH-001", "warning"), result("HI-CTR-003", "failed", subject="gateway:hermes"),
               result("HI-HOST-001", "failed"), result("HI-HOST-002", "passed")]
    waivers = [waiver(control="HI-SSH-001"), waiver(control="HI-CTR-003", expires="2026-06-01"),
               waiver(control="HI-HOST-002")]
    apply_waivers(results, waivers, TODAY)
    assert [r.status for r in results] == ["waived", "failed", "failed", "passed"]
    assert results[0].outcome == "warning" and results[0].waiver is waivers[0]
    assert results[1].expired_waiver is waivers[1] and results[1].waiver is None
    assert results[3].waiver is waivers[2]  # noted, but the control passes anyway


@pytest.mark.parametrize(("statuses", "code"), [
    (["passed", "skipped"], 0),
    (["passed", "warning"], 0),   # advisory findings do not fail the run
    (["passed", "waived"], 0),
    (["passed", "failed"], 1),
    (["error"], 1),
    ([], 0),
])
def test_exit_code(statuses, code):
    assert exit_code([result("HI-HOST-001", s) for s in statuses]) == code


def test_expired_waiver_makes_the_run_fail_again():
    results = [result("HI-HOST-001", "failed")]
    apply_waivers(results, [waiver(control="HI-HOST-001", expires="2026-06-14")], TODAY)
    assert exit_code(results) == 1
    results = [result("HI-HOST-001", "failed")]
    apply_waivers(results, [waiver(control="HI-HOST-001", expires="2026-06-15")], TODAY)
    assert exit_code(results) == 0


# ------------------------------------------------------------------------------ reports
@pytest.fixture()
def run_report() -> RunReport:
    waivers = [waiver(control="HI-SSH-001", hosts="*"), waiver(control="HI-HOST-001", hosts="*", expires="2026-01-01")]
    one = HostReport(name="prod-1", address="root@203.0.113.20:22", seconds=3.2, results=[
        result("HI-DOCKER-001", "passed"),
        result("HI-HOST-001", "failed", message="active swap is 0 MiB"),
        result("HI-SSH-001", "warning", message="passwordauthentication yes"),
        result("HI-CTR-003", "failed", subject="gateway:hermes", message="no memory limit; want 1792M"),
        result("HI-CMP-001", "skipped", subject="companion:hub", message="not applicable"),
    ])
    two = HostReport(name="prod-2", address="root@203.0.113.21:22", seconds=1.0,
                     connection_error="NoValidConnectionsError: refused", results=[
                         Result(host="prod-2", control=get_control("HI-DOCKER-001"), subject="host", status="error",
                                message="cannot connect"),
                         Result(host="prod-2", control=get_control("HI-SSH-001"), subject="host", status="error",
                                message="cannot connect")])
    for host in (one, two):
        apply_waivers(host.results, waivers, TODAY)
    return RunReport(hosts=[one, two], waivers=waivers, started=dt.datetime(2026, 6, 15, 12, 0, tzinfo=dt.UTC),
                     seconds=4.5, today=TODAY)


def test_counts_after_waivers(run_report):
    assert counts(run_report.results) == {"passed": 1, "failed": 2, "error": 1, "warning": 0, "skipped": 1,
                                          "waived": 2, "total": 7}
    assert run_report.exit_code == 1


def test_json_report_is_valid_and_counts_match(run_report):
    document = json.loads(render_json(run_report))
    assert document["exit_code"] == 1 and document["passed"] is False
    assert document["summary"]["total"] == 7 and document["summary"]["failed"] == 2
    one, two = document["hosts"]
    assert one["summary"] == {"passed": 1, "failed": 2, "error": 0, "warning": 0, "skipped": 1, "waived": 1,
                              "total": 5}
    by_id = {r["control"]: r for r in one["results"]}
    assert by_id["HI-HOST-001"]["status"] == "failed"
    assert by_id["HI-HOST-001"]["expired_waiver"]["expires"] == "2026-01-01"
    assert by_id["HI-HOST-001"]["remediation"].startswith("Create and enable the swap file")
    assert by_id["HI-SSH-001"]["status"] == "waived" and by_id["HI-SSH-001"]["outcome"] == "warning"
    assert by_id["HI-CTR-003"]["cis"] == "5.11" and by_id["HI-CTR-003"]["subject"] == "gateway:hermes"
    assert by_id["HI-DOCKER-001"]["remediation"] is None
    assert two["connection_error"].startswith("NoValidConnectionsError")
    assert [w["expired"] for w in document["waivers"]] == [False, True]


def test_junit_report_parses_with_the_right_counts(run_report):
    root = ET.fromstring(render_junit(run_report))
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors"), root.get("skipped")) == ("7", "2", "1", "3")
    one, two = root.findall("testsuite")
    assert (one.get("name"), one.get("tests"), one.get("failures"), one.get("errors"), one.get("skipped")) == \
        ("prod-1", "5", "2", "0", "2")
    assert len(one.findall("testcase")) == 5
    failures = [case for case in one.findall("testcase") if case.find("failure") is not None]
    assert sorted(case.get("name").split()[0] for case in failures) == ["HI-CTR-003", "HI-HOST-001"]
    memory = next(c for c in failures if c.get("name").startswith("HI-CTR-003"))
    assert memory.find("failure").get("type") == "high"
    assert "Remediation: Set `mem_limit`" in memory.find("failure").text
    swap = next(c for c in failures if c.get("name").startswith("HI-HOST-001"))
    assert "Waiver expired on 2026-01-01" in swap.find("failure").text
    # sums over testcases agree with the attributes
    cases = root.iter("testcase")
    tally = {"failure": 0, "error": 0, "skipped": 0}
    for case in cases:
        for tag in tally:
            tally[tag] += case.find(tag) is not None
    assert tally == {"failure": 2, "error": 1, "skipped": 3}
    assert two.find("system-err").text.startswith("cannot connect")


def test_text_report_shows_each_outcome_remediation_and_expired_waivers(run_report):
    text = render_text(run_report)
    assert re.search(r"FAIL\s+HI-CTR-003\s+gateway:hermes\s+high\s+5\.11", text)
    assert re.search(r"WAIVED\s+HI-SSH-001\s+host\s+advisory", text)
    assert "fix:   Set `mem_limit`" in text
    assert "waiver EXPIRED on 2026-01-01" in text
    assert "EXPIRED on 2026-01-01: HI-HOST-001 on * no longer waives anything" in text
    assert "cannot connect: NoValidConnectionsError" in text
    assert text.rstrip().splitlines()[-3].startswith("FAILED: 2 host(s), 7 checks")


def test_several_reports_at_once(tmp_path, run_report):
    specs = parse_report_specs(["text", f"json={tmp_path}/r/out.json", f"junit={tmp_path}/out.xml"])
    stdout = io.StringIO()
    write_reports(run_report, specs, stdout)
    assert stdout.getvalue().startswith("Host prod-1")
    assert json.loads((tmp_path / "r" / "out.json").read_text())["summary"]["total"] == 7
    assert ET.parse(tmp_path / "out.xml").getroot().get("tests") == "7"


def test_report_specs():
    assert parse_report_specs([]) == [ReportSpec("text", None)]
    assert parse_report_specs(["json=-", "junit=a.xml"]) == [ReportSpec("json", "-"), ReportSpec("junit", "a.xml")]
    with pytest.raises(ReportSpecError, match="unknown report format 'pdf'"):
        parse_report_specs(["pdf=x.pdf"])
    assert parse_report_specs(["html=x.html"]) == [ReportSpec("html", "x.html")]
    with pytest.raises(ReportSpecError, match="names no file"):
        parse_report_specs(["junit="])
    with pytest.raises(ReportSpecError, match="more than one report goes to the terminal"):
        parse_report_specs(["text", "json"])


def test_hostile_messages_keep_junit_well_formed_and_text_free_of_escapes(run_report):
    """Informational finding: control characters stayed in the text report and made JUnit malformed."""
    hostile = "\x1b]0;owned\x07\x1b[2J\x00\x0b\u202eswap ok\x1b[0m"
    for result in run_report.hosts[0].results:
        result.message = hostile
        result.subject = "gateway:\x1b[31mx"
    run_report.hosts[1].connection_error = hostile
    root = ET.fromstring(render_junit(run_report))  # raises on malformed XML
    assert root.tag == "testsuites"
    text = render_text(run_report)
    assert not any(ch in text for ch in "\x1b\x07\x00\x0b\u202e")
