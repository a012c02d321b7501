"""Control logic against canned facts (a fake testinfra host): what passes, what fails, and why."""
from __future__ import annotations

import copy
import datetime as dt
import hashlib
import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import testinfra.host
from testinfra.backend.base import BaseBackend

from hermes_infra.host import safeio
from hermes_infra.plan.capacity import HostResources
from hermes_infra.checks import all_controls
from hermes_infra.checks.context import (
    MARK,
    HostContext,
    parse_env_output,
    subjects_for,
)
from hermes_infra.checks.controls import get_control
from hermes_infra.checks.reports import (
    RunReport,
    render_json,
    render_junit,
    render_text,
)
from hermes_infra.checks.results import HostReport, evaluate
from hermes_infra.checks.runner import instances
from hermes_infra.plan.daemon import daemon_json
from hermes_infra.plan.hardening import GATEWAY_HEALTHCHECK
from hermes_infra.settings.schema import HostSettings

GIB = 1024**3
IMAGE = HostSettings().image.ref
# What the hostile-safe .env look prints (see context.env_script); lstat lines are
# links|type|inode|uid|gid|mode|size.
REGULAR_ENV = "1|regular file|4242|10000|10000|600|120"
# Tell the two .env scripts apart (both read .env the same way).
ENV_FACTS = "fold -w1"
ENV_AUTHED = "Authorization: Bearer"


def env_out(before: str = REGULAR_ENV, keys=("API_SERVER_KEY",), apikey: str = "present\n40\n20\nok\n-",
            after: str | None = None, body: str | None = None) -> str:
    """stdout of the .env facts script (or, with `body`, of the key-carrying HTTP probe)."""
    lines = [f"{MARK} dir present", f"{MARK} before {before}", f"{MARK} out"]
    if body is not None:
        lines.append(body)
    elif before.startswith("1|regular"):
        lines += [f"{MARK} keys", *keys, f"{MARK} apikey", *apikey.split("\n")]
    lines.append(f"{MARK} after {after or before}")
    return "\n".join(lines) + "\n"


@dataclass
class Out:
    rc: int = 0
    stdout: str = ""
    stderr: str = ""


class FakeFile:
    def __init__(self, uid=10000, gid=10000, mode=0o600, kind="file", content=""):
        self.uid, self.gid, self.mode, self.content_string = uid, gid, mode, content
        self.exists = kind is not None
        self.is_file, self.is_directory = kind == "file", kind == "dir"


class FakeHost:
    """Answers `run` from (substring -> Out) rules; records every command."""

    def __init__(self, rules=None, files=None, sysctl=None, service=(True, True)):
        self.rules = rules or {}
        self.files = files or {}
        self._sysctl = sysctl or {}
        self._service = service
        self.commands: list[str] = []

    def run(self, command, *args):
        command = command % tuple(args) if args else command
        self.commands.append(command)
        for needle, out in self.rules.items():
            if needle in command:
                return out
        return Out(127, "", f"no rule for {command[:60]}")

    def file(self, path):
        return self.files.get(path, FakeFile(kind=None))

    def sysctl(self, name):
        return self._sysctl[name]

    def service(self, name):
        enabled, running = self._service
        return type("Service", (), {"is_enabled": enabled, "is_running": running})()


def gateway_record(**host_config) -> dict:
    record = {
        "Name": "/hermes", "State": {"Running": True, "Restarting": False, "Status": "running",
                                     "StartedAt": "2026-06-15T10:00:00.0Z",
                                     "Health": {"Status": "healthy", "FailingStreak": 0, "Log": []}},
        "Config": {"Image": IMAGE, "Healthcheck": {"Test": list(GATEWAY_HEALTHCHECK), "Interval": 30_000_000_000}},
        "Mounts": [{"Source": "/root/.hermes", "Destination": "/opt/data"}],
        "HostConfig": {"RestartPolicy": {"Name": "unless-stopped"}, "Memory": 3584 * 1024**2,
                       "NanoCpus": 2_500_000_000, "PidsLimit": 1024, "Privileged": False,
                       "NetworkMode": "hermes_default", "SecurityOpt": ["no-new-privileges:true"],
                       "CapDrop": ["ALL"], "CapAdd": ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID",
                                                      "SETUID"],
                       "PortBindings": {"8642/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8642"}]}},
    }
    record["HostConfig"].update(host_config)
    return record


def context(settings: HostSettings | None = None, record: dict | None = None, host: FakeHost | None = None):
    ctx = HostContext(host or FakeHost(), settings or HostSettings(), name="prod-1")
    # A 4 GiB, 4-core host: derived limits are 3584M and 2.5 CPUs.
    ctx._cache["resources"] = HostResources(memory_bytes=4 * GIB, cpus=4)
    ctx._cache["inspect"] = {"hermes": record} if record is not None else {}
    return ctx


def outcome(control_id: str, ctx: HostContext, subject_index: int = 0):
    c = get_control(control_id)
    subject = subjects_for(c.scope, ctx.settings)[subject_index]
    return evaluate(c, ctx, subject, ctx.name)


def test_a_compliant_gateway_passes_every_container_and_port_control():
    ctx = context(record=gateway_record())
    for control_id in ("HI-CTR-001", "HI-CTR-002", "HI-CTR-003", "HI-CTR-004", "HI-CTR-005", "HI-CTR-006",
                       "HI-CTR-007", "HI-CTR-008", "HI-CTR-009", "HI-CTR-010", "HI-CTR-011", "HI-CTR-013",
                       "HI-API-001"):
        r = outcome(control_id, ctx)
        assert r.status == "passed", (control_id, r.message)


@pytest.mark.parametrize(("control_id", "host_config", "message"), [
    ("HI-CTR-003", {"Memory": 0}, "no memory limit; want 3584M"),
    ("HI-CTR-003", {"Memory": 2 * GIB}, "memory limit is 2G; want 3584M"),
    ("HI-CTR-004", {"NanoCpus": 0}, "no CPU limit; want cpus 2.5"),
    ("HI-CTR-004", {"NanoCpus": 1_000_000_000}, "CPU limit is 1 CPUs; want 2.5"),
    ("HI-CTR-005", {"PidsLimit": None}, "no PIDs limit; want 1024"),
    ("HI-CTR-005", {"PidsLimit": -1}, "no PIDs limit"),
    ("HI-CTR-002", {"RestartPolicy": {"Name": "no"}}, "restart policy is 'no'; settings say 'unless-stopped'"),
    ("HI-CTR-006", {"Privileged": True}, "runs privileged"),
    ("HI-CTR-013", {"Init": True}, "runs with Docker's init (`init: true`)"),
    ("HI-CTR-007", {"NetworkMode": "host"}, "network mode is 'host'"),
    ("HI-CTR-009", {"SecurityOpt": ["seccomp=unconfined"]}, "`no-new-privileges:true` is missing"),
    ("HI-CTR-009", {"SecurityOpt": ["no-new-privileges=false"]}, "missing"),
    ("HI-API-001", {"PortBindings": {"8642/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8642"}]}},
     "0.0.0.0 is every interface and gateways[hermes].api.allow_public is false"),
    ("HI-API-001", {"PortBindings": {"8642/tcp": [{"HostIp": "", "HostPort": "8642"}]}}, "every interface"),
    ("HI-API-001", {"PortBindings": {"8642/tcp": [{"HostIp": "127.0.0.1", "HostPort": "9000"}]}},
     "published on 127.0.0.1:9000; settings say 127.0.0.1:8642"),
])
def test_container_drift_fails_the_matching_control(control_id, host_config, message):
    r = outcome(control_id, context(record=gateway_record(**host_config)))
    assert r.status == "failed"
    assert message in r.message


def test_docker_socket_mount_fails():
    record = gateway_record()
    record["Mounts"].append({"Source": "/var/run/docker.sock", "Destination": "/var/run/docker.sock"})
    r = outcome("HI-CTR-008", context(record=record))
    assert (r.status, r.message) == ("failed", "mounts the Docker socket: /var/run/docker.sock")


def test_no_new_privileges_accepts_dockers_spellings():
    for option in ("no-new-privileges", "no-new-privileges:true", "no-new-privileges=true"):
        assert outcome("HI-CTR-009", context(record=gateway_record(SecurityOpt=[option]))).status == "passed"


def test_public_port_passes_when_the_settings_allow_it():
    settings = HostSettings(gateways=[{"name": "hermes", "api": {"publish_addresses": ["0.0.0.0"],
                                                                 "allow_public": True}}])
    record = gateway_record(PortBindings={"8642/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8642"}]})
    assert outcome("HI-API-001", context(settings, record)).status == "passed"


def test_explicit_limits_are_expected_instead_of_derived_ones():
    settings = HostSettings(gateways=[{"name": "hermes", "limits": {"memory": "1G", "cpus": 1.5, "pids": 256}}])
    record = gateway_record(Memory=GIB, NanoCpus=1_500_000_000, PidsLimit=256)
    for control_id in ("HI-CTR-003", "HI-CTR-004", "HI-CTR-005"):
        assert outcome(control_id, context(settings, record)).status == "passed", control_id


def test_latest_or_other_image_fails():
    r = outcome("HI-CTR-010", context(record=copy.deepcopy(gateway_record()) | {
        "Config": {"Image": "nousresearch/hermes-agent:latest"}}))
    assert r.status == "failed" and f"settings say {IMAGE!r}" in r.message
    settings = HostSettings(image={"ref": "nousresearch/hermes-agent:latest", "allow_latest": True})
    record = gateway_record() | {"Config": {"Image": "nousresearch/hermes-agent:latest"}}
    assert outcome("HI-CTR-010", context(settings, record)).status == "passed"
    # the settings refuse an unpinned companion image; a companion recreated by hand from one fails
    companion = HostSettings(companions=[{"name": "hub", "image": "example/hub:1.0"}])
    ctx = context(companion, gateway_record())
    ctx._cache["inspect"]["hub"] = gateway_record() | {"Name": "/hub", "Config": {"Image": "example/hub"}}
    r = outcome("HI-CTR-010", ctx, subject_index=1)
    assert (r.subject, r.status) == ("companion:hub", "failed")
    assert r.message == "runs image 'example/hub'; settings say 'example/hub:1.0'"


def test_stopped_or_missing_container():
    stopped = gateway_record()
    stopped["State"] = {"Running": False, "Restarting": False, "Status": "exited", "ExitCode": 1}
    r = outcome("HI-CTR-001", context(record=stopped))
    assert (r.status, r.message) == ("failed", "container 'hermes' is exited (exit code 1)")
    # a stopped container still has its configuration: the limits controls stay green
    assert outcome("HI-CTR-003", context(record=stopped)).status == "passed"
    r = outcome("HI-CTR-003", context(record=None))
    assert (r.status, r.message) == ("failed", "container 'hermes' does not exist on the host")


def test_dashboard_exposure_needs_basic_auth_in_env():
    record = gateway_record(PortBindings={"8642/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8642"}],
                                          "9119/tcp": [{"HostIp": "0.0.0.0", "HostPort": "9119"}]})
    ctx = context(record=record, host=FakeHost({ENV_FACTS: Out(0, env_out(keys=("API_SERVER_KEY",)))}))
    r = outcome("HI-API-002", ctx)
    assert r.status == "failed" and "0.0.0.0:9119" in r.message
    auth = ("HERMES_DASHBOARD_BASIC_AUTH_USERNAME", "HERMES_DASHBOARD_BASIC_AUTH_PASSWORD_HASH")
    ctx = context(record=record, host=FakeHost({ENV_FACTS: Out(0, env_out(keys=auth))}))
    assert outcome("HI-API-002", ctx).status == "passed"
    # a .env the agent replaced by a link is not read, so basic auth cannot be confirmed
    link = "1|symbolic link|4242|10000|10000|777|11"
    ctx = context(record=record, host=FakeHost({ENV_FACTS: Out(0, env_out(before=link, keys=auth))}))
    r = outcome("HI-API-002", ctx)
    assert r.status == "failed" and "basic auth cannot be confirmed" in r.message and "symbolic link" in r.message
    loopback = gateway_record(PortBindings={"9119/tcp": [{"HostIp": "127.0.0.1", "HostPort": "9119"}]})
    assert outcome("HI-API-002", context(record=loopback)).status == "passed"


def facts_of(before: str, body: str = "200", after: str | None = None):
    return parse_env_output(env_out(before=before, body=body, after=after), "/root/.hermes/.env")


def test_http_controls_use_status_codes():
    ctx = context(record=gateway_record(), host=FakeHost({"stat -c %F": Out(0, "directory\n")}))
    answers = {"/health": "200", "/v1/models": "401", "/v1/models+key": "200"}
    ctx.http_status = lambda url: answers[url.split("8642")[1]]
    ctx.authed_status = lambda gateway, path: (facts_of(REGULAR_ENV), answers[path + "+key"])
    assert outcome("HI-API-003", ctx).status == "passed"
    assert outcome("HI-API-004", ctx).status == "passed"
    answers["/v1/models"] = "200"   # no authentication
    r = outcome("HI-API-004", ctx)
    assert r.status == "failed" and "without a key answered 200; want 401" in r.message
    answers["/health"] = "403"      # e.g. an Origin header or a proxy in the way
    assert "answered 403; want 200" in outcome("HI-API-003", ctx).message
    answers["/v1/models"], answers["/v1/models+key"] = "401", "401"
    assert "with the key from .env answered 401; want 200" in outcome("HI-API-004", ctx).message
    # a stopped gateway: the key was not sent to whoever answers the published port (F4)
    answers["/v1/models+key"] = "notrunning"
    r = outcome("HI-API-004", ctx)
    assert r.status == "failed" and "is not running, so the key was not sent" in r.message


def test_the_key_probe_reads_env_safely_and_never_carries_the_key_in_a_command():
    secret = "Zq8" + "x7Yp" * 9
    settings = HostSettings(gateways=[{"name": "hermes", "api": {"key": secret}}])
    host = FakeHost({ENV_AUTHED: Out(0, env_out(body="200"))})
    ctx = context(settings, host=host)
    facts, status = ctx.authed_status(settings.gateways[0], "http://127.0.0.1:8642/v1/models")
    assert (facts.kind, status) == ("regular", "200")
    [command] = [c for c in host.commands if ENV_AUTHED in c]
    assert secret not in command
    assert safeio.owner_read(".env", 10000, 10000, safeio.MAX_READ_BYTES) in command
    assert "setpriv --reuid=10000 --regid=10000 --clear-groups -- sh -c" in command
    # the only following stat is the owner's fstat of the fd it opened, never root's on a path
    assert command.count("stat -L") == command.count("stat -L -c '\"'\"'%d:%i|%F|%h'\"'\"' /dev/fd/3") == 1
    assert "-H @-" in command and "cat " not in command
    # curl only runs in the branch for a regular, singly linked file
    assert command.index("'1|regular file|'*") < command.index("curl ")
    # what a FIFO "answers" is never believed
    host.rules[ENV_AUTHED] = Out(0, env_out(before="1|fifo|4242|10000|10000|600|0", body="200"))
    facts, status = ctx.authed_status(settings.gateways[0], "http://127.0.0.1:8642/v1/models")
    assert facts.kind == "fifo" and not facts.usable and status == "000"


def test_api_key_control_compares_digests_and_never_sends_the_key():
    secret = "Zq8" + "x7Yp" * 9
    digest = hashlib.sha256(secret.encode()).hexdigest()
    host = FakeHost({ENV_FACTS: Out(0, env_out(apikey=f"present\n39\n6\nok\n{digest}"))})
    settings = HostSettings(gateways=[{"name": "hermes", "api": {"key": secret}}])
    assert outcome("HI-DATA-004", context(settings, host=host)).status == "passed"
    assert host.commands and all(secret not in command for command in host.commands)
    other = HostSettings(gateways=[{"name": "hermes", "api": {"key": "Other" + secret}}])
    r = outcome("HI-DATA-004", context(other, host=host))
    assert r.status == "failed" and "not the key set in gateways[hermes].api.key" in r.message
    assert secret not in r.message and digest not in r.message


@pytest.mark.parametrize(("facts", "message"), [
    ("present\n40\n20\nok\n-", None),
    ("present\n8\n8\nok\n-", "8 characters long; Hermes needs 16"),
    ("present\n21\n15\nword\n-", "placeholder"),            # e.g. my-example-key-123456
    ("present\n22\n2\nok\n-", "placeholder"),               # aaaaaaaaaaaaaaaaaaaaab
    ("unset", "API_SERVER_KEY is not set in /root/.hermes/.env"),
])
def test_api_key_rules_on_the_host(facts, message):
    r = outcome("HI-DATA-004", context(host=FakeHost({ENV_FACTS: Out(0, env_out(apikey=facts))})))
    if message is None:
        assert r.status == "passed", r.message
    else:
        assert r.status == "failed" and message in r.message


MISSING_ENV = "0|missing|0|0|0|0|0"


OWNER = "cd /root/.hermes && setpriv --reuid=10000 --regid=10000 --clear-groups --"


@pytest.mark.parametrize(("before", "after", "found", "fix"), [
    ("1|symbolic link|77|10000|10000|777|11", None, "a symbolic link (never followed",
     f"`{OWNER} mv -T .env .env.suspect`"),
    ("1|fifo|77|10000|10000|600|0", None, "a FIFO (named pipe), not a regular file", f"`{OWNER} rm .env`"),
    ("2|directory|77|10000|10000|700|4096", None, "a directory, not a file", f"`{OWNER} mv -T .env .env.suspect`"),
    ("2|regular file|77|10000|10000|600|120", None, "a file with 2 hard links",
     f"`{OWNER} sh -c 'umask 077 && cp .env .env.new && mv -T .env.new .env'`"),
    (REGULAR_ENV, "1|regular file|78|10000|10000|600|120", "a file that was replaced while it was read",
     "run the check again"),
    ("1|regular file|77|10000|10000|600|5000000", None, "larger than 1024 KiB", "trim it as the owner"),
    ("1|socket|77|10000|10000|600|0", None, "a socket, not a regular file", f"`{OWNER} mv -T .env .env.suspect`"),
])
def test_a_planted_env_fails_the_env_control_with_what_was_found_and_the_fix(before, after, found, fix):
    host = FakeHost({ENV_FACTS: Out(0, env_out(before=before, after=after,
                                               keys=("HERMES_DASHBOARD_BASIC_AUTH_USERNAME",)))})
    ctx = context(host=host)
    r = outcome("HI-DATA-003", ctx)
    assert r.status == "failed", r.message
    assert r.message.startswith(f"/root/.hermes/.env is {found}"), r.message
    assert "Fix: " in r.message and fix in r.message
    key = outcome("HI-DATA-004", ctx)
    assert key.status == "failed" and "API_SERVER_KEY was not read" in key.message
    # the request with the key is never sent from a file that is not a regular one
    ctx = context(record=gateway_record(), host=host)
    ctx.http_status = lambda url: "401"
    ctx.authed_status = lambda gateway, url: (facts_of(before, after=after), "200")
    api = outcome("HI-API-004", ctx)
    assert api.status == "error" and "the key was not sent" in api.message


def test_env_mode_and_owner_come_from_lstat_of_the_file_itself():
    host = FakeHost({ENV_FACTS: Out(0, env_out(before="1|regular file|77|0|0|644|120"))})
    r = outcome("HI-DATA-003", context(host=host))
    assert r.message == "/root/.hermes/.env: mode is 0644, want 0600; owner is 0:0, want 10000:10000"
    assert outcome("HI-DATA-003", context(host=FakeHost({ENV_FACTS: Out(0, env_out())}))).status == "passed"
    missing = FakeHost({ENV_FACTS: Out(0, env_out(before=MISSING_ENV))})
    assert outcome("HI-DATA-003", context(host=missing)).message == "/root/.hermes/.env is missing"
    assert outcome("HI-DATA-004", context(host=missing)).message == "/root/.hermes/.env is missing"
    gone = FakeHost({ENV_FACTS: Out(0, f"{MARK} dir symlink\n")})
    r = outcome("HI-DATA-003", context(host=gone))
    assert r.status == "failed" and "its data dir is a symbolic link" in r.message
    notroot = FakeHost({ENV_FACTS: Out(0, f"{MARK} notroot\n")})
    r = outcome("HI-DATA-003", context(host=notroot))
    assert r.status == "error" and "run the check as root or with --sudo" in r.message


def test_env_facts_are_read_once_per_gateway():
    host = FakeHost({ENV_FACTS: Out(0, env_out())})
    ctx = context(record=gateway_record(PortBindings={"9119/tcp": [{"HostIp": "0.0.0.0", "HostPort": "9119"}]}),
                  host=host)
    for control_id in ("HI-DATA-003", "HI-DATA-004", "HI-API-002"):
        outcome(control_id, ctx)
    assert sum(ENV_FACTS in c for c in host.commands) == 1


def test_data_dir_owner_uses_lstat_and_reports_a_linked_data_dir():
    host = FakeHost({"stat -c '%F|%u|%g|%a'": Out(0, "directory|10000|10000|700\n")})
    assert outcome("HI-DATA-001", context(host=host)).status == "passed"
    host.rules["stat -c '%F|%u|%g|%a'"] = Out(0, "symbolic link|0|0|777\n")
    r = outcome("HI-DATA-001", context(host=host))
    assert (r.status, r.message) == ("failed", "/root/.hermes is a symbolic link, not a directory")
    host.rules["stat -c '%F|%u|%g|%a'"] = Out(0, "missing\n")
    assert outcome("HI-DATA-001", context(host=host)).message == "/root/.hermes is missing"
    assert all("stat -L" not in c and "test -d" not in c for c in host.commands)


def test_foreign_file_names_are_printed_escaped():
    names = "root:root evil\x1b[2J\nPASS fake line\0root:root ok.txt\0"
    host = FakeHost({"find /root/.hermes": Out(0, names)})
    r = outcome("HI-DATA-002", context(host=host))
    assert r.status == "failed"
    assert "\x1b" not in r.message and "\n" not in r.message
    assert "evil\\x1b[2J\\nPASS fake line" in r.message and "root:root ok.txt" in r.message
    [command] = [c for c in host.commands if "find " in c]
    assert "[ ! -L /root/.hermes ]" in command and " -L " not in command.split("find", 1)[1]


# ------------------------------------------------------------------ health check (CIS 5.27)
def health_record(status: str | None = "healthy", test=tuple(GATEWAY_HEALTHCHECK), running: bool = True, **health):
    record = gateway_record()
    record["Config"]["Healthcheck"] = {"Test": list(test), "Interval": 30_000_000_000} if test is not None else None
    record["State"]["Running"] = running
    record["State"]["Status"] = "running" if running else "exited"
    record["State"]["Health"] = None if status is None else {"Status": status, "FailingStreak": 0, "Log": [],
                                                             **health}
    return record


@pytest.mark.parametrize(("record", "status", "message"), [
    (health_record("healthy"), "passed", "healthy (checked every 30s)"),
    (health_record("starting"), "passed", "starting: no verdict yet"),
    (health_record("unhealthy", FailingStreak=4, Log=[{"ExitCode": 1, "Output": "bash: connect: refused"}]),
     "failed", "unhealthy: the last 4 probe(s) failed (last exit code 1)"),
    (health_record(None, test=None), "failed", "has no health check (none configured)"),
    (health_record(None, test=("NONE",)), "failed", "has no health check (disabled)"),
    (health_record("unhealthy", running=False), "failed", "is exited: its health check does not run"),
])
def test_gateway_health_check_control(record, status, message):
    r = outcome("HI-CTR-011", context(record=record))
    assert r.status == status and message in r.message, r.message
    assert "refused" not in r.message  # probe output is pointed to, not copied into reports


def test_health_check_control_is_for_gateways_only():
    settings = HostSettings(companions=[{"name": "hub", "image": "example/hub:1.0"}])
    assert [s.label for c, s in instances(settings) if c.id == "HI-CTR-011"] == ["gateway:hermes"]
    assert get_control("HI-CTR-011").cis == "5.27"


# ------------------------------------------------------------------- daemon (CIS 2.2, 2.14)
def daemon_host(config: dict | None = None, info: dict | None = None, icc: str = "false") -> FakeHost:
    config = daemon_json(HostSettings().docker) if config is None else config
    info = {"LoggingDriver": "json-file", "LiveRestoreEnabled": True, "ServerVersion": "27.3.1",
            "SecurityOptions": ["name=seccomp,profile=builtin", "name=no-new-privileges"]} if info is None else info
    return FakeHost({"docker info": Out(0, json.dumps(info)),
                     "docker network inspect": Out(0, json.dumps({"com.docker.network.bridge.enable_icc": icc,
                                                                  "com.docker.network.bridge.name": "docker0"}))},
                    files={"/etc/docker/daemon.json": FakeFile(content=json.dumps(config))})


def test_daemon_hardening_controls_pass_on_what_the_deploy_writes():
    ctx = context(host=daemon_host())
    for control_id in ("HI-DOCKER-003", "HI-DOCKER-004", "HI-DOCKER-005", "HI-DOCKER-006"):
        r = outcome(control_id, ctx)
        assert r.status == "passed", (control_id, r.message)


def test_icc_needs_the_file_and_the_running_default_bridge():
    config = daemon_json(HostSettings().docker)
    del config["icc"]
    r = outcome("HI-DOCKER-005", context(host=daemon_host(config=config)))
    assert r.status == "failed" and "has icc 'unset (default true)', want false" in r.message
    r = outcome("HI-DOCKER-005", context(host=daemon_host(icc="true")))
    assert r.status == "failed" and "restart Docker with no container running" in r.message
    r = outcome("HI-DOCKER-005", context(host=FakeHost({})))
    assert r.status == "failed" and "/etc/docker/daemon.json is missing" in r.message


def test_no_new_privileges_default_on_old_and_new_engines():
    without = {"LoggingDriver": "json-file", "LiveRestoreEnabled": True, "SecurityOptions": ["name=seccomp"]}
    r = outcome("HI-DOCKER-006", context(host=daemon_host(info=dict(without, ServerVersion="27.3.1"))))
    assert r.status == "failed" and "does not apply it: restart Docker" in r.message
    r = outcome("HI-DOCKER-006", context(host=daemon_host(info=dict(without, ServerVersion="20.10.24+dfsg1"))))
    assert r.status == "passed" and "does not report it" in r.message
    config = daemon_json(HostSettings().docker) | {"no-new-privileges": False}
    r = outcome("HI-DOCKER-006", context(host=daemon_host(config=config)))
    assert r.status == "failed" and "has no-new-privileges False, want true" in r.message


def test_daemon_options_that_turn_hardening_off_skip_with_the_reason():
    settings = HostSettings(docker={"daemon_options": {"icc": True, "no-new-privileges": False}})
    for control_id, word in (("HI-DOCKER-005", "icc"), ("HI-DOCKER-006", "no-new-privileges")):
        r = outcome(control_id, context(settings, host=daemon_host()))
        assert r.status == "skipped" and f"docker.daemon_options sets {word}" in r.message


def test_host_level_controls():
    swaps = "Filename\tType\tSize\tUsed\tPriority\n/swapfile file 2097148 0 -2\n"
    host = daemon_host()
    host.rules.update({"/proc/swaps": Out(0, swaps),
                       "sshd -T": Out(0, "passwordauthentication no\nkbdinteractiveauthentication no\n"),
                       "docker compose version": Out(0, "2.29.7\n")})
    host._sysctl["vm.swappiness"] = 10
    ctx = context(host=host)
    for control_id in ("HI-DOCKER-001", "HI-DOCKER-002", "HI-DOCKER-003", "HI-DOCKER-004", "HI-HOST-001",
                       "HI-HOST-002", "HI-SSH-001"):
        r = outcome(control_id, ctx)
        assert r.status == "passed", (control_id, r.message)

    host.rules["/proc/swaps"] = Out(0, "Filename\tType\tSize\tUsed\tPriority\n")
    host.rules["sshd -T"] = Out(0, "passwordauthentication yes\nkbdinteractiveauthentication no\n")
    host._sysctl["vm.swappiness"] = 60
    host.files["/etc/docker/daemon.json"] = FakeFile(content=json.dumps({"log-driver": "json-file"}))
    ctx = context(host=host)
    assert outcome("HI-HOST-001", ctx).message == "active swap is 0 MiB (no active swap); settings say at least 2G"
    assert outcome("HI-HOST-002", ctx).message == "vm.swappiness is 60; settings say 10"
    ssh = outcome("HI-SSH-001", ctx)
    assert (ssh.status, ssh.message) == ("warning", "sshd allows password-style login: passwordauthentication yes")
    assert "log-opts.max-size is None, want '10m'" in outcome("HI-DOCKER-003", ctx).message
    assert outcome("HI-HOST-001", context(HostSettings(swap={"size": "0"}), host=host)).status == "skipped"
    host.files["/etc/docker/daemon.json"] = FakeFile(content="{not json")
    r = outcome("HI-DOCKER-003", context(host=host))
    assert r.status == "failed" and "is not valid JSON" in r.message


def test_a_broken_command_is_an_error_not_a_pass():
    host = FakeHost({"docker info": Out(1, "", "Cannot connect to the Docker daemon")})
    r = outcome("HI-DOCKER-004", context(host=host))
    assert r.status == "error" and "Cannot connect to the Docker daemon" in r.message


# ------------------------------------------------------------------------------ companions
def companion_context(probe: Out) -> tuple[HostContext, FakeHost]:
    settings = HostSettings(companions=[{"name": "hub", "image": "example/hub:1.0"}])
    host = FakeHost({"docker exec -i hub sh -s": probe})
    ctx = context(settings, gateway_record(), host)
    ctx._cache["inspect"]["hub"] = gateway_record() | {"Name": "/hub"}
    return ctx, host


@pytest.mark.parametrize(("probe", "status", "message"), [
    (Out(0, "python3 200\n"), "passed", "(python3) -> 200"),
    (Out(0, "curl 401\n"), "failed", "answered 401 (its key is not the gateway's)"),
    (Out(0, "noclient\n"), "skipped", "its image has none of python3, node or curl, and the check starts no "
                                      "container of its own"),
    (Out(126, "", 'OCI runtime exec failed: exec: "sh": executable file not found in $PATH: unknown'), "skipped",
     "its image has no shell"),
    (Out(1, "", "Error response from daemon: container is paused"), "error", "could not probe from inside hub"),
])
def test_companion_probe_runs_inside_the_running_companion_only(probe, status, message):
    ctx, host = companion_context(probe)
    r = outcome("HI-CMP-001", ctx)
    assert r.status == status and message in r.message, r.message
    assert [c.split(" sh -s")[0] for c in host.commands] == ["docker exec -i hub"]


# ------------------------------------------------------------------------- read-only checks
# A check never changes the host it checks: no container started, created, pulled or removed,
# no file written, moved, linked or re-owned. Heredoc program text (python/JS) is scanned too.
WRITES = [
    re.compile(r"\bdocker\s+(?:container\s+|image\s+|network\s+|volume\s+)?"
               r"(?:run|create|start|restart|stop|kill|rm|rmi|pull|update|rename|cp|commit|prune|connect"
               r"|disconnect)\b"),
    re.compile(r"\bdocker\s+compose(?:\s+-\S+(?:\s+[^\s-]\S*)?)*\s+"
               r"(?:up|run|create|start|restart|stop|kill|rm|pull|down|exec)\b"),
    re.compile(r"\bsystemctl\s+(?:start|stop|restart|reload|enable|disable|mask|kill)\b"),
    re.compile(r"(?<![=\-<>&])\d*>{1,2}(?!&)\s*(?!/dev/null\b)"),  # > or >> to anything but /dev/null or an fd
    re.compile(r"\b(?:tee|chmod|chown|chgrp|mv|cp|rm|rmdir|install|mkdir|truncate|touch|ln|mkfifo|shred|sponge)\b"),
    re.compile(r"\bsed\s+(?:-[^i\s]\S*\s+)*-i"),
    re.compile(r"\bdd\b[^|;]*\bof="),
]


def writes_in(command: str) -> list[str]:
    return [m.group(0) for pattern in WRITES for m in pattern.finditer(command)]


def test_the_write_patterns_catch_what_they_should():
    for bad in ("docker run --rm -i x sh", "docker compose -p hermes -f compose.yaml up -d", "echo x > /etc/f",
                "printf k >> .env", "cat a | tee b", "chmod 600 .env", "sed -i s/a/b/ f", "dd if=a of=b",
                "docker container start hub", "docker pull img", "mv a b", "rm -f x", "docker compose run --rm x"):
        assert writes_in(bad), bad
    for fine in ("stat -c %F x 2>/dev/null", "command -v curl >/dev/null 2>&1", "docker exec -i hub sh -s",
                 "curl -s -o /dev/null -w '%{http_code}'", "x 2>&1 | head", "r => console.log(r)",
                 "dd if=.env iflag=nofollow,nonblock", "docker compose version --short 2>&1", "printf '%s\\n'"):
        assert not writes_in(fine), (fine, writes_in(fine))


class RecordingBackend(BaseBackend):
    """A testinfra backend that answers from rules and records every command, including the ones
    testinfra's own modules (file, service, sysctl) send."""

    NAME = "recording"

    def __init__(self, rules):
        super().__init__("recording")
        self.rules = rules
        self.commands: list[str] = []

    def run(self, command, *args, **kwargs):
        command = self.get_command(command, *args)
        self.commands.append(command)
        for needle, out in self.rules.items():
            if needle in command:
                return self.result(out.rc, self.encode(command), out.stdout.encode(), out.stderr.encode())
        return self.result(0, self.encode(command), b"", b"")


def test_every_control_only_reads(monkeypatch):
    secret = "Zq8" + "x7Yp" * 9
    settings = HostSettings(
        gateways=[{"name": "hermes", "api": {"key": secret},
                   "cron": [{"name": "brief", "schedule": "every 1h", "prompt": "the brief"}],
                   "dashboard": {"enabled": True, "publish_address": "0.0.0.0", "allow_public": True, "basic_auth_username": "ops",
                                 "basic_auth_password_hash": "$2b$12$abcdefghijklmnopqrstuv"}}],
        companions=[{"name": "hub", "image": "example/hub:1.0", "gateway": "hermes", "topology": "host-gateway"},
                    {"name": "bare", "image": "example/bare:1.0", "gateway": "hermes"}],
        firewall={"enabled": True, "allow": [8642, 9119]}, ssh_hardening={"enabled": True},
        unattended_upgrades={"enabled": True}, tls_proxy={"enabled": True, "domain": "hermes.test", "ca": "internal"})
    hermes = gateway_record(PortBindings={"8642/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8642"}],
                                          "9119/tcp": [{"HostIp": "0.0.0.0", "HostPort": "9119"}]})
    hub = gateway_record() | {"Name": "/hub", "NetworkSettings": {"Networks": {"hermes-hub_default": {}}}}
    bare = gateway_record() | {"Name": "/bare"}
    rules = {  # first match wins: the companion probe also mentions "Authorization: Bearer"
        "docker exec -i hub": Out(0, "python3 200\n"),
        "docker exec -i bare": Out(0, "noclient\n"),
        "uname -s": Out(0, "Linux\n"),
        "docker inspect": Out(0, json.dumps([hermes, hub, bare])),
        "docker info": Out(0, json.dumps({"LoggingDriver": "json-file", "LiveRestoreEnabled": True,
                                          "ServerVersion": "27.3.1", "SecurityOptions": ["name=no-new-privileges"]})),
        "docker network inspect": Out(0, '{"com.docker.network.bridge.enable_icc": "false"}'),
        "cat -- /etc/docker/daemon.json": Out(0, json.dumps(daemon_json(settings.docker))),
        ENV_FACTS: Out(0, env_out(keys=("API_SERVER_KEY", "HERMES_DASHBOARD_BASIC_AUTH_USERNAME",
                                        "HERMES_DASHBOARD_BASIC_AUTH_PASSWORD_HASH"))),
        ENV_AUTHED: Out(0, env_out(body="200")),
        "/health": Out(0, "200\n"),
        "/v1/models": Out(0, "401\n"),
    }
    backend = RecordingBackend(rules)
    host = testinfra.host.Host(backend)
    backend.set_host(host)
    ctx = HostContext(host, settings, name="prod-1")
    ctx._cache["resources"] = HostResources(memory_bytes=4 * GIB, cpus=4)
    results = [evaluate(c, ctx, s, "prod-1") for c, s in instances(settings)]
    assert {r.control.id for r in results} == {c.id for c in all_controls()}
    reach = {r.subject: r.status for r in results if r.control.id == "HI-CMP-001"}
    assert reach == {"companion:hub": "passed", "companion:bare": "skipped"}
    assert len(backend.commands) > 20
    offending = {command[:120]: writes_in(command) for command in backend.commands if writes_in(command)}
    assert offending == {}
    assert all(secret not in command for command in backend.commands)
    # nor in any report (evidence is the message; JSON and JUnit carry it)
    report = RunReport(hosts=[HostReport(name="prod-1", results=results)], waivers=[],
                       started=dt.datetime(2026, 6, 15, tzinfo=dt.UTC), seconds=1.0, today=dt.date(2026, 6, 15))
    for text in (render_text(report), render_json(report), render_junit(report)):
        assert secret not in text and hashlib.sha256(secret.encode()).hexdigest() not in text


# ------------------------------------------------------ the .env script, run for real here
needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                                reason="reads as the data dir's owner: needs root and setpriv")


@pytest.fixture()
def data_dir():
    """A data dir owned by uid 10000 outside /tmp (the settings refuse world-writable trees)."""
    path = Path(tempfile.mkdtemp(prefix=".hermes-infra-test-", dir=Path.home()))
    os.chown(path, 10000, 10000)
    path.chmod(0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def as_owner(directory: Path, script: str) -> None:
    subprocess.run(["setpriv", "--reuid=10000", "--regid=10000", "--clear-groups", "--", "sh", "-c", script],
                   cwd=directory, check=True, timeout=30)


def run_local(command: str) -> Out:
    done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30, check=False)
    return Out(done.returncode, done.stdout, done.stderr)


class LocalHost:
    def __init__(self):
        self.commands: list[str] = []

    def run(self, command, *args):
        command = command % tuple(shlex.quote(a) for a in args) if args else command
        self.commands.append(command)
        return run_local(command)


@needs_root
@pytest.mark.parametrize(("plant", "kind"), [
    ("ln -s {secret} .env", "symlink"),
    ("mkfifo .env", "fifo"),
    ("mkfifo .env; (exec 3>.env; sleep 5) & sleep 0.3", "fifo"),   # a writer waiting on the FIFO
    ("mkdir .env", "directory"),
    ("printf A=1 > x && ln x .env", "hardlink"),
    ("head -c 2000000 /dev/zero | tr '\\0' A > .env", "toolarge"),
    ("printf 'API_SERVER_KEY=%s\\n' {key} > .env && chmod 600 .env", "regular"),
])
def test_env_script_on_real_files(data_dir, plant, kind):
    secret_file = data_dir.parent / f"{data_dir.name}-secret"
    secret_file.write_text("API_SERVER_KEY=root-only-secret-value-0123456789\n")
    secret_file.chmod(0o644)
    key = "Zq8" + "x7Yp" * 9
    try:
        as_owner(data_dir, plant.format(secret=shlex.quote(str(secret_file)), key=key))
        settings = HostSettings(gateways=[{"name": "hermes", "data_dir": str(data_dir)}])
        host = LocalHost()
        ctx = HostContext(host, settings, name="local")
        started = time.monotonic()
        facts = ctx.env_facts(settings.gateways[0])
        assert time.monotonic() - started < 5  # a FIFO never blocks the read
        assert facts.kind == kind
        assert all("root-only-secret" not in c and key not in c for c in host.commands)
        out = run_local(host.commands[-1]).stdout
        assert "root-only-secret" not in out and key not in out
        if kind == "regular":
            assert facts.api_key(want_digest=True) == {
                "state": "present", "length": len(key), "distinct": len(set(key.lower())), "placeholder": False,
                "sha256": hashlib.sha256(key.encode()).hexdigest()}
            assert facts.keys == {"API_SERVER_KEY"} and (facts.mode, facts.uid) == (0o600, 10000)
        else:
            assert facts.keys == frozenset() and facts.api_key(False) == {"state": "unreadable"}
    finally:
        secret_file.unlink()


def fake_docker(bin_dir: Path, address: str) -> str:
    """PATH with a `docker` that answers `inspect` as the engine does for a running container at
    `address` (empty: not running)."""
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "docker").write_text(f"#!/bin/sh\n[ \"$1\" = inspect ] && printf '%s\\n' '{address}'\nexit 0\n")
    (bin_dir / "docker").chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}"


@needs_root
def test_the_key_reaches_the_api_through_stdin_only(data_dir, monkeypatch, tmp_path):
    key = "Zq8" + "x7Yp" * 9
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append(self.headers.get("Authorization"))
            self.send_response(200 if self.headers.get("Authorization") == f"Bearer {key}" else 401)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        as_owner(data_dir, f"printf 'OTHER=1\\nAPI_SERVER_KEY={key}\\n' > .env && chmod 600 .env")
        settings = HostSettings(gateways=[{"name": "hermes", "data_dir": str(data_dir)}])
        host = LocalHost()
        ctx = HostContext(host, settings, name="local")
        url = f"http://127.0.0.1:{server.server_port}/v1/models"
        assert ctx.http_status(url) == "401"
        # the container is not running: nothing is sent, to anyone
        monkeypatch.setenv("PATH", fake_docker(tmp_path / "bin", ""))
        facts, status = ctx.authed_status(settings.gateways[0], "/v1/models", server.server_port)
        assert (facts.kind, status) == ("regular", "notrunning") and seen == [None]
        # running at 127.0.0.1 (the engine's answer): the key goes to that address only
        monkeypatch.setenv("PATH", fake_docker(tmp_path / "bin", "127.0.0.1"))
        facts, status = ctx.authed_status(settings.gateways[0], "/v1/models", server.server_port)
        assert (facts.kind, status) == ("regular", "200")
        assert seen == [None, f"Bearer {key}"]
        assert all(key not in c for c in host.commands)
        # the same file as a link: nothing is sent
        as_owner(data_dir, "mv .env real && ln -s real .env")
        facts, status = ctx.authed_status(settings.gateways[0], "/v1/models", server.server_port)
        assert facts.kind == "symlink" and len(seen) == 2
    finally:
        server.shutdown()


def test_instances_follow_the_settings():
    settings = HostSettings(gateways=[{"name": "hermes"}, {"name": "work", "api": {"port": 8643}}],
                            companions=[{"name": "hub", "image": "example/hub:1.0"}])
    pairs = [(c.id, s.label) for c, s in instances(settings)]
    assert ("HI-CTR-003", "companion:hub") in pairs and ("HI-CTR-003", "gateway:work") in pairs
    assert ("HI-API-001", "companion:hub") not in pairs and ("HI-CTR-011", "companion:hub") not in pairs
    assert pairs.count(("HI-HOST-001", "host")) == 1
    assert [p for p in pairs if p[0] == "HI-CMP-001"] == [("HI-CMP-001", "companion:hub")]
    # 10 host controls, 12 per gateway (5 data dir, the health check, the init, 5 API), 11 per container,
    # 1 per companion; none of the cron jobs' (no gateway here declares one)
    assert len(pairs) == 10 + 2 * 12 + 3 * 11 + 1
    assert not any(control_id == "HI-AGT-001" for control_id, _ in pairs)
    scheduled = HostSettings(gateways=[{"name": "hermes"}, {"name": "work", "api": {"port": 8643}, "cron": [
        {"name": "brief", "schedule": "every 1h", "prompt": "the brief"}]}])
    assert [s.label for c, s in instances(scheduled) if c.id == "HI-AGT-001"] == ["gateway:work"]


def test_permission_problems_are_errors_not_findings_and_cost_one_command():
    denied = Out(1, "", "permission denied while trying to connect to the Docker daemon socket at unix:///var/run/docker.sock")
    host = FakeHost({"docker inspect": denied,
                     "docker info": Out(0, json.dumps({"ServerErrors": ["permission denied while trying to connect"]})),
                     "stat -c %F /root/.hermes": Out(1, "", "stat: cannot statx '/root/.hermes/.env': Permission denied")})
    ctx = HostContext(host, HostSettings(), name="prod-1")
    ctx._cache["resources"] = HostResources(memory_bytes=4 * GIB, cpus=4)
    results = [evaluate(c, ctx, s, "prod-1") for c, s in instances(ctx.settings)
               if c.id.startswith(("HI-CTR", "HI-DOCKER-004", "HI-DATA", "HI-API-001", "HI-API-002"))]
    assert {r.status for r in results} == {"error"}
    assert all(r.message.startswith("cannot check: ") for r in results)
    assert "run the check as root or with --sudo" in results[-1].message
    assert sum("docker inspect" in c for c in host.commands) == 1
    assert sum("docker info" in c for c in host.commands) == 1


def test_a_missing_container_is_a_finding():
    host = FakeHost({"docker inspect": Out(1, "[]\n", "Error: No such object: hermes\n")})
    ctx = HostContext(host, HostSettings(), name="prod-1")
    ctx._cache["resources"] = HostResources(memory_bytes=4 * GIB, cpus=4)
    r = outcome("HI-CTR-001", ctx)
    assert (r.status, r.message) == ("failed", "container 'hermes' does not exist on the host")


def test_capability_control_wants_mknod_and_net_raw_dropped():
    """F2: a container with Docker's default capabilities keeps MKNOD and NET_RAW."""
    assert outcome("HI-CTR-012", context(record=gateway_record())).status == "passed"
    companion = gateway_record(CapDrop=["CAP_MKNOD", "NET_RAW", "SYS_CHROOT"], CapAdd=None)
    assert outcome("HI-CTR-012", context(record=companion)).status == "passed"
    r = outcome("HI-CTR-012", context(record=gateway_record(CapDrop=None, CapAdd=None)))
    assert r.status == "failed" and "keeps MKNOD, NET_RAW" in r.message
    r = outcome("HI-CTR-012", context(record=gateway_record(CapAdd=["NET_RAW"])))
    assert r.status == "failed" and "keeps NET_RAW" in r.message
