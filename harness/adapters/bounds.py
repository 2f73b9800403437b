"""Bound functions applied to the full LoRA product `M = B A`: sine, tanh, clip and none (plain LoRA).

A bound maps `M` to the weight update `delta W = scale * f(omega * M)` (elementwise), where
`scale = (alpha / r) / g(d_in)`. Each bound also gives the elementwise derivative `d delta W / d M`,
which the fused autograd function uses to recompute the backward pass without stored activations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from harness.core.registry import Registry

BOUNDS: Registry[type[Bound]] = Registry("bound")


@dataclass(frozen=True)
class Bound:
    """Base class: `delta(M)` is the weight update, `delta_and_grad(M)` adds its elementwise derivative."""

    scale: float
    omega: float = 1.0
    clip_value: float = 1.0

    #: True when `delta W = scale * M` (no bound): the layer keeps the cheap low-rank path.
    low_rank: bool = False

    #: The bound's own settings that `harness study` searches by default (dotted paths inside a method,
    #: distributions as in tune_spaces/); plain LoRA has none beyond the learning rate.
    search_space: ClassVar[dict[str, dict[str, Any]]] = {}

    @staticmethod
    def norm(d_in: int) -> float:
        """The divisor `g(d_in)` of `alpha / r` for this bound (1 unless the bound says otherwise)."""
        return 1.0

    def delta(self, m: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def delta_and_grad(self, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def delta_(self, m: torch.Tensor) -> torch.Tensor:
        """`delta(m)` written into `m` where the bound allows (not differentiable; for fused kernels)."""
        return self.delta(m)

    def max_abs(self) -> float:
        """Largest possible |delta W| of one element (inf when unbounded)."""
        raise NotImplementedError


@BOUNDS.register("sine")
@dataclass(frozen=True)
class SineBound(Bound):
    """`delta W = s * sin(omega M) / sqrt(d_in)` (Sine-LoRA, arXiv 2403.19243; Stable Forgetting, 2509.24166)."""

    search_space: ClassVar[dict[str, dict[str, Any]]] = {"adapter.omega": {"loguniform": [1.0, 1000.0]}}

    @staticmethod
    def norm(d_in: int) -> float:
        return math.sqrt(d_in)

    def delta(self, m: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.sin(self.omega * m)

    def delta_and_grad(self, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.omega * m
        grad = torch.cos(z).mul_(self.scale * self.omega)
        return z.sin_().mul_(self.scale), grad

    def delta_(self, m: torch.Tensor) -> torch.Tensor:
        return m.mul_(self.omega).sin_().mul_(self.scale)

    def max_abs(self) -> float:
        return abs(self.scale)


@BOUNDS.register("tanh")
@dataclass(frozen=True)
class TanhBound(Bound):
    """`delta W = s * tanh(omega M) / sqrt(d_in)`."""

    search_space: ClassVar[dict[str, dict[str, Any]]] = {"adapter.omega": {"loguniform": [1.0, 1000.0]}}

    @staticmethod
    def norm(d_in: int) -> float:
        return math.sqrt(d_in)

    def delta(self, m: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.tanh(self.omega * m)

    def delta_and_grad(self, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.tanh(self.omega * m)
        grad = (t * t).neg_().add_(1).mul_(self.scale * self.omega)
        return t.mul_(self.scale), grad

    def delta_(self, m: torch.Tensor) -> torch.Tensor:
        return m.mul_(self.omega).tanh_().mul_(self.scale)

    def max_abs(self) -> float:
        return abs(self.scale)


@BOUNDS.register("clip")
@dataclass(frozen=True)
class ClipBound(Bound):
    """`delta W = s * clamp(M, -c, c)` (weight clipping)."""

    search_space: ClassVar[dict[str, dict[str, Any]]] = {"adapter.clip_value": {"loguniform": [0.001, 0.1]}}

    def delta(self, m: torch.Tensor) -> torch.Tensor:
        return self.scale * m.clamp(-self.clip_value, self.clip_value)

    def delta_and_grad(self, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inside = (m.abs() <= self.clip_value).to(m.dtype)
        return self.scale * m.clamp(-self.clip_value, self.clip_value), self.scale * inside

    def max_abs(self) -> float:
        return abs(self.scale) * self.clip_value


@BOUNDS.register("none")
@dataclass(frozen=True)
class NoBound(Bound):
    """Plain LoRA, `delta W = s * M`: the unbounded baseline."""

    low_rank: bool = True

    def delta(self, m: torch.Tensor) -> torch.Tensor:
        return self.scale * m

    def delta_and_grad(self, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scale * m, torch.full_like(m, self.scale)

    def max_abs(self) -> float:
        return math.inf


def make_bound(name: str, alpha: float, rank: int, d_in: int, omega: float, clip_value: float) -> Bound:
    """Build the named bound for a layer with input width `d_in`."""
    cls = BOUNDS.get(name)
    scale = (alpha / rank) / cls.norm(d_in)
    return cls(scale=scale, omega=omega, clip_value=clip_value)
