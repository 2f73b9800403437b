"""`harness eval` on models the job did not train gives the same numbers as the run that trained them.

The demo run (tests/e2e/conftest.py) is scored again as a finished run, as one adapter directory, as its
`harness export` and on 2 Ray scoring workers: every metric equals the run's own within 1e-6. A plain
PEFT LoRA adapter saved by `peft` scores as its own merged model does; MUSE and TDEC jobs score a
no-op PEFT adapter exactly as their target model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main
from harness.results.contract import unattacked

ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-6
pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("one_thread")]


def _job_args(demo: Path) -> list[str]:
    return [str(ROOT / "jobs/quickstart.yaml"), "--set", f"reference.cache_dir={demo / 'cache'}",
            "--set", f"benchmark.data_dir={demo / 'data'}", "--set", "seeds=[0, 1]",
            "--set", "attacks.quantize.enabled=false"]


def _peft_adapter(base_dir: str | Path, out: Path, random_b: bool) -> Path:
    """A LoRA adapter on the MLP projections saved by `peft` itself (B random, or zero as peft initialises it)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir))
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["gate_proj", "up_proj", "down_proj"],
                        init_lora_weights=not random_b)
    model = get_peft_model(base, config)
    if random_b:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.02)
    model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def evaluated(demo: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from transformers import AutoTokenizer

    tmp = tmp_path_factory.mktemp("eval")
    run = demo / "run1"
    from harness.results.run_record import read_models

    target_dir = read_models(run).target
    assert main(["export", str(run), "--method", "gd_sine", "--seed", "0", "--out", str(tmp / "exported")]) == 0
    peft_dir = _peft_adapter(target_dir, tmp / "peft", random_b=True)
    from peft import AutoPeftModelForCausalLM

    merged = AutoPeftModelForCausalLM.from_pretrained(str(peft_dir)).merge_and_unload()
    merged.save_pretrained(str(tmp / "peft_merged"))
    AutoTokenizer.from_pretrained(target_dir).save_pretrained(str(tmp / "peft_merged"))

    assert main(["eval", *_job_args(demo), "--out", str(tmp / "ev"),
                 "--model", f"ours={run},method=gd_sine", "--adapter", str(run / "checkpoints/gd_sine/seed0"),
                 "--model", f"exported={tmp / 'exported'}", "--model", f"peft={peft_dir}",
                 "--model", f"peft_merged={tmp / 'peft_merged'}"]) == 0
    assert main(["eval", *_job_args(demo), "--out", str(tmp / "ev_workers"), "--workers", "2",
                 "--model", f"ours={run},method=gd_sine"]) == 0
    return {"run": run, "ev": tmp / "ev", "ev_workers": tmp / "ev_workers"}


def _values(out: Path, method: str, seed: int | None = None) -> pd.Series:
    m = unattacked(pd.read_parquet(out / "metrics.parquet"))  # the demo run's quantize rows: test_quickstart
    m = m[(m["method"] == method) & (m["split"] != "train")]
    if seed is not None:
        m = m[m["seed"] == seed]
    return m.set_index(["seed", "benchmark", "split", "metric"])["value"].sort_index() if seed is None else (
        m.set_index(["benchmark", "split", "metric"])["value"].sort_index())


def _assert_equal(got: pd.Series, want: pd.Series) -> None:
    assert len(want) >= 4 and list(got.index) == list(want.index)
    diff = (got - want).abs().max()
    assert diff <= TOL, (got - want).abs().sort_values().tail()


def test_the_finished_run_scored_again_gives_its_own_values(evaluated: dict[str, Path]) -> None:
    _assert_equal(_values(evaluated["ev"], "ours"), _values(evaluated["run"], "gd_sine"))
    for reference in ("target", "retain"):
        _assert_equal(_values(evaluated["ev"], reference), _values(evaluated["run"], reference))


def test_adapter_directory_and_export_give_the_runs_values(evaluated: dict[str, Path]) -> None:
    want = _values(evaluated["run"], "gd_sine", seed=0)
    _assert_equal(_values(evaluated["ev"], "gd_sine", seed=0), want)  # --adapter, named after its method
    _assert_equal(_values(evaluated["ev"], "exported", seed=0), want)


def test_two_scoring_workers_give_the_same_values(evaluated: dict[str, Path]) -> None:
    _assert_equal(_values(evaluated["ev_workers"], "ours"), _values(evaluated["ev"], "ours"))


def test_a_plain_peft_adapter_scores_as_its_merged_model(evaluated: dict[str, Path]) -> None:
    peft = _values(evaluated["ev"], "peft", seed=0)
    _assert_equal(peft, _values(evaluated["ev"], "peft_merged", seed=0))
    target = _values(evaluated["ev"], "target", seed=0)
    assert (peft - target.reindex(peft.index)).abs().max() > 1e-3  # the adapter changed the model
    summary = (evaluated["ev"] / "summary.md").read_text()
    assert "| peft |" in summary and "scored without training (harness eval): peft: PEFT adapter" in summary


@pytest.mark.parametrize("job", ["muse_quick", "tdec_quick"])
def test_muse_and_tdec_score_a_no_op_peft_adapter_as_their_target(job: str, tmp_path: Path) -> None:
    from harness.models.text import build_builtin

    base = tmp_path / "base"
    build_builtin("tiny-llama", 320).save_pretrained(str(base))
    adapter = _peft_adapter(base, tmp_path / "noop", random_b=False)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "builtin:tiny-llama"  # as for our own adapters: over the job's target
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    assert main(["eval", str(ROOT / f"jobs/{job}.yaml"), "--out", str(out), "--adapter", str(adapter),
                 "--set", f"reference.cache_dir={tmp_path / 'cache'}", "--set", f"benchmark.data_dir={tmp_path}/data",
                 "--set", "seeds=[0]", "--set", "reference.train.epochs=1", "--set", "eval.bootstrap=0",
                 "--set", "eval.max_examples=8"]) == 0  # the property does not depend on how many are scored
    noop, target = _values(out, "noop", seed=0), _values(out, "target", seed=0)
    assert set(noop.index.get_level_values("benchmark")) == {job.split("_")[0]}
    _assert_equal(noop, target.reindex(noop.index))
