"""The optional one-time preparation pass of an objective: what it sees, and the gradient pass it usually needs.

An objective that overrides `Objective.prepare` gets a `PrepareContext` on every worker before training,
after the adapters are attached and before DeepSpeed wraps the model. It returns named tensors (a
saliency mask, FILA's factors, RMU's control vector) that the loop saves in every checkpoint of the run
and hands to `Objective.apply_prepared`; a resumed worker loads them instead of running the pass again.

N workers give what one worker gives: every worker reads its slice of the same seeded global batches,
weights its unit mean by its share of the global units and sums over the workers (`all_reduce_sum_`), so
each global batch's gradient is the one a single worker computes on the whole batch.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from harness.adapters import adapted_layers
from harness.data.batch import Batch

#: The data a preparation pass can read: the forget set with the benchmark's own targets (the answers or
#: labels the target model learned, whatever the objective trains toward), and the retain set.
FORGET, RETAIN = "forget", "retain"


@dataclass
class PrepareContext:
    """One worker's view during preparation: the model, its data streams, the device and the collectives."""

    model: nn.Module  #: adapters attached, on `device`, not yet wrapped by DeepSpeed
    device: torch.device
    seed: int  #: the run's seed
    rank: int = 0
    world: int = 1
    #: role -> a function returning a fresh endless stream of this worker's slices of the global batches
    streams: dict[str, Callable[[], Iterator[Batch]]] = field(default_factory=dict)
    #: global batches in one pass over the forget set
    epoch_batches: int = 1

    def has(self, role: str) -> bool:
        """Whether data of `role` exists for this run (retain is absent for forget-only objectives)."""
        return role in self.streams

    def batches(self, role: str, n: int | None = None) -> Iterator[Batch]:
        """This worker's slices of `n` global batches of `role` (default: as many as one pass over the forget
        set), on the device; a fresh seeded stream each call, so it never touches the training streams."""
        if role not in self.streams:
            raise ValueError(f"this run has no {role} data to prepare on")
        stream = self.streams[role]()
        return (b.to(self.device) for b in itertools.islice(stream, self.epoch_batches if n is None else n))

    def all_reduce_sum_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Sum `tensors` over the workers, in place (collective; a no-op with one worker)."""
        if self.world > 1:
            for t in tensors:
                dist.all_reduce(t)

    def global_sum(self, value: float) -> float:
        """`value` summed over the workers (collective)."""
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        self.all_reduce_sum_([t])
        return float(t)


@contextlib.contextmanager
def _requires_grad(tensors: Sequence[torch.Tensor]) -> Iterator[None]:
    before = [t.requires_grad for t in tensors]
    for t in tensors:
        t.requires_grad_(True)
    try:
        yield
    finally:
        for t, was in zip(tensors, before):
            t.requires_grad_(was)


def base_weight_gradients(ctx: PrepareContext, role: str, loss_fn: Callable[[Any, Batch], torch.Tensor],
                          n: int | None = None) -> Iterator[tuple[dict[str, torch.Tensor], float]]:
    """For each global batch of `role`: the gradient of `loss_fn` (a mean over the batch's scored units) with
    respect to every adapted layer's weight (`W0 + update`, nn.Linear orientation, by module name), and the
    global batch's number of scored units. Collective: every worker gets the same gradients."""

    layers = adapted_layers(ctx.model)
    weights = [layer.base_layer.weight for layer in layers.values()]
    with _requires_grad(weights):
        for batch in ctx.batches(role, n):
            units = ctx.global_sum(batch.n_scored)
            loss = loss_fn(ctx.model(**batch.model_inputs()), batch) * (batch.n_scored / max(units, 1.0))
            grads = [torch.zeros_like(w) if g is None else g
                     for w, g in zip(weights, torch.autograd.grad(loss, weights, allow_unused=True))]
            ctx.all_reduce_sum_(grads)
            yield {name: (g.t() if layer.fan_in_fan_out else g).float()
                   for (name, layer), g in zip(layers.items(), grads)}, units
