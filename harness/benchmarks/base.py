"""What every benchmark provides: training pairs, reference corpora, scoring and aggregation."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from harness.eval.text_metrics import bootstrap_ci
from harness.registry import Registry
from harness.report import Column
from harness.spec import BenchmarkSpec, EvalSpec

BENCHMARKS: Registry[type[Benchmark]] = Registry("benchmark")

Pair = tuple[str, str]
AnswerFn = Callable[[dict[str, Any], int], str]


def mean_metric_row(split: str, metric: str, values: np.ndarray, n_resamples: int, seed: int) -> dict[str, Any]:
    """A metric row with the mean of per-example values and, when `n_resamples` > 0, its bootstrap CI."""
    row: dict[str, Any] = {"split": split, "metric": metric, "value": float(np.mean(values))}
    if n_resamples > 0:
        row["ci_low"], row["ci_high"] = bootstrap_ci(values, n_resamples, seed)
    return row


@dataclass
class ModelScores:
    """One model's scores on a benchmark: per-example values, generations and raw arrays to aggregate."""

    examples: list[dict[str, Any]] = field(default_factory=list)
    generations: list[dict[str, Any]] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)


class Benchmark(ABC):
    """A benchmark: its data, how to turn it into training pairs, and its metric suite."""

    name: ClassVar[str]
    #: Columns of the summary table, in order.
    summary_columns: ClassVar[list[Column]]

    def __init__(self, spec: BenchmarkSpec, seed: int) -> None:
        self.spec = spec
        self.seed = seed

    @abstractmethod
    def corpus_texts(self) -> list[str]:
        """All text of the benchmark (to train a builtin model's tokenizer)."""

    @abstractmethod
    def reference_pairs(self, kind: str, tokenizer: Any) -> list[Pair]:
        """Training pairs for the reference model `kind` ("target": all data, "retain": without the forget set)."""

    @abstractmethod
    def forget_pairs(self, tokenizer: Any, answer_for: AnswerFn) -> list[Pair]:
        """(context, continuation) pairs of the forget set; `answer_for(record, i)` picks the answer."""

    @abstractmethod
    def retain_pairs(self, tokenizer: Any) -> list[Pair]:
        """(context, continuation) pairs of the retain set."""

    @abstractmethod
    def score(self, backend: Any, tokenizer: Any, eval_spec: EvalSpec) -> ModelScores:
        """Score one model (through a backend) on every evaluation split."""

    @abstractmethod
    def aggregate(self, scores: dict[str, ModelScores], eval_spec: EvalSpec) -> list[dict[str, Any]]:
        """Metric rows (`method, split, metric, value, ci_low, ci_high`) for every scored model."""
