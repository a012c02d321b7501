"""`--sudo` with a non-root SSH user: the deploy works, and uploads of secret files are staged
in a 0700 directory of the SSH user, never in /tmp with the default umask (issue 8)."""
from __future__ import annotations

import re
import subprocess
import sys

from tests.e2e.conftest import REPO

SECRET = "sk-sudo-run-secret-value-0042"


def test_sudo_user_deploys_and_secrets_never_pass_through_tmp(deployed):
    deployed.run("id deploy >/dev/null 2>&1 || useradd -m -s /bin/bash deploy; "
                 "install -d -m 0700 -o deploy -g deploy /home/deploy/.ssh && "
                 "install -m 0600 -o deploy -g deploy /root/.ssh/authorized_keys /home/deploy/.ssh/authorized_keys && "
                 "echo 'deploy ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/hermes-e2e-deploy && "
                 "chmod 0440 /etc/sudoers.d/hermes-e2e-deploy")
    target = deployed.target(gateways=[{"env": {"OPENROUTER_API_KEY": SECRET}}])
    target.user, target.sudo = "deploy", True
    argv = [sys.executable, "-m", "hermes_infra", "up", *target.cli_args(), "--", "-vvv"]
    try:
        run = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             stdin=subprocess.DEVNULL, cwd=REPO, timeout=900)
        assert run.returncode == 0, run.stdout[-5000:]
        assert SECRET not in run.stdout
        assert SECRET in deployed.run("cat /root/.hermes/.env")
        # pyinfra copies each upload as root from where the SSH user put it: our private dir.
        assert "/home/deploy/.hermes-infra-upload/" in run.stdout, run.stdout[-3000:]
        copies = [line for line in run.stdout.splitlines()
                  if re.search(r"\bcp\s", line) and "/var/lib/hermes-infra/stage/" in line]
        assert copies and not any("/tmp/" in line for line in copies), copies
        assert deployed.run("stat -c '%a %U' /home/deploy/.hermes-infra-upload").strip() == "700 deploy"
        assert deployed.run("ls -A /home/deploy/.hermes-infra-upload").strip() == ""  # nothing left behind
        assert deployed.run(f"grep -rl {SECRET} /tmp /var/tmp 2>/dev/null || true").strip() == ""
    finally:
        restore = deployed.deploy()
        assert restore.returncode == 0, restore.output[-4000:]
        deployed.run("rm -f /etc/sudoers.d/hermes-e2e-deploy")
