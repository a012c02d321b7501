"""The upgrade step and the automatic rollback: when the plan asks for them, and what their
shell does (and never does) in a data dir."""
from __future__ import annotations

import re
import subprocess

from hermes_infra import deploy  # noqa: F401  (the deploy imports the upgrade operations)
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
    assert script.index("docker stop -t 60 hermes") < script.index("tar -C / -czf")
    assert " -h " not in script and "[ ! -L /root/.hermes ]" in script
    assert 'docker tag "$old" hermes-infra/previous:$id' in script
    assert "tail -n +3" in script  # keep 2 previous images and 2 snapshots per profile
    assert '[ "$gone" = "$id" ] && continue' in script  # never prune the rollback target


def test_rollback_restores_into_a_fresh_root_dir_and_renames_instead_of_extracting_in_place():
    script = upgrade.rollback_script("/opt/hermes", "hermes", ("hermes",), 60)
    assert 'tmp=$(mktemp -d /var/lib/hermes-infra/restore.XXXXXX)' in script
    assert 'tar -C "$tmp" -xzpf "$archive"' in script
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
