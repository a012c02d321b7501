"""Suite-wide plugin: where the time goes, and nothing skipped under CI.

Every test phase and every fixture's setup and teardown is timed and written to
`reports/durations.json` (or `$HERMES_INFRA_DURATIONS`); the 40 slowest are printed at the end,
fixtures (VM boots, bootstraps, image builds) apart from tests, so a session-scoped VM shows as
itself and not as part of whichever test happened to need it first.

Under `CI=true` a skipped test fails instead: a skip there means the machine lacks something the
suite needs (the reason names the install line), and "the tests passed" would not mean what it
says.

A failure is printed the moment it happens (one line: the test, its phase, the assertion), not
only in the summary at the end: CI kills a run that passes its time limit, and a killed run
prints no summary. For the same reason the suite keeps its own budget
(`HERMES_INFRA_SUITE_BUDGET`, seconds from the session's start; 5100 under CI): once it is
spent, each remaining test fails at once with that reason, so an over-long run still ends with
its summary, and with what went slow, instead of being cut off with none.
"""
from __future__ import annotations

import json
import os
import time

# Bound once: a test that patches time.monotonic (a fake clock for a timeout) must not make its
# fixture's teardown look ten hours long in the durations table.
_clock = time.monotonic
from pathlib import Path

import pytest

SLOWEST = 40
CI_BUDGET_SECONDS = 5100  # CI stops at 5400 s; setup.sh and the docs check come first, and a test may be running
_records: list[dict] = []
_teardown_started: dict[int, float] = {}


def durations_path(rootdir: Path) -> Path:
    return Path(os.environ.get("HERMES_INFRA_DURATIONS") or rootdir / "reports" / "durations.json")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def suite_budget() -> float | None:
    """Seconds the session may run before the remaining tests fail at once; None: no budget."""
    value = os.environ.get("HERMES_INFRA_SUITE_BUDGET")
    if value:
        return float(value) if float(value) > 0 else None
    return CI_BUDGET_SECONDS if in_ci() else None


def pytest_configure(config):
    global _config
    _config = config


def pytest_runtest_setup(item):
    budget = suite_budget()
    spent = _clock() - _started
    if budget is not None and spent > budget:
        pytest.fail(f"the suite's time budget is spent ({spent:.0f} s of {budget:.0f} s, "
                    "HERMES_INFRA_SUITE_BUDGET): not started, so the run ends with its summary", pytrace=False)


def failure_line(report) -> str:
    """One line for a failure: the test, its phase and the first line of what failed."""
    crash = getattr(report.longrepr, "reprcrash", None)
    message = crash.message if crash is not None else str(report.longrepr)
    first = next((line for line in message.splitlines() if line.strip()), "")
    return f"FAILED NOW {report.nodeid} ({report.when}, {report.duration:.0f} s): {first[:300]}"


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    started = _clock()
    yield
    seconds = _clock() - started
    # Fixtures that took no time (most of them) would only bury the ones that matter.
    if seconds >= 0.05:
        _records.append({"kind": "fixture setup", "name": fixturedef.argname, "scope": fixturedef.scope,
                         "first_user": request.node.nodeid, "seconds": round(seconds, 3)})
    # Registered after the fixture's own finalizer, so it runs first (finalizers run last in,
    # first out): the start of this fixture's teardown.
    fixturedef.addfinalizer(lambda: _teardown_started.__setitem__(id(fixturedef), _clock()))


def pytest_fixture_post_finalizer(fixturedef, request):
    started = _teardown_started.pop(id(fixturedef), None)
    if started is not None and _clock() - started >= 0.05:
        _records.append({"kind": "fixture teardown", "name": fixturedef.argname, "scope": fixturedef.scope,
                         "seconds": round(_clock() - started, 3)})


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and in_ci() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (f"skipped under CI=true, which must run every test: {reason}\n"
                           "install what it needs in setup.sh (see its apt-get line)")


def pytest_runtest_logreport(report):
    terminal = _config.pluginmanager.get_plugin("terminalreporter") if _config is not None else None
    if report.failed and terminal is not None:
        terminal.write_line("")
        terminal.write_line(failure_line(report))
    if report.when == "call" or report.duration >= 0.05:
        _records.append({"kind": f"test {report.when}", "name": report.nodeid, "outcome": report.outcome,
                         "seconds": round(report.duration, 3)})


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _records:
        return
    path = durations_path(Path(config.rootpath))
    path.parent.mkdir(parents=True, exist_ok=True)
    total = sum(r["seconds"] for r in _records if r["kind"].startswith("test "))
    path.write_text(json.dumps({"session_seconds": round(_clock() - _started, 1),
                                "records": _records}, indent=1) + "\n")
    write = terminalreporter.write_line
    terminalreporter.section(f"the {SLOWEST} slowest fixtures and test phases")
    write(f"{'seconds':>9}  {'what':<17} name")
    for record in sorted(_records, key=lambda r: r["seconds"], reverse=True)[:SLOWEST]:
        name = record["name"] + (f" [{record['scope']}]" if "scope" in record else "")
        write(f"{record['seconds']:>9.1f}  {record['kind']:<17} {name}")
    write(f"every duration: {path} (test phases add up to {total:.0f} s; fixture setups are part of them)")


_started = _clock()
_config = None
