"""Tune: search-space validation, trial specs, and the Pareto front on hand-made results."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness.commands.tune import TuneSpace, apply_trial, load_space, write_tune_results
from harness.config import SearchObjective
from harness.core.errors import SpecError
from harness.render.tables import pareto_front
from harness.spec import load_spec, validate_spec

ROOT = Path(__file__).resolve().parents[2]
OBJECTIVES = [SearchObjective(metric="forget_quality", split="forget10"),
              SearchObjective(metric="model_utility", split="all")]


def test_shipped_spaces_validate() -> None:
    for path in sorted((ROOT / "tune_spaces").glob("*.yaml")):
        assert isinstance(load_space(path), TuneSpace), path


def test_bad_space_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"objectives": [{"metric": "fq", "split": "f"}],
                                    "params": {"train.lr": {"gaussian": [0, 1]}}}))
    with pytest.raises(SpecError, match="params.train.lr"):
        load_space(path)


def test_trial_spec_applies_values_to_the_tuned_method_only() -> None:
    spec = load_spec(ROOT / "jobs/quickstart.yaml")
    trial = apply_trial(spec, "gd_sine", {"adapter.bound": "tanh", "adapter.omega": 3.5, "train.lr": 0.002})
    assert [m.name for m in trial.methods] == ["gd_sine"]
    m = trial.methods[0]
    assert (m.adapter.bound, m.adapter.omega, m.train.lr) == ("tanh", 3.5, 0.002)
    with pytest.raises(SpecError, match="bound"):
        apply_trial(spec, "gd_sine", {"adapter.bound": "cosine"})


def test_pareto_front_keeps_exactly_the_non_dominated_trials() -> None:
    frame = pd.DataFrame({
        "trial_id": list("abcde"),
        "forget_quality": [0.9, 0.5, 0.1, 0.4, None],
        "model_utility": [0.1, 0.5, 0.9, 0.4, 0.99],
    })
    front = pareto_front(frame, OBJECTIVES)
    assert sorted(front["trial_id"]) == ["a", "b", "c"]  # d is dominated by b; e never finished
    flipped = pareto_front(frame, [OBJECTIVES[0], SearchObjective(metric="model_utility", split="all", mode="min")])
    assert sorted(flipped["trial_id"]) == ["a"]  # highest forget quality and lowest utility at once


def test_results_and_best_specs_are_written(tmp_path: Path) -> None:
    spec = load_spec(ROOT / "jobs/quickstart.yaml")
    space = load_space(ROOT / "tune_spaces/quickstart.yaml")
    frame = pd.DataFrame({
        "trial_id": ["t1", "t2"], "forget_quality": [0.8, 0.2], "model_utility": [0.3, 0.6],
        "config/adapter.bound": ["sine", "tanh"], "config/train.lr": [0.01, 0.002], "loss_retain": [1.0, 2.0],
    })
    write_tune_results(frame, spec, "gd_sine", space, tmp_path)
    assert pd.read_parquet(tmp_path / "trials.parquet").shape[0] == 2
    assert "2 of 2 trials" in (tmp_path / "pareto.md").read_text()
    assert (tmp_path / "plots" / "pareto.png").is_file()
    best = sorted((tmp_path / "best").glob("*.yaml"))
    assert len(best) == 2
    again = validate_spec(yaml.safe_load(best[0].read_text()))
    assert again.methods[0].name.startswith("gd_sine_tuned_")
    assert {m.adapter.bound for m in (load_spec(p).methods[0] for p in best)} == {"sine", "tanh"}


def test_trainer_reports_use_no_key_ray_tune_reserves() -> None:
    # A trial forwards every trainer report to Tune; a reserved key (e.g. `done`) would end the trial early.
    from ray.tune import result as tune_result

    from harness.train.checkpoint import PLACEMENT_GROUP_KEY, RUN_DONE_KEY

    reserved = {v for k, v in vars(tune_result).items() if k.isupper() and isinstance(v, str)}
    assert "done" in reserved
    assert not {RUN_DONE_KEY, PLACEMENT_GROUP_KEY, "run", "run_index"} & reserved
