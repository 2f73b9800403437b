"""`harness tune` end to end on a tiny job: trials through Ray Train, Pareto outputs, and a resumed search."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness.cli import main
from harness.spec import load_spec

pytestmark = pytest.mark.e2e
# What Ray Tune and Optuna print on their own unless --verbose (the harness prints one line per trial event).
TUNE_NOISE = ("View detailed results here", "tensorboard --logdir", "could not be cast to float",
              "A new study created", "Configuration for experiment", "may be a performance bottleneck")

SPACE = {
    "method": "gd_sine", "num_samples": 2,
    "objectives": [{"metric": "forget_quality", "split": "forget10", "mode": "max"},
                   {"metric": "model_utility", "split": "all", "mode": "max"}],
    "proxy": {"metric": "loss_retain", "mode": "min"},
    "asha": {"grace_period": 1, "reduction_factor": 2, "max_t": 10},
    "params": {"adapter.bound": {"choice": ["sine", "tanh"]}, "train.lr": {"loguniform": [0.001, 0.01]}},
}


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("tune")
    job = {
        "name": "tiny", "out": str(tmp / "job"),
        "benchmark": {"synthetic": {"n_authors": 10, "qa_per_author": 2, "n_real_authors": 4, "n_world_facts": 4},
                      "data_dir": str(tmp / "data")},
        "reference": {"cache_dir": str(tmp / "cache"), "train": {"epochs": 2, "batch_size": 16}},
        "train": {"epochs": 3, "batch_size": 4, "lr": 1e-3, "report_every": 1},
        "eval": {"max_new_tokens": 8, "bootstrap": 0},
        "methods": [{"name": "gd_sine", "adapter": {"bound": "sine"}}],
    }
    (tmp / "job.yaml").write_text(yaml.safe_dump(job))
    (tmp / "space.yaml").write_text(yaml.safe_dump(SPACE))
    args = ["tune", str(tmp / "job.yaml"), "--space", str(tmp / "space.yaml"), "--out", str(tmp / "res")]
    # The first search in a fresh process, as a user runs it, so its console can be read; the resume in this one.
    first = subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, timeout=900)
    (tmp / "console.txt").write_text(first.stdout + first.stderr)
    assert first.returncode == 0, first.stdout + first.stderr
    (tmp / "first.parquet").write_bytes((tmp / "res" / "trials.parquet").read_bytes())
    assert main([*args, "--resume"]) == 0
    return tmp


def test_every_trial_is_recorded_with_its_config_and_objectives(tuned: Path) -> None:
    trials = pd.read_parquet(tuned / "res" / "trials.parquet")
    assert len(trials) == 2
    assert {"config/adapter.bound", "config/train.lr", "forget_quality", "model_utility"} <= set(trials.columns)
    # ASHA may stop a trial on its retain loss before it is scored; the others carry both objectives.
    scored = trials.dropna(subset=["forget_quality", "model_utility"])
    assert len(scored) >= 1
    assert (scored["steps"] > 0).all()


def test_pareto_table_plot_and_runnable_best_specs(tuned: Path) -> None:
    assert "Pareto front" in (tuned / "res" / "pareto.md").read_text()
    assert (tuned / "res" / "plots" / "pareto.png").is_file()
    best = sorted((tuned / "res" / "best").glob("*.yaml"))
    assert best
    spec = load_spec(best[0])
    assert spec.methods[0].adapter.bound in {"sine", "tanh"}


def test_resumed_search_restores_the_finished_trials(tuned: Path) -> None:
    first = pd.read_parquet(tuned / "first.parquet").sort_values("trial_id").reset_index(drop=True)
    again = pd.read_parquet(tuned / "res" / "trials.parquet").sort_values("trial_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(first[["trial_id", "forget_quality", "model_utility"]],
                                  again[["trial_id", "forget_quality", "model_utility"]])


def test_one_mlflow_run_per_trial_with_its_config(tuned: Path) -> None:
    """Ray's MLflow integration: each trial is one MLflow run (its name the trial's), the resume adds none."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tuned / 'res' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tune-tiny")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    trials = pd.read_parquet(tuned / "res" / "trials.parquet")
    names = sorted(r.data.tags["trial_name"] for r in runs)
    assert len(names) == len(trials) == 2
    for trial in trials.to_dict("records"):
        (run,) = [r for r in runs if r.data.tags["trial_name"].endswith(str(trial["trial_id"]))]
        assert run.data.tags["harness.kind"] == "trial"
        assert run.data.params["adapter.bound"] == trial["config/adapter.bound"]
    # Ray's callback set MLFLOW_TRACKING_URI in this process; the search put it back, so the next job in the
    # process logs to its own store, not this search's
    assert str(tuned) not in os.environ.get("MLFLOW_TRACKING_URI", "")


def test_console_shows_each_trial_and_no_library_noise(tuned: Path) -> None:
    console = (tuned / "console.txt").read_text()
    assert console.count("of 2 ended") == 2, console
    for noise in TUNE_NOISE:
        assert noise not in console, noise
