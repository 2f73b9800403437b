"""Benchmark registry: each benchmark is one module with a class registered under its name."""

from __future__ import annotations

import importlib

from harness.benchmarks.base import BENCHMARKS, Benchmark, ModelScores
from harness.spec import BenchmarkSpec

# Modules that register benchmarks; importing them fills BENCHMARKS.
_MODULES = ("harness.benchmarks.tofu.benchmark", "harness.benchmarks.muse.benchmark",
            "harness.benchmarks.tdec.benchmark")


def load_benchmark(spec: BenchmarkSpec, seed: int) -> Benchmark:
    """The benchmark named by `spec.name`, with its data loaded (real files or synthetic)."""
    for module in _MODULES:
        importlib.import_module(module)
    return BENCHMARKS.get(spec.name)(spec, seed)


__all__ = ["BENCHMARKS", "Benchmark", "ModelScores", "load_benchmark"]
