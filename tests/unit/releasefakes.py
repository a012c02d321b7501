"""A pyinfra run replaced for `session.locked_deploy`: hosts that connect, a deploy that records
events the way the real deploy does, and what happened when (connect, deploy, stop, disconnect)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from hermes_infra.release import lock, session
from tests.unit.test_release_lock import ShellRemote


@dataclass(eq=False)
class FakeHost:
    name: str
    groups: tuple = ()


@dataclass
class FakeState:
    hosts: list
    connected: set
    limit: list | None = None
    handlers: list = field(default_factory=list)

    @property
    def inventory(self):
        return list(self.hosts)

    @property
    def activated_hosts(self):
        return {h for h in self.hosts if h.name in self.connected and self.is_host_in_limit(h)}

    def is_host_in_limit(self, host) -> bool:
        return not self.limit or host.name in self.limit

    def add_callback_handler(self, handler) -> None:
        self.handlers.append(handler)


class FakeRun:
    """`PyinfraRun` with no pyinfra: `events` are what the deploy records; `deploy_raises` an
    exception class the deploy raises instead (KeyboardInterrupt: a Ctrl-C in the middle)."""

    def __init__(self, world: "World", target, *, dry: bool = False, extra: list[str] | None = None):
        self.world, self.target, self.extra = world, target, list(extra or [])
        world.runs.append(self)
        self.state = None

    def connect(self):
        limit = [self.extra[i + 1] for i, a in enumerate(self.extra) if a == "--limit"]
        self.state = FakeState([FakeHost(n) for n in self.world.hosts], set(self.world.reachable), limit or None)
        self.world.seen.append(("connect", self.world.locked()))
        return self.state

    def deploy(self) -> int:
        self.world.seen.append(("deploy", self.world.locked()))
        if self.world.deploy_raises is not None:
            raise self.world.deploy_raises
        path = self.state._hermes_infra_recorder.path
        with open(path, "a") as handle:
            for event in self.world.events:
                handle.write(json.dumps(event) + "\n")
        return self.world.code

    def stop(self) -> None:
        self.world.seen.append(("stop", self.world.locked()))

    def disconnect(self) -> None:
        self.world.seen.append(("disconnect", self.world.locked()))


@dataclass
class World:
    """Hosts as shells in a temp dir, and the fake pyinfra run `locked_deploy` gets."""

    lock_dir: str
    hosts: list = field(default_factory=lambda: ["web-1"])
    reachable: list | None = None
    events: list = field(default_factory=list)
    code: int = 0
    deploy_raises: type | None = None
    runs: list = field(default_factory=list)
    seen: list = field(default_factory=list)
    remotes: dict = field(default_factory=dict)

    def __post_init__(self):
        self.reachable = list(self.hosts) if self.reachable is None else self.reachable
        self.remotes = {name: ShellRemote(name) for name in self.hosts}

    def locked(self, name: str = "web-1") -> bool:
        remote = self.remotes[name]
        return lock.parse_state(remote.run(lock.status_command(self.lock_dir)).stdout).held

    def install(self, monkeypatch) -> "World":
        monkeypatch.setattr(session, "start_run", lambda target, **kw: FakeRun(self, target, **kw))
        monkeypatch.setattr(session, "remote_for", lambda host, sudo=False: self.remotes[host.name])
        return self
