"""`--dry-run`: the resolved plan of a job, built from configs only (no weights are loaded)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForCausalLM

from harness.models import builtin_config, is_builtin, load_config
from harness.spec import JobSpec, dump_spec

_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
#: Vocabulary size assumed for builtin models before their tokenizer is trained.
BUILTIN_VOCAB = 1024


def _meta_model(spec: JobSpec) -> torch.nn.Module:
    config = (builtin_config(spec.model.name, BUILTIN_VOCAB) if is_builtin(spec.model.name)
              else load_config(spec.model.name, spec.model.trust_remote_code))
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=spec.model.trust_remote_code)


def _adapter_params(model: torch.nn.Module, rank: int, targets: list[str] | None) -> tuple[int, int]:
    from harness.adapters.targets import target_module_names

    names = target_module_names(model, targets)
    modules = dict(model.named_modules())
    total = 0
    for name in names:
        w = modules[name].weight
        total += rank * (w.shape[0] + w.shape[1])
    return len(names), total


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def describe_plan(spec: JobSpec) -> str:
    """A readable plan: model size, adapted layers, per-method settings and a memory estimate."""
    model = _meta_model(spec)
    n_params = sum(p.numel() for p in model.parameters())
    width = _BYTES[spec.model.dtype]
    lines: list[str] = [f"job {spec.name!r} -> {spec.out_dir()}",
                        f"model: {spec.model.name} ({model.config.model_type}, {n_params / 1e6:.2f}M parameters, "
                        f"{spec.model.dtype}; weights {_gib(n_params * width)})",
                        f"benchmark: {spec.benchmark.name} source={spec.benchmark.source} "
                        f"forget={spec.benchmark.forget_split}",
                        f"reference models: {spec.reference.mode}",
                        f"resources: device={spec.resources.device} workers={spec.resources.num_workers}",
                        "methods:"]
    for m in spec.methods:
        n_layers, n_adapter = _adapter_params(model, m.adapter.rank, m.adapter.targets)
        # weights + fp32 adapter params, grads and two Adam moments
        mem: dict[str, Any] = {"weights": n_params * width, "adapter+grad+adam": n_adapter * 4 * 4}
        lines.append(
            f"  - {m.name}: objective={m.objective.name} (w_forget={m.objective.w_forget}, "
            f"w_retain={m.objective.w_retain}, retain={m.objective.retain_loss}); bound={m.adapter.bound} "
            f"rank={m.adapter.rank} alpha={m.adapter.alpha} omega={m.adapter.omega}; {n_layers} MLP layers, "
            f"{n_adapter / 1e6:.3f}M adapter parameters; lr={m.train.lr} epochs={m.train.epochs} "
            f"batch={m.train.batch_size}x{m.train.grad_accum}; memory ~{_gib(sum(mem.values()))} "
            "+ activations"
        )
    lines += ["", "resolved spec:", dump_spec(spec)]
    return "\n".join(lines)
