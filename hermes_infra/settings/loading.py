"""From pyinfra data (group_data, host data, --data) to validated HostSettings.

Errors come out as one line per problem: the setting's path, what is wrong and the fix.
Values of secret settings are never repeated in an error, and neither is any value given
in the wrong shape (a string where a section or list was expected may well be a secret put
in the wrong place): a value is shown only when it is a plain scalar at a non-secret leaf.

Every top-level data name must be a setting: an unknown one (a typo such as `gatways`)
is refused instead of silently deploying defaults. pyinfra's own names (connector data such
as `ssh_port`, global arguments such as `_sudo`), names starting with `_`, the local VM's
data and the names listed in the `extra_data_names` setting are accepted.
"""
from __future__ import annotations

import copy
import difflib
import functools
import json
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, SecretStr, ValidationError
from pyinfra.api.exceptions import PyinfraError

from hermes_infra.settings.schema import DEFAULT_SSH_PORT, HostSettings

SECTIONS = tuple(HostSettings.model_fields)
SECRET_PARTS = ("key", "token", "secret", "password", "env", "credential", "passphrase")
HIDDEN = "<hidden>"

# pyinfra data names, in case pyinfra's own tables cannot be read (see pyinfra_data_names).
_FALLBACK_PYINFRA_NAMES = frozenset({
    "ssh_hostname", "ssh_port", "ssh_user", "ssh_password", "ssh_key", "ssh_key_password",
    "ssh_allow_agent", "ssh_look_for_keys", "ssh_forward_agent", "ssh_config_file",
    "ssh_known_hosts_file", "ssh_strict_host_key_checking", "ssh_paramiko_connect_kwargs",
    "ssh_connect_retries", "ssh_connect_retry_min_delay", "ssh_connect_retry_max_delay",
    "ssh_file_transfer_protocol",
    # set by connectors' make_names_data / connect, not declared in their data_meta
    "chroot_directory", "docker_identifier", "docker_image", "docker_container_id",
    "docker_platform", "docker_architecture",
})


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


# ----------------------------------------------------------------------------- top-level names
@functools.cache
def pyinfra_data_names() -> frozenset[str]:
    """Top-level data names pyinfra itself (or the local VM) uses: never refused as unknown.

    Read from pyinfra where possible: the global argument names (`_sudo`, ...) and every
    installed connector's data keys (`data_cls` / `data_meta`). The local VM's inventory data
    (localvm/ssh.py) uses only SSH connector names; tests/unit/test_localvm.py holds it to that.
    """
    names = set(_FALLBACK_PYINFRA_NAMES)
    try:
        from pyinfra.api.arguments import all_argument_meta

        names.update(all_argument_meta)
    except Exception:  # noqa: BLE001 - pyinfra internals moved: the fallback still holds
        pass
    connectors: list[Any] = []
    try:
        from pyinfra.api.connectors import get_all_connectors

        connectors.extend(get_all_connectors().values())
    except Exception:  # noqa: BLE001
        pass
    try:
        from pyinfra.connectors.ssh import SSHConnector

        connectors.append(SSHConnector)
    except Exception:  # noqa: BLE001
        pass
    for connector in connectors:
        names.update(getattr(connector, "data_meta", None) or {})
        try:
            names.update(typing.get_type_hints(connector.data_cls))
        except Exception:  # noqa: BLE001
            pass
    return frozenset(name for name in names if isinstance(name, str))


def _is_code(value: Any) -> bool:
    """Modules, functions and classes defined in a group data file are not data."""
    return isinstance(value, (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type))


def _name_list(value: Any) -> set[str]:
    value = _coerce(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return {item for item in value if isinstance(item, str)}
    return set()


def collect(layers: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Merge data layers given lowest priority first into the raw settings.

    Settings sections merge key by key. `ssh_port` (the host's SSH port, for the port
    collision check) is kept. Names pyinfra uses, names starting with `_` and names listed in
    `extra_data_names` are dropped; any other name is kept so that validation refuses it as
    an unknown setting (with a did-you-mean).
    """
    raw: dict[str, Any] = {}
    others: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if not isinstance(key, str):
                continue
            if key in SECTIONS:
                value = _coerce(value)
                raw[key] = deep_merge(raw[key], value) if key in raw else copy.deepcopy(value)
            elif key == "ssh_port":
                raw[key] = value
            else:
                others[key] = value
    allowed = _name_list(raw.get("extra_data_names"))
    for key, value in others.items():
        if key.startswith("_") or key in allowed or key in _FALLBACK_PYINFRA_NAMES or _is_code(value) \
                or key in pyinfra_data_names():
            continue
        raw[key] = value
    return raw


# ----------------------------------------------------------------------------- error messages
def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "[key]" or str(part).startswith("function-"):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


# Settings whose names contain a secret-ish word but that hold variable names, not secrets.
NOT_SECRET_NAMES = frozenset({"api_key_env", "api_base_url_env", "model_env", "extra_data_names"})


def _is_secret(loc: tuple) -> bool:
    return any(part not in NOT_SECRET_NAMES and any(word in str(part).lower() for word in SECRET_PARTS)
               for part in loc)


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated[...] and Optional[...] (X | None)."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _model(annotation: Any) -> type[BaseModel] | None:
    annotation = _unwrap(annotation)
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


_UNKNOWN = object()


def _resolve(loc: tuple) -> tuple[Any, type[BaseModel] | None]:
    """The annotation at `loc` (or _UNKNOWN) and the model holding the last part of `loc`."""
    annotation: Any = HostSettings
    parent: type[BaseModel] | None = None
    parts = [part for part in loc if not str(part).startswith("function-")]
    index = 0
    while index < len(parts):
        part = parts[index]
        current = _unwrap(annotation)
        origin = typing.get_origin(current)
        model = _model(current)
        if model is not None:
            parent = model
            if not isinstance(part, str) or part not in model.model_fields:
                return _UNKNOWN, parent
            annotation = model.model_fields[part].annotation
        elif origin in (list, tuple, set, frozenset) and isinstance(part, int):
            args = typing.get_args(current)
            annotation = args[0] if args else Any
        elif origin in (dict, Mapping) or current is dict:
            args = typing.get_args(current) or (Any, Any)
            if index + 1 < len(parts) and parts[index + 1] == "[key]":
                annotation = args[0]
                index += 1
            else:
                annotation = args[1]
        else:
            return _UNKNOWN, parent
        index += 1
    return annotation, parent


def _is_secret_type(annotation: Any) -> bool:
    annotation = _unwrap(annotation)
    if annotation is SecretStr:
        return True
    return any(_is_secret_type(arg) for arg in typing.get_args(annotation))


def _leaves(value: Any, out: set[str]) -> None:
    if isinstance(value, SecretStr):
        out.add(value.get_secret_value())
    elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
        out.add(str(value))
    elif isinstance(value, Mapping):
        for sub in value.values():
            _leaves(sub, out)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for sub in value:
            _leaves(sub, out)


def _secrets(value: Any, annotation: Any, out: set[str], name: str = "") -> None:
    """Strings in `value` that may be secret: those at SecretStr positions, those under
    secret-ish names in free-form dicts, and everything given in a shape the schema does not
    expect (a token pasted where a section or list belongs is still a token)."""
    if annotation is _UNKNOWN:
        _leaves(value, out)
        return
    if annotation is Any:
        if isinstance(value, Mapping):
            for key, sub in value.items():
                _secrets(sub, Any, out, str(key))
        elif isinstance(value, (list, tuple, set, frozenset)):
            for sub in value:
                _secrets(sub, Any, out, name)
        elif _is_secret((name,)):
            _leaves(value, out)
        return
    annotation = _unwrap(annotation)
    if annotation is SecretStr:
        _leaves(value, out)
        return
    model = _model(annotation)
    origin = typing.get_origin(annotation)
    if model is not None:
        if isinstance(value, Mapping):
            for key, sub in value.items():
                field = model.model_fields.get(key) if isinstance(key, str) else None
                _secrets(sub, field.annotation if field else _UNKNOWN, out, str(key))
        elif not isinstance(value, BaseModel):
            _leaves(value, out)
    elif origin in (list, tuple, set, frozenset):
        if isinstance(value, (list, tuple, set, frozenset)):
            args = typing.get_args(annotation)
            for sub in value:
                _secrets(sub, args[0] if args else Any, out, name)
        else:
            _leaves(value, out)
    elif origin in (dict, Mapping):
        if isinstance(value, Mapping):
            args = typing.get_args(annotation) or (Any, Any)
            for key, sub in value.items():
                _secrets(sub, args[1], out, str(key))
        else:
            _leaves(value, out)
    elif not isinstance(value, (str, int, float, bool, type(None))):
        _leaves(value, out)  # a collection where a scalar was expected


def _redact(text: str, secrets: set[str]) -> str:
    """A safety net under the messages (which never put a secret in on purpose): very short
    values are left alone, or flags such as `true` would blank out words of the fix."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) < 6:
            continue
        for form in {secret, repr(secret)[1:-1], json.dumps(secret)[1:-1]}:
            if form:
                text = text.replace(form, HIDDEN)
    return text


def _may_echo(item: Mapping[str, Any], loc: tuple, annotation: Any) -> bool:
    """Show the offending value only for a plain scalar at a non-secret leaf setting."""
    value = item.get("input")
    if item.get("type") in ("extra_forbidden", "missing") or annotation is _UNKNOWN:
        return False
    if not isinstance(value, (str, int, float, bool)) or _is_secret(loc):
        return False
    bare = _unwrap(annotation)
    if _model(bare) is not None or _is_secret_type(bare) or typing.get_origin(bare) in (list, tuple, set, dict, Mapping):
        return False
    return True


_GENERIC_FIXES = {
    "model_type": "write it as a mapping of settings ({...}), see the README's settings reference",
    "model_attributes_type": "write it as a mapping of settings ({...}), see the README's settings reference",
    "dict_type": "write it as a mapping ({NAME: value, ...})",
    "list_type": "write it as a list ([...])",
    "literal_error": "use one of the values listed",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "string_type": "a text value in quotes",
    "greater_than": "a larger value",
    "greater_than_equal": "a larger value",
    "less_than": "a smaller value",
    "less_than_equal": "a smaller value",
}


def _unknown_setting(loc: tuple, parent: type[BaseModel] | None) -> str:
    name = str(loc[-1]) if loc else ""
    top = len(loc) == 1
    candidates = list(parent.model_fields) if parent is not None else list(SECTIONS)
    pool = candidates + (sorted(pyinfra_data_names()) if top else [])
    lowered = {candidate.lower(): candidate for candidate in pool}
    matches = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    escape = ("; if it is data for something other than hermes-infra, start its name with '_' or list it in "
              "extra_data_names") if top else ""
    if matches:
        match = lowered[matches[0]]
        return f"unknown setting; did you mean {match!r}? Fix: rename it to {match!r}{escape}"
    return (f"unknown setting. Fix: remove it or correct its spelling (settings here: {', '.join(candidates)})"
            f"{escape}")


def format_errors(error: ValidationError, source: str) -> str:
    lines = [f"invalid settings for {source}:"]
    for item in error.errors():
        loc = tuple(item.get("loc", ()))
        kind = item.get("type")
        ctx = item.get("ctx") or {}
        annotation, parent = _resolve(loc)
        where = (_path(loc) + (ctx.get("item", "") if kind in ("control_character",) else "")).lstrip(".")
        message = item.get("msg", "").removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if kind == "extra_forbidden":
            message = _unknown_setting(loc, parent)
        elif kind == "missing":
            message = "is required. Fix: set it"
        else:
            if _may_echo(item, loc, annotation) and "value not shown" not in message:
                shown = repr(item["input"])
                if len(shown) > 80:
                    shown = shown[:77] + "..."
                if shown not in message and str(item["input"]) not in message:
                    message = f"value {shown}: {message}"
            if "Fix" not in message:
                fix = _GENERIC_FIXES.get(kind, "see the README's settings reference for what it accepts")
                message = f"{message}. Fix: {fix}"
        secrets: set[str] = set()
        _secrets(item.get("input"), annotation, secrets, str(loc[-1]) if loc else "")
        if _is_secret(loc) and not _may_echo(item, loc, annotation):
            _leaves(item.get("input"), secrets)
        message = _redact(message, secrets)
        # A cross-check may report several problems, one per line; each is its own bullet.
        for text in message.split("\n"):
            lines.append(f"  - {where}: {text}" if where else f"  - {text}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- entry points
def _ssh_port(value: Any) -> tuple[int, str | None]:
    """The SSH port from host data (`ssh_port`), or a problem line."""
    if value is None or value == "":
        return DEFAULT_SSH_PORT, None
    try:
        port = int(value)
    except (TypeError, ValueError):
        port = 0
    if isinstance(value, bool) or not 1 <= port <= 65535 or (isinstance(value, float) and value != port):
        return DEFAULT_SSH_PORT, f"  - ssh_port: value {value!r} is not a port number. Fix: 1-65535, e.g. 22"
    return port, None


def settings_from_raw(raw: Mapping[str, Any], source: str = "this host", *, ssh_port: int | None = None) -> HostSettings:
    """Validate raw settings (as `collect` returns them). The host's SSH port comes from
    `ssh_port` here or in `raw` (pyinfra host data), default 22: no setting may publish on it."""
    raw = dict(raw)
    data_port = raw.pop("ssh_port", None)
    port, problem = _ssh_port(ssh_port if ssh_port is not None else data_port)
    try:
        settings = HostSettings.model_validate(raw, context={"ssh_port": port})
    except ValidationError as error:
        message = format_errors(error, source)
        raise SettingsError(message + (f"\n{problem}" if problem else "")) from None
    if problem:
        raise SettingsError(f"invalid settings for {source}:\n{problem}")
    return settings


def _layer(data: Any) -> Any:
    return data() if callable(data) else data


def host_data_layers(host) -> list[Mapping[str, Any]]:
    """pyinfra's data layers for a host, lowest priority first (deploy defaults, all, each
    group, host, --data / override data, values assigned during the deploy).

    pyinfra merges a host's groups into one dict with a shallow update; here each group is its
    own layer, so a dict setting merges key by key across groups as it does across the others.
    """
    datas = []
    groups = list(getattr(host, "groups", None) or ())
    inventory = getattr(host, "inventory", None)
    for data in host.data.datas:
        code = getattr(data, "__code__", None)
        if code is not None and "get_groups_data" in code.co_names and inventory is not None:
            try:
                # highest priority first, like host.data.datas
                datas.extend(inventory.get_group_data(group) for group in reversed(groups))
                continue
            except Exception:  # noqa: BLE001 - fall back to pyinfra's merged group data
                pass
        datas.append(_layer(data))
    return [d for d in reversed(datas) if isinstance(d, Mapping)]


def settings_for_host(host) -> HostSettings:
    """Validated settings of a pyinfra inventory host (its `ssh_port` data is the SSH port)."""
    return settings_from_raw(collect(host_data_layers(host)), source=f"host {host.name}")
