"""Trajectory sensitivity (`train.sensitivity`): a perturbed twin of a run, trained in lockstep beside it.

The twin starts from the run's state (same model, same adapter initialisation, same objective preparation) with
each adapter factor moved by relative noise `epsilon * rms(factor) * z`, z ~ N(0, 1) drawn from a generator of its
own (factors that are all zero, LoRA's B at the start, stay zero). It has its own DeepSpeed engine, optimizer and
scheduler, in the same worker group, and after every optimizer step of the run it trains on the same
micro-batches with the same random streams (dropout): the CPU/CUDA generator state the run's step started from
is set before the twin's step and the run's own state put back after it, so the run's numbers are those of a run
without a twin, and with epsilon 0 the twin is the run, bit for bit. Costs per step: one more forward/backward
of every micro-batch, and two no-grad forwards of the probe batch (`probe_batch` 0: none).

Logged per step (train_log.parquet columns): `sens_adapter` = sqrt(sum over adapted layers of
||dW_run - dW_twin||_F^2) and its signal `sens_adapter_signal` = ||dW_run||; `sens_logits` =
||logits_run - logits_twin||_F on the probe batch (the forget set's first examples, eval mode) and its signal
`sens_logits_signal` = ||logits_run - logits_start||_F; `sens_loss` = |loss_run - loss_twin| and its signal
|loss_run|. harness.render.sensitivity fits the finite-time Lyapunov exponent from them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from harness.adapters import adapted_layers, adapter_parameters
from harness.config import SensitivitySpec
from harness.data.batch import Batch
from harness.objectives import Objective
from harness.spec import MethodSpec
from harness.train.step import MicroBatch, accumulate, all_reduce_mean, finite

#: Offset of the perturbation generator's seed from the run's seed (keeps it apart from other seeded streams).
PERTURB_SEED_OFFSET = 7_919
#: The train_log columns a twin adds to every step.
SENSITIVITY_KEYS = ("sens_adapter", "sens_adapter_signal", "sens_logits", "sens_logits_signal", "sens_loss",
                    "sens_loss_signal")

RngState = dict[str, Any]


def rng_state() -> RngState:
    """The torch generator states dropout and other random layers draw from (CPU, and CUDA when in use)."""
    state: RngState = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: RngState) -> None:
    """Put back generator states taken by `rng_state`."""
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def perturb_adapter(model: torch.nn.Module, epsilon: float, seed: int) -> None:
    """Move every adapter factor by `epsilon * rms(factor) * z` (z ~ N(0, 1) from its own seeded generator), in
    place; nothing at all when epsilon is 0."""
    if epsilon == 0:
        return
    generator = torch.Generator().manual_seed(PERTURB_SEED_OFFSET + seed)
    with torch.no_grad():
        for p in adapter_parameters(model):
            rms = p.detach().float().pow(2).mean().sqrt()
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float32)
            p.add_((epsilon * rms * noise).to(device=p.device, dtype=p.dtype))


def update_distance(model_a: torch.nn.Module, model_b: torch.nn.Module) -> tuple[float, float]:
    """`(sqrt(sum_l ||dW_a - dW_b||_F^2), sqrt(sum_l ||dW_a||_F^2))` over the adapted layers of two models."""
    layers_b = adapted_layers(model_b)
    dist_sq = signal_sq = 0.0
    with torch.no_grad():
        for name, layer in adapted_layers(model_a).items():
            wa, wb = layer.delta_weight().float(), layers_b[name].delta_weight().float()
            dist_sq += float((wa - wb).pow(2).sum())
            signal_sq += float(wa.pow(2).sum())
    return math.sqrt(dist_sq), math.sqrt(signal_sq)


def probe_logits(engine: Any, model: torch.nn.Module, probe: Batch) -> torch.Tensor:
    """The model's logits on the probe batch in eval mode (no dropout), without a graph."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return engine(**probe.model_inputs()).logits.detach().float()
    finally:
        model.train(was)


class Twin:
    """The perturbed twin of one run: its engine and model, the probe batch, and the run's start logits."""

    def __init__(self, engine: Any, model: torch.nn.Module, spec: SensitivitySpec, probe: Batch | None) -> None:
        self.engine, self.model, self.spec, self.probe = engine, model, spec, probe
        self.start_logits: torch.Tensor | None = None
        self.alive = True

    @classmethod
    def build(cls, model: torch.nn.Module, spec: SensitivitySpec, seed: int,
              make_engine: Callable[[torch.nn.Module], Any], probe: Batch | None) -> Twin:
        """The twin made of `model` (a copy of the run's model taken before DeepSpeed wrapped it), perturbed in
        place, its engine from `make_engine`; the generator states are left as they were."""
        state = rng_state()
        perturb_adapter(model, spec.epsilon, seed)
        engine = make_engine(model)
        set_rng_state(state)
        return cls(engine, model, spec, probe)

    def start(self, engine: Any, model: torch.nn.Module) -> None:
        """Record the run's probe logits before its first step (the logits signal's origin)."""
        if self.probe is not None:
            state = rng_state()
            self.start_logits = probe_logits(engine, model, self.probe)
            set_rng_state(state)

    def follow(self, before: RngState, batches: Sequence[MicroBatch], objective: Objective, method: MethodSpec,
               world: int, device: torch.device, progress: float) -> float:
        """Train the twin one optimizer step on the run's micro-batches, from the generator states `before` the
        run's step; the states the run left are put back. Returns the twin's loss (NaN once it has diverged).
        Collective when `world` > 1."""
        if not self.alive:
            return math.nan
        after = rng_state()
        set_rng_state(before)
        try:
            sums = accumulate(self.engine, self.model, objective, method, batches, world, device, progress)
            loss = all_reduce_mean([sums.values[0]], device)[0]
            if finite(loss):
                self.engine.step()
            else:
                self.alive = False
        finally:
            set_rng_state(after)
        return loss

    def measure(self, engine: Any, model: torch.nn.Module, loss_run: float, loss_twin: float) -> dict[str, float]:
        """The step's distances between run and twin and their signals (SENSITIVITY_KEYS)."""
        if not self.alive:
            return dict.fromkeys(SENSITIVITY_KEYS, math.nan)
        dist_w, signal_w = update_distance(model, self.model)
        row = {"sens_adapter": dist_w, "sens_adapter_signal": signal_w, "sens_logits": math.nan,
               "sens_logits_signal": math.nan, "sens_loss": abs(loss_run - loss_twin),
               "sens_loss_signal": abs(loss_run)}
        if self.probe is not None:
            state = rng_state()
            run_logits = probe_logits(engine, model, self.probe)
            twin_logits = probe_logits(self.engine, self.model, self.probe)
            set_rng_state(state)
            row["sens_logits"] = float((run_logits - twin_logits).norm())
            if self.start_logits is not None:
                row["sens_logits_signal"] = float((run_logits - self.start_logits).norm())
        return row
