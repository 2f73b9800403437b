"""`harness eval` input checks: every bad model source exits 2 naming the cause, before any work is done."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from harness.cli import main
from harness.core.errors import SpecError
from harness.spec import validate_spec

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    """A TOFU job spec with no methods (only what `harness eval` needs)."""
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump({"name": "ev", "out": str(tmp_path / "out"),
                                    "model": {"name": "builtin:tiny-llama"},
                                    "benchmark": {"name": "tofu", "data_dir": str(tmp_path / "data")},
                                    "reference": {"cache_dir": str(tmp_path / "cache")}}))
    return path


def _fails(capsys: pytest.CaptureFixture[str], argv: list[str], match: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert match in err, err


def test_models_in_the_spec_and_methods_optional() -> None:
    spec = validate_spec({"models": [{"name": "m", "source": "/x/y"}, {"name": "n", "path": "gpt2", "kind": "hf"}]})
    assert [m.path for m in spec.models] == ["/x/y", "gpt2"] and spec.methods == []
    with pytest.raises(SpecError, match="methods: a job needs at least one method"):
        validate_spec({"name": "nothing"})
    with pytest.raises(SpecError, match="models.0.name: .*reserved"):
        validate_spec({"models": [{"name": "retain", "source": "/x"}]})


def test_run_needs_methods(spec_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails(capsys, ["run", str(spec_file), "--set", "models=[{name: m, source: /x}]"],
           "harness run` trains at least one method")


def test_bad_sources_exit_2_before_any_work(spec_file: Path, hand_made_run: Any, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    run = str(hand_made_run.run_dir)
    _fails(capsys, ["eval", str(spec_file)], "no model to score")
    _fails(capsys, ["eval", str(spec_file), "--model", f"target={run}"], "'target' is reserved")
    _fails(capsys, ["eval", str(spec_file), "--model", "x=/no/such/model"], "'/no/such/model' does not exist")
    _fails(capsys, ["eval", str(spec_file), "--adapter", "/no/such/adapter"], "/no/such/adapter: the directory "
           "does not exist")
    _fails(capsys, ["eval", str(spec_file), "--model", f"r={run},method=gd_nope"], "unknown method 'gd_nope'")
    _fails(capsys, ["eval", str(spec_file), "--model", f"r={run}", "--out", run], "holds the scored model 'r'")

    damaged = tmp_path / "damaged"
    shutil.copytree(hand_made_run.target_dir, damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    _fails(capsys, ["eval", str(spec_file), "--model", f"bad={damaged}"], "model.safetensors is not a readable "
           "safetensors file (truncated")
    adapter = tmp_path / "adapter"
    shutil.copytree(hand_made_run.run_dir / "checkpoints" / "gd_sine", adapter)
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    _fails(capsys, ["eval", str(spec_file), "--adapter", str(adapter)], "adapter_model.safetensors is not a "
           "readable safetensors file (truncated")
    assert not (tmp_path / "out").exists()  # nothing was written


def test_adapter_for_another_base_model_exits_2(spec_file: Path, hand_made_run: Any, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from transformers import AutoModelForCausalLM

    from harness.adapters import attach, save_adapter
    from harness.config import AdapterSpec
    from harness.models.text import build_builtin

    config = build_builtin("tiny-llama", 300).config
    config.hidden_size, config.intermediate_size = 64, 128
    wide = AutoModelForCausalLM.from_config(config)
    spec = AdapterSpec(bound="sine", rank=4)
    attach(wide, spec, seed=0)
    save_adapter(wide, tmp_path / "wide", spec, base_model="builtin:tiny-llama")
    _fails(capsys, ["eval", str(spec_file), "--adapter", str(tmp_path / "wide")],
           "model 'wide': adapter")
    _fails(capsys, ["eval", str(spec_file), "--adapter", str(tmp_path / "wide")],
           "an adapter for a different base model?")
    assert not (tmp_path / "out").exists()
    assert torch.get_num_threads() == 1
