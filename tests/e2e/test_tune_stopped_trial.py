"""A trial Tune stops must give its trainer's workers back, or the next trial waits for their CPUs forever.

Stopping a trial kills its actor and the Ray Train controller it owns, but Ray Train's placement-group
cleaner can miss the workers' group (seen on Ray 2.60: it exits before the group is registered). On this
2-core machine that leaked CPU is what hung `harness tune` and CI; `harness.commands.tune`'s callback frees it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def _reporting_loop(config: dict) -> None:
    import ray.train

    from harness.train.checkpoint import PLACEMENT_GROUP_KEY
    from harness.train.worker import placement_group_id

    for i in range(120):
        ray.train.report({"i": i, PLACEMENT_GROUP_KEY: placement_group_id()})
        time.sleep(1)


def _trial(config: dict) -> None:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    TorchTrainer(_reporting_loop, scaling_config=ScalingConfig(num_workers=1),
                 run_config=RunConfig(name=f"trainer-{config['x']}", storage_path=config["storage"],
                                      callbacks=[TuneReportCallback()])).fit()


def _live_worker_groups() -> list[str]:
    from ray.util import placement_group_table

    return [pid for pid, pg in placement_group_table().items()
            if pg["state"] != "REMOVED" and any(b.get("CPU", 0) >= 1 for b in pg["bundles"].values())]


@pytest.fixture
def ray_without_dashboard() -> Iterator[None]:
    """Ray's own cleaner needs the dashboard's State API (harness starts Ray with it); without it, only
    harness's callback can free the group, so this test proves the callback alone does."""
    import ray

    ray.shutdown()
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_stopped_trials_free_their_workers_for_the_next(ray_without_dashboard: None, tmp_path: Path) -> None:
    from ray import tune

    from harness.commands.tune import _release_callback

    tuner = tune.Tuner(
        tune.with_resources(_trial, {"CPU": 0.1}),
        param_space={"x": tune.grid_search([0, 1, 2]), "storage": str(tmp_path / "train")},
        # Each trial's single worker takes 1 of the 2 CPUs: a leaked group leaves 0.9 and the next trial
        # cannot start; the time budget turns that hang into unfinished trials.
        tune_config=tune.TuneConfig(max_concurrent_trials=1, time_budget_s=240),
        run_config=tune.RunConfig(name="stops", storage_path=str(tmp_path / "tune"), stop={"training_iteration": 2},
                                  callbacks=[_release_callback()], verbose=0),
    )
    frame = tuner.fit().get_dataframe()
    assert sorted(frame["config/x"]) == [0, 1, 2]
    assert (frame["training_iteration"] == 2).all(), frame[["config/x", "training_iteration"]]
    deadline = time.monotonic() + 30
    while _live_worker_groups() and time.monotonic() < deadline:
        time.sleep(1)
    assert not _live_worker_groups()
