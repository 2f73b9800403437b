"""What one job carries from stage to stage: its context, the models to score, what training adds, its result."""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.benchmarks.base import Benchmark
from harness.core.errors import SpecError
from harness.spec import JobSpec
from harness.train.reference import References

#: A model to score: (method name, seed) -> (model directory, adapter directory or None).
ModelKey = tuple[str, int]


def log(message: str) -> None:
    """A timestamped progress line on stderr."""
    print(f"[{dt.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def job_device(kind: str) -> torch.device:
    """`auto` picks CUDA when present, else CPU."""
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise SpecError("resources.device is 'cuda' but no CUDA device is visible")
    return torch.device(kind)


@dataclass
class JobResult:
    """Where a job wrote its results, and the summary table it printed."""

    out_dir: Path
    summary: str
    diverged: dict[str, bool] = field(default_factory=dict)


@dataclass
class ScoredModel:
    """A model to score: where it is (model dir or hub id + adapter dir: what Ray scoring workers load and
    models.json records), how this process loads it (`load`, default: the reference target with the adapter
    attached), and its processor (default: the references')."""

    source: str
    adapter: str | Path | None = None
    load: Callable[[], tuple[torch.nn.Module, Any]] | None = None
    processor: Any = None


@dataclass
class JobContext:
    """A started job: its spec, the directory it writes into (the staging directory), device, benchmark,
    reference models per reference seed, timings."""

    spec: JobSpec
    out: Path
    device: torch.device
    bench: Benchmark
    refs: dict[int, References]
    started: dt.datetime
    timings: dict[str, float] = field(default_factory=dict)
    #: whether it continues an interrupted or failed attempt (`--resume`) whose staging it writes into
    resumed: bool = False

    @property
    def ref_seeds(self) -> list[int]:
        """The reference seeds with their own pair of reference models."""
        return sorted(self.refs)


@dataclass
class Training:
    """What training adds to a job's results: diverged rows, the training log, divergence counts, run times."""

    metric_rows: list[dict[str, Any]] = field(default_factory=list)
    log_rows: list[dict[str, Any]] = field(default_factory=list)
    diverged: dict[str, tuple[int, int]] = field(default_factory=dict)
    run_seconds: dict[str, float] = field(default_factory=dict)
