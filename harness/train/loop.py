"""The per-worker unlearning loop: forget/retain batches, one objective, AdamW, per-step telemetry."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from harness.adapters import adapter_norms, adapters_disabled
from harness.objectives import Batch, make_objective
from harness.spec import MethodSpec
from harness.train.data import BatchStream, Pair, encode_pairs
from harness.train.schedule import make_scheduler

StepCallback = Callable[[dict[str, Any]], None]


@dataclass
class UnlearnResult:
    """What one method's training produced: the step log and whether (and why) it diverged."""

    log: list[dict[str, Any]] = field(default_factory=list)
    diverged: bool = False
    reason: str | None = None
    steps: int = 0


def total_steps(n_forget: int, method: MethodSpec) -> int:
    """Optimizer steps for a method: epochs over the forget set, capped by `train.max_steps`."""
    t = method.train
    micro = math.ceil(n_forget / t.batch_size) * t.epochs
    steps = max(1, math.ceil(micro / t.grad_accum))
    return min(steps, t.max_steps) if t.max_steps else steps


def _logit_norm(logits: torch.Tensor, batch: Batch) -> float:
    """Mean L2 norm of the logit vector over real (non-pad) tokens."""
    norms = logits.detach().float().norm(dim=-1)
    mask = batch.attention_mask.bool()
    return float(norms[mask].mean())


def _grad_norm(params: Sequence[torch.nn.Parameter]) -> float:
    grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0


def unlearn(
    model: torch.nn.Module,
    tokenizer: Any,
    forget_pairs: Sequence[Pair],
    retain_pairs: Sequence[Pair],
    method: MethodSpec,
    seed: int,
    device: torch.device | str = "cpu",
    on_step: StepCallback | None = None,
    progress: bool = True,
) -> UnlearnResult:
    """Train the model's trainable (adapter) parameters with the method's objective; stop on NaN/inf."""
    t = method.train
    objective = make_objective(method.objective)
    w_f, w_r = method.objective.w_forget, method.objective.w_retain
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    forget = BatchStream(encode_pairs(tokenizer, forget_pairs, t.max_length), t.batch_size, pad_id, seed)
    retain = BatchStream(encode_pairs(tokenizer, retain_pairs, t.max_length), t.batch_size, pad_id, seed + 1)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters: attach an adapter first")
    optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    n_steps = total_steps(len(forget_pairs), method)
    scheduler = make_scheduler(optimizer, t.scheduler, n_steps, t.warmup_ratio)
    need_ref_forget = objective.needs_reference
    need_ref_retain = objective.retain_needs_reference and w_r > 0
    use_retain = method.objective.retain_loss != "none" and w_r > 0

    result = UnlearnResult()
    model.train()
    f_iter, r_iter = iter(forget), iter(retain)
    bar = tqdm(range(n_steps), desc=f"unlearn {method.name}", disable=None if progress else True, leave=False)
    for step in bar:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        sums = {"loss": 0.0, "loss_forget": 0.0, "loss_retain": 0.0, "logit_norm": 0.0}
        tokens = 0
        for _ in range(t.grad_accum):
            fb = next(f_iter).to(device)
            logits_f = model(input_ids=fb.input_ids, attention_mask=fb.attention_mask).logits
            ref_f = _reference_logits(model, fb) if need_ref_forget else None
            loss_f = objective.forget_loss(logits_f, fb, ref_f)
            loss = w_f * loss_f
            loss_r = torch.zeros(())
            tokens += fb.n_tokens
            if use_retain:
                rb = next(r_iter).to(device)
                logits_r = model(input_ids=rb.input_ids, attention_mask=rb.attention_mask).logits
                ref_r = _reference_logits(model, rb) if need_ref_retain else None
                loss_r = objective.retain_loss(logits_r, rb, ref_r)
                loss = loss + w_r * loss_r
                tokens += rb.n_tokens
            (loss / t.grad_accum).backward()
            sums["loss"] += float(loss.detach()) / t.grad_accum
            sums["loss_forget"] += float(loss_f.detach()) / t.grad_accum
            sums["loss_retain"] += float(loss_r.detach()) / t.grad_accum
            sums["logit_norm"] += _logit_norm(logits_f, fb) / t.grad_accum
        grad_norm = _grad_norm(params)
        if not (math.isfinite(sums["loss"]) and math.isfinite(grad_norm)):
            result.diverged = True
            result.reason = f"non-finite {'loss' if not math.isfinite(sums['loss']) else 'gradient'} at step {step}"
            break
        if t.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        elapsed = time.perf_counter() - start
        row = {"method": method.name, "step": step, **sums, "grad_norm": grad_norm, **adapter_norms(model),
               "lr": lr, "tokens_per_s": tokens / elapsed if elapsed > 0 else float("nan")}
        result.log.append(row)
        result.steps = step + 1
        if on_step is not None:
            on_step(row)
        bar.set_postfix(loss=f"{sums['loss']:.3g}", gnorm=f"{grad_norm:.3g}")
        if not all(math.isfinite(v) for k, v in row.items() if isinstance(v, float)):
            result.diverged = True
            result.reason = f"non-finite telemetry at step {step}"
            break
    model.eval()
    return result


def _reference_logits(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Logits of the frozen model (adapters switched off), without building a graph."""
    with torch.no_grad(), adapters_disabled(model):
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
