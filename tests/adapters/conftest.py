"""Adapter tests use tiny tensors: one intra-op thread (the shared `one_thread` fixture) for all of them."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Every adapter test runs with one torch thread."""
