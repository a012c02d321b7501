"""Several gateways per host and the WeChat hub in both topologies (issue 5), on a real VM.

The tests run in order on the session's VM; the module ends by putting the VM back into its
bootstrapped state (a saved VM state, not a redeploy: retiring profiles is what the last test
proves).
"""
from __future__ import annotations

import json
import shlex

import pytest

from tests.e2e.test_bootstrap import COMPANION_PROBE, inspect

CODER = {"name": "coder", "api": {"port": 8643}, "limits": {"memory": "768M", "cpus": 0.5}}
# Explicit limits: derived ones are shared out between the profiles, so adding a profile
# would shrink (and recreate) the others. The README says so.
HERMES = {"name": "hermes", "limits": {"memory": "1G", "cpus": 1}}


def hub(deployed, name: str, **extra) -> dict:
    image = json.loads((deployed.image_dir / "image.json").read_text())["ref"]
    return {"name": name, "image": image, "memory": "192M", "cpus": 0.25,
            "entrypoint": ["python3", "-c", "import time; time.sleep(10**9)"], **extra}


def probe(deployed, container: str, url: str, key_env: str | None = None) -> str:
    command = f"docker exec {container} python3 -c {shlex.quote(COMPANION_PROBE)} {url}"
    return deployed.run(command + (f" {key_env}" if key_env else "")).strip()


def container_env(deployed, container: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in inspect(deployed, container)["Config"]["Env"])


@pytest.fixture(scope="module", autouse=True)
def restore_default(deployed):
    yield
    print(f"[timing] back to the bootstrapped state: {deployed.reset():.1f}s")


def test_adding_a_profile_leaves_the_first_untouched(deployed):
    run = deployed.deploy(gateways=[HERMES])
    assert run.returncode == 0, run.output[-4000:]
    hermes_id = inspect(deployed, "hermes")["Id"]
    run = deployed.deploy(gateways=[HERMES, CODER])
    assert run.returncode == 0, run.output[-4000:]
    assert inspect(deployed, "hermes")["Id"] == hermes_id
    assert deployed.http_status("http://127.0.0.1:8642/health") == "200"
    assert deployed.http_status("http://127.0.0.1:8643/health") == "200"
    coder_key = deployed.api_key("/root/.hermes-coder")
    assert coder_key != deployed.api_key()
    assert deployed.http_status("http://127.0.0.1:8643/v1/models", key=coder_key) == "200"
    assert deployed.http_status("http://127.0.0.1:8643/v1/models", key=deployed.api_key()) == "401"
    config = inspect(deployed, "hermes-coder")["HostConfig"]
    assert config["Memory"] == 768 * 1024**2 and config["NanoCpus"] == 500_000_000
    assert deployed.run("stat -c '%a %u:%g' /root/.hermes-coder/.env").strip() == "600 10000:10000"


def test_hubs_in_both_topologies_reach_their_own_profile(deployed):
    companions = [hub(deployed, "hub-outside", gateway="hermes", topology="host-gateway", timeout_ms=90000),
                  hub(deployed, "hub-inside", gateway="coder", topology="same-project", auto_reply=False)]
    run = deployed.deploy(gateways=[HERMES, CODER], companions=companions)
    assert run.returncode == 0, run.output[-4000:]

    outside = container_env(deployed, "hub-outside")
    assert outside["HERMES_API_BASE_URL"] == "http://host.docker.internal:8642/v1"
    assert outside["HERMES_API_KEY"] == deployed.api_key()
    assert outside["HERMES_MODEL"] == "hermes-agent"
    assert outside["HERMES_TIMEOUT_MS"] == "90000" and outside["AUTO_REPLY"] == "true"
    assert probe(deployed, "hub-outside", "http://host.docker.internal:8642/v1/models", "HERMES_API_KEY") == "200"
    # a separate compose project, on its own network: the gateway's service name does not resolve there
    labels = inspect(deployed, "hub-outside")["Config"]["Labels"]
    assert labels["com.docker.compose.project"] == "hermes-hub-outside"

    inside = container_env(deployed, "hub-inside")
    assert inside["HERMES_API_BASE_URL"] == "http://hermes-coder:8642/v1"
    assert inside["HERMES_API_KEY"] == deployed.api_key("/root/.hermes-coder")
    assert inside["AUTO_REPLY"] == "false"
    assert probe(deployed, "hub-inside", "http://hermes-coder:8642/v1/models", "HERMES_API_KEY") == "200"
    assert probe(deployed, "hub-inside", "http://hermes:8642/v1/models", "HERMES_API_KEY") == "401"
    assert inspect(deployed, "hub-inside")["Config"]["Labels"]["com.docker.compose.project"] == "hermes"

    # the hermes API is on loopback and the docker bridge, never on the public interface
    bindings = inspect(deployed, "hermes")["HostConfig"]["PortBindings"]["8642/tcp"]
    assert sorted(b["HostIp"] for b in bindings) == ["127.0.0.1", "172.17.0.1"]
    assert inspect(deployed, "hermes-coder")["HostConfig"]["PortBindings"]["8642/tcp"] == [
        {"HostIp": "127.0.0.1", "HostPort": "8643"}]
    for secret in (deployed.api_key(), deployed.api_key("/root/.hermes-coder")):
        assert secret not in deployed.run("cat /opt/hermes/compose.yaml /opt/hermes/companions/hub-outside/compose.yaml")

    again = deployed.deploy(gateways=[HERMES, CODER], companions=companions)
    assert again.returncode == 0 and again.changed_operations() == 0, again.output[-4000:]


def test_removing_a_profile_keeps_its_data_and_the_other_container(deployed):
    companions = [hub(deployed, "hub-outside", gateway="hermes", topology="host-gateway", timeout_ms=90000)]
    hermes_id = inspect(deployed, "hermes")["Id"]
    hub_id = inspect(deployed, "hub-outside")["Id"]
    hermes_data = deployed.run("sha256sum /root/.hermes/.env /root/.hermes/config.yaml")
    coder_files = deployed.run("ls -A /root/.hermes-coder")
    run = deployed.deploy(gateways=[HERMES], companions=companions)
    assert run.returncode == 0, run.output[-4000:]
    assert inspect(deployed, "hermes")["Id"] == hermes_id
    assert inspect(deployed, "hub-outside")["Id"] == hub_id
    assert deployed.run("sha256sum /root/.hermes/.env /root/.hermes/config.yaml") == hermes_data
    names = deployed.run("docker ps -a --format '{{.Names}}'").split()
    assert "hermes-coder" not in names and "hub-inside" not in names
    assert deployed.run("ls -A /root/.hermes-coder") == coder_files
    archives = deployed.run("ls /var/backups/hermes-infra/").split()
    assert any(name.startswith("profile-coder-") and name.endswith(".tar.gz") for name in archives)
    newest = deployed.run("ls -t /var/backups/hermes-infra/profile-coder-*.tar.gz | head -n 1").strip()
    assert "root/.hermes-coder/.env" in deployed.run(f"tar -tzf {newest}").split()
    assert deployed.http_status("http://127.0.0.1:8642/health") == "200"
