"""Reference models: the target (before unlearning) and the retain model (never saw the forget set).

In `train` mode both are fine-tuned from the job's model on the benchmark's reference examples and
cached under `reference.cache_dir` by a hash of everything that shapes them (the seed included), so a
second run of the same job loads them instead of training. Each is a harness.core.cache entry: one process
trains it while concurrent runs wait, and a damaged entry (a file missing, truncated or edited) is
retrained with a warning. In `load` mode they come from hub ids or local directories. `reference_seeds`
says which seeds get a pair: one shared pair (`reference.seed`) by default, one per job seed with
`reference.per_seed`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.benchmarks.base import Benchmark
from harness.core.cache import ensure_entry
from harness.models.modality import fingerprint, get_modality
from harness.models.text import torch_dtype
from harness.spec import JobSpec
from harness.train.finetune import finetune

#: Bumped when reference training changes in a way that changes the trained weights (invalidates caches).
REFERENCE_VERSION = 2


@dataclass
class References:
    """The processor (tokenizer or image processor) and the reference models of a job, for one reference seed."""

    processor: Any
    target: torch.nn.Module
    retain: torch.nn.Module | None
    target_source: str
    retain_source: str | None
    seed: int = 0


def reference_seeds(spec: JobSpec) -> list[int]:
    """The seeds that get their own reference models: every job seed, or the one shared seed."""
    return list(spec.seeds) if spec.reference.per_seed else [spec.reference.seed]


def reference_seed_for(spec: JobSpec, seed: int) -> int:
    """The seed of the reference models a run with job seed `seed` is compared with."""
    return seed if spec.reference.per_seed else spec.reference.seed


def _trained_reference(kind: str, spec: JobSpec, bench: Benchmark, processor: Any, cache_root: Path,
                       device: torch.device, progress: bool, seed: int) -> tuple[torch.nn.Module, str]:
    modality = get_modality(bench.modality)
    examples = bench.reference_examples(kind, processor)
    key = fingerprint({
        "version": REFERENCE_VERSION, "kind": kind, "model": spec.model.model_dump(),
        "train": spec.reference.train.model_dump(), "seed": seed, "pairs": modality.examples_key(examples),
        "vocab": modality.processor_key(processor), "max_length": spec.train.max_length,
    })
    cache_dir = cache_root / f"{spec.model.name.replace(':', '-').replace('/', '--')}-{kind}-{key}"
    trained: list[torch.nn.Module] = []

    def build(scratch: Path) -> dict[str, Any]:
        model = modality.base_model(spec, processor, bench, seed).to(device)
        rt = spec.reference.train
        losses = finetune(model, processor, examples, epochs=rt.epochs, lr=rt.lr, batch_size=rt.batch_size,
                          warmup_ratio=rt.warmup_ratio, seed=seed, max_length=spec.train.max_length,
                          device=device, desc=f"train {kind} model (seed {seed})", progress=progress,
                          modality=bench.modality)
        modality.save(model, processor, scratch)
        trained.append(model)
        return {"kind": kind, "steps": len(losses), "final_loss": losses[-1], "examples": len(examples)}

    ensure_entry(cache_dir, build, what=f"{kind} reference model (seed {seed})", required=["config.json"])
    if trained:  # built here: the weights in memory are those just saved
        return trained[0].eval(), str(cache_dir)
    model, _ = modality.load(str(cache_dir), torch_dtype(spec.model.dtype))
    return model.to(device).eval(), str(cache_dir)


def prepare_references(spec: JobSpec, bench: Benchmark, device: torch.device, progress: bool = True,
                       seed: int | None = None) -> References:
    """Processor, target model and retain model for the job and one reference seed (trained and cached, or
    loaded); `seed` defaults to the first of `reference_seeds(spec)`."""
    ref = spec.reference
    seed = reference_seeds(spec)[0] if seed is None else seed
    cache_root = Path(ref.cache_dir).expanduser()
    modality = get_modality(bench.modality)
    if ref.mode == "load":
        dtype = torch_dtype(spec.model.dtype)
        target, processor = modality.load(ref.target, dtype, spec.model.trust_remote_code)
        retain = modality.load(ref.retain, dtype, spec.model.trust_remote_code)[0] if ref.retain else None
        return References(processor, target.to(device).eval(), retain.to(device).eval() if retain else None,
                          ref.target, ref.retain, seed)
    processor = modality.processor(spec, bench, cache_root)
    target, target_src = _trained_reference("target", spec, bench, processor, cache_root, device, progress, seed)
    retain, retain_src = _trained_reference("retain", spec, bench, processor, cache_root, device, progress, seed)
    return References(processor, target, retain, target_src, retain_src, seed)
