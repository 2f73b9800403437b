"""Model sources for `harness eval`: parsing `--model NAME=SOURCE`, detecting each kind, loading each one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from harness.adapters import load_adapter
from harness.config import ModelSource, parse_model_arg
from harness.core.errors import DataError, SpecError
from harness.models.text import build_builtin, load_pretrained, save_model
from harness.scoring.load import detect_kind, load_scoring_model, resolve_sources

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")]

PROMPTS = ["Question: Who wrote the book?\nAnswer: The author", "The quick brown fox"]


@torch.no_grad()
def _logits(model: torch.nn.Module, tokenizer: Any) -> torch.Tensor:
    enc = tokenizer(PROMPTS, padding=True, return_tensors="pt")
    return model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits


def _harness_scored(run: Any, method: str) -> torch.Tensor:
    model, _ = load_pretrained(str(run.target_dir))
    load_adapter(model, run.run_dir / "checkpoints" / method)
    return _logits(model.eval(), run.tokenizer)


@pytest.fixture(scope="module")
def peft_adapter(hand_made_run: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    """A LoRA adapter saved by `peft` itself over the run's target model (attention and MLP), with its logits."""
    from peft import LoraConfig, get_peft_model

    base, _ = load_pretrained(str(hand_made_run.target_dir))
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(base, config)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    out = tmp_path_factory.mktemp("peft") / "adapter"
    model.save_pretrained(out)
    return out, _logits(model.eval(), hand_made_run.tokenizer)


def test_parse_model_arg() -> None:
    src = parse_model_arg("mine=some/dir,base=/models/base,dtype=bfloat16,trust_remote_code=true")
    assert src == ModelSource(name="mine", path="some/dir", base="/models/base", dtype="bfloat16",
                              trust_remote_code=True)
    assert parse_model_arg("run1=results/x,method=gd_sine,kind=run").method == "gd_sine"
    for bad, needle in (("nothing", "expected NAME=SOURCE"), ("=dir", "expected NAME=SOURCE"),
                        ("a=dir,base", "is not key=value"), ("a=dir,colour=red", "colour"),
                        ("target=dir", "reserved"), ("a b=dir", "must be letters"),
                        ("a=dir,kind=onnx", "kind"), ("a=dir,dtype=int8", "dtype")):
        with pytest.raises(SpecError, match=needle):
            parse_model_arg(bad)


def test_detect_kind(hand_made_run, peft_adapter, tmp_path) -> None:
    assert detect_kind(str(hand_made_run.target_dir)) == "hf"
    assert detect_kind(str(peft_adapter[0])) == "peft"
    assert detect_kind(str(hand_made_run.run_dir / "checkpoints" / "gd_sine")) == "harness"
    assert detect_kind(str(hand_made_run.run_dir / "checkpoints" / "gd_lora")) == "harness"
    assert detect_kind(str(hand_made_run.run_dir)) == "run"
    assert detect_kind("EleutherAI/gpt-neo-125m") == "hf"  # a hub id: looked up in the cache when loaded
    with pytest.raises(DataError, match="does not exist"):
        detect_kind(str(tmp_path / "missing"))
    with pytest.raises(DataError, match="neither a model"):
        detect_kind(str(tmp_path))


def test_plain_hf_model(hand_made_run) -> None:
    model, tokenizer = load_scoring_model(ModelSource(name="t", path=str(hand_made_run.target_dir)))
    want, _ = load_pretrained(str(hand_made_run.target_dir))
    torch.testing.assert_close(_logits(model, tokenizer), _logits(want.eval(), hand_made_run.tokenizer),
                               atol=0, rtol=0)
    assert not model.training


def test_peft_lora_adapter_saved_by_peft(peft_adapter, hand_made_run) -> None:
    path, want = peft_adapter
    assert json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        hand_made_run.target_dir)
    for src in (ModelSource(name="p", path=str(path)),  # base from the adapter's config
                ModelSource(name="p", path=str(path), base=str(hand_made_run.target_dir))):
        model, tokenizer = load_scoring_model(src)
        assert not any("lora" in n for n, _ in model.named_modules())  # merged into a plain model
        # merging W0 + s B A changes the float rounding of PEFT's two-branch forward (logits of size ~10)
        torch.testing.assert_close(_logits(model, tokenizer), want, atol=1e-5, rtol=1e-5)


def test_peft_adapter_for_a_different_base_model(peft_adapter, hand_made_run, tmp_path) -> None:
    other = tmp_path / "gpt2"
    save_model(build_builtin("tiny-gpt2", len(hand_made_run.tokenizer)), hand_made_run.tokenizer, other)
    with pytest.raises(DataError, match=r"PEFT adapter .*adapter.*different base model"):
        load_scoring_model(ModelSource(name="p", path=str(peft_adapter[0]), base=str(other)))
    # same module names, other shapes
    from transformers import AutoModelForCausalLM

    wide = build_builtin("tiny-llama", len(hand_made_run.tokenizer)).config
    wide.hidden_size, wide.intermediate_size = 64, 128
    save_model(AutoModelForCausalLM.from_config(wide), hand_made_run.tokenizer, tmp_path / "wide")
    with pytest.raises(DataError, match=r"down_proj is 64x128 but the adapter has lora_A \(4, 384\)"):
        load_scoring_model(ModelSource(name="p", path=str(peft_adapter[0]), base=str(tmp_path / "wide")))


@pytest.mark.parametrize("method", ["gd_sine", "gd_lora"])
def test_harness_adapter_over_its_base(hand_made_run, method) -> None:
    adapter = hand_made_run.run_dir / "checkpoints" / method
    model, tokenizer = load_scoring_model(ModelSource(name="h", path=str(adapter), base=str(hand_made_run.target_dir)))
    torch.testing.assert_close(_logits(model, tokenizer), _harness_scored(hand_made_run, method), atol=0, rtol=0)
    # pipeline-trained adapters name the random-init builtin config as their base: refused, with the fix
    with pytest.raises(DataError, match="builtin.*pass base=DIR"):
        load_scoring_model(ModelSource(name="h", path=str(adapter)))


def test_finished_run_yields_every_method(hand_made_run) -> None:
    sources = resolve_sources([ModelSource(name="demo", path=str(hand_made_run.run_dir))])
    assert [(s.name, s.kind, s.method) for s in sources] == [("demo.gd_lora", "harness", "gd_lora"),
                                                             ("demo.gd_sine", "harness", "gd_sine")]
    for src in sources:
        assert src.base == str(hand_made_run.target_dir.resolve())
        model, tokenizer = load_scoring_model(src)
        torch.testing.assert_close(_logits(model, tokenizer), _harness_scored(hand_made_run, src.method),
                                   atol=0, rtol=0)
    one = resolve_sources([parse_model_arg(f"s={hand_made_run.run_dir},method=gd_sine")])
    assert [(s.name, s.method) for s in one] == [("s", "gd_sine")]
    with pytest.raises(SpecError, match="pick one with method="):
        load_scoring_model(ModelSource(name="demo", path=str(hand_made_run.run_dir)))
    with pytest.raises(DataError, match="'gd_blowup' diverged"):
        resolve_sources([parse_model_arg(f"s={hand_made_run.run_dir},method=gd_blowup")])
    with pytest.raises(SpecError, match="repeated: s"):
        resolve_sources([ModelSource(name="s", path=str(hand_made_run.target_dir)),
                         ModelSource(name="s", path=str(hand_made_run.retain_dir))])


def test_moved_run_dir_still_resolves(hand_made_run, tmp_path) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(hand_made_run.run_dir, moved)
    (src,) = resolve_sources([parse_model_arg(f"m={moved},method=gd_sine")])
    assert src.path == str((moved / "checkpoints" / "gd_sine").resolve())  # adapters are stored run-relative
