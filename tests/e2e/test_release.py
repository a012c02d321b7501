"""Releases on real VMs (issue 9): the deploy lock (a second deploy stops or waits; Ctrl-C
releases it), the audit log, an upgrade to a second image with state byte-identical, a broken
image rolled back automatically, and a rollout whose canary fails leaving the second VM untouched.

The second and broken images are made on the VM from the loaded one (a label, or an
entrypoint that cannot start the gateway) and deployed with image.source "pull" (present: no
pull). The shared VM ends as found: default settings, healthy."""
from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time

import os

import pytest

from tests.e2e.conftest import REPO



API = "http://127.0.0.1:8642"
STATE_FILES = ("weixin/accounts/acc.json", "platforms/pairing/weixin-approved.json", "cron/jobs.json",
               "sessions/s1.json", "memories/m.md", "state.db")
LOCK = "/var/lib/hermes-infra/lock"


def hermes_infra(*argv: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hermes_infra", *argv], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL, cwd=REPO, timeout=timeout)


def base_ref(deployed) -> str:
    return json.loads((deployed.image_dir / "image.json").read_text())["ref"]


def last_audit(deployed) -> dict:
    return json.loads(deployed.run("tail -n 1 /var/log/hermes-infra/audit.jsonl"))


def state_digest(deployed) -> str:
    return deployed.run("cd /root/.hermes && sha256sum " + " ".join(STATE_FILES))


def test_a_held_lock_stops_a_second_deploy_and_lock_wait_waits(deployed):
    args = deployed.target().cli_args()
    taken = hermes_infra("lock", "acquire", *args, "-m", "maintenance by hand")
    assert taken.returncode == 0, taken.stdout
    try:
        run = deployed.deploy()
        assert run.returncode == 3, run.output[-3000:]
        assert "held by" in run.output and "maintenance by hand" in run.output and "--lock-wait" in run.output
        # pyinfra connected (the lock goes over its connection) and stopped there: no deploy loaded.
        assert "--> Preparing operation files" not in run.output and "Beginning operation run" not in run.output
        status = hermes_infra("lock", "status", *args)
        assert "maintenance by hand" in status.stdout
        argv = [sys.executable, "-m", "hermes_infra", "up", *args, "--lock-wait", "300"]
        waiting = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                                   stdin=subprocess.DEVNULL)
        time.sleep(8)
        assert waiting.poll() is None
    finally:
        released = hermes_infra("lock", "release", *args)
    assert "released (it was held by" in released.stdout
    output, _ = waiting.communicate(timeout=900)
    assert waiting.returncode == 0, output[-4000:]
    assert "waiting up to" in output
    record = last_audit(deployed)
    assert record["command"] == "up" and record["result"] == "success" and record["changed"] == []
    assert len(record["revision"]) == 12 and record["who"]
    assert deployed.run("stat -c '%a %U' /var/log/hermes-infra /var/log/hermes-infra/audit.jsonl").split() == [
        "700", "root", "600", "root"]
    assert deployed.api_key() not in deployed.run("cat /var/log/hermes-infra/audit.jsonl")
    shown = hermes_infra("audit", *args, "-n", "2")
    assert shown.returncode == 0 and "success" in shown.stdout


def test_ctrl_c_releases_the_lock_and_is_audited(deployed):
    # A change, so the run is still busy (recreating the gateway) when Ctrl-C comes: a converged
    # run is over within a few seconds of taking the lock.
    one_gig = {"gateways": [{"name": "hermes", "limits": {"memory": "1G"}}]}
    argv = [sys.executable, "-m", "hermes_infra", "up", *deployed.target(**one_gig).cli_args()]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while deployed.vm.ssh("pgrep -f '[d]ocker compose -p hermes .*up -d' >/dev/null").rc != 0:
        assert time.monotonic() < deadline and proc.poll() is None, "the deploy never reached compose up"
        time.sleep(0.3)
    assert deployed.vm.ssh(f"test -d {LOCK}").rc == 0, "the deploy runs without its lock"
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, output[-3000:]
    assert deployed.vm.ssh(f"test -e {LOCK}").rc != 0, "Ctrl-C left the lock behind:\n" + output[-3000:]
    assert last_audit(deployed)["result"] == "interrupted"
    after = deployed.deploy()
    assert after.returncode == 0, after.output[-4000:]
    assert last_audit(deployed)["result"] == "success"


def test_a_deploy_killed_in_the_compose_step_leaves_a_stale_lock_and_the_next_run_converges(deployed):
    """The control process and its SSH link killed (SIGKILL: no `finally`) while `docker compose
    up` recreates the gateway: the lock is reported stale, never taken over; once released, the
    next run converges to the settings the killed one had, with nothing lost."""
    key = deployed.api_key()
    one_gig = {"gateways": [{"name": "hermes", "limits": {"memory": "1G"}}]}
    argv = [sys.executable, "-m", "hermes_infra", "up", *deployed.target(**one_gig).cli_args()]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while deployed.vm.ssh("pgrep -f '[d]ocker compose -p hermes .*up -d' >/dev/null").rc != 0:
        assert time.monotonic() < deadline and proc.poll() is None, "the deploy never reached compose up"
        time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    args = deployed.target().cli_args()
    assert deployed.vm.ssh(f"test -d {LOCK}").rc == 0, "a killed run cannot release its lock"
    blocked = deployed.deploy(**one_gig)
    assert blocked.returncode == 3, blocked.output[-3000:]
    assert "looks stale" in blocked.output and f"holder process {proc.pid}" in blocked.output
    assert "lock release" in blocked.output
    assert "--> Preparing operation files" not in blocked.output and "Beginning operation run" not in blocked.output
    released = hermes_infra("lock", "release", *args)
    assert released.returncode == 0, released.stdout
    converged = deployed.deploy(**one_gig)
    assert converged.returncode == 0, converged.output[-5000:]
    assert deployed.run("docker inspect -f '{{.HostConfig.Memory}}' hermes").strip() == str(1024**3)
    assert deployed.api_key() == key
    assert deployed.http_status(f"{API}/v1/models", key=key) == "200"
    again = deployed.deploy(**one_gig)
    assert again.returncode == 0 and again.changed_operations() == 0, again.output[-4000:]


@pytest.fixture(scope="module")
def images(deployed):
    """A second image (a label more) and a broken one (its gateway cannot start), made on the VM."""
    ref = base_ref(deployed)
    build = "DOCKER_BUILDKIT=0 docker build -q -t {tag} - >/dev/null 2>&1 <<'EOF'\nFROM {ref}\n{line}\nEOF"
    deployed.run(build.format(tag="hermes-agent:release-two", ref=ref, line="LABEL io.hermes-infra.test=two"))
    deployed.run(build.format(tag="hermes-agent:release-broken", ref=ref, line='ENTRYPOINT ["false"]'))
    return {"two": "hermes-agent:release-two", "broken": "hermes-agent:release-broken"}


def pulled(ref: str) -> dict:
    return {"ref": ref, "source": "pull"}


PLANTED = {  # as Hermes writes them (a list where Hermes keeps a dict breaks `pairing approve` later)
    "weixin/accounts/acc.json": {"token": "login", "account_id": "release-bot"},
    "platforms/pairing/weixin-approved.json": {"u1": {"user_name": "U", "approved_at": 1.0}},
    "cron/jobs.json": {"jobs": []},
    "sessions/s1.json": {},
    "memories/m.md": "remember",
}


def plant_state(deployed) -> None:
    for path, value in PLANTED.items():
        text = value if isinstance(value, str) else json.dumps(value)
        encoded = base64.b64encode(text.encode()).decode()
        deployed.run(f"cd /root/.hermes && setpriv --reuid=10000 --regid=10000 --clear-groups -- sh -c "
                     f"'umask 077; mkdir -p {path.rsplit('/', 1)[0]} && echo {encoded} | base64 -d > {path}'")


def test_upgrade_keeps_runtime_state_byte_identical(deployed, images):
    plant_state(deployed)
    before = state_digest(deployed)
    run = deployed.deploy(image=pulled(images["two"]))
    assert run.returncode == 0, run.output[-5000:]
    print(f"\n[timing] upgrade to a second image (snapshot, new container, gate): {run.seconds:.1f}s")
    assert deployed.run("docker inspect -f '{{.Config.Image}}' hermes").strip() == images["two"]
    assert state_digest(deployed) == before
    assert deployed.http_status(f"{API}/v1/models", key=deployed.api_key()) == "200"
    assert deployed.run("ls /var/backups/hermes-infra | grep -c '^snapshot-hermes-'").strip() != "0"
    assert deployed.run("stat -c %a /var/lib/hermes-infra/releases").strip() == "700"
    assert deployed.run("docker images -q 'hermes-infra/previous'").strip()
    record = last_audit(deployed)
    assert record["result"] == "success" and record["image"] == images["two"]
    assert "Upgrade: keep the previous image, snapshot the data dirs" in record["changed"]


def test_rollback_on_demand_to_a_revision(deployed, images):
    """After the upgrade above: `rollback --to` the revision that ran before it brings back its
    image and the data dir as it was then; what the newer version wrote is set aside, not lost."""
    args = deployed.target(image=pulled(images["two"])).cli_args()
    audits = [json.loads(line) for line in deployed.run("cat /var/log/hermes-infra/audit.jsonl").splitlines()]
    upgraded = next(r for r in reversed(audits) if r["command"] == "up" and r.get("image") == images["two"])
    earlier = next(r for r in reversed(audits[:audits.index(upgraded)])
                   if r["command"] == "up" and r["result"] == "success")
    listed = hermes_infra("rollback", *args, "--list")
    assert earlier["revision"] in listed.stdout, listed.stdout
    before = state_digest(deployed)
    deployed.run("cd /root/.hermes && setpriv --reuid=10000 --regid=10000 --clear-groups sh -c 'echo newer > memories/m2.md'")
    started = time.monotonic()
    back = hermes_infra("rollback", *args, "--to", earlier["revision"], "-m", "e2e rollback")
    print(f"\n[timing] rollback on demand (stop, restore snapshot, previous image up): "
          f"{time.monotonic() - started:.1f}s")
    assert back.returncode == 0, back.stdout[-4000:]
    assert deployed.run("docker inspect -f '{{.Config.Image}}' hermes").strip().startswith("hermes-infra/previous:")
    assert deployed.run("docker inspect -f '{{.Image}}' hermes").strip() == \
        deployed.run(f"docker image inspect -f '{{{{.Id}}}}' {base_ref(deployed)}").strip()
    assert deployed.run("cat /opt/hermes/deployed-revision").strip() == earlier["revision"]
    deployed.run("for i in $(seq 90); do curl -fs -o /dev/null http://127.0.0.1:8642/health && exit 0; sleep 2; done; exit 1")
    assert state_digest(deployed) == before
    assert deployed.run("test ! -e /root/.hermes/memories/m2.md && cat /root/.hermes.rolled-back-*/memories/m2.md"
                        ).strip() == "newer"
    record = last_audit(deployed)
    assert record["command"] == "rollback" and record["result"] == "success"


@pytest.fixture(scope="module")
def failed_canary_rollout(deployed, second_vm, images, tmp_path_factory) -> dict:
    """One rollout over two hosts whose canary (the session VM) gets the broken image, with a
    30 s health gate: the canary fails its gate and rolls itself back, and the second VM is never
    touched. Two tests read it: the automatic rollback, and the rollout that stops."""
    from hermes_infra import commands

    def entry(vm, **extra):
        alias, data = vm.pyinfra_host()
        values = {key: json.loads(value) for key, value in commands.local_vm_data(str(deployed.image_dir)).items()}
        return alias, {**data, **values, **extra}

    canary = entry(deployed.vm, image=pulled(images["broken"]), health={"timeout_seconds": 30})
    second = entry(second_vm.vm)
    inventory = tmp_path_factory.mktemp("rollout") / "fleet.py"
    inventory.write_text(f"import json\nfleet = json.loads({json.dumps(json.dumps([canary, second]))})\n"
                         "fleet = [tuple(item) for item in fleet]\n")
    fingerprint = ("wc -l < /var/log/hermes-infra/audit.jsonl 2>/dev/null; test -e /var/lib/hermes-infra/lock && "
                   "echo locked; command -v docker >/dev/null && docker ps -aq --no-trunc | xargs -r docker inspect -f "
                   "'{{.Id}} {{.State.Status}} {{.State.StartedAt}} {{.RestartCount}}'; true")
    before = {"state": state_digest(deployed), "key": deployed.api_key(),
              "image": deployed.run("docker inspect -f '{{.Image}}' hermes"),
              "second": second_vm.vm.ssh(fingerprint).stdout}
    started = time.monotonic()
    run = hermes_infra("rollout", str(inventory), "--batch", "1", "-m", "e2e rollout")
    print(f"\n[timing] rollout with a failing canary (broken image, failed gate, automatic rollback): "
          f"{time.monotonic() - started:.1f}s")
    return {"run": run, "before": before, "canary": canary[0], "second": second[0],
            "second_after": second_vm.vm.ssh(fingerprint).stdout}


def test_broken_image_rolls_back_automatically_to_a_healthy_previous(deployed, failed_canary_rollout):
    run, before = failed_canary_rollout["run"], failed_canary_rollout["before"]
    assert run.returncode != 0, run.stdout[-5000:]
    assert "rolling back automatically" in run.stdout, run.stdout[-5000:]
    assert "last lines of the container log" in run.stdout
    assert "rolled back: the previous image answers again" in run.stdout
    running = deployed.run("docker inspect -f '{{.Config.Image}}' hermes").strip()
    assert running.startswith("hermes-infra/previous:")
    assert deployed.run(f"docker image inspect -f '{{{{.Id}}}}' {running}") == before["image"]
    assert deployed.http_status(f"{API}/health") == "200"
    assert deployed.http_status(f"{API}/v1/models", key=before["key"]) == "200"
    assert state_digest(deployed) == before["state"]
    assert last_audit(deployed)["result"] == "failed"
    kept = hermes_infra("rollback", *deployed.target().cli_args(), "--list")
    assert running.split(":")[1] in kept.stdout, kept.stdout


def test_rollout_stops_at_a_failed_canary_and_leaves_the_second_vm_untouched(deployed, failed_canary_rollout):
    run = failed_canary_rollout["run"]
    assert run.returncode == 1, run.stdout[-5000:]
    rows = {line.split()[1]: line.split()[2] for line in run.stdout.splitlines()
            if line.split()[:1] in (["canary"], ["-"])}
    assert rows == {failed_canary_rollout["canary"]: "failed", failed_canary_rollout["second"]: "untouched"}, \
        run.stdout[-3000:]
    assert failed_canary_rollout["second_after"] == failed_canary_rollout["before"]["second"], \
        "the second VM was touched"
    assert deployed.http_status(f"{API}/health") == "200"  # the canary rolled itself back
    assert last_audit(deployed)["command"] == "rollout"


def test_back_to_the_default_settings(deployed):
    """Leave the shared VM as found: default settings (an upgrade back to the archive image), healthy."""
    before = state_digest(deployed)
    run = deployed.deploy()
    assert run.returncode == 0, run.output[-5000:]
    assert state_digest(deployed) == before
    assert deployed.run("docker inspect -f '{{.Config.Image}}' hermes").strip() == base_ref(deployed)
    deployed.run("cd /root/.hermes && rm -f " + " ".join(PLANTED) + " memories/m2.md")
    deployed.run("rm -rf /root/.hermes.rolled-back-* && docker rmi hermes-agent:release-two hermes-agent:release-broken "
                 ">/dev/null 2>&1 || true")
    again = deployed.deploy()
    assert again.returncode == 0 and again.changed_operations() == 0, again.output[-4000:]
