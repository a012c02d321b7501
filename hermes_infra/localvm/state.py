"""The on-disk record of one VM (`vms/<name>/state.json`).

It is what lets a later process (`hermes-infra try`, `try --destroy`, a crashed test's
cleanup) find a VM it did not start: where its disk and key are, which pid to signal,
which host ports reach it. Written atomically so a reader never sees half a file.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_FILE = "state.json"
STATE_VERSION = 1


@dataclass
class VMState:
    name: str
    pid: int | None
    ssh_port: int
    #: guest port -> host port (127.0.0.1)
    forwards: dict[int, int]
    key_path: Path
    overlay: Path
    known_hosts: Path | None = None
    kernel: Path | None = None
    initrd: Path | None = None
    base_image: Path | None = None
    recipe_hash: str = ""
    memory_mb: int = 0
    cpus: int = 0
    accel: str = ""
    started_at: float = 0.0
    version: int = field(default=STATE_VERSION)

    def to_json(self) -> str:
        data: dict[str, Any] = asdict(self)
        for key, value in data.items():
            if isinstance(value, Path):
                data[key] = str(value)
        # JSON object keys are strings; keep ports as ints on the Python side.
        data["forwards"] = {str(guest): host for guest, host in self.forwards.items()}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> VMState:
        data = json.loads(text)
        paths = ("key_path", "overlay", "known_hosts", "kernel", "initrd", "base_image")
        for key in paths:
            if data.get(key) is not None:
                data[key] = Path(data[key])
        data["forwards"] = {int(guest): int(host) for guest, host in data.get("forwards", {}).items()}
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def save_state(directory: Path, state: VMState) -> Path:
    path = directory / STATE_FILE
    tmp = directory / f".{STATE_FILE}.{os.getpid()}.tmp"
    tmp.write_text(state.to_json())
    os.replace(tmp, path)
    return path


def load_state(directory: Path) -> VMState:
    return VMState.from_json((directory / STATE_FILE).read_text())
