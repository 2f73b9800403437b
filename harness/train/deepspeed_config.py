"""The DeepSpeed config of a training run, built from the spec in one place and validated."""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

from harness.config import TrainSpec
from harness.core.errors import SpecError


def build_deepspeed_config(train: TrainSpec, world_size: int) -> dict[str, Any]:
    """DeepSpeed config for `world_size` workers: batch sizes, ZeRO stage and offload, precision, clipping.

    `train.batch_size` is the global micro-batch, so each worker takes `batch_size / world_size`
    examples per micro-step and DeepSpeed's `train_batch_size` is `batch_size * grad_accum`.
    The optimizer (torch AdamW or SGD, `harness.train.loop.make_optimizer`, so no op is compiled) and the
    learning-rate schedule are the harness's own, passed to `deepspeed.initialize`.
    """
    if train.batch_size % world_size:
        raise SpecError(f"train.batch_size ({train.batch_size}) must be a multiple of the number of workers "
                        f"({world_size})")
    zero: dict[str, Any] = {"stage": train.zero_stage}
    if train.zero_stage >= 1:
        zero.update({"contiguous_gradients": True, "overlap_comm": False})
    if train.zero_stage == 3:
        zero.update({"stage3_gather_16bit_weights_on_model_save": False, "stage3_param_persistence_threshold": 0})
    if train.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if train.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    config: dict[str, Any] = {
        "train_batch_size": train.batch_size * train.grad_accum,
        "train_micro_batch_size_per_gpu": train.batch_size // world_size,
        "gradient_accumulation_steps": train.grad_accum,
        "gradient_clipping": train.max_grad_norm or 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": train.precision == "bf16"},
        "fp16": {"enabled": False},
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    validate_deepspeed_config(config, world_size)
    return config


def validate_deepspeed_config(config: dict[str, Any], world_size: int) -> None:
    """Check the batch-size identity DeepSpeed enforces, with a message naming the spec fields."""
    micro, accum = config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]
    if micro < 1:
        raise SpecError("train.batch_size must give each worker at least one example per micro-step")
    if config["train_batch_size"] != micro * accum * world_size:
        raise SpecError(f"train.batch_size x train.grad_accum ({config['train_batch_size']}) must equal "
                        f"micro-batch ({micro}) x grad_accum ({accum}) x workers ({world_size})")


def skip_shm_comm_op() -> None:
    """Keep DeepSpeed from building its shared-memory all-reduce op in this process (call before the first
    `deepspeed.initialize`).

    On CPU, DeepSpeed's torch backend JIT-compiles `deepspeed_shm_comm` when it starts (deepspeed/comm/torch.py,
    `build_shm_op`): about 40 s of C++ compilation wherever the torch-extensions cache is empty (a fresh CI
    machine; and measured here being rebuilt twice per test-suite run). Only `inference_all_reduce` (DeepSpeed's
    inference tensor parallelism) uses it; training reduces through torch.distributed, so the op is marked
    incompatible and never built.
    """
    import_deepspeed().ops.__compatible_ops__["deepspeed_shm_comm"] = False


def import_deepspeed() -> ModuleType:
    """`import deepspeed`, but without the MLflow that DeepSpeed's autotuner imports if it can.

    `deepspeed.runtime.config` imports `deepspeed.autotuning.autotuner`, whose `try: import mlflow` costs 0.7 s of
    every Ray Train worker's start (MLflow, FastAPI, ...): the harness never autotunes, and it tracks runs with
    MLflow from the driver only. While DeepSpeed imports, `sys.modules["mlflow"]` is None, so that import fails
    and the autotuner records that it has no MLflow; afterwards `import mlflow` works as usual.
    """
    if "deepspeed" in sys.modules or "mlflow" in sys.modules:
        import deepspeed

        return deepspeed
    sys.modules["mlflow"] = None  # type: ignore[assignment]
    try:
        import deepspeed
        import deepspeed.ops  # noqa: F401 (skip_shm_comm_op's)
    finally:
        if sys.modules.get("mlflow", 0) is None:
            del sys.modules["mlflow"]
    return deepspeed
