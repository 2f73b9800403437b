"""Reference models: the target (before unlearning) and the retain model (never saw the forget set).

In `train` mode both are fine-tuned from the job's model on the benchmark's reference corpora and
cached under `reference.cache_dir` by a hash of everything that shapes them, so a second run of the
same job loads them instead of training. Each is a harness.cache entry: one process trains it while
concurrent runs wait, and a damaged entry (a file missing, truncated or edited) is retrained with a
warning. In `load` mode they come from hub ids or local directories.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.benchmarks.base import Benchmark
from harness.cache import ensure_entry
from harness.models import build_builtin, is_builtin, load_pretrained, save_model, torch_dtype
from harness.spec import JobSpec
from harness.tokenizer import get_or_train_tokenizer
from harness.train.finetune import finetune

#: Bumped when reference training changes in a way that changes the trained weights (invalidates caches).
REFERENCE_VERSION = 2


@dataclass
class References:
    """The tokenizer and the reference models of a job."""

    tokenizer: Any
    target: torch.nn.Module
    retain: torch.nn.Module | None
    target_source: str
    retain_source: str | None


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _tokenizer_for(spec: JobSpec, bench: Benchmark, cache_root: Path) -> Any:
    if is_builtin(spec.model.name):
        return get_or_train_tokenizer(bench.corpus_texts(), cache_root / "tokenizers")
    _, tokenizer = load_pretrained(spec.model.name, torch.float32, spec.model.trust_remote_code, spec.model.revision)
    return tokenizer


def _base_model(spec: JobSpec, tokenizer: Any) -> torch.nn.Module:
    dtype = torch_dtype(spec.model.dtype)
    if is_builtin(spec.model.name):
        return build_builtin(spec.model.name, len(tokenizer), seed=spec.seed, dtype=dtype)
    model, _ = load_pretrained(spec.model.name, dtype, spec.model.trust_remote_code, spec.model.revision)
    return model


def _trained_reference(kind: str, spec: JobSpec, bench: Benchmark, tokenizer: Any, cache_root: Path,
                       device: torch.device, progress: bool) -> tuple[torch.nn.Module, str]:
    pairs = bench.reference_pairs(kind, tokenizer)
    key = _fingerprint({
        "version": REFERENCE_VERSION, "kind": kind, "model": spec.model.model_dump(),
        "train": spec.reference.train.model_dump(),
        "seed": spec.seed, "pairs": _fingerprint(pairs), "vocab": _fingerprint(sorted(tokenizer.get_vocab().items())),
        "max_length": spec.train.max_length,
    })
    cache_dir = cache_root / f"{spec.model.name.replace(':', '-').replace('/', '--')}-{kind}-{key}"
    trained: list[torch.nn.Module] = []

    def build(scratch: Path) -> dict[str, Any]:
        model = _base_model(spec, tokenizer).to(device)
        rt = spec.reference.train
        losses = finetune(model, tokenizer, pairs, epochs=rt.epochs, lr=rt.lr, batch_size=rt.batch_size,
                          warmup_ratio=rt.warmup_ratio, seed=spec.seed, max_length=spec.train.max_length,
                          device=device, desc=f"train {kind} model", progress=progress)
        save_model(model, tokenizer, scratch)
        trained.append(model)
        return {"kind": kind, "steps": len(losses), "final_loss": losses[-1], "examples": len(pairs)}

    ensure_entry(cache_dir, build, what=f"{kind} reference model", required=["config.json"])
    if trained:  # built here: the weights in memory are those just saved
        return trained[0].eval(), str(cache_dir)
    model, _ = load_pretrained(str(cache_dir), torch_dtype(spec.model.dtype))
    return model.to(device).eval(), str(cache_dir)


def prepare_references(spec: JobSpec, bench: Benchmark, device: torch.device, progress: bool = True) -> References:
    """Tokenizer, target model and retain model for the job (trained and cached, or loaded)."""
    ref = spec.reference
    cache_root = Path(ref.cache_dir).expanduser()
    if ref.mode == "load":
        dtype = torch_dtype(spec.model.dtype)
        target, tokenizer = load_pretrained(ref.target, dtype, spec.model.trust_remote_code)
        retain = load_pretrained(ref.retain, dtype, spec.model.trust_remote_code)[0] if ref.retain else None
        return References(tokenizer, target.to(device).eval(), retain.to(device).eval() if retain else None,
                          ref.target, ref.retain)
    tokenizer = _tokenizer_for(spec, bench, cache_root)
    target, target_src = _trained_reference("target", spec, bench, tokenizer, cache_root, device, progress)
    retain, retain_src = _trained_reference("retain", spec, bench, tokenizer, cache_root, device, progress)
    return References(tokenizer, target, retain, target_src, retain_src)
