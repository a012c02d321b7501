"""The batched read, run for real on this machine: every section parses, and pyinfra's own
facts (OS release, memory, CPUs) come back through their own parsers."""
from __future__ import annotations

import subprocess

from hermes_infra.hostfacts import DataDirRequest, StateRequest, parse_state, state_command


def test_batched_read_parses_on_a_real_machine(tmp_path):
    request = StateRequest(data_dirs=(DataDirRequest("hermes", str(tmp_path / "missing"), 10000, 10000),),
                           root_files=(str(tmp_path / "nope"),), packages=("bash",), image_ref="x:1")
    result = subprocess.run(["sh", "-c", state_command(request)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    state = parse_state(result.stdout.splitlines())
    assert state.os_release.get("id") == "debian"
    assert state.memory_mb > 256 and state.cpus >= 1
    assert state.packages.get("bash") == "installed"
    assert state.root_files[str(tmp_path / "nope")] is None
    assert state.data_dirs["hermes"]["dir"] == "missing"
    assert state.swap["swappiness"] >= 0
