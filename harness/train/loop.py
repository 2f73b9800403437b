"""The per-worker unlearning loop, run by Ray Train: a list of runs (method x seed), one after another.

One worker group trains every run of a job, so the Ray Train start-up is paid once. For each run, every
worker builds a fresh copy of the target model, attaches the bounded adapter, wraps it in a DeepSpeed
engine (ZeRO 0-3, fp32/bf16, optional offload) and trains on its slice of each global batch. Telemetry
is all-reduced so every rank sees the same numbers; NaN/inf stops the run on all ranks together, and
the next run starts. A run's checkpoints (DeepSpeed engine state + PEFT-format adapter + the step log so
far, plus the objective's preparation result) go through `ray.train.report`; its last one is marked `done`.
A restarted worker group resumes from the latest checkpoint: finished runs are skipped, an unfinished one
resumes at its step with its preparation loaded, not recomputed, so each step's telemetry appears exactly
once. A run named in `WorkerConfig.resume_from` (a resumed job, harness.pipeline.resume) starts from that checkpoint of
an earlier attempt the same way. Rank 0 also streams every step to an optional progress actor. With
`train.sensitivity`, each run trains a perturbed twin in lockstep and logs their distance per step
(harness/train/twin.py).
"""

from __future__ import annotations

import copy
import gc
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from harness.adapters import adapted_layers, adapter_norms, adapter_parameters, attach
from harness.adapters.checkpoint import save_adapter
from harness.config import TrainSpec
from harness.data.batch import Batch
from harness.data.encode import BatchStream
from harness.models.modality import Modality, get_modality
from harness.objectives import FORGET, RETAIN, Objective, PrepareContext, make_objective
from harness.spec import MethodSpec
from harness.train.schedule import make_scheduler
from harness.train.step import MicroBatch, accumulate, all_reduce_mean, finite
from harness.train.twin import Twin, rng_state
from harness.train.worker_config import PlannedRun, WorkerConfig

STATE_FILE = "state.json"
ADAPTER_DIR = "adapter"
ENGINE_TAG = "engine"
#: The objective's preparation result in a checkpoint (safetensors), loaded by a resumed worker.
PREPARED_FILE = "prepared.safetensors"
# Each report names the workers' placement group (in Tune's trial results, for diagnosing a trial's resources).
PLACEMENT_GROUP_KEY = "placement_group"
#: Reported with every metrics row: true on a run's final checkpoint. Not `done`, which Ray Tune reads as
#: "this trial has finished" when a trial forwards the trainer's reports (TuneReportCallback).
RUN_DONE_KEY = "run_done"
#: The key of the `WorkerConfig` in Ray Train's `train_loop_config` (a dict).
WORKER_CONFIG_KEY = "worker_config"
#: Models up to this size are kept as a pristine copy in memory between runs; larger ones are re-read.
KEEP_PRISTINE_BYTES = 2**30


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


def _placement_group_id() -> str | None:
    from ray.util import get_current_placement_group

    pg = get_current_placement_group()
    return pg.id.hex() if pg is not None else None


def _maybe_kill(fault: dict[str, Any] | None, rank: int, run: int, step: int) -> None:
    """Test hook: SIGKILL this worker process once, at a given rank, run and step (marker file = once)."""
    if not fault or fault["rank"] != rank or fault.get("run", 0) != run or fault["step"] != step:
        return
    marker = Path(fault["marker"])
    if marker.exists():
        return
    marker.write_text(str(os.getpid()))
    os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class _Resume:
    """Where the latest checkpoint left off: its run index, whether that run was done, and its state."""

    run: int
    done: bool
    state: dict[str, Any]
    checkpoint: Any


def _latest_checkpoint() -> _Resume | None:
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        state = json.loads((Path(d) / STATE_FILE).read_text())
    return _Resume(state["run"], bool(state.get("done")), state, checkpoint)


def _earlier_checkpoint(path: str, index: int) -> _Resume:
    """A checkpoint an earlier, interrupted attempt of the job left for this run (`harness run --resume`)."""
    from ray.train import Checkpoint

    state = json.loads((Path(path) / STATE_FILE).read_text())
    return _Resume(index, False, state, Checkpoint.from_directory(path))


class _Worker:
    """What a worker keeps across runs: its rank, device, modality, processor, encoded data and the
    pristine target model each run starts from."""

    def __init__(self, config: WorkerConfig) -> None:
        import ray.train

        ctx = ray.train.get_context()
        self.config = config
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.modality: Modality = get_modality(config.modality)
        self.placement_group = _placement_group_id()
        self.progress = config.progress
        self._target: str | None = None
        self._pristine: torch.nn.Module | None = None
        self._encoded: dict[tuple[str, str, int], list[Any]] = {}

    def use_target(self, target: str) -> None:
        """Load the target model and processor a run starts from (kept while the next runs share it)."""
        if target == self._target:
            return
        model, self.processor = self.modality.load(target)
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        self._pristine = model if size <= KEEP_PRISTINE_BYTES else None
        self.collate = self.modality.collate(self.processor)
        self._target = target

    def fresh_model(self) -> torch.nn.Module:
        """A new copy of the current target model (from memory when small, else from disk)."""
        if self._pristine is not None:
            return copy.deepcopy(self._pristine)
        assert self._target is not None
        return self.modality.load(self._target)[0]

    def encoded(self, data_key: str, train: TrainSpec) -> list[Any]:
        """A dataset encoded for the current target's processor (cached)."""
        assert self._target is not None
        cache_key = (self._target, data_key, train.max_length)
        if cache_key not in self._encoded:
            self._encoded[cache_key] = self.modality.encode(self.processor, self.config.data[data_key],
                                                            train.max_length)
        return self._encoded[cache_key]

    def stream(self, data_key: str | None, train: TrainSpec, seed: int) -> Iterator[Batch]:
        """This worker's slice of the seeded global batches of a dataset (empty when `data_key` is None)."""
        if data_key is None:
            return iter(())
        return iter(BatchStream(self.encoded(data_key, train), train.batch_size, self.collate, seed, self.rank,
                                self.world))

    def probe(self, data_key: str, train: TrainSpec, n: int) -> Batch | None:
        """The first `n` examples of a dataset as one batch on the device, the same on every worker (None: n 0)."""
        return self.collate(self.encoded(data_key, train)[:n]).to(self.device) if n else None

    def prepare(self, objective: Objective, model: torch.nn.Module, run: PlannedRun, train: TrainSpec,
                use_retain: bool) -> dict[str, torch.Tensor]:
        """Run the objective's preparation pass on this worker (collective): the model moves to the device and
        reads fresh seeded streams of the forget set (the benchmark's own targets) and the retain set."""
        seed = run.seed
        streams = {FORGET: lambda: self.stream(run.prepare_forget or run.forget, train, seed)}
        if use_retain:
            streams[RETAIN] = lambda: self.stream(run.retain, train, seed + 1)
        n_forget = len(self.config.data[run.forget])
        ctx = PrepareContext(model.to(self.device), self.device, seed, self.rank, self.world, streams,
                             epoch_batches=math.ceil(n_forget / train.batch_size))
        return objective.prepare(ctx) or {}


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train worker entry point: train every run of the `WorkerConfig` under `loop_config[WORKER_CONFIG_KEY]`;
    results go out through reports."""
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    config: WorkerConfig = loop_config[WORKER_CONFIG_KEY]
    if not config.use_gpu:
        torch.set_num_threads(config.threads)
    worker = _Worker(config)
    resume = _latest_checkpoint()
    first = 0 if resume is None else resume.run + int(resume.done)
    for index in range(first, len(config.runs)):
        partial = resume if resume is not None and resume.run == index and not resume.done else None
        if resume is None and config.runs[index].key in config.resume_from:
            partial = _earlier_checkpoint(config.resume_from[config.runs[index].key], index)
        _train_run(worker, index, partial)
        gc.collect()
        if worker.device.type == "cuda":
            torch.cuda.empty_cache()


def _prepare(worker: _Worker, objective: Objective, model: torch.nn.Module, run: PlannedRun, train: TrainSpec,
             use_retain: bool, resume: _Resume | None) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any]]:
    """The objective's preparation result (None when it has none), applied to the model: loaded from the run's
    checkpoint when resuming, else computed (collective); and its record (`passes`, `loads`, `seconds`)."""
    if not objective.has_prepare:
        return None, {"passes": 0, "loads": 0, "seconds": 0.0}
    if resume is not None:
        with resume.checkpoint.as_directory() as d:
            prepared = load_file(str(Path(d) / PREPARED_FILE))
        info = {**resume.state["prepare"], "loads": resume.state["prepare"]["loads"] + 1}
    else:
        began = time.perf_counter()
        prepared = worker.prepare(objective, model, run, train, use_retain)
        info = {"passes": 1, "loads": 0, "seconds": time.perf_counter() - began}
    objective.apply_prepared(model, prepared)
    return prepared, info


def _train_run(worker: _Worker, index: int, resume: _Resume | None) -> None:
    """Train one run (method x seed) to its end or divergence; its last report carries the `done` checkpoint."""
    import deepspeed
    import ray.train
    from ray.train import Checkpoint

    began_run = time.perf_counter()
    config, rank, world, device = worker.config, worker.rank, worker.world, worker.device
    run = config.runs[index]
    method = run.method_spec()
    seed, t = run.seed, method.train
    torch.manual_seed(seed)

    worker.use_target(run.target)
    model = worker.fresh_model()
    attach(model, method.adapter, seed=seed)
    objective: Objective = make_objective(method.objective)
    use_retain = method.objective.uses_retain and run.retain is not None

    # The objective's one-time preparation, before DeepSpeed wraps the model (loaded when resuming).
    prepared, prepare_info = _prepare(worker, objective, model, run, t, use_retain, resume)

    if t.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    n_steps = total_steps(len(config.data[run.forget]), method)

    def make_engine(module: torch.nn.Module) -> tuple[Any, Any]:
        engine, _, _, scheduler = deepspeed.initialize(
            model=module, optimizer=make_optimizer(adapter_parameters(module), t), config=run.deepspeed,
            lr_scheduler=lambda opt: make_scheduler(opt, t.scheduler, n_steps, t.warmup_ratio))
        return engine, scheduler

    # The sensitivity twin starts from a copy of the model taken before DeepSpeed wraps it (harness/train/twin.py).
    twin_model = copy.deepcopy(model) if t.sensitivity is not None else None
    params = adapter_parameters(model)
    engine, scheduler = make_engine(model)
    if t.zero_stage == 3:
        _register_zero3_external_params(model)
    twin = None
    if t.sensitivity is not None and twin_model is not None:
        twin = Twin.build(twin_model, t.sensitivity, seed, lambda m: make_engine(m)[0],
                          worker.probe(run.forget, t, t.sensitivity.probe_batch))
    forget = worker.stream(run.forget, t, seed)
    retain = worker.stream(run.retain if use_retain else None, t, seed + 1)

    start, log = 0, []
    if resume is not None:
        with resume.checkpoint.as_directory() as d:
            engine.load_checkpoint(d, tag=ENGINE_TAG, load_module_strict=False)
        start, log = resume.state["step"], resume.state["log"]
        for _ in range(start * t.grad_accum):
            next(forget)
            if use_retain:
                next(retain)
    if twin is not None:
        twin.start(engine, model)

    def save_and_report(row: dict[str, Any], status: dict[str, Any] | None) -> None:
        """Checkpoint (status given) or plain metrics report; collective on every rank."""
        metrics = {**row, "run": run.key, "run_index": index,
                   RUN_DONE_KEY: bool(status and status.get("done")),
                   PLACEMENT_GROUP_KEY: worker.placement_group}
        if status is None:
            ray.train.report(metrics)
            return
        tmp = Path(tempfile.mkdtemp(prefix="harness-ckpt-"))
        engine.save_checkpoint(str(tmp), tag=ENGINE_TAG, exclude_frozen_parameters=True)
        with _gathered(params, t.zero_stage):
            if rank == 0:
                save_adapter(model, tmp / ADAPTER_DIR, method.adapter, run.target)
        if rank == 0:
            if prepared is not None:
                save_file({k: v.detach().to("cpu").contiguous() for k, v in prepared.items()},
                          str(tmp / PREPARED_FILE))
            (tmp / STATE_FILE).write_text(json.dumps({"log": log, "run": index, "key": run.key,
                                                      "prepare": prepare_info, **status}))
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(tmp)))
        shutil.rmtree(tmp, ignore_errors=True)

    status: dict[str, Any] = {"diverged": False, "reason": None}
    row: dict[str, Any] = {}
    for step in range(start, n_steps):
        _maybe_kill(config.fault, rank, index, step)
        began = time.perf_counter()
        lr_now = scheduler.get_last_lr()[0]
        batches: list[MicroBatch] = [(next(forget).to(device), next(retain).to(device) if use_retain else None)
                                     for _ in range(t.grad_accum)]
        done = optimizer_step(engine, model, params, objective, method, batches, world, device, step / n_steps,
                              twin, began)
        loss_mean, lf, lr_, logit_norm, n_in = done.values
        if not done.stepped:
            what = "loss" if not math.isfinite(loss_mean) else "gradient"
            status = {"diverged": True, "reason": f"non-finite {what} at step {step}"}
            break
        with _gathered(params, t.zero_stage):
            norms = adapter_norms(model)
        row = {"method": method.name, "seed": seed, "step": step, "loss": loss_mean, "loss_forget": lf,
               "loss_retain": lr_, "grad_norm": done.grad_norm, **norms, "logit_norm": logit_norm, "lr": lr_now,
               "tokens_per_s": n_in * world / done.seconds if done.seconds > 0 else float("nan"), **done.twin}
        log.append(row)
        if rank == 0 and worker.progress is not None:
            worker.progress.step.remote(run.key, step + 1, n_steps, loss_mean, done.grad_norm)
        last = step == n_steps - 1
        due = t.checkpoint_every is not None and (step + 1) % t.checkpoint_every == 0
        if due and not last:
            save_and_report(row, {**status, "step": step + 1, "seconds": time.perf_counter() - began_run})
        elif (step + 1) % t.report_every == 0 and not last:
            save_and_report(row, None)
    final = dict(row) if row else {"method": method.name, "seed": seed, "step": start}
    seconds = time.perf_counter() - began_run + (resume.state.get("seconds", 0.0) if resume is not None else 0.0)
    save_and_report(final, {**status, "step": len(log), "done": True, "seconds": seconds})
    if rank == 0 and worker.progress is not None:
        worker.progress.finish.remote(run.key, status["diverged"])
