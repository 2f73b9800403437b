"""The per-worker unlearning loop, run by Ray Train: a list of trainings (method x seed), one after another.

One worker group runs every training of a job, so the Ray Train start-up is paid once. Each training is a
`TrainingRecipe` (a torchtune recipe's shape): every worker builds a fresh copy of the target model, attaches the
bounded adapter, wraps it in a DeepSpeed engine (ZeRO 0-3, fp32/bf16, optional offload) and trains on its slice of
each global batch. Telemetry is all-reduced so every rank sees the same numbers; NaN/inf stops the training on all
ranks together, and the next one starts. A training's checkpoints (DeepSpeed engine state + PEFT-format adapter +
its `TrainingState` as a `CheckpointRecord`, plus the objective's preparation result; train/checkpoint.py) go
through `ray.train.report`; its last one is marked `done`. A restarted worker group resumes from the latest
checkpoint: finished trainings are skipped, an unfinished one resumes at its step with its preparation loaded, not
recomputed, so each step's telemetry appears exactly once. A training named in `WorkerConfig.resume_from` (a resumed
job, harness.pipeline.resume) starts from that checkpoint of an earlier attempt the same way. Rank 0 also streams
every step to an optional progress actor. With `train.sensitivity`, each training runs a perturbed twin in lockstep
and logs their distance per step (harness/train/twin.py).
"""

from __future__ import annotations

import copy
import gc
import logging
import math
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from harness.adapters import adapted_layers, adapter_norms, adapter_parameters, attach
from harness.adapters.checkpoint import save_adapter
from harness.config import TrainSpec
from harness.objectives import Objective, make_objective
from harness.spec import MethodSpec
from harness.train.checkpoint import (
    ADAPTER_DIR,
    ENGINE_TAG,
    PLACEMENT_GROUP_KEY,
    PREPARED_FILE,
    RUN_DONE_KEY,
    ResumePoint,
    TrainingState,
    earlier_checkpoint,
    latest_checkpoint,
)
from harness.train.deepspeed_config import import_deepspeed, skip_shm_comm_op
from harness.train.schedule import make_scheduler
from harness.train.step import MicroBatch, accumulate, all_reduce_mean, finite
from harness.train.twin import Twin, rng_state
from harness.train.worker import Worker, prepare_objective
from harness.train.worker_config import KillAt, PlannedTraining, WorkerConfig

#: The key of the `WorkerConfig` in Ray Train's `train_loop_config` (a dict).
WORKER_CONFIG_KEY = "worker_config"


def total_steps(n_forget: int, method: MethodSpec) -> int:
    """Optimizer steps for a method: epochs over the forget set, capped by `train.max_steps`."""
    t = method.train
    micro = math.ceil(n_forget / t.batch_size) * t.epochs
    steps = max(1, math.ceil(micro / t.grad_accum))
    return min(steps, t.max_steps) if t.max_steps else steps


def make_optimizer(params: Sequence[torch.nn.Parameter], train: TrainSpec) -> torch.optim.Optimizer:
    """The run's optimizer (DeepSpeed wraps it): AdamW, or plain SGD as a control for AdamW's normalised steps."""
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    return torch.optim.AdamW(params, lr=train.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=train.weight_decay)


def _global_grad_norm(params: Sequence[torch.nn.Parameter]) -> float:
    """L2 norm of the full (reduced, unpartitioned) gradient, whatever the ZeRO stage. Collective."""
    from deepspeed.utils import safe_get_full_grad

    total = 0.0
    for p in params:
        g = safe_get_full_grad(p)
        if g is not None:
            total += float(g.detach().float().pow(2).sum())
    return math.sqrt(total)


@dataclass
class StepOutcome:
    """One optimizer step: the all-reduced loss, forget loss, retain loss, logit norm and input count; the
    gradient norm; whether the engine stepped (not on a non-finite loss or gradient); the run's own seconds
    since `began`; the twin's distances and its seconds (`sens_seconds`), empty without a twin."""

    values: list[float]
    grad_norm: float
    stepped: bool
    seconds: float
    twin: dict[str, float]


def optimizer_step(engine: Any, model: torch.nn.Module, params: Sequence[torch.nn.Parameter], objective: Objective,
                   method: MethodSpec, batches: Sequence[MicroBatch], world: int, device: torch.device,
                   progress: float, twin: Twin | None = None, began: float | None = None) -> StepOutcome:
    """Forward/backward every micro-batch, reduce the telemetry and step the engine unless the loss or gradient
    is non-finite; then, with a twin, step the twin on the same batches from the same random state and measure
    their distance (harness/train/twin.py). Collective when `world` > 1."""
    began = time.perf_counter() if began is None else began
    before = rng_state() if twin is not None else None
    sums = accumulate(engine, model, objective, method, batches, world, device, progress)
    grad_norm = _global_grad_norm(params)
    values = all_reduce_mean([*sums.values, float(sums.inputs)], device)
    if not finite(values[0], grad_norm):
        return StepOutcome(values, grad_norm, False, time.perf_counter() - began, {})
    engine.step()
    seconds = time.perf_counter() - began
    measured: dict[str, float] = {}
    if twin is not None and before is not None:
        loss_twin = twin.follow(before, batches, objective, method, world, device, progress)
        measured = {**twin.measure(engine, model, values[0], loss_twin),
                    "sens_seconds": time.perf_counter() - began - seconds}
    return StepOutcome(values, grad_norm, True, seconds, measured)


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


def _maybe_kill(faults: Sequence[KillAt], rank: int, run: int, step: int) -> None:
    """Test hook: SIGKILL this worker process once per fault, at its rank, run and step (marker file = once)."""
    fault = next((f for f in faults if (f.rank, f.run, f.step) == (rank, run, step)), None)
    if fault is None:
        return
    marker = Path(fault.marker)
    if marker.exists():
        return
    marker.write_text(str(os.getpid()))
    os.kill(os.getpid(), signal.SIGKILL)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train worker entry point: train every run of the `WorkerConfig` under `loop_config[WORKER_CONFIG_KEY]`;
    results go out through reports."""
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    config: WorkerConfig = loop_config[WORKER_CONFIG_KEY]
    if not config.use_gpu:
        torch.set_num_threads(config.threads)
        skip_shm_comm_op()
    worker = Worker(config)
    resume = latest_checkpoint()
    first = 0 if resume is None else resume.run + int(resume.done)
    for index in range(first, len(config.runs)):
        partial = resume if resume is not None and resume.run == index and not resume.done else None
        if resume is None and config.runs[index].key in config.resume_from:
            partial = earlier_checkpoint(config.resume_from[config.runs[index].key], index)
        TrainingRecipe(worker, index, partial).train()
        gc.collect()
        if worker.device.type == "cuda":
            torch.cuda.empty_cache()


class TrainingRecipe:
    """One training (method x seed) on this worker, in the shape of a torchtune recipe: `setup` (model, adapter,
    objective and its preparation, DeepSpeed engine, twin, data streams, resume), `train_step`,
    `save_checkpoint` (collective on every rank) and `cleanup` (the final `done` checkpoint)."""

    def __init__(self, worker: Worker, index: int, resume: ResumePoint | None) -> None:
        self.worker, self.index, self.resume = worker, index, resume
        self.run: PlannedTraining = worker.config.runs[index]
        self.method: MethodSpec = self.run.method_spec()
        self.train_spec: TrainSpec = self.method.train
        self.state = TrainingState() if resume is None else TrainingState.resumed(resume.state)
        self.start = 0 if resume is None else resume.state.step
        self.began = time.perf_counter()

    def setup(self) -> None:
        """Build everything the steps need; a resumed run loads its engine state and skips the batches it saw."""
        deepspeed = import_deepspeed()  # the first import on GPU, where skip_shm_comm_op is not called

        worker, run, method, t = self.worker, self.run, self.method, self.train_spec
        torch.manual_seed(run.seed)
        worker.use_target(run.target, run.modality)
        model = worker.fresh_model()
        attach(model, method.adapter, seed=run.seed)
        self.model = model
        self.objective: Objective = make_objective(method.objective)
        self.use_retain = method.objective.uses_retain and run.retain is not None

        # The objective's one-time preparation, before DeepSpeed wraps the model (loaded when resuming).
        self.prepared, self.prepare_info = prepare_objective(worker, self.objective, model, run, t, self.use_retain,
                                                    self.resume)

        if t.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.n_steps = n_steps = total_steps(len(worker.config.data[run.forget]), method)

        def make_engine(module: torch.nn.Module) -> tuple[Any, Any]:
            engine, _, _, scheduler = deepspeed.initialize(
                model=module, optimizer=make_optimizer(adapter_parameters(module), t), config=run.deepspeed,
                lr_scheduler=lambda opt: make_scheduler(opt, t.scheduler, n_steps, t.warmup_ratio))
            return engine, scheduler

        # The sensitivity twin starts from a copy of the model taken before DeepSpeed wraps it (train/twin.py).
        twin_model = copy.deepcopy(model) if t.sensitivity is not None else None
        self.params = adapter_parameters(model)
        self.engine, self.scheduler = make_engine(model)
        if t.zero_stage == 3:
            _register_zero3_external_params(model)
        self.twin = None
        if t.sensitivity is not None and twin_model is not None:
            self.twin = Twin.build(twin_model, t.sensitivity, run.seed, lambda m: make_engine(m)[0],
                                   worker.probe(run.forget, t, t.sensitivity.probe_batch))
        self.forget = worker.stream(run.forget, t, run.seed)
        self.retain = worker.stream(run.retain if self.use_retain else None, t, run.seed + 1)

        if self.resume is not None:
            with self.resume.checkpoint.as_directory() as d:
                self.engine.load_checkpoint(d, tag=ENGINE_TAG, load_module_strict=False)
            for _ in range(self.start * t.grad_accum):
                next(self.forget)
                if self.use_retain:
                    next(self.retain)
        if self.twin is not None:
            self.twin.start(self.engine, model)

    def train_step(self, step: int) -> dict[str, Any] | None:
        """One optimizer step: its log row, or None when the loss or gradient is not finite (the run diverged)."""
        worker, t, method = self.worker, self.train_spec, self.method
        _maybe_kill(worker.config.faults, worker.rank, self.index, step)
        began = time.perf_counter()
        lr_now = self.scheduler.get_last_lr()[0]
        batches: list[MicroBatch] = [(next(self.forget).to(worker.device),
                                      next(self.retain).to(worker.device) if self.use_retain else None)
                                     for _ in range(t.grad_accum)]
        done = optimizer_step(self.engine, self.model, self.params, self.objective, method, batches, worker.world,
                              worker.device, step / self.n_steps, self.twin, began)
        loss_mean, lf, lr_, logit_norm, n_in = done.values
        if not done.stepped:
            what = "loss" if not math.isfinite(loss_mean) else "gradient"
            self.state.diverged, self.state.reason = True, f"non-finite {what} at step {step}"
            return None
        with _gathered(self.params, t.zero_stage):
            norms = adapter_norms(self.model)
        row = {"method": method.name, "seed": self.run.seed, "step": step, "loss": loss_mean, "loss_forget": lf,
               "loss_retain": lr_, "grad_norm": done.grad_norm, **norms, "logit_norm": logit_norm, "lr": lr_now,
               "tokens_per_s": n_in * worker.world / done.seconds if done.seconds > 0 else float("nan"), **done.twin}
        self.state.log.append(row)
        if worker.rank == 0 and worker.progress is not None:
            worker.progress.step(self.run.key, step + 1, self.n_steps, loss_mean, done.grad_norm)
        return row

    def report(self, row: dict[str, Any], done: bool = False) -> None:
        """A plain metrics report (no checkpoint); collective on every rank."""
        import ray.train

        ray.train.report(self._metrics(row, done))

    def save_checkpoint(self, row: dict[str, Any], step: int, seconds: float, done: bool = False) -> None:
        """Checkpoint the engine, the adapter (PEFT format), the preparation result and the run's state, and report
        it with `row`; collective on every rank."""
        import ray.train
        from ray.train import Checkpoint

        worker, t = self.worker, self.train_spec
        tmp = Path(tempfile.mkdtemp(prefix="harness-ckpt-"))
        self.engine.save_checkpoint(str(tmp), tag=ENGINE_TAG, exclude_frozen_parameters=True)
        with _gathered(self.params, t.zero_stage):
            if worker.rank == 0:
                save_adapter(self.model, tmp / ADAPTER_DIR, self.method.adapter, self.run.target)
        if worker.rank == 0:
            if self.prepared is not None:
                save_file({k: v.detach().to("cpu").contiguous() for k, v in self.prepared.items()},
                          str(tmp / PREPARED_FILE))
            self.state.record(self.index, self.run.key, self.prepare_info, step, seconds, done).write(tmp)
        ray.train.report(self._metrics(row, done), checkpoint=Checkpoint.from_directory(str(tmp)))
        shutil.rmtree(tmp, ignore_errors=True)

    def _metrics(self, row: dict[str, Any], done: bool) -> dict[str, Any]:
        return {**row, "run": self.run.key, "run_index": self.index, RUN_DONE_KEY: done,
                PLACEMENT_GROUP_KEY: self.worker.placement_group}

    def train(self) -> None:
        """setup, every step (checkpoints and reports as the train spec says), cleanup."""
        t = self.train_spec
        self.setup()
        self.row: dict[str, Any] = {}
        for step in range(self.start, self.n_steps):
            row = self.train_step(step)
            if row is None:
                break
            self.row = row
            last = step == self.n_steps - 1
            due = t.checkpoint_every is not None and (step + 1) % t.checkpoint_every == 0
            if due and not last:
                self.save_checkpoint(row, step + 1, time.perf_counter() - self.began)
            elif (step + 1) % t.report_every == 0 and not last:
                self.report(row)
        self.cleanup()

    def cleanup(self) -> None:
        """The run's final checkpoint, marked done (its adapter and whole log), and the progress bar's end."""
        final = dict(self.row) if self.row else {"method": self.method.name, "seed": self.run.seed, "step": self.start}
        seconds = time.perf_counter() - self.began + self.state.earlier_seconds
        self.save_checkpoint(final, len(self.state.log), seconds, done=True)
        if self.worker.rank == 0 and self.worker.progress is not None:
            self.worker.progress.finish(self.run.key, self.state.diverged)
