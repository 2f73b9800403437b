"""What every benchmark provides: training pairs, reference corpora, scoring and aggregation."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from harness.registry import Registry
from harness.report import Column
from harness.spec import BenchmarkSpec, EvalSpec

BENCHMARKS: Registry[type[Benchmark]] = Registry("benchmark")

Pair = tuple[str, str]
AnswerFn = Callable[[dict[str, Any], int], str]


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
