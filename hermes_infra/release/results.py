"""What each host's deploy did, handed from the pyinfra run to the command that started it.

`hermes-infra up` runs pyinfra in its own process and `attach`es a results file (JSON lines, on
the control machine) to pyinfra's state before the deploy loads: the deploy records each host's
revision and image once its plan is made, each operation's outcome (changed or not, failed or
not), and at the end (`finish`) which hosts failed. `read` turns it into one `HostOutcome` per
host for the audit log and the rollout table. No secret is recorded: names, digests, refs.
Plain `pyinfra deploy.py` attaches nothing, and records nothing.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field


def image_label(image_plan) -> str:
    """The image as the audit log and `--require-green` compare it: its ref, plus the layers'
    identity when known before the run (archives)."""
    return f"{image_plan.ref}#{image_plan.identity}" if image_plan.identity else image_plan.ref


# --- in the pyinfra process -------------------------------------------------------------------

def _append(path: str, event: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(event, sort_keys=True) + "\n")


class _Recorder:
    def __init__(self, path: str, state):
        self.path, self.state = path, state
        self.pending: list[tuple] = []
        self.finished = False

    def flush(self) -> None:
        remaining = []
        for host, op_hash, ok in self.pending:
            try:
                meta = self.state.get_op_data_for_host(host, op_hash).operation_meta
                names = sorted(self.state.get_op_meta(op_hash).names)
            except (KeyError, AttributeError):
                continue
            if not meta.is_complete():
                remaining.append((host, op_hash, ok))
                continue
            # "Hermes gateway host | Compose project hermes up" -> the operation's own name.
            names = [name.split(" | ")[-1] for name in names]
            _append(self.path, {"event": "op", "host": host.name, "name": ", ".join(names) or "Operation",
                                "ok": ok, "changed": bool(ok and meta.did_change())})
        self.pending = remaining

    def finish(self) -> None:
        self.flush()
        if self.finished:
            return
        self.finished = True
        failed = {h.name for h in getattr(self.state, "failed_hosts", set())}
        for host in getattr(self.state, "activated_hosts", set()):
            _append(self.path, {"event": "end", "host": host.name, "failed": host.name in failed})


def _handler_class():
    from pyinfra.api.state import BaseStateCallback

    class Callback(BaseStateCallback):
        def __init__(self, recorder: _Recorder):
            self.recorder = recorder

        def operation_host_start(self, state, host, op_hash):
            self.recorder.flush()

        def operation_host_success(self, state, host, op_hash, retry_count=0):
            self.recorder.pending.append((host, op_hash, True))

        def operation_host_error(self, state, host, op_hash, retry_count=0, max_retries=0):
            self.recorder.pending.append((host, op_hash, False))

        def operation_end(self, state, op_hash):
            self.recorder.flush()

        def host_connect_error(self, state, host, error):
            _append(self.recorder.path, {"event": "end", "host": host.name, "failed": True,
                                         "message": f"could not connect: {str(error)[:300]}"})

    return Callback


def attach(state, path: str) -> _Recorder:
    """Record this pyinfra run's outcomes into `path`; `finish()` the recorder once it is done."""
    recorder = _Recorder(path, state)
    state._hermes_infra_recorder = recorder
    state.add_callback_handler(_handler_class()(recorder))
    return recorder


def _recorder(host) -> _Recorder | None:
    return getattr(host.state, "_hermes_infra_recorder", None)


def record_plan(host, plan) -> None:
    """Called by the deploy once per host with its plan (a no-op without a recorder attached)."""
    recorder = _recorder(host)
    if recorder is not None:
        _append(recorder.path, {"event": "plan", "host": host.name, "revision": plan.revision,
                                "image": image_label(plan.image)})


def record_failure(host, message: str) -> None:
    """A host whose plan could not be made (the deploy stops there)."""
    recorder = _recorder(host)
    if recorder is not None:
        _append(recorder.path, {"event": "planerror", "host": host.name, "message": message[:1000]})


# --- in the parent ---------------------------------------------------------------------------

@dataclass
class HostOutcome:
    host: str
    result: str = "failed"
    """success, failed or interrupted (the audit log's results), or `untouched` (not run)."""
    revision: str | None = None
    image: str | None = None
    changed: list[str] = field(default_factory=list)
    failed_operations: list[str] = field(default_factory=list)
    seconds: float = 0.0
    message: str | None = None


def read(path: str, hosts: list[str], *, exit_code: int | None, interrupted: bool, seconds: float) -> dict[str, HostOutcome]:
    """One outcome per host from the recorded events and how the run ended."""
    outcomes = {name: HostOutcome(host=name, seconds=seconds) for name in hosts}
    ended: dict[str, bool] = {}
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        outcome = outcomes.get(event.get("host"))
        if outcome is None:
            continue
        kind = event.get("event")
        if kind == "plan":
            outcome.revision, outcome.image = event.get("revision"), event.get("image")
        elif kind == "op":
            if event.get("changed") and event["name"] not in outcome.changed:
                outcome.changed.append(event["name"])
            if not event.get("ok"):
                outcome.failed_operations.append(event["name"])
        elif kind == "planerror":
            outcome.message = event.get("message")
            ended[outcome.host] = True
        elif kind == "end":
            ended[outcome.host] = ended.get(outcome.host, False) or bool(event.get("failed"))
            if event.get("message"):
                outcome.message = event["message"]
    for name, outcome in outcomes.items():
        failed = ended.get(name)
        if interrupted:
            outcome.result = "interrupted"
            outcome.message = outcome.message or "interrupted (Ctrl-C or a signal) before the run ended"
        elif failed is None:
            # Never reached the end: pyinfra stopped before this host was activated or recorded.
            outcome.result = "success" if exit_code == 0 else "failed"
            if exit_code != 0:
                outcome.message = outcome.message or f"the deploy stopped (exit {exit_code}) before this host finished"
        else:
            outcome.result = "failed" if failed or outcome.failed_operations else "success"
        if outcome.result == "failed" and outcome.failed_operations and not outcome.message:
            outcome.message = "failed: " + ", ".join(outcome.failed_operations)
    return outcomes
