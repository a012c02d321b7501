"""The plan: settings + faked facts in, one value out (fresh, converged, drifted, hostile host)."""
from __future__ import annotations

import dataclasses

import pytest

from hermes_infra.plan.hostplan import PlanError, fact_request
from hermes_infra.host.safeio import FileRead
from tests.unit.hostfakes import (
    converged,
    fresh,
    plan_for,
    root_file,
    settings,
    with_state,
)

KEY = "k3y-Qw8vT2mZp9Lx4Rn7"
CODER = {"name": "coder", "api": {"port": 8643}, "limits": {"memory": "768M", "cpus": 0.5}}
HUB = {"name": "hub", "image": "example/hub:1.2", "secret_env": {"HUB_TOKEN": "hub-secret-value-123"}}


def all_root_files(plan):
    files = [plan.docker.daemon_json, plan.docker.apt_conf, plan.manifest, *plan.companion_env_files]
    return files + [p.file for p in plan.projects]


def test_fresh_host_plans_every_file_the_image_and_the_gate():
    plan = plan_for(settings(), fresh())
    assert all(f.content_changed for f in all_root_files(plan))
    gateway = plan.gateways[0]
    assert not gateway.data_dir.exists and gateway.env.content_changed and gateway.config.content_changed
    assert "API_SERVER_KEY=" + gateway.api_key in gateway.env.content
    assert len(gateway.api_key) >= 32
    assert plan.projects[0].up_reason and plan.health[0].gate_needed
    assert not plan.image.present and plan.docker.packages_missing
    assert plan.retire.empty


def test_converged_host_plans_nothing():
    host = settings(companions=[HUB], gateways=[{"name": "hermes"}, CODER])
    plan = plan_for(host, converged(host))
    changed = [f.path for f in all_root_files(plan) if f.content_changed or f.meta_changed]
    assert changed == []
    for gateway in plan.gateways:
        assert not gateway.env.content_changed and not gateway.env.meta_changed
        assert not gateway.config.content_changed
        assert gateway.data_dir.exists and not gateway.data_dir.meta_changed and not gateway.data_dir.foreign_files
    assert [p.up_reason for p in plan.projects] == [None, None]
    assert [h.gate_needed for h in plan.health] == [False, False]
    assert plan.image.present and not plan.docker.packages_missing and plan.retire.empty


def test_the_key_on_the_host_is_kept_and_the_same_inputs_give_the_same_revision():
    host = settings()
    facts = converged(host)
    first, second = plan_for(host, facts), plan_for(host, facts)
    assert first.gateways[0].api_key == second.gateways[0].api_key
    assert first.revision == second.revision and len(first.revision) == 12
    other = settings(gateways=[{"limits": {"memory": "1G"}}])
    assert plan_for(other, facts).revision != first.revision


def test_operator_key_wins_and_weak_key_on_host_is_refused():
    host = settings(gateways=[{"api": {"key": KEY}}])
    assert plan_for(host, converged(settings())).gateways[0].api_key == KEY
    facts = converged(settings())
    env = facts.state.data_dirs["hermes"]["files"][".env"]
    weak = FileRead("regular", env.text.replace(plan_for(settings(), facts).gateways[0].api_key, "changeme"), env.owner)
    facts.state.data_dirs["hermes"]["files"][".env"] = weak
    with pytest.raises(PlanError, match="API_SERVER_KEY in /root/.hermes/.env on the host") as error:
        plan_for(settings(), facts)
    assert "changeme" not in str(error.value)


def test_drifted_env_is_merged_keeping_operator_lines():
    host = settings()
    facts = converged(host)
    env = facts.state.data_dirs["hermes"]["files"][".env"]
    drifted = env.text.replace("API_SERVER_MODEL_NAME=hermes-agent", "API_SERVER_MODEL_NAME=drifted")
    drifted += "OPERATOR_ADDED=by-hand\n"
    facts.state.data_dirs["hermes"]["files"][".env"] = FileRead("regular", drifted, env.owner)
    plan = plan_for(host, facts)
    assert plan.gateways[0].env.changed_keys == ("API_SERVER_MODEL_NAME",)
    assert "OPERATOR_ADDED=by-hand" in plan.gateways[0].env.content
    assert "API_SERVER_MODEL_NAME=hermes-agent" in plan.gateways[0].env.content
    # the label digest depends on managed values only: the container is not recreated for it
    assert plan.projects[0].up_reason is None


def test_export_form_of_the_key_is_rewritten_canonically():
    host = settings()
    facts = converged(host)
    env = facts.state.data_dirs["hermes"]["files"][".env"]
    facts.state.data_dirs["hermes"]["files"][".env"] = FileRead(
        "regular", env.text.replace("API_SERVER_KEY=", "export API_SERVER_KEY="), env.owner)
    plan = plan_for(host, facts)
    assert plan.gateways[0].env.changed_keys == ("API_SERVER_KEY",)
    assert "\nAPI_SERVER_KEY=" in "\n" + plan.gateways[0].env.content
    assert "export API_SERVER_KEY" not in plan.gateways[0].env.content


def test_stopped_or_hand_recreated_container_is_brought_back():
    host = settings()
    facts = converged(host)
    facts.state.containers["hermes"]["state"] = "exited"
    assert "not running: hermes" in plan_for(host, facts).projects[0].up_reason
    facts = converged(host)
    facts.state.containers["hermes"]["config_hash"] = "recreated-by-hand"
    assert "changed by hand" in plan_for(host, facts).projects[0].up_reason
    assert plan_for(host, facts).health[0].gate_needed


def test_changed_daemon_json_restarts_docker_and_reruns_the_gate():
    host = settings()
    facts = converged(host)
    facts.state.root_files["/etc/docker/daemon.json"] = root_file("{}\n")
    plan = plan_for(host, facts)
    assert plan.docker.daemon_json.content_changed and plan.health[0].gate_needed
    facts = converged(host)
    facts.state.root_files["/etc/docker/daemon.json"]["mode"] = "0666"
    plan = plan_for(host, facts)
    assert plan.docker.daemon_json.meta_changed and not plan.docker.daemon_json.content_changed


@pytest.mark.parametrize("kind, words", [
    ("symlink", "a symbolic link"), ("fifo", "a FIFO"), ("directory", "a directory"),
    ("hardlink", "several hard links"), ("changed", "changed while it was read"), ("toolarge", "larger than"),
])
def test_hostile_env_stops_the_plan_with_what_to_do(kind, words):
    host = settings()
    facts = converged(host)
    facts.state.data_dirs["hermes"]["files"][".env"] = FileRead(kind)
    with pytest.raises(PlanError) as error:
        plan_for(host, facts)
    message = str(error.value)
    assert "/root/.hermes/.env" in message and words in message
    assert "nothing was read, written or chowned" in message and "Fix:" in message


def test_hostile_config_yaml_and_data_dir_link_are_refused():
    host = settings()
    facts = converged(host)
    facts.state.data_dirs["hermes"]["files"]["config.yaml"] = FileRead("symlink")
    with pytest.raises(PlanError, match="config.yaml is a symbolic link"):
        plan_for(host, facts)
    facts = converged(host)
    facts.state.data_dirs["hermes"]["meta"] = {"kind": "symlink", "uid": 10000, "gid": 10000, "mode": "0777"}
    with pytest.raises(PlanError, match="symbolic link"):
        plan_for(host, facts)
    facts = converged(host)
    facts.state.data_dirs["hermes"]["parent"] = {"kind": "directory", "uid": 10000, "gid": 10000, "mode": "0755"}
    with pytest.raises(PlanError, match="parent directory belongs to uid 10000"):
        plan_for(host, facts)


def test_invalid_yaml_is_not_overwritten():
    host = settings()
    facts = converged(host)
    owner = (10000, 10000, "0600")
    facts.state.data_dirs["hermes"]["files"]["config.yaml"] = FileRead("regular", "a: [unclosed\n", owner)
    with pytest.raises(PlanError, match="not valid YAML"):
        plan_for(host, facts)


def test_foreign_files_and_wrong_modes_are_planned():
    host = settings()
    facts = converged(host)
    facts.state.data_dirs["hermes"]["foreign"] = True
    facts.state.data_dirs["hermes"]["meta"]["mode"] = "0755"
    env = facts.state.data_dirs["hermes"]["files"][".env"]
    facts.state.data_dirs["hermes"]["files"][".env"] = FileRead("regular", env.text, (10000, 10000, "0644"))
    gateway = plan_for(host, facts).gateways[0]
    assert gateway.data_dir.foreign_files and gateway.data_dir.meta_changed
    assert gateway.env.meta_changed and not gateway.env.content_changed


def test_renamed_profile_keeping_its_data_dir_retires_the_container_only():
    before = settings(gateways=[{"name": "a", "data_dir": "/srv/hermes-a"}], purge_removed_gateways=True)
    facts = converged(before)
    after = settings(gateways=[{"name": "b", "data_dir": "/srv/hermes-a"}], purge_removed_gateways=True)
    retire = plan_for(after, facts).retire
    assert retire.containers == ("hermes-a",)
    assert retire.archives == () and retire.purges == ()


def test_removed_profile_is_archived_and_purged_only_when_asked():
    before = settings(gateways=[{"name": "hermes"}, CODER])
    facts = converged(before)
    kept = plan_for(settings(), facts).retire
    assert kept.containers == ("hermes-coder",) and kept.archives == (("coder", "/root/.hermes-coder"),)
    assert kept.purges == ()
    purged = plan_for(settings(purge_removed_gateways=True), facts).retire
    assert purged.purges == ("/root/.hermes-coder",)


def test_companion_changing_topology_keeps_its_env_file():
    before = settings(companions=[HUB])
    facts = converged(before)
    after = settings(companions=[{**HUB, "topology": "same-project"}])
    retire = plan_for(after, facts).retire
    assert retire.projects_down == (("hermes-hub", "/opt/hermes/companions/hub"),)
    assert retire.files == ()
    removed = plan_for(settings(), facts).retire
    assert removed.files == ("/opt/hermes/companions/hub.env",)


def test_companion_env_file_holds_the_gateway_key_and_compose_does_not():
    host = settings(companions=[HUB])
    plan = plan_for(host, fresh())
    key = plan.gateways[0].api_key
    env_file = plan.companion_env_files[0]
    assert env_file.mode == "0600" and env_file.secret
    assert f"HERMES_API_KEY={key}" in env_file.content and "HUB_TOKEN=hub-secret-value-123" in env_file.content
    for project in plan.projects:
        assert key not in project.file.content and "hub-secret-value-123" not in project.file.content


def test_limits_come_from_integer_memory_and_cpus():
    plan = plan_for(settings(), fresh(memory_mb=3915, cpus=2))
    limits = plan.gateways[0].limits
    assert limits.memory_bytes == (3915 * 1024 * 1024 - 512 * 1024 * 1024) // (1024 * 1024) * (1024 * 1024)
    assert limits.cpus == 1.25
    assert "mem_limit: \"3403m\"" in plan.projects[0].file.content


def test_unsupported_hosts_are_refused_before_anything():
    facts = dataclasses.replace(fresh(), os_release={"id": "ubuntu", "version_codename": "focal"})
    with pytest.raises(PlanError, match="Debian"):
        plan_for(settings(), facts)
    facts = dataclasses.replace(fresh(), os_release={"id": "debian", "version_codename": "bookworm"})
    with pytest.raises(PlanError, match="compose v1"):
        plan_for(settings(docker={"install_source": "distro"}), facts)


def test_apt_lock_holder_is_carried_into_the_plan():
    plan = plan_for(settings(), with_state(converged(settings()), apt_lock_holder="4242"))
    assert plan.docker.apt_lock_holder == "4242"


def test_no_secret_in_the_plan_repr():
    host = settings(gateways=[{"api": {"key": KEY}, "env": {"OPENROUTER_API_KEY": "sk-or-secret-value"}}],
                    companions=[HUB])
    plan = plan_for(host, converged(host))
    shown = repr(plan)
    for secret in (KEY, "sk-or-secret-value", "hub-secret-value-123"):
        assert secret not in shown


def test_fact_request_names_every_file_the_plan_compares():
    host = settings(companions=[HUB], gateways=[{"name": "hermes"}, CODER])
    request = fact_request(host)
    plan = plan_for(host, fresh())
    wanted = {f.path for f in all_root_files(plan)} | {p.stamp_path for p in plan.projects}
    assert wanted <= set(request.root_files)
    assert [d.directory for d in request.data_dirs] == ["/root/.hermes", "/root/.hermes-coder"]
    assert [name for name, _ in request.projects] == ["hermes", "hermes-hub"]


# --- destructive operations check the host first (issue 17 1d) ------------------------------------

def swap_state(facts, **swap):
    return with_state(facts, swap={**facts.state.swap, **swap})


@pytest.mark.parametrize(("kind", "signature", "active", "words"), [
    ("regular", False, False, "a regular file without a swap signature"),
    ("symlink", False, False, "a symbolic link"),
    ("directory", False, False, "a directory"),
    ("hardlink", True, False, "several hard links"),
    ("other", False, False, "not a regular file"),
])
def test_a_swap_path_that_is_not_a_swap_file_stops_the_plan(kind, signature, active, words):
    host = settings()
    for size in ("2G", "1G", "0"):  # kept, resized, removed: each would rm/mkswap the path
        wanted = settings(swap={"size": size})
        facts = swap_state(converged(host), kind=kind, signature=signature, active=active)
        with pytest.raises(PlanError) as raised:
            plan_for(wanted, facts)
        message = str(raised.value)
        assert "swap.path /swapfile" in message and words in message
        assert "nothing was changed" in message and "Fix:" in message


def test_a_swap_file_missing_or_already_swap_is_planned():
    host = settings()
    for swap in ({"kind": "missing", "size_bytes": -1, "active": False, "in_fstab": False},
                 {"kind": "regular", "signature": True, "active": False},
                 {"kind": "regular", "signature": False, "active": True}):  # active in /proc/swaps
        plan_for(settings(swap={"size": "1G"}), swap_state(converged(host), **swap))


def data_dir_state(facts, name="hermes", **changes):
    dirs = {k: dict(v) for k, v in facts.state.data_dirs.items()}
    dirs[name].update(changes)
    return with_state(facts, data_dirs=dirs)


def test_an_existing_data_dir_that_is_not_hermes_stops_the_plan():
    host = settings()
    facts = data_dir_state(converged(host), files={"notes.md": FileRead("regular", "mine")}, empty=False)
    facts = with_state(facts, root_files={})  # no earlier deploy recorded it
    with pytest.raises(PlanError) as raised:
        plan_for(host, facts)
    message = str(raised.value)
    assert "gateways[hermes].data_dir /root/.hermes exists, is not empty and is not a Hermes data dir" in message
    assert "nothing was changed" in message and "Fix:" in message
    # an .env without API_SERVER_KEY is not a Hermes data dir either
    facts = data_dir_state(facts, files={".env": FileRead("regular", "OTHER=1\n", (0, 0, "0644"))})
    with pytest.raises(PlanError):
        plan_for(host, facts)


def test_empty_recorded_or_hermes_data_dirs_are_taken_over():
    host = settings()
    bare = with_state(converged(host), root_files={})
    # empty
    plan_for(host, data_dir_state(bare, files={}, empty=True))
    # a Hermes data dir (upstream's guide made it): .env with the key, not recorded anywhere
    plan_for(host, data_dir_state(bare, empty=False))
    # recorded for this profile by the last deploy (an existing deploy upgrades), even without .env
    plan_for(host, data_dir_state(converged(host), files={}, empty=False))


def test_a_data_dir_recorded_for_another_profile_is_not_taken_over():
    import json

    host = settings()
    facts = converged(host)
    manifest = fact_request(host).root_files[3]
    assert manifest.endswith("profiles.json")
    record = {"profiles": {"other": {"service": "hermes-other", "data_dir": "/root/.hermes"}}, "companions": {}}
    files = dict(facts.state.root_files, **{manifest: root_file(json.dumps(record))})
    with pytest.raises(PlanError, match="is not a Hermes data dir of profile 'hermes'"):
        plan_for(host, data_dir_state(with_state(facts, root_files=files), empty=False))
