"""CE-U, cross-entropy unlearning: fit each forget token's distribution with its true token removed.

`L_forget = mean_t CE(p_theta(.|x_<t), softmax(z_theta(.|x_<t) with z_y = -inf))`, the target built from the
model's own detached logits, skipping the first `ignore_first_n_answer_tokens` answer tokens (Yang et al. 2025,
arXiv 2503.01224). Reference: open-unlearning `src/trainer/unlearn/ceu.py` (`cross_entropy_unlearning_loss`,
`compute_batch_ceu`) and `configs/trainer/CEU.yaml`: ignore_first_n_answer_tokens = 1, no retain term (CEU
extends the plain `UnlearnTrainer`).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from harness.config import ObjectiveOptions
from harness.data.batch import IGNORE, Batch
from harness.objectives.base import OBJECTIVES, TEXT, Objective


class CEUOptions(ObjectiveOptions):
    """How many leading answer tokens CE-U skips; no retain term."""

    name: Literal["ceu"] = "ceu"
    retain_loss: Literal["nll", "kl", "none"] = "none"
    ignore_first_n_answer_tokens: int = Field(1, ge=0)


@OBJECTIVES.register("ceu")
class CEU(Objective):
    """Cross-entropy toward the model's own distribution without the true token."""

    Options = CEUOptions
    modalities = frozenset({TEXT})

    def _scored(self, batch: Batch) -> Batch:
        """The batch without its first `n` answer tokens per example (as the reference masks its labels)."""
        valid = batch.labels != IGNORE  # type: ignore[attr-defined]
        skip = valid & (valid.cumsum(-1) <= self.options.ignore_first_n_answer_tokens)
        return batch.with_targets(batch.labels.masked_fill(skip, IGNORE))  # type: ignore[attr-defined]

    def forget_units(self, batch: Batch) -> int:
        return self._scored(batch).n_scored

    def forget_loss(self, out: Any, batch: Batch, ref_out: Any | None) -> torch.Tensor:
        logits, targets, mask = self._scored(batch).units(out.logits)
        valid_logits = logits[mask].float()
        with torch.no_grad():
            target = valid_logits.detach().clone()
            target.scatter_(-1, targets[mask].unsqueeze(-1), float("-inf"))
            target = torch.softmax(target, dim=-1)
        return F.cross_entropy(valid_logits, target)
