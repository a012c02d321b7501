"""Control logic against canned facts (a fake testinfra host): what passes, what fails, and why."""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass

import pytest

from hermes_infra.checks.context import HostContext, subjects_for
from hermes_infra.checks.registry import get_control
from hermes_infra.checks.results import evaluate
from hermes_infra.checks.runner import instances
from hermes_infra.settings import HostResources, HostSettings

GIB = 1024**3


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
                                     "StartedAt": "2026-06-15T10:00:00.0Z"},
        "Config": {"Image": "nousresearch/hermes-agent:v2026.9.14"},
        "Mounts": [{"Source": "/root/.hermes", "Destination": "/opt/data"}],
        "HostConfig": {"RestartPolicy": {"Name": "unless-stopped"}, "Memory": 3584 * 1024**2,
                       "NanoCpus": 2_500_000_000, "PidsLimit": 1024, "Privileged": False,
                       "NetworkMode": "hermes_default", "SecurityOpt": ["no-new-privileges:true"],
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
                       "HI-CTR-007", "HI-CTR-008", "HI-CTR-009", "HI-CTR-010", "HI-API-001"):
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
    assert r.status == "failed" and "settings say 'nousresearch/hermes-agent:v2026.9.14'" in r.message
    settings = HostSettings(image={"ref": "nousresearch/hermes-agent:latest", "allow_latest": True})
    record = gateway_record() | {"Config": {"Image": "nousresearch/hermes-agent:latest"}}
    assert outcome("HI-CTR-010", context(settings, record)).status == "passed"
    companion = HostSettings(companions=[{"name": "hub", "image": "example/hub"}])
    ctx = context(companion, gateway_record())
    ctx._cache["inspect"]["hub"] = gateway_record() | {"Name": "/hub", "Config": {"Image": "example/hub"}}
    r = outcome("HI-CTR-010", ctx, subject_index=1)
    assert (r.subject, r.status) == ("companion:hub", "failed") and "not pinned" in r.message


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
    ctx = context(record=record)
    ctx._cache["env_keys:/root/.hermes/.env"] = {"API_SERVER_KEY"}
    r = outcome("HI-API-002", ctx)
    assert r.status == "failed" and "0.0.0.0:9119" in r.message
    ctx = context(record=record)
    ctx._cache["env_keys:/root/.hermes/.env"] = {"HERMES_DASHBOARD_BASIC_AUTH_USERNAME",
                                                 "HERMES_DASHBOARD_BASIC_AUTH_PASSWORD_HASH"}
    assert outcome("HI-API-002", ctx).status == "passed"
    loopback = gateway_record(PortBindings={"9119/tcp": [{"HostIp": "127.0.0.1", "HostPort": "9119"}]})
    assert outcome("HI-API-002", context(record=loopback)).status == "passed"


def test_http_controls_use_status_codes():
    ctx = context(record=gateway_record())
    answers = {"/health": "200", "/v1/models": "401", "/v1/models+key": "200"}
    ctx.http_status = lambda url, key_from_env=None: answers[url.split("8642")[1] + ("+key" if key_from_env else "")]
    assert outcome("HI-API-003", ctx).status == "passed"
    assert outcome("HI-API-004", ctx).status == "passed"
    answers["/v1/models"] = "200"   # no authentication
    r = outcome("HI-API-004", ctx)
    assert r.status == "failed" and "without a key answered 200; want 401" in r.message
    answers["/health"] = "403"      # e.g. an Origin header or a proxy in the way
    assert "answered 403; want 200" in outcome("HI-API-003", ctx).message


def test_api_key_control_compares_digests_and_never_sends_the_key():
    secret = "Zq8" + "x7Yp" * 9
    digest = hashlib.sha256(secret.encode()).hexdigest()
    host = FakeHost({"API_SERVER_KEY": Out(0, f"present\n39\n6\nok\n{digest}\n")})
    settings = HostSettings(gateways=[{"name": "hermes", "api": {"key": secret}}])
    assert outcome("HI-DATA-004", context(settings, host=host)).status == "passed"
    assert host.commands and all(secret not in command for command in host.commands)
    other = HostSettings(gateways=[{"name": "hermes", "api": {"key": "Other" + secret}}])
    r = outcome("HI-DATA-004", context(other, host=host))
    assert r.status == "failed" and "not the key set in gateways[hermes].api.key" in r.message


@pytest.mark.parametrize(("facts", "message"), [
    ("present\n40\n20\nok\n-\n", None),
    ("present\n8\n8\nok\n-\n", "8 characters long; Hermes needs 16"),
    ("present\n21\n15\nword\n-\n", "placeholder"),            # e.g. my-example-key-123456
    ("present\n22\n2\nok\n-\n", "placeholder"),               # aaaaaaaaaaaaaaaaaaaaab
    ("unset\n", "API_SERVER_KEY is not set in /root/.hermes/.env"),
    ("missing\n", "/root/.hermes/.env is missing"),
])
def test_api_key_rules_on_the_host(facts, message):
    r = outcome("HI-DATA-004", context(host=FakeHost({"API_SERVER_KEY": Out(0, facts)})))
    if message is None:
        assert r.status == "passed", r.message
    else:
        assert r.status == "failed" and message in r.message


def test_host_level_controls():
    swaps = "Filename\tType\tSize\tUsed\tPriority\n/swapfile file 2097148 0 -2\n"
    daemon = json.dumps(HostSettings().docker.daemon_json())
    host = FakeHost({"/proc/swaps": Out(0, swaps), "docker info": Out(0, json.dumps(
        {"LoggingDriver": "json-file", "LiveRestoreEnabled": True})),
        "sshd -T": Out(0, "passwordauthentication no\nkbdinteractiveauthentication no\n"),
        "docker compose version": Out(0, "2.29.7\n")},
        files={"/etc/docker/daemon.json": FakeFile(content=daemon)}, sysctl={"vm.swappiness": 10})
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


def test_a_broken_command_is_an_error_not_a_pass():
    host = FakeHost({"docker info": Out(1, "", "Cannot connect to the Docker daemon")})
    r = outcome("HI-DOCKER-004", context(host=host))
    assert r.status == "error" and "Cannot connect to the Docker daemon" in r.message


def test_instances_follow_the_settings():
    settings = HostSettings(gateways=[{"name": "hermes"}, {"name": "work", "api": {"port": 8643}}],
                            companions=[{"name": "hub", "image": "example/hub:1.0"}])
    pairs = [(c.id, s.label) for c, s in instances(settings)]
    assert ("HI-CTR-003", "companion:hub") in pairs and ("HI-CTR-003", "gateway:work") in pairs
    assert ("HI-API-001", "companion:hub") not in pairs
    assert pairs.count(("HI-HOST-001", "host")) == 1
    assert [p for p in pairs if p[0] == "HI-CMP-001"] == [("HI-CMP-001", "companion:hub")]
    assert len(pairs) == 7 + 2 * 4 + 3 * 10 + 2 * 4 + 1


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
