"""One Ray Tune search per method with the study's equal budget (harness.tune's trainable, Optuna TPE, release)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.benchmarks.base import MatchedUtility
from harness.commands.study.space import method_space
from harness.commands.study.spec import StudySpec
from harness.commands.tune import search, trial_context, trial_scores
from harness.config import SearchObjective
from harness.core.io import atomic_write_parquet, read_parquet_file
from harness.spec import JobSpec, MethodSpec

#: The trainer's in-training metric kept in each trial's row (the study does not stop trials early).
PROXY = "loss_retain"
#: Columns of a method's trial table besides its `config/...` settings and metric values.
TRIAL_COLUMNS = ["method", "trial_id", "forget_score", "utility", "diverged", "failed", "steps"]


def study_trial(config: dict[str, Any], context: dict[str, Any]) -> None:
    """One study trial: train on every search seed in one worker group and score (`harness.tune.trial_scores`),
    then report the benchmark's forget score and utility (MatchedUtility) with every metric."""
    import ray.tune

    scores = trial_scores(config, context)
    matched: MatchedUtility = context["matched"]
    values = {tuple(k.split(".", 1)): v for k, v in scores.items() if "." in k and not k.startswith("retain:")}
    retain = {tuple(k.removeprefix("retain:").split(".", 1)): v for k, v in scores.items() if k.startswith("retain:")}
    if scores["diverged"]:  # the searcher needs numbers; the study's table marks the trial diverged
        forget, utility = (0.0 if matched.mode == "max" else float("inf")), 0.0
    else:
        forget = matched.forget_score(values, retain)
        utility = float(values.get(matched.utility, np.nan))
    ray.tune.report({**scores, "forget_score": forget, "utility": utility})


def search_objectives(matched: MatchedUtility, multi_objective: bool) -> list[SearchObjective]:
    """What Optuna optimises: the forget score, and the utility too when `multi_objective`."""
    forget = SearchObjective(metric="forget_score", split="study", mode=matched.mode)
    return [forget, SearchObjective(metric="utility", split="study", mode="max")] if multi_objective else [forget]


def search_method(study: StudySpec, job: JobSpec, method: MethodSpec, matched: MatchedUtility, bench: Any,
                  refs: Any, retain_scores: Any, out: Path, resume: bool) -> pd.DataFrame:
    """The trials of one method (searched now, restored, or read back when an earlier attempt finished them):
    `trials.parquet` under `out/search/<method>/`, one row per trial."""
    from harness.pipeline.context import log

    method_out = out / "search" / method.name
    done = method_out / "trials.parquet"
    if resume and done.is_file():
        log(f"study: {method.name}'s search finished before the interruption: its {study.trials} trials are kept")
        return read_parquet_file(done, "study trials")
    params = method_space(method, study.space)
    log(f"study: searching {method.name} ({study.trials} trials of {study.steps} steps on seeds "
        f"{study.search_seeds}) over {', '.join(params)}")
    context = {**trial_context(job, method, bench, refs, retain_scores, PROXY, study.pending_timeout_s,
                               seeds=list(study.search_seeds)), "matched": matched}
    frame = search(study_trial, context, params, search_objectives(matched, study.multi_objective), study.trials,
                   study.sampler_seed, study.max_concurrent, method_out, resume=resume)
    table = tidy_trials(frame, method.name)
    atomic_write_parquet(done, table)
    return table


def tidy_trials(frame: pd.DataFrame, method: str) -> pd.DataFrame:
    """Tune's results frame as the study's trial rows: method, trial, forget score, utility, divergence (a failed
    trial counts as diverged), steps, then the settings (`config/...`) and every metric the trial reported."""
    out = frame.copy()
    out["method"] = method
    for col in ("forget_score", "utility", "diverged", "steps"):
        if col not in out:
            out[col] = np.nan
    out["failed"] = out["forget_score"].isna()
    out["diverged"] = out["diverged"].fillna(1.0).astype(bool) | out["failed"]
    out.loc[out["diverged"], ["forget_score", "utility"]] = np.nan
    metrics = [c for c in out.columns if "." in c and not c.startswith("config/")]
    settings = [c for c in out.columns if c.startswith("config/")]
    return out[[*TRIAL_COLUMNS, *settings, *metrics]].reset_index(drop=True)
