"""Fixtures of the in-process DeepSpeed tests (tests/train/test_weight_decay.py, test_twin.py)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def process_group() -> Iterator[None]:
    """A one-process gloo group for `deepspeed.initialize` in this process, made once per session: DeepSpeed keeps
    the first default group it sees, so a group destroyed and made again between modules is one it does not know."""
    import torch.distributed as dist

    from harness.train.deepspeed_config import skip_shm_comm_op

    skip_shm_comm_op()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1",
                       "LOCAL_RANK": "0"})
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
