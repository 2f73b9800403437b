"""Confirmation: the selected configurations rerun on fresh seeds through the normal job pipeline, then compared.

The confirmation is one ordinary job (`harness run`'s pipeline: one worker group for every method x seed, the
results contract under `<study out>/confirm/`), so its summary.md, metrics.parquet and checkpoints are those of
any run. Each method is compared with its baseline on paired seeds (harness.seeds: bootstrap intervals, exact
sign-flip permutation test, Holm over the methods compared).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from harness.benchmarks.base import MatchedUtility
from harness.commands.study.select import check_disjoint_seeds
from harness.commands.study.spec import StudySpec
from harness.commands.tune import apply_trial
from harness.core.stats import bootstrap_interval, holm, paired_comparison
from harness.spec import JobSpec, validate_spec

#: Significance level of the verdict (after Holm's adjustment).
ALPHA = 0.05


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def selected_config(row: pd.Series) -> dict[str, Any]:
    """A selected trial's settings (its non-empty `config/...` columns) as dotted paths inside the method."""
    return {c.removeprefix("config/"): _plain(v) for c, v in row.items()
            if c.startswith("config/") and not (isinstance(v, float) and math.isnan(v))}


def confirm_job(study: StudySpec, job: JobSpec, selected: pd.DataFrame, out: Path) -> JobSpec:
    """The confirmation job: every method with a selected trial, at that trial's settings, on the confirmation
    seeds, writing under `out/confirm` (one MLflow experiment with the study's)."""
    check_disjoint_seeds(study.search_seeds, study.confirm_seeds)
    data = job.model_dump(mode="json")
    methods = []
    for m in job.methods:
        rows = selected[selected["method"] == m.name]
        if not rows.empty:
            methods.append(apply_trial(job, m.name, selected_config(rows.iloc[0])).methods[0].model_dump(mode="json"))
    data.update({"name": f"{study.name}-confirm", "methods": methods, "seeds": list(study.confirm_seeds),
                 "out": str(out / "confirm")})
    spec = validate_spec(data, "(study confirmation)")
    if spec.tracking is not None:
        from harness.tracking import resolve_uri, with_store

        spec = with_store(spec, resolve_uri(spec.tracking, out), f"study-{study.name}")
    return spec


def run_confirmation(spec: JobSpec, resume: bool) -> Path:
    """Run the confirmation job (kept when an earlier attempt finished it; resumed when `resume`)."""
    from harness.pipeline.context import log
    from harness.pipeline.job import run_job
    from harness.results.run_dir import has_results

    out = spec.out_dir()
    if resume and has_results(out):
        log("study: the confirmation finished before the interruption: kept")
        return out
    log(f"study: confirming {len(spec.methods)} method(s) on fresh seeds {spec.seeds}")
    return run_job(spec, progress=False, overwrite=True, resume=resume).out_dir


def seed_values(metrics: pd.DataFrame, matched: MatchedUtility, methods: list[str]) -> pd.DataFrame:
    """Per (method, seed) of a confirmation's metrics.parquet: the forget score and the utility (a diverged seed
    has none: NaN). The retain model's values of the same seed are used where the job has per-seed references."""
    def values(rows: pd.DataFrame) -> dict[tuple[str, str], float]:
        return {(r.split, r.metric): float(r.value) for r in rows.itertuples()}

    retain_rows = metrics[metrics["method"] == "retain"]
    out = []
    for method in methods:
        m = metrics[metrics["method"] == method]
        for seed in sorted(m["seed"].unique()):
            own = values(m[m["seed"] == seed])
            same = retain_rows[retain_rows["seed"] == seed]
            retain = values(same if not same.empty else retain_rows)
            scored = matched.utility in own
            out.append({"method": method, "seed": int(seed),
                        "forget_score": matched.forget_score(own, retain) if scored else math.nan,
                        "utility": own.get(matched.utility, math.nan)})
    return pd.DataFrame(out, columns=["method", "seed", "forget_score", "utility"])


def compare_with_baselines(per_seed: pd.DataFrame, baselines: dict[str, str | None],
                           matched: MatchedUtility) -> pd.DataFrame:
    """One row per method: forget score and utility, mean with a bootstrap interval inside their ranges, the
    per-seed values, and against the baseline (paired on seeds) the difference of the forget score with its
    interval, p, the smallest p these seeds allow, Holm-adjusted p, and whether the method is better/worse."""
    rows = []
    for method, group in per_seed.groupby("method", sort=False):
        g = group.sort_values("seed")
        f = bootstrap_interval(g["forget_score"], *matched.forget_range)
        u = bootstrap_interval(g["utility"], *matched.utility_range)
        row: dict[str, Any] = {
            "method": method, "n_seeds": f.n, "forget_mean": f.mean, "forget_low": f.low, "forget_high": f.high,
            "utility_mean": u.mean, "utility_low": u.low, "utility_high": u.high,
            "forget_values": g["forget_score"].tolist(), "utility_values": g["utility"].tolist(),
            "baseline": baselines.get(method), "diff": math.nan, "diff_low": math.nan, "diff_high": math.nan,
            "p": math.nan, "min_p": math.nan}
        base = baselines.get(method)
        if base is not None and base in set(per_seed["method"]):
            b = per_seed[per_seed["method"] == base].set_index("seed")["forget_score"]
            paired = g.set_index("seed")["forget_score"].to_frame("a").join(b.rename("b"), how="inner")
            c = paired_comparison(paired["a"].to_numpy(), paired["b"].to_numpy())
            row.update({"diff": c.diff, "diff_low": c.low, "diff_high": c.high, "p": c.p, "min_p": c.min_p})
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["p_holm"] = holm(table["p"].tolist())
    sign = 1.0 if matched.mode == "max" else -1.0
    table["better"] = (table["p_holm"] < ALPHA) & (sign * table["diff"] > 0)
    table["worse"] = (table["p_holm"] < ALPHA) & (sign * table["diff"] < 0)
    table["interval_favours"] = [
        "method" if sign * lo > 0 and sign * hi > 0 else "baseline" if sign * lo < 0 and sign * hi < 0 else "neither"
        for lo, hi in zip(table["diff_low"], table["diff_high"], strict=True)]
    table.loc[table["diff"].isna(), "interval_favours"] = ""
    return table
