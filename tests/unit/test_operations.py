"""Every operation against faked facts: what it yields on a fresh, converged, drifted and hostile
host, and what it must never yield (no secret in a command, no path in a data dir opened,
chowned or chmodded as root)."""
from __future__ import annotations

import dataclasses
import re

import pytest

from pyinfra.connectors.ssh import SSHConnector

from hermes_infra.operations import datadir, docker_engine, health, image, files as ops, profiles, swap
from hermes_infra.operations import compose
from hermes_infra.plan.hostplan import ImagePlan, RetirePlan
from hermes_infra.host import safeio
from tests.unit.hostfakes import (
    FakeCommand,
    converged,
    fresh,
    plan_for,
    run_op,
    settings,
)

KEY = "k3y-Qw8vT2mZp9Lx4Rn7"
HUB = {"name": "hub", "image": "example/hub:1.2", "secret_env": {"HUB_TOKEN": "hub-secret-value-123"}}


def fresh_plan(**sections):
    return plan_for(settings(**sections), fresh())


def converged_plan(**sections):
    host = settings(**sections)
    return plan_for(host, converged(host))


def uploaded(result) -> list[bytes]:
    return [command.src.getvalue() for command in result.uploads]


# --- files outside data dirs ----------------------------------------------------------------

def test_root_file_on_a_fresh_host_is_staged_then_renamed():
    plan = fresh_plan()
    result = run_op(ops.root_file, plan.docker.daemon_json, plan.writer, on_change="systemctl restart docker")
    text = result.text()
    assert "install -d -m 0700 /var/lib/hermes-infra/stage" in text
    assert re.search(r"install -m 0644 -o 0 -g 0 -T /var/lib/hermes-infra/stage/\w+ "
                     r"/etc/docker/daemon.json.hermes-infra.new && mv -fT", text)
    assert result.commands[-1] == "systemctl restart docker"
    assert uploaded(result) == [plan.docker.daemon_json.content.encode()]
    # with --sudo the SSH user's upload lands in its own 0700 directory, never in /tmp
    assert result.uploads[0].remote_temp_filename.startswith("/root/.hermes-infra-upload/")
    assert "cp -a" not in text  # nothing to back up
    # every command is a round trip: the directories in one, the upload, the rename, the hook
    assert len(result.commands) == 3 and len(result.uploads) == 1


def test_root_file_backs_up_and_rotates_before_replacing():
    host = settings()
    facts = converged(host)
    facts.state.root_files["/etc/docker/daemon.json"]["text"].text = "{}\n"
    plan = plan_for(settings(backup_keep=3), facts)
    result = run_op(ops.root_file, plan.docker.daemon_json, plan.writer)
    text = result.text()
    # the copy is taken in the first command, before anything is uploaded or renamed
    first = result.commands[0]
    assert first.index("cp -a") < first.index("install -d -m 0700 /var/lib/hermes-infra/stage")
    assert "install -d -m 0700 /var/backups/hermes-infra && chmod 0700 /var/backups/hermes-infra" in text
    assert "cp -a /etc/docker/daemon.json /var/backups/hermes-infra/etc__docker__daemon.json." in text
    assert "tail -n +4" in text  # keeps 3


def test_root_file_converged_is_a_noop_and_drifted_mode_is_fixed():
    plan = converged_plan()
    result = run_op(ops.root_file, plan.docker.daemon_json, plan.writer)
    assert not result.changed and result.noops == ["/etc/docker/daemon.json is up to date"]
    host = settings()
    facts = converged(host)
    facts.state.root_files["/etc/docker/daemon.json"]["mode"] = "0666"
    plan = plan_for(host, facts)
    assert run_op(ops.root_file, plan.docker.daemon_json, plan.writer).commands == [
        "chown 0:0 /etc/docker/daemon.json && chmod 0644 /etc/docker/daemon.json"]


def test_companion_env_file_secret_travels_only_as_an_upload():
    plan = fresh_plan(companions=[HUB])
    env_file = plan.companion_env_files[0]
    result = run_op(ops.root_file, env_file, plan.writer)
    assert "hub-secret-value-123" not in result.text() and plan.gateways[0].api_key not in result.text()
    assert b"hub-secret-value-123" in uploaded(result)[0]
    assert "install -m 0600 -o 0 -g 0" in result.text()


# --- the data dir: hostile ground -----------------------------------------------------------

ROOT_TOUCHING_DATA_DIR = re.compile(
    r"(^|[;&|(]\s*)(cat|cp|sed|chown(?! -h)|chmod|stat -L|base64|head|tail)\s[^;&|]*/root/\.hermes/")


def test_data_dir_created_with_owner_and_mode():
    plan = fresh_plan()
    assert run_op(datadir.directory, plan.gateways[0].data_dir).commands == [
        "install -d -o 10000 -g 10000 -m 0700 /root/.hermes"]
    assert not run_op(datadir.directory, converged_plan().gateways[0].data_dir).changed


def test_env_write_is_done_by_the_owner_by_rename_without_chown_by_path():
    plan = fresh_plan(gateways=[{"api": {"key": KEY}}])
    result = run_op(ops.data_file, plan.gateways[0].env, plan.writer)
    text = result.text()
    assert KEY not in text
    assert KEY.encode() in uploaded(result)[0]
    assert "cd -P -- /root/.hermes && setpriv --reuid=10000 --regid=10000 --clear-groups -- sh -c" in text
    assert "mktemp" in text and "mv -fT" in text
    assert not re.search(r"chown \d+:\d+ /root/\.hermes", text)
    assert not ROOT_TOUCHING_DATA_DIR.search(text), text


def test_env_rewrite_backs_up_the_old_file_read_as_the_owner():
    host = settings()
    facts = converged(host)
    env = facts.state.data_dirs["hermes"]["files"][".env"]
    facts.state.data_dirs["hermes"]["files"][".env"] = dataclasses.replace(
        env, text=env.text.replace("API_SERVER_MODEL_NAME=hermes-agent", "API_SERVER_MODEL_NAME=x"))
    plan = plan_for(host, facts)
    text = run_op(ops.data_file, plan.gateways[0].env, plan.writer).text()
    assert safeio.owner_read(".env", 10000, 10000, safeio.MAX_READ_BYTES) in text
    assert "> /var/backups/hermes-infra/root__.hermes__.env." in text
    assert not ROOT_TOUCHING_DATA_DIR.search(text), text


def test_env_converged_is_a_noop():
    plan = converged_plan()
    for file in (plan.gateways[0].env, plan.gateways[0].config):
        result = run_op(ops.data_file, file, plan.writer)
        assert not result.changed and result.noops


def test_foreign_files_are_chowned_with_execdir_and_no_follow():
    host = settings()
    facts = converged(host)
    facts.state.data_dirs["hermes"]["foreign"] = True
    plan = plan_for(host, facts)
    text = run_op(datadir.owned_by_owner, plan.gateways[0].data_dir).text()
    assert "-execdir chown -h 10000:10000 {} +" in text and "-links 1" in text
    assert "chown -R" not in text
    assert not run_op(datadir.owned_by_owner, converged_plan().gateways[0].data_dir).changed


# --- swap -------------------------------------------------------------------------------------

def test_swap_fresh_converged_resized_and_removed():
    plan = fresh_plan()
    text = run_op(swap.swap_file, plan.swap).text()
    assert "fallocate -l 2048M /swapfile" in text and "mkswap /swapfile" in text and "swapon /swapfile" in text
    assert "echo '/swapfile none swap sw 0 0' >> /etc/fstab" in text
    assert not run_op(swap.swap_file, converged_plan().swap).changed
    host = settings()
    resized = plan_for(settings(swap={"size": "1G"}), converged(host)).swap
    text = run_op(swap.swap_file, resized).text()
    assert text.startswith("swapoff /swapfile") and "fallocate -l 1024M" in text and ">> /etc/fstab" not in text
    removed = plan_for(settings(swap={"size": "0"}), converged(host)).swap
    assert run_op(swap.swap_file, removed).commands[0] == "swapoff /swapfile"


# --- image ------------------------------------------------------------------------------------

def test_image_present_is_a_noop_and_missing_is_pulled():
    plan = converged_plan()
    assert not run_op(image.image_present, plan.image, plan.writer).changed
    plan = fresh_plan()
    assert run_op(image.image_present, plan.image, plan.writer).commands == ["docker pull -q nousresearch/hermes-agent:0.23.5"]
    mirrored = dataclasses.replace(plan.image, pull_ref="mirror.example.com:5000/nousresearch/hermes-agent:0.23.5")
    assert "docker tag mirror.example.com:5000/" in run_op(image.image_present, mirrored, plan.writer).text()


def test_archive_is_uploaded_loaded_and_retagged():
    plan = fresh_plan()
    archive = ImagePlan(ref="hermes-agent:0.19.0-local", source="archive", present=False,
                        archive_path=__file__, archive_sha256="f" * 64, remote_archive="/var/cache/hermes-infra/images/ff.tar",
                        archive_ref="hermes-agent:0.19.0-built", cache_dir="/var/cache/hermes-infra/images")
    result = run_op(image.image_present, archive, plan.writer, facts={"Sha256File": None, "File": None,
                                                                      "Directory": {"mode": 755}})
    text = result.text()
    assert "docker load -q -i /var/cache/hermes-infra/images/ff.tar" in text
    assert "docker tag hermes-agent:0.19.0-built hermes-agent:0.19.0-local" in text
    assert result.uploads


def test_archive_is_streamed_into_docker_load_over_ssh():
    plan = fresh_plan()
    archive = ImagePlan(ref="hermes-agent:0.19.0-local", source="archive", present=False,
                        archive_path=__file__, archive_sha256="f" * 64, remote_archive="/var/cache/hermes-infra/images/ff.tar",
                        archive_ref="hermes-agent:0.19.0-built", cache_dir="/var/cache/hermes-infra/images")
    result = run_op(image.image_present, archive, plan.writer, connector=SSHConnector.__new__(SSHConnector),
                    global_arguments={"_sudo": True, "_sudo_password": "s3cret-sudo", "_timeout": 5})
    streamed = [c for c in result.functions if c.function is image.load_streamed]
    assert len(streamed) == 1 and not result.uploads
    target = streamed[0].args[0]
    assert target.path == __file__
    # sudo reaches the remote command; pyinfra's runner arguments do not; the password is not shown.
    assert target.arguments == {"_sudo": True, "_sudo_password": "s3cret-sudo"}
    assert "s3cret-sudo" not in repr(streamed[0])
    # Nothing is left on disk: no upload, and archives earlier versions kept are removed.
    assert result.commands == [
        "docker tag hermes-agent:0.19.0-built hermes-agent:0.19.0-local",
        "if [ -d /var/cache/hermes-infra/images ]; then "
        "find /var/cache/hermes-infra/images -maxdepth 1 -type f -name '*.tar' -delete; fi"]


def test_streamed_load_sends_every_byte_and_reports_failure(tmp_path):
    archive_file = tmp_path / "image.tar.gz"
    archive_file.write_bytes(bytes(range(256)) * 4099)
    target = image.StreamedArchive(str(archive_file), {})
    loading = FakeCommand()
    assert image.load_streamed(None, loading.host(), target) is True
    assert bytes(loading.stdin) == archive_file.read_bytes()
    assert loading.command == "sh -c 'docker load -q'"
    failing = FakeCommand(stderr=b"no space left on device", rc=1)
    assert image.load_streamed(None, failing.host(), target) is False


# --- compose, retirement, health --------------------------------------------------------------

def test_compose_up_only_with_a_reason():
    plan = converged_plan()
    assert not run_op(compose.compose_up, plan.projects[0]).changed
    host = settings()
    facts = converged(host)
    facts.state.containers["hermes"]["state"] = "exited"
    project = plan_for(host, facts).projects[0]
    assert run_op(compose.compose_up, project).commands == [
        "cd /opt/hermes && docker compose -p hermes -f compose.yaml up -d --remove-orphans --quiet-pull 2>&1",
        f"{{ echo {project.stamp}; cd /opt/hermes && docker compose -p hermes -f compose.yaml config --hash '*'; }}"
        " > /opt/hermes/.hermes-infra-applied"]


def test_compose_file_has_hardening_and_no_secret():
    plan = fresh_plan(gateways=[{"api": {"key": KEY}, "stop_grace_seconds": 90}])
    text = plan.projects[0].file.content
    assert KEY not in text
    assert "healthcheck:" in text and "/dev/tcp/127.0.0.1/8642" in text
    assert 'stop_grace_period: "90s"' in text
    assert "no-new-privileges:true" in text


def test_retire_commands_archive_without_following_links():
    plan = fresh_plan()
    retire = RetirePlan(containers=("hermes-old",), projects_down=(("hermes-hub", "/opt/hermes/companions/hub"),),
                        files=("/opt/hermes/companions/hub.env",), archives=(("old", "/root/.hermes-old"),),
                        purges=("/root/.hermes-old",))
    text = run_op(profiles.retire, retire, plan.writer).text()
    assert "docker compose -p hermes-hub -f compose.yaml down --remove-orphans" in text
    assert "docker rm -f hermes-old" in text and "rm -f /opt/hermes/companions/hub.env" in text
    assert "[ ! -L /root/.hermes-old ]" in text and "tar -C / -czf" in text and " -h " not in text
    assert text.index("tar -C /") < text.index("rm -rf --one-file-system -- /root/.hermes-old")
    assert not run_op(profiles.retire, RetirePlan(), plan.writer).changed


def test_health_gate_skipped_when_healthy_and_nothing_changed():
    plan = converged_plan()
    assert not run_op(health.healthy, plan.health[0]).changed
    plan = fresh_plan(gateways=[{"api": {"key": KEY}}])
    text = run_op(health.healthy, plan.health[0]).text()
    assert KEY not in text
    assert "curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H @-" in text
    assert "setpriv --reuid=10000" in text and "/dev/fd/3" in text


def test_apt_lock_wait_only_when_needed():
    plan = converged_plan()
    assert not run_op(docker_engine.apt_locks_free, plan.docker).changed
    held = dataclasses.replace(plan.docker, apt_lock_holder="4242")
    assert run_op(docker_engine.apt_locks_free, held).changed
    assert run_op(docker_engine.apt_locks_free, fresh_plan().docker).changed


def test_no_operation_puts_a_secret_in_a_command():
    secrets = (KEY, "sk-or-secret-value", "hub-secret-value-123")
    plan = fresh_plan(gateways=[{"api": {"key": KEY}, "env": {"OPENROUTER_API_KEY": "sk-or-secret-value"}}],
                      companions=[HUB])
    texts = [run_op(ops.root_file, f, plan.writer).text() for f in plan.companion_env_files]
    texts += [run_op(ops.data_file, plan.gateways[0].env, plan.writer).text(),
              run_op(health.healthy, plan.health[0]).text()]
    texts += [run_op(ops.root_file, p.file, plan.writer).text() for p in plan.projects]
    for text in texts:
        for secret in secrets:
            assert secret not in text


# --- packages, service, swappiness --------------------------------------------------------------

def test_packages_installed_only_when_missing_with_lock_timeout_and_fresh_lists():
    plan = fresh_plan()
    text = run_op(docker_engine.apt_installed, plan.docker, plan.docker.packages_missing, True).text()
    assert text.startswith("DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 NEEDRESTART_MODE=l apt-get -q -y -o DPkg::Lock::Timeout=600 update")
    assert "install --no-install-recommends docker-ce docker-ce-cli containerd.io" in text
    converged_docker = converged_plan().docker
    assert converged_docker.packages_missing == () and converged_docker.prerequisites_missing == ()
    assert not run_op(docker_engine.apt_installed, converged_docker, (), False).changed


def test_conflicting_packages_are_removed_when_installed():
    host = settings()
    facts = converged(host)
    facts.state.packages["docker.io"] = "installed"
    plan = plan_for(host, facts)
    assert run_op(docker_engine.apt_removed, plan.docker).text().endswith("remove docker.io")
    assert not run_op(docker_engine.apt_removed, converged_plan().docker).changed


def test_docker_service_enabled_and_started():
    # Just installed: the package usually started it; `enable` (slow: SysV sync) only if not.
    assert run_op(docker_engine.docker_service, fresh_plan().docker, True).commands == [
        "systemctl is-enabled -q docker && systemctl is-active -q docker || systemctl enable --now docker"]
    converged_docker = converged_plan().docker
    assert not run_op(docker_engine.docker_service, converged_docker, False).changed
    disabled = dataclasses.replace(converged_docker, service_enabled=False, service_active=False)
    assert run_op(docker_engine.docker_service, disabled, False).commands == ["systemctl enable --now docker"]
    stopped = dataclasses.replace(converged_docker, service_active=False)
    assert run_op(docker_engine.docker_service, stopped, False).commands == ["systemctl start docker"]


def test_swappiness_applied_now_and_persisted():
    plan = fresh_plan()
    assert run_op(swap.swappiness, plan.swap).commands == ["sysctl -q -w vm.swappiness=10"]
    assert plan.swap.sysctl_file.content == "vm.swappiness = 10\n"
    converged_swap = converged_plan().swap
    assert not run_op(swap.swappiness, converged_swap).changed
    assert not converged_swap.sysctl_file.content_changed


def test_a_new_daemon_json_is_judged_by_dockerd_before_it_replaces_the_old_one():
    plan = fresh_plan()
    result = run_op(ops.root_file, plan.docker.daemon_json, plan.writer, check=docker_engine.daemon_json_accepted)
    rename = result.commands[-1]
    assert rename.index("dockerd --validate --config-file /var/lib/hermes-infra/stage/") < rename.index("install -m 0644")
    assert len(result.commands) == 2  # no round trip more: the check travels with the rename


@pytest.mark.parametrize(("validate_rc", "expected"), [(0, 0), (1, 1)])
def test_dockerd_refusing_the_new_daemon_json_stops_before_the_restart(tmp_path, validate_rc, expected):
    import subprocess
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "dockerd").write_text(f"#!/bin/sh\ncase \"$1\" in --help) echo '      --validate   Validate'; exit 0;; "
                                  f"--validate) echo 'unknown key \"hosts\"' >&2; exit {validate_rc};; esac\n")
    (fake / "dockerd").chmod(0o755)
    script = docker_engine.daemon_json_accepted("/staged/daemon.json") + " && echo replaced"
    run = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                         env={"PATH": f"{fake}:/usr/bin:/bin"})
    assert run.returncode == expected
    assert ("replaced" in run.stdout) == (expected == 0)
    if expected:
        assert "dockerd refuses the new daemon.json" in run.stderr and "Docker was not restarted" in run.stderr


def test_without_a_dockerd_that_validates_the_settings_checks_stand_alone(tmp_path):
    import shutil
    import subprocess
    (tmp_path / "grep").symlink_to(shutil.which("grep"))  # a PATH with no dockerd, whatever this machine has
    run = subprocess.run(["/bin/sh", "-c", docker_engine.daemon_json_accepted("/x") + " && echo replaced"],
                         capture_output=True, text=True, env={"PATH": str(tmp_path)})
    assert (run.returncode, run.stdout.strip()) == (0, "replaced")
