"""`harness sweep`: a grid (or random) sweep over spec fields for ablations, every configuration x seed in one table.

A sweep file varies a job spec. `cases` are alternative grids (e.g. omega only with the sine bound), each
crossed with the shared `grid`; `mode: random` draws `num_samples` configurations from distributions
instead (the `harness tune` syntax: `{choice: [...]}`, `{uniform: [a, b]}`, `{loguniform: [a, b]}`)::

    method: gd              # the job's method the configurations start from (default: its only method)
    seeds: [0, 1, 2]        # default: the job's seeds
    cases:
      - {adapter.bound: [none]}
      - {adapter.bound: [sine], adapter.omega: [10, 100, 1000]}
    grid:
      train.lr: [1.0e-4, 1.0e-3, 1.0e-2]
    objectives:             # the two metrics of the trade-off plot (default: the benchmark's first two columns)
      - {metric: forget_quality, split: forget10}
      - {metric: model_utility, split: all}
    group_by: adapter.bound # panels of the curve plot and colours of the trade-off plot
    curves: {train.lr: 1.0e-2}  # draw only these configurations' curves (default: all)

Paths inside a method (`adapter.`, `objective.`, `train.`) make configurations that are methods of one job,
so one Ray Train worker group trains them all; any other path (`model.name`, `benchmark.`, `reference.`)
splits the sweep into one job per value, run one after another. Results under `--out`: each job's usual
results directory, `sweep.parquet` (one row per configuration and seed: its settings, final metrics and
training telemetry), `sweep.md` (one row per configuration: mean [95% interval] over seeds), and
`plots/curves.png` (gradient and adapter norm against step, log scale, one panel per `group_by` value, seeds
shaded) and `plots/tradeoff.png` (the two objectives, one point per configuration, seed spread as bars).
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import Field, model_validator

from harness.benchmarks import load_benchmark_class
from harness.config import SearchObjective, StrictModel, apply_override, load_config
from harness.core.errors import SpecError
from harness.core.io import atomic_write_parquet, atomic_write_text, ensure_writable_dir
from harness.core.stats import across_seeds
from harness.pipeline.context import log
from harness.pipeline.job import run_job
from harness.pipeline.resume import check_resumable
from harness.render.tables import format_stat, pareto_front, pyplot, save_figure, to_markdown
from harness.results.run_dir import has_results
from harness.results.run_record import read_run_metrics, read_run_train_log
from harness.spec import JobSpec, load_spec, validate_spec
from harness.tracking import resolve_uri, with_store

METHOD_SECTIONS = ("adapter", "objective", "train")
_DISTRIBUTIONS = ("choice", "uniform", "loguniform")
#: Short names of common paths in method names (the sweep table keeps the full paths).
_SHORT = {"adapter.bound": "", "adapter.omega": "w", "adapter.clip_value": "c", "adapter.rank": "r",
          "adapter.alpha": "a", "train.lr": "lr", "train.optimizer": "", "train.epochs": "ep",
          "train.max_steps": "st", "objective.name": "", "objective.w_forget": "wf", "objective.w_retain": "wr"}


class SweepSpec(StrictModel):
    """A sweep over spec fields: alternative grids (`cases`) crossed with a shared `grid`, or random draws."""

    method: str | None = None
    seeds: list[int] | None = Field(None, min_length=1)
    mode: Literal["grid", "random"] = "grid"
    num_samples: int = Field(8, ge=1, description="random mode: configurations drawn")
    sample_seed: int = 0
    cases: list[dict[str, Any]] = []
    grid: dict[str, Any] = {}
    objectives: list[SearchObjective] = Field([], max_length=2)
    group_by: str = "adapter.bound"
    curves: dict[str, Any] = Field({}, description="only configurations with these values are drawn in curves.png")

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        if not self.cases and not self.grid:
            raise ValueError("a sweep needs `grid` or `cases`")
        for where, values in [("grid", self.grid), *((f"cases.{i}", c) for i, c in enumerate(self.cases))]:
            for path, v in values.items():
                if self.mode == "grid" and not (isinstance(v, list) and v):
                    raise ValueError(f"{where}.{path}: a grid value must be a non-empty list")
                if self.mode == "random" and not (isinstance(v, list) and v) and not (
                        isinstance(v, dict) and len(v) == 1 and next(iter(v)) in _DISTRIBUTIONS):
                    raise ValueError(f"{where}.{path}: give a list or one of {', '.join(_DISTRIBUTIONS)}")
        return self


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file."""
    return load_config(SweepSpec, path, "sweep file")


def _draw(value: Any, rng: random.Random) -> Any:
    if isinstance(value, list):
        return rng.choice(value)
    kind, args = next(iter(value.items()))
    if kind == "choice":
        return rng.choice(list(args))
    lo, hi = args
    return rng.uniform(lo, hi) if kind == "uniform" else math.exp(rng.uniform(math.log(lo), math.log(hi)))


def configurations(sweep: SweepSpec) -> list[dict[str, Any]]:
    """Every configuration of the sweep (path -> value), in a stable order."""
    cases = sweep.cases or [{}]
    if sweep.mode == "random":
        rng = random.Random(sweep.sample_seed)
        return [{path: _draw(v, rng) for path, v in {**rng.choice(cases), **sweep.grid}.items()}
                for _ in range(sweep.num_samples)]
    out = []
    for case in cases:
        merged = {**case, **sweep.grid}
        keys = list(merged)
        for values in itertools.product(*(merged[k] for k in keys)):
            out.append(dict(zip(keys, values, strict=True)))
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.1e}" if value != 0 and (abs(value) < 1 or abs(value) >= 1e4) else f"{value:g}"
        text = text.replace(".0e", "e").replace("e-0", "e-").replace("e+0", "e")
        return text.replace(".", "p")
    return str(value).replace(".", "p")


def config_name(config: dict[str, Any]) -> str:
    """A readable method name of a configuration, e.g. `sine_w100_lr1e-2_r8` (letters, digits, `_`, `-`)."""
    parts = []
    for path, value in config.items():
        if path.split(".")[0] not in METHOD_SECTIONS:
            continue
        short = _SHORT.get(path, path.split(".")[-1].replace("_", ""))
        parts.append(f"{short}{_fmt(value)}")
    name = "_".join(p for p in parts if p) or "base"
    return "".join(ch if ch.isalnum() or ch in "_-+" else "-" for ch in name)


def _is_method_path(path: str) -> bool:
    return path.split(".")[0] in METHOD_SECTIONS


def sweep_jobs(base: JobSpec, sweep: SweepSpec) -> list[tuple[JobSpec, dict[str, dict[str, Any]]]]:
    """The jobs a sweep runs: [(job spec, {method name: its configuration})]; job-level paths split jobs."""
    data = base.model_dump(mode="json")
    methods = {m["name"]: m for m in data["methods"]}
    name = sweep.method or (next(iter(methods)) if len(methods) == 1 else None)
    if name is None or name not in methods:
        raise SpecError(f"sweep method: name one of the job's methods ({', '.join(methods)})")
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for config in configurations(sweep):
        job_part = tuple(sorted((k, yaml.safe_dump(v)) for k, v in config.items() if not _is_method_path(k)))
        groups.setdefault(job_part, []).append(config)
    jobs = []
    for i, (job_part, configs) in enumerate(groups.items()):
        job = {**data, "methods": []}
        if sweep.seeds:
            job["seeds"] = list(sweep.seeds)
        for path, dumped in job_part:
            job = apply_override(job, f"{path}={dumped.strip()}")
        job["name"] = f"{base.name}-{i}" if len(groups) > 1 else base.name
        named: dict[str, dict[str, Any]] = {}
        for config in configs:
            method = {**methods[name], "name": config_name(config)}
            if method["name"] in named:
                raise SpecError(f"two configurations get the method name {method['name']!r}: {config}")
            for path, value in config.items():
                if _is_method_path(path):
                    method = apply_override({"m": method}, f"m.{path}={yaml.safe_dump(value).strip()}")["m"]
            named[method["name"]] = config
            job["methods"].append(method)
        jobs.append((validate_spec(job, f"(sweep job {job['name']})"), named))
    return jobs


def _final_rows(out: Path, spec: JobSpec, named: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per (configuration, seed): its settings, every final metric, and its telemetry maxima."""
    metrics = read_run_metrics(out)
    log = read_run_train_log(out, required=True)
    rows = []
    for method, config in named.items():
        for seed in spec.seeds:
            m = metrics[(metrics["method"] == method) & (metrics["seed"] == seed)]
            row: dict[str, Any] = {"job": spec.name, "method": method, "seed": seed, **config}
            row.update({f"{r.split}/{r.metric}": r.value for r in m.itertuples()})
            steps = log[(log["method"] == method) & (log["seed"] == seed)]
            for key in ("grad_norm", "adapter_norm", "logit_norm"):
                row[f"max_{key}"] = float(steps[key].max()) if len(steps) else float("nan")
                row[f"final_{key}"] = float(steps[key].iloc[-1]) if len(steps) else float("nan")
            rows.append(row)
    return pd.DataFrame(rows)


def run_sweep(base: JobSpec, sweep: SweepSpec, out: Path, progress: bool = True, resume: bool = False) -> Path:
    """Run every job of the sweep and write sweep.parquet, sweep.md and the plots under `out`.

    `resume` continues an interrupted sweep: a job whose directory holds finished results of the same spec is
    kept, the others resume (`harness run --resume`); a job whose spec differs is refused (SpecError).
    """

    ensure_writable_dir(out)
    jobs = sweep_jobs(base, sweep)
    n = sum(len(named) for _, named in jobs)
    log(f"sweep: {n} configuration(s) x {len(jobs[0][0].seeds)} seed(s) in {len(jobs)} job(s)")
    frames, logs = [], []
    for spec, named in jobs:
        job_out = out / spec.name
        if spec.tracking is not None:  # one MLflow store and experiment for the whole sweep

            spec = with_store(spec, resolve_uri(spec.tracking, out), f"sweep-{base.name}")
        spec = spec.model_copy(update={"out": str(job_out)})
        if resume:
            check_resumable(job_out.expanduser().absolute(), spec.model_dump(mode="json"))
        if resume and has_results(job_out):
            log(f"sweep: job {spec.name} finished before the interruption: kept, not rerun")
        else:  # the job dirs belong to the sweep: a rerun of the sweep into its out dir replaces them
            run_job(spec, progress=progress, overwrite=True, resume=resume)
        frames.append(_final_rows(job_out, spec, named))
        logs.append(read_run_train_log(job_out, required=True).assign(job=spec.name))
    table = pd.concat(frames, ignore_index=True)
    curves = pd.concat(logs, ignore_index=True)
    atomic_write_parquet(out / "sweep.parquet", table)
    objectives = _objectives(jobs[0][0], sweep)
    atomic_write_text(out / "sweep.md", sweep_markdown(table, jobs, [o.column for o in objectives]))
    group = sweep.group_by
    config_of = {(j.name, m): c for j, named in jobs for m, c in named.items()}
    keys = list(zip(curves["job"], curves["method"], strict=True))
    curves[group] = [config_of.get(k, {}).get(group, "") for k in keys]
    drawn = [all(config_of.get(k, {}).get(p) == v for p, v in sweep.curves.items()) for k in keys]
    plot_curves(curves[drawn], group, out / "plots" / "curves.png")
    plot_tradeoff(table, objectives, group, out / "plots" / "tradeoff.png")
    return out


def _objectives(spec: JobSpec, sweep: SweepSpec) -> list[SearchObjective]:
    """The sweep's objectives, else the benchmark's first two summary columns."""
    if sweep.objectives:
        return list(sweep.objectives)

    cols = load_benchmark_class(spec.benchmark.name).summary_columns_for(spec.benchmark)
    return [SearchObjective(metric=c.metric, split=c.split, mode="min" if c.higher_is_better is False else "max")
            for c in cols[:2]]


def sweep_markdown(table: pd.DataFrame, jobs: list[tuple[JobSpec, dict[str, dict[str, Any]]]],
                   objectives: list[str]) -> str:
    """One row per configuration: its settings, then mean [95% interval] over seeds of the objectives and the
    telemetry maxima, and how many seeds diverged."""

    paths = list(dict.fromkeys(k for _, named in jobs for c in named.values() for k in c))
    shown = [*objectives, "max_grad_norm", "max_adapter_norm", "max_logit_norm"]
    shown += [c for c in ("sensitivity/lyapunov_exponent", "sensitivity/lyapunov_exponent_logits",
                          "sensitivity/steps_to_100pct") if c in table]  # runs with train.sensitivity
    rows = []
    for (job, method), g in table.groupby(["job", "method"], sort=False):
        row: dict[str, Any] = {"job": job, "method": method, **{p: g[p].iloc[0] for p in paths if p in g}}
        for col in shown:
            s = across_seeds(g[col].to_numpy(dtype=float)) if col in g else None
            row[col] = format_stat(s.mean, s.low, s.high) if s else "—"
        if "train/diverged" in g:
            row["diverged"] = f"{int(g['train/diverged'].sum())}/{len(g)}"
        rows.append(row)
    n_seeds = table.groupby(["job", "method"]).size().max()
    head = (f"# Sweep: {len(rows)} configurations x {n_seeds} seeds\n\nEach cell: mean [95% Student-t interval] "
            "over seeds (diverged seeds left out of the metrics).\n\n")
    return head + to_markdown(pd.DataFrame(rows)) + "\n"


def plot_curves(curves: pd.DataFrame, group: str, path: Path) -> Path | None:
    """Gradient norm (top) and adapter norm (bottom) against step, log scale, a panel per `group` value; one
    line per configuration (median over seeds), its seed range shaded."""
    plt = pyplot()
    if curves.empty:
        return None
    values = list(dict.fromkeys(curves[group]))
    fig, axes = plt.subplots(2, len(values), figsize=(4.2 * len(values), 6.5), squeeze=False, sharey="row")
    for col, value in enumerate(values):
        sub = curves[curves[group] == value]
        configs = list(dict.fromkeys(zip(sub["job"], sub["method"], strict=True)))
        cmap = plt.get_cmap("viridis", max(2, len(configs)))
        for row, key in enumerate(("grad_norm", "adapter_norm")):
            ax = axes[row][col]
            for i, (job, method) in enumerate(configs):
                g = sub[(sub["job"] == job) & (sub["method"] == method)].groupby("step")[key]
                med = g.median()
                ax.plot(med.index, med.to_numpy(), color=cmap(i), linewidth=1, label=method)
                ax.fill_between(med.index, g.min().to_numpy(), g.max().to_numpy(), color=cmap(i), alpha=0.15,
                                linewidth=0)
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
            ax.set_xlabel("step")
            if col == 0:
                ax.set_ylabel({"grad_norm": "gradient norm", "adapter_norm": "adapter norm ‖ΔW‖"}[key])
            if row == 0:
                ax.set_title(f"{group} = {value}")
        axes[1][col].legend(fontsize=6, ncol=1 if len(configs) < 8 else 2)
    fig.suptitle("Training telemetry per configuration (line: median over seeds; band: seed range)")
    fig.tight_layout()
    save_figure(fig, path)
    return path


def plot_tradeoff(table: pd.DataFrame, objectives: list[SearchObjective], group: str, path: Path) -> Path | None:
    """The two objectives, one panel per `group` value: a point per configuration (mean over seeds) with the seed
    range as bars; every panel also shows the Pareto front of all configurations' means."""
    plt = pyplot()
    if len(objectives) < 2 or table.empty or any(o.column not in table for o in objectives):
        return None
    (x, y), modes = [o.column for o in objectives], [o.mode for o in objectives]
    agg = table.groupby(["job", "method"], sort=False).agg(
        x=(x, "mean"), y=(y, "mean"), xlo=(x, "min"), xhi=(x, "max"), ylo=(y, "min"), yhi=(y, "max"),
        g=(group, "first") if group in table else ("method", "first")).reset_index()
    front = pareto_front(agg.rename(columns={"x": "fx", "y": "fy"}),
                         [SearchObjective(metric="fx", split="", mode=modes[0]),
                          SearchObjective(metric="fy", split="", mode=modes[1])]).sort_values("fx")
    groups = list(dict.fromkeys(agg["g"]))
    fig, axes = plt.subplots(1, len(groups), figsize=(3.8 * len(groups), 3.9), squeeze=False, sharex=True,
                             sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    xs = agg["x"].to_numpy(dtype=float)
    log_x = bool(np.all(xs > 0) and np.nanmax(xs) / np.nanmin(xs) > 100)
    arrow = {"max": "↑", "min": "↓"}
    for i, (ax, value) in enumerate(zip(axes[0], groups, strict=True)):
        sub = agg[agg["g"] == value]
        c = colors[i % len(colors)]
        def spread(lo: pd.Series, hi: pd.Series) -> list[np.ndarray]:  # rounding can put a mean outside its range
            return [np.clip(lo.to_numpy(dtype=float), 0, None), np.clip(hi.to_numpy(dtype=float), 0, None)]

        ax.errorbar(sub["x"], sub["y"], xerr=spread(sub["x"] - sub["xlo"], sub["xhi"] - sub["x"]),
                    yerr=spread(sub["y"] - sub["ylo"], sub["yhi"] - sub["y"]), fmt="o", color=c, ecolor=c, alpha=0.85,
                    elinewidth=0.6, capsize=0, markersize=5)
        if len(front):
            ax.plot(front["fx"], front["fy"], "k--", linewidth=0.8, label="Pareto front (all)")
        ax.set_title(f"{group} = {value}", fontsize=10)
        ax.set_xlabel(f"{x} {arrow[modes[0]]}")
        if log_x:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{y} {arrow[modes[1]]}")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Trade-off per configuration (point: mean over seeds; bars: seed range)")
    fig.tight_layout()
    save_figure(fig, path)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`harness sweep`'s arguments."""
    parser.add_argument("spec", help="job spec (YAML)")
    parser.add_argument("--space", required=True,
                        help="sweep file (YAML, see harness/commands/sweep.py and sweeps/)")
    parser.add_argument("--out", help="output directory (default results/sweep-<job name>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a spec field")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted sweep in --out: finished "
                        "jobs are kept, the interrupted one resumes (same spec and sweep file)")


def main(args: argparse.Namespace) -> int:
    """Run the sweep; print its table and where the results went."""
    spec = load_spec(args.spec, args.set)
    sweep = load_sweep(args.space)
    out = run_sweep(spec, sweep, Path(args.out or f"results/sweep-{spec.name}"), resume=args.resume)
    print((out / "sweep.md").read_text())
    print(f"sweep results: {out} (sweep.parquet, sweep.md, plots/curves.png, plots/tradeoff.png)")
    return 0
