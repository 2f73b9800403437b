"""`BoundedLoRALinear`: a PEFT-style LoRA wrapper around a frozen `nn.Linear` or transformers `Conv1D`.

Two optional pieces of frozen state, set by objectives' preparation passes (harness/adapters/extras.py):
an elementwise `update_mask` M (SalUn's saliency mask: `W = W0 + M * delta W`) and an origin `(A0, B0)`
(FILA: the base holds `W0 - delta(B0 A0)`, so the adapter starts from `A0, B0` as a no-op).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from harness.adapters.bounds import Bound, make_bound
from harness.adapters.fused import bounded_linear, dense_weight

#: Layer types that can be wrapped (Conv1D is GPT-2's linear with an (in, out) weight).
SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, Conv1D)


def layer_shape(layer: nn.Module) -> tuple[int, int]:
    """`(d_in, d_out)` of an `nn.Linear` or `Conv1D`."""
    if isinstance(layer, Conv1D):
        return layer.weight.shape[0], layer.weight.shape[1]
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    raise TypeError(f"cannot adapt a {type(layer).__name__}: only nn.Linear and transformers Conv1D")


class BoundedLoRALinear(nn.Module):
    """Frozen base layer plus `delta W = bound(B A)`; plain LoRA (bound `none`) keeps the low-rank path."""

    def __init__(
        self,
        base_layer: nn.Module,
        bound: str = "sine",
        rank: int = 8,
        alpha: float = 16.0,
        omega: float = 100.0,
        clip_value: float = 0.01,
        dropout: float = 0.0,
        keep_dense: bool = False,
    ) -> None:
        super().__init__()
        d_in, d_out = layer_shape(base_layer)
        self.base_layer = base_layer
        self.in_features = d_in
        self.out_features = d_out
        self.fan_in_fan_out = isinstance(base_layer, Conv1D)
        self.r = rank
        self.lora_alpha = alpha
        self.bound_name = bound
        self.bound: Bound = make_bound(bound, alpha=alpha, rank=rank, d_in=d_in, omega=omega,
                                       clip_value=clip_value)
        self.disabled = False
        #: the fused step keeps the dense weight and d delta/dM from forward for backward (more memory, faster)
        self.keep_dense = keep_dense
        w = base_layer.weight
        self.lora_A = nn.Linear(d_in, rank, bias=False, device=w.device, dtype=w.dtype)
        self.lora_B = nn.Linear(rank, d_out, bias=False, device=w.device, dtype=w.dtype)
        self.lora_dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        for p in base_layer.parameters():
            p.requires_grad_(False)
        # Frozen extras (None unless a preparation pass sets them); kept out of state_dict on purpose:
        # the adapter checkpoint stores them in its own file (harness/adapters/extras.py).
        self.register_buffer("update_mask", None, persistent=False)
        self.register_buffer("origin_A", None, persistent=False)
        self.register_buffer("origin_B", None, persistent=False)
        self.reset_parameters()

    @property
    def weight(self) -> torch.Tensor:
        """The base layer's weight (as PEFT layers expose it; some model code reads `.weight.dtype`)."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        """The base layer's bias."""
        return self.base_layer.bias

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """PEFT's LoRA init: kaiming-uniform `A` (a=sqrt(5)), zero `B`; `generator` makes it reproducible."""
        with torch.no_grad():
            a = self.lora_A.weight
            if generator is None:
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            else:
                # Draw on the generator's device (CPU) so the same seed gives the same A on any device.
                tmp = torch.empty(a.shape, dtype=torch.float32, device=generator.device)
                nn.init.kaiming_uniform_(tmp, a=math.sqrt(5), generator=generator)
                a.copy_(tmp)
            nn.init.zeros_(self.lora_B.weight)

    def base_weight(self) -> torch.Tensor:
        """The frozen `W0` in nn.Linear orientation (d_out x d_in); a view for Conv1D."""
        w = self.base_layer.weight
        return w.t() if self.fan_in_fan_out else w

    def update(self, a: torch.Tensor | None = None, b: torch.Tensor | None = None) -> torch.Tensor:
        """What the layer adds to its base weight, `M * delta(B A)` (d_out x d_in; differentiable); other
        factors `a`, `b` may be given (FILA's origin)."""
        a = self.lora_A.weight if a is None else a
        b = self.lora_B.weight if b is None else b
        delta = self.bound.delta(b @ a)
        return delta if self.update_mask is None else delta * self.update_mask.to(delta.dtype)

    def delta_weight(self) -> torch.Tensor:
        """The change from the target's weight `W0` (d_out x d_in, nn.Linear orientation; differentiable):
        `M * delta(B A)`, minus the origin's `M * delta(B0 A0)` when FILA moved the start."""
        delta = self.update()
        if self.origin_A is not None:
            delta = delta - self.update(self.origin_A.to(delta.dtype), self.origin_B.to(delta.dtype))
        return delta

    def effective_weight(self) -> torch.Tensor:
        """The weight the forward uses, `base + M * delta(B A)` (nn.Linear orientation; differentiable)."""
        return self.base_weight() + self.update()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.disabled:
            return self.base_layer(x)
        if self.update_mask is not None:
            # Masked updates take plain autograd (the fused kernel has no mask): W = W0 + M * delta(B A).
            bias = self.base_layer.bias
            bias = None if bias is None else bias.to(x.dtype)
            if self.training and isinstance(self.lora_dropout, nn.Dropout):
                return self.base_layer(x) + F.linear(self.lora_dropout(x), self.update().to(x.dtype))
            return F.linear(x, self.effective_weight().to(x.dtype), bias)
        if self.bound.low_rank:
            result = self.base_layer(x)
            x = x.to(self.lora_A.weight.dtype)
            lora = self.lora_B(self.lora_A(self.lora_dropout(x))) * self.bound.scale
            return result + lora.to(result.dtype)
        a, b = self.lora_A.weight, self.lora_B.weight
        if self.training and isinstance(self.lora_dropout, nn.Dropout):
            # Dropout only on the adapter branch (as in PEFT): costs a second GEMM.
            return self.base_layer(x) + bounded_linear(self.lora_dropout(x), None, None, a, b, self.bound,
                                                       keep=self.keep_dense)
        # Conv1D keeps its (in, out) layout so that a zero update is bit-identical to the base layer.
        return bounded_linear(x, self.base_layer.weight, self.base_layer.bias, a, b, self.bound,
                              transposed=self.fan_in_fan_out, keep=self.keep_dense)

    @torch.no_grad()
    def merged_linear(self) -> nn.Module:
        """A plain layer of the base type holding `W0 + delta W`, the weight the fused forward uses."""
        base = self.base_layer
        if self.update_mask is not None:
            w = self.effective_weight()
            w = (w.t() if self.fan_in_fan_out else w).to(base.weight.dtype)
        else:
            # The same ops as the fused forward, in the base layer's layout: the merged layer is exact.
            w = dense_weight(base.weight, self.lora_A.weight, self.lora_B.weight, self.bound,
                             transposed=self.fan_in_fan_out).to(base.weight.dtype)
        has_bias = base.bias is not None
        if self.fan_in_fan_out:
            merged: nn.Module = Conv1D(self.out_features, self.in_features)
            merged.to(device=base.weight.device, dtype=base.weight.dtype)
            merged.weight.copy_(w)
            if has_bias:
                merged.bias.copy_(base.bias)
        else:
            merged = nn.Linear(self.in_features, self.out_features, bias=has_bias,
                               device=base.weight.device, dtype=base.weight.dtype)
            merged.weight.copy_(w)
            if has_bias:
                merged.bias.copy_(base.bias)
        for p_new, p_old in zip(merged.parameters(), base.parameters()):
            p_new.requires_grad_(p_old.requires_grad)
        return merged

    def extra_repr(self) -> str:
        b = self.bound
        return (f"in={self.in_features}, out={self.out_features}, r={self.r}, alpha={self.lora_alpha}, "
                f"bound={self.bound_name}, omega={b.omega}, clip_value={b.clip_value}, "
                f"disabled={self.disabled}, masked={self.update_mask is not None}, "
                f"origin={self.origin_A is not None}")
