"""`harness study` end to end on a tiny job (2 methods, 2 trials each, 2 confirmation seeds) through the real Ray
Tune path, interrupted after the first method's search and resumed: finished trials are not trained again."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

import harness.commands.study.run as study_run
from harness.cli import main
from harness.commands.study.select import check_equal_budgets
from harness.commands.study.spec import load_study, study_out

pytestmark = pytest.mark.e2e


def _trainings(out: Path) -> dict[str, list[str]]:
    """Ray Train runs per method's search: one per trial (each trial trains its search seeds in one run)."""
    return {m.name: sorted(p.parent.parent.name for p in m.glob("tune/*/ray/*/") if p.is_dir())
            for m in sorted((out / "search").iterdir())}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("study")
    job = {
        "name": "tiny", "seeds": [0],
        "benchmark": {"synthetic": {"n_authors": 10, "qa_per_author": 2, "n_real_authors": 4, "n_world_facts": 4},
                      "data_dir": str(tmp / "data")},
        "reference": {"cache_dir": str(tmp / "cache"), "train": {"epochs": 2, "batch_size": 16}},
        "train": {"batch_size": 4, "report_every": 1},
        "eval": {"max_new_tokens": 4, "bootstrap": 0},
        "methods": [{"name": "gd_lora", "adapter": {"bound": "none"}}],
    }
    (tmp / "job.yaml").write_text(yaml.safe_dump(job))
    spec = {"job": "job.yaml", "trials": 2, "steps": 3, "search_seeds": [0], "confirm_seeds": [7, 8],
            "methods": [{"name": "gd_lora", "adapter": {"bound": "none"}},
                        {"name": "gd_sine", "adapter": {"bound": "sine"}}],
            "space": {"params": {"train.lr": {"loguniform": [1e-3, 1e-2]}}}}
    (tmp / "study.yaml").write_text(yaml.safe_dump(spec))
    out = tmp / "res"
    real_search = study_run.search_method

    def interrupted(study_spec, job_spec, method, *args, **kwargs):  # noqa: ANN001, ANN202
        if method.name == "gd_sine":
            raise KeyboardInterrupt  # Ctrl-C once the first method's search has finished
        return real_search(study_spec, job_spec, method, *args, **kwargs)

    s, j = load_study(tmp / "study.yaml")
    study_run.search_method = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            study_run.run_study(s, j, study_out(s, str(out)))
    finally:
        study_run.search_method = real_search
    (tmp / "status_interrupted.json").write_text((out / "status.json").read_text())
    (tmp / "first_trainings.json").write_text(json.dumps(_trainings(out)))
    assert main(["study", str(tmp / "study.yaml"), "--out", str(out)]) == 2  # not empty: --resume is needed
    assert main(["study", str(tmp / "study.yaml"), "--out", str(out), "--resume"]) == 0
    return tmp


def test_resume_continues_without_training_finished_trials_again(study: Path) -> None:
    status = json.loads((study / "status_interrupted.json").read_text())
    assert status["state"] == "interrupted" and status["signal"] == "SIGINT"
    first = json.loads((study / "first_trainings.json").read_text())
    assert {k: len(v) for k, v in first.items()} == {"gd_lora": 2}
    after = _trainings(study / "res")
    assert after["gd_lora"] == first["gd_lora"] and len(after["gd_sine"]) == 2  # 4 trainings in all, not 6
    assert json.loads((study / "res" / "status.json").read_text())["state"] == "finished"


def test_equal_budgets_fresh_seeds_and_every_trial_in_study_parquet(study: Path) -> None:
    frame = pd.read_parquet(study / "res" / "study.parquet")
    check_equal_budgets(frame)
    trials, confirm = frame[frame["kind"] == "trial"], frame[frame["kind"] == "confirm"]
    assert trials.groupby("method")["trial_id"].nunique().to_dict() == {"gd_lora": 2, "gd_sine": 2}
    assert set(trials["steps"]) == {3} and set(frame["steps_budget"]) == {3} and set(frame["search_seeds"]) == {"0"}
    assert {"config/train.lr", "config/adapter.omega", "forget_score", "utility", "inside_budget"} <= set(frame)
    assert sorted(confirm["seed"].astype(int).unique()) == [7, 8] and 0 not in set(confirm["seed"].astype(int))
    assert confirm.groupby("method")["seed"].count().to_dict() == {"gd_lora": 2, "gd_sine": 2}
    assert trials["selected"].sum() == 2
    assert set(confirm["trial_id"]) == set(trials[trials["selected"]]["trial_id"])
    spec = yaml.safe_load((study / "res" / "confirm" / "spec.yaml").read_text())
    assert spec["seeds"] == [7, 8] and all(m["train"]["max_steps"] == 3 for m in spec["methods"])


def test_study_md_plots_and_mlflow_parent_with_nested_trials(study: Path) -> None:
    text = (study / "res" / "study.md").read_text()
    assert "| gd_sine |" in text and "gd_lora" in text and "**Verdict.**" in text
    assert (study / "res" / "plots" / "matched_utility.png").is_file()
    assert (study / "res" / "plots" / "trials.png").is_file()
    assert (study / "res" / "confirm" / "summary.md").is_file()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{study / 'res' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("study-tiny")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("harness.kind") == "study"]
    children = [r for r in runs if r.data.tags.get("harness.kind") == "trial"]
    assert len(parents) == 1 and len(children) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
