"""Faked hosts for fast tests: facts of a fresh, a converged, a drifted and a hostile host,
and a pyinfra host context in which an operation's generator can run without SSH."""
from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Any

from pyinfra.api import FileUploadCommand, FunctionCommand
from pyinfra.context import ctx_host, ctx_state

from hermes_infra.host.hostfacts import HostState, RootFile
from hermes_infra.settings.loading import settings_from_raw
from hermes_infra.plan.hostplan import Facts, HostPlan, make_plan
from hermes_infra.host.safeio import FileRead

TRIXIE = {"id": "debian", "version_codename": "trixie", "pretty_name": "Debian GNU/Linux 13 (trixie)"}
LAYERS = ["sha256:" + "a" * 64, "sha256:" + "b" * 64]
INSPECT = [{"Id": "sha256:" + "c" * 64, "RootFS": {"Type": "layers", "Layers": LAYERS},
            "Architecture": "amd64", "Os": "linux", "RepoTags": ["nousresearch/hermes-agent:0.23.5"]}]


def settings(**sections: Any):
    return settings_from_raw(sections)


def root_file(text: str, mode: str = "0644", uid: int = 0) -> dict:
    return {"uid": uid, "gid": 0, "mode": mode, "text": RootFile(text)}


def fresh(memory_mb: int = 3915, cpus: int = 2, **state: Any) -> Facts:
    return Facts(os_release=dict(TRIXIE), memory_mb=memory_mb, cpus=cpus, image_inspect=None,
                 state=HostState(machine="x86_64", **state))


def converged(host_settings, memory_mb: int = 3915, cpus: int = 2) -> Facts:
    """Facts of a host on which the plan for `host_settings` was applied and is running."""
    plan = make_plan(host_settings, fresh(memory_mb, cpus), "test")
    state = HostState(machine="x86_64", docker_installed=True, docker_enabled=True, docker_active=True,
                      apt_lists_age=600)
    files = [plan.docker.daemon_json, plan.docker.apt_conf, plan.manifest, plan.managed_keys, plan.deployed,
             plan.swap.sysctl_file,
             *plan.companion_env_files, *(p.file for p in plan.projects)]
    if plan.docker.sources is not None:
        files.append(plan.docker.sources)
    for file in files:
        state.root_files[file.path] = root_file(file.content, file.mode.rjust(4, "0"))
    for project in plan.projects:
        state.root_files[project.stamp_path] = root_file(
            project.stamp + "\n" + "".join(f"{s} hash-{s}\n" for s in project.drift_checked))
        for service in project.services:
            state.containers[service] = {"id": f"id-{service}", "state": "running", "name": service,
                                         "project": project.name, "service": service,
                                         "config_hash": f"hash-{service}"}
    for gateway in plan.gateways:
        owner = (gateway.data_dir.uid, gateway.data_dir.gid, "0600")
        state.data_dirs[gateway.name] = {
            "meta": {"kind": "directory", "uid": gateway.data_dir.uid, "gid": gateway.data_dir.gid, "mode": "0700"},
            "parent": {"kind": "directory", "uid": 0, "gid": 0, "mode": "0700"}, "foreign": False, "dir": "present",
            "files": {".env": FileRead("regular", gateway.env.content, owner),
                      "config.yaml": FileRead("regular", gateway.config.content, owner)}}
        state.probes[gateway.name] = {"health": "200", "anonymous": "401", "models": "200"}
    state.swap = {"size_bytes": plan.swap.size_bytes, "active": True, "in_fstab": True,
                  "swappiness": plan.swap.swappiness, "kind": "regular", "signature": True}
    state.packages = {p.split("=")[0]: "installed" for p in (*plan.docker.packages, "ca-certificates", "curl")}
    return Facts(os_release=dict(TRIXIE), memory_mb=memory_mb, cpus=cpus, image_inspect=INSPECT, state=state)


def with_state(facts: Facts, **changes: Any) -> Facts:
    return dataclasses.replace(facts, state=dataclasses.replace(facts.state, **changes))


def plan_for(host_settings, facts: Facts) -> HostPlan:
    return make_plan(host_settings, facts, "test")


class FakeHost:
    """Just enough of pyinfra's Host for an operation's generator (`host.noop`, facts)."""

    name = "test"
    print_prefix = "[test] "
    current_op_global_arguments = None
    connector = None

    def __init__(self, facts: dict | None = None):
        self.noops: list[str] = []
        self.facts = facts or {}
        self.data = {}

    def noop(self, message: str) -> None:
        self.noops.append(message)

    def get_temp_filename(self, *args, **kwargs) -> str:
        return "/tmp/pyinfra-test-upload"

    def get_fact(self, cls, *args, **kwargs):
        return self.facts.get(cls.__name__)


class ConfirmHost(FakeHost):
    """The deploy's host while a revert-unless-confirmed operation runs (the firewall's load, the
    SSH drop-in): what the operation ran over the deploy's own connection."""

    def __init__(self):
        super().__init__()
        self.ran: list[str] = []

    def run_shell_command(self, command, **arguments):
        self.ran.append(command.get_raw_value())
        return True, []


def run_confirmed(operation, plan, confirm, sudo: dict | None = None) -> tuple[list[str], ConfirmHost, bool]:
    """`operation(plan, writer, confirm)`'s commands in order, as pyinfra runs them: stop at the
    first that fails (a FunctionCommand returning False). Returns what was done ("upload",
    "confirm" or the command's text), the host, and whether it ran to the end."""
    host = ConfirmHost()
    host.current_op_global_arguments = sudo
    state = type("State", (), {"config": type("Config", (), {"DIFF": False})(), "cwd": None})()
    writer = plan_for(settings(), fresh()).writer
    done = []
    with ctx_host.use(host), ctx_state.use(state):
        for command in operation._inner(plan, writer, confirm):
            if isinstance(command, FileUploadCommand):
                done.append("upload")
            elif isinstance(command, FunctionCommand):
                done.append("confirm")
                if command.function(state, host, *command.args) is False:
                    return done, host, False
            else:
                done.append(command if isinstance(command, str) else command.get_raw_value())
    return done, host, True


@dataclasses.dataclass
class OpResult:
    commands: list[str]
    uploads: list[FileUploadCommand]
    noops: list[str]
    functions: list[FunctionCommand] = dataclasses.field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.commands or self.uploads or self.functions)

    def text(self) -> str:
        return "\n".join(self.commands)


def run_op(operation, *args: Any, facts: dict | None = None, connector: Any = None,
           global_arguments: dict | None = None, **kwargs: Any) -> OpResult:
    """What an operation yields for these arguments, the way pyinfra's own op tests look
    (`connector` and `global_arguments`: what pyinfra's host has while the operation runs)."""
    fake = FakeHost(facts)
    fake.connector, fake.current_op_global_arguments = connector, global_arguments
    commands, uploads, functions = [], [], []
    fake_state = type("FakeState", (), {"config": type("FakeConfig", (), {"DIFF": False})(), "cwd": None})()
    with ctx_host.use(fake), ctx_state.use(fake_state), contextlib.suppress(StopIteration):
        for command in operation._inner(*args, **kwargs):
            if isinstance(command, FileUploadCommand):
                uploads.append(command)
            elif isinstance(command, FunctionCommand):
                functions.append(command)
            else:
                commands.append(str(command) if isinstance(command, str) else command.get_raw_value())
    return OpResult(commands, uploads, fake.noops, functions)


class FakeCommand:
    """A remote command: counts stdin until EOF (or `hang`s), writes stdout and stderr, exits."""

    def __init__(self, stdout=b"", stderr=b"", rc=0, hang=False):
        self.stdout, self.stderr, self.rc, self.hang = stdout, stderr, rc, hang
        self.stdin = bytearray()
        self.largest_send = 0
        self.command = None
        self.eof = threading.Event()
        self.closed = threading.Event()

    # paramiko Channel
    def exec_command(self, command):
        self.command = command

    def sendall(self, data):
        self.largest_send = max(self.largest_send, len(data))
        self.stdin.extend(data)

    def shutdown_write(self):
        self.eof.set()

    def _finished(self):
        if self.hang:
            self.closed.wait(10)
        else:
            self.eof.wait(10)

    def recv(self, size):
        self._finished()
        data, self.stdout = self.stdout[:size], self.stdout[size:]
        return data

    def recv_stderr(self, size):
        self._finished()
        data, self.stderr = self.stderr[:size], self.stderr[size:]
        return data

    def recv_exit_status(self):
        return -1 if self.closed.is_set() else self.rc

    def close(self):
        self.closed.set()

    def transport(self):
        return type("Transport", (), {"open_session": lambda _: self})()

    def host(self):
        """A pyinfra host whose SSH connection opens this command's channel."""
        client = type("Client", (), {"get_transport": lambda _: self.transport()})()
        return type("Host", (), {"print_prefix": "[test] ", "connector_data": {},
                                 "connector": type("Connector", (), {"client": client})()})()
