"""The upgrade step and the automatic rollback: when the plan asks for them, and what their
shell does (and never does) in a data dir."""
from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from hermes_infra.release import deploy  # noqa: F401  (the deploy imports the upgrade operations)
from hermes_infra.release import upgrade
from tests.unit.hostfakes import converged, fresh, plan_for, run_op, settings


def running(host):
    facts = converged(host)
    facts.state.containers["hermes"]["image"] = host.image.ref
    return facts


def test_upgrade_is_planned_only_over_existing_gateways_with_a_compose_change():
    assert plan_for(settings(), fresh()).upgrade is None
    host = settings()
    assert plan_for(host, running(host)).upgrade is None
    new = settings(image={"ref": "nousresearch/hermes-agent:0.23.4"})
    plan = plan_for(new, running(host)).upgrade
    assert plan is not None and plan.services == ("hermes",) and plan.data_dirs == (("hermes", "/root/.hermes"),)
    assert plan.keep == 5 and plan.image_ref == "nousresearch/hermes-agent:0.23.4"
    # a change that keeps the image (a memory limit) is a plain `compose up`, no snapshot
    assert plan_for(settings(gateways=[{"limits": {"memory": "1G"}}]), running(host)).upgrade is None


def _plan():
    host = settings()
    return plan_for(settings(image={"ref": "nousresearch/hermes-agent:0.23.4"}, backup_keep=2), running(host))


def test_scripts_are_valid_shell_and_hold_no_secret():
    plan = _plan()
    for script in (upgrade.prepare_script(plan.upgrade), upgrade.gate_or_rollback_script(plan.upgrade, plan.health),
                   upgrade.rollback_script("/opt/hermes", "hermes", ("hermes",), 60, "0123456789ab")):
        assert subprocess.run(["sh", "-n"], input=script, text=True).returncode == 0
        assert plan.gateways[0].api_key not in script


def test_snapshot_is_taken_with_the_gateway_stopped_and_by_tar_without_following_links():
    script = upgrade.prepare_script(_plan().upgrade)
    assert script.index("docker stop -t 60 hermes") < script.index("--no-xattrs -C / -czf")
    assert " -h " not in script and "[ ! -L /root/.hermes ]" in script
    assert 'docker tag "$old" hermes-infra/previous:$id' in script
    assert "tail -n +3" in script  # keep 2 previous images and 2 snapshots per profile
    assert '[ "$gone" = "$id" ] && continue' in script  # never prune the rollback target


def test_rollback_restores_into_a_fresh_root_dir_and_renames_instead_of_extracting_in_place():
    script = upgrade.rollback_script("/opt/hermes", "hermes", ("hermes",), 60)
    assert 'tmp=$(mktemp -d "${R%/*}/restore.XXXXXX")' in script
    assert 'tar -C "$tmp" -xzf "$archive" --numeric-owner --no-same-owner' in script
    assert not re.search(r"tar -C /root", script)
    assert 'mv -T -- "$dir" "$dir.rolled-back-$stamp"' in script and 'mv -T -- "$inner" "$dir"' in script
    assert script.index('docker stop') < script.index('tar -C "$tmp"')


def test_gate_or_rollback_is_a_noop_when_healthy_and_rolls_back_only_a_pending_upgrade():
    plan = _plan()
    text = run_op(upgrade.gated_or_rolled_back, plan.upgrade, plan.health).text()
    assert 'if [ ! -f "$R/pending" ]; then exit 1; fi' in text and "rolling back automatically" in text
    host = settings()
    converged_plan = plan_for(host, converged(host))
    assert not run_op(upgrade.gated_or_rolled_back, _plan().upgrade,
                      tuple(g for g in converged_plan.health)).changed


# --- the scripts themselves, run against a sandbox with a docker that only records ------------

FAKE_DOCKER = r"""#!/bin/sh
echo "docker $*" >> "$SANDBOX/docker.log"
case "$*" in
  stop*) [ -z "$STOP_FAILS" ] || { echo "Error response from daemon: cannot stop" >&2; exit 1; } ;;
  "image inspect -f {{.Id}} ref:new") echo sha256:bbbbbbbbbbbbbbbbbbbbbbbb ;;
  "inspect -f {{.Image}} hermes") echo sha256:aaaaaaaaaaaaaaaaaaaaaaaa ;;
  "inspect -f {{.Config.Image}} hermes") echo ref:old ;;
esac
exit 0
"""


def _sandbox(tmp_path):
    (tmp_path / "bin").mkdir()
    docker = tmp_path / "bin" / "docker"
    docker.write_text(FAKE_DOCKER)
    docker.chmod(0o755)
    project = tmp_path / "opt"
    project.mkdir()
    (project / "compose.yaml").write_text('services:\n  hermes:\n    image: "ref:old"\n')
    (project / "deployed-revision").write_text("0123456789ab\n")
    data = tmp_path / "data" / "hermes"
    (data / "sessions").mkdir(parents=True)
    (data / "sessions" / "s1.json").write_text("{}")
    (data / "state.db").write_bytes(b"SQLite format 3\x00rows")
    plan = upgrade.UpgradePlan(image_ref="ref:new", project="hermes", project_dir=str(project), services=("hermes",),
                               data_dirs=(("hermes", str(data)),), stop_grace_seconds=1,
                               backup_dir=str(tmp_path / "backups"), keep=2)
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "SANDBOX": str(tmp_path)}
    return plan, data, project, env


def _sh(script: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], env=env, text=True, capture_output=True)


def _owners(data):
    return {str(data): (10000, 10000)}


def _tree(directory):
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_prepare_then_rollback_by_revision_restores_the_data_dir_and_keeps_what_the_new_version_wrote(tmp_path):
    plan, data, project, env = _sandbox(tmp_path)
    releases = str(tmp_path / "state" / "releases")
    before = _tree(data)
    prepared = _sh(upgrade.prepare_script(plan, releases), env)
    assert prepared.returncode == 0, prepared.stderr
    release = tmp_path / "state" / "releases" / "aaaaaaaaaaaa"
    assert (release / "revision").read_text() == "0123456789ab\n"
    assert 'image: "hermes-infra/previous:aaaaaaaaaaaa"' in (release / "compose.yaml").read_text()
    # the new version writes, then the operator goes back by the revision that ran before
    (data / "state.db").write_bytes(b"SQLite format 3\x00newer rows")
    (project / "deployed-revision").write_text("ffffffffffff\n")
    back = _sh(upgrade.rollback_script(str(project), "hermes", plan.services, 1, "0123456789ab", releases, keep=2,
                                        owners=_owners(data)), env)
    assert back.returncode == 0, back.stderr
    assert _tree(data) == before
    aside = list(data.parent.glob("hermes.rolled-back-*"))
    assert len(aside) == 1 and (aside[0] / "state.db").read_bytes() == b"SQLite format 3\x00newer rows"
    assert (project / "deployed-revision").read_text() == "0123456789ab\n"
    assert 'image: "hermes-infra/previous:aaaaaaaaaaaa"' in (project / "compose.yaml").read_text()
    assert "compose -p hermes -f compose.yaml up -d" in (tmp_path / "docker.log").read_text()
    assert not list((tmp_path / "state").glob("restore.*"))


def test_rollback_to_an_unknown_revision_changes_nothing(tmp_path):
    plan, data, project, env = _sandbox(tmp_path)
    releases = str(tmp_path / "state" / "releases")
    assert _sh(upgrade.prepare_script(plan, releases), env).returncode == 0
    before, log = _tree(data), (tmp_path / "docker.log").read_text()
    back = _sh(upgrade.rollback_script(str(project), "hermes", plan.services, 1, "999999999999", releases,
                                        owners=_owners(data)), env)
    assert back.returncode == 1 and "no kept release" in back.stderr
    assert _tree(data) == before and (tmp_path / "docker.log").read_text() == log


def test_rolled_back_dirs_are_pruned_to_the_newest_keep(tmp_path):
    plan, data, project, env = _sandbox(tmp_path)
    releases = str(tmp_path / "state" / "releases")
    assert _sh(upgrade.prepare_script(plan, releases), env).returncode == 0
    for _ in range(4):
        back = _sh(upgrade.rollback_script(str(project), "hermes", plan.services, 1, "aaaaaaaaaaaa", releases, keep=2,
                                           owners=_owners(data)), env)
        assert back.returncode == 0, back.stderr
    names = sorted(p.name for p in data.parent.glob("hermes.rolled-back-*"))
    assert len(names) == 2
    (data.parent / "hermes.rolled-back-notes").mkdir()  # not ours: a name without a stamp is left alone
    assert _sh(upgrade.rollback_script(str(project), "hermes", plan.services, 1, None, releases, keep=2,
                                          owners=_owners(data)), env).returncode == 0
    assert (data.parent / "hermes.rolled-back-notes").is_dir()
    assert len(list(data.parent.glob("hermes.rolled-back-2*"))) == 2


def test_a_backup_dir_with_shell_syntax_stays_text_in_the_root_scripts(tmp_path):
    """F14: `$(…)` in backup_dir is a strange directory name, never a command run as root."""
    import dataclasses

    plan, data, project, env = _sandbox(tmp_path)
    planted = tmp_path / "INJECTED"
    odd = f"{tmp_path}/b$(touch {planted})`touch {planted}`\"x"
    plan = dataclasses.replace(plan, backup_dir=odd)
    prepared = _sh(upgrade.prepare_script(plan, str(tmp_path / "state" / "releases")), env)
    assert prepared.returncode == 0, prepared.stderr
    assert not planted.exists()
    assert len(list(Path(odd).glob("snapshot-hermes-*.tar.gz"))) == 1
    gate = upgrade.gate_or_rollback_script(plan, (), str(tmp_path / "state" / "releases"))
    assert f"snapshots are in \"{shlex.quote(odd)} >&2" in gate


def test_a_failed_stop_stops_the_upgrade_before_the_snapshot_and_starts_the_gateways_again(tmp_path):
    """F12: `docker stop … || true` let root snapshot (and later replace) a dir still written to."""
    plan, data, project, env = _sandbox(tmp_path)
    releases = tmp_path / "state" / "releases"
    prepared = _sh(upgrade.prepare_script(plan, str(releases)), {**env, "STOP_FAILS": "1"})
    assert prepared.returncode == 1 and "could not be stopped" in prepared.stderr
    assert not list((tmp_path / "backups").glob("snapshot-*")) and not (releases / "pending").exists()
    assert not (releases / "aaaaaaaaaaaa").exists()
    assert "docker start hermes" in (tmp_path / "docker.log").read_text()
    # and a rollback whose stop fails changes nothing
    assert _sh(upgrade.prepare_script(plan, str(releases)), env).returncode == 0
    before = _tree(data)
    back = _sh(upgrade.rollback_script(str(project), "hermes", plan.services, 1, None, str(releases),
                                       owners=_owners(data)), {**env, "STOP_FAILS": "1"})
    assert back.returncode == 1 and "nothing rolled back" in back.stderr
    assert _tree(data) == before and not list(data.parent.glob("hermes.rolled-back-*"))


def test_a_rollback_plants_no_device_node_or_setuid_file_and_gives_the_tree_to_the_configured_owner(tmp_path):
    """F11: the root snapshot kept what an agent with container root made; `tar -xzpf` as root
    put a raw-disk node and a root setuid binary back into the data dir."""
    import os
    import stat

    plan, data, project, env = _sandbox(tmp_path)
    os.mknod(data / "disk", stat.S_IFBLK | 0o666, os.makedev(7, 0))
    (data / "sessions" / "su").write_bytes(b"#!/bin/sh\n")
    os.chmod(data / "sessions" / "su", 0o6755)
    releases = str(tmp_path / "state" / "releases")
    assert _sh(upgrade.prepare_script(plan, releases), env).returncode == 0
    back = _sh(upgrade.rollback_script(str(project), "hermes", plan.services, 1, None, releases,
                                       owners=_owners(data)), env)
    assert back.returncode == 0, back.stderr
    assert not (data / "disk").exists() and (data / "sessions" / "s1.json").read_text() == "{}"
    assert stat.S_IMODE(os.stat(data / "sessions" / "su").st_mode) == 0o755
    assert {(p.lstat().st_uid, p.lstat().st_gid) for p in [data, *data.rglob("*")]} == {(10000, 10000)}


def test_a_rollback_for_a_data_dir_the_settings_do_not_name_changes_nothing(tmp_path):
    plan, data, project, env = _sandbox(tmp_path)
    releases = str(tmp_path / "state" / "releases")
    assert _sh(upgrade.prepare_script(plan, releases), env).returncode == 0
    log = (tmp_path / "docker.log").read_text()
    back = _sh(upgrade.rollback_script(str(project), "hermes", plan.services, 1, None, releases, owners={}), env)
    assert back.returncode == 1 and "nothing rolled back" in back.stderr
    assert (tmp_path / "docker.log").read_text().count("docker stop") == log.count("docker stop")


def test_snapshot_pruning_leaves_another_profiles_snapshots_alone(tmp_path):
    """`snapshot-{name}-*` also matched profile `{name}-x`'s snapshots."""
    plan, data, project, env = _sandbox(tmp_path)
    backups = tmp_path / "backups"
    backups.mkdir()
    others = [backups / f"snapshot-hermes-x-2026010{i}T000000.tar.gz" for i in range(4)]
    for other in others:
        other.write_bytes(b"")
    releases = str(tmp_path / "state" / "releases")
    assert _sh(upgrade.prepare_script(plan, releases), env).returncode == 0
    assert all(other.exists() for other in others)


def test_a_snapshot_that_does_not_read_back_stops_the_upgrade_before_anything_changes(tmp_path):
    """Item 3 of issue 20: a compressor that ends early and says 0 made tar say 0 too, and the
    truncated snapshot was kept as the rollback's (and older good ones pruned)."""
    plan, data, project, env = _sandbox(tmp_path)
    real = subprocess.run(["sh", "-c", "command -v gzip"], capture_output=True, text=True).stdout.strip()
    gzip = tmp_path / "bin" / "gzip"
    gzip.write_text(f'#!/bin/sh\ncase " $* " in *" -d "*) exec {real} "$@" ;; esac\n{real} "$@" | head -c 20; exit 0\n')
    gzip.chmod(0o755)
    releases = tmp_path / "state" / "releases"
    prepared = _sh(upgrade.prepare_script(plan, str(releases)), env)
    assert prepared.returncode == 1 and "does not read back" in prepared.stderr
    assert not list((tmp_path / "backups").glob("snapshot-*")) and not (releases / "pending").exists()
    assert "docker start hermes" in (tmp_path / "docker.log").read_text()
