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
