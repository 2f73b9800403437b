"""One optimizer step's forward/backward passes, shared by a run and its sensitivity twin (harness.train.twin).

`accumulate` runs the micro-batches of one optimizer step on a DeepSpeed engine (forward, the objective's
losses, backward) and returns the step's loss sums; the caller all-reduces them and calls `engine.step()`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from harness.adapters import adapter_product_sq, adapters_disabled

#: One micro-batch of a step: the forget batch and the retain batch (None when the method reads none).
from harness.config import TrainSpec
from harness.data.batch import Batch
from harness.objectives import Objective
from harness.spec import MethodSpec

MicroBatch = tuple[Batch, Batch | None]


def token_share(local: int, world: int, device: torch.device) -> float:
    """`world * local / global` unit counts: the weight that turns a worker's unit mean into its share of
    the global unit mean (DeepSpeed averages gradients over workers). Collective."""
    if world == 1:
        return 1.0
    total = torch.tensor([float(local)], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return world * local / max(float(total), 1.0)


def forward(engine: Any, batch: Batch, objective: Objective) -> Any:
    """The model's outputs on a batch, with hidden states when the objective reads them."""
    extra = {"output_hidden_states": True} if objective.needs_hidden_states else {}
    return engine(**batch.model_inputs(), **extra)


def reference_outputs(engine: Any, model: torch.nn.Module, batch: Batch, objective: Objective) -> Any:
    """Outputs of the frozen model (adapters switched off), without building a graph."""
    with torch.no_grad(), adapters_disabled(model):
        return forward(engine, batch, objective)


def penalty(model: torch.nn.Module, objective: Objective, train: TrainSpec, progress: float) -> torch.Tensor | None:
    """The objective's regulariser plus the `train.adapter_l2` stabiliser on `sum ||B A||_F^2`, or None."""
    terms = [objective.penalty(model, progress)]
    if train.adapter_l2 > 0:
        terms.append(train.adapter_l2 * adapter_product_sq(model))
    terms = [p for p in terms if p is not None]
    return sum(terms[1:], terms[0]) if terms else None


@dataclass
class StepSums:
    """One step's local sums, each averaged over its micro-batches: loss, forget loss, retain loss, logit norm;
    and the input elements processed."""

    values: list[float]
    inputs: int


def accumulate(engine: Any, model: torch.nn.Module, objective: Objective, method: MethodSpec,
               batches: Sequence[MicroBatch], world: int, device: torch.device, progress: float) -> StepSums:
    """Forward and backward every micro-batch of one optimizer step (gradients accumulate in the engine; the
    caller steps it). Collective when `world` > 1."""
    t = method.train
    w_f, w_r = method.objective.w_forget, method.objective.w_retain
    sums = [0.0, 0.0, 0.0, 0.0]
    inputs = 0
    for micro, (fb, rb) in enumerate(batches):
        if micro:
            engine.step()  # a no-op before the accumulation boundary; DeepSpeed counts micro-steps
        out_f = forward(engine, fb, objective)
        ref_f = reference_outputs(engine, model, fb, objective) if objective.needs_reference else None
        loss_f = objective.forget_loss(out_f, fb, ref_f)
        if objective.forget_unit_mean:
            loss_f = loss_f * token_share(objective.forget_units(fb), world, device)
        loss = w_f * loss_f
        loss_r = torch.zeros((), device=device)
        inputs += fb.n_inputs
        if rb is not None:
            out_r = forward(engine, rb, objective)
            need_ref = objective.retain_needs_reference
            ref_r = reference_outputs(engine, model, rb, objective) if need_ref else None
            loss_r = objective.retain_loss(out_r, rb, ref_r)
            if objective.retain_unit_mean:
                loss_r = loss_r * token_share(rb.n_scored, world, device)
            loss = loss + w_r * loss_r
            inputs += rb.n_inputs
        extra = penalty(model, objective, t, progress)
        if extra is not None:
            loss = loss + extra
        engine.backward(loss)
        for i, v in enumerate((loss, loss_f, loss_r)):
            sums[i] += float(v.detach()) / t.grad_accum
        sums[3] += fb.logit_norm(out_f.logits) / t.grad_accum
    return StepSums(sums, inputs)


def all_reduce_mean(values: Sequence[float], device: torch.device) -> list[float]:
    """The mean of `values` over the workers (collective; the values themselves on one worker)."""
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t.tolist()


def finite(*values: float) -> bool:
    """Whether every value is finite."""
    return all(math.isfinite(v) for v in values)
