"""BoundedLoRALinear on nn.Linear and GPT-2 Conv1D: no-op init, forward paths, merge, disable."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from harness.adapters import BoundedLoRALinear, naive_bounded_linear

BOUND_NAMES = ["sine", "tanh", "clip", "none"]


def _base(conv1d: bool) -> nn.Module:
    torch.manual_seed(0)
    return Conv1D(24, 16) if conv1d else nn.Linear(16, 24)


def _randomise(layer: BoundedLoRALinear, std: float = 0.5) -> None:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        layer.lora_A.weight.copy_(torch.randn(layer.lora_A.weight.shape, generator=g) * std)
        layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * std)


@pytest.mark.parametrize("conv1d", [False, True])
@pytest.mark.parametrize("name", BOUND_NAMES)
def test_layer_paths(conv1d, name):
    base = _base(conv1d)
    layer = BoundedLoRALinear(base, bound=name, rank=4, alpha=8.0, omega=3.0, clip_value=0.05)
    x = torch.randn(2, 5, 16)
    assert not base.weight.requires_grad and not base.bias.requires_grad
    assert layer.lora_A.weight.requires_grad and layer.lora_B.weight.requires_grad
    assert layer.lora_A.weight.abs().sum() > 0 and layer.lora_B.weight.abs().sum() == 0
    torch.testing.assert_close(layer(x), base(x), atol=0, rtol=0)  # zero B: exact no-op

    _randomise(layer)
    y = layer(x)
    want = naive_bounded_linear(x, layer.base_weight(), base.bias, layer.lora_A.weight, layer.lora_B.weight,
                                layer.bound)
    torch.testing.assert_close(y, want, atol=1e-5, rtol=1e-5)
    if name == "none":  # PEFT's LoRA formula
        peft = base(x) + (x @ layer.lora_A.weight.t() @ layer.lora_B.weight.t()) * (8.0 / 4)
        torch.testing.assert_close(y, peft, atol=1e-5, rtol=1e-5)

    merged = layer.merged_linear()
    assert type(merged) is type(base) and merged.weight.shape == base.weight.shape
    assert not merged.weight.requires_grad
    torch.testing.assert_close(merged(x), y, atol=1e-5, rtol=1e-5)

    layer.disabled = True
    torch.testing.assert_close(layer(x), base(x), atol=0, rtol=0)


def test_dropout_only_on_the_adapter_branch():
    base = _base(False)
    layer = BoundedLoRALinear(base, bound="sine", rank=4, alpha=8.0, omega=3.0, dropout=0.5)
    _randomise(layer)
    x = torch.randn(3, 16)
    layer.eval()
    y_eval = layer(x)
    torch.testing.assert_close(y_eval, naive_bounded_linear(x, base.weight, base.bias, layer.lora_A.weight,
                                                            layer.lora_B.weight, layer.bound))
    layer.train()
    torch.manual_seed(5)
    y_train = layer(x)
    torch.manual_seed(5)
    x_drop = nn.functional.dropout(x, 0.5, training=True)
    a, b = layer.lora_A.weight, layer.lora_B.weight
    want = base(x) + naive_bounded_linear(x_drop, None, None, a, b, layer.bound)
    torch.testing.assert_close(y_train, want, atol=1e-5, rtol=1e-5)


def test_seeded_init_is_reproducible():
    l1 = BoundedLoRALinear(_base(False), rank=4)
    l2 = BoundedLoRALinear(_base(False), rank=4)
    l1.reset_parameters(torch.Generator().manual_seed(7))
    l2.reset_parameters(torch.Generator().manual_seed(7))
    torch.testing.assert_close(l1.lora_A.weight, l2.lora_A.weight, atol=0, rtol=0)
    l2.reset_parameters(torch.Generator().manual_seed(8))
    assert not torch.equal(l1.lora_A.weight, l2.lora_A.weight)


def test_rejects_other_layers():
    with pytest.raises(TypeError, match="Embedding"):
        BoundedLoRALinear(nn.Embedding(10, 4))
