"""The fused bounded-linear autograd function against plain autograd, gradcheck, and the bound limit."""

from __future__ import annotations

import pytest
import torch
from transformers.pytorch_utils import Conv1D

from harness.adapters import (
    BoundedLinearFn,
    BoundedLoRALinear,
    bounded_linear,
    make_bound,
    naive_bounded_linear,
)

BOUND_NAMES = ["sine", "tanh", "clip", "none"]


def _inputs(dtype=torch.float32, shape=(2, 5), d_in=16, d_out=24, r=4, seed=0, bias=True, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, d_in, generator=g, dtype=dtype)
    w0 = torch.randn(d_out, d_in, generator=g, dtype=dtype) * 0.1
    b = torch.randn(d_out, generator=g, dtype=dtype) if bias else None
    a = torch.randn(r, d_in, generator=g, dtype=dtype) * scale
    bb = torch.randn(d_out, r, generator=g, dtype=dtype) * scale
    return x, w0, b, a, bb


def _bound(name: str, d_in: int = 16, omega: float = 3.0):
    # clip_value small enough that part of B A is clipped, so both branches of its derivative are exercised
    return make_bound(name, alpha=8.0, rank=4, d_in=d_in, omega=omega, clip_value=0.3)


def _grads(fn, x, w0, bias, a, b, bound):
    x, a, b = (t.detach().clone().requires_grad_(True) for t in (x, a, b))
    bias = bias.detach().clone().requires_grad_(True)
    y = fn(x, w0, bias, a, b, bound)
    g = torch.randn_like(y, generator=torch.Generator().manual_seed(1)) if y.dtype == torch.float32 else None
    y.backward(g if g is not None else torch.ones_like(y))
    return y.detach(), x.grad, a.grad, b.grad, bias.grad


@pytest.mark.parametrize("keep", [False, True], ids=["recompute", "keep"])
@pytest.mark.parametrize("transposed", [False, True], ids=["linear", "conv1d"])
@pytest.mark.parametrize("name", BOUND_NAMES)
def test_fused_matches_naive_values_and_grads(name, transposed, keep):
    x, w0, bias, a, b = _inputs()
    bound = _bound(name)
    w0 = w0.t().contiguous() if transposed else w0
    fused = _grads(lambda *args: bounded_linear(*args, transposed=transposed, keep=keep), x, w0, bias, a, b, bound)
    naive = _grads(lambda *args: naive_bounded_linear(*args, transposed=transposed), x, w0, bias, a, b, bound)
    for got, want, what in zip(fused, naive, ["y", "x", "A", "B", "bias"]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=f"{name}: {what} differs")
    if name == "clip":
        m = b @ a
        assert (m.abs() > 0.3).any() and (m.abs() < 0.3).any()


@pytest.mark.parametrize("keep", [False, True], ids=["recompute", "keep"])
@pytest.mark.parametrize("transposed", [False, True], ids=["linear", "conv1d"])
@pytest.mark.parametrize("name", ["sine", "tanh"])
def test_gradcheck_float64(name, transposed, keep):
    x, w0, bias, a, b = _inputs(dtype=torch.float64, shape=(2, 3), d_in=6, d_out=5, r=2)
    bound = _bound(name, d_in=6)
    w0 = w0.t().contiguous() if transposed else w0
    args = [t.requires_grad_(True) for t in (x, bias, a, b)]
    assert torch.autograd.gradcheck(
        lambda x_, bias_, a_, b_: BoundedLinearFn.apply(x_, w0, bias_, a_, b_, bound, transposed, keep), args,
        eps=1e-6, atol=1e-6,
    )


def test_trainable_w0_gets_its_gradient_too():
    x, w0, bias, a, b = _inputs(dtype=torch.float64, shape=(3,), d_in=6, d_out=5, r=2)
    bound = _bound("sine", d_in=6)
    w0.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda w_, a_: BoundedLinearFn.apply(x, w_, bias, a_, b, bound),
                                    [w0, a.requires_grad_(True)])


@pytest.mark.parametrize("shape", [(), (7,), (2, 3, 4)])
def test_any_leading_shape_and_no_bias(shape):
    x, w0, _, a, b = _inputs(shape=shape, bias=False)
    bound = _bound("sine")
    torch.testing.assert_close(bounded_linear(x, w0, None, a, b, bound),
                               naive_bounded_linear(x, w0, None, a, b, bound))
    # W0=None is the delta-only branch the layer uses under dropout
    torch.testing.assert_close(bounded_linear(x, None, None, a, b, bound),
                               naive_bounded_linear(x, None, None, a, b, bound))


def test_bf16_computes_in_input_dtype():
    x, w0, bias, a, b = _inputs(dtype=torch.bfloat16)
    bound = _bound("sine")
    y, gx, ga, gb, gbias = _grads(bounded_linear, x, w0, bias, a, b, bound)
    assert y.dtype == gx.dtype == ga.dtype == gb.dtype == gbias.dtype == torch.bfloat16
    ref = naive_bounded_linear(*(t.float() for t in (x, w0, bias, a, b)), bound)
    torch.testing.assert_close(y.float(), ref, atol=0.1, rtol=0.05)


def test_fused_saves_no_dense_matrix():
    x, w0, bias, a, b = _inputs(d_in=64, d_out=96)
    a.requires_grad_(True)
    b.requires_grad_(True)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        bounded_linear(x, w0, bias, a, b, _bound("sine", d_in=64))
    # x, W0 (a reference to the frozen parameter), A, B: no new d_out x d_in tensor
    assert {t.data_ptr() for t in saved} <= {x.data_ptr(), w0.data_ptr(), a.data_ptr(), b.data_ptr()}


def test_keep_saves_the_dense_weight_and_derivative_and_the_layer_option_reaches_it():
    from harness.adapters import attach
    from harness.config import AdapterSpec

    x, w0, bias, a, b = _inputs(d_in=64, d_out=96)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        bounded_linear(x, w0, bias, a.requires_grad_(True), b.requires_grad_(True), _bound("sine", d_in=64),
                       keep=True)
    new = [t for t in saved if t.data_ptr() not in {x.data_ptr(), w0.data_ptr(), a.data_ptr(), b.data_ptr()}]
    assert sorted(t.shape for t in new) == [(96, 64), (96, 64)]

    model = torch.nn.Sequential()
    model.add_module("mlp", torch.nn.Module())
    model.mlp.up_proj = torch.nn.Linear(16, 24)
    attach(model, AdapterSpec(bound="sine", rank=4, keep_dense=True, targets=["up_proj"]), seed=0)
    assert model.mlp.up_proj.keep_dense


@pytest.mark.parametrize("name", ["sine", "tanh", "clip"])
@pytest.mark.parametrize("conv1d", [False, True])
def test_delta_never_exceeds_the_bound(name, conv1d):
    torch.manual_seed(0)
    base = Conv1D(48, 32) if conv1d else torch.nn.Linear(32, 48)
    layer = BoundedLoRALinear(base, bound=name, rank=4, alpha=16.0, omega=100.0, clip_value=0.01)
    with torch.no_grad():
        layer.lora_A.weight.normal_(0, 50.0)
        layer.lora_B.weight.normal_(0, 50.0)
    delta = layer.delta_weight()
    assert delta.shape == (48, 32)
    assert delta.abs().max().item() <= layer.bound.max_abs() + 1e-6
    # and the bound is actually approached (the check is not vacuous)
    assert delta.abs().max().item() > 0.5 * layer.bound.max_abs()
    w_eff = layer.merged_linear().weight
    w_eff = w_eff.t() if conv1d else w_eff
    assert (w_eff - layer.base_weight()).abs().max().item() <= layer.bound.max_abs() + 1e-6
