"""Judging a nightly run against its baseline: the first matching rule says whether a metric moved, and which way."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from harness.commands.nightly.history import KEYS
from harness.commands.nightly.spec import Rule


def find_rule(rules: Sequence[Rule], method: str, split: str, metric: str) -> Rule | None:
    """The first rule matching the row, or None."""
    return next((r for r in rules if r.matches(method, split, metric)), None)


def judge(new: float, base: float, ci_low: float, ci_high: float, rule: Rule) -> str:
    """`ok`, `regression` or `improvement` for one metric under one rule (see the module docstring)."""
    if is_nan(base):
        return "ok" if is_nan(new) else "new"
    if is_nan(new):
        return "regression"
    delta = new - base
    if rule.kind == "ci" and not (is_nan(ci_low) or is_nan(ci_high)):
        moved = new < ci_low - rule.tolerance or new > ci_high + rule.tolerance
    elif rule.kind == "relative":
        moved = abs(delta) > rule.tolerance * abs(base)
    else:
        moved = abs(delta) > rule.tolerance
    if not moved:
        return "ok"
    if rule.direction == "higher_is_better":
        return "regression" if delta < 0 else "improvement"
    if rule.direction == "lower_is_better":
        return "regression" if delta > 0 else "improvement"
    return "regression"


def is_nan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x)) or bool(pd.isna(x))


STATUS_ORDER = {"regression": 0, "missing": 1, "improvement": 2, "new": 3, "ok": 4, "unchecked": 5}


def compare(current: pd.DataFrame, baseline: pd.DataFrame, rules: Sequence[Rule]) -> pd.DataFrame:
    """Every metric of `current` (and every baseline metric it lacks) with baseline, new, delta, rule, status.

    Both frames have the columns job, method, benchmark, split, metric, value, ci_low, ci_high. Status:
    `regression`, `improvement`, `ok`, `new` (no baseline), `missing` (baseline only; a regression), or
    `unchecked` (no rule matches).
    """
    cur = _keyed(current)
    base = _keyed(baseline).rename(columns={"value": "baseline", "ci_low": "baseline_ci_low",
                                            "ci_high": "baseline_ci_high"})
    merged = cur.rename(columns={"value": "new"}).merge(base, on=KEYS, how="outer", indicator=True, sort=False)
    rows = []
    for rec in merged.to_dict("records"):
        rule = find_rule(rules, rec["method"], rec["split"], rec["metric"])
        new, b = rec.get("new"), rec.get("baseline")
        if rec["_merge"] == "right_only":
            status = "missing" if not is_nan(b) else "ok"
        elif rule is None:
            status = "unchecked"
        else:
            status = judge(new, b, rec.get("baseline_ci_low"), rec.get("baseline_ci_high"), rule)
        delta = (new - b) if not (is_nan(new) or is_nan(b)) else float("nan")
        rows.append({**{k: rec[k] for k in KEYS}, "baseline": b, "baseline_ci_low": rec.get("baseline_ci_low"),
                     "baseline_ci_high": rec.get("baseline_ci_high"), "new": new, "delta": delta,
                     "rel_delta": delta / abs(b) if not is_nan(delta) and b != 0 else float("nan"),
                     "rule": rule.describe() if rule else "—", "status": status})
    cols = [*KEYS, "baseline", "baseline_ci_low", "baseline_ci_high", "new", "delta", "rel_delta", "rule", "status"]
    out = pd.DataFrame(rows, columns=cols)
    for c in ("baseline", "baseline_ci_low", "baseline_ci_high", "new", "delta", "rel_delta"):
        out[c] = out[c].astype("float64")
    out["_order"] = out["status"].map(STATUS_ORDER)
    return out.sort_values(["_order", "job", "method"], kind="stable").drop(columns="_order").reset_index(drop=True)


def _keyed(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    for c in ("ci_low", "ci_high"):
        if c not in df.columns:
            df[c] = float("nan")
    if "benchmark" not in df.columns:
        df["benchmark"] = ""
    df["benchmark"] = df["benchmark"].fillna("")
    df = df[[*KEYS, "value", "ci_low", "ci_high"]].drop_duplicates(KEYS, keep="last")
    for c in ("value", "ci_low", "ci_high"):
        df[c] = df[c].astype("float64")
    return df


def is_flagged(status: str) -> bool:
    """Whether a status counts as a regression (the CLI exits 1)."""
    return status in ("regression", "missing")
