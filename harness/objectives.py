"""Unlearning objectives: a forget term (GA, NPO, SimNPO, IDK) plus a retain term (NLL, KL or none).

The total loss is `w_forget * L_forget + w_retain * L_retain`. Each objective is one registered
class; its forget term sees the model's logits on the forget batch (and the frozen reference
model's, when it needs them), the retain term is chosen by `objective.retain_loss`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from harness.registry import Registry

OBJECTIVES: Registry[type[Objective]] = Registry("objective")

IGNORE = -100


@dataclass
class Batch:
    """A padded batch: `labels` is -100 on the prompt and on padding."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each next label token and the mask of scored positions (both [batch, seq-1])."""
    shifted = labels[:, 1:]
    mask = shifted != IGNORE
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logp.gather(-1, shifted.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return picked * mask, mask


def mean_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over all scored tokens of the batch (the usual LM loss)."""
    return F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1), ignore_index=IGNORE
    )


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-prob of each sequence's scored tokens, and their counts."""
    picked, mask = token_logprobs(logits, labels)
    return picked.sum(-1), mask.sum(-1).clamp_min(1)


def scored_tokens(batch: Batch) -> int:
    """How many label tokens of the batch are scored."""
    return int((batch.labels[:, 1:] != IGNORE).sum())


def kl_to_reference(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(reference || model) per scored token, averaged over the batch's scored tokens."""
    mask = (labels[:, 1:] != IGNORE).float()
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    ref_logp = torch.log_softmax(ref_logits[:, :-1].float(), dim=-1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp_min(1)


class Objective:
    """Base class: subclasses define `forget_loss` and their defaults."""

    default_retain_loss: ClassVar[str] = "nll"
    default_beta: ClassVar[float] = 0.0
    #: True when the forget term needs the frozen reference model's logits on the forget batch.
    needs_reference: ClassVar[bool] = False
    #: True when the forget term averages over tokens (False: over sequences). Data-parallel workers
    #: weight token averages by their share of the global tokens so N workers equal one.
    forget_token_mean: ClassVar[bool] = True

    def __init__(self, spec: Any) -> None:
        self.spec = spec

    def forget_loss(self, logits: torch.Tensor, batch: Batch, ref_logits: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def forget_answer(self, record: dict[str, Any], index: int) -> str:
        """The answer the forget term trains on (IDK swaps in a refusal)."""
        return record["answer"]

    def retain_loss(self, logits: torch.Tensor, batch: Batch, ref_logits: torch.Tensor | None) -> torch.Tensor:
        """The retain term named by `objective.retain_loss`."""
        kind = self.spec.retain_loss
        if kind == "nll":
            return mean_nll(logits, batch.labels)
        if kind == "kl":
            assert ref_logits is not None
            return kl_to_reference(logits, ref_logits, batch.labels)
        return logits.sum() * 0.0

    @property
    def retain_needs_reference(self) -> bool:
        return self.spec.retain_loss == "kl"


@OBJECTIVES.register("ga")
class GradientAscent(Objective):
    """GA: maximise the forget-set NLL (`L_forget = -CE`), no retain term by default."""

    default_retain_loss = "none"

    def forget_loss(self, logits: torch.Tensor, batch: Batch, ref_logits: torch.Tensor | None) -> torch.Tensor:
        return -mean_nll(logits, batch.labels)


@OBJECTIVES.register("gd")
class GradientDifference(GradientAscent):
    """GD: gradient ascent on the forget set plus descent (NLL) on the retain set."""

    default_retain_loss = "nll"


@OBJECTIVES.register("npo")
class NPO(Objective):
    """NPO (Zhang et al. 2024): `-(2/beta) log sigmoid(-beta (log pi(y|x) - log pi_ref(y|x)))`."""

    default_beta = 0.1
    needs_reference = True
    forget_token_mean = False

    def forget_loss(self, logits: torch.Tensor, batch: Batch, ref_logits: torch.Tensor | None) -> torch.Tensor:
        assert ref_logits is not None
        beta = self.spec.beta
        logp, _ = sequence_logprob(logits, batch.labels)
        with torch.no_grad():
            ref_logp, _ = sequence_logprob(ref_logits, batch.labels)
        return (-2.0 / beta * F.logsigmoid(-beta * (logp - ref_logp))).mean()


@OBJECTIVES.register("simnpo")
class SimNPO(Objective):
    """SimNPO (Fan et al. 2024): `-(2/beta) log sigmoid(beta (NLL/|y| - delta))`, reference-free."""

    default_beta = 4.5
    forget_token_mean = False

    def forget_loss(self, logits: torch.Tensor, batch: Batch, ref_logits: torch.Tensor | None) -> torch.Tensor:
        beta, delta = self.spec.beta, self.spec.delta
        logp, n = sequence_logprob(logits, batch.labels)
        return (-2.0 / beta * F.logsigmoid(beta * (-logp / n - delta))).mean()


IDK_ANSWERS = (
    "I don't know.",
    "I'm not sure about that.",
    "I have no information on that.",
    "That is not something I know.",
    "I cannot answer that.",
)


@OBJECTIVES.register("idk")
class IDontKnow(Objective):
    """IDK: descend on a refusal answer for each forget question (TOFU's `idk` baseline)."""

    def forget_loss(self, logits: torch.Tensor, batch: Batch, ref_logits: torch.Tensor | None) -> torch.Tensor:
        return mean_nll(logits, batch.labels)

    def forget_answer(self, record: dict[str, Any], index: int) -> str:
        return IDK_ANSWERS[index % len(IDK_ANSWERS)]


def make_objective(spec: Any) -> Objective:
    """Instantiate the objective named by an ObjectiveSpec."""
    return OBJECTIVES.get(spec.name)(spec)
