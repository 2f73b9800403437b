"""The results contract: the columns of every results table and the name of one run."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd

METRIC_COLUMNS = ["method", "seed", "benchmark", "split", "metric", "value", "ci_low", "ci_high"]


EXAMPLE_COLUMNS = ["method", "seed", "benchmark", "split", "example_id", "metric", "value"]


GENERATION_COLUMNS = ["method", "seed", "benchmark", "split", "example_id", "prompt", "reference", "output"]


TRAIN_LOG_COLUMNS = ["method", "seed", "step", "loss", "loss_forget", "loss_retain", "grad_norm", "adapter_norm",
                     "adapter_param_norm", "logit_norm", "lr", "tokens_per_s"]


def frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    """Rows as a DataFrame with at least the contract's columns, in the contract's order first."""
    df = pd.DataFrame(rows)
    for col in columns:
        if col not in df.columns:
            df[col] = pd.Series(dtype="float64")
    extra = [c for c in df.columns if c not in columns]
    return df[columns + extra]


def run_key(method: str, seed: int) -> str:
    """The name of the run of `method` with `seed`."""
    return f"{method}/seed{seed}"


#: A metric name, split or method pattern: an fnmatch glob, or a list of globs meaning any of them.
Glob = str | tuple[str, ...]
Direction = Literal["higher_is_better", "lower_is_better", "both"]
#: Forget splits of every benchmark (`forget`, TOFU's `forget10`, ...).
FORGET_SPLITS = ("forget*", "forget")


def glob_match(pattern: Glob | list[str], value: str) -> bool:
    """Whether `value` matches the glob (or any of the globs), case-sensitively."""
    patterns = [pattern] if isinstance(pattern, str) else pattern
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)


@dataclass(frozen=True)
class Metric:
    """One metric a benchmark reports, declared once beside its formulas: the (split, metric) rows it covers, which
    way is better, how far a nightly run may move it (`kind`: absolute, relative or against the bootstrap
    interval, by `tolerance`), and its range. Summary tables take their directions from it, nightly its default
    rules, sweep and tune the modes of their objectives."""

    metric: Glob
    direction: Direction
    kind: Literal["absolute", "relative", "ci"]
    tolerance: float
    split: Glob = "*"
    range: tuple[float, float] | None = None

    def matches(self, split: str, metric: str) -> bool:
        """Whether this declaration covers the row (split, metric)."""
        return glob_match(self.metric, metric) and glob_match(self.split, split)

    @property
    def higher_is_better(self) -> bool | None:
        """True / False by the direction; None when any move counts (`both`)."""
        return {"higher_is_better": True, "lower_is_better": False, "both": None}[self.direction]
