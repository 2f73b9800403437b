"""What every attack shares: the registry, the models it attacks, how attacked models are written and scored.

An attack (one file, `@ATTACKS.register("name")`) receives every scored model of a job (the unlearned ones and
the references `target` and `retain`) as loaders, builds its attacked versions (weight attacks write each as
a model directory; prompt attacks score the model itself on another view of the benchmark), scores them with
the job's own scoring function (`AttackInputs.score`: the pipeline's, so `eval.workers` > 1 runs them on the
Ray scoring pool exactly as the unattacked models) and returns metric and example rows tagged with
`attack`, `attack_variant` and `attack_params`.
"""

from __future__ import annotations

import copy
import json
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from harness.adapters import adapted_layers, merge
from harness.attacks.recovery import recovery_score
from harness.benchmarks.base import Benchmark, ModelScores
from harness.core.registry import Registry
from harness.models.modality import get_modality
from harness.models.text import torch_dtype

#: (model name, seed): the same keys the pipeline scores under.
ModelKey = tuple[str, int]
#: Attack classes by name (`@ATTACKS.register("relearn")` beside each attack).
ATTACKS: Registry[type[Attack]] = Registry("attack")
REFERENCES = ("target", "retain")


@dataclass
class AttackSource:
    """An attacked model to score: its directory (what Ray scoring workers load) and how this process loads it."""

    directory: str
    load: Callable[[], tuple[torch.nn.Module, Any]]


#: Score attacked models on a benchmark view: (view, {key: source or None = the key's own model}) -> scores.
ScoreFn = Callable[[Benchmark, Mapping[ModelKey, AttackSource | ModelKey]], dict[ModelKey, ModelScores]]


@dataclass
class AttackInputs:
    """What the pipeline hands the attacks: the job, its benchmark and scores, and how to load and score models.

    `models` loads a fresh copy of each scored model (adapter attached or not) and its processor; `base` holds
    the unattacked scores of every model on the full benchmark and `base_rows` their metric rows; `ref_seed`
    maps a job seed to the seed of its reference models; `work` is a scratch directory for attacked models;
    `score` and `finetune` are the pipeline's scoring and the trainer's fine-tune.
    """

    spec: Any
    bench: Benchmark
    device: torch.device
    models: Mapping[ModelKey, Callable[[], tuple[torch.nn.Module, Any]]]
    base: Mapping[ModelKey, ModelScores]
    base_rows: list[dict[str, Any]]
    ref_seed: Callable[[int], int]
    score: ScoreFn
    work: Path
    #: the full fine-tune of harness.train.finetune (same signature): attacks and training are one layer
    finetune: Callable[..., list[float]]
    log: Callable[[str], None] = print


@dataclass
class AttackOutput:
    """Rows an attack adds to metrics.parquet and examples.parquet, and notes for summary.md."""

    metric_rows: list[dict[str, Any]] = field(default_factory=list)
    example_rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Attack(ABC):
    """One attack: `run` attacks every model of `inputs.models` and scores the attacked versions."""

    name: ClassVar[str]

    def __init__(self, options: Any, seed: int = 0) -> None:
        self.options = options
        self.seed = seed

    @abstractmethod
    def run(self, inputs: AttackInputs) -> AttackOutput:
        """Attack, score, and return the tagged rows."""


def merged_copy(load: Callable[[], tuple[torch.nn.Module, Any]]) -> tuple[torch.nn.Module, Any]:
    """A private copy of a model with any adapter merged into dense weights (exact; harness.adapters.merge), every
    weight trainable."""
    model, processor = load()
    model = copy.deepcopy(model)
    if adapted_layers(model):
        merge(model)
    for p in model.parameters():  # attach froze the base weights; an attacked model owns all of them
        p.requires_grad_(True)
    return model.eval(), processor


def save_attacked(model: torch.nn.Module, processor: Any, directory: Path, spec: Any) -> AttackSource:
    """Write an attacked model as a model directory and return it as a source to score."""
    modality = spec.benchmark.modality
    get_modality(modality).save(model, processor, directory)
    dtype, trc = torch_dtype(spec.model.dtype), spec.model.trust_remote_code

    def load() -> tuple[torch.nn.Module, Any]:
        loaded, _ = get_modality(modality).load(str(directory), dtype, trc)
        return loaded.eval(), processor

    return AttackSource(str(directory), load)


def remove_dir(path: Path) -> None:
    """Delete a scratch directory of attacked models once they are scored."""
    shutil.rmtree(path, ignore_errors=True)


def tag(rows: list[dict[str, Any]], attack: str, variant: str, params: Mapping[str, Any], method: str,
        seed: int) -> list[dict[str, Any]]:
    """Rows with their model, seed and attack columns (`attack_params` as compact JSON)."""
    text = json.dumps(dict(params), sort_keys=True, separators=(",", ":"))
    return [{**r, "method": method, "seed": seed, "attack": attack, "attack_variant": variant, "attack_params": text}
            for r in rows]


def aggregate_attacked(view: Benchmark, attacked: ModelScores, retain: ModelScores | None,
                       eval_spec: Any) -> list[dict[str, Any]]:
    """The view's metric rows of one attacked model, its forget quality measured against `retain` (the retain
    model with its weights unchanged, scored on the same view); no per-example bootstrap (intervals come
    from the seeds)."""
    quick = eval_spec.model_copy(update={"bootstrap": 0})
    group = {"attacked": attacked} if retain is None else {"retain": retain, "attacked": attacked}
    return [{k: v for k, v in r.items() if k != "method"} for r in view.aggregate(group, quick)
            if r["method"] == "attacked"]


def example_rows(scores: ModelScores, benchmark: str) -> list[dict[str, Any]]:
    """examples.parquet rows of one scored model (without method, seed and attack columns)."""
    return [{"benchmark": benchmark, **r} for r in scores.examples]


def metric_value(rows: list[dict[str, Any]], split: str, metric: str) -> float:
    """The value of (split, metric) among `rows` (NaN when absent)."""
    for r in rows:
        if r.get("split") == split and r.get("metric") == metric:
            return float(r["value"])
    return float("nan")


def recovery_row(bench: Benchmark, attacked_rows: list[dict[str, Any]], unlearned: float,
                 target: float) -> list[dict[str, Any]]:
    """The `recovery` row of one attacked model (harness.attacks.recovery), on the benchmark's recovery metric's
    split; none when the benchmark declares no recovery metric."""
    which = bench.recovery_metric()
    if which is None:
        return []
    split, metric = which
    return [{"split": split, "metric": "recovery",
             "value": recovery_score(metric_value(attacked_rows, split, metric), unlearned, target)}]


def base_value(inputs: AttackInputs, name: str, seed: int) -> float:
    """The unattacked recovery metric of model (name, seed) on the full benchmark (NaN when unknown)."""
    which = inputs.bench.recovery_metric()
    if which is None:
        return float("nan")
    split, metric = which
    rows = [r for r in inputs.base_rows if r.get("method") == name and r.get("seed") == seed]
    return metric_value(rows, split, metric)


def target_of(inputs: AttackInputs, name: str, seed: int) -> ModelKey:
    """The key of the target model that (name, seed) was unlearned from."""
    return ("target", seed if name in REFERENCES else inputs.ref_seed(seed))
