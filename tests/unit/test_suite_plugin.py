"""The suite-wide plugin (tests/conftest.py) on a tiny suite of its own, run as CI runs it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"


def run_suite(tmp_path: Path, body: str, **env: str) -> subprocess.CompletedProcess:
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_tiny.py").write_text(body)
    environ = {k: v for k, v in os.environ.items() if k not in ("CI", "HERMES_INFRA_SUITE_BUDGET")}
    environ.update(env, HERMES_INFRA_DURATIONS=str(tmp_path / "durations.json"))
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(tmp_path)],
                          cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=120)


def test_a_failure_is_printed_when_it_happens_before_the_next_test_runs(tmp_path):
    result = run_suite(tmp_path, "import time\n"
                                 "def test_a():\n    assert 1 == 2, 'the first one broke'\n"
                                 "def test_b():\n    print('B RAN')\n")
    lines = result.stdout.splitlines()
    now = [i for i, line in enumerate(lines) if line.startswith("FAILED NOW test_tiny.py::test_a (call")]
    assert now, result.stdout
    assert "the first one broke" in lines[now[0]]
    # Printed inline: before the summary section pytest prints at the very end.
    summary = next(i for i, line in enumerate(lines) if "short test summary" in line)
    assert now[0] < summary


def test_a_spent_budget_fails_the_remaining_tests_at_once_and_the_run_still_ends_with_its_summary(tmp_path):
    result = run_suite(tmp_path, "import time\n"
                                 "def test_slow():\n    time.sleep(1.5)\n"
                                 "def test_after():\n    pass\n",
                       HERMES_INFRA_SUITE_BUDGET="1")
    assert result.returncode == 1, result.stdout
    assert "1 passed, 1 error" in result.stdout, result.stdout  # failed in its setup, before any fixture
    assert "time budget is spent" in result.stdout
    assert (tmp_path / "durations.json").exists()


def test_no_budget_outside_ci_unless_asked(tmp_path):
    result = run_suite(tmp_path, "import time\n"
                                 "def test_slow():\n    time.sleep(1.2)\n"
                                 "def test_after():\n    pass\n")
    assert result.returncode == 0, result.stdout
