"""Benchmarks: one package each (`tofu`, `muse`, `tdec`, ...) with its options, data, metrics and class.

A benchmark package holds `options.py` (its `benchmark:` options model, registered in
`harness.config.BENCHMARK_OPTIONS`) and `benchmark.py` (its `Benchmark` class, registered in
`BENCHMARKS`). This module stays light (no torch, no spec), because harness/spec.py imports it.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Any

from harness.benchmarks import base
from harness.benchmarks.base import BENCHMARKS

if TYPE_CHECKING:
    from harness.benchmarks.base import Benchmark

#: The benchmark packages (every subpackage of this one).
PACKAGES = tuple(m.name for m in pkgutil.iter_modules(__path__) if m.ispkg)


def load_benchmark_class(name: str) -> type[Benchmark]:
    """The Benchmark class registered as `name` (no data loaded)."""

    for package in PACKAGES:
        importlib.import_module(f"harness.benchmarks.{package}.benchmark")
    return BENCHMARKS.get(name)


def benchmark_classes() -> list[type[Benchmark]]:
    """Every registered Benchmark class, by name (no data loaded)."""
    for package in PACKAGES:
        importlib.import_module(f"harness.benchmarks.{package}.benchmark")
    return [BENCHMARKS.get(name) for name in BENCHMARKS.names()]


def load_benchmark(spec: Any) -> Benchmark:
    """The benchmark named by `spec.name`, with its data loaded (real files or synthetic)."""
    return load_benchmark_class(spec.name)(spec)


def __getattr__(name: str) -> Any:
    if name in ("BENCHMARKS", "Benchmark", "ModelScores"):
        return getattr(base, name)
    raise AttributeError(name)


__all__ = ["PACKAGES", "benchmark_classes", "load_benchmark", "load_benchmark_class"]
