"""Batching, the rollout loop and `--require-green`, without hosts."""
from __future__ import annotations

import pytest

from hermes_infra.release import rollout
from hermes_infra.release.results import HostOutcome

HOSTS = [f"web-{i}" for i in range(1, 9)]


def test_canary_first_then_batches_of_a_count_or_a_percentage():
    assert rollout.batches(HOSTS[:3], "1") == [["web-1"], ["web-2"], ["web-3"]]
    assert rollout.batches(HOSTS, "25%") == [["web-1"], ["web-2", "web-3"], ["web-4", "web-5"], ["web-6", "web-7"],
                                             ["web-8"]]
    assert rollout.batches(HOSTS, 3) == [["web-1"], ["web-2", "web-3", "web-4"], ["web-5", "web-6", "web-7"], ["web-8"]]
    assert rollout.batches(HOSTS[:1], "50%") == [["web-1"]]
    assert rollout.batches([], 1) == []
    assert sum(rollout.batches(HOSTS, "100%"), []) == HOSTS
    for bad in ("0", "-1", "150%", "abc", "0%"):
        with pytest.raises(rollout.RolloutError):
            rollout.batches(HOSTS, bad)


def _deployer(fail: set[str], log: list):
    def deploy(batch):
        log.append(list(batch))
        return {h: HostOutcome(host=h, result="failed" if h in fail else "success", revision="r1", seconds=1.0)
                for h in batch}
    return deploy


def test_a_failed_canary_leaves_every_later_host_untouched():
    deployed = []
    report = rollout.run_rollout(rollout.batches(HOSTS[:3], 1), _deployer({"web-1"}, deployed), log=lambda m: None)
    assert deployed == [["web-1"]]
    assert report.exit_code == 1 and report.stopped_at == 0
    assert [(r.host, r.result) for r in report.rows] == [("web-1", "failed"), ("web-2", "untouched"),
                                                         ("web-3", "untouched")]
    table = report.table()
    assert "canary" in table and "untouched" in table and "r1" in table


def test_batches_run_in_order_with_pauses_and_checks_can_fail_a_batch():
    deployed, slept = [], []
    report = rollout.run_rollout(rollout.batches(HOSTS[:4], 2), _deployer(set(), deployed), pause=30,
                                 sleep=slept.append, log=lambda m: None)
    assert deployed == [["web-1"], ["web-2", "web-3"], ["web-4"]] and slept == [30, 30]
    assert report.exit_code == 0 and all(r.result == "success" for r in report.rows)
    deployed = []
    report = rollout.run_rollout(rollout.batches(HOSTS[:4], 2), _deployer(set(), deployed),
                                 check_batch=lambda batch: {h: ("HI-5.11 memory" if h == "web-3" else None) for h in batch},
                                 log=lambda m: None)
    assert deployed == [["web-1"], ["web-2", "web-3"]] and report.stopped_at == 1
    assert "compliance checks: HI-5.11" in [r for r in report.rows if r.host == "web-3"][0].message


def test_green_means_the_latest_deploy_on_every_staging_host_succeeded_with_that_image():
    ok = {"command": "up", "result": "success", "image": "img#1", "time": "t1"}
    assert rollout.green_problem({"img#1"}, {"s1": [ok], "s2": [ok, {"command": "audit-only"}]}, "staging") is None
    failed_later = {"command": "rollout", "result": "failed", "image": "img#1", "time": "t2"}
    assert "ended failed" in rollout.green_problem({"img#1"}, {"s1": [ok, failed_later]}, "staging")
    assert "runs img#0" in rollout.green_problem({"img#1"}, {"s1": [dict(ok, image="img#0")]}, "staging")
    assert "no deploy" in rollout.green_problem({"img#1"}, {"s1": []}, "staging")
    rolled_back = {"command": "rollback", "result": "success", "image": "img#0", "time": "t3"}
    assert "runs img#0" in rollout.green_problem({"img#1"}, {"s1": [ok, rolled_back]}, "staging")
