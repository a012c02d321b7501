"""Small pyinfra facts hermes-infra decides with.

Every command here must succeed on a bare host (no Docker yet, files missing): a fact
describes absence, it never fails on it, so a dry run on a fresh VPS works.
"""
from __future__ import annotations

import base64
import json
import shlex

from pyinfra.api import FactBase


def key_header_pipe(env_path: str) -> str:
    """Shell printing `Authorization: Bearer <key>` from a .env, for `curl -H @-`.

    Through a pipe the key never becomes a process argument (visible in `ps` to every user).
    """
    return (f"sed -n 's/^API_SERVER_KEY=//p' {shlex.quote(env_path)} 2>/dev/null | tail -n 1 "
            "| tr -d \"\\\"'\" | sed 's/^/Authorization: Bearer /'")


class HostResources(FactBase):
    """RAM in bytes and online CPUs: the budget container limits are derived from."""

    def command(self) -> str:
        return "awk '/^MemTotal:/ {print $2 * 1024}' /proc/meminfo; nproc"

    def process(self, output):
        lines = [line.strip() for line in output if line.strip()]
        return {"memory_bytes": int(float(lines[0])), "cpus": int(lines[1])}


class DebianRelease(FactBase):
    """ID and VERSION_CODENAME from /etc/os-release (the Docker repo suite depends on it)."""

    def command(self) -> str:
        return "cat /etc/os-release 2>/dev/null || true"

    def process(self, output):
        values = {}
        for line in output:
            if "=" in line:
                key, value = line.split("=", 1)
                values[key.strip()] = value.strip().strip('"')
        return {"id": values.get("ID", ""), "codename": values.get("VERSION_CODENAME", ""),
                "version_id": values.get("VERSION_ID", "")}


class FileText:
    """A file's text that must not show up in `--debug-facts` or a traceback (it may be a .env)."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return f"<file text, {len(self.text)} characters, not shown>"

    __str__ = __repr__


class RawFile(FactBase):
    """Exact content of a file (None when missing). Read as base64 so bytes survive the shell.

    Used for files that may hold secrets (`.env`): fact output is never printed by pyinfra at
    normal verbosity, and the content never leaves the control machine's memory.
    """

    def command(self, path: str) -> str:
        quoted = shlex.quote(path)
        return f"if [ -f {quoted} ]; then echo present; base64 -w0 {quoted}; echo; else echo missing; fi"

    def process(self, output):
        lines = list(output)
        if not lines or lines[0].strip() != "present":
            return None
        encoded = "".join(lines[1:]).strip()
        return FileText(base64.b64decode(encoded).decode("utf-8", errors="surrogateescape"))


class SwapState(FactBase):
    """The swap file at `path`: size on disk, whether active, whether in fstab, swappiness."""

    def command(self, path: str) -> str:
        quoted = shlex.quote(path)
        return (
            f"stat -c %s {quoted} 2>/dev/null || echo -1; "
            f"awk 'NR>1 {{print $1}}' /proc/swaps | grep -qxF {quoted} && echo active || echo inactive; "
            f"awk '$1 == \"{path}\" && $3 == \"swap\"' /etc/fstab | grep -q . && echo fstab || echo nofstab; "
            "cat /proc/sys/vm/swappiness"
        )

    def process(self, output):
        lines = [line.strip() for line in output]
        return {
            "size_bytes": int(lines[0]),
            "active": lines[1] == "active",
            "in_fstab": lines[2] == "fstab",
            "swappiness": int(lines[3]),
        }


class DockerImageId(FactBase):
    """ID (`sha256:...`) of a local image, or None when Docker or the image is missing."""

    def command(self, ref: str) -> str:
        return (f"command -v docker >/dev/null 2>&1 && docker image inspect --format '{{{{.Id}}}}' "
                f"{shlex.quote(ref)} 2>/dev/null || true")

    def process(self, output):
        lines = [line.strip() for line in output if line.strip()]
        return lines[0] if lines else None


class ComposeProject(FactBase):
    """A compose project: the inputs stamp of its last `up`, each container's state and config
    hash, and the hash compose computes for each service of the file on disk.

    Comparing the two hashes catches a container recreated by hand with other settings
    (no limits, other ports), which a stamp alone would miss.
    """

    def command(self, project: str, directory: str, stamp_path: str) -> str:
        quoted = shlex.quote(directory)
        return (
            f"cat {shlex.quote(stamp_path)} 2>/dev/null || echo; echo '---'; "
            "command -v docker >/dev/null 2>&1 && docker ps -a "
            f"--filter label=com.docker.compose.project={shlex.quote(project)} "
            "--format '{{json .}}' 2>/dev/null; echo '---'; "
            f"[ -f {quoted}/compose.yaml ] && command -v docker >/dev/null 2>&1 && cd {quoted} && "
            f"docker compose -p {shlex.quote(project)} -f compose.yaml config --hash '*' 2>/dev/null || true"
        )

    def process(self, output):
        sections: list[list[str]] = [[]]
        for line in output:
            if line.strip() == "---":
                sections.append([])
            else:
                sections[-1].append(line)
        sections += [[]] * (3 - len(sections))
        stamp = "".join(sections[0]).strip() or None
        containers = {}
        for line in sections[1]:
            line = line.strip()
            if not line:
                continue
            record = json.loads(line)
            labels = dict(
                item.split("=", 1) for item in record.get("Labels", "").split(",") if "=" in item
            )
            service = labels.get("com.docker.compose.service", record.get("Names", ""))
            containers[service] = {"id": record.get("ID"), "state": record.get("State"), "name": record.get("Names"),
                                   "config_hash": labels.get("com.docker.compose.config-hash")}
        hashes = {}
        for line in sections[2]:
            parts = line.split()
            if len(parts) == 2:
                hashes[parts[0]] = parts[1]
        return {"stamp": stamp, "containers": containers, "config_hashes": hashes}


class HealthProbe(FactBase):
    """HTTP status of GET /health (no Origin header) and of GET /v1/models with the key.

    The key is read on the host from the data dir's `.env` and given to curl through a pipe,
    so it never appears in a process argument list.
    """

    def command(self, url: str, env_path: str) -> str:
        curl = "curl -s -o /dev/null -w '%{http_code}\\n' --max-time 5"
        return (
            "command -v curl >/dev/null 2>&1 || { echo 000; echo 000; exit 0; }; "
            f"{curl} {shlex.quote(url + '/health')} || true; "
            f"{key_header_pipe(env_path)} | {curl} -H @- {shlex.quote(url + '/v1/models')} || true"
        )

    def process(self, output):
        codes = [line.strip() for line in output]
        codes += ["000"] * (2 - len(codes))
        return {"health": codes[0] or "000", "models": codes[1] or "000"}


class FileMeta(FactBase):
    """Numeric owner and octal mode of a path (`None` when missing).

    Numeric, because the container's uid 10000 has no name on the host.
    """

    def command(self, path: str) -> str:
        return f"stat -c '%u %g %a %F' {shlex.quote(path)} 2>/dev/null || true"

    def process(self, output):
        lines = [line.strip() for line in output if line.strip()]
        if not lines:
            return None
        uid, gid, mode, kind = lines[0].split(" ", 3)
        return {"uid": int(uid), "gid": int(gid), "mode": mode.rjust(4, "0"), "type": kind}


def read_text(path: str) -> str | None:
    """The current text of a file on the host being deployed (None when missing)."""
    from pyinfra import host

    # `-vvv` prints every fact's raw output; this one may be a .env full of secrets.
    state = host.state
    shown = state.print_fact_output
    state.print_fact_output = False
    try:
        found = host.get_fact(RawFile, path=path)
    finally:
        state.print_fact_output = shown
    return None if found is None else found.text


class ForeignOwnedFiles(FactBase):
    """Up to 20 paths under `path` not owned by uid:gid (files written into the data dir by
    root, e.g. by `docker exec` or an editor, which the gateway then cannot rewrite)."""

    def command(self, path: str, uid: int, gid: int) -> str:
        quoted = shlex.quote(path)
        return (f"[ -d {quoted} ] && find {quoted} -xdev \\( ! -uid {int(uid)} -o ! -gid {int(gid)} \\) "
                "-print 2>/dev/null | head -n 20 || true")

    def process(self, output):
        return [line for line in output if line.strip()]
