"""Shared fixtures: offline environment, and a fresh Ray instance per test module."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# A scoring group that cannot be placed fails the test in a minute instead of hanging the suite.
os.environ.setdefault("HARNESS_PLACEMENT_TIMEOUT_S", "120")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op torch thread: fastest for tiny tensors and robust to a busy 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def peaked_llama() -> Callable[[int], Any]:
    """Builds a tiny Llama for a vocabulary size with its matrices re-drawn at std 0.1: peaked,
    context-dependent greedy outputs (at the default std 0.02 greedy decoding mostly repeats one token,
    a weak test of padding and stopping)."""
    import torch

    from harness.models import build_builtin

    def build(vocab_size: int) -> Any:
        model = build_builtin("tiny-llama", vocab_size, seed=0).eval()
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        return model

    return build


@pytest.fixture(autouse=True, scope="module")
def _fresh_ray_per_module() -> Iterator[None]:
    """Each test module ends by shutting down the Ray instance it started in this process, so no actor,
    placement group or Tune trial of one module can hold the 2 CPUs another module's workers need."""
    yield
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
