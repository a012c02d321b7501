"""The agent as code on a real host (issue 22): files and a scheduled job declared in the
settings are deployed, the job runs, is changed and removed, and a job made by hand and a file the
agent made survive all of it. The job is a no-agent script job (`script` without `prompt`): its output is the script's,
so no model provider is needed, and it runs within two scheduler ticks of being created.

VM time: three deploys and a dry run (one-off Hermes containers for the cron calls), plus up to
150 s waiting for the first run; the VM is put back as it was at the end."""
from __future__ import annotations

import json
import shlex
import time

DATA = "/root/.hermes"
RECORD = "/opt/hermes/agent-code.json"
COMPOSE = "cd /opt/hermes && docker compose -p hermes -f compose.yaml run --rm --no-deps -T hermes"
FILES = [{"src": "tests/e2e/agent_code/notes.md", "dest": "knowledge/e2e.md"},
         {"src": "tests/e2e/agent_code/hello.sh", "dest": "scripts/e2e_hello.sh", "mode": "0700"}]
JOB = {"name": "e2e-hello", "schedule": "every 1m", "script": "e2e_hello.sh", "deliver": "local"}


def gateway(files=(), cron=()):
    return [{"name": "hermes", "files": list(files), "cron": list(cron)}]


def jobs(deployed) -> dict[str, dict]:
    text = deployed.run(f"cat {DATA}/cron/jobs.json 2>/dev/null || echo '{{\"jobs\": []}}'")
    return {job.get("name"): job for job in json.loads(text)["jobs"]}


def test_files_and_a_job_from_the_settings_run_change_and_go_while_a_hand_made_job_stays(deployed):
    try:
        deployed.run(f"{COMPOSE} cron create --name=hand-made --deliver=local 'every 1h' {shlex.quote('made by hand')}")
        assert "hand-made" in jobs(deployed)

        first = deployed.deploy(gateways=gateway(FILES, [JOB]))
        assert first.returncode == 0, first.output[-4000:]
        stat = deployed.run(f"stat -c '%u:%g %a %F' {DATA}/knowledge/e2e.md {DATA}/scripts/e2e_hello.sh")
        assert stat.split("\n")[:2] == ["10000:10000 644 regular file", "10000:10000 700 regular file"], stat
        assert "/opt/data/knowledge/e2e.md" in deployed.run(f"cat {DATA}/knowledge/e2e.md")
        record = deployed.run(f"cat {RECORD}")
        assert "knowledge/e2e.md" in json.loads(record)["profiles"]["hermes"]["files"]
        assert "/opt/data" not in record, "the record holds digests, never contents"
        assert deployed.run(f"stat -c '%U %a' {RECORD}").strip() == "root 600"
        listed = jobs(deployed)
        job = listed["hermes-infra/e2e-hello"]
        assert job["enabled"] is True and job["schedule"]["minutes"] == 1 and job["script"] == "e2e_hello.sh"
        assert job["no_agent"] is True and job["deliver"] == "local"
        assert "hand-made" in listed
        deployed.run(f"cd {DATA} && setpriv --reuid=10000 --regid=10000 --clear-groups -- "
                     "sh -c 'echo mine > knowledge/agent.md'")

        # While the job waits for its first tick: the change, as --dry shows it (nothing written).
        changed_job = {**JOB, "schedule": "every 2m", "enabled": False}
        dry = deployed.deploy(dry=True, gateways=gateway(FILES, [changed_job]))
        assert dry.returncode == 0, dry.output[-4000:]
        assert "cron[hermes]: ~ hermes-infra/e2e-hello (schedule, enabled)" in dry.output, dry.output[-4000:]
        assert "cron[hermes]: left alone (made by hand): hand-made" in dry.output, dry.output[-4000:]
        assert jobs(deployed)["hermes-infra/e2e-hello"]["schedule"]["minutes"] == 1, "a dry run changed the job"

        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and jobs(deployed)["hermes-infra/e2e-hello"].get("last_status") is None:
            time.sleep(10)
        ran = jobs(deployed)["hermes-infra/e2e-hello"]
        assert ran.get("last_status") == "ok", ran
        output = deployed.run(f"cat {DATA}/cron/output/{shlex.quote(ran['id'])}/*.md")
        assert "agent-code-e2e ran" in output

        change = deployed.deploy(gateways=gateway(FILES, [changed_job]))
        assert change.returncode == 0, change.output[-4000:]
        after = jobs(deployed)["hermes-infra/e2e-hello"]
        assert after["id"] == ran["id"], "edited in place, its history kept"
        assert after["schedule"]["minutes"] == 2 and after["enabled"] is False

        removal = deployed.deploy(gateways=gateway())
        assert removal.returncode == 0, removal.output[-4000:]
        left = jobs(deployed)
        assert "hermes-infra/e2e-hello" not in left and "hand-made" in left
        gone = deployed.run(f"for f in {DATA}/knowledge/e2e.md {DATA}/scripts/e2e_hello.sh; do "
                            "[ -e \"$f\" ] && echo \"$f\"; done; true")
        assert gone.split() == [], "files hermes-infra placed and no longer wants are removed"
        assert deployed.run(f"cat {DATA}/knowledge/agent.md").strip() == "mine", "the agent's own file stays"
        assert json.loads(deployed.run(f"cat {RECORD}"))["profiles"]["hermes"] == {
            "data_dir": DATA, "files": {}, "jobs": []}
    finally:
        print(f"[timing] back to the bootstrapped state: {deployed.reset():.1f}s")
