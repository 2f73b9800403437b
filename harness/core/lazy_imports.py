"""Imports libraries make eagerly but harness rarely needs, deferred to their first use.

transformers' `generation.candidate_generator`, which every process that loads a model imports (through
`modeling_utils`), imports scikit-learn's metrics at module level when scikit-learn is installed, for one function
of assisted decoding (`roc_curve`, its dynamic confidence threshold). That import costs about 0.85 s of CPU in each
process: every Ray Train worker, scoring worker and Tune trial. `defer_sklearn_in_transformers` installs an import
hook that loads that module without the eager import and gives it a `roc_curve` that imports scikit-learn on its
first call, so assisted decoding behaves as before. `harness/__init__.py` installs it, so it is in place in every
process that imports harness before transformers loads a model. Nothing changes if transformers has changed that
module (the hook then loads it as it is).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Any

TARGET = "transformers.generation.candidate_generator"


def _roc_curve(*args: Any, **kwargs: Any) -> Any:
    """scikit-learn's `roc_curve`, imported on the first call."""
    from sklearn.metrics import roc_curve

    return roc_curve(*args, **kwargs)


class _DeferringLoader(importlib.abc.Loader):
    """Runs the module with `is_sklearn_available` answering False while its body runs, then restores the real one
    in the module (its functions check it again at call time) and gives it the deferred `roc_curve`."""

    def __init__(self, inner: importlib.abc.Loader) -> None:
        self.inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        utils = sys.modules.get("transformers.utils")
        real = getattr(utils, "is_sklearn_available", None)
        if real is None:
            self.inner.exec_module(module)
            return
        utils.is_sklearn_available = lambda: False  # what the module's `from ..utils import ...` binds
        try:
            self.inner.exec_module(module)
        finally:
            utils.is_sklearn_available = real
        bound = module.__dict__.get("is_sklearn_available")
        if bound is not None and bound is not real:  # the module bound the stand-in: its own checks get the real one
            module.is_sklearn_available = real
            if real() and not hasattr(module, "roc_curve"):
                module.roc_curve = _roc_curve

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ... of the file loader
        return getattr(self.inner, name)


class _DeferSklearnFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _DeferringLoader(spec.loader)
        return spec


def defer_sklearn_in_transformers() -> None:
    """Install the hook (once per process; nothing if transformers already loaded the module)."""
    if TARGET in sys.modules or any(isinstance(f, _DeferSklearnFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _DeferSklearnFinder())
