"""attach/merge/detach/disable on every builtin architecture, plus the target maps."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from harness.adapters import (
    MLP_TARGETS,
    BoundedLoRALinear,
    adapted_layers,
    adapter_norms,
    adapter_parameters,
    adapters_disabled,
    attach,
    detach,
    merge,
    target_module_names,
)
from harness.config import AdapterSpec
from harness.core.errors import SpecError
from harness.models.text import BUILTIN_MODELS, build_builtin

ARCHS = BUILTIN_MODELS.names()
BOUND_NAMES = ["sine", "tanh", "clip", "none"]
VOCAB = 64
# MLP linears per decoder layer, by builtin
TARGETS_PER_LAYER = {"tiny-llama": 3, "small-llama": 3}
ATTENTION = re.compile(r"attn|attention|self_attn")


def _model(arch: str) -> nn.Module:
    return build_builtin(arch, VOCAB, seed=0).eval()


def _ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def _logits(model: nn.Module) -> torch.Tensor:
    return model(_ids()).logits


def _randomise(model: nn.Module, std: float = 0.3) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in adapted_layers(model).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * std)


@pytest.mark.parametrize("arch", ARCHS)
def test_only_mlp_modules_are_adapted(arch):
    model = _model(arch)
    names = attach(model, AdapterSpec(bound="sine"))
    n_layers = model.config.num_hidden_layers
    assert len(names) == n_layers * TARGETS_PER_LAYER.get(arch, 2)
    assert set(adapted_layers(model)) == set(names)
    assert not [n for n in names if ATTENTION.search(n)]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.lora_{ab}.weight" for n in names for ab in "AB"}
    trainable_ids = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in adapter_parameters(model)} == trainable_ids


@pytest.mark.parametrize("arch", ARCHS)
def test_zero_init_is_a_no_op_merge_is_exact_disable_gives_base(arch):
    model = _model(arch)
    base = _logits(model)
    for bound in BOUND_NAMES:
        attach(model, AdapterSpec(bound=bound, omega=3.0, clip_value=0.05))
        torch.testing.assert_close(_logits(model), base, atol=0, rtol=0,
                                   msg=f"{bound}: zero B is not a no-op")
        detach(model)
    attach(model, AdapterSpec(bound="sine", omega=3.0), seed=1)
    _randomise(model)
    adapted = _logits(model)
    assert (adapted - base).abs().max() > 1e-3
    with adapters_disabled(model):
        torch.testing.assert_close(_logits(model), base, atol=0, rtol=0)
    torch.testing.assert_close(_logits(model), adapted, atol=0, rtol=0)
    merged_names = merge(model)
    assert merged_names and not adapted_layers(model)
    assert not any(isinstance(m, BoundedLoRALinear) for m in model.modules())
    torch.testing.assert_close(_logits(model), adapted, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bound", BOUND_NAMES)
def test_merge_exact_for_every_bound_on_gpt2(bound):
    model = _model("tiny-gpt2")  # Conv1D layers
    attach(model, AdapterSpec(bound=bound, omega=3.0, clip_value=0.05))
    _randomise(model)
    adapted = _logits(model)
    merge(model)
    torch.testing.assert_close(_logits(model), adapted, atol=1e-5, rtol=1e-5)


def test_training_step_reaches_only_the_adapters():
    model = _model("tiny-llama")
    attach(model, AdapterSpec(bound="sine", omega=3.0))
    _randomise(model)
    ids = _ids()
    model(ids, labels=ids).loss.backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, n
    assert all(p.grad.abs().sum() > 0 for p in adapter_parameters(model))


def test_detach_restores_the_base_model():
    model = _model("tiny-gpt2")
    before = _logits(model)
    names = attach(model, AdapterSpec(bound="tanh"))
    _randomise(model)
    assert detach(model) == names
    assert not adapted_layers(model)
    assert all(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(_logits(model), before, atol=0, rtol=0)


def test_attach_is_deterministic_from_seed_and_refuses_twice():
    m1, m2 = _model("tiny-llama"), _model("tiny-llama")
    attach(m1, AdapterSpec(), seed=3)
    attach(m2, AdapterSpec(), seed=3)
    for (n, p1), p2 in zip(m1.named_parameters(), m2.parameters()):
        assert torch.equal(p1, p2), n
    with pytest.raises(ValueError, match="already"):
        attach(m1, AdapterSpec())


def test_adapter_norms():
    model = _model("tiny-phi")
    attach(model, AdapterSpec(bound="sine", omega=3.0))
    assert adapter_norms(model)["adapter_norm"] == 0.0
    _randomise(model)
    layers = adapted_layers(model).values()
    model.requires_grad_(False)
    norms = adapter_norms(model)
    want_delta = sum(float(lay.delta_weight().pow(2).sum()) for lay in layers) ** 0.5
    want_param = sum(float(lay.lora_A.weight.pow(2).sum() + lay.lora_B.weight.pow(2).sum())
                     for lay in layers) ** 0.5
    assert norms["adapter_norm"] == pytest.approx(want_delta, rel=1e-5)
    assert norms["adapter_param_norm"] == pytest.approx(want_param, rel=1e-5)


def test_explicit_targets():
    model = _model("tiny-llama")
    assert target_module_names(model, ["down_proj"]) == [f"model.layers.{i}.mlp.down_proj" for i in range(4)]
    assert target_module_names(model, [r"model\.layers\.0\.mlp\..*"]) == [
        "model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj"]
    with pytest.raises(SpecError, match="adapter.targets"):
        target_module_names(model, ["nothing_here"])
    names = attach(model, AdapterSpec(targets=["mlp.up_proj"]))
    assert len(names) == 4


def test_unknown_model_type_needs_explicit_targets():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = type("Cfg", (), {"model_type": "weird_arch"})()
            self.fc = nn.Linear(4, 4)

    with pytest.raises(SpecError) as err:
        target_module_names(Odd(), None)
    assert "weird_arch" in str(err.value) and "adapter.targets" in str(err.value)
    assert target_module_names(Odd(), ["fc"]) == ["fc"]


def _vit_like(kind: str) -> nn.Module:
    from transformers import CLIPVisionConfig, CLIPVisionModel, DeiTConfig, DeiTModel, ViTConfig, ViTModel

    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 image_size=32, patch_size=8)
    cls, cfg = {"vit": (ViTModel, ViTConfig), "deit": (DeiTModel, DeiTConfig),
                "clip": (CLIPVisionModel, CLIPVisionConfig)}[kind]
    return cls(cfg(**small))


@pytest.mark.parametrize("kind", ["vit", "deit", "clip"])
def test_vision_targets_skip_attention(kind):
    model = _vit_like(kind)
    names = target_module_names(model)
    assert len(names) == 4
    assert not [n for n in names if ATTENTION.search(n)]
    assert all(n.endswith((".fc1", ".fc2")) for n in names)


def test_vit_map_covers_the_older_transformers_names():
    vit = re.compile(MLP_TARGETS["vit"])
    assert vit.search("vit.encoder.layer.11.intermediate.dense")
    assert vit.search("vit.encoder.layer.11.output.dense")
    assert not vit.search("vit.encoder.layer.11.attention.output.dense")
    assert not vit.search("vit.encoder.layer.11.attention.attention.query")
    clip = re.compile(MLP_TARGETS["clip"])
    assert clip.search("vision_model.encoder.layers.0.mlp.fc1")
    assert not clip.search("text_model.encoder.layers.0.mlp.fc1")
