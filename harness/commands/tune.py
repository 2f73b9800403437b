"""`harness tune`: Ray Tune over one method of a job: Optuna (multi-objective) + ASHA on a training proxy.

Each trial is a Tune function trainable that launches the job's Ray Train trainer for the trial's
settings (the Ray Train V2 pattern); the trainer's reports reach Tune through `TuneReportCallback`,
so ASHA can stop a trial on its in-training proxy (e.g. the retain loss). A finished trial is
scored with the benchmark's metric suite and reports its objectives (e.g. forget quality and
model utility, both up). Results: every trial's config and metrics (`trials.parquet`), the Pareto
front (`pareto.md`, `plots/pareto.png`), and the Pareto configurations as ready-to-run job specs
(`best/*.yaml`). An interrupted search resumes with `--resume` (`Tuner.restore`).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from harness.benchmarks import load_benchmark
from harness.commands.tune_space import TuneSpace, domain, load_space
from harness.config import SearchObjective, apply_override
from harness.core.console import is_verbose
from harness.core.errors import SpecError
from harness.core.io import atomic_write_parquet, atomic_write_text
from harness.core.ray_env import ensure_ray
from harness.objectives import make_objective, original_targets
from harness.pipeline.context import job_device, log
from harness.pipeline.score import score_model
from harness.render.tables import pareto_front, pyplot, save_figure, to_markdown
from harness.scoring.load import load_with_adapter
from harness.spec import JobSpec, MethodSpec, dump_spec, load_spec, validate_spec
from harness.tracking import tracking_env_kept, tune_callback
from harness.train.placement import guarded_trainer, release_orphans, release_trainers, worker_of_actor
from harness.train.ray_run import TrainingRequest, run_unlearning_many
from harness.train.reference import prepare_references


def apply_trial(base: JobSpec, method_name: str, config: dict[str, Any]) -> JobSpec:
    """The job spec with one method whose settings are the base method's plus the trial's values."""
    data = base.model_dump(mode="json")
    method = next(m for m in data["methods"] if m["name"] == method_name)
    data["methods"] = [method]
    for path, value in config.items():
        data = apply_override(data, f"methods.0.{path}={yaml.safe_dump(value, default_flow_style=True).strip()}")
    return validate_spec(data, f"(trial {config})")


def trial_scores(config: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """Train one trial's settings (inside a Tune trial) and score it: the trial's final report before its
    objectives. Every seed of `context["seeds"]` (default: the job's first) trains in ONE Ray Train worker group
    (Tune sees its reports, so ASHA can stop it); each finished run is scored, and the report holds `diverged`
    (1 when every seed diverged), `steps`, the proxy's last value, and the mean over the scored seeds of every
    metric as `split.metric` (the trial's own, and the retain model's as `retain:split.metric`). The trainer is
    released (placement group confirmed REMOVED) before scoring, and fails the trial when its workers' group waits
    longer than `pending_timeout_s` for resources it can never get."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    spec = apply_trial(validate_spec(context["spec"]), context["method"], config)
    method = spec.methods[0]
    seeds = context.get("seeds") or spec.seeds[:1]
    trial_dir = Path(ray.tune.get_context().get_trial_dir())
    requests = [TrainingRequest(method, seed, context["forget"], context["retain"], context["target"],
                             context["forget_original"]) for seed in seeds]
    with guarded_trainer(context["pending_timeout_s"]):
        runs = list(run_unlearning_many(requests, spec, trial_dir, modality=context["modality"],
                                        callbacks=[TuneReportCallback()], name=method.name, progress=False).values())
    final: dict[str, Any] = {"diverged": float(all(r.diverged for r in runs)), "steps": max(r.steps for r in runs)}
    proxy = context["proxy"]
    last = [r.log[-1][proxy] for r in runs if r.log and proxy in r.log[-1]]
    if last:  # the proxy's last value stays in the trial's final row
        final[proxy] = float(sum(last) / len(last))
    scored = [r for r in runs if not r.diverged]
    if not scored:
        return final
    bench = load_benchmark(spec.benchmark)
    per_seed: list[dict[str, float]] = []
    for run in scored:
        model, processor = load_with_adapter(context["target"], run.adapter_dir, modality=bench.modality)
        scores = score_model(bench, model.eval(), processor, spec, torch.device("cpu"))
        rows = bench.aggregate({"trial": scores, "retain": context["retain_scores"]}, spec.eval)
        per_seed.append({(f"{r['split']}.{r['metric']}" if r["method"] == "trial"
                          else f"retain:{r['split']}.{r['metric']}"): float(r["value"]) for r in rows})
    for key in per_seed[0]:
        final[key] = float(np.nanmean([v.get(key, np.nan) for v in per_seed]))
    return final


def _trial(config: dict[str, Any], context: dict[str, Any]) -> None:
    """One `harness tune` trial: train and score (`trial_scores`), then report the space's objectives."""
    import ray.tune

    scores = trial_scores(config, context)
    final = {k: scores[k] for k in ("diverged", "steps", context["proxy"]) if k in scores}
    for o in context["objectives"]:
        if scores["diverged"]:
            final[o["metric"]] = 0.0 if o["mode"] == "max" else float("inf")
        else:
            final[o["metric"]] = float(scores.get(f"{o['split']}.{o['metric']}", float("nan")))
    ray.tune.report(final)


def _release_callback() -> Any:
    """A Tune callback that releases each ended trial's trainer before Tune can start the next trial.

    Left to Tune, a stopped trial's Ray Train controller dies only with the trial's actor, after Tune has moved
    on, and its workers' placement group outlives it (`harness.train.placement`). Tune calls these hooks in its
    own loop, so here, before the next trial can start, the ended trial's actor is killed (its controller and
    workers die with it; a stopped or failed trial has nothing left to say, a finished one has said it all) and
    the groups its controllers created are removed, waiting (bounded) until Ray reports them REMOVED. The trial
    also releases its own trainer when its function ends (`guarded_trainer`).
    """
    from ray import tune

    class ReleaseTrainers(tune.Callback):
        def __init__(self) -> None:
            self.trials: dict[str, tuple[Any, str]] = {}  # trial id -> its actor and that actor's worker process

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            actor = trial.temporary_state.ray_actor
            if actor is not None:
                self.trials[trial.trial_id] = (actor, worker_of_actor(actor._actor_id.hex()))

        def release(self, trial_id: str) -> None:
            import ray

            actor, worker = self.trials.pop(trial_id, (None, ""))
            if actor is not None:
                ray.kill(actor, no_restart=True)
            removed = release_trainers(worker) + release_orphans()
            if removed:
                log(f"trial {trial_id}: removed the placement group of its stopped trainer ({', '.join(removed)})")

        def release_all(self) -> None:
            for trial_id in list(self.trials):
                self.release(trial_id)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.release(trial.trial_id)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.release(trial.trial_id)

    global _releaser
    _releaser = ReleaseTrainers()
    return _releaser


#: The running search's `_release_callback`, for `release_trainer_groups`.
_releaser: Any = None


def release_trainer_groups() -> None:
    """Release every trainer the running search started (controllers stopped, placement groups confirmed
    REMOVED) and any group a dead trainer left; nothing without Ray. Called when the search ends however it
    ends (finished, Ctrl-C, an error); small enough for a signal handler to call."""
    import sys

    if "ray" not in sys.modules:
        return
    import ray

    if not ray.is_initialized():
        return

    if _releaser is not None:
        _releaser.release_all()
    release_orphans()


def _progress_callback(total: int) -> Any:
    """A Tune callback printing one line per trial as it starts and ends, and its latest trainer report at
    most every `TRIAL_LINE_EVERY_S` seconds: the per-trial progress in place of Tune's status tables."""
    import time

    from ray import tune

    class TrialProgress(tune.Callback):
        def __init__(self) -> None:
            self.last: dict[str, float] = {}
            self.ended = 0

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.last[trial.trial_id] = time.monotonic()
            settings = ", ".join(f"{k}={_short(v)}" for k, v in trial.config.items())
            log(f"trial {trial.trial_id} ({len(trials)} of {total}) started: {settings}")

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            now = time.monotonic()
            if now - self.last.get(trial.trial_id, 0.0) < TRIAL_LINE_EVERY_S or "step" not in result:
                return
            self.last[trial.trial_id] = now
            log(f"trial {trial.trial_id}: step {int(result['step']) + 1}, " + _values(result, ("loss", "loss_retain",
                                                                                               "grad_norm")))

        def _ended(self, trial: Any, how: str) -> None:
            self.ended += 1
            result = trial.last_result or {}
            log(f"trial {trial.trial_id} {how} ({self.ended} of {total} ended): "
                + _values(result, ("forget_quality", "model_utility", "loss_retain", "steps")))

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            scored = "diverged" in (trial.last_result or {})
            self._ended(trial, "finished" if scored else "stopped early (ASHA)")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._ended(trial, "failed")

    return TrialProgress()


#: Seconds between two progress lines of one running trial.
TRIAL_LINE_EVERY_S = 15.0


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _values(result: dict[str, Any], keys: tuple[str, ...]) -> str:
    return ", ".join(f"{k} {_short(result[k])}" for k in keys if k in result) or "no metrics"


def _plot_pareto(frame: pd.DataFrame, front: pd.DataFrame, objectives: list[SearchObjective], path: Path) -> None:
    plt = pyplot()
    x, y = objectives[0].metric, objectives[1].metric if len(objectives) > 1 else "diverged"
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(frame[x], frame[y], color="0.6", label="trials")
    ax.scatter(front[x], front[y], color="tab:red", label="Pareto front", zorder=3)
    for _, row in front.iterrows():
        ax.annotate(str(row.get("config/adapter.bound", "")), (row[x], row[y]), fontsize=8)
    ax.set_xlabel(f"{x} ({objectives[0].mode})")
    ax.set_ylabel(f"{y} ({objectives[1].mode})" if len(objectives) > 1 else y)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def run_tune(spec: JobSpec, space: TuneSpace, out: Path, trials: int | None = None, resume: bool = False) -> Path:
    """Run the search (or resume it) and write trials, the Pareto front and the best job specs under `out`."""
    from ray.tune.schedulers import ASHAScheduler

    method_name = space.method or spec.methods[0].name
    base = next((m for m in spec.methods if m.name == method_name), None)
    if base is None:
        raise SpecError(f"search space method {method_name!r} is not a method of job {spec.name!r}")
    apply_trial(spec, method_name, {})  # the base method alone must validate
    out.mkdir(parents=True, exist_ok=True)
    device = job_device(spec.resources.device)
    bench = load_benchmark(spec.benchmark)
    refs = prepare_references(spec, bench, device)
    if refs.retain is None:
        raise SpecError("tuning needs a retain reference model (reference.retain) to compute forget quality")
    log("scoring the retain model once for all trials")
    retain_scores = score_model(bench, refs.retain, refs.processor, spec, device)
    context = {**trial_context(spec, base, bench, refs, retain_scores, space.proxy.metric,
                               space.trainer_pending_timeout_s),
               "objectives": [o.model_dump() for o in space.objectives]}
    ensure_ray(spec.resources.address)
    n_trials = trials or space.num_samples
    mlflow_callback = tune_callback(spec, out, method_name)  # one MLflow run per trial
    scheduler = (ASHAScheduler(metric=space.proxy.metric, mode=space.proxy.mode, max_t=space.asha.max_t,
                               grace_period=space.asha.grace_period,
                               reduction_factor=space.asha.reduction_factor) if space.asha else None)
    frame = search(_trial, context, space.params, space.objectives, n_trials, space.seed, space.max_concurrent,
                   out, scheduler=scheduler, callbacks=[mlflow_callback] if mlflow_callback else [], resume=resume)
    return write_tune_results(frame, spec, method_name, space, out)


def trial_context(spec: JobSpec, method: MethodSpec, bench: Any, refs: Any, retain_scores: Any, proxy: str,
                  pending_timeout_s: float, seeds: list[int] | None = None) -> dict[str, Any]:
    """What every trial of a search over `method` needs (`trial_scores`): the job, the target model's source,
    the forget and retain examples, the retain model's scores, the proxy and the trainer's pending timeout, and
    the `seeds` each trial trains (default: the job's first)."""
    objective = make_objective(method.objective)
    seed = (seeds or spec.seeds)[0]
    return {
        "spec": spec.model_dump(mode="json"), "method": method.name, "target": refs.target_source,
        "modality": bench.modality, "seeds": list(seeds or spec.seeds[:1]),
        "forget": bench.forget_examples(refs.processor, objective, seed),
        "forget_original": (bench.forget_examples(refs.processor, original_targets(), seed)
                            if objective.has_prepare else []),
        "retain": bench.retain_examples(refs.processor) if method.objective.uses_retain else [],
        "retain_scores": retain_scores, "proxy": proxy, "pending_timeout_s": pending_timeout_s,
    }


def search(trial: Any, context: dict[str, Any], params: dict[str, dict[str, Any]],
           objectives: list[SearchObjective], n_trials: int, seed: int, max_concurrent: int, out: Path,
           scheduler: Any = None, callbacks: list[Any] = (), resume: bool = False) -> pd.DataFrame:
    """One Ray Tune search under `out/tune` (or its restore when `resume` finds one): the function trainable
    `trial(config, context)`, Optuna's TPE sampler (multi-objective over `objectives`, seeded with `seed`), the
    trainer release and progress callbacks, `n_trials` trials; returns Tune's results frame. Every trainer the
    search started is released however it ends."""
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    # Intermediate reports come from the trainer (training proxy only); the objectives arrive with the
    # trial's last report, so Tune must not demand them in every result.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    if not is_verbose():
        _quiet_tune()
    trainable = tune.with_resources(tune.with_parameters(trial, context=context), {"CPU": 0.1})
    path = str(out.resolve() / "tune")
    if resume and tune.Tuner.can_restore(path):
        log(f"resuming the search in {out} from its last state")
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, restart_errored=True)
    else:
        optuna = OptunaSearch(metric=[o.metric for o in objectives], mode=[o.mode for o in objectives], seed=seed)
        tuner = tune.Tuner(
            trainable,
            param_space={p: domain(dist) for p, dist in params.items()},
            tune_config=tune.TuneConfig(search_alg=optuna, scheduler=scheduler, num_samples=n_trials,
                                        max_concurrent_trials=max_concurrent),
            run_config=tune.RunConfig(name="tune", storage_path=str(out.resolve()),
                                      verbose=1 if is_verbose() else 0,
                                      callbacks=[_release_callback(), _progress_callback(n_trials), *callbacks]),
        )
    try:
        with tracking_env_kept():
            grid = tuner.fit()
    finally:
        release_trainer_groups()
    return grid.get_dataframe()


def write_tune_results(frame: pd.DataFrame, spec: JobSpec, method_name: str, space: TuneSpace, out: Path) -> Path:
    """trials.parquet, pareto.md, plots/pareto.png and best/*.yaml from Tune's results frame."""

    # Trial, objectives, settings, then how the trial went.
    order = ["trial_id", *[o.metric for o in space.objectives],
             *(c for c in frame.columns if c.startswith("config/")),
             space.proxy.metric, "diverged", "steps", "training_iteration"]
    frame = frame[[c for c in dict.fromkeys(order) if c in frame.columns]].copy()
    atomic_write_parquet(out / "trials.parquet", frame)
    front = pareto_front(frame, space.objectives)
    atomic_write_text(out / "pareto.md", f"# Pareto front: {spec.name} / {method_name}\n\n"
                      f"{len(front)} of {len(frame)} trials are not dominated "
                      f"({', '.join(f'{o.metric} {o.mode}' for o in space.objectives)}).\n\n"
                      f"{to_markdown(front.reset_index(drop=True))}\n")
    if len(space.objectives) and not front.empty:
        _plot_pareto(frame, front, space.objectives, out / "plots" / "pareto.png")
    for rank, (_, row) in enumerate(front.iterrows()):
        config = {c.removeprefix("config/"): _plain(row[c]) for c in frame.columns if c.startswith("config/")}
        best = apply_trial(spec, method_name, config)
        data = best.model_dump(mode="json")
        data["name"] = f"{spec.name}_tuned_{rank}"
        data["methods"][0]["name"] = f"{method_name}_tuned_{rank}"
        atomic_write_text(out / "best" / f"{data['name']}.yaml",
                          f"# Pareto-optimal configuration {rank} from `harness tune` (trial {row.get('trial_id')}).\n"
                          + dump_spec(validate_spec(data)))
    return out


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _quiet_tune() -> None:
    """Hide what Tune and Optuna print besides the harness's own per-trial lines: Tune's new output engine
    prints its experiment box, results path and TensorBoard hint at any verbosity (its legacy reporter at
    verbosity 0 prints nothing), and Optuna logs the study's creation and each trial's result. (The Optuna
    searcher's warning for trials ASHA stops is one of harness.core.console's NOISE messages.)"""
    import optuna

    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    optuna.logging.set_verbosity(optuna.logging.ERROR)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`harness tune`'s arguments."""
    parser.add_argument("spec", help="job spec (YAML)")
    parser.add_argument("--space", required=True, help="search space (YAML, see tune_spaces/)")
    parser.add_argument("--trials", type=int, help="number of trials (overrides the space's num_samples)")
    parser.add_argument("--out", help="output directory (default results/tune-<job name>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a spec field")
    parser.add_argument("--resume", action="store_true", help="resume an interrupted search in --out")


def main(args: argparse.Namespace) -> int:
    """Run the search; print its Pareto table and where the results went."""
    spec = load_spec(args.spec, args.set)
    space = load_space(args.space)
    out = Path(args.out or f"results/tune-{spec.name}")
    result = run_tune(spec, space, out, trials=args.trials, resume=args.resume)
    print((result / "pareto.md").read_text())
    print(f"tune results: {result} (best job specs in {result / 'best'})")
    return 0
