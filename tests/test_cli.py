"""The command line: exit code 2 with a clear message on bad input; the dry run prints a plan."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_bad_spec_exits_2_naming_the_field(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"methods": [{"name": "a", "adapter": {"bound": "cosine"}}]}))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "methods.0.adapter.bound" in err and "cosine" in err and "Traceback" not in err


def test_bad_override_exits_2(capsys: pytest.CaptureFixture) -> None:
    assert main(["run", str(ROOT / "jobs/quickstart.yaml"), "--set", "train.lr=-1"]) == 2
    assert "train.lr" in capsys.readouterr().err


def test_unknown_builtin_model_exits_2(capsys: pytest.CaptureFixture) -> None:
    code = main(["run", str(ROOT / "jobs/quickstart.yaml"), "--set", "model.name=builtin:huge", "--dry-run"])
    assert code == 2
    err = capsys.readouterr().err
    assert "model.name" in err and "builtin:huge" in err


def test_dry_run_prints_plan_without_training(capsys: pytest.CaptureFixture) -> None:
    assert main(["run", str(ROOT / "jobs/quickstart.yaml"), "--dry-run", "--set", "adapter.rank=4"]) == 0
    out = capsys.readouterr().out
    assert "gd_lora" in out and "gd_sine" in out and "MLP layers" in out and "resolved spec:" in out
