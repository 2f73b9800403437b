"""Fused bounded-LoRA linear: `y = x (W0 + delta(B A))^T + bias` in one GEMM, with a recomputing backward.

The forward forms the dense weight once and saves only `x`, `A`, `B` (plus a reference to the frozen
`W0`); the backward recomputes `M = B A`, `delta(M)` and `d delta / d M` instead of keeping any
d_out x d_in activation alive between forward and backward. With `keep=True` the forward computes
`delta` and `d delta / d M` together (one pass over `M`: sin and cos of the same phases) and keeps
the dense weight and the derivative for the backward: two d_out x d_in tensors per layer more
memory, no recomputation (`AdapterSpec.keep_dense`).

`transposed=True` takes `W0` in Conv1D layout (d_in x d_out) and works in that layout throughout
(`M^T = A^T B^T`, `y = addmm(bias, x, W)`), so a zero update reproduces GPT-2's Conv1D bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from harness.adapters.bounds import Bound


def dense_weight(w0: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor, bound: Bound,
                 transposed: bool = False) -> torch.Tensor:
    """`W0 + bound.delta(B @ A)` (or its transpose when `transposed`), a fresh tensor in `a`'s dtype."""
    m = a.t() @ b.t() if transposed else b @ a
    w = bound.delta_(m)  # m is fresh: delta written in place, one d_out x d_in buffer in all
    if w0 is not None:
        w = w.add_(w0 if w0.dtype == w.dtype else w0.to(w.dtype))
    return w


def _apply(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, transposed: bool) -> torch.Tensor:
    if not transposed:
        return F.linear(x, w, bias)
    x2 = x.reshape(-1, x.shape[-1])
    y = x2 @ w if bias is None else torch.addmm(bias, x2, w)  # Conv1D's own kernel call
    return y.view(*x.shape[:-1], w.shape[1])


class BoundedLinearFn(torch.autograd.Function):
    """Autograd function for `F.linear(x, W0 + bound.delta(B @ A), bias)`; `W0=None` means a zero base."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        w0: torch.Tensor | None,
        bias: torch.Tensor | None,
        a: torch.Tensor,
        b: torch.Tensor,
        bound: Bound,
        transposed: bool = False,
        keep: bool = False,
    ) -> torch.Tensor:
        dtype = x.dtype
        if keep:
            a_, b_ = a.to(dtype), b.to(dtype)
            w, ddelta = bound.delta_and_grad(a_.t() @ b_.t() if transposed else b_ @ a_)
            if w0 is not None:
                w = w.add_(w0 if w0.dtype == dtype else w0.to(dtype))
        else:
            w = dense_weight(w0, a.to(dtype), b.to(dtype), bound, transposed)
        y = _apply(x, w, None if bias is None else bias.to(dtype), transposed)
        ctx.bound = bound
        ctx.transposed = transposed
        ctx.keep = keep
        ctx.param_dtypes = (None if w0 is None else w0.dtype, None if bias is None else bias.dtype,
                            a.dtype, b.dtype)
        # W0 is a parameter that lives anyway: saving it keeps a reference, not a copy.
        ctx.save_for_backward(x, w0, a, b, *((w, ddelta) if keep else ()))
        return y

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w0, a, b, *kept = ctx.saved_tensors
        bound: Bound = ctx.bound
        tr: bool = ctx.transposed
        need_x, need_w0, need_bias, need_a, need_b = ctx.needs_input_grad[:5]
        dt_w0, dt_bias, dt_a, dt_b = ctx.param_dtypes
        dtype = x.dtype
        grad_y = grad_y.to(dtype)
        a_, b_ = a.to(dtype), b.to(dtype)
        # Everything below lives in the layout of W: (d_out, d_in), or (d_in, d_out) when transposed.
        if ctx.keep:
            w, ddelta = kept
        else:
            m = a_.t() @ b_.t() if tr else b_ @ a_
            w, ddelta = bound.delta_and_grad(m)
            del m
            if need_x and w0 is not None:
                w = w.add_(w0 if w0.dtype == dtype else w0.to(dtype))

        grad_x = grad_w0 = grad_bias = grad_a = grad_b = None
        if need_x:
            grad_x = grad_y @ (w.t() if tr else w)
        del w

        d_in, d_out = a.shape[1], b.shape[0]
        gy2 = grad_y.reshape(-1, d_out)
        if need_a or need_b or need_w0:
            x2 = x.reshape(-1, d_in)
            grad_w = x2.t() @ gy2 if tr else gy2.t() @ x2
            if need_w0:
                grad_w0 = grad_w.to(dt_w0)
            if need_a or need_b:
                grad_m = grad_w * ddelta if need_w0 else grad_w.mul_(ddelta)
                if tr:  # grad_m holds dL/dM^T
                    grad_a = (grad_m @ b_).t().contiguous().to(dt_a) if need_a else None
                    grad_b = (a_ @ grad_m).t().contiguous().to(dt_b) if need_b else None
                else:
                    grad_a = (b_.t() @ grad_m).to(dt_a) if need_a else None
                    grad_b = (grad_m @ a_.t()).to(dt_b) if need_b else None
        if need_bias:
            grad_bias = gy2.sum(0).to(dt_bias)
        return grad_x, grad_w0, grad_bias, grad_a, grad_b, None, None, None


def bounded_linear(
    x: torch.Tensor,
    w0: torch.Tensor | None,
    bias: torch.Tensor | None,
    a: torch.Tensor,
    b: torch.Tensor,
    bound: Bound,
    transposed: bool = False,
    keep: bool = False,
) -> torch.Tensor:
    """Fused `x @ (W0 + bound.delta(B @ A))^T + bias`; W0 is d_out x d_in (d_in x d_out if `transposed`);
    `keep` trades two d_out x d_in tensors of memory for no recomputation in the backward."""
    return BoundedLinearFn.apply(x, w0, bias, a, b, bound, transposed, keep)


def naive_bounded_linear(
    x: torch.Tensor,
    w0: torch.Tensor | None,
    bias: torch.Tensor | None,
    a: torch.Tensor,
    b: torch.Tensor,
    bound: Bound,
    transposed: bool = False,
) -> torch.Tensor:
    """Plain-autograd reference of `bounded_linear` (stores the dense intermediates)."""
    w = bound.delta(b.to(x.dtype) @ a.to(x.dtype))
    if w0 is not None:
        w = w + (w0.t() if transposed else w0).to(x.dtype)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))
