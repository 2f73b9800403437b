"""Ray Train's SIGINT handler: not installed by the harness's trainer, and never left in place after `fit`."""

from __future__ import annotations

import inspect
import signal
from typing import Any

import pytest

from harness.train.ray_run import _trainer_class, fit_keeping_sigint


class _LikeRayTrain:
    """Does to SIGINT what Ray Train's `fit` does: installs its own handler and leaves it there."""

    def __init__(self, interrupt: bool = False) -> None:
        self.interrupt, self.aborted = interrupt, None

    def fit(self) -> str:
        signal.signal(signal.SIGINT, lambda *_: None)
        if self.interrupt:
            raise KeyboardInterrupt
        return "result"

    def abort(self, graceful: bool = True) -> None:
        self.aborted = graceful


def test_the_previous_handler_is_back_after_fit() -> None:
    before = signal.getsignal(signal.SIGINT)
    assert fit_keeping_sigint(_LikeRayTrain()) == "result"
    assert signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_in_fit_stops_the_trainer_and_propagates() -> None:
    before = signal.getsignal(signal.SIGINT)
    trainer = _LikeRayTrain(interrupt=True)
    with pytest.raises(KeyboardInterrupt):
        fit_keeping_sigint(trainer)
    assert trainer.aborted is not None and signal.getsignal(signal.SIGINT) is before


def test_the_trainer_replaces_ray_trains_sigint_hook() -> None:
    """The hook the harness overrides must exist in this Ray (a Ray upgrade that renames it fails here)."""
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    trainer_cls: Any = _trainer_class()
    hook = DataParallelTrainer._register_sigint_handler
    assert "signal.signal(signal.SIGINT" in inspect.getsource(hook)
    assert trainer_cls._register_sigint_handler is not hook
    before = signal.getsignal(signal.SIGINT)
    trainer = trainer_cls.__new__(trainer_cls)
    trainer._register_sigint_handler("controller")
    assert trainer.controller == "controller" and signal.getsignal(signal.SIGINT) is before
