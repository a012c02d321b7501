"""What a host is now, read in one SSH round trip (plus pyinfra's own OS, memory, CPU and
image facts).

pyinfra 3 does not cache facts: every `host.get_fact` is a command on the host. The deploy
therefore asks once, up front, for everything the plan needs; operations never read the host
again. Files under data dirs are read with `safeio` (as their owner, never followed); files
that only root can write (compose files, companion env files, daemon.json) are read as root.

Every command here succeeds on a bare host (no Docker yet, files missing): a fact describes
absence, it never fails on it, so a dry run on a fresh VPS works.
"""
from __future__ import annotations

import base64
import json
import shlex
from dataclasses import dataclass, field

from pyinfra.api import FactBase
from pyinfra.facts.hardware import Cpus, Memory
from pyinfra.facts.server import OsRelease

from hermes_infra import safeio

SECTION = "@@hermes-infra-section"


@dataclass(frozen=True)
class DataDirRequest:
    label: str
    directory: str
    uid: int
    gid: int


@dataclass(frozen=True)
class ProbeRequest:
    label: str
    url: str
    data_dir: DataDirRequest


@dataclass(frozen=True)
class StateRequest:
    """Everything the plan wants to know about one host; built from settings alone."""

    data_dirs: tuple[DataDirRequest, ...] = ()
    root_files: tuple[str, ...] = ()
    projects: tuple[tuple[str, str], ...] = ()
    """(project name, directory) of each compose project."""
    swap_path: str = "/swapfile"
    probes: tuple[ProbeRequest, ...] = ()
    packages: tuple[str, ...] = ()
    image_ref: str | None = None


class RootFile:
    """A root-owned file's text that must not show up in `--debug-facts` or a traceback."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return f"<file text, {len(self.text)} characters, not shown>"

    __str__ = __repr__


def key_header_script(data_dir: DataDirRequest) -> str:
    """`Authorization: Bearer <key>` from the data dir's `.env`, for `curl -H @-`.

    Read as the data dir's owner without following links; through a pipe the key never
    becomes a process argument. The deploy writes the key line in canonical form
    (`API_SERVER_KEY=<key>`, unquoted), so this extraction and envfile.parse agree.
    """
    read = (f"( {safeio.enter(data_dir.directory)} && {safeio.as_owner(data_dir.uid, data_dir.gid)} "
            f"dd if=.env iflag=nofollow,nonblock bs=65536 status=none 2>/dev/null )")
    return f"{read} | sed -n 's/^API_SERVER_KEY=//p' | tail -n 1 | sed 's/^/Authorization: Bearer /'"


CURL = "curl -s -o /dev/null -w '%{http_code}\\n' --max-time 5"


def _section(name: str) -> str:
    return f"echo '{SECTION} {name}'"


# pyinfra's own facts, run inside the one batched command and parsed by their own classes.
PYINFRA_FACTS = {"os_release": OsRelease, "memory": Memory, "cpus": Cpus}


# Sections without secrets whose commands are slow on a small VPS (each docker CLI call starts
# a Go binary): run side by side while the data-dir reads and probes run in the foreground.
BACKGROUND = ("pyinfra", "service", "aptlists", "image", "packages", "aptlock", "docker")


def state_sections(request: StateRequest) -> list[tuple[str, list[str]]]:
    sections = [("whoami", ['echo "${SUDO_USER:-$(id -un)}"', 'getent passwd "${SUDO_USER:-$(id -un)}" | cut -d: -f6',
                            "uname -m"])]
    for name, fact in PYINFRA_FACTS.items():
        sections.append((f"pyinfra {name}", [f"{fact().command()} 2>/dev/null"]))
    sections += [("service docker", ["systemctl is-enabled docker 2>/dev/null || true",
                                     "systemctl is-active docker 2>/dev/null || true"]),
                 ("service backup-timer", ["systemctl is-enabled hermes-infra-backup.timer 2>/dev/null || true",
                                           "systemctl is-active hermes-infra-backup.timer 2>/dev/null || true"]),
                 ("aptlists", ["date +%s; stat -c %Y /var/lib/apt/periodic/update-success-stamp "
                               "/var/lib/apt/lists/partial 2>/dev/null | sort -n | tail -n 1"])]
    if request.image_ref:
        sections.append(("image", ["command -v docker >/dev/null 2>&1 && "
                                   f"docker image inspect {shlex.quote(request.image_ref)} 2>/dev/null || true"]))
    for item in request.data_dirs:
        quoted = shlex.quote(item.directory)
        parent = shlex.quote(item.directory.rsplit("/", 1)[0] or "/")
        sections.append((f"datadir {item.label}", [
            f"LC_ALL=C stat -c '%F|%u|%g|%a' -- {quoted} 2>/dev/null || echo 'missing|0|0|0'",
            f"LC_ALL=C stat -c '%F|%u|%g|%a' -- {parent} 2>/dev/null || echo 'missing|0|0|0'",
            f"[ -d {quoted} ] && [ ! -L {quoted} ] && find {quoted} -xdev \\( ! -uid {item.uid} -o ! -gid {item.gid} \\) "
            "-print -quit 2>/dev/null | grep -q . && echo foreign || echo clean",
            safeio.read_script(item.directory, [".env", "config.yaml"], item.uid, item.gid, item.label),
        ]))
    for path in request.root_files:
        quoted = shlex.quote(path)
        sections.append((f"file {path}", [
            f"if [ -f {quoted} ] && [ ! -L {quoted} ]; then stat -c '%u|%g|%a' {quoted}; base64 -w0 {quoted}; echo; "
            "else echo missing; fi"]))
    sections.append(("swap", [
        f"stat -c %s {shlex.quote(request.swap_path)} 2>/dev/null || echo -1",
        f"awk 'NR>1 {{print $1}}' /proc/swaps | grep -qxF {shlex.quote(request.swap_path)} && echo active || echo inactive",
        f"awk -v p={shlex.quote(request.swap_path)} '$1 == p && $3 == \"swap\"' /etc/fstab | grep -q . && echo fstab || echo nofstab",
        "cat /proc/sys/vm/swappiness"]))
    if request.packages:
        names = " ".join(shlex.quote(name) for name in request.packages)
        sections.append(("packages", [f"dpkg-query -W -f '${{Package}} ${{db:Status-Status}}\\n' {names} 2>/dev/null || true"]))
    sections.append(("aptlock", [
        "for f in /var/lib/dpkg/lock-frontend /var/lib/dpkg/lock /var/lib/apt/lists/lock /var/cache/apt/archives/lock; do "
        "[ -e \"$f\" ] || continue; i=$(stat -c %i \"$f\"); "
        "awk -v i=\":$i\" '$2 == \"POSIX\" && substr($6, length($6) - length(i) + 1) == i {print $5}' /proc/locks; "
        "done | head -n 1 | while read -r pid; do echo \"$pid $(cat /proc/$pid/comm 2>/dev/null)\"; done"]))
    sections.append(("docker", ["command -v docker >/dev/null 2>&1 && echo installed || echo missing",
                                "command -v docker >/dev/null 2>&1 && docker ps -a --filter label=com.docker.compose.project "
                                "--format '{{json .}}' 2>/dev/null || true"]))
    for probe in request.probes:
        sections.append((f"probe {probe.label}", [
            "if command -v curl >/dev/null 2>&1; then "
            f"{CURL} {shlex.quote(probe.url + '/health')} || true; "
            f"{CURL} {shlex.quote(probe.url + '/v1/models')} || true; "
            f"{key_header_script(probe.data_dir)} | {CURL} -H @- {shlex.quote(probe.url + '/v1/models')} || true; "
            "else echo 000; echo 000; echo 000; fi"]))
    return sections


def _run_section(name: str, commands: list[str]) -> str:
    # Each command in its own subshell: one failing read must not hide the others.
    return "; ".join([_section(name)] + [f"( {command} )" for command in commands])


def state_command(request: StateRequest) -> str:
    sections = state_sections(request)
    background = [(n, c) for n, c in sections if n.split(" ", 1)[0] in BACKGROUND]
    foreground = [(n, c) for n, c in sections if n.split(" ", 1)[0] not in BACKGROUND]
    # The temp dir is root's, 0700 (mktemp), and holds no secret: only background sections.
    parallel = " ".join(f"( {_run_section(n, c)} ) > \"$d/{i}\" 2>/dev/null &" for i, (n, c) in enumerate(background))
    inline = "; ".join(_run_section(n, c) for n, c in background)
    return (f"if d=$(mktemp -d 2>/dev/null); then {parallel} else d=; {inline}; fi; "
            + "; ".join(_run_section(n, c) for n, c in foreground)
            + '; if [ -n "$d" ]; then wait; cat "$d"/* 2>/dev/null; rm -rf "$d"; fi; true')


@dataclass
class HostState:
    """The parsed answer: what the plan compares the settings with."""

    ssh_user: str = "root"
    ssh_home: str = "/root"
    machine: str = ""
    data_dirs: dict[str, dict] = field(default_factory=dict)
    root_files: dict[str, dict | None] = field(default_factory=dict)
    swap: dict = field(default_factory=lambda: {"size_bytes": -1, "active": False, "in_fstab": False, "swappiness": 60})
    packages: dict[str, str] = field(default_factory=dict)
    apt_lock_holder: str | None = None
    docker_installed: bool = False
    containers: dict[str, dict] = field(default_factory=dict)
    probes: dict[str, dict[str, str]] = field(default_factory=dict)
    os_release: dict = field(default_factory=dict)
    memory_mb: int = 0
    cpus: int = 1
    image_inspect: list | None = None
    docker_enabled: bool = False
    docker_active: bool = False
    backup_timer_enabled: bool = False
    backup_timer_active: bool = False
    apt_lists_age: int | None = None
    """Seconds since apt's lists were last updated (None: never)."""

    def __repr__(self) -> str:
        return f"<HostState: {len(self.data_dirs)} data dirs, {len(self.root_files)} files, contents not shown>"


def _container(record: dict) -> tuple[str, dict]:
    labels = dict(item.split("=", 1) for item in record.get("Labels", "").split(",") if "=" in item)
    name = record.get("Names", "")
    return name, {"id": record.get("ID"), "state": record.get("State"), "name": name,
                  "status": record.get("Status", ""),
                  "project": labels.get("com.docker.compose.project"),
                  "service": labels.get("com.docker.compose.service", name),
                  "config_hash": labels.get("com.docker.compose.config-hash"),
                  "image": record.get("Image"), "image_identity": labels.get("io.hermes-infra.image-identity")}


def parse_state(lines: list[str]) -> HostState:
    sections: dict[str, list[str]] = {}
    current = None
    for line in lines:
        if line.startswith(SECTION + " "):
            current = line[len(SECTION) + 1:].strip()
            sections[current] = []
        elif current is not None:
            sections[current].append(line.rstrip("\n"))
    state = HostState()
    who = sections.get("whoami", []) + ["", "", ""]
    state.ssh_user, state.ssh_home, state.machine = who[0] or "root", who[1] or "/root", who[2]
    for name, body in sections.items():
        kind, _, rest = name.partition(" ")
        if kind == "datadir":
            meta = [_meta4(line) for line in body[:2]] + [_meta4("missing|0|0|0")] * 2
            reads = safeio.parse_reads(body[3:]).get(rest, {"dir": "missing", "files": {}})
            state.data_dirs[rest] = {"meta": meta[0], "parent": meta[1],
                                     "foreign": (body[2:3] or ["clean"])[0].strip() == "foreign",
                                     "dir": reads["dir"], "files": reads["files"]}
        elif kind == "file":
            if not body or body[0].strip() == "missing":
                state.root_files[rest] = None
            else:
                uid, gid, mode = body[0].strip().split("|")
                text = base64.b64decode("".join(body[1:]).strip()).decode("utf-8", errors="surrogateescape")
                state.root_files[rest] = {"uid": int(uid), "gid": int(gid), "mode": mode.rjust(4, "0"),
                                          "text": RootFile(text)}
        elif kind == "swap":
            values = [line.strip() for line in body] + ["-1", "inactive", "nofstab", "60"]
            state.swap = {"size_bytes": int(values[0] or -1), "active": values[1] == "active",
                          "in_fstab": values[2] == "fstab", "swappiness": int(values[3] or 60)}
        elif kind == "packages":
            for line in body:
                parts = line.split()
                if len(parts) >= 2:
                    state.packages[parts[0]] = parts[1]
        elif kind == "aptlock":
            holder = "".join(body).strip()
            state.apt_lock_holder = holder or None
        elif kind == "docker":
            state.docker_installed = bool(body) and body[0].strip() == "installed"
            for line in body[1:]:
                line = line.strip()
                if line.startswith("{"):
                    name, info = _container(json.loads(line))
                    state.containers[name] = info
        elif kind == "pyinfra":
            value = PYINFRA_FACTS[rest]().process([line for line in body if line.strip()]) if any(body) else None
            if rest == "os_release":
                state.os_release = value or {}
            elif rest == "memory":
                state.memory_mb = int(value or 0)
            else:
                state.cpus = int(value or 1)
        elif kind == "service":
            values = [line.strip() for line in body] + ["", ""]
            enabled, active = values[0] == "enabled", values[1] == "active"
            if rest == "backup-timer":
                state.backup_timer_enabled, state.backup_timer_active = enabled, active
            else:
                state.docker_enabled, state.docker_active = enabled, active
        elif kind == "aptlists":
            values = [line.strip() for line in body if line.strip()]
            if len(values) >= 2:
                state.apt_lists_age = int(values[0]) - int(values[1])
        elif kind == "image":
            text = "".join(body).strip()
            try:
                state.image_inspect = json.loads(text) if text else None
            except json.JSONDecodeError:
                state.image_inspect = None
        elif kind == "probe":
            codes = [line.strip() or "000" for line in body] + ["000"] * 3
            state.probes[rest] = {"health": codes[0], "anonymous": codes[1], "models": codes[2]}
    return state


def _meta4(line: str) -> dict:
    kind, uid, gid, mode = (line.strip().split("|") + ["0"] * 4)[:4]
    return {"kind": safeio.KIND_NAMES.get(kind, "other"), "uid": int(uid or 0), "gid": int(gid or 0),
            "mode": mode.rjust(4, "0")}


class HermesHostState(FactBase):
    """Everything hermes-infra's plan needs from one host, in one command (see module doc)."""

    def command(self, request: StateRequest) -> str:
        return state_command(request)

    def process(self, output) -> HostState:
        return parse_state(list(output))
