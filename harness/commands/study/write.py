"""A study's results: study.md (table and verdict), study.parquet (every trial and confirmation seed), plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from harness.benchmarks.base import MatchedUtility
from harness.commands.study.confirm import ALPHA
from harness.commands.study.select import check_equal_budgets, utility_budget
from harness.commands.study.spec import StudySpec
from harness.core.io import atomic_write_parquet, atomic_write_text
from harness.render.tables import format_stat, pyplot, save_figure, to_markdown


def _fmt(x: float) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def _config_text(row: pd.Series) -> str:
    parts = [f"{c.removeprefix('config/').split('.')[-1]}={_fmt(v) if isinstance(v, float) else v}"
             for c, v in row.items() if c.startswith("config/") and not (isinstance(v, float) and math.isnan(v))]
    return ", ".join(parts)


def study_frame(study: StudySpec, trials: pd.DataFrame, per_seed: pd.DataFrame, target_utility: float,
                confirm_target_utility: float) -> pd.DataFrame:
    """study.parquet: every trial (`kind` trial) and every confirmation seed (`kind` confirm, with its method's
    selected settings), each row with the budget it ran under (`n_trials`, `steps_budget`, `search_seeds`), the
    confirmation seeds, delta and the target's utility."""
    settings = [c for c in trials.columns if c.startswith("config/")]
    chosen = trials[trials["selected"]].set_index("method")
    confirm = per_seed.copy()
    confirm["trial_id"] = [chosen["trial_id"].get(m, "") for m in confirm["method"]]
    for c in settings:
        confirm[c] = [chosen[c].get(m) for m in confirm["method"]]
    confirm["kind"], confirm["target_utility"] = "confirm", confirm_target_utility
    search = trials.assign(kind="trial", seed=pd.NA, target_utility=target_utility)
    frame = pd.concat([search, confirm], ignore_index=True)
    frame["n_trials"] = study.trials
    frame["steps_budget"] = study.steps
    frame["search_seeds"] = ",".join(map(str, study.search_seeds))
    frame["confirm_seeds"] = ",".join(map(str, study.confirm_seeds))
    frame["delta"] = study.delta
    frame["seed"] = frame["seed"].astype("Int64")
    return frame


def verdict(table: pd.DataFrame, matched: MatchedUtility, delta: float) -> str:
    """One paragraph computed from the comparison table: which methods beat their baseline at matched utility."""
    if table.empty:
        return "No method had a usable trial: nothing was confirmed."
    compared = table[table["baseline"].notna() & table["diff"].notna()]
    best = table.sort_values("forget_mean", ascending=matched.mode == "min").iloc[0]
    head = (f"At matched utility (utility within {delta:g} of the target's), the best forget score is "
            f"{best['method']}'s ({_fmt(best['forget_mean'])} [{_fmt(best['forget_low'])}, "
            f"{_fmt(best['forget_high'])}], {matched.mode} is better).")
    if compared.empty:
        return head + " No method has a baseline to be compared with."
    better = compared[compared["better"]]["method"].tolist()
    worse = compared[compared["worse"]]["method"].tolist()
    favour = compared[compared["interval_favours"] == "method"]["method"].tolist()
    against = compared[compared["interval_favours"] == "baseline"]["method"].tolist()
    parts = [head, f"Against their baselines, {len(better)} of {len(compared)} methods forget significantly better "
             f"(Holm-adjusted p < {ALPHA:g})" + (f": {', '.join(better)}" if better else "")
             + (f" and {len(worse)} significantly worse: {', '.join(worse)}" if worse else "") + "."]
    min_p = float(compared["min_p"].min())
    if min_p >= ALPHA:
        parts.append(f"With {int(compared['n_seeds'].min())} paired seeds the exact test cannot go below p = "
                     f"{min_p:.3g}, so no difference can be significant; the bootstrap interval of the difference "
                     f"excludes 0 in the method's favour for {', '.join(favour) or 'none'} and in the baseline's "
                     f"for {', '.join(against) or 'none'}.")
    return " ".join(parts)


def study_markdown(study: StudySpec, job_name: str, matched: MatchedUtility, trials: pd.DataFrame,
                   table: pd.DataFrame, target_utility: float, confirm_target_utility: float) -> str:
    """study.md: the budget, one row per method, the verdict, and the per-seed values."""
    budget = utility_budget(target_utility, study.delta)
    lines = [f"# Study: {study.name} (job {job_name})", "",
             f"Every method: {study.trials} trials (Optuna TPE, sampler seed {study.sampler_seed}) of {study.steps} "
             f"steps on search seeds {study.search_seeds}; selection: the best forget score ({matched.forget_label}, "
             f"{matched.mode}) among trials whose utility ({matched.utility_label}) is at least (1 - {study.delta:g}) "
             f"x the target's {_fmt(target_utility)} = {_fmt(budget)}; the selected configuration rerun on fresh "
             f"seeds {study.confirm_seeds} (target utility there {_fmt(confirm_target_utility)}). Cells: mean "
             "[95% percentile bootstrap interval] over the confirmation seeds; difference = method - baseline on "
             "paired seeds, p from an exact sign-flip permutation test, Holm-adjusted over the methods compared.",
             ""]
    rows = []
    chosen = trials[trials["selected"]].set_index("method")
    for method in trials["method"].unique():
        sel = chosen.loc[method] if method in chosen.index else None
        n_inside = int(trials[(trials["method"] == method) & trials["inside_budget"]].shape[0])
        r = table[table["method"] == method]
        row: dict[str, Any] = {"method": method,
                               "selected configuration": _config_text(sel) if sel is not None else "— (all diverged)",
                               "inside budget": ("yes" if bool(sel["inside_budget"]) else "no trial inside budget")
                               if sel is not None else "no",
                               "trials inside": f"{n_inside}/{study.trials}"}
        if r.empty:
            row.update({"forget score": "—", "utility": "—", "baseline": "—", "difference": "—", "p (Holm)": "—"})
        else:
            r = r.iloc[0]
            row["forget score"] = format_stat(r["forget_mean"], r["forget_low"], r["forget_high"])
            row["utility"] = format_stat(r["utility_mean"], r["utility_low"], r["utility_high"])
            row["baseline"] = r["baseline"] or "—"
            row["difference"] = format_stat(r["diff"], r["diff_low"], r["diff_high"]) if r["baseline"] else "—"
            row["p (Holm)"] = (f"{r['p']:.3g} ({r['p_holm']:.3g})" if r["baseline"] and not math.isnan(r["p"])
                               else "—")
        rows.append(row)
    lines += [to_markdown(pd.DataFrame(rows)), "", "**Verdict.** " + verdict(table, matched, study.delta), ""]
    if not table.empty:
        def listed(values: list[float]) -> str:
            return ", ".join(_fmt(v) for v in values)

        seeds = pd.DataFrame({"method": table["method"],
                              "forget score per seed": [listed(vs) for vs in table["forget_values"]],
                              "utility per seed": [listed(vs) for vs in table["utility_values"]]})
        lines += [f"Per confirmation seed ({', '.join(map(str, study.confirm_seeds))}):", "", to_markdown(seeds), ""]
    return "\n".join(lines)


def plot_matched(table: pd.DataFrame, matched: MatchedUtility, path: Path) -> Path | None:
    """The forget score at matched utility per method: mean, 95% interval and each seed."""
    plt = pyplot()
    if table.empty:
        return None
    fig, ax = plt.subplots(figsize=(max(4.5, 0.8 * len(table) + 2), 4))
    xs = list(range(len(table)))
    means = table["forget_mean"].astype(float)
    lo = (means - table["forget_low"].astype(float)).fillna(0).clip(lower=0)
    hi = (table["forget_high"].astype(float) - means).fillna(0).clip(lower=0)
    ax.errorbar(xs, means, yerr=[lo, hi], fmt="o", color="tab:blue", capsize=4, label="mean, 95% interval")
    for x, values in zip(xs, table["forget_values"], strict=True):
        ax.scatter([x] * len(values), values, s=12, color="black", alpha=0.6, zorder=3)
    ax.set_xticks(xs, table["method"], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(f"{matched.forget_label} ({'higher' if matched.mode == 'max' else 'lower'} is better)")
    ax.set_title("Forget score at matched utility (confirmation seeds; dots: seeds)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path)
    return path


def plot_trials(trials: pd.DataFrame, matched: MatchedUtility, budget: float, path: Path) -> Path | None:
    """Each method's trials in the utility / forget-score plane, the budget line and the selected trial."""
    plt = pyplot()
    methods = list(trials["method"].unique())
    if not methods:
        return None
    cols = min(4, len(methods))
    rows = math.ceil(len(methods) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.0 * rows), squeeze=False, sharex=True, sharey=True)
    for ax, method in zip(axes.flat, methods, strict=False):
        t = trials[trials["method"] == method]
        ax.scatter(t["utility"], t["forget_score"], s=14, color="0.5", label="trials")
        sel = t[t["selected"]]
        ax.scatter(sel["utility"], sel["forget_score"], s=60, marker="*", color="tab:red", label="selected", zorder=3)
        ax.axvline(budget, color="tab:green", linestyle="--", linewidth=1, label="utility budget")
        ax.set_title(method, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(methods):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.supxlabel(f"{matched.utility_label} (higher is better)", fontsize=9)
    fig.supylabel(matched.forget_label, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def write_study(out: Path, study: StudySpec, job_name: str, matched: MatchedUtility, trials: pd.DataFrame,
                per_seed: pd.DataFrame, table: pd.DataFrame, target_utility: float,
                confirm_target_utility: float) -> str:
    """study.parquet (equal budgets checked first), study.md and plots/; returns study.md's text."""
    frame = study_frame(study, trials, per_seed, target_utility, confirm_target_utility)
    check_equal_budgets(frame)
    atomic_write_parquet(out / "study.parquet", frame)
    text = study_markdown(study, job_name, matched, trials, table, target_utility, confirm_target_utility)
    atomic_write_text(out / "study.md", text)
    plot_matched(table, matched, out / "plots" / "matched_utility.png")
    plot_trials(trials, matched, utility_budget(target_utility, study.delta), out / "plots" / "trials.png")
    return text
