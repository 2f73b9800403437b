"""`--set key.path=value` overrides applied to raw spec data before validation."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from harness.core.errors import SpecError


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_override(data: dict[str, Any], assignment: str) -> dict[str, Any]:
    """Apply one `key.path=value` override (value parsed as YAML; list items by index) to raw spec data."""
    if "=" not in assignment:
        raise SpecError(f"--set {assignment!r}: expected key.path=value")
    path, _, raw = assignment.partition("=")
    keys = [k for k in path.strip().split(".") if k]
    if not keys:
        raise SpecError(f"--set {assignment!r}: empty key path")
    data = copy.deepcopy(data)
    node: Any = data
    for i, key in enumerate(keys[:-1]):
        where = ".".join(keys[: i + 1])
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise SpecError(f"--set {path}: {where} is not an index of a list of {len(node)}")
            node = node[int(key)]
        elif isinstance(node, dict):
            if node.get(key) is None:  # a missing or null section (`tracking: null`) becomes one
                node[key] = {}
            node = node[key]
        else:
            raise SpecError(f"--set {path}: {where} is not a section")
    last = keys[-1]
    value = _parse_value(raw)
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise SpecError(f"--set {path}: {last} is not an index of a list of {len(node)}")
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise SpecError(f"--set {path}: parent is not a section")
    return data
