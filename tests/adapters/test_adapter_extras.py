"""Adapter extras: the update mask (SalUn) and the origin (FILA), their forward, merge, norms and checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from harness.adapters import (
    adapted_layers,
    adapter_norms,
    adapter_product_sq,
    attach,
    detach,
    load_adapter,
    load_as_peft_model,
    merge,
    save_adapter,
    set_origin,
    set_update_mask,
)
from harness.adapters.extras import EXTRAS_NAME, linear_slope
from harness.config import AdapterSpec
from harness.core.errors import DataError
from harness.models.text import build_builtin

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 48
BOUNDS = ["none", "sine", "tanh", "clip"]


def _model(arch: str = "tiny-llama") -> torch.nn.Module:
    return build_builtin(arch, VOCAB, seed=0).eval()


@torch.no_grad()
def _logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))
    return model(ids).logits


def _adapted(arch: str, bound: str, seed: int = 1) -> tuple[torch.nn.Module, AdapterSpec]:
    spec = AdapterSpec(bound=bound, rank=4, alpha=8.0, omega=5.0, clip_value=0.05)
    model = _model(arch)
    attach(model, spec, seed=0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in adapted_layers(model).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.2)
    return model, spec


def _masks(model: torch.nn.Module, seed: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand((layer.out_features, layer.in_features), generator=g) < 0.5
            for n, layer in adapted_layers(model).items()}


def _origins(model: torch.nn.Module, seed: int = 3) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {n: (torch.randn(layer.lora_A.weight.shape, generator=g) * 0.1,
                torch.randn(layer.lora_B.weight.shape, generator=g) * 0.1)
            for n, layer in adapted_layers(model).items()}


@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-gpt2"])
@pytest.mark.parametrize("bound", BOUNDS)
def test_masked_update_leaves_unmasked_weights_at_w0_and_forward_uses_it(arch: str, bound: str) -> None:
    model, _ = _adapted(arch, bound)
    masks = _masks(model)
    for name, layer in adapted_layers(model).items():
        w0 = layer.base_weight().detach().clone()
        set_update_mask(layer, masks[name])
        w = layer.effective_weight().detach()
        assert torch.equal(w[~masks[name]], w0[~masks[name]])
        delta = layer.bound.delta(layer.lora_B.weight @ layer.lora_A.weight).detach()
        torch.testing.assert_close(w[masks[name]], (w0 + delta)[masks[name]])
        x = torch.randn(3, layer.in_features)
        bias = layer.base_layer.bias
        torch.testing.assert_close(layer(x), F.linear(x, w, bias), atol=1e-6, rtol=1e-5)
        loss = layer(x).pow(2).sum()
        loss.backward()
        assert layer.lora_A.weight.grad is not None and layer.lora_B.weight.grad.abs().sum() > 0
    masked_logits = _logits(model)
    merge(model)
    torch.testing.assert_close(_logits(model), masked_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-gpt2"])
@pytest.mark.parametrize("bound", BOUNDS)
def test_origin_starts_as_a_no_op_and_detach_restores_w0(arch: str, bound: str) -> None:
    model, _ = _adapted(arch, bound)
    base = _model(arch)
    w0 = {n: layer.base_weight().detach().clone() for n, layer in adapted_layers(model).items()}
    for name, layer in adapted_layers(model).items():
        a0, b0 = _origins(model)[name]
        set_origin(layer, a0, b0)
        assert torch.equal(layer.lora_A.weight, a0) and torch.equal(layer.lora_B.weight, b0)
        delta0 = layer.bound.delta(b0 @ a0)
        torch.testing.assert_close(layer.base_weight(), w0[name] - delta0)
        assert float(layer.delta_weight().detach().abs().max()) < 1e-6  # no change from the target at the start
    torch.testing.assert_close(_logits(model), _logits(base), atol=1e-5, rtol=1e-5)
    assert adapter_norms(model)["adapter_norm"] < 1e-5
    detach(model)
    for name, module in model.named_modules():
        if name in w0:
            w = module.weight.t() if arch == "tiny-gpt2" else module.weight
            torch.testing.assert_close(w, w0[name], atol=1e-6, rtol=0)


def test_linear_slope_is_the_update_derivative_at_zero() -> None:
    model, _ = _adapted("tiny-llama", "sine")
    layer = next(iter(adapted_layers(model).values()))
    assert linear_slope(layer) == pytest.approx(layer.bound.scale * 5.0)
    for bound, want in (("none", 2.0), ("clip", 2.0)):
        m, _ = _adapted("tiny-llama", bound)
        assert linear_slope(next(iter(adapted_layers(m).values()))) == pytest.approx(want)  # alpha / r


@pytest.mark.parametrize("kind", ["mask", "origin"])
@pytest.mark.parametrize("bound", ["none", "sine"])
def test_checkpoint_round_trip_keeps_the_extras_and_peft_refuses_them(tmp_path, kind: str, bound: str) -> None:
    model, spec = _adapted("tiny-llama", bound)
    for name, layer in adapted_layers(model).items():
        if kind == "mask":
            set_update_mask(layer, _masks(model)[name])
        else:
            set_origin(layer, *_origins(model)[name])
            with torch.no_grad():  # "train" away from the origin
                layer.lora_A.weight.add_(0.05)
    want = _logits(model)
    out = save_adapter(model, tmp_path / "ad", spec, base_model="builtin:tiny-llama")
    cfg = json.loads((out / "bound_config.json").read_text())
    assert cfg["extras"] == ["update_mask" if kind == "mask" else "origin"] and (out / EXTRAS_NAME).is_file()

    fresh = _model()
    load_adapter(fresh, out)
    torch.testing.assert_close(_logits(fresh), want, atol=1e-5, rtol=1e-5)
    with pytest.raises(DataError, match="PEFT's LoRA layers cannot express"):
        load_as_peft_model(_model(), out)
    from peft import PeftModel

    with pytest.raises(Exception, match="HARNESS_BOUNDED_LORA"):  # plain PEFT never reads it as plain LoRA
        PeftModel.from_pretrained(_model(), str(out))
    (out / EXTRAS_NAME).unlink()
    with pytest.raises(DataError, match=EXTRAS_NAME):
        load_adapter(_model(), out)


def test_adapter_without_extras_writes_no_extras_file(tmp_path) -> None:
    model, spec = _adapted("tiny-llama", "sine")
    out = save_adapter(model, tmp_path / "ad", spec, base_model="builtin:tiny-llama")
    assert json.loads((out / "bound_config.json").read_text())["extras"] == [] and not (out / EXTRAS_NAME).exists()


def test_mask_and_origin_do_not_combine_and_shapes_are_checked() -> None:
    model, _ = _adapted("tiny-llama", "sine")
    name, layer = next(iter(adapted_layers(model).items()))
    with pytest.raises(ValueError, match="shape"):
        set_update_mask(layer, torch.ones(2, 2, dtype=torch.bool))
    set_origin(layer, *_origins(model)[name])
    with pytest.raises(ValueError, match="origin"):
        set_update_mask(layer, _masks(model)[name])


def test_adapter_product_sq_is_the_sum_of_squared_products_and_differentiable() -> None:
    model, _ = _adapted("tiny-llama", "sine")
    got = adapter_product_sq(model)
    want = sum(float((layer.lora_B.weight @ layer.lora_A.weight).pow(2).sum())
               for layer in adapted_layers(model).values())
    assert float(got) == pytest.approx(want, rel=1e-5)
    got.backward()
    assert all(layer.lora_A.weight.grad is not None for layer in adapted_layers(model).values())
