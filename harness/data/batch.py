"""Training batches of every modality, seen by objectives through one view: scored units.

A *unit* is one prediction the loss scores: a next token of a continuation (text) or an image's class
(vision). `batch.units(logits)` aligns a model's logits with their targets as `[batch, units, vocab]`
logits, `[batch, units]` targets and a `[batch, units]` mask, so every objective (GA, GD, NPO, random
labels, ...) is written once for both modalities.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields, replace

import torch

#: Label of positions that are not scored (the prompt, padding), as in transformers.
IGNORE = -100


class Batch(ABC):
    """A padded batch: the model's inputs plus the targets of its scored units."""

    @abstractmethod
    def model_inputs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments of the model's forward pass."""

    @abstractmethod
    def units(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`(unit_logits [B, U, V], targets [B, U], mask [B, U] bool)` of the scored units."""

    @property
    @abstractmethod
    def n_inputs(self) -> int:
        """Input elements processed (real tokens, or images), for throughput."""

    @property
    @abstractmethod
    def n_scored(self) -> int:
        """How many units the loss scores."""

    @abstractmethod
    def logit_norm(self, logits: torch.Tensor) -> float:
        """Mean L2 norm of the logit vectors of the real (non-padding) inputs."""

    def to(self, device: torch.device | str) -> Batch:
        """The same batch with every tensor on `device`."""
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)})  # type: ignore[arg-type]

    def with_targets(self, targets: torch.Tensor) -> Batch:
        """The same inputs with other targets (e.g. random labels); `targets` as `labels`."""
        return replace(self, labels=targets)  # type: ignore[call-arg]


@dataclass
class TokenBatch(Batch):
    """Token ids, attention mask and labels; `labels` is IGNORE on the prompt and on padding."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}

    def units(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        targets = self.labels[:, 1:]  # position t predicts token t + 1
        return logits[:, :-1], targets, targets != IGNORE

    @property
    def n_inputs(self) -> int:
        return int(self.attention_mask.sum())

    @property
    def n_scored(self) -> int:
        return int((self.labels[:, 1:] != IGNORE).sum())

    def logit_norm(self, logits: torch.Tensor) -> float:
        norms = logits.detach().float().norm(dim=-1)
        return float(norms[self.attention_mask.bool()].mean())


@dataclass
class ImageBatch(Batch):
    """Preprocessed images `[B, 3, H, W]` and their class labels `[B]`: one scored unit per image."""

    pixel_values: torch.Tensor
    labels: torch.Tensor

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pixel_values}

    def units(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        targets = self.labels[:, None]
        return logits[:, None], targets, torch.ones_like(targets, dtype=torch.bool)

    @property
    def n_inputs(self) -> int:
        return int(self.labels.numel())

    @property
    def n_scored(self) -> int:
        return int(self.labels.numel())

    def logit_norm(self, logits: torch.Tensor) -> float:
        return float(logits.detach().float().norm(dim=-1).mean())
