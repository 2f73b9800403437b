"""PEFT-format adapter checkpoints: round trip, PeftModel compatibility, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from harness.adapters import (
    adapted_layers,
    attach,
    load_adapter,
    load_as_peft_model,
    read_bound_config,
    save_adapter,
)
from harness.errors import DataError
from harness.models import build_builtin
from harness.spec import AdapterSpec

VOCAB = 64


def _model(arch: str):
    return build_builtin(arch, VOCAB, seed=0).eval()


@torch.no_grad()
def _logits(model) -> torch.Tensor:
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))
    return model(ids).logits


def _trained(arch: str, spec: AdapterSpec):
    model = _model(arch)
    attach(model, spec, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in adapted_layers(model).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.3)
    return model


@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-gpt2"])
def test_round_trip(tmp_path, arch):
    spec = AdapterSpec(bound="sine", rank=4, alpha=8.0, omega=3.0)
    model = _trained(arch, spec)
    out = save_adapter(model, tmp_path / "ad", spec, base_model=f"builtin:{arch}")
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                      "bound_config.json"]  # no temp files left behind
    # World-readable, the weights too (not mkstemp's or safetensors' private 0600).
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o644}

    state = load_file(out / "adapter_model.safetensors")
    names = list(adapted_layers(model))
    assert set(state) == {f"base_model.model.{n}.lora_{ab}.weight" for n in names for ab in "AB"}
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert list(cfg) == sorted(cfg)  # written with sorted keys, as PEFT's own save_pretrained does
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM" and cfg["bias"] == "none"
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8.0 and cfg["lora_dropout"] == 0.0
    assert sorted(cfg["target_modules"]) == sorted(names)
    assert cfg["fan_in_fan_out"] == (arch == "tiny-gpt2")
    assert cfg["base_model_name_or_path"] == f"builtin:{arch}"
    bcfg = read_bound_config(out)
    got = (bcfg["bound"], bcfg["omega"], bcfg["rank"], bcfg["alpha"], bcfg["modules"])
    assert got == ("sine", 3.0, 4, 8.0, names)

    fresh = _model(arch)
    assert load_adapter(fresh, out) == spec
    torch.testing.assert_close(_logits(fresh), _logits(model), atol=0, rtol=0)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # raised inside PEFT
@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-gpt2", "tiny-opt"])
def test_peft_loads_a_bound_none_adapter(tmp_path, arch):
    from peft import PeftModel

    spec = AdapterSpec(bound="none", rank=4, alpha=8.0)
    model = _trained(arch, spec)
    save_adapter(model, tmp_path, spec, base_model=f"builtin:{arch}")
    peft_model = load_as_peft_model(_model(arch), tmp_path)
    assert isinstance(peft_model, PeftModel)
    torch.testing.assert_close(_logits(peft_model), _logits(model), atol=1e-5, rtol=1e-5)
    # and PeftModel.from_pretrained directly, with no harness code in the way
    direct = PeftModel.from_pretrained(_model(arch), str(tmp_path)).eval()
    torch.testing.assert_close(_logits(direct), _logits(model), atol=1e-5, rtol=1e-5)


def test_peft_refuses_a_bounded_adapter(tmp_path):
    spec = AdapterSpec(bound="sine")
    save_adapter(_trained("tiny-llama", spec), tmp_path, spec, base_model="builtin:tiny-llama")
    with pytest.raises(DataError, match="cannot be expressed by plain PEFT"):
        load_as_peft_model(_model("tiny-llama"), tmp_path)


def test_load_errors(tmp_path):
    spec = AdapterSpec(bound="tanh")
    with pytest.raises(DataError, match="bound_config.json is missing"):
        load_adapter(_model("tiny-llama"), tmp_path)
    save_adapter(_trained("tiny-llama", spec), tmp_path, spec, base_model="builtin:tiny-llama")

    with pytest.raises(DataError, match="no module"):  # wrong architecture
        load_adapter(_model("tiny-gpt2"), tmp_path)

    state = load_file(tmp_path / "adapter_model.safetensors")
    state.pop(next(iter(state)))
    save_file(state, tmp_path / "adapter_model.safetensors")
    model = _model("tiny-llama")
    with pytest.raises(DataError, match="missing"):
        load_adapter(model, tmp_path)
    assert not adapted_layers(model)  # left untouched

    (tmp_path / "adapter_model.safetensors").unlink()
    with pytest.raises(DataError, match="adapter_model.safetensors is missing"):
        load_adapter(_model("tiny-llama"), tmp_path)


@pytest.mark.parametrize("keep", [0.5, 0.0])
def test_truncated_adapter_weights_name_the_file(tmp_path, keep):
    import os

    spec = AdapterSpec(bound="sine")
    save_adapter(_trained("tiny-llama", spec), tmp_path, spec, base_model="builtin:tiny-llama")
    weights = tmp_path / "adapter_model.safetensors"
    os.truncate(weights, int(weights.stat().st_size * keep))
    model = _model("tiny-llama")
    with pytest.raises(DataError, match=f"{weights} is not a readable safetensors file .truncated or damaged"):
        load_adapter(model, tmp_path)
    assert not adapted_layers(model)  # left untouched


def test_truncated_bound_config_names_the_file(tmp_path):
    spec = AdapterSpec(bound="sine")
    save_adapter(_trained("tiny-llama", spec), tmp_path, spec, base_model="builtin:tiny-llama")
    path = tmp_path / "bound_config.json"
    path.write_text(path.read_text()[:40])
    with pytest.raises(DataError, match=f"{path} is malformed .truncated or edited"):
        load_adapter(_model("tiny-llama"), tmp_path)
