"""The relearn attack: fine-tune each merged model on part of the forget set and score the held-back rest at
several steps (a recovery curve); the benign variant fine-tunes on as many retain examples instead.

The forget examples are split once per job (`attacks.seed`): `fraction` of them are fine-tuned on, the others
are the only forget examples scored (the benchmark's `restrict_forget`), and `forget_split` checks through the
benchmark's own keys that no scored example is one the attack trains on. Fine-tuning is the harness's full
fine-tune (harness.train.finetune, handed in by the pipeline as `AttackInputs.finetune`: AdamW on every weight,
constant rate, gradient norm clipped at 1), so step 0 is the merged model itself: relearning with 0 steps is no
attack. With `params: lora` the attacker trains a fresh plain LoRA (MLP projections, B = 0 at the start) on the
merged model instead, merged again at each point. Step 0 is scored once and serves both variants
(`attack_variant` `forget@k` / `benign@k`, `step@0` for k = 0).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harness.adapters import attach, merge
from harness.attacks.base import (
    ATTACKS,
    REFERENCES,
    Attack,
    AttackInputs,
    AttackOutput,
    AttackSource,
    ModelKey,
    aggregate_attacked,
    example_rows,
    merged_copy,
    metric_value,
    recovery_row,
    remove_dir,
    save_attacked,
    tag,
    target_of,
)
from harness.benchmarks.base import Benchmark
from harness.config import AdapterSpec
from harness.objectives import original_targets


def forget_split(bench: Benchmark, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(indices fine-tuned on, indices scored) of the forget examples: disjoint, both non-empty, fixed by `seed`.

    Raises when the benchmark's scored forget examples (after `restrict_forget`) share a key with the
    fine-tuned ones.
    """
    keys = bench.forget_keys()
    n = len(keys)
    if n < 2:
        raise ValueError("attacks.relearn needs at least 2 forget examples (one to train on, one to score)")
    order = np.random.default_rng(seed).permutation(n)
    n_train = min(n - 1, max(1, round(fraction * n)))
    train, scored = sorted(order[:n_train].tolist()), sorted(order[n_train:].tolist())
    view_keys = set(bench.restrict_forget(scored, forget_only=True).scored_forget_keys())
    trained = {keys[i] for i in train}
    if view_keys & trained:
        raise RuntimeError(f"relearn: {len(view_keys & trained)} scored forget example(s) are also fine-tuned on")
    return train, scored


def variant_name(kind: str, step: int) -> str:
    """`step@0` for the untouched point, else `forget@k` / `benign@k`."""
    return "step@0" if step == 0 else f"{kind}@{step}"


@ATTACKS.register("relearn")
class Relearn(Attack):
    """Fine-tune on forget (and, `benign`, retain) examples; score the held-back forget examples along the way."""

    name = "relearn"

    def run(self, inputs: AttackInputs) -> AttackOutput:
        opts, out, bench, spec = self.options, AttackOutput(), inputs.bench, inputs.spec
        train_idx, scored_idx = forget_split(bench, opts.fraction, self.seed)
        view = bench.restrict_forget(scored_idx, forget_only=True)
        kinds = ["forget", "benign"] if opts.benign else ["forget"]
        curve = opts.curve()
        work = inputs.work / "relearn"
        sources: dict[ModelKey, AttackSource] = {}
        for (name, seed), load in inputs.models.items():
            for kind in kinds:
                _, processor = load()
                examples = self._examples(bench, processor, kind, train_idx)
                sources.update(self._curve(load, examples, name, seed, kind, curve, work, inputs))
        inputs.log(f"attack relearn: scoring {len(sources)} model(s) on {len(scored_idx)} held-back forget "
                   f"example(s) (fine-tuned on {len(train_idx)}; steps {curve})")
        scores = inputs.score(view, sources)
        params = {"fraction": opts.fraction, "lr": opts.lr, "batch_size": opts.batch_size, "n_train": len(train_idx),
                  "n_scored": len(scored_idx), "params": opts.params}
        if opts.params == "lora":
            params.update(lora_rank=opts.lora_rank, lora_alpha=opts.lora_alpha)
        for (name, seed) in inputs.models:
            ref_seed = seed if name in REFERENCES else inputs.ref_seed(seed)
            retain = scores.get(("retain@step@0", ref_seed))
            base = {}
            for key in (("x", name, seed), ("t", *target_of(inputs, name, seed))):
                rows0 = aggregate_attacked(view, scores[(f"{key[1]}@step@0", key[2])], retain, spec.eval)
                base[key[0]] = self._recovery_value(view, rows0)
            for kind in kinds:
                for step in curve:
                    if step == 0 and kind != kinds[0]:
                        continue
                    variant = variant_name(kind, step)
                    attacked = scores[(f"{name}@{variant}", seed)]
                    rows = aggregate_attacked(view, attacked, retain, spec.eval)
                    if name != "target":
                        rows += recovery_row(view, rows, base["x"], base["t"])
                    p = {**params, "data": "forget" if step == 0 else kind, "steps": step}
                    out.metric_rows += tag(rows, self.name, variant, p, name, seed)
                    out.example_rows += tag(example_rows(attacked, bench.name), self.name, variant, p, name, seed)
        out.notes.append(f"relearn: {len(train_idx)} forget example(s) fine-tuned on, the other {len(scored_idx)} "
                         "scored (disjoint); after-attack rows compare with the same model at step 0 on those.")
        remove_dir(work)
        return out

    @staticmethod
    def _recovery_value(view: Benchmark, rows: list[dict[str, Any]]) -> float:
        which = view.recovery_metric()
        return float("nan") if which is None else metric_value(rows, *which)

    def _examples(self, bench: Benchmark, processor: Any, kind: str, train_idx: Sequence[int]) -> list[Any]:
        """The examples one relearn variant fine-tunes on: forget examples with their true targets, or as many
        retain examples (drawn with `attacks.seed`)."""
        if kind == "forget":
            forget = bench.forget_examples(processor, original_targets(), self.seed)
            return [forget[i] for i in train_idx]
        retain = bench.retain_examples(processor)
        pick = np.random.default_rng(self.seed + 1).permutation(len(retain))[: len(train_idx)]
        return [retain[i] for i in sorted(pick.tolist())]

    def _curve(self, load: Any, examples: list[Any], name: str, seed: int, kind: str, curve: list[int], work: Path,
               inputs: AttackInputs) -> dict[ModelKey, AttackSource]:
        """Fine-tune one merged copy for the curve's last step, writing the model at each point of the curve."""
        opts, spec = self.options, inputs.spec
        model, processor = merged_copy(load)
        if opts.params == "lora":  # a fresh plain LoRA on the merged weights (B = 0: step 0 is the model itself)
            attach(model, AdapterSpec(bound="none", rank=opts.lora_rank, alpha=opts.lora_alpha), seed=self.seed)
        saved: dict[ModelKey, AttackSource] = {}

        def save_point(step: int) -> None:
            if step in curve and not (step == 0 and kind != "forget"):
                variant = variant_name(kind, step)
                point = model
                if opts.params == "lora":
                    point = copy.deepcopy(model)
                    merge(point)
                saved[(f"{name}@{variant}", seed)] = save_attacked(point, processor, work / f"{name}-{seed}-{variant}",
                                                                   spec)

        inputs.finetune(model, processor, examples, epochs=1, lr=opts.lr, batch_size=opts.batch_size, warmup_ratio=0.0,
                 seed=self.seed, max_length=opts.max_length, device=inputs.device, desc=f"relearn {name}",
                 progress=False, modality=bench_modality(spec), max_steps=max(curve), on_step=save_point,
                 schedule="constant")
        return saved


def bench_modality(spec: Any) -> str:
    """The job's modality (what the fine-tune encodes)."""
    return spec.benchmark.modality
