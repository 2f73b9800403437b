"""The per-worker unlearning loop, run by Ray Train: one DeepSpeed engine per worker, per-step telemetry.

Every worker loads the target model, attaches the bounded adapter, wraps it in a DeepSpeed engine
(ZeRO 0-3, fp32/bf16, optional offload) and trains on its slice of each global batch. Telemetry
is all-reduced so every rank sees the same numbers; NaN/inf stops all ranks together. Checkpoints
(DeepSpeed engine state + PEFT-format adapter + the step log so far) go through `ray.train.report`;
a restarted worker group resumes from the latest one, so each step's telemetry appears exactly once.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from harness.adapters import adapted_layers, adapter_norms, adapter_parameters, adapters_disabled, attach
from harness.adapters.checkpoint import save_adapter
from harness.models import load_pretrained
from harness.objectives import Batch, make_objective, scored_tokens
from harness.spec import MethodSpec
from harness.train.data import BatchStream, encode_pairs
from harness.train.schedule import make_scheduler

STATE_FILE = "state.json"
ADAPTER_DIR = "adapter"
ENGINE_TAG = "engine"
# Each report names the workers' placement group, so a Tune driver can free it when it stops the trial.
PLACEMENT_GROUP_KEY = "placement_group"


def total_steps(n_forget: int, method: MethodSpec) -> int:
    """Optimizer steps for a method: epochs over the forget set, capped by `train.max_steps`."""
    t = method.train
    micro = math.ceil(n_forget / t.batch_size) * t.epochs
    steps = max(1, math.ceil(micro / t.grad_accum))
    return min(steps, t.max_steps) if t.max_steps else steps


def _logit_norm(logits: torch.Tensor, batch: Batch) -> float:
    """Mean L2 norm of the logit vector over real (non-pad) tokens."""
    norms = logits.detach().float().norm(dim=-1)
    return float(norms[batch.attention_mask.bool()].mean())


def _token_share(local: int, world: int, device: torch.device) -> float:
    """`world * local / global` token counts: the weight that turns a worker's token mean into its
    share of the global token mean (DeepSpeed averages gradients over workers). Collective."""
    if world == 1:
        return 1.0
    total = torch.tensor([float(local)], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return world * local / max(float(total), 1.0)


def _all_reduce_mean(values: Sequence[float], device: torch.device) -> list[float]:
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t.tolist()


def _global_grad_norm(params: Sequence[torch.nn.Parameter]) -> float:
    """L2 norm of the full (reduced, unpartitioned) gradient, whatever the ZeRO stage. Collective."""
    from deepspeed.utils import safe_get_full_grad

    total = 0.0
    for p in params:
        g = safe_get_full_grad(p)
        if g is not None:
            total += float(g.detach().float().pow(2).sum())
    return math.sqrt(total)


def _gathered(params: Sequence[torch.nn.Parameter], zero_stage: int) -> AbstractContextManager[Any]:
    """Full parameters under ZeRO-3 (collective), a no-op otherwise."""
    if zero_stage != 3:
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(params), modifier_rank=None)


def _register_zero3_external_params(model: torch.nn.Module) -> None:
    # The fused bounded layer reads its base layer's and its factors' weights inside one autograd
    # function, without calling those submodules: ZeRO-3 must gather them for the wrapper's forward.
    import deepspeed

    for layer in adapted_layers(model).values():
        for p in (layer.base_layer.weight, layer.base_layer.bias, layer.lora_A.weight, layer.lora_B.weight):
            if p is not None:
                deepspeed.zero.register_external_parameter(layer, p)


def _reference_logits(engine: Any, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Logits of the frozen model (adapters switched off), without building a graph."""
    with torch.no_grad(), adapters_disabled(model):
        return engine(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits


def _placement_group_id() -> str | None:
    from ray.util import get_current_placement_group

    pg = get_current_placement_group()
    return pg.id.hex() if pg is not None else None


def _maybe_kill(fault: dict[str, Any] | None, rank: int, step: int) -> None:
    """Test hook: SIGKILL this worker process once, at a given rank and step (marker file = once)."""
    if not fault or fault["rank"] != rank or fault["step"] != step:
        return
    marker = Path(fault["marker"])
    if marker.exists():
        return
    marker.write_text(str(os.getpid()))
    os.kill(os.getpid(), signal.SIGKILL)


class _Streams:
    """Forget and retain batch iterators of this worker, fast-forwardable to a resumed step."""

    def __init__(self, tokenizer: Any, config: dict[str, Any], method: MethodSpec, rank: int, world: int) -> None:
        t = method.train
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        seed = config["seed"]
        self.forget: Iterator[Batch] = iter(BatchStream(
            encode_pairs(tokenizer, config["forget_pairs"], t.max_length), t.batch_size, pad, seed, rank, world))
        retain = config["retain_pairs"]  # empty when the objective has no retain term
        self.retain: Iterator[Batch] = iter(())
        if retain:
            self.retain = iter(BatchStream(
                encode_pairs(tokenizer, retain, t.max_length), t.batch_size, pad, seed + 1, rank, world))

    def skip(self, n_micro: int, use_retain: bool) -> None:
        for _ in range(n_micro):
            next(self.forget)
            if use_retain:
                next(self.retain)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker entry point: unlearn with one method; results go out through `ray.train.report`."""
    import deepspeed
    import ray.train
    from ray.train import Checkpoint

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    method = MethodSpec.model_validate(config["method"])
    t = method.train
    if not config["use_gpu"]:
        torch.set_num_threads(config["threads"])
    device = ray.train.torch.get_device()
    torch.manual_seed(config["seed"])

    model, tokenizer = load_pretrained(config["target"], torch.float32)
    attach(model, method.adapter, seed=config["seed"])
    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    params = adapter_parameters(model)
    n_steps = total_steps(len(config["forget_pairs"]), method)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, model_parameters=params, config=config["deepspeed"],
        lr_scheduler=lambda opt: make_scheduler(opt, t.scheduler, n_steps, t.warmup_ratio))
    if t.zero_stage == 3:
        _register_zero3_external_params(model)

    objective = make_objective(method.objective)
    w_f, w_r = method.objective.w_forget, method.objective.w_retain
    use_retain = method.objective.retain_loss != "none" and w_r > 0
    need_ref_retain = objective.retain_needs_reference and use_retain
    streams = _Streams(tokenizer, config, method, rank, world)

    start, log = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            engine.load_checkpoint(d, tag=ENGINE_TAG, load_module_strict=False)
            state = json.loads((Path(d) / STATE_FILE).read_text())
        start, log = state["step"], state["log"]
        streams.skip(start * t.grad_accum, use_retain)

    placement_group = _placement_group_id()

    def save_and_report(row: dict[str, Any], status: dict[str, Any] | None) -> None:
        """Checkpoint (status given) or plain metrics report; collective on every rank."""
        metrics = {**row, PLACEMENT_GROUP_KEY: placement_group}
        if status is None:
            ray.train.report(metrics)
            return
        tmp = Path(tempfile.mkdtemp(prefix="harness-ckpt-"))
        engine.save_checkpoint(str(tmp), tag=ENGINE_TAG, exclude_frozen_parameters=True)
        with _gathered(params, t.zero_stage):
            if rank == 0:
                save_adapter(model, tmp / ADAPTER_DIR, method.adapter, config["base_model"])
        if rank == 0:
            (tmp / STATE_FILE).write_text(json.dumps({"log": log, **status}))
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(tmp)))
        shutil.rmtree(tmp, ignore_errors=True)

    status: dict[str, Any] = {"diverged": False, "reason": None}
    row: dict[str, Any] = {}
    for step in range(start, n_steps):
        _maybe_kill(config.get("fault"), rank, step)
        began = time.perf_counter()
        lr_now = scheduler.get_last_lr()[0]
        sums = [0.0, 0.0, 0.0, 0.0]  # loss, loss_forget, loss_retain, logit_norm
        tokens = 0
        for micro in range(t.grad_accum):
            if micro:
                engine.step()  # a no-op before the accumulation boundary; DeepSpeed counts micro-steps
            fb = next(streams.forget).to(device)
            logits_f = engine(input_ids=fb.input_ids, attention_mask=fb.attention_mask).logits
            ref_f = _reference_logits(engine, model, fb) if objective.needs_reference else None
            loss_f = objective.forget_loss(logits_f, fb, ref_f)
            if objective.forget_token_mean:
                loss_f = loss_f * _token_share(scored_tokens(fb), world, device)
            loss = w_f * loss_f
            loss_r = torch.zeros((), device=device)
            tokens += fb.n_tokens
            if use_retain:
                rb = next(streams.retain).to(device)
                logits_r = engine(input_ids=rb.input_ids, attention_mask=rb.attention_mask).logits
                ref_r = _reference_logits(engine, model, rb) if need_ref_retain else None
                loss_r = objective.retain_loss(logits_r, rb, ref_r) * _token_share(scored_tokens(rb), world, device)
                loss = loss + w_r * loss_r
                tokens += rb.n_tokens
            engine.backward(loss)
            for i, v in enumerate((loss, loss_f, loss_r)):
                sums[i] += float(v.detach()) / t.grad_accum
            sums[3] += _logit_norm(logits_f, fb) / t.grad_accum
        grad_norm = _global_grad_norm(params)
        loss_mean, lf, lr_, logit_norm, tok = _all_reduce_mean([*sums, float(tokens)], device)
        if not (math.isfinite(loss_mean) and math.isfinite(grad_norm)):
            what = "loss" if not math.isfinite(loss_mean) else "gradient"
            status = {"diverged": True, "reason": f"non-finite {what} at step {step}"}
            break
        engine.step()
        elapsed = time.perf_counter() - began
        with _gathered(params, t.zero_stage):
            norms = adapter_norms(model)
        row = {"method": method.name, "step": step, "loss": loss_mean, "loss_forget": lf, "loss_retain": lr_,
               "grad_norm": grad_norm, **norms, "logit_norm": logit_norm,
               "lr": lr_now,
               "tokens_per_s": tok * world / elapsed if elapsed > 0 else float("nan")}
        log.append(row)
        last = step == n_steps - 1
        due = t.checkpoint_every is not None and (step + 1) % t.checkpoint_every == 0
        if due and not last:
            save_and_report(row, {**status, "step": step + 1})
        elif (step + 1) % t.report_every == 0 and not last:
            save_and_report(row, None)
    final = dict(row) if row else {"method": method.name, "step": start}
    save_and_report(final, {**status, "step": len(log), "done": True})
