"""Each method's search space in a study, and its baseline: defaults declared beside what they search, overridable."""

from __future__ import annotations

from typing import Any

from harness.adapters.bounds import BOUNDS
from harness.commands.study.spec import LEARNING_RATE, StudySpace
from harness.core.errors import SpecError
from harness.spec import MethodSpec


def method_space(method: MethodSpec, space: StudySpace) -> dict[str, dict[str, Any]]:
    """The search space of `method`: the learning rate, its bound's and its objective's own default spaces, then
    the study space's `params` (every method) and `methods.<name>` (this one), later entries winning."""
    return {**LEARNING_RATE, **BOUNDS.get(method.adapter.bound).search_space, **type(method.objective).search_space,
            **space.params, **space.methods.get(method.name, {})}


def baselines(methods: list[MethodSpec], explicit: dict[str, str]) -> dict[str, str | None]:
    """Each method's baseline: `explicit[name]`, else the plain-LoRA (bound none) method of the same objective,
    else (a bounded method whose objective has no plain arm) the job's first plain-LoRA method; None for a plain
    arm itself and when the job has none."""
    out: dict[str, str | None] = {}
    for m in methods:
        if m.name in explicit:
            out[m.name] = explicit[m.name]
            continue
        plain = [b.name for b in methods if b.adapter.bound == "none" and b.objective.name == m.objective.name]
        if not plain and m.adapter.bound != "none":
            plain = [b.name for b in methods if b.adapter.bound == "none"]
        out[m.name] = plain[0] if plain and plain[0] != m.name else None
    for name, base in out.items():
        if base == name:
            raise SpecError(f"baseline.{name}: a method cannot be its own baseline")
    return out
