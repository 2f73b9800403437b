"""`harness study --dry-run`: the study's plan offline (trainings, steps, a GPU-hours estimate, the memory plan)."""

from __future__ import annotations

from harness.commands.plan import describe_plan
from harness.commands.study.space import baselines, method_space
from harness.commands.study.spec import StudySpec
from harness.pipeline.preflight import job_model_config as plan_config
from harness.spec import JobSpec, MethodSpec
from harness.train.memory import meta_model

#: Dense bf16 peak of one H100 SXM (FLOP/s) and the share of it a LoRA step is assumed to reach.
GPU_PEAK_FLOPS = 989e12
ASSUMED_MFU = 0.35
#: FLOPs of a bounded step relative to a plain-LoRA one (DESIGN.md section 3: one extra weight-gradient GEMM).
BOUNDED_STEP_COST = 1.33


def tokens_per_step(method: MethodSpec, tokens_per_example: int | None) -> int:
    """Tokens one optimizer step reads: the global micro-batch x accumulation, forget plus retain batches."""
    t = method.train
    batches = 1 + int(method.objective.uses_retain)
    return t.batch_size * t.grad_accum * (tokens_per_example or t.max_length) * batches


def gpu_hours(method: MethodSpec, n_params: int, steps: int, tokens_per_example: int | None) -> float:
    """GPU-hours of one training of `steps` steps: 6 x parameters x tokens FLOPs per step (x BOUNDED_STEP_COST
    for a bounded adapter) at ASSUMED_MFU of GPU_PEAK_FLOPS; world size does not change the total."""
    flops = 6.0 * n_params * tokens_per_step(method, tokens_per_example) * steps
    if method.adapter.bound != "none":
        flops *= BOUNDED_STEP_COST
    return flops / (GPU_PEAK_FLOPS * ASSUMED_MFU) / 3600.0


def describe_study(study: StudySpec, job: JobSpec) -> str:
    """The plan: per method its search space, baseline, trainings and GPU-hours; totals; then the job's plan
    (model, memory per device) from harness.plan."""
    config = plan_config(job)
    model = meta_model(config)
    n_params = sum(p.numel() for p in model.parameters())
    from harness.train.memory import model_shape

    per_example = model_shape(config, None, model).tokens_per_example
    n_search, n_confirm = study.trials * len(study.search_seeds), len(study.confirm_seeds)
    base = baselines(job.methods, study.baseline)
    lines = [f"study {study.name!r}: {len(job.methods)} method(s) x {study.trials} trials x "
             f"{len(study.search_seeds)} search seed(s) {study.search_seeds}, then {n_confirm} confirmation "
             f"seeds {study.confirm_seeds}; {study.steps} steps per training; utility budget delta {study.delta}",
             f"trainings: {len(job.methods) * (n_search + n_confirm)} ({len(job.methods)} x ({n_search} search + "
             f"{n_confirm} confirmation)); each trial is a Ray Train worker group of {job.resources.num_workers} "
             f"worker(s){' with a GPU each' if job.resources.use_gpu else ''} ({study.max_concurrent} at once), the "
             "confirmation one group for all its runs (on a cluster: `harness submit` of the study spec)",
             "methods:"]
    total = 0.0
    for m in job.methods:
        hours = gpu_hours(m, n_params, study.steps, per_example) * (n_search + n_confirm)
        total += hours
        space = ", ".join(f"{k} {next(iter(v))}{list(next(iter(v.values())))}"
                          for k, v in method_space(m, study.space).items())
        lines.append(f"  - {m.name}: search {space}; baseline {base.get(m.name) or '—'}; ~{hours:.2f} GPU-hours")
    lines += [f"GPU-hours (training only; 6 x {n_params / 1e9:.2f}B parameters x tokens per step, at "
              f"{ASSUMED_MFU:.0%} of an H100's {GPU_PEAK_FLOPS / 1e12:.0f} TFLOP/s; scoring not included): "
              f"~{total:.1f}", "", "the job each trial and the confirmation run (memory per device):", "",
              describe_plan(job)]
    return "\n".join(lines)
