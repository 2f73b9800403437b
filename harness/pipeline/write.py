"""The results-contract writer: aggregate per seed, write the parquet tables, the summary, plots and env.json."""

from __future__ import annotations

import datetime as dt
import shutil
import time
from collections.abc import Mapping, Sequence
from typing import Any

from harness.benchmarks.base import Benchmark, ModelScores
from harness.config import REFERENCE_METHODS
from harness.core.io import atomic_write_json, atomic_write_parquet
from harness.pipeline.attacks import attack_job, write_attack_report
from harness.pipeline.context import JobContext, JobResult, ModelKey, ScoredModel, Training
from harness.pipeline.resume import (
    SCORES_DIR,
)
from harness.pipeline.score import job_pool, score_all
from harness.render import sensitivity
from harness.render.tables import (
    Column,
    pareto_table,
    plot_metrics,
    plot_pareto,
    plot_training,
    summary_stats,
    summary_table,
    write_summary,
)
from harness.results.contract import (
    EXAMPLE_COLUMNS,
    GENERATION_COLUMNS,
    METRIC_COLUMNS,
    TRAIN_LOG_COLUMNS,
    frame,
    unattacked,
)
from harness.results.env import environment
from harness.results.run_record import record_models
from harness.spec import JobSpec
from harness.train.reference import reference_seed_for


def aggregate_all(bench: Benchmark, scores: dict[ModelKey, ModelScores], spec: JobSpec, ref_seeds: list[int],
                  names: Sequence[str] | None = None, seeds: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Metric rows with their seed: the references once per reference seed, then each scored model per seed
    (default: the spec's methods and seeds), each compared with the references of its own reference seed."""
    names = [m.name for m in spec.methods] if names is None else list(names)
    seeds = spec.seeds if seeds is None else list(seeds)
    rows: list[dict[str, Any]] = []

    def refs_of(seed: int) -> dict[str, ModelScores]:
        return {name: scores[(name, seed)] for name in REFERENCE_METHODS if (name, seed) in scores}

    def extra(group: dict[str, ModelScores], seed: int) -> list[dict[str, Any]]:
        return [{**r, "method": name, "seed": seed} for name, sc in group.items() for r in sc.metric_rows]

    for seed in ref_seeds:
        rows += [{**r, "seed": seed} for r in bench.aggregate(refs_of(seed), spec.eval)] + extra(refs_of(seed), seed)
    for seed in seeds:
        mine = {n: scores[(n, seed)] for n in names if (n, seed) in scores}
        if not mine:
            continue
        group = {**refs_of(reference_seed_for(spec, seed)), **mine}
        rows += [{**r, "seed": seed} for r in bench.aggregate(group, spec.eval) if r["method"] not in REFERENCE_METHODS]
        rows += extra(mine, seed)
    return rows


def extra_columns(metric_rows: Sequence[dict[str, Any]], benchmark: str) -> list[Column]:
    """Summary columns for the metric rows of other benchmarks than the job's (lm-evaluation-harness tasks)."""
    seen = dict.fromkeys((r["benchmark"], r["split"], r["metric"]) for r in metric_rows
                         if r.get("benchmark", benchmark) != benchmark)
    return [Column(split, metric, f"{split} {metric}") for _, split, metric in seen]


def score_and_write(ctx: JobContext, sources: dict[ModelKey, ScoredModel], names: Sequence[str],
                    seeds: Sequence[int], notes: list[str], training: Training | None = None,
                    copies: Mapping[ModelKey, ModelKey] | None = None) -> JobResult:
    """Score `sources` (the references and the models `names`), aggregate per seed and write the results
    contract (DESIGN.md section 4) under the job's out dir; shared by `harness run` and `harness eval`.

    `copies` maps extra (name, seed) keys to a scored key whose scores they reuse (one model reported under
    several seeds, each compared with its own seed's references).
    """
    spec, bench, out, refs = ctx.spec, ctx.bench, ctx.out, ctx.refs
    training = training or Training()
    record_models(out, {key: (src.source, src.adapter) for key, src in sources.items()})
    t0 = time.perf_counter()
    with job_pool(spec, ctx.device) as pool:  # one pool for the job's models and every attacked variant
        scores = score_all(bench, refs, sources, spec, ctx.device, cache=out / SCORES_DIR, pool=pool)
        scores.update({key: scores[of] for key, of in (copies or {}).items()})
        ctx.timings["score_s"] = time.perf_counter() - t0

        metric_rows = aggregate_all(bench, scores, spec, ctx.ref_seeds, names, seeds) + training.metric_rows
        for row in metric_rows:
            row.setdefault("benchmark", bench.name)
        examples = [{"method": m, "seed": s, "benchmark": bench.name, **r} for (m, s), sc in scores.items()
                    for r in sc.examples]
        generations = [{"method": m, "seed": s, "benchmark": bench.name, **r} for (m, s), sc in scores.items()
                       for r in sc.generations]
        if spec.attacks.enabled():  # attack rows carry `attack`: the tables below but the attack ones leave them out
            t_attack = time.perf_counter()
            attacked = attack_job(ctx, sources, scores, metric_rows, pool)
            ctx.timings["attacks_s"] = time.perf_counter() - t_attack
            metric_rows, examples, notes = metric_rows + attacked.metric_rows, examples + attacked.example_rows, \
                notes + attacked.notes

    metrics_df = frame(metric_rows, METRIC_COLUMNS)
    train_df = frame(training.log_rows, TRAIN_LOG_COLUMNS)
    atomic_write_parquet(out / "metrics.parquet", metrics_df)
    atomic_write_parquet(out / "train_log.parquet", train_df)
    examples_df = frame(examples, EXAMPLE_COLUMNS)
    atomic_write_parquet(out / "examples.parquet", examples_df)
    atomic_write_parquet(out / "generations.parquet", frame(generations, GENERATION_COLUMNS))

    methods = [m for m in REFERENCE_METHODS if any(k[0] == m for k in scores)] + list(names)
    columns = bench.summary_columns + extra_columns(metric_rows, bench.name) + sensitivity.summary_columns(metrics_df)
    stats = summary_stats(unattacked(metrics_df), train_df, columns, methods)
    atomic_write_parquet(out / "summary.parquet", stats)
    table = summary_table(stats, methods, training.diverged)
    notes = [*notes, _seeds_note(spec, ctx.ref_seeds),
             "reference models: " + "; ".join(f"seed {s}: target = {r.target_source}, retain = {r.retain_source}"
                                              for s, r in refs.items())]
    if len(names) > 1:
        pareto = pareto_table(stats, methods, REFERENCE_METHODS)
        if plot_pareto(pareto, out / "plots" / "pareto.png") is not None:
            atomic_write_parquet(out / "pareto.parquet", pareto)
            notes.append("Pareto front of (forget quality, model utility), seed means, among the methods: "
                         + ", ".join(pareto.loc[pareto["pareto"], "method"]) + " (plots/pareto.png).")
    summary = write_summary(out / "summary.md", f"{spec.name}: {bench.describe()}", table, notes)
    if spec.attacks.enabled():
        summary = write_attack_report(out, summary, metrics_df, bench, methods)
    plot_training(train_df, out / "plots" / "training.png")
    sensitivity.plot_sensitivity(train_df, out / "plots" / "sensitivity.png")
    plot_metrics(stats, columns, out / "plots" / "metrics.png")
    bench.plots(unattacked(examples_df), methods, out / "plots")

    finished = dt.datetime.now(dt.UTC)
    env = environment(spec.seeds, str(ctx.device), ctx.started, finished)
    env["timings_s"] = {k: round(v, 2) for k, v in ctx.timings.items()}
    env["run_seconds"] = {key: round(s, 2) for key, s in training.run_seconds.items()}
    atomic_write_json(out / "env.json", env)
    shutil.rmtree(out / SCORES_DIR, ignore_errors=True)  # kept for a resume only; the results are written
    any_diverged = {name: k > 0 for name, (k, _) in training.diverged.items()}
    return JobResult(out, summary, any_diverged)


def _seeds_note(spec: JobSpec, ref_seeds: list[int]) -> str:
    n = len(spec.seeds)
    refs = "one pair per seed" if spec.reference.per_seed else f"one shared pair (seed {ref_seeds[0]})"
    if n == 1:
        return f"one seed ({spec.seeds[0]}): no interval; one seed of a chaotic optimisation supports no conclusion. " \
               f"Reference models: {refs}."
    return (f"{n} seeds ({', '.join(map(str, spec.seeds))}): each cell is the mean [95% percentile bootstrap "
            f"interval] over the seeds (diverged seeds left out of the metrics). Reference models: {refs}.")
