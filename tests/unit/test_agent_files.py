"""`gateways[].files`: the settings' checks, the plan against faked data dirs (fresh, converged,
changed by the agent, hostile), the record, the operation's commands, and those commands run
for real on a data dir owned by uid 10000."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from pyinfra.api.exceptions import PyinfraError

from hermes_infra.host import hostfacts, safeio
from hermes_infra.host.safeio import FileRead
from hermes_infra.operations import agentfiles as agentfiles_op
from hermes_infra.operations.files import staged_path
from hermes_infra.plan import agentfiles, plandiff
from hermes_infra.plan.hostplan import Writer, fact_request
from tests.unit.hostfakes import converged, fresh, plan_for, root_file, run_op, settings, with_state

SOUL = b"You are the interview coach.\n"
SCRIPT = b"#!/bin/sh\necho checked\n"


@pytest.fixture()
def repo(tmp_path, monkeypatch):
    """An operator's repository as the current directory, with two files."""
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "SOUL.md").write_bytes(SOUL)
    (tmp_path / "files" / "check.sh").write_bytes(SCRIPT)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def host_with(*files, **gateway):
    entries = [{"src": src, "dest": dest, **({"mode": mode} if mode else {})} for src, dest, mode in files]
    return settings(gateways=[{"files": entries, **gateway}])


def two_files():
    return host_with(("files/SOUL.md", "SOUL.md", None), ("files/check.sh", "scripts/check.sh", "0700"))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def record(files: dict[str, str], data_dir: str = "/root/.hermes", jobs=()) -> dict:
    text = agentfiles.render_record({"hermes": {"data_dir": data_dir, "files": files, "jobs": list(jobs)}})
    return root_file(text, "0600")


def facts_with(host, files: dict[str, FileRead], record_file: dict | None = None):
    facts = converged(host)
    state = facts.state
    data_dirs = {name: dict(entry, files={**entry["files"], **files}) for name, entry in state.data_dirs.items()}
    root_files = dict(state.root_files)
    if record_file is not None:
        root_files[agentfiles.record_path("/opt/hermes")] = record_file
    return with_state(facts, data_dirs=data_dirs, root_files=root_files)


def owned(data: bytes, mode: str = "0644") -> FileRead:
    return FileRead("regular", data.decode(), (10000, 10000, mode))


# ------------------------------------------------------------------------------ settings

@pytest.mark.parametrize("dest, why", [
    ("/opt/data/SOUL.md", "absolute"), ("../x", "not an allowed path"), ("a/../b", "not an allowed path"),
    (".env", "not an allowed path"), ("config.yaml", "written by hermes-infra"),
    ("sessions/x.json", "state Hermes writes"), ("state.db-wal", "state Hermes writes"),
    ("cron/jobs.json", "state Hermes writes"), ("memories/m.md", "state Hermes writes"),
    ("weixin/accounts/a.json", "state Hermes writes"), ("a b.md", "not an allowed path"),
    ("-rf", "not an allowed path"), ("x.hermes-infra.abc", "not an allowed path"), ("a//b", "not an allowed path"),
])
def test_a_destination_outside_the_allowed_places_is_refused(repo, dest, why):
    with pytest.raises(Exception) as error:
        host_with(("files/SOUL.md", dest, None))
    assert why in str(error.value) and "files[].dest" in str(error.value)


@pytest.mark.parametrize("dest", ["SOUL.md", "interview/notes.md", "scripts/check.sh", "skills/coach/SKILL.md"])
def test_the_seeds_destinations_are_accepted(repo, dest):
    assert host_with(("files/SOUL.md", dest, None)).gateways[0].files[0].dest == dest


def test_a_source_must_be_a_regular_file_in_the_repository_without_links(repo):
    (repo / "big.md").write_bytes(b"x" * (agentcode_max() + 1))
    (repo / "files" / "link.md").symlink_to(repo / "files" / "SOUL.md")
    (repo / "linked").symlink_to(repo / "files")
    for src, why in [("files/missing.md", "does not exist"), ("files", "not a regular file"),
                     ("files/link.md", "symbolic link"), ("linked/SOUL.md", "symbolic link at 'linked'"),
                     ("../etc/passwd", "without '.', '..'"), ("/etc/passwd", "relative path"),
                     ("big.md", "more than")]:
        with pytest.raises(Exception) as error:
            host_with((src, "SOUL.md", None))
        assert why in str(error.value), (src, str(error.value))


def agentcode_max() -> int:
    from hermes_infra.settings.agentcode import MAX_FILE_BYTES
    return MAX_FILE_BYTES


def test_two_entries_on_one_destination_or_a_file_where_a_directory_goes_are_refused(repo):
    with pytest.raises(Exception, match="listed twice"):
        host_with(("files/SOUL.md", "SOUL.md", None), ("files/check.sh", "SOUL.md", None))
    with pytest.raises(Exception, match="would need it to be a directory"):
        host_with(("files/SOUL.md", "notes", None), ("files/check.sh", "notes/check.sh", None))


def test_an_unknown_mode_is_refused(repo):
    with pytest.raises(Exception, match="mode"):
        host_with(("files/SOUL.md", "SOUL.md", "0777"))


# ------------------------------------------------------------------------------ the read

def test_the_batched_read_brings_back_each_managed_file_and_the_cron_store(repo):
    request = fact_request(two_files())
    assert request.data_dirs[0].extra_files == ("SOUL.md", "scripts/check.sh", "cron/jobs.json")
    assert agentfiles.record_path("/opt/hermes") in request.root_files
    script = dict(hostfacts.state_sections(request))["datadir hermes"][0]
    assert "scripts/check.sh" in script and "setpriv --reuid=10000" in script


# ------------------------------------------------------------------------------ the plan

def test_a_fresh_host_gets_every_file_and_a_record_of_names_and_digests(repo):
    plan = plan_for(two_files(), fresh())
    (agent,) = plan.agent
    assert [(w.dest, w.reason, w.backup, w.mode) for w in agent.files.writes] == [
        ("SOUL.md", "new", False, "0644"), ("scripts/check.sh", "new", False, "0700")]
    assert plan.agent_record.mode == "0600"
    recorded = json.loads(plan.agent_record.content)["profiles"]["hermes"]
    assert recorded["files"] == {"SOUL.md": sha(SOUL), "scripts/check.sh": sha(SCRIPT)}
    assert SOUL.decode() not in plan.agent_record.content


def test_a_converged_host_writes_nothing_and_the_dry_run_shows_nothing(repo):
    host = two_files()
    facts = facts_with(host, {"SOUL.md": owned(SOUL), "scripts/check.sh": owned(SCRIPT, "0700")},
                       record({"SOUL.md": sha(SOUL), "scripts/check.sh": sha(SCRIPT)}))
    plan = plan_for(host, facts)
    assert plan.agent[0].files.writes == () and plan.agent[0].files.removals == ()
    assert agentfiles.agent_drift(plan.agent) == []
    assert not plan.agent_record.content_changed
    assert run_op(agentfiles_op.agent_files, plan=plan.agent[0].files, writer=plan.writer).commands == []


def test_a_host_that_never_used_agent_files_gets_no_record_and_no_operation():
    plan = plan_for(settings(), fresh())
    assert plan.agent_record is None
    assert not plan.agent[0].files_in_use and not plan.agent[0].cron_in_use


def test_a_file_changed_in_the_settings_is_replaced_without_a_backup(repo):
    host = two_files()
    old = b"old soul\n"
    facts = facts_with(host, {"SOUL.md": owned(old), "scripts/check.sh": owned(SCRIPT, "0700")},
                       record({"SOUL.md": sha(old), "scripts/check.sh": sha(SCRIPT)}))
    (write,) = plan_for(host, facts).agent[0].files.writes
    assert (write.dest, write.reason, write.backup) == ("SOUL.md", "changed in the settings", False)


def test_a_file_the_agent_changed_is_reported_and_backed_up_before_it_is_replaced(repo):
    host = two_files()
    facts = facts_with(host, {"SOUL.md": owned(b"the agent's edit\n"), "scripts/check.sh": owned(SCRIPT, "0700")},
                       record({"SOUL.md": sha(SOUL), "scripts/check.sh": sha(SCRIPT)}))
    plan = plan_for(host, facts)
    (write,) = plan.agent[0].files.writes
    assert write.backup and "changed on the host" in write.reason
    assert "/root/.hermes/SOUL.md: changed on the host since hermes-infra wrote it (backed up first)" in \
        plandiff.plan_diff(plan)
    result = run_op(agentfiles_op.agent_files, plan=plan.agent[0].files, writer=plan.writer)
    backup, write_command = result.commands[0], result.commands[-1]
    assert "/var/backups/hermes-infra/root__.hermes__SOUL.md." in backup and "setpriv --reuid=10000" in backup
    assert "mv -fT" in write_command and "mv -fT" not in backup


def test_a_file_made_before_it_was_managed_such_as_the_seeded_soul_is_backed_up_first(repo):
    host = host_with(("files/SOUL.md", "SOUL.md", None))
    plan = plan_for(host, facts_with(host, {"SOUL.md": owned(b"seeded by the image\n")}))
    (write,) = plan.agent[0].files.writes
    assert write.backup and write.reason == "made by hand before it was managed"


def test_only_the_mode_differs_rewrites_the_file_as_its_owner(repo):
    host = host_with(("files/check.sh", "scripts/check.sh", "0700"))
    plan = plan_for(host, facts_with(host, {"scripts/check.sh": owned(SCRIPT, "0644")},
                                     record({"scripts/check.sh": sha(SCRIPT)})))
    (write,) = plan.agent[0].files.writes
    assert (write.reason, write.backup) == ("mode", False)


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_a_planted_link_is_replaced_by_the_file_and_nothing_is_read_through_it(repo, kind):
    host = host_with(("files/SOUL.md", "SOUL.md", None))
    (write,) = plan_for(host, facts_with(host, {"SOUL.md": FileRead(kind)})).agent[0].files.writes
    assert not write.backup and "replaced by the file" in write.reason


@pytest.mark.parametrize("kind", ["directory", "fifo", "changed", "toolarge", "other"])
def test_a_planted_directory_or_fifo_stops_the_plan_with_a_fix(repo, kind):
    host = host_with(("files/SOUL.md", "SOUL.md", None))
    with pytest.raises(PyinfraError, match=r"gateways\[hermes\]\.files: /root/.hermes/SOUL.md is .*Fix"):
        plan_for(host, facts_with(host, {"SOUL.md": FileRead(kind)}))


def test_a_file_that_left_the_settings_is_removed_only_if_unchanged_and_leaves_the_record(repo):
    host = host_with(("files/SOUL.md", "SOUL.md", None))
    facts = facts_with(host, {"SOUL.md": owned(SOUL)}, record({"SOUL.md": sha(SOUL), "interview/old.md": "a" * 64}))
    plan = plan_for(host, facts)
    assert plan.agent[0].files.removals == (agentfiles.FileRemoval("interview/old.md", "a" * 64),)
    assert json.loads(plan.agent_record.content)["profiles"]["hermes"]["files"] == {"SOUL.md": sha(SOUL)}
    command = agentfiles_op.removal_command(plan.agent[0].files, plan.agent[0].files.removals[0])
    assert "sha256sum" in command and "= " + "a" * 64 + " ]; then" in command
    assert "cd -P -- interview" in command and '= "$hi_base"/interview ]' in command
    assert "setpriv --reuid=10000 --regid=10000 --clear-groups -- rm -f -- old.md" in command


@pytest.mark.parametrize("forged", [
    {"version": 1, "profiles": {"hermes": {"data_dir": "/root/.hermes", "files": {"../../etc/passwd": "a" * 64}}}},
    {"version": 1, "profiles": {"hermes": {"data_dir": "/root/.hermes", "files": {"x.md": "not-a-digest"}}}},
    {"version": 1, "profiles": {"hermes": {"data_dir": "/root/.hermes", "files": {}, "jobs": ["$(x)"]}}},
    {"version": 2, "profiles": {}}, [],
])
def test_a_malformed_record_removes_nothing(repo, forged):
    host = host_with(("files/SOUL.md", "SOUL.md", None))
    plan = plan_for(host, facts_with(host, {"SOUL.md": owned(SOUL)}, root_file(json.dumps(forged), "0600")))
    assert plan.agent[0].files.removals == ()


def test_a_record_for_another_data_dir_removes_nothing(repo):
    host = host_with(("files/SOUL.md", "SOUL.md", None))
    facts = facts_with(host, {}, record({"old.md": "a" * 64}, data_dir="/srv/elsewhere"))
    assert plan_for(host, facts).agent[0].files.removals == ()


# ------------------------------------------------------------------------------ the operation

def test_a_nested_file_is_written_by_the_owner_into_directories_the_owner_made(repo):
    plan = plan_for(two_files(), fresh())
    result = run_op(agentfiles_op.agent_files, plan=plan.agent[0].files, writer=plan.writer)
    text = result.text()
    assert "setpriv --reuid=10000 --regid=10000 --clear-groups -- sh -c" in text and "mkdir -- \"$d\"" in text
    nested = agentfiles_op.parents_command(plan.agent[0].files, "skills/coach/SKILL.md")
    assert nested.endswith("sh skills coach )")
    assert "mv -fT" in text and "cd -P -- scripts" in text and "sh check.sh 0700 <" in text
    assert "chown" not in text and "chmod 0700 scripts" not in text
    assert [u.dest.startswith("/var/lib/hermes-infra/stage/") for u in result.uploads] == [True, True]


# The same owner-side fixtures as the controls' real-shell tests: a data dir owned by uid 10000.
from tests.unit.test_checks_controls import data_dir, needs_root  # noqa: E402,F401 - fixture and mark


def sh(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30, check=False)


def write_for_real(files, write, staged) -> subprocess.CompletedProcess:
    """The operation's own write command, the upload replaced by a file already staged."""
    commands = agentfiles_op.write_commands(files, write, Writer())
    shell = []
    for command in commands:
        if isinstance(command, str):
            shell.append(command.replace(staged_path(Writer(), files.path(write.dest)), str(staged)))
    return sh(" && ".join(c for c in shell if "install -d -m 0700 -o" not in c))


@needs_root
def test_for_real_write_and_remove_as_the_owner_without_following_a_planted_link(data_dir, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    (data_dir / "scripts").mkdir()
    os.chown(data_dir / "scripts", 10000, 10000)
    (data_dir / "scripts" / "check.sh").symlink_to(victim)
    files = agentfiles.AgentFilesPlan("hermes", str(data_dir), 10000, 10000)
    staged = tmp_path / "staged"
    staged.write_bytes(SCRIPT)
    write = agentfiles.FileWrite("scripts/check.sh", "x", "0700", SCRIPT.decode(), sha(SCRIPT), "new")
    done = write_for_real(files, write, staged)
    assert done.returncode == 0, done.stderr
    placed = data_dir / "scripts" / "check.sh"
    assert not placed.is_symlink() and placed.read_bytes() == SCRIPT and victim.read_text() == "root's file\n"
    info = placed.stat()
    assert (info.st_uid, info.st_gid, oct(info.st_mode & 0o777)) == (10000, 10000, "0o700")
    # changed by the agent: kept, and said so
    placed.write_bytes(b"agent's\n")
    out = sh(agentfiles_op.removal_command(files, agentfiles.FileRemoval(write.dest, sha(SCRIPT))))
    assert placed.exists() and "kept" in out.stdout
    # unchanged: removed by the owner
    placed.write_bytes(SCRIPT)
    assert sh(agentfiles_op.removal_command(files, agentfiles.FileRemoval(write.dest, sha(SCRIPT)))).returncode == 0
    assert not placed.exists()
    # a link at a removed name is never read through, and the victim stays
    placed.symlink_to(victim)
    sh(agentfiles_op.removal_command(files, agentfiles.FileRemoval(write.dest, sha(victim.read_bytes()))))
    assert victim.exists()


@needs_root
def test_for_real_a_parent_swapped_for_a_link_to_another_data_dir_is_not_written_through(data_dir, tmp_path):
    other = Path(tempfile.mkdtemp(prefix=".hermes-infra-test-other-", dir=Path.home()))
    try:
        os.chown(other, 10000, 10000)
        (other / "check.sh").write_bytes(b"the other profile's\n")
        (data_dir / "scripts").symlink_to(other)
        files = agentfiles.AgentFilesPlan("hermes", str(data_dir), 10000, 10000)
        staged = tmp_path / "staged"
        staged.write_bytes(SCRIPT)
        write = agentfiles.FileWrite("scripts/check.sh", "x", "0700", SCRIPT.decode(), sha(SCRIPT), "new")
        made = sh(agentfiles_op.parents_command(files, "scripts/sub/x.sh"))
        assert made.returncode != 0 and "scripts is a link: not followed" in made.stderr
        assert not (other / "sub").exists()
        done = write_for_real(files, write, staged)
        assert done.returncode != 0 and "not a directory inside" in done.stderr
        assert (other / "check.sh").read_bytes() == b"the other profile's\n"
        (other / "check.sh").write_bytes(SCRIPT)
        sh(agentfiles_op.removal_command(files, agentfiles.FileRemoval(write.dest, sha(SCRIPT))))
        assert (other / "check.sh").exists(), "nothing is removed through a linked parent"
    finally:
        shutil.rmtree(other, ignore_errors=True)


@needs_root
def test_for_real_the_batched_read_sees_nested_managed_files_as_the_owner(data_dir):
    (data_dir / "scripts").mkdir()
    (data_dir / "scripts" / "check.sh").write_bytes(SCRIPT)
    (data_dir / "knowledge").mkdir()
    (data_dir / "knowledge" / "e2e.md").symlink_to("/etc/shadow")
    for path in (data_dir / "scripts", data_dir / "scripts" / "check.sh", data_dir / "knowledge"):
        os.chown(path, 10000, 10000)
    request = hostfacts.DataDirRequest("hermes", str(data_dir), 10000, 10000,
                                       extra_files=("scripts/check.sh", "knowledge/e2e.md", "cron/jobs.json"))
    script = safeio.read_script(request.directory, [".env", "config.yaml", *request.extra_files], 10000, 10000,
                                "hermes")
    files = safeio.parse_reads(sh(script).stdout.splitlines())["hermes"]["files"]
    assert files["scripts/check.sh"].kind == "regular" and files["scripts/check.sh"].text == SCRIPT.decode()
    assert files["knowledge/e2e.md"].kind == "symlink" and files["knowledge/e2e.md"].text is None
    assert files["cron/jobs.json"].kind == "missing"


def test_a_source_swapped_for_a_link_after_validation_stops_the_plan_with_a_message(repo):
    host = host_with(("files/SOUL.md", "SOUL.md", None))
    (repo / "files" / "SOUL.md").unlink()
    (repo / "files" / "SOUL.md").symlink_to("/etc/hostname")
    with pytest.raises(PyinfraError, match=r"'files/SOUL.md' cannot be read.*Fix"):
        plan_for(host, fresh())
