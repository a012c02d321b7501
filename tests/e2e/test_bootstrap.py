"""Bootstrap proof (issues 2 and 3): a bare Debian 13 VM becomes a healthy, limited, swapped,
idempotent Hermes gateway host with one command, and stays one across redeploys and reboots (the
reboot is `test_host_hardening.py`'s, where it also proves the firewall is loaded before Docker)."""
from __future__ import annotations

import json
import time

from hermes_infra.plan.capacity import HostResources, derive_limits
from hermes_infra.settings.schema import HostSettings

API = "http://127.0.0.1:8642"
COMPANION_PROBE = (
    "import os, sys, urllib.request, urllib.error\n"
    "req = urllib.request.Request(sys.argv[1])\n"
    "if len(sys.argv) > 2: req.add_header('Authorization', 'Bearer ' + os.environ[sys.argv[2]])\n"
    "try: print(urllib.request.urlopen(req, timeout=10).status)\n"
    "except urllib.error.HTTPError as e: print(e.code)\n"
)


def inspect(deployed, container: str) -> dict:
    return json.loads(deployed.run(f"docker inspect {container}"))[0]


def wait_healthy(deployed, url: str = API, timeout: float = 300) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if deployed.http_status(f"{url}/health") == "200":
            return time.monotonic() - started
        time.sleep(3)
    raise AssertionError(f"{url}/health did not answer 200 within {timeout}s")


def test_bootstrap_ends_with_a_healthy_gateway(deployed):
    assert "Health gate" in deployed.first_run.output
    assert deployed.http_status(f"{API}/health") == "200"
    assert deployed.http_status(f"{API}/v1/models") == "401"
    assert deployed.http_status(f"{API}/v1/models", key=deployed.api_key()) == "200"
    body = deployed.run(f"curl -s {API}/health")
    assert json.loads(body)["status"] == "ok"


def test_second_run_changes_nothing(deployed):
    run = deployed.deploy()
    assert run.returncode == 0, run.output[-4000:]
    assert run.changed_operations() == 0, run.output[-4000:]
    print(f"\n[timing] converged re-run: {run.seconds:.1f}s")
    dry = deployed.deploy(dry=True)
    assert dry.returncode == 0
    assert "Detected changes" in dry.output
    changed_rows = [line for line in dry.output.splitlines() if "(hermes-vm-" in line]
    assert changed_rows == [], "a dry run on a converged host predicted changes:\n" + "\n".join(changed_rows)


def test_swap_is_active_with_size_and_swappiness(deployed):
    name, size = deployed.run("swapon --show=NAME,SIZE --bytes --noheadings").split()[:2]
    assert name == "/swapfile"
    assert deployed.run("stat -c %s /swapfile").strip() == str(1024**3)
    assert 1024**3 - 4096 <= int(size) <= 1024**3  # the swap header takes one page
    assert deployed.run("cat /proc/sys/vm/swappiness").strip() == "10"
    assert "vm.swappiness = 10" in deployed.run("cat /etc/sysctl.d/60-hermes-infra-swap.conf")
    assert "/swapfile none swap sw 0 0" in deployed.run("cat /etc/fstab")
    assert deployed.run("stat -c '%a %u' /swapfile").strip() == "600 0"


def test_docker_is_enabled_and_container_has_the_limits(deployed):
    assert deployed.run("systemctl is-enabled docker").strip() == "enabled"
    assert deployed.run("systemctl is-active docker").strip() == "active"
    assert deployed.run("docker compose version --short").strip().startswith("2.")
    daemon = json.loads(deployed.run("cat /etc/docker/daemon.json"))
    assert daemon["live-restore"] is True and daemon["log-opts"]["max-file"] == "3"
    # RAM as pyinfra's Memory fact reads it: whole MiB from `vmstat -s` (an integer, never awk's 1e+09).
    memory_kib, cpus = deployed.run("LANG=C vmstat -s | awk '/K total memory/ {print $1}'; nproc").split()
    memory_bytes = round(int(memory_kib) / 1024) * 1024 * 1024
    expected = derive_limits(HostSettings(), HostResources(memory_bytes=memory_bytes, cpus=int(cpus)))["hermes"]
    config = inspect(deployed, "hermes")["HostConfig"]
    assert config["Memory"] == expected.memory_bytes - expected.memory_bytes % (1024 * 1024)
    assert config["NanoCpus"] == int(expected.cpus * 1e9)
    assert config["PidsLimit"] == 1024
    assert config["RestartPolicy"]["Name"] == "unless-stopped"
    assert config["NetworkMode"] != "host" and config["Privileged"] is False
    assert "no-new-privileges:true" in config["SecurityOpt"]
    assert config["ExtraHosts"] == ["host.docker.internal:host-gateway"]
    assert config["PortBindings"]["8642/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": "8642"}]


def test_data_dir_and_env_file_modes(deployed):
    assert deployed.run("stat -c '%a %u:%g' /root/.hermes").strip() == "700 10000:10000"
    assert deployed.run("stat -c '%a %u:%g' /root/.hermes/.env").strip() == "600 10000:10000"
    key = deployed.api_key()
    assert len(key) >= 32
    assert key not in deployed.run("cat /opt/hermes/compose.yaml")
    assert key not in deployed.run("docker inspect hermes")


def test_operator_keys_runtime_state_and_api_key_survive_a_redeploy(deployed):
    key_before = deployed.api_key()
    deployed.run("echo 'OPERATOR_ADDED=by-hand' >> /root/.hermes/.env")
    deployed.run("install -d -o 10000 -g 10000 /root/.hermes/weixin /root/.hermes/weixin/accounts && "
                 "echo '{\"token\": \"login\"}' > /root/.hermes/weixin/accounts/acc.json && "
                 "chown 10000:10000 /root/.hermes/weixin/accounts/acc.json")
    # a file written as root by hand (the classic `docker exec` mistake) is given back to the container user
    deployed.run("echo note > /root/.hermes/memories/by-root.md")
    state_before = deployed.run("sha256sum /root/.hermes/weixin/accounts/acc.json /root/.hermes/state.db")
    # A managed key that drifted is put back (and the file backed up first).
    deployed.run("sed -i 's/^API_SERVER_MODEL_NAME=.*/API_SERVER_MODEL_NAME=drifted/' /root/.hermes/.env")
    run = deployed.deploy()
    assert run.returncode == 0, run.output[-4000:]
    env = deployed.run("cat /root/.hermes/.env")
    assert "OPERATOR_ADDED=by-hand" in env
    assert "API_SERVER_MODEL_NAME=hermes-agent" in env
    assert deployed.api_key() == key_before
    assert deployed.run("sha256sum /root/.hermes/weixin/accounts/acc.json /root/.hermes/state.db") == state_before
    backups = deployed.run("ls /var/backups/hermes-infra/")
    assert "root__.hermes__.env." in backups
    assert deployed.run("stat -c '%a %u:%g' /root/.hermes/.env").strip() == "600 10000:10000"
    assert deployed.run("stat -c '%u:%g' /root/.hermes/memories/by-root.md").strip() == "10000:10000"
    assert deployed.run("cat /root/.hermes/memories/by-root.md").strip() == "note"
    deployed.run("sed -i '/^OPERATOR_ADDED=/d' /root/.hermes/.env && rm /root/.hermes/memories/by-root.md")


def test_invalid_setting_is_refused_before_connecting(deployed):
    run = deployed.deploy(swap={"size": "huge"}, gateways=[{"api": {"key": "short"}}])
    assert run.returncode == 2
    assert "swap.size: 'huge' is not a size" in run.output
    assert "gateways[0].api.key" in run.output and "at least 16" in run.output
    assert "Nothing was changed" in run.output
    assert "Connecting" not in run.output


def test_dry_run_and_diff_show_no_secret(deployed):
    secret = "sk-or-v1-this-must-never-be-printed"
    for extra in ([], ["--diff"], ["-vvv"]):
        result = deployed.deploy(*extra, dry=True, gateways=[{"env": {"OPENROUTER_API_KEY": secret}}])
        assert result.returncode == 0, result.output[-3000:]
        assert "Merge managed keys into /root/.hermes/.env" in result.output
        assert secret not in result.output
        assert deployed.api_key() not in result.output
    assert secret not in deployed.run("cat /root/.hermes/.env"), "a dry run wrote to the host"


def test_changed_memory_limit_recreates_only_the_container(deployed):
    container_before = inspect(deployed, "hermes")["Id"]
    dockerd_before = deployed.run("systemctl show -p MainPID --value docker").strip()
    run = deployed.deploy(gateways=[{"name": "hermes", "limits": {"memory": "1G"}}])
    assert run.returncode == 0, run.output[-4000:]
    assert inspect(deployed, "hermes")["HostConfig"]["Memory"] == 1024**3
    assert inspect(deployed, "hermes")["Id"] != container_before
    assert deployed.run("systemctl show -p MainPID --value docker").strip() == dockerd_before
    changed = {line.split("|")[-1].split("  ")[0].strip() for line in run.output.splitlines()
               if "|" in line and line.rstrip().split()[-3:-2] == ["1"]}
    changed = {"Record revision (new) as deployed" if name.startswith("Record revision ") else name for name in changed}
    assert changed <= {"Compose file /opt/hermes/compose.yaml", "Compose project hermes up",
                       "Health gate: hermes answers /health and /v1/models", "Record revision (new) as deployed"}, changed
    assert "Compose project hermes up" in changed
    print(f"[timing] back to the bootstrapped state: {deployed.reset():.1f}s")


def test_swap_resize_follows_the_setting(deployed):
    run = deployed.deploy(swap={"size": "512M", "swappiness": 20})
    assert run.returncode == 0, run.output[-4000:]
    assert deployed.run("stat -c %s /swapfile").strip() == str(512 * 1024**2)
    assert deployed.run("swapon --show=NAME --noheadings").strip() == "/swapfile"
    assert deployed.run("cat /proc/sys/vm/swappiness").strip() == "20"
    assert deployed.run("grep -c '^/swapfile ' /etc/fstab").strip() == "1"
    restore = deployed.deploy()
    assert restore.returncode == 0, restore.output[-4000:]
    assert deployed.run("stat -c %s /swapfile").strip() == str(1024**3)
