"""The quantizers' dequantized weights against hand-computed references on a small matrix."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.attacks.quantization import dequantized, quantize_model
from harness.core.errors import SpecError

#: The 16 NF4 code values (QLoRA, arXiv 2305.14314, appendix E; bitsandbytes' `get_4bit_type("nf4")`).
NF4 = torch.tensor([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                    0.7229568362236023, 1.0])


def _matrix() -> torch.Tensor:
    torch.manual_seed(0)
    w = torch.randn(8, 64) * 0.1
    w[3, 5] = 0.9  # an outlier row: its scale differs from the others
    return w


def test_int8_is_absmax_per_row() -> None:
    w = _matrix()
    scale = w.abs().amax(dim=1, keepdim=True) / 127.5  # (qmax - qmin) / 2 for [-128, 127]
    q = torch.clamp(torch.round(w * (1.0 / scale)), -128, 127)
    assert torch.equal(dequantized(w, "int8"), q * scale)


@pytest.mark.parametrize("group", [16, 32])
def test_int4_is_symmetric_per_group(group: int) -> None:
    w = _matrix()
    g = w.reshape(8, 64 // group, group)
    scale = g.abs().amax(dim=-1, keepdim=True) / 7.5  # (7 - (-8)) / 2; torchao multiplies by 1/scale
    ref = (torch.clamp(torch.round(g * (1.0 / scale)), -8, 7) * scale).reshape(8, 64)
    assert torch.allclose(dequantized(w, "int4", group_size=group), ref, atol=1e-7, rtol=0)
    assert len(torch.unique(dequantized(w, "int4", group_size=group)[0, :group])) <= 16


def test_nf4_is_blockwise_absmax_to_nearest_code() -> None:
    w = _matrix()
    blocks = w.reshape(-1, 64)  # bitsandbytes blocks run over the flattened matrix
    absmax = blocks.abs().amax(dim=1, keepdim=True)
    idx = (blocks / absmax).unsqueeze(-1).sub(NF4).abs().argmin(-1)
    ref = (NF4[idx] * absmax).reshape(8, 64)
    # bitsandbytes stores absmax in float32 and decides by midpoints: equal to the nearest code up to rounding
    assert torch.allclose(dequantized(w, "nf4", blocksize=64), ref, atol=1e-6, rtol=0)


def test_quantize_model_changes_linear_layers_but_not_skipped_ones() -> None:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("fc", nn.Linear(64, 8))
    model.add_module("lm_head", nn.Linear(8, 64))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = quantize_model(model, "int4", group_size=32, skip=["lm_head"])
    assert names == ["fc"]
    assert not torch.equal(model.fc.weight, before["fc.weight"])
    assert torch.equal(model.fc.bias, before["fc.bias"])  # weight-only
    assert torch.equal(model.lm_head.weight, before["lm_head.weight"])
    assert torch.allclose(model.fc.weight, dequantized(before["fc.weight"], "int4", 32))


def test_int4_group_must_divide_the_columns() -> None:
    with pytest.raises(SpecError, match="group_size 48"):
        dequantized(torch.randn(4, 64), "int4", group_size=48)
