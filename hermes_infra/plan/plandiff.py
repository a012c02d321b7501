"""What a deploy would change in every file it manages, as unified diffs between the host's
content (the facts) and the plan's, secrets masked: what `up --dry` and `-- --diff` print
(like `ansible --check --diff`). Pure: a plan in, lines out.

Masking is by meaning, not by spotting secrets: in an env file only the values of keys known
not to be secret are shown (ports, flags, policies); every other value is `<redacted>`, marked
`(changed)` when it changes. `config.yaml` is compared as parsed (Hermes reformats it) with the
values of secret-looking keys masked. Comments and stray lines of an env file are not shown (an
old key may sit in a comment). Text from a data dir is the agent's: every line printed goes
through `_safe` (no escape sequences reach the terminal).
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Any

import yaml

from hermes_infra.plan import agentfiles, configfile, envfile, sshd, tlsproxy
from hermes_infra.plan.hostplan import DataFilePlan, HostPlan, RootFilePlan, fstab_line

REDACTED = "<redacted>"
CHANGED = "<redacted> (changed)"
PLAIN_ENV = re.compile(
    r"API_SERVER_(ENABLED|HOST|PORT|MODEL_NAME|CORS_ORIGINS)|HERMES_SKIP_CONFIG_MIGRATION"
    r"|HERMES_DASHBOARD(_HOST|_PORT)?|WEIXIN_(DM_POLICY|GROUP_POLICY|ALLOW_ALL_USERS)|HERMES_TIMEOUT_MS|AUTO_REPLY")
"""Env keys whose values are settings, never secrets: shown as they are."""
SECRET_NAME = re.compile(r"(?i)(key|token|secret|passw(or)?d|passphrase|hash|credentials?|auth|cookie|private)")
CONTEXT = 2
MAX_LINE = 300


def _safe(line: str) -> str:
    text = "".join(ch if ch.isprintable() or ch == " " else "?" for ch in line)
    return text if len(text) <= MAX_LINE else text[: MAX_LINE - 1] + "~"


def _unified(path: str, old: list[str] | None, new: list[str] | None) -> list[str]:
    before = f"{path} (on the host)" if old is not None else "/dev/null (missing on the host)"
    after = f"{path} (planned)" if new is not None else "/dev/null (removed)"
    lines = list(difflib.unified_diff(old or [], new or [], before, after, n=CONTEXT, lineterm=""))
    return [_safe(line) for line in lines]


def _env_lines(text: str | None, other: dict[str, str], plain: bool) -> list[str]:
    """An env file as it may be shown: assignments (values masked unless `PLAIN_ENV`), comments
    and anything else replaced by a placeholder; `other`: the other side's values, to mark a
    masked value that changes."""
    values = envfile.parse(text or "")
    shown = []
    for line in (text or "").splitlines():
        stripped = line.strip()
        match = envfile._LINE.match(line)
        if not stripped:
            shown.append("")
        elif stripped == envfile.MANAGED_HEADER:
            shown.append(stripped)
        elif match and not stripped.startswith("#"):
            key = match.group(1)
            if plain and PLAIN_ENV.fullmatch(key):
                shown.append(f"{key}={values.get(key, '')}")
            elif key in other and other[key] != values.get(key):
                shown.append(f"{key}={CHANGED}")
            else:
                shown.append(f"{key}={REDACTED}")
        else:
            shown.append("# <comment or other line, not shown>")
    return shown


def env_diff(path: str, current: str | None, planned: str | None, plain: bool = True) -> list[str]:
    old, new = envfile.parse(current or ""), envfile.parse(planned or "")
    # Only the planned side marks a change: the diff then shows `- KEY=<redacted>` and
    # `+ KEY=<redacted> (changed)`, and a value that stays masks to the same line on both sides.
    old_lines = _env_lines(current, {}, plain) if current is not None else None
    new_lines = _env_lines(planned, old, plain) if planned is not None else None
    return _unified(path, old_lines, new_lines)


def _masked_tree(value: Any, other: Any, secret: bool = False) -> Any:
    if isinstance(value, dict):
        return {key: _masked_tree(item, other.get(key) if isinstance(other, dict) else None,
                                  secret or (isinstance(key, str) and bool(SECRET_NAME.search(key))))
                for key, item in value.items()}
    if secret:
        return CHANGED if other is not None and other != value else REDACTED
    if isinstance(value, list):
        return [_masked_tree(item, None) for item in value]
    return value


def _yaml_lines(tree: dict) -> list[str]:
    return yaml.safe_dump(tree, sort_keys=False, default_flow_style=False, allow_unicode=True).splitlines()


def config_diff(path: str, current: str | None, planned: str) -> list[str]:
    try:
        old = configfile.load(current) if current is not None else None
    except configfile.ConfigYamlError:
        return [f"{path}: not valid YAML on the host (not shown)"]
    new = configfile.load(planned)
    old_lines = _yaml_lines(_masked_tree(old, {})) if old is not None else None
    return _unified(path, old_lines, _yaml_lines(_masked_tree(new, old or {})))


def _is_env_file(file: RootFilePlan) -> bool:
    return file.secret or file.path.endswith(".env")


def root_file_diff(file: RootFilePlan) -> list[str]:
    lines: list[str] = []
    current = file.current["text"].text if file.current is not None else None
    if file.content_changed:
        if _is_env_file(file):
            lines += env_diff(file.path, current, file.content, plain=False)
        else:
            lines += _unified(file.path, current.splitlines() if current is not None else None,
                              file.content.splitlines())
    if file.meta_changed:
        meta = file.current
        lines.append(_safe(f"{file.path}: owner {meta['uid']}:{meta['gid']} mode {meta['mode']} "
                           f"-> 0:0 mode {file.mode.rjust(4, '0')}"))
    return lines


def data_file_diff(file: DataFilePlan) -> list[str]:
    lines: list[str] = []
    if file.content_changed:
        if file.name == ".env":
            lines += env_diff(file.path, file.current, file.content)
        else:
            lines += config_diff(file.path, file.current, file.content)
    if file.meta_changed and file.owner is not None:
        uid, gid, mode = file.owner
        lines.append(f"{file.path}: owner {uid}:{gid} mode {mode} -> {file.uid}:{file.gid} mode {file.mode}")
    return lines


def _root_files(plan: HostPlan) -> Iterable[RootFilePlan]:
    docker = plan.docker
    yield from (docker.daemon_json, docker.apt_conf)
    if docker.sources is not None:
        yield docker.sources
    if plan.swap.sysctl_file is not None:
        yield plan.swap.sysctl_file
    yield from plan.companion_env_files
    yield from (plan.manifest, plan.managed_keys)
    yield from (project.file for project in plan.projects)
    yield plan.deployed
    yield from plan.backup_timer.files
    if plan.firewall is not None and plan.firewall.enabled:
        yield from (plan.firewall.ruleset, plan.firewall.unit)
    if plan.sshd is not None and plan.sshd.enabled:
        yield plan.sshd.dropin
    if plan.unattended is not None:
        yield from plan.unattended.files
    if plan.tls_proxy is not None and plan.tls_proxy.enabled:
        yield plan.tls_proxy.caddyfile


def _fstab(plan: HostPlan) -> list[str]:
    swap, line = plan.swap, fstab_line(plan.swap.path)
    if swap.size_bytes and not swap.current.get("in_fstab"):
        return ["/etc/fstab: + " + _safe(line)]
    if not swap.size_bytes and swap.current.get("in_fstab"):
        return ["/etc/fstab: - " + _safe(line)]
    return []


def plan_diff(plan: HostPlan) -> list[str]:
    """Every managed file's change, in deploy order; empty when nothing would change."""
    lines: list[str] = []
    for file in _root_files(plan):
        lines += root_file_diff(file)
    lines += _fstab(plan)
    for gateway in plan.gateways:
        lines += data_file_diff(gateway.env) + data_file_diff(gateway.config)
    gone = plan.firewall.present if plan.firewall is not None and not plan.firewall.enabled else ()
    if plan.sshd is not None and plan.sshd.present and not plan.sshd.enabled:
        gone += (sshd.DROPIN_PATH,)
    if plan.unattended is not None:
        gone += plan.unattended.remove
    if plan.tls_proxy is not None and plan.tls_proxy.present and not plan.tls_proxy.enabled:
        gone += (tlsproxy.CADDYFILE,)
    for path in (*plan.retire.files, *(p for p in plan.backup_timer.present if plan.backup_timer.calendar is None),
                 *gone):
        lines.append(_safe(f"{path}: removed"))
    lines += [_safe(line) for line in agentfiles.agent_drift(plan.agent)]
    return lines
