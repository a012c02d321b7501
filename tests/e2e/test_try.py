"""`hermes-infra try` end to end, as the README's first command runs it, on the session's VM
(`try --name` reuses a running VM, as it reuses its own between runs): it deploys, runs the
checks, forwards the API to this machine, and the `curl` line it prints works as printed."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from tests.e2e.conftest import REPO


def test_try_ends_with_a_curl_line_that_works_as_printed(deployed):
    key = deployed.api_key()
    run = subprocess.run([sys.executable, "-m", "hermes_infra", "try", "--name", deployed.vm.name],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                         stdin=subprocess.DEVNULL, timeout=1800)
    assert run.returncode == 0, run.stdout[-5000:]
    assert "GET /v1/models with the key just answered 200" in run.stdout, run.stdout[-3000:]
    assert key not in run.stdout
    [curl] = [line.split("Try it:", 1)[1].strip() for line in run.stdout.splitlines() if "Try it:" in line]
    assert re.fullmatch(r"curl -H @\S+ http://127\.0\.0\.1:\d+/v1/models", curl), curl
    answer = subprocess.run(curl + " -s --max-time 30", shell=True, capture_output=True, text=True, timeout=60)
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout)["data"], answer.stdout
    header, url = curl.split()[2].lstrip("@"), curl.split()[-1]
    anonymous = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "30", url],
                               capture_output=True, text=True, timeout=60)
    assert anonymous.stdout == "401"
    assert oct(os.stat(header).st_mode & 0o777) == "0o600"
