"""What every unlearning objective is: its options, its forget and retain terms, and the shared loss pieces.

The total loss is `w_forget * L_forget + w_retain * L_retain (+ penalty)`. An objective is one class in one
file of this package, registered with `@OBJECTIVES.register("name")`, with an `Options` model (a subclass of
`ObjectiveOptions` whose `name` is a Literal) holding its own settings and their reference defaults.
Losses see model outputs (`.logits`, and `.hidden_states` when `needs_hidden_states`) through the batch's
scored units (harness.data.batch), so one formula serves text and vision.

Optional hooks, each used by the methods that need it: `prepare` (a one-time pass before training whose
tensors are checkpointed with the run; harness/objectives/prepare.py) with `apply_prepared`, `penalty`
(a regulariser on the adapted weights), `forget_units` (when the forget mean skips some scored units).
Objectives sit on layer 3 (docs/architecture.md): they import adapters and data, never the job spec.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from harness.config import ObjectiveOptions
from harness.core.registry import Registry
from harness.data.batch import Batch
from harness.objectives.prepare import PrepareContext

OBJECTIVES: Registry[type[Objective]] = Registry("objective")

#: Modalities of the benchmarks an objective can run on.
TEXT, IMAGE = "text", "image"


def unit_logprobs(logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each scored unit's target, zero elsewhere, and the mask of scored units (both [B, U])."""
    unit_logits, targets, mask = batch.units(logits)
    logp = torch.log_softmax(unit_logits.float(), dim=-1)
    picked = logp.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return picked * mask, mask


def mean_nll(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Cross-entropy averaged over every scored unit of the batch (the usual LM / classification loss)."""
    unit_logits, targets, mask = batch.units(logits)
    return F.cross_entropy(unit_logits[mask].float(), targets[mask])


def sequence_logprob(logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-prob of each example's scored units, and how many there are (at least 1)."""
    picked, mask = unit_logprobs(logits, batch)
    return picked.sum(-1), mask.sum(-1).clamp_min(1)


def kl_to_reference(logits: torch.Tensor, ref_logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """KL(reference || model) per scored unit, averaged over the batch's scored units."""
    unit_logits, _, mask = batch.units(logits)
    ref_unit_logits, _, _ = batch.units(ref_logits)
    logp = torch.log_softmax(unit_logits.float(), dim=-1)
    ref_logp = torch.log_softmax(ref_unit_logits.float(), dim=-1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    m = mask.float()
    return (kl * m).sum() / m.sum().clamp_min(1)


class Objective:
    """Base class: subclasses set `Options` and define `forget_loss`."""

    Options: ClassVar[type[ObjectiveOptions]]
    #: Modalities it applies to (IDK's refusal answers exist only for text, random labels only for images).
    modalities: ClassVar[frozenset[str]] = frozenset({TEXT, IMAGE})
    #: True when the forget term needs the frozen reference model's outputs on the forget batch.
    needs_reference: ClassVar[bool] = False
    #: True when the forget term averages over units (False: over examples). Data-parallel workers
    #: weight unit averages by their share of the global units so N workers equal one.
    forget_unit_mean: ClassVar[bool] = True
    #: True when losses read `out.hidden_states` (the loop then asks every forward for them).
    needs_hidden_states: ClassVar[bool] = False

    def __init__(self, options: ObjectiveOptions) -> None:
        self.options = options

    @property
    def moves_start(self) -> bool:
        """True when preparation moves the adapter's start away from zero (FILA): the change from the target
        is `delta(B A) - delta(B0 A0)`, so a bound caps it at twice its usual value."""
        return False

    @property
    def has_prepare(self) -> bool:
        """Whether the objective has a preparation pass (it overrides `prepare`)."""
        return type(self).prepare is not Objective.prepare

    def prepare(self, ctx: PrepareContext) -> dict[str, torch.Tensor] | None:
        """One-time pass on every worker before training (collective); the named tensors it returns are
        checkpointed with the run and given to `apply_prepared` (also when a resumed worker loads them)."""
        return None

    def apply_prepared(self, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Put a preparation result into the model (masks, factors) or into the objective (vectors)."""

    def penalty(self, model: torch.nn.Module, progress: float) -> torch.Tensor | None:
        """A regulariser added to every micro-step's loss (`progress`: the fraction of the run done), or None."""
        return None

    def forget_units(self, batch: Batch) -> int:
        """How many units the forget term averages over (for the data-parallel weighting of unit means)."""
        return batch.n_scored

    def forget_loss(self, out: Any, batch: Batch, ref_out: Any | None) -> torch.Tensor:
        """`L_forget` from the model's outputs on the forget batch (and the frozen model's, when needed)."""
        raise NotImplementedError

    def retain_loss(self, out: Any, batch: Batch, ref_out: Any | None) -> torch.Tensor:
        """The retain term named by `retain_loss`: NLL, KL to the frozen model, or nothing."""
        kind = self.options.retain_loss
        if kind == "nll":
            return mean_nll(out.logits, batch)
        if kind == "kl":
            if ref_out is None:
                raise ValueError("the kl retain term needs the frozen model's outputs")
            return kl_to_reference(out.logits, ref_out.logits, batch)
        return out.logits.sum() * 0.0

    @property
    def retain_needs_reference(self) -> bool:
        """Whether the retain term needs the frozen model's outputs on the retain batch."""
        return self.options.retain_loss == "kl"

    @property
    def retain_unit_mean(self) -> bool:
        """Whether the retain term averages over units (False: over examples), like `forget_unit_mean`."""
        return True

    def forget_answer(self, record: dict[str, Any], index: int) -> str:
        """Text benchmarks: the answer the forget term trains on (IDK swaps in a refusal)."""
        return record["answer"]

    def forget_labels(self, labels: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
        """Vision benchmarks: the labels the forget term trains on (random labelling swaps in others)."""
        return labels


def make_objective(options: ObjectiveOptions) -> Objective:
    """Instantiate the objective named by its options."""
    return OBJECTIVES.get(options.name)(options)


def original_targets() -> Objective:
    """An objective-shaped stand-in whose forget targets are the benchmark's own answers and labels (for
    preparation passes of objectives that train toward other targets)."""
    return Objective(ObjectiveOptions(name="original"))
