"""`gateways[].cron`: the settings' checks (Hermes 0.19.0's syntax), the reconciliation (desired
against listed jobs: add, change, pause, remove, leave the hand-made ones), a hostile
`cron/jobs.json`, the Hermes CLI calls and the operation."""
from __future__ import annotations

import json
import subprocess

import pytest
from pyinfra.api.exceptions import PyinfraError

from hermes_infra.host.safeio import FileRead
from hermes_infra.operations import cronjobs as cronjobs_op
from hermes_infra.plan import agentfiles, cronjobs, plandiff
from hermes_infra.plan.cronjobs import DesiredJob, ListedJob
from tests.unit.hostfakes import converged, plan_for, root_file, run_op, settings, with_state


def job(**fields):
    return {"name": "brief", "schedule": "every 1m", "prompt": "Say hello", **fields}


def host_with(*jobs, files=()):
    return settings(gateways=[{"cron": list(jobs), "files": list(files)}])


def error_of(*jobs, files=()) -> str:
    with pytest.raises(Exception) as error:
        host_with(*jobs, files=files)
    return str(error.value)


# ------------------------------------------------------------------------------ settings

@pytest.mark.parametrize("schedule, stored", [
    ("every 1m", "every 1m"), ("every 2h", "every 120m"), ("Every  1 day", "every 1440m"),
    ("0 9 * * *", "0 9 * * *"), ("*/5 8-18 * * 1-5", "*/5 8-18 * * 1-5"), ("0  9 1,15 * 0", "0 9 1,15 * 0"),
])
def test_recurring_schedules_are_stored_the_way_hermes_stores_them(schedule, stored):
    assert host_with(job(schedule=schedule)).gateways[0].cron[0].schedule == stored


@pytest.mark.parametrize("schedule, why", [
    ("30m", "one-shot"), ("2026-12-24T09:00", "one-shot"), ("every 0m", "0 minutes"), ("every fortnight", "Fix"),
    ("61 * * * *", "minute field"), ("0 24 * * *", "hour field"), ("0 9 * * MON", "Fix"), ("0 9 * * * 2027", "Fix"),
    ("*/0 * * * *", "minute field"), ("0 9 * 13 *", "month field"),
])
def test_other_schedules_are_refused_before_any_connection(schedule, why):
    text = error_of(job(schedule=schedule))
    assert "cron[].schedule" in text and why in text and repr(schedule) in text


@pytest.mark.parametrize("deliver", ["local", "all", "weixin", "weixin:o9cq80xyz@im.wechat",
                                     "telegram:-1001234567890:17585", "local,weixin"])
def test_delivery_targets_hermes_delivers_to_are_accepted(deliver):
    assert host_with(job(deliver=deliver)).gateways[0].cron[0].deliver == deliver


@pytest.mark.parametrize("deliver, why", [
    ("origin", "has none"), ("wechat", "not a platform"), ("weixin:bad id", "chat id"), ("weixin:$(id)", "chat id"),
])
def test_delivery_targets_that_reach_nobody_are_refused(deliver, why):
    assert why in error_of(job(deliver=deliver))


def test_a_script_must_be_among_the_managed_files(tmp_path, monkeypatch):
    text = error_of(job(script="check_and_send.sh"))
    assert 'Script not found: /opt/data/scripts/check_and_send.sh' in text and "scripts/check_and_send.sh" in text
    assert "relative to /opt/data/scripts/" in error_of(job(script="/opt/data/scripts/x.sh"))
    (tmp_path / "check.sh").write_text("echo hi\n")
    monkeypatch.chdir(tmp_path)
    host = host_with(job(script="check_and_send.sh"),
                     files=[{"src": "check.sh", "dest": "scripts/check_and_send.sh"}])
    assert host.gateways[0].cron[0].script == "check_and_send.sh"


def test_a_job_needs_something_to_run_a_unique_name_and_a_prompt_that_is_no_option():
    assert "neither prompt nor script" in error_of({"name": "x", "schedule": "every 1m"})
    assert "used twice" in error_of(job(), job())
    assert "Hermes ignores case" in error_of(job(), job(name="Brief"))
    assert "read by the Hermes CLI as an option" in error_of(job(prompt="--help"))
    assert "not a job name" in error_of(job(name="hermes-infra/x"))


# ------------------------------------------------------------------------------ reconciliation

WANT = DesiredJob("brief", "every 1m", "Say hello", None, "local", True)


def listed(name="hermes-infra/brief", id="a1b2c3d4e5f6", **fields) -> ListedJob:
    values = dict(schedule="every 1m", prompt="Say hello", script=None, no_agent=False, deliver="local", enabled=True)
    values.update(fields)
    return ListedJob(id=id, name=name, **values)


def test_a_missing_managed_job_is_added():
    plan = cronjobs.reconcile([WANT], [], set())
    assert plan.add == (WANT,) and not plan.change and not plan.remove


def test_a_matching_job_is_left_as_it_is():
    plan = cronjobs.reconcile([WANT], [listed()], {"brief"})
    assert plan.empty and plan.unchanged == ("brief",)
    assert cronjobs.plan_calls(plan) == []


def test_a_different_job_is_edited_in_place_and_a_disabled_one_paused():
    plan = cronjobs.reconcile([WANT], [listed(schedule="every 5m", deliver="weixin")], {"brief"})
    (change,) = plan.change
    assert change.fields == ("schedule", "deliver") and change.edited
    assert cronjobs.plan_calls(plan) == [["cron", "edit", "a1b2c3d4e5f6", "--schedule=every 1m", "--prompt=Say hello",
                                          "--deliver=local", "--script=", "--agent"]]
    paused = DesiredJob("brief", "every 1m", "Say hello", None, "local", False)
    plan = cronjobs.reconcile([paused], [listed()], {"brief"})
    assert cronjobs.plan_calls(plan) == [["cron", "pause", "a1b2c3d4e5f6"]]
    plan = cronjobs.reconcile([WANT], [listed(enabled=False)], {"brief"})
    assert cronjobs.plan_calls(plan) == [["cron", "resume", "a1b2c3d4e5f6"]]


def test_a_managed_job_that_left_the_settings_is_removed_and_hand_made_ones_stay():
    hand = listed(name="my own job", id="ffffffffffff", schedule="0 9 * * *")
    lookalike = listed(name="hermes-infra/not-ours", id="eeeeeeeeeeee")
    plan = cronjobs.reconcile([], [listed(), hand, lookalike], {"brief"})
    assert [j.id for j in plan.remove] == ["a1b2c3d4e5f6"]
    assert plan.foreign == (hand, lookalike)
    assert cronjobs.plan_calls(plan) == [["cron", "remove", "a1b2c3d4e5f6"]]


def test_a_second_copy_of_a_managed_job_is_removed_and_the_first_kept():
    plan = cronjobs.reconcile([WANT], [listed(), listed(id="bbbbbbbbbbbb")], set())
    assert plan.unchanged == ("brief",) and [j.id for j in plan.remove] == ["bbbbbbbbbbbb"]


def test_removals_come_before_creations_and_a_new_paused_job_is_paused_by_its_name():
    new = DesiredJob("later", "0 9 * * *", "", "check.sh", "weixin", False)
    plan = cronjobs.reconcile([new], [listed()], {"brief"})
    assert cronjobs.plan_calls(plan) == [
        ["cron", "remove", "a1b2c3d4e5f6"],
        ["cron", "create", "--name=hermes-infra/later", "--deliver=weixin", "--script=check.sh", "--no-agent",
         "0 9 * * *"],
        ["cron", "pause", "hermes-infra/later"]]


# ------------------------------------------------------------------------------ cron/jobs.json

def test_the_job_list_is_read_as_hermes_writes_it():
    text = "\ufeff" + json.dumps({"jobs": [
        {"id": "a1b2c3d4e5f6", "name": "hermes-infra/brief", "prompt": "Say hello",
         "schedule": {"kind": "interval", "minutes": 1, "display": "every 1m"}, "deliver": None, "enabled": True,
         "state": "scheduled", "last_run_at": "2026-12-02T00:01:00+00:00", "last_status": "ok"},
        {"id": "b", "name": "x", "schedule": {"kind": "cron", "expr": "0  9 * * *"}, "deliver": ["weixin", "local"],
         "state": "paused", "enabled": False, "script": "x.sh", "no_agent": True},
    ], "updated_at": "now"})
    first, second = cronjobs.parse_jobs(text)
    assert (first.schedule, first.deliver, first.enabled, first.last_status) == ("every 1m", "local", True, "ok")
    assert (second.schedule, second.deliver, second.enabled, second.no_agent) == ("0 9 * * *", "weixin,local", False, True)


@pytest.mark.parametrize("text", ["{", "[1", '"jobs"', '{"jobs": 3}'])
def test_a_job_list_that_is_not_hermess_is_refused(text):
    with pytest.raises(ValueError):
        cronjobs.parse_jobs(text)


def test_entries_hermes_could_not_act_on_either_are_nobodys():
    text = json.dumps([{"id": "$(reboot)", "name": "hermes-infra/brief"}, "junk", {"name": "no id"},
                       {"id": "ok1", "name": 7, "prompt": ["x"], "schedule": "weird"}])
    (only,) = cronjobs.parse_jobs(text)
    assert (only.id, only.name, only.prompt, only.schedule) == ("ok1", "", "", "weird")


# ------------------------------------------------------------------------------ through the plan

def facts_with_jobs(host, jobs_read: FileRead | None, record_jobs=()):
    facts = converged(host)
    data_dirs = {name: dict(entry, files={**entry["files"], **({"cron/jobs.json": jobs_read} if jobs_read else {})})
                 for name, entry in facts.state.data_dirs.items()}
    root_files = dict(facts.state.root_files)
    root_files[agentfiles.record_path("/opt/hermes")] = root_file(agentfiles.render_record(
        {"hermes": {"data_dir": "/root/.hermes", "files": {}, "jobs": list(record_jobs)}}), "0600")
    return with_state(facts, data_dirs=data_dirs, root_files=root_files)


def jobs_file(*jobs) -> FileRead:
    return FileRead("regular", json.dumps({"jobs": list(jobs)}), (10000, 10000, "0600"))


HAND_MADE = {"id": "ffffffffffff", "name": "my own", "prompt": "p", "schedule": {"kind": "interval", "minutes": 60}}


def test_the_deploy_adds_the_job_runs_the_cli_as_the_gateways_service_and_lists_hand_made_jobs():
    host = host_with(job(prompt="Say hello; $(rm -rf /) `id`"))
    plan = plan_for(host, facts_with_jobs(host, jobs_file(HAND_MADE)))
    (agent,) = plan.agent
    (call,) = agent.cron_calls
    assert "docker compose -p hermes -f compose.yaml run --rm --no-deps -T hermes cron create" in call
    assert "'Say hello; $(rm -rf /) `id`'" in call
    diff = plandiff.plan_diff(plan)
    assert "cron[hermes]: + hermes-infra/brief (every 1m, deliver local)" in diff
    assert "cron[hermes]: left alone (made by hand): my own" in diff
    result = run_op(cronjobs_op.cron_jobs, plan=agent)
    assert result.commands[0] == call and "chown -h 10000:10000" in result.commands[-1]
    assert json.loads(plan.agent_record.content)["profiles"]["hermes"]["jobs"] == ["brief"]


def test_a_converged_host_runs_no_hermes_command():
    host = host_with(job())
    stored = {"id": "a1b2c3d4e5f6", "name": "hermes-infra/brief", "prompt": "Say hello", "deliver": "local",
              "schedule": {"kind": "interval", "minutes": 1}, "enabled": True, "state": "scheduled"}
    plan = plan_for(host, facts_with_jobs(host, jobs_file(stored, HAND_MADE), ["brief"]))
    assert plan.agent[0].cron_calls == ()
    result = run_op(cronjobs_op.cron_jobs, plan=plan.agent[0])
    assert result.commands == [] and "1 made by hand left alone" in result.noops[0]


def test_a_job_removed_from_the_settings_is_removed_even_with_no_cron_left():
    host = settings()
    stored = {"id": "a1b2c3d4e5f6", "name": "hermes-infra/brief", "schedule": {"kind": "interval", "minutes": 1}}
    plan = plan_for(host, facts_with_jobs(host, jobs_file(stored, HAND_MADE), ["brief"]))
    (call,) = plan.agent[0].cron_calls
    assert "cron remove a1b2c3d4e5f6" in call and plan.agent[0].cron_in_use


@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory", "toolarge"])
def test_a_planted_job_store_stops_the_plan_only_where_jobs_are_managed(kind):
    host = host_with(job())
    with pytest.raises(PyinfraError, match=r"gateways\[hermes\]\.cron: /root/.hermes/cron/jobs.json is .*Fix"):
        plan_for(host, facts_with_jobs(host, FileRead(kind)))
    plain = settings()
    facts = converged(plain)
    data_dirs = {n: dict(e, files={**e["files"], "cron/jobs.json": FileRead(kind)}) for n, e in facts.state.data_dirs.items()}
    assert plan_for(plain, with_state(facts, data_dirs=data_dirs)).agent[0].cron_calls == ()


def test_an_unreadable_job_store_is_refused_with_a_fix():
    host = host_with(job())
    with pytest.raises(PyinfraError, match="not the job list Hermes writes"):
        plan_for(host, facts_with_jobs(host, FileRead("regular", "{not json", (10000, 10000, "0600"))))


# ------------------------------------------------------------------------------ the call, run for real

def run_call(output: str, rc: int = 0) -> subprocess.CompletedProcess:
    host = settings()
    call = cronjobs.hermes_call(host, host.gateways[0], ["cron", "remove", "x"])
    inner = call.split("out=$( ", 1)[1].split(" 2>&1 )", 1)[0]
    fake = f"printf '%b' {json.dumps(output)}; exit {rc}"
    return subprocess.run(["sh", "-c", call.replace(inner, f"( {fake} )")], capture_output=True, text=True, timeout=10)


def test_the_call_fails_when_hermes_refuses_even_though_hermes_0_19_exits_0():
    assert run_call("\\033[31mFailed to create job: Invalid schedule\\033[0m\\n").returncode == 1
    assert run_call("Job not found: x\\n").returncode == 1
    assert run_call("Removed job: x\\n", rc=1).returncode == 1
    done = run_call("Removed job: \\033]0;evil\\007hermes-infra/x\\n")
    assert done.returncode == 0 and "\x1b" not in done.stdout and "\x07" not in done.stdout
