"""`--dry-run`: the resolved plan of a job, built from configs only (no weights are loaded)."""

from __future__ import annotations

from harness.pipeline.preflight import job_model_config
from harness.spec import JobSpec, MethodSpec, dump_spec
from harness.train.memory import (
    DTYPE_BYTES,
    GIB,
    OVERHEAD_BYTES,
    MemoryEstimate,
    estimate_memory,
    meta_model,
    model_shape,
)

#: Device memory the "fits" line checks against (an 80 GiB A100/H100).
DEVICE_GIB = 80.0


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / GIB:.2f} GiB"


def _forward_batches(method: MethodSpec) -> int:
    """Batches whose activations are alive at the backward: forget, plus retain when it has a loss."""
    obj = method.objective
    return 1 + int(obj.retain_loss != "none" and obj.w_retain > 0)


def _settings(method: MethodSpec, world_size: int, tokens_per_image: int | None) -> str:
    t = method.train
    offload = [k for k, on in (("optimizer", t.offload_optimizer), ("params", t.offload_params)) if on]
    per = f"x {t.max_length} tokens" if tokens_per_image is None else f"images x {tokens_per_image} tokens"
    return (f"{method.name}: ZeRO-{t.zero_stage}, {t.precision}, offload={'+'.join(offload) or 'none'}, "
            f"checkpointing={'on' if t.gradient_checkpointing else 'off'}, micro-batch "
            f"{-(-t.batch_size // world_size)} {per} x {_forward_batches(method)} batches")


def memory_table(names: list[str], estimates: list[MemoryEstimate], capacity_gib: float = DEVICE_GIB) -> str:
    """Terms (rows) x methods (columns) in GiB, the total, and whether each fits a device."""
    width = max(12, *(len(n) + 2 for n in names))
    terms = list(estimates[0].terms())
    rows = [f"  {'term':<16}" + "".join(f"{n:>{width}}" for n in names)]
    for term in terms:
        rows.append(f"  {term:<16}" + "".join(f"{e.terms()[term] / GIB:>{width}.2f}" for e in estimates))
    rows.append(f"  {'total':<16}" + "".join(f"{e.total / GIB:>{width}.2f}" for e in estimates))
    label = f"fits on {capacity_gib:g} GiB"
    rows.append(f"  {label:<16}" + "".join(f"{'yes' if e.fits(capacity_gib) else 'no':>{width}}" for e in estimates))
    return "\n".join(rows)


def describe_plan(spec: JobSpec) -> str:
    """A readable plan: model size, adapted layers, per-method settings and a per-device memory table."""
    config = job_model_config(spec)
    model = meta_model(config)
    n_params = sum(p.numel() for p in model.parameters())
    world = spec.resources.num_workers
    lines: list[str] = [f"job {spec.name!r} -> {spec.out_dir()}",
                        f"model: {spec.model.name} ({model.config.model_type}, {n_params / 1e6:.2f}M parameters, "
                        f"{spec.model.dtype}; weights {_gib(n_params * DTYPE_BYTES[spec.model.dtype])})",
                        f"benchmark: {spec.benchmark.describe()} (source {spec.benchmark.source})",
                        f"reference models: {spec.reference.mode}",
                        f"resources: device={spec.resources.device} workers={world}",
                        "methods:"]
    gpu = spec.resources.use_gpu or spec.resources.device == "cuda"
    estimates: list[MemoryEstimate] = []
    for m in spec.methods:
        shape = model_shape(config, m.adapter.targets, model)
        est = estimate_memory(config, m.adapter, m.train, world, dtype=spec.model.dtype,
                              forward_batches=_forward_batches(m), shape=shape,
                              overhead=OVERHEAD_BYTES if gpu else 0.0)
        estimates.append(est)
        lines.append(
            f"  - {m.name}: objective={m.objective.name} (w_forget={m.objective.w_forget}, "
            f"w_retain={m.objective.w_retain}, retain={m.objective.retain_loss}); bound={m.adapter.bound} "
            f"rank={m.adapter.rank} alpha={m.adapter.alpha} omega={m.adapter.omega}; {len(shape.adapted)} MLP layers, "
            f"{shape.adapter_params(m.adapter.rank) / 1e6:.3f}M adapter parameters; lr={m.train.lr} "
            f"epochs={m.train.epochs} batch={m.train.batch_size}x{m.train.grad_accum}; "
            f"memory ~{_gib(est.total)} per device"
        )
    lines += ["", f"memory per device in GiB (estimate; {world} worker(s); see harness/train/memory.py):"]
    tokens_per_image = model_shape(config, None, model).tokens_per_example
    lines += [f"  {_settings(m, world, tokens_per_image)}" for m in spec.methods]
    lines += [memory_table([m.name for m in spec.methods], estimates), ""]
    lines += ["resolved spec:", dump_spec(spec)]
    return "\n".join(lines)
