"""Driver side of training: the spec's resources as a Ray Train `TorchTrainer`, and its result read back."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.results import atomic_write_json
from harness.spec import JobSpec, MethodSpec
from harness.train.deepspeed_config import build_deepspeed_config
from harness.train.loop import ADAPTER_DIR, STATE_FILE, train_loop_per_worker

Pair = tuple[str, str]


class TrainingError(HarnessError):
    """A training run failed (worker errors beyond `resources.max_failures`)."""

    exit_code = 1


@dataclass
class TrainRun:
    """What one method's training produced: step log, divergence, and the PEFT-format adapter."""

    log: list[dict[str, Any]] = field(default_factory=list)
    diverged: bool = False
    reason: str | None = None
    steps: int = 0
    adapter_dir: Path | None = None


def ensure_ray(address: str | None = None) -> None:
    """Connect to `address` (or RAY_ADDRESS), or start a local Ray instance, once per process."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        # Worker logs stay in Ray's session logs; failures come back with their traceback in the result.
        # The dashboard serves the State API, which Ray Train's PlacementGroupCleaner polls: without it, a
        # trainer whose controller is killed (a Tune trial stopped by ASHA) leaks its workers' placement
        # group and the next trainer waits for those CPUs forever.
        ray.init(include_dashboard=True, log_to_driver=False, configure_logging=False)


def run_unlearning(method: MethodSpec, spec: JobSpec, target: str, forget_pairs: Sequence[Pair],
                   retain_pairs: Sequence[Pair], out_dir: Path, fault: dict[str, Any] | None = None,
                   callbacks: Sequence[Any] = ()) -> TrainRun:
    """Train one method on Ray Train (N workers, each a DeepSpeed engine) and collect its adapter and log.

    `target` is a directory (or hub id) every worker loads the target model and tokenizer from.
    `fault` is a test hook: `{"rank", "step", "marker"}` makes that worker SIGKILL itself once.
    `callbacks` are Ray Train callbacks (Tune passes its `TuneReportCallback` to see each report).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    res = spec.resources
    ensure_ray(res.address)
    ds_config = build_deepspeed_config(method.train, res.num_workers)
    atomic_write_json(out_dir / "deepspeed" / f"{method.name}.json", ds_config)
    storage = (out_dir / "ray").resolve()
    # A new run of the job starts fresh: Ray Train would otherwise resume an earlier run of the same name.
    shutil.rmtree(storage / method.name, ignore_errors=True)
    worker_resources: dict[str, float] = {"CPU": res.cpus_per_worker}
    if res.use_gpu:
        worker_resources["GPU"] = 1
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "method": method.model_dump(mode="json"), "target": target, "base_model": spec.model.name,
            "forget_pairs": list(forget_pairs), "retain_pairs": list(retain_pairs), "seed": spec.seed,
            "deepspeed": ds_config, "use_gpu": res.use_gpu, "threads": res.cpus_per_worker, "fault": fault,
        },
        scaling_config=ScalingConfig(num_workers=res.num_workers, use_gpu=res.use_gpu,
                                     resources_per_worker=worker_resources),
        run_config=RunConfig(name=method.name, storage_path=str(storage),
                             failure_config=FailureConfig(max_failures=res.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2), callbacks=list(callbacks)),
        torch_config=TorchConfig(backend="nccl" if res.use_gpu else "gloo"),
    )
    try:
        result = trainer.fit()
    except Exception as err:  # Ray wraps worker failures in several error types
        raise TrainingError(f"training method {method.name!r} failed: {err}") from err
    if result.checkpoint is None:
        raise TrainingError(f"training method {method.name!r} finished without a checkpoint")
    dest = out_dir / "checkpoints" / method.name
    with result.checkpoint.as_directory() as d:
        state = json.loads((Path(d) / STATE_FILE).read_text())
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(Path(d) / ADAPTER_DIR, dest)
    return TrainRun(log=state["log"], diverged=state["diverged"], reason=state["reason"], steps=state["step"],
                    adapter_dir=dest)
