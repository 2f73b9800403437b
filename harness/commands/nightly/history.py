"""The nightly metric history: one parquet of every run's metric rows, and the baseline drawn from it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.core.errors import HarnessError
from harness.core.io import (
    atomic_write_parquet,
)

KEYS = ["job", "method", "benchmark", "split", "metric"]
HISTORY_COLUMNS = ["run_id", "timestamp", "suite", "job", "git_commit", "out_dir", "method", "benchmark", "split",
                   "metric", "value", "ci_low", "ci_high"]


DEFAULT_HISTORY = "results/nightly/history.parquet"


def read_history(path: str | Path) -> pd.DataFrame:
    """The history parquet (an empty frame with the history columns when there is none yet)."""
    path = Path(path)
    if not path.is_file():
        return _empty_history()
    try:
        hist = pd.read_parquet(path)
    except Exception as err:  # noqa: BLE001 - any reader error means a bad file
        raise HarnessError(f"history {path} cannot be read: {err}") from None
    missing = [c for c in ("run_id", "timestamp", *KEYS, "value") if c not in hist.columns]
    if missing:
        raise HarnessError(f"history {path} lacks the columns {', '.join(missing)}")
    for col in HISTORY_COLUMNS:
        if col not in hist.columns:
            hist[col] = pd.Series(dtype="float64" if col in ("ci_low", "ci_high") else "object")
    hist["timestamp"] = pd.to_datetime(hist["timestamp"], utc=True)
    return hist


def _empty_history() -> pd.DataFrame:
    df = pd.DataFrame({c: pd.Series(dtype="object") for c in HISTORY_COLUMNS})
    for c in ("value", "ci_low", "ci_high"):
        df[c] = df[c].astype("float64")
    df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True)
    return df


def append_history(path: str | Path, rows: pd.DataFrame) -> pd.DataFrame:
    """Append `rows` to the history and rewrite the parquet atomically; returns the whole history."""

    hist = read_history(path)
    rows = rows.copy()
    for col in HISTORY_COLUMNS:
        if col not in rows.columns:
            rows[col] = float("nan") if col in ("ci_low", "ci_high", "value") else None
    rows["timestamp"] = pd.to_datetime(rows["timestamp"], utc=True)
    parts = [df for df in (hist, rows.reindex(columns=hist.columns.union(rows.columns, sort=False))) if len(df)]
    combined = pd.concat(parts, ignore_index=True) if parts else hist
    atomic_write_parquet(path, combined)
    return combined


def run_order(history: pd.DataFrame) -> list[str]:
    """Run ids, oldest first."""
    if history.empty:
        return []
    first = history.groupby("run_id", sort=False)["timestamp"].min().sort_values(kind="stable")
    return first.index.tolist()


def baseline_frame(history: pd.DataFrame, mode: str = "rolling_median", run_id: str | None = None,
                   window: int = 5) -> tuple[pd.DataFrame, str]:
    """Baseline value (and CI) per (job, method, benchmark, split, metric) from past runs, and a description.

    `pinned`: the rows of `run_id` (None: the first run of the history). `rolling_median`: per key, the
    median of value / ci_low / ci_high over its last `window` runs.
    """
    cols = [*KEYS, "value", "ci_low", "ci_high"]
    if history.empty:
        return pd.DataFrame(columns=cols), "none (no history yet: this run becomes the baseline)"
    hist = history.copy()
    hist["benchmark"] = hist["benchmark"].fillna("")
    if mode == "pinned":
        order = run_order(hist)
        rid = run_id or order[0]
        if rid not in order:
            raise HarnessError(f"baseline run {rid!r} is not in the history (known: {', '.join(order[-5:])})")
        base = hist[hist["run_id"] == rid][cols].drop_duplicates(KEYS, keep="last")
        return base.reset_index(drop=True), f"pinned run {rid}"
    hist = hist.sort_values("timestamp", kind="stable")
    last = hist.groupby(KEYS, sort=False, dropna=False).tail(window)
    base = last.groupby(KEYS, sort=False, dropna=False)[["value", "ci_low", "ci_high"]].median().reset_index()
    n_runs = last["run_id"].nunique()
    return base[cols], f"rolling median of the last {window} runs per metric ({n_runs} runs used)"
