"""What a check sees: the testinfra `host`, the expected settings, and facts read once per run.

Facts that several controls share (the containers' `docker inspect`, `docker info`, the
host's RAM and cores) are read with one command and cached here, so a run costs a few dozen
commands over one SSH connection however many controls use them.
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any

from hermes_infra.checks.registry import CannotCheck
from hermes_infra.settings import (
    PLACEHOLDER_KEYS,
    PLACEHOLDER_WORDS,
    CompanionSettings,
    EffectiveLimits,
    GatewaySettings,
    HostResources,
    HostSettings,
    derive_limits,
)
from hermes_infra.sizes import parse_size

MIB = 1024 * 1024
# compose.companion_service gives every companion this pids limit.
COMPANION_PIDS_LIMIT = 512


@dataclass(frozen=True)
class _Failed:
    error: Exception


@dataclass(frozen=True)
class Subject:
    """What one control instance is about: the host, a gateway profile or a companion."""

    kind: str  # "host" | "gateway" | "companion"
    name: str = ""
    gateway: GatewaySettings | None = None
    companion: CompanionSettings | None = None

    @property
    def label(self) -> str:
        return "host" if self.kind == "host" else f"{self.kind}:{self.name}"

    @property
    def container(self) -> str:
        if self.gateway is not None:
            return self.gateway.service_name
        if self.companion is not None:
            return self.companion.name
        raise ValueError("the host has no container")


@dataclass(frozen=True)
class ContainerExpectation:
    name: str
    image: str
    allow_latest: bool
    restart: str
    memory_bytes: int
    cpus: float
    pids: int


def subjects_for(scope: str, settings: HostSettings) -> list[Subject]:
    gateways = [Subject("gateway", g.name, gateway=g) for g in settings.gateways]
    companions = [Subject("companion", c.name, companion=c) for c in settings.companions]
    return {"host": [Subject("host")], "gateway": gateways, "container": gateways + companions,
            "companion": companions}[scope]


class HostContext:
    """One host under check. Everything is read lazily and at most once."""

    def __init__(self, host, settings: HostSettings, name: str | None = None):
        self.host = host
        self.settings = settings
        self.name = name or host.backend.get_hostname()
        self._cache: dict[str, Any] = {}

    # ----------------------------------------------------------------- generic helpers
    def _cached(self, key: str, compute):
        """compute() once; a failure is remembered too (one broken daemon is one command, not twenty)."""
        if key not in self._cache:
            try:
                self._cache[key] = compute()
            except Exception as error:  # noqa: BLE001 - re-raised below, for every caller
                self._cache[key] = _Failed(error)
        value = self._cache[key]
        if isinstance(value, _Failed):
            raise value.error
        return value

    def run(self, command: str, *args: str):
        return self.host.run(command, *args)

    # ----------------------------------------------------------------------- facts
    def resources(self) -> HostResources:
        def compute():
            out = self.run("awk '/^MemTotal:/ {print $2 * 1024}' /proc/meminfo; nproc")
            lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
            if out.rc != 0 or len(lines) < 2:
                raise CannotCheck(f"cannot read RAM and CPUs of the host: {out.stderr.strip()}")
            return HostResources(memory_bytes=int(float(lines[0])), cpus=int(lines[1]))

        return self._cached("resources", compute)

    def limits(self) -> dict[str, EffectiveLimits]:
        return self._cached("limits", lambda: derive_limits(self.settings, self.resources()))

    def expectation(self, subject: Subject) -> ContainerExpectation:
        if subject.gateway is not None:
            gateway = subject.gateway
            limit = self.limits()[gateway.name]
            return ContainerExpectation(
                name=gateway.service_name, image=self.settings.image.ref,
                allow_latest=self.settings.image.allow_latest, restart=gateway.restart,
                memory_bytes=limit.memory_bytes - limit.memory_bytes % MIB, cpus=limit.cpus, pids=limit.pids)
        companion = subject.companion
        memory = parse_size(companion.memory)
        return ContainerExpectation(
            name=companion.name, image=companion.image, allow_latest=False, restart=companion.restart,
            memory_bytes=memory - memory % MIB, cpus=companion.cpus, pids=COMPANION_PIDS_LIMIT)

    def container_names(self) -> list[str]:
        names = [g.service_name for g in self.settings.gateways]
        return names + [c.name for c in self.settings.companions]

    def inspect_all(self) -> dict[str, dict]:
        """`docker inspect` of every container the settings name, in one command."""

        def compute():
            names = self.container_names()
            out = self.run("docker inspect --type container -- " + " ".join(shlex.quote(n) for n in names))
            # Missing containers are "No such object" (a finding); anything else means we cannot tell.
            problems = [line for line in out.stderr.splitlines() if line.strip() and "No such" not in line]
            if out.rc != 0 and problems:
                raise CannotCheck(f"`docker inspect` failed: {' '.join(problems)[:300]}"
                                   + (" (run the check as root or with --sudo)" if "permission denied" in
                                      out.stderr.lower() else ""))
            try:
                records = json.loads(out.stdout or "[]")
            except json.JSONDecodeError as error:
                raise CannotCheck(f"`docker inspect` printed no JSON: {error}") from None
            return {record.get("Name", "").lstrip("/"): record for record in records}

        return self._cached("inspect", compute)

    def inspect(self, container: str) -> dict | None:
        return self.inspect_all().get(container)

    def docker_info(self) -> dict:
        def compute():
            out = self.run("docker info --format '{{json .}}'")
            info = json.loads(out.stdout) if out.rc == 0 and out.stdout.strip().startswith("{") else {}
            errors = info.get("ServerErrors") or ([] if info else [(out.stderr or out.stdout).strip()])
            if errors:
                raise CannotCheck(f"`docker info` cannot reach the daemon: {' '.join(errors)[:300]}")
            return info

        return self._cached("docker_info", compute)

    def require_access(self, path: str) -> None:
        """Raise (an `error`, not a finding) when `path` cannot be examined for lack of permission."""
        out = self.run("stat -c %%F %s", path)
        if out.rc != 0 and "permission denied" in out.stderr.lower():
            raise CannotCheck(f"permission denied on {path}: run the check as root or with --sudo")
        if out.rc == 0 and "regular" in out.stdout and self.run("test -r %s", path).rc != 0:
            raise CannotCheck(f"cannot read {path}: run the check as root or with --sudo")

    def env_keys(self, env_path: str) -> set[str] | None:
        """Names (never values) of the keys set in a `.env`; None when the file is missing."""

        def compute():
            out = self.run("test -f %s && sed -n 's/^[[:space:]]*\\(export[[:space:]]\\{1,\\}\\)\\{0,1\\}"
                           "\\([A-Za-z_][A-Za-z0-9_]*\\)[[:space:]]*=[[:space:]]*[^[:space:]].*$/\\2/p' %s",
                           env_path, env_path)
            if out.rc != 0:
                return None
            return {line.strip() for line in out.stdout.splitlines() if line.strip()}

        return self._cached(f"env_keys:{env_path}", compute)

    # ---------------------------------------------------------------------- HTTP
    def http_status(self, url: str, *, key_from_env: str | None = None) -> str:
        """Status code of `GET url` sent from the host, without an `Origin` header.

        With `key_from_env`, the API key is read on the host from that `.env` and reaches curl
        through a pipe: it is never a process argument and never comes back over SSH.
        """
        from hermes_infra.facts import key_header_pipe

        source = key_header_pipe(key_from_env) if key_from_env else "true"
        quoted = shlex.quote(url)
        script = (
            f"if command -v curl >/dev/null 2>&1; then "
            f"{source} | curl -s -o /dev/null -w '%{{http_code}}' --max-time 10 -H @- {quoted} || true; "
            f"elif command -v python3 >/dev/null 2>&1; then "
            f"{source} | python3 -c {shlex.quote(PYTHON_STATUS)} {quoted}; "
            "else echo nohttpclient; fi"
        )
        out = self.run(script)
        return (out.stdout.strip() or "000")[-12:]

    def api_key_facts(self, env_path: str, want_digest: bool) -> dict[str, Any]:
        """What `settings.check_api_key` looks at, about the API key in `.env`: its length, how
        many distinct characters it has, whether it is (or contains) a placeholder; and, if
        asked, its SHA-256 to compare with a configured key.

        The key is read into a shell variable on the host and only these facts come back; it
        is never printed and never a process argument (printf and case are shell builtins).
        """
        exact = "|".join(sorted(shlex.quote(p) for p in PLACEHOLDER_KEYS))
        words = "|".join(sorted(f"*{shlex.quote(w)}*" for w in PLACEHOLDER_WORDS)) or "''"
        digest = 'printf "%s" "$key" | sha256sum | cut -d" " -f1' if want_digest else "echo -"
        script = (
            f"f={shlex.quote(env_path)}; "
            'if [ ! -f "$f" ]; then echo missing; exit 0; fi; '
            "key=$(sed -n 's/^API_SERVER_KEY=//p' \"$f\" | tail -n 1 | tr -d \"\\\"'\"); "
            'if [ -z "$key" ]; then echo unset; exit 0; fi; '
            'echo present; printf "%s" "$key" | wc -c; '
            "lower=$(printf '%s' \"$key\" | tr 'A-Z' 'a-z' | sed 's/^[[:space:]]*//;s/[[:space:]]*$//'); "
            "printf '%s' \"$lower\" | fold -w1 | sort -u | wc -l; "
            f'case "$lower" in {exact}) echo exact;; {words}) echo word;; *) echo ok;; esac; '
            f"{digest}"
        )
        out = self.run(script)
        lines = [line.strip() for line in out.stdout.splitlines()]
        if not lines or lines[0] != "present" or len(lines) < 5:
            return {"state": lines[0] if lines and lines[0] in ("missing", "unset") else "unreadable"}
        return {"state": "present", "length": int(lines[1]), "distinct": int(lines[2]),
                "placeholder": lines[3] in ("exact", "word"), "sha256": lines[4] if want_digest else None}


# Reads optional header lines from stdin (as curl -H @- does), prints the status code.
PYTHON_STATUS = """
import sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1])
for line in sys.stdin.read().splitlines():
    if ':' in line:
        name, value = line.split(':', 1)
        req.add_header(name.strip(), value.strip())
try:
    print(urllib.request.urlopen(req, timeout=10).status)
except urllib.error.HTTPError as error:
    print(error.code)
except Exception:
    print('000')
""".strip()
