"""DeepSpeed's shared-memory all-reduce op (inference only) is never built by a training process, and its
autotuner does not import MLflow there (harness.train.deepspeed_config.import_deepspeed)."""

from __future__ import annotations

import subprocess
import sys


def test_a_training_process_never_builds_the_shm_comm_op() -> None:
    # A process of its own: the op must be skipped before DeepSpeed's torch backend first starts there.
    code = ("import sys\n"
            "from harness.train.deepspeed_config import skip_shm_comm_op\n"
            "skip_shm_comm_op()\n"
            "import deepspeed.autotuning.autotuner as tuner\n"
            "assert 'mlflow' not in sys.modules and tuner.has_mlflow is False\n"
            "from deepspeed.comm.torch import build_shm_op\n"
            "assert build_shm_op() is None\n"
            "import mlflow\n"  # the driver's tracking still imports it
            "assert mlflow.MlflowClient\n"
            "print('skipped')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("skipped") and "built successfully" not in done.stdout
