"""The pipeline's side of the attacks (harness/attacks): hand them the job's scored models, a loader for each and
the job's own scoring function, then write their report. Called by `score_and_write` (harness.pipeline.write) when
`attacks:` enables any, so `harness run`, `harness eval` and `harness study` all honour the section."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from harness.attacks.base import AttackInputs, AttackOutput, AttackSource, ModelKey
from harness.attacks.runner import attack_section, plot_recovery, run_attacks
from harness.benchmarks.base import Benchmark, ModelScores
from harness.core.io import atomic_write_text
from harness.pipeline.context import JobContext, ScoredModel, log
from harness.pipeline.score import driver_model, score_all
from harness.scoring.parallel import ScoringPool
from harness.train.finetune import finetune
from harness.train.reference import reference_seed_for

#: Scratch directory (inside the run's staging directory) for attacked models while they are scored.
WORK_DIR = ".attacks"


def attack_job(ctx: JobContext, sources: Mapping[ModelKey, ScoredModel], scores: Mapping[ModelKey, ModelScores],
               metric_rows: list[dict[str, Any]], pool: ScoringPool | None = None) -> AttackOutput:
    """Run the spec's attacks on every scored model (references included), scored on the job's `pool` when it
    has one; rows tagged with the benchmark."""
    spec = ctx.spec
    default = next(iter(ctx.refs.values())).processor

    def loader(key: ModelKey) -> Callable[[], tuple[torch.nn.Module, Any]]:
        def load() -> tuple[torch.nn.Module, Any]:
            model, processor = driver_model(key, sources[key], ctx.refs, spec)
            return model, processor or default
        return load

    def score(view: Benchmark, todo: Mapping[ModelKey, AttackSource | ModelKey]) -> dict[ModelKey, ModelScores]:
        models = {key: (copy.copy(sources[src]) if isinstance(src, tuple) else
                        ScoredModel(src.directory, None, load=src.load, processor=sources[_origin(key)].processor))
                  for key, src in todo.items()}
        return score_all(view, ctx.refs, models, spec, ctx.device, pool=pool)

    def _origin(key: ModelKey) -> ModelKey:
        return key[0].split("@", 1)[0], key[1]

    keys = [key for key in sources if key in scores]
    inputs = AttackInputs(spec=spec, bench=ctx.bench, device=ctx.device, models={k: loader(k) for k in keys},
                          base={k: scores[k] for k in keys}, base_rows=metric_rows,
                          ref_seed=lambda seed: reference_seed_for(spec, seed), score=score,
                          work=Path(ctx.out) / WORK_DIR, finetune=finetune, log=log)
    out = run_attacks(inputs)
    for row in out.metric_rows:
        row.setdefault("benchmark", ctx.bench.name)
    return out


def write_attack_report(out: Path, summary: str, metrics: pd.DataFrame, bench: Benchmark,
                        methods: Sequence[str]) -> str:
    """Append the after-attack tables to summary.md and draw plots/recovery.png; the new summary text."""
    section = attack_section(metrics, bench, methods)
    if plot_recovery(metrics, bench, methods, out / "plots" / "recovery.png") is not None:
        section += "\n![recovery curves](plots/recovery.png)\n"
    text = summary + section
    atomic_write_text(out / "summary.md", text)
    return text
