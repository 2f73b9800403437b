"""Unlearning objectives, one file per method, each registered by name in `OBJECTIVES`.

Importing this package imports every module in it, which fills the registry: a new objective is one new
file with its `@OBJECTIVES.register` decorator, nothing else to edit.
"""

from __future__ import annotations

import importlib
import pkgutil

from harness.data.batch import IGNORE, Batch, ImageBatch, TokenBatch
from harness.objectives.base import (
    IMAGE,
    OBJECTIVES,
    TEXT,
    Objective,
    kl_to_reference,
    make_objective,
    mean_nll,
    original_targets,
    sequence_logprob,
    unit_logprobs,
)
from harness.objectives.prepare import FORGET, RETAIN, PrepareContext, base_weight_gradients

#: The method modules of this package (every module but the shared `base` and `prepare`).
METHODS = tuple(m.name for m in pkgutil.iter_modules(__path__) if m.name not in ("base", "prepare"))
for _name in METHODS:
    importlib.import_module(f"{__name__}.{_name}")


def options_models() -> dict[str, type]:
    """Each registered objective's options model, by name (what `objective:` in a job spec can be)."""
    return {name: OBJECTIVES.get(name).Options for name in OBJECTIVES.names()}


__all__ = ["FORGET", "IGNORE", "IMAGE", "METHODS", "OBJECTIVES", "RETAIN", "TEXT", "Batch", "ImageBatch", "Objective",
           "PrepareContext", "TokenBatch", "base_weight_gradients", "kl_to_reference", "make_objective", "mean_nll",
           "options_models", "original_targets", "sequence_logprob", "unit_logprobs"]
