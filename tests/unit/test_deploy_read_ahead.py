"""A fleet's reads run side by side: pyinfra runs the deploy one host after the other, and the
first host's read starts every other host's (`deploy.gather`)."""
from __future__ import annotations

import time

import gevent
import gevent.pool

from hermes_infra import deploy
from hermes_infra.hostfacts import HostState

READ_SECONDS = 0.4


class FakeInventory:
    def __init__(self, hosts):
        self.hosts = hosts

    def get_active_hosts(self):
        return list(self.hosts)


class FakeState:
    def __init__(self):
        self.print_fact_output = True
        self.pool = gevent.pool.Pool(10)
        self.inventory = FakeInventory([])


class FakeHost:
    def __init__(self, name, state, log, fail=False):
        self.name, self.state, self.log, self.fail = name, state, log, fail

    def get_fact(self, cls, request):
        self.log.append((self.name, request, self.state.print_fact_output))
        gevent.sleep(READ_SECONDS)
        if self.fail:
            raise OSError("connection reset")
        state = HostState()
        state.machine = request
        return state


def fleet(monkeypatch, names, failing=()):
    state, log = FakeState(), []
    hosts = [FakeHost(name, state, log, fail=name in failing) for name in names]
    state.inventory.hosts = hosts
    monkeypatch.setattr(deploy, "_read_ahead", {})
    monkeypatch.setattr(deploy, "_read_ahead_started", False)
    monkeypatch.setattr(deploy, "settings_for_host", lambda h: f"settings of {h.name}")
    monkeypatch.setattr(deploy, "fact_request", lambda settings: f"request from {settings}")
    return state, hosts, log


def run_deploy(monkeypatch, hosts):
    facts = {}
    for current in hosts:  # what pyinfra does: the deploy code, host after host
        monkeypatch.setattr(deploy, "host", current)
        facts[current.name] = deploy.gather(f"settings of {current.name}")
    return facts


def test_three_hosts_read_in_the_time_of_one_each_with_its_own_request(monkeypatch):
    state, hosts, log = fleet(monkeypatch, ["a", "b", "c"])
    started = time.monotonic()
    facts = run_deploy(monkeypatch, hosts)
    assert time.monotonic() - started < 2 * READ_SECONDS
    assert sorted(log) == [(n, f"request from settings of {n}", False) for n in "abc"]  # once each, output hidden
    assert {name: f.state.machine for name, f in facts.items()} == {n: f"request from settings of {n}" for n in "abc"}
    assert state.print_fact_output is True


def test_a_failed_read_ahead_is_read_again_by_its_own_host_and_fails_there(monkeypatch):
    state, hosts, log = fleet(monkeypatch, ["a", "b"], failing={"b"})
    monkeypatch.setattr(deploy, "host", hosts[0])
    assert deploy.gather("settings of a").state.machine == "request from settings of a"
    monkeypatch.setattr(deploy, "host", hosts[1])
    try:
        deploy.gather("settings of b")
    except OSError as error:
        assert "connection reset" in str(error)
    else:
        raise AssertionError("b's read error was swallowed")
    assert [entry[0] for entry in log].count("b") == 2 and state.print_fact_output is True
