"""From pyinfra data (group_data, host data, --data) to validated HostSettings.

Errors come out as one line per problem: the setting's path, what is wrong and the fix.
Values of secret settings are never repeated in an error.
"""
from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError
from pyinfra.api.exceptions import PyinfraError

from hermes_infra.settings import HostSettings

SECTIONS = tuple(HostSettings.model_fields)
SECRET_PARTS = ("key", "token", "secret", "password", "env")


class SettingsError(PyinfraError, ValueError):
    """Settings that cannot be deployed; the message is meant for the operator as is.

    A PyinfraError, so a plain `pyinfra ... deploy.py` run prints it as one clean error.
    """


def deep_merge(base: Any, override: Any) -> Any:
    """Dicts merge key by key (override wins); anything else is replaced."""
    if isinstance(base, Mapping) and isinstance(override, Mapping):
        merged = dict(copy.deepcopy(base))
        for key, value in override.items():
            merged[key] = deep_merge(merged[key], value) if key in merged else copy.deepcopy(value)
        return merged
    return copy.deepcopy(override)


def _coerce(value: Any) -> Any:
    """`--data swap='{"size": "4G"}'` arrives as a string: accept JSON there."""
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def collect(layers: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Merge data layers given lowest priority first, keeping only hermes-infra sections."""
    raw: dict[str, Any] = {}
    for layer in layers:
        for key in SECTIONS:
            if key in layer:
                value = _coerce(layer[key])
                raw[key] = deep_merge(raw[key], value) if key in raw else copy.deepcopy(value)
    return raw


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before") or str(part).startswith("function-"):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def _is_secret(loc: tuple) -> bool:
    return any(any(word in str(part).lower() for word in SECRET_PARTS) for part in loc)


def format_errors(error: ValidationError, source: str) -> str:
    lines = [f"invalid settings for {source}:"]
    for item in error.errors():
        loc = tuple(item.get("loc", ()))
        where = _path(loc) or "settings"
        message = item.get("msg", "").removeprefix("Value error, ")
        if item.get("type") == "extra_forbidden":
            message = "unknown setting. Fix: remove it or check its spelling against the README's settings reference"
        elif item.get("type") in ("missing",):
            message = "is required. Fix: set it"
        elif not _is_secret(loc) and "input" in item and item.get("type") not in ("value_error",):
            shown = repr(item["input"])
            if len(shown) > 80:
                shown = shown[:77] + "..."
            message = f"value {shown}: {message}"
        lines.append(f"  - {where}: {message}")
    return "\n".join(lines)


def settings_from_raw(raw: Mapping[str, Any], source: str = "this host") -> HostSettings:
    try:
        return HostSettings.model_validate(dict(raw))
    except ValidationError as error:
        raise SettingsError(format_errors(error, source)) from None


def host_data_layers(host) -> list[Mapping[str, Any]]:
    """pyinfra's data layers for a host, lowest priority first (all, groups, host, --data, overrides)."""
    datas = []
    for data in host.data.datas:
        datas.append(data() if callable(data) else data)
    return [d for d in reversed(datas) if isinstance(d, Mapping)]


def settings_for_host(host) -> HostSettings:
    return settings_from_raw(collect(host_data_layers(host)), source=f"host {host.name}")
