"""The data dir is the agent's: things planted from inside the running container must not turn
the next deploy against its own host (issue 8). Each case plants, redeploys, and proves that a
root-only canary outside the data dir was not read (its atime would move), written, chowned
or copied, that the deploy says what to do, and that the host converges once it is cleaned up.
"""
from __future__ import annotations

import pytest

CANARY = "/root/canary-secret"
DATA = "/opt/data"


def in_container(deployed, script: str) -> str:
    """Run as the gateway's own user inside its container: what the agent can do."""
    return deployed.run(f"docker exec hermes sh -c '{script}'")


def canary_state(deployed) -> str:
    """Owner, mode, size, atime, mtime, ctime: no read of the file itself. The canary's atime is
    set before its mtime, so any read moves it (relatime); a chown or chmod moves its ctime."""
    return deployed.run(f"stat -c '%u:%g %a %s %X %Y %Z' {CANARY}")


@pytest.fixture
def canary(deployed):
    deployed.run(f"umask 077; echo 'CANARY_VALUE_9f3c1' > {CANARY} && touch -m -d '2021-01-02' {CANARY} "
                 f"&& touch -a -d '2021-01-01' {CANARY}")
    before = canary_state(deployed)
    in_container(deployed, f"mv {DATA}/.env {DATA}/.env.kept")
    yield before
    assert deployed.run(f"cat {CANARY}").strip() == "CANARY_VALUE_9f3c1"
    in_container(deployed, f"rm -rf {DATA}/.env && mv {DATA}/.env.kept {DATA}/.env")
    run = deployed.deploy()
    assert run.returncode == 0, run.output[-4000:]
    deployed.run(f"rm -f {CANARY}")


@pytest.mark.parametrize("plant, words", [
    (f"ln -s {CANARY} {DATA}/.env", "is a symbolic link"),
    (f"mkfifo {DATA}/.env", "is a FIFO"),
    (f"mkdir {DATA}/.env", "is a directory"),
])
def test_planted_env_is_refused_and_nothing_outside_is_touched(deployed, canary, plant, words):
    in_container(deployed, plant)
    run = deployed.deploy()
    assert run.returncode != 0, run.output[-4000:]
    assert f"/root/.hermes/.env {words}" in run.output, run.output[-4000:]
    assert "nothing was read, written or chowned" in run.output and "Fix:" in run.output
    assert "CANARY_VALUE" not in run.output
    assert run.seconds < 120, "a planted FIFO must not hang the deploy"
    assert canary_state(deployed) == canary, "the canary outside the data dir was read, written or chowned"
    leaked = deployed.run("grep -rl CANARY_VALUE /root/.hermes /var/backups /var/lib/hermes-infra /opt/hermes "
                          "2>/dev/null || true")
    assert leaked.strip() == ""
    # the container is still the one that was running: the deploy stopped before any change
    assert deployed.run("docker inspect -f '{{.State.Running}}' hermes").strip() == "true"


def test_link_planted_in_place_of_config_yaml_is_refused(deployed, canary):
    in_container(deployed, f"mv {DATA}/.env.kept {DATA}/.env && mv {DATA}/config.yaml {DATA}/config.kept "
                           f"&& ln -s {CANARY} {DATA}/config.yaml")
    try:
        run = deployed.deploy()
        assert run.returncode != 0
        assert "/root/.hermes/config.yaml is a symbolic link" in run.output, run.output[-4000:]
        assert canary_state(deployed) == canary
    finally:
        in_container(deployed, f"rm -f {DATA}/config.yaml && mv {DATA}/config.kept {DATA}/config.yaml "
                               f"&& mv {DATA}/.env {DATA}/.env.kept")


def test_root_written_files_and_links_are_handed_back_without_following(deployed, canary):
    """A file root left in the data dir goes back to uid 10000; a planted link to a root file
    elsewhere is changed itself (-h), never its target."""
    in_container(deployed, f"mv {DATA}/.env.kept {DATA}/.env && ln -s {CANARY} {DATA}/memories/escape")
    deployed.run("echo note > /root/.hermes/memories/by-root.md && chown -h root:root /root/.hermes/memories/escape")
    try:
        run = deployed.deploy()
        assert run.returncode == 0, run.output[-4000:]
        assert deployed.run("stat -c '%u' /root/.hermes/memories/by-root.md").strip() == "10000"
        assert deployed.run("stat -c '%u' /root/.hermes/memories/escape").strip() == "10000"
        assert canary_state(deployed) == canary
    finally:
        deployed.run("rm -f /root/.hermes/memories/by-root.md /root/.hermes/memories/escape")
        in_container(deployed, f"mv {DATA}/.env {DATA}/.env.kept")


# --- device nodes (security review F1): what container root could mknod before cap_drop ----------

LOOP_IMAGE = "/root/hostile-loop.img"
LOOP_KEY = "LOOPLEAK-0123456789abcdef-other-profile"
HOST_DATA = "/root/.hermes"


@pytest.fixture
def loop_device(deployed):
    """A block device whose bytes hold another profile's key line: a stand-in for the host's disk."""
    deployed.run(f"truncate -s 1M {LOOP_IMAGE} && printf 'API_SERVER_KEY={LOOP_KEY}\\n' "
                 f"| dd of={LOOP_IMAGE} bs=1 seek=4096 conv=notrunc status=none")
    device = deployed.run(f"losetup -f --show {LOOP_IMAGE}").strip()
    numbers = deployed.run(f"stat -c '%t %T' {device}").split()
    yield device, int(numbers[0], 16), int(numbers[1], 16)
    deployed.run(f"losetup -d {device}; rm -f {LOOP_IMAGE}")


def status_of(deployed) -> tuple[int, dict]:
    import json
    import subprocess
    import sys

    from tests.e2e.conftest import REPO

    run = subprocess.run([sys.executable, "-m", "hermes_infra", "status", "--json", *deployed.target().cli_args()],
                         capture_output=True, text=True, cwd=REPO, stdin=subprocess.DEVNULL, timeout=300)
    return run.returncode, json.loads(run.stdout)["hosts"][0]


@pytest.mark.parametrize("node", ["char", "block"])
def test_a_device_node_env_is_never_read_as_the_key_nor_chowned(deployed, canary, loop_device, node):
    """Root on the host plants `.env` as a device node (as container root could with CAP_MKNOD),
    mode 0666 so the owner could open it: the deploy refuses it by name, never chowns it, and
    neither the deploy's probe nor status reads it as the key or sends its bytes to the API."""
    _, major, minor = loop_device
    spec = "c 1 3" if node == "char" else f"b {major} {minor}"  # /dev/null, or the loop "disk"
    deployed.run(f"mknod -m 0666 {HOST_DATA}/.env {spec}")
    try:
        run = deployed.deploy()
        assert run.returncode != 0, run.output[-4000:]
        assert f"{HOST_DATA}/.env is not a regular file" in run.output, run.output[-4000:]
        assert "nothing was read, written or chowned" in run.output and LOOP_KEY not in run.output
        assert run.seconds < 120, "a device node must not turn the read into a disk-sized one"
        assert deployed.run(f"stat -c '%u:%g %F' {HOST_DATA}/.env").split(" ", 1)[0] == "0:0"
        # status still works: the row is there, the key was not read from the node (detailed is
        # refused or not sent), and nothing from the device reached the agent's API
        code, host = status_of(deployed)
        assert code in (0, 1) and host["error"] is None
        gateway = host["gateways"][0]
        assert gateway["state"] == "running" and gateway["health_code"] == "200"
        assert gateway["detailed_code"] != "200"
        assert deployed.run(f"docker logs hermes 2>&1 | grep -c {LOOP_KEY} || true").strip() == "0"
        assert canary_state(deployed) == canary
        # the container is still the one that was running: the deploy stopped before any change
        assert deployed.run("docker inspect -f '{{.State.Running}}' hermes").strip() == "true"
    finally:
        deployed.run(f"rm -f {HOST_DATA}/.env")


def test_a_device_node_elsewhere_in_the_data_dir_is_not_handed_to_the_owner(deployed, canary, loop_device):
    """A valid `.env`, plus a root-owned device node and FIFO deeper in the data dir: the deploy
    (and its gate) pass, root-written files go back to uid 10000, the device and FIFO stay root's."""
    _, major, minor = loop_device
    in_container(deployed, f"mv {DATA}/.env.kept {DATA}/.env")
    deployed.run(f"mknod -m 0600 {HOST_DATA}/memories/disk b {major} {minor} && "
                 f"mkfifo -m 0600 {HOST_DATA}/memories/pipe && echo note > {HOST_DATA}/memories/by-root.md")
    try:
        run = deployed.deploy()
        assert run.returncode == 0, run.output[-4000:]
        assert deployed.run(f"stat -c '%u' {HOST_DATA}/memories/by-root.md").strip() == "10000"
        for name in ("disk", "pipe"):
            assert deployed.run(f"stat -c '%u:%g' {HOST_DATA}/memories/{name}").strip() == "0:0", name
        code, host = status_of(deployed)
        assert code == 0 and host["gateways"][0]["detailed_code"] == "200"
        # and container root can no longer make one (cap_drop: MKNOD)
        made = deployed.vm.ssh(f"docker exec -u 0 hermes mknod {DATA}/memories/again c 1 3")
        assert made.rc != 0
        assert deployed.run("docker inspect -f '{{json .HostConfig.CapDrop}}' hermes").strip() == '["ALL"]'
    finally:
        deployed.run(f"rm -f {HOST_DATA}/memories/disk {HOST_DATA}/memories/pipe {HOST_DATA}/memories/by-root.md "
                     f"{HOST_DATA}/memories/again")
        in_container(deployed, f"mv {DATA}/.env {DATA}/.env.kept")
