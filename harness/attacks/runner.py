"""Run the job's enabled attacks on every scored model, and report them: the "after attack" table of summary.md
(forget quality, the recovery metric and the recovery score per method and attack, mean [95% percentile bootstrap
interval] over seeds), the membership-inference AUC table, and plots/recovery.png (the relearn recovery curves)."""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from harness.attacks.base import ATTACKS, AttackInputs, AttackOutput, remove_dir
from harness.benchmarks.base import Benchmark
from harness.core.stats import bootstrap_interval
from harness.render.tables import format_stat, pyplot, save_figure, to_markdown

NO_ATTACK = "none"


def run_attacks(inputs: AttackInputs) -> AttackOutput:
    """Every attack enabled in `spec.attacks`, in order, on every model of `inputs`; their rows and notes."""
    attacks = inputs.spec.attacks
    total = AttackOutput()
    try:
        for name in attacks.enabled():  # each attack's module registers it
            importlib.import_module(f"harness.attacks.{name}")
            attack = ATTACKS.get(name)(getattr(attacks, name), attacks.seed)
            out = attack.run(inputs)
            total.metric_rows += out.metric_rows
            total.example_rows += out.example_rows
            total.notes += out.notes
    finally:
        remove_dir(inputs.work)  # the attacked models' scratch directory
    return total


def _cell(values: Sequence[float]) -> str:
    s = bootstrap_interval(values)  # percentile: inside the seeds' values, so inside the metric's range
    return "—" if s.n == 0 else format_stat(s.mean, s.low, s.high)


def _values(df: pd.DataFrame, split: str, metric: str) -> list[float]:
    hit = df[(df["split"] == split) & (df["metric"] == metric)].sort_values("seed")
    return hit["value"].astype(float).tolist()


def _table_variants(attacked: pd.DataFrame) -> list[tuple[str, str]]:
    """(attack, variant) rows of the table in run order; relearn shows its step-0 and last-step points only."""
    seen = list(dict.fromkeys(zip(attacked["attack"], attacked["attack_variant"], strict=True)))
    last = {kind: max((int(v.split("@")[1]) for a, v in seen if a == "relearn" and v.startswith(kind + "@")),
                      default=None) for kind in ("forget", "benign")}
    keep = []
    for attack, variant in seen:
        if attack == "mia":
            continue
        if attack == "relearn" and variant != "step@0":
            kind, step = variant.split("@")
            if int(step) != last[kind]:
                continue
        keep.append((attack, variant))
    return keep


def attack_section(metrics: pd.DataFrame, bench: Benchmark, methods: Sequence[str]) -> str:
    """Markdown: the after-attack table and the MIA table (empty when no attack ran)."""
    if "attack" not in metrics.columns or metrics["attack"].isna().all():
        return ""
    plain = metrics[metrics["attack"].isna()]
    attacked = metrics[metrics["attack"].notna()]
    labels = {(c.split, c.metric): c.label for c in bench.summary_columns}
    which = bench.recovery_metric()
    fq = next(((c.split, c.metric) for c in bench.summary_columns if c.metric == "forget_quality"), None)
    cols = [c for c in (fq, which) if c is not None]
    text = ""
    variants = _table_variants(attacked)
    if variants:
        rows = []
        for method in methods:
            mine = plain[plain["method"] == method]
            rows.append({"method": method, "attack": NO_ATTACK,
                         **{labels.get(c, c[1]): _cell(_values(mine, *c)) for c in cols}, "recovery": "—"})
            for attack, variant in variants:
                sub = attacked[(attacked["method"] == method) & (attacked["attack"] == attack)
                               & (attacked["attack_variant"] == variant)]
                if sub.empty:
                    continue
                row = {"method": method, "attack": f"{attack} {variant}",
                       **{labels.get(c, c[1]): _cell(_values(sub, *c)) for c in cols}}
                row["recovery"] = _cell(_values(sub, which[0], "recovery")) if which else "—"
                rows.append(row)
        text += ("\n## After attack\n\n" + to_markdown(pd.DataFrame(rows)) + "\n\n"
                 "- recovery = (m(attacked) - m(unlearned)) / (m(target) - m(unlearned)) per seed on the same examples "
                 f"(m = {labels.get(which, which[1]) if which else '—'}; docs/results/attacks.md): 0 = nothing comes "
                 "back, 1 = back to the target.\n")
        if any(a == "relearn" for a, _ in variants):
            text += ("- Relearn rows use the held-back forget examples (its `step@0` row is the model before "
                     "fine-tuning on them); plots/recovery.png shows the whole curve.\n")
    mia = attacked[attacked["attack"] == "mia"]
    if not mia.empty:
        stats = list(dict.fromkeys(mia["metric"]))
        rows = [{"method": m, **{s.removeprefix("mia_"): _cell(mia[(mia["method"] == m) & (mia["metric"] == s)]
                                                               .sort_values("seed")["value"].tolist())
                                 for s in stats}} for m in methods if (mia["method"] == m).any()]
        text += ("\n## Membership inference (AUC, forget vs holdout)\n\n" + to_markdown(pd.DataFrame(rows)) + "\n\n"
                 "- open-unlearning's convention: 1 = the forget data are far more likely than the holdout data, "
                 "0.5 = indistinguishable (what a model that never saw them gives).\n")
    return text


def plot_recovery(metrics: pd.DataFrame, bench: Benchmark, methods: Sequence[str], path: Path) -> Path | None:
    """plots/recovery.png: the recovery metric of each method along the relearn steps (mean over seeds), forget
    fine-tuning solid, benign (retain) fine-tuning dashed."""
    plt = pyplot()
    which = bench.recovery_metric()
    if which is None or "attack" not in metrics.columns:
        return None
    rel = metrics[(metrics["attack"] == "relearn") & (metrics["split"] == which[0]) & (metrics["metric"] == which[1])]
    if rel.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, method in enumerate(methods):
        mine = rel[rel["method"] == method]
        if mine.empty:
            continue
        start = mine[mine["attack_variant"] == "step@0"]["value"].mean()
        for kind, style in (("forget", "-"), ("benign", "--")):
            pts = mine[mine["attack_variant"].str.startswith(kind + "@")]
            steps = sorted({int(v.split("@")[1]) for v in pts["attack_variant"]})
            if not steps:
                continue
            ys = [start] + [pts[pts["attack_variant"] == f"{kind}@{s}"]["value"].mean() for s in steps]
            ax.plot([0, *steps], ys, style, marker="o", color=f"C{i}",
                    label=f"{method} ({kind})" if not math.isnan(ys[-1]) else None)
    ax.set_xlabel("relearn fine-tuning steps")
    ax.set_ylabel(f"{which[1]} on held-back {which[0]} examples")
    ax.set_title("Relearning: forget (solid) vs benign retain (dashed) fine-tuning, mean over seeds")
    ax.legend(fontsize=7, ncol=2)
    save_figure(fig, path)
    return path
