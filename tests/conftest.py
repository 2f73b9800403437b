"""Shared fixtures: offline environment, and a fresh Ray instance per test module."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# A scoring group that cannot be placed fails the test in a minute instead of hanging the suite.
os.environ.setdefault("HARNESS_PLACEMENT_TIMEOUT_S", "120")


@pytest.fixture(autouse=True, scope="module")
def _fresh_ray_per_module() -> Iterator[None]:
    """Each test module ends by shutting down the Ray instance it started in this process, so no actor,
    placement group or Tune trial of one module can hold the 2 CPUs another module's workers need."""
    yield
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
