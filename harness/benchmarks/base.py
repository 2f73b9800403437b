"""What every benchmark provides: training pairs, reference corpora, scoring and aggregation."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from harness.config import BenchmarkOptions, EvalSpec
from harness.core.registry import Registry
from harness.core.stats import bootstrap_ci
from harness.render.tables import Column
from harness.results.contract import Metric

BENCHMARKS: Registry[type[Benchmark]] = Registry("benchmark")

Pair = tuple[str, str]


def mean_metric_row(split: str, metric: str, values: np.ndarray, n_resamples: int, seed: int) -> dict[str, Any]:
    """A metric row with the mean of per-example values and, when `n_resamples` > 0, its bootstrap CI."""
    row: dict[str, Any] = {"split": split, "metric": metric, "value": float(np.mean(values))}
    if n_resamples > 0:
        row["ci_low"], row["ci_high"] = bootstrap_ci(values, n_resamples, seed)
    return row


#: A metric of a scored model: (split, metric), as in metrics.parquet.
MetricKey = tuple[str, str]


@dataclass(frozen=True)
class MatchedUtility:
    """How `harness study` compares methods on a benchmark, declared once per benchmark: a trial is inside the
    budget when its `utility` (higher is better) is at least (1 - delta) x the target model's; among those the
    best forget score wins. The forget score is the mean of the `forget` metrics (`goal` max or min), or with goal
    `retain` the mean absolute gap of the `forget` metrics to the retain (retrain) model's: closest wins."""

    utility: MetricKey
    forget: tuple[MetricKey, ...]
    goal: Literal["max", "min", "retain"]
    #: (low, high) of the forget score and of the utility, for intervals and plots.
    forget_range: tuple[float, float] = (0.0, 1.0)
    utility_range: tuple[float, float] = (0.0, 1.0)

    @property
    def mode(self) -> Literal["max", "min"]:
        """Whether a larger forget score is better."""
        return "max" if self.goal == "max" else "min"

    @property
    def forget_label(self) -> str:
        """The forget score in words, for tables and plots."""
        names = " + ".join(f"{split} {metric}" for split, metric in self.forget)
        return f"gap to retain ({names})" if self.goal == "retain" else names

    @property
    def utility_label(self) -> str:
        """The utility in words."""
        return f"{self.utility[0]} {self.utility[1]}"

    def forget_score(self, values: dict[MetricKey, float], retain: dict[MetricKey, float]) -> float:
        """The forget score of one model from its metric values (and the retain model's, for goal `retain`)."""
        parts = [float(values.get(key, np.nan)) for key in self.forget]
        if self.goal == "retain":
            parts = [abs(v - float(retain.get(key, np.nan))) for v, key in zip(parts, self.forget, strict=True)]
        return float(np.mean(parts))


@dataclass
class ModelScores:
    """One model's scores on a benchmark: per-example values, generations and raw arrays to aggregate."""

    examples: list[dict[str, Any]] = field(default_factory=list)
    generations: list[dict[str, Any]] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    #: finished metric rows scored beside the benchmark (lm-evaluation-harness tasks), without method and seed
    metric_rows: list[dict[str, Any]] = field(default_factory=list)


class Benchmark(ABC):
    """A benchmark: its data, how to turn it into training pairs, and its metric suite."""

    name: ClassVar[str]
    #: The metrics it reports, declared once in its metrics.py: summary columns take their direction from them,
    #: nightly its default rules (harness.results.contract.Metric).
    declared_metrics: ClassVar[tuple[Metric, ...]] = ()

    @classmethod
    def declaration(cls, split: str, metric: str) -> Metric | None:
        """The first declared metric covering (split, metric), or None."""
        return next((m for m in cls.declared_metrics if m.matches(split, metric)), None)

    @classmethod
    def column(cls, split: str, metric: str, label: str) -> Column:
        """A summary-table column whose better direction is the declared one (None when any move counts)."""
        declared = cls.declaration(split, metric)
        return Column(split, metric, label, declared.higher_is_better if declared else None)

    @classmethod
    @abstractmethod
    def summary_columns_for(cls, options: Any) -> list[Column]:
        """Columns of the summary table, in order, for these options (no data needed: reports use it)."""

    @classmethod
    def matched_utility_for(cls, options: Any) -> MatchedUtility:
        """The benchmark's utility constraint and forget score for `harness study` (see MatchedUtility)."""
        raise NotImplementedError(f"benchmark {cls.name} declares no utility constraint and forget score")

    @property
    def summary_columns(self) -> list[Column]:
        """Columns of this benchmark's summary table."""
        return self.summary_columns_for(self.spec)

    def __init__(self, spec: BenchmarkOptions) -> None:
        self.spec = spec
        self.seed = spec.seed

    @property
    def modality(self) -> str:
        """What the benchmark's models read: "text" or "image" (from its options model)."""
        return self.spec.modality

    def corpus_texts(self) -> list[str]:
        """All text of the benchmark (to train a builtin model's tokenizer); text benchmarks only."""
        raise NotImplementedError(f"{self.name} has no text corpus")

    @abstractmethod
    def reference_examples(self, kind: str, processor: Any) -> list[Any]:
        """Training examples of the reference model `kind` ("target": all data, "retain": without the forget set)."""

    @abstractmethod
    def forget_examples(self, processor: Any, objective: Any, seed: int = 0) -> list[Any]:
        """Examples of the forget set, with the targets the objective trains toward (its `forget_answer` on
        text, its `forget_labels` on images, drawn with the run's `seed` where they are random)."""

    @abstractmethod
    def retain_examples(self, processor: Any) -> list[Any]:
        """Examples of the retain set."""

    def plots(self, examples: Any, methods: Sequence[str], out_dir: Path) -> list[Path]:
        """Plots of the benchmark's own beside the standard ones (from examples.parquet); none by default."""
        return []

    def describe(self) -> str:
        """A short name of what is forgotten, for titles (e.g. `tofu forget10`)."""
        return self.spec.describe()

    @abstractmethod
    def score(self, backend: Any, tokenizer: Any, eval_spec: EvalSpec) -> ModelScores:
        """Score one model (through a backend) on every evaluation split."""

    @abstractmethod
    def aggregate(self, scores: dict[str, ModelScores], eval_spec: EvalSpec) -> list[dict[str, Any]]:
        """Metric rows (`method, split, metric, value, ci_low, ci_high`) for every scored model."""

    # ---- what attacks need (harness/attacks); a benchmark without them is not attacked that way ----------

    def recovery_metric(self) -> tuple[str, str] | None:
        """The (split, metric) whose recovery attacks report: the one unlearning moves on the forget data (the
        recovery score is invariant to an affine change of the metric, so 1 - accuracy serves too)."""
        return None

    def forget_keys(self) -> list[str]:
        """An identity per forget training example, in `forget_examples` order (relearn's disjointness check)."""
        raise NotImplementedError(f"the {self.name} benchmark does not support the relearn attack")

    def scored_forget_keys(self) -> list[str]:
        """The identity of each forget example this benchmark scores (same keys as `forget_keys`)."""
        raise NotImplementedError(f"the {self.name} benchmark does not support the relearn attack")

    def restrict_forget(self, keep: Sequence[int], forget_only: bool = False) -> Benchmark:
        """A copy that scores only the forget examples `keep` (indices in `forget_examples` order) and, with
        `forget_only`, no other split where the benchmark's aggregation allows it."""
        raise NotImplementedError(f"the {self.name} benchmark does not support the relearn attack")
