"""Merging managed keys into Hermes's `config.yaml`.

Hermes migrates and rewrites `config.yaml` itself, so hermes-infra never owns the file: it
sets the dotted keys it manages and keeps everything else. Comparison is by value, not by
text, so Hermes reformatting the file does not make every deploy report a change.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import yaml

_MISSING = object()


def _get(tree: dict, dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _set(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


@dataclass(frozen=True)
class ConfigMerge:
    text: str
    changed_keys: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return bool(self.changed_keys)


class ConfigYamlError(ValueError):
    pass


def merge(existing: str | None, managed: dict[str, Any], path: str = "config.yaml") -> ConfigMerge:
    try:
        tree = yaml.safe_load(existing) if existing else {}
    except yaml.YAMLError as error:
        raise ConfigYamlError(
            f"{path} on the host is not valid YAML ({error}); hermes-infra will not overwrite it. "
            "Fix: repair or move the file, then deploy again"
        ) from None
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigYamlError(f"{path} on the host is not a mapping. Fix: repair or move the file, then deploy again")
    changed = tuple(key for key, value in managed.items() if _get(tree, key) != value)
    if not changed:
        return ConfigMerge(existing or "", ())
    merged = copy.deepcopy(tree)
    for key in changed:
        _set(merged, key, managed[key])
    return ConfigMerge(yaml.safe_dump(merged, sort_keys=False, default_flow_style=False, allow_unicode=True), changed)
