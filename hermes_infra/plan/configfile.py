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


def _delete(tree: dict, dotted: str) -> None:
    """Remove the key at a dotted path, and the mappings above it that only held it (an empty
    `display: {}` left behind would say nothing but still look like someone's setting)."""
    parts = dotted.split(".")
    trail = [tree]
    for part in parts[:-1]:
        trail.append(trail[-1][part])
    del trail[-1][parts[-1]]
    for node, part in zip(reversed(trail[:-1]), reversed(parts[:-1])):
        if node[part]:
            break
        del node[part]


@dataclass(frozen=True)
class ConfigMerge:
    text: str
    changed_keys: tuple[str, ...]
    removed_keys: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.changed_keys or self.removed_keys)


class ConfigYamlError(ValueError):
    pass


def load(existing: str | None, path: str = "config.yaml") -> dict:
    """The parsed file (a mapping), or ConfigYamlError: a file hermes-infra cannot read is
    never overwritten."""
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
    return tree


def merge(existing: str | None, managed: dict[str, Any], path: str = "config.yaml",
          remove: tuple[str, ...] = ()) -> ConfigMerge:
    """The file with `managed` set and the dotted keys in `remove` gone (the plan decides which:
    only keys hermes-infra wrote); every other key is kept."""
    tree = load(existing, path)
    changed = tuple(key for key, value in managed.items() if _get(tree, key) != value)
    removed = tuple(key for key in remove if key not in managed and _get(tree, key) is not _MISSING)
    if not changed and not removed:
        return ConfigMerge(existing or "", ())
    merged = copy.deepcopy(tree)
    for key in removed:
        _delete(merged, key)
    for key in changed:
        _set(merged, key, managed[key])
    return ConfigMerge(yaml.safe_dump(merged, sort_keys=False, default_flow_style=False, allow_unicode=True),
                       changed, removed)
