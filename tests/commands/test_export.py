"""`harness export`: a run's method as a plain merged HF checkpoint that loads unchanged; bad input exits 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml

from harness.adapters import load_adapter
from harness.cli import main
from harness.models.text import build_builtin, load_pretrained, save_model

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["Question: Who wrote the book?\nAnswer: The author", "The quick brown fox jumps over the lazy dog."]


def _ids(tokenizer: Any) -> torch.Tensor:
    enc = tokenizer(PROMPTS, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


@torch.no_grad()
def _logits(model: torch.nn.Module, tokenizer: Any) -> torch.Tensor:
    ids, mask = _ids(tokenizer)
    return model(input_ids=ids, attention_mask=mask).logits


def _scoring_model(run: Any, method: str) -> torch.nn.Module:
    """What `harness run` scores for a method: the target model with the method's adapter attached."""
    model, _ = load_pretrained(str(run.target_dir))
    load_adapter(model, run.run_dir / "checkpoints" / method)
    return model.eval()


def _front_matter(card: str) -> dict[str, Any]:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


@pytest.fixture(scope="module")
def exported(hand_made_run: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("exported")
    dirs = {}
    for method in hand_made_run.methods:
        assert main(["export", str(hand_made_run.run_dir), "--method", method, "--out", str(out / method)]) == 0
        dirs[method] = out / method
    return dirs


@pytest.mark.parametrize("method", ["gd_sine", "gd_lora"])
def test_export_loads_unchanged_and_matches_the_scoring_model(exported, hand_made_run, method) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = exported[method]
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md"} <= names
    assert not any(n.startswith("adapter") or n.endswith((".bin", ".tmp")) for n in names)
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o644}
    model = AutoModelForCausalLM.from_pretrained(str(out)).eval()  # plain transformers, nothing of harness
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer(PROMPTS)["input_ids"] == hand_made_run.tokenizer(PROMPTS)["input_ids"]
    want = _logits(_scoring_model(hand_made_run, method), hand_made_run.tokenizer)
    got = _logits(model, tokenizer)
    # sine: the fused layer and the merged weight are the same dense W (measured 0.0); plain LoRA's
    # low-rank branch rounds differently from its merged weight (measured 7.6e-6 on logits of ~4.7)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0 if method == "gd_sine" else 1e-5)
    target, _ = load_pretrained(str(hand_made_run.target_dir))
    assert float((_logits(target.eval(), tokenizer) - want).abs().max()) > 0.05  # the adapter is really merged


def test_model_card_names_method_bound_settings_and_metrics(exported, hand_made_run) -> None:
    card = (exported["gd_sine"] / "README.md").read_text()
    front = _front_matter(card)
    assert front["library_name"] == "transformers" and "bound-sine" in front["tags"]
    h = front["harness"]
    assert (h["run"], h["method"], h["bound"]) == ("handmade", "gd_sine", "sine")
    assert h["adapter"]["omega"] == 100.0 and h["adapter"]["rank"] == 4 and h["train"]["lr"] == 0.03
    assert h["objective"]["name"] == "gd" and h["git_commit"] == "abc123"
    assert h["base_model"] == str(hand_made_run.target_dir.resolve())
    metrics = pd.read_parquet(hand_made_run.run_dir / "metrics.parquet")
    mine = metrics[metrics["method"] == "gd_sine"]
    assert len(h["metrics"]) == len(mine)
    by_key = {(r["split"], r["metric"]): r for r in h["metrics"]}
    for row in mine.to_dict("records"):
        got = by_key[(row["split"], row["metric"])]
        assert got["value"] == pytest.approx(row["value"], abs=0)
        if pd.notna(row["ci_low"]):
            assert (got["ci_low"], got["ci_high"]) == (row["ci_low"], row["ci_high"])
        else:
            assert "ci_low" not in got
    body = card.split("---\n", 2)[2]
    assert "| gd_sine | target | retain |" in body.replace("split | metric | ", "")
    assert "0.5" in body and "sine" in body


def _copy_run(hand_made_run: Any, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(hand_made_run.run_dir, run)
    return run


def _export_fails(capsys: pytest.CaptureFixture, run: Path, method: str, out: Path, *needles: str) -> None:
    assert main(["export", str(run), "--method", method, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    assert not out.exists() or not any(out.iterdir())  # nothing half-written


def test_unknown_and_diverged_methods_exit_2(hand_made_run, tmp_path, capsys) -> None:
    run = hand_made_run.run_dir
    _export_fails(capsys, run, "nope", tmp_path / "o", "unknown method 'nope'", "gd_lora, gd_sine")
    _export_fails(capsys, run, "gd_blowup", tmp_path / "o", "'gd_blowup' diverged")


def test_unfinished_or_unrecorded_runs_exit_2(hand_made_run, tmp_path, capsys) -> None:
    run = _copy_run(hand_made_run, tmp_path)
    env = json.loads((run / "env.json").read_text())
    (run / "env.json").write_text(json.dumps({**env, "finished": None}))
    _export_fails(capsys, run, "gd_sine", tmp_path / "o", "is not a finished run", "env.json")
    (run / "env.json").write_text(json.dumps(env))
    (run / "metrics.parquet").unlink()
    _export_fails(capsys, run, "gd_sine", tmp_path / "o", "is not a finished run", "metrics.parquet is missing")
    _export_fails(capsys, tmp_path / "nowhere", "gd_sine", tmp_path / "o", "does not exist")
    shutil.copy(hand_made_run.run_dir / "metrics.parquet", run / "metrics.parquet")
    (run / "models.json").unlink()
    _export_fails(capsys, run, "gd_sine", tmp_path / "o", "models.json is missing")


def test_truncated_weights_exit_2_naming_the_file(hand_made_run, tmp_path, capsys) -> None:
    run = _copy_run(hand_made_run, tmp_path)
    weights = run / "checkpoints" / "gd_sine" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    _export_fails(capsys, run, "gd_sine", tmp_path / "o", str(weights), "not a readable safetensors file")

    base = tmp_path / "base"
    shutil.copytree(hand_made_run.target_dir, base)
    (base / "model.safetensors").write_bytes((base / "model.safetensors").read_bytes()[:1000])
    record = json.loads((run / "models.json").read_text())
    record["models"]["gd_lora"]["0"]["base"] = str(base)
    (run / "models.json").write_text(json.dumps(record))
    _export_fails(capsys, run, "gd_lora", tmp_path / "o", "cannot load model", str(base))


def test_adapter_for_a_different_base_model_exits_2(hand_made_run, tmp_path, capsys) -> None:
    run = _copy_run(hand_made_run, tmp_path)
    other = build_builtin("tiny-gpt2", len(hand_made_run.tokenizer))
    save_model(other, hand_made_run.tokenizer, tmp_path / "gpt2")
    record = json.loads((run / "models.json").read_text())
    record["models"]["gd_sine"]["0"]["base"] = str(tmp_path / "gpt2")
    (run / "models.json").write_text(json.dumps(record))
    _export_fails(capsys, run, "gd_sine", tmp_path / "o", "different base model", "checkpoints/gd_sine")


def test_existing_output_is_not_overwritten(hand_made_run, tmp_path, capsys) -> None:
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("mine")
    assert main(["export", str(hand_made_run.run_dir), "--method", "gd_sine", "--out", str(tmp_path / "o")]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert (tmp_path / "o" / "keep.txt").read_text() == "mine"
