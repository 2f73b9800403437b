"""Training progress: the trainers one driver process starts share one sink actor, each on a channel of its own."""

from __future__ import annotations

import pytest

from harness.core.ray_env import ensure_ray
from harness.train.progress import TrainingProgress

pytestmark = pytest.mark.e2e


def test_trainers_of_one_driver_share_one_sink_actor_on_channels_of_their_own() -> None:
    ensure_ray()
    lines: list[str] = []
    with TrainingProgress(["gd/seed0"], log=lines.append, interval_s=60) as first:
        assert first.sink is not None
        first.sink.step("gd/seed0", 2, 2, 0.5, 1.5)
        first.sink.finish("gd/seed0", False)
    # the last state is drawn on exit: calls from one process reach the actor in order
    assert lines == ["trained gd/seed0: 2/2 steps, loss 0.5, grad norm 1.5"]

    with TrainingProgress(["gd/seed0"], log=lines.append, interval_s=60) as second:
        assert second.sink is not None and first.sink is not None
        assert second.sink.sink._actor_id == first.sink.sink._actor_id  # no new actor process
        assert second.sink.channel != first.sink.channel
        # the same run key in the next trainer starts from nothing: no step, not finished
        assert second.sink.snapshot() == ({}, {})
        second.sink.step("gd/seed0", 1, 3, 0.25, 2.0)
    assert lines[1:] == []  # not finished: no line (the periodic line comes every 30 s)
    # a closed channel is forgotten
    assert first.sink.snapshot() == ({}, {}) and second.sink.snapshot() == ({}, {})
