"""Driver side of training: a job's trainings (method x seed) as ONE Ray Train `TorchTrainer`, results read back.

One worker group trains every run one after another, so the trainer's start-up (controller, worker
group, process group) is paid once per job instead of once per run. Each finished run leaves a `done`
checkpoint (adapter + step log); the driver copies every run's adapter to
`<out>/checkpoints/<method>/seed<seed>/`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
import shutil
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.core.errors import HarnessError
from harness.core.io import atomic_write_json
from harness.core.ray_env import ensure_ray, on_local_instance, started_locally
from harness.core.signals import cleaning_up
from harness.results.contract import run_key
from harness.spec import JobSpec, MethodSpec
from harness.train.checkpoint import ADAPTER_DIR, RUN_DONE_KEY, CheckpointRecord
from harness.train.deepspeed_config import build_deepspeed_config
from harness.train.loop import WORKER_CONFIG_KEY, train_loop_per_worker
from harness.train.progress import TrainingProgress
from harness.train.worker_config import KillAt, PlannedTraining, WorkerConfig


class TrainingError(HarnessError):
    """A training run failed (worker errors beyond `resources.max_failures`)."""

    exit_code = 1


@dataclass
class TrainingRequest:
    """One training to run: a method with a seed, on forget (and retain) examples of a modality (default: the one
    `run_unlearning_many` is given; a worker group can train runs of several)."""

    method: MethodSpec
    seed: int
    forget: Sequence[Any]
    retain: Sequence[Any] = ()
    target: str = ""  #: the model directory (or hub id) it starts from
    #: The forget set with the benchmark's own targets, for the objective's preparation pass when the
    #: objective trains toward other targets (SalUn's random labels); empty: `forget`.
    forget_original: Sequence[Any] = ()
    modality: str | None = None

    @property
    def key(self) -> str:
        """`<method>/seed<seed>`: the training's name in reports, progress and checkpoints."""
        return run_key(self.method.name, self.seed)


@dataclass
class TrainingResult:
    """What one training produced: step log, divergence, and the PEFT-format adapter."""

    method: str = ""
    seed: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)
    diverged: bool = False
    reason: str | None = None
    steps: int = 0
    adapter_dir: Path | None = None
    seconds: float = 0.0  #: wall time of the run inside its worker (model copy, engine, steps, checkpoints)
    #: the objective's preparation: `passes` (times computed: 1, also across resumes), `loads` (times a resumed
    #: worker group loaded it from a checkpoint) and `seconds` (of the pass)
    prepare: dict[str, Any] = field(default_factory=lambda: {"passes": 0, "loads": 0, "seconds": 0.0})


def _trainer_class() -> type:
    """`TorchTrainer` without Ray Train's own SIGINT handler, and without a dataset manager when it has no datasets.

    Ray Train (ray/train/v2/api/data_parallel_trainer.py, `_register_sigint_handler`) installs a handler
    during `fit` that aborts the run on Ctrl-C and returns as if training had ended (the driver then
    exits 1 with no message), and leaves that handler in place afterwards, so later Ctrl-Cs (while
    scoring) are swallowed. This subclass keeps the controller instead, so Ctrl-C raises
    KeyboardInterrupt as anywhere else and `abort` stops the workers.

    The workers get their examples in their config, not as Ray Datasets; without datasets, Ray Train's
    `DatasetsCallback` would still start a `DatasetManager` actor per trainer: a process, about 2 s of CPU
    (measured on empty fits: 13.3 -> 11.2 CPU-s each).

    Nor does it start Ray Train's `PlacementGroupCleaner`, a detached actor per trainer that asks the
    dashboard's State API every second whether the controller still lives, to remove the workers' placement group
    if it died: `release_trainer` does that when `fit` ends, from the GCS tables (harness.train.placement), which
    needs no dashboard (a local instance starts without one: harness.core.ray_env).

    On a local instance its controller asks no autoscaler for the workers' resources: Ray Train's scaling policy
    would start an `_AutoscalingCoordinatorActor` per instance (a process, about 2.4 s of CPU) to forward requests
    that a single machine cannot act on (`_without_autoscaling_requests`).
    """
    from ray.train.torch import TorchTrainer

    class Trainer(TorchTrainer):  # type: ignore[misc]
        controller: Any = None

        def _register_sigint_handler(self, controller: Any) -> None:
            self.controller = controller

        def _create_default_callbacks(self) -> list[Any]:
            from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
            from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

            dropped = (PlacementGroupCleanerCallback,) + (() if self.datasets else (DatasetsCallback,))
            return [c for c in super()._create_default_callbacks() if not isinstance(c, dropped)]

        def _initialize_and_run_controller(self, **kwargs: Any) -> Any:
            if on_local_instance():
                kwargs["scaling_policy"] = _without_autoscaling_requests(kwargs["scaling_policy"])
            return super()._initialize_and_run_controller(**kwargs)

        def abort(self, graceful: bool = True) -> None:
            """Stop the run's controller, and with it its worker group (after Ctrl-C).

            `graceful`: let the controller abort its workers and placement group first (seconds; on a
            cluster, where nothing else would); else kill it at once (a local instance's shutdown stops
            the rest).
            """
            import ray

            if self.controller is None:
                return
            if graceful:
                try:
                    ray.get(self.controller.abort.remote(), timeout=60)
                except Exception:  # noqa: BLE001, S110 - abort ends the actor, so its call fails by design
                    pass
            try:
                ray.kill(self.controller, no_restart=True)
            except Exception:  # noqa: BLE001, S110 - already gone
                pass

    return Trainer


def _without_autoscaling_requests(policy: Any) -> Any:
    """Ray Train's fixed-size scaling policy without its resource requests to the cluster's autoscaler (which
    start the instance's autoscaling coordinator actor); any other policy unchanged."""
    from ray.train.v2._internal.execution.scaling_policy import FixedScalingPolicy

    if type(policy) is not FixedScalingPolicy:
        return policy

    class LocalScalingPolicy(FixedScalingPolicy):  # type: ignore[misc]
        def after_controller_start(self, train_run_context: Any) -> None:
            pass  # registers the request, and creates the coordinator's client, in the base class

        def _maybe_send_resource_request(self) -> None:
            pass

    return LocalScalingPolicy(policy.scaling_config)


def fit_keeping_sigint(trainer: Any) -> Any:
    """`trainer.fit()`; the SIGINT handler in place before it is in place after it (Ray Train installs its
    own); on Ctrl-C or SIGTERM the trainer's workers are stopped and the KeyboardInterrupt propagates."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    try:
        return trainer.fit()
    except KeyboardInterrupt:
        with cleaning_up():
            if hasattr(trainer, "abort"):
                trainer.abort(graceful=not started_locally())
        raise
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGINT, previous)


def _data_key(examples: Sequence[Any]) -> str:
    """A content hash naming a dataset (pairs of strings, or arrays and labels), so it is sent once."""
    return hashlib.sha256(pickle.dumps(list(examples), protocol=5)).hexdigest()[:16]


def _train_config(requests: Sequence[TrainingRequest], spec: JobSpec, modality: str, out_dir: Path,
                  faults: Sequence[dict[str, Any]], resume_from: dict[str, str] | None = None) -> WorkerConfig:
    """The workers' config: every run, each distinct dataset once, and the DeepSpeed config per method."""
    res = spec.resources
    data: dict[str, list[Any]] = {}
    runs = []
    for req in requests:
        forget_key = _data_key(req.forget)
        data.setdefault(forget_key, list(req.forget))
        retain_key = original_key = None
        if req.retain:
            retain_key = _data_key(req.retain)
            data.setdefault(retain_key, list(req.retain))
        if req.forget_original:
            original_key = _data_key(req.forget_original)
            data.setdefault(original_key, list(req.forget_original))
        ds_config = build_deepspeed_config(req.method.train, res.num_workers)
        atomic_write_json(out_dir / "deepspeed" / f"{req.method.name}.json", ds_config)
        runs.append(PlannedTraining(key=req.key, method=req.method.model_dump(mode="json"), seed=req.seed,
                               target=req.target, forget=forget_key, retain=retain_key,
                               prepare_forget=original_key, deepspeed=ds_config,
                               modality=req.modality or modality))
    return WorkerConfig(runs=runs, data=data, use_gpu=res.use_gpu, threads=res.cpus_per_worker,
                        faults=tuple(KillAt(**fault) for fault in faults), resume_from=resume_from or {})


def run_unlearning_many(requests: Sequence[TrainingRequest], spec: JobSpec, out_dir: Path,
                        modality: str = "text", fault: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
                        callbacks: Sequence[Any] = (), name: str = "unlearn",
                        progress: bool = True, resume_from: dict[str, str] | None = None) -> dict[str, TrainingResult]:
    """Train every request in one Ray Train run (N workers, each a DeepSpeed engine); results by run key.

    Each request names the directory (or hub id) its workers load the target model and processor from.
    `resume_from` maps run keys to a checkpoint directory of an earlier, interrupted attempt (harness.pipeline.resume):
    those runs continue from it instead of starting over.
    `modality` is that of the requests that name none.
    `fault` is a test hook: `{"rank", "run", "step", "marker"}` (or a list of them) makes that worker SIGKILL itself
    once.
    `callbacks` are Ray Train callbacks (Tune passes its `TuneReportCallback` to see each report).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig

    keys = [r.key for r in requests]
    if len(set(keys)) != len(keys):
        raise ValueError(f"runs must be distinct (method, seed) pairs; got {keys}")
    res = spec.resources
    ensure_ray(res.address)
    faults = [] if fault is None else [fault] if isinstance(fault, dict) else list(fault)
    config = _train_config(requests, spec, modality, out_dir, faults, resume_from)
    storage = (out_dir / "ray").resolve()
    # A new run of the job starts fresh: Ray Train would otherwise resume an earlier run of the same name.
    shutil.rmtree(storage / name, ignore_errors=True)
    worker_resources: dict[str, float] = {"CPU": res.cpus_per_worker}
    if res.use_gpu:
        worker_resources["GPU"] = 1
    with TrainingProgress(keys, enabled=progress) as bars:
        trainer = _trainer_class()(
            train_loop_per_worker,
            train_loop_config={WORKER_CONFIG_KEY: dataclasses.replace(config, progress=bars.sink)},
            scaling_config=ScalingConfig(num_workers=res.num_workers, use_gpu=res.use_gpu,
                                         resources_per_worker=worker_resources),
            # Every run's `done` checkpoint is kept: it holds that run's adapter and log.
            run_config=RunConfig(name=name, storage_path=str(storage),
                                 failure_config=FailureConfig(max_failures=res.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=None), callbacks=list(callbacks)),
            torch_config=TorchConfig(backend="nccl" if res.use_gpu else "gloo"),
        )
        try:
            result = fit_keeping_sigint(trainer)
        except Exception as err:  # Ray wraps worker failures in several error types
            try:
                release_trainer(trainer)
            finally:  # the training's failure is the one to report, even if the release failed too
                raise TrainingError(f"training {', '.join(keys)} failed: {err}") from err
        release_trainer(trainer)
    return _collect(result, requests, out_dir)


def release_trainer(trainer: Any) -> list[str]:
    """Stop a trainer's controller once its `fit` has ended and remove the placement groups it created (its worker
    groups), confirmed REMOVED: after a controller that died in a long-lived driver (a nightly suite, a study),
    nothing else would give their CPUs back. Not on Ctrl-C: the interrupted job's Ray workers are stopped then."""
    from harness.train.placement import release_controllers

    controller = getattr(trainer, "controller", None)
    return [] if controller is None else release_controllers({controller._actor_id.hex()})


def _collect(result: Any, requests: Sequence[TrainingRequest], out_dir: Path) -> dict[str, TrainingResult]:
    """Every run's last `done` checkpoint: its log and status, and its adapter copied under `out_dir`."""
    done: dict[str, Any] = {}
    for checkpoint, metrics in result.best_checkpoints or []:
        if metrics.get(RUN_DONE_KEY):
            done[metrics["run"]] = checkpoint
    runs: dict[str, TrainingResult] = {}
    for req in requests:
        if req.key not in done:
            raise TrainingError(f"run {req.key} finished without a final checkpoint")
        with done[req.key].as_directory() as d:
            runs[req.key] = read_finished_training(Path(d), req, out_dir)
    return runs


def read_finished_training(checkpoint: Path, req: TrainingRequest, out_dir: Path) -> TrainingResult:
    """A run's result from its `done` checkpoint directory: its state, and its adapter copied to
    `<out_dir>/checkpoints/<method>/seed<seed>/`."""
    dest = out_dir / "checkpoints" / req.method.name / f"seed{req.seed}"
    state = CheckpointRecord.read(checkpoint)
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(checkpoint / ADAPTER_DIR, dest)
    return TrainingResult(method=req.method.name, seed=req.seed, log=state.log, diverged=state.diverged,
                    reason=state.reason, steps=state.step, adapter_dir=dest, seconds=state.seconds,
                    prepare=state.prepare)


def run_unlearning(method: MethodSpec, spec: JobSpec, target: str, forget: Sequence[Any], retain: Sequence[Any],
                   out_dir: Path, seed: int = 0, fault: dict[str, Any] | None = None, callbacks: Sequence[Any] = (),
                   modality: str = "text", progress: bool = False, forget_original: Sequence[Any] = ()
                   ) -> TrainingResult:
    """Train one method with one seed (a trainer of its own; used by Tune trials and tests)."""
    request = TrainingRequest(method, seed, forget, retain, target, forget_original)
    return run_unlearning_many([request], spec, out_dir, modality=modality, fault=fault,
                               callbacks=callbacks, name=method.name, progress=progress)[request.key]
