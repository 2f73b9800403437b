"""UNDIAL: self-distillation toward the frozen model's logits with the true token's logit lowered by beta.

`L_forget = mean_t CE(p_theta(.|x_<t), softmax(z_ref(.|x_<t) - beta * onehot(y_t)))` over the answer tokens
(Dong et al. 2024, arXiv 2402.10052). Reference: open-unlearning `src/trainer/unlearn/undial.py` with
`src/trainer/utils.py::compute_undial_loss` and `configs/trainer/UNDIAL.yaml`: beta = 10, gamma (w_forget) = 1,
alpha (w_retain) = 0 (no retain term), lr 1e-4, 10 epochs. One difference: the reference's mean runs over
every position of the sequence, prompt and padding included (its one-hot indexes label -100 as the
vocabulary's 100th-last token); here it runs over the scored answer tokens, the tokens to unlearn, as
the paper defines it.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from harness.config import ObjectiveOptions
from harness.data.batch import Batch
from harness.objectives.base import OBJECTIVES, Objective


class UNDIALOptions(ObjectiveOptions):
    """UNDIAL's logit adjustment `beta`; no retain term by default (the reference's alpha = 0)."""

    name: Literal["undial"] = "undial"
    beta: float = Field(10.0, ge=0)
    w_retain: float = Field(0.0, ge=0)


@OBJECTIVES.register("undial")
class UNDIAL(Objective):
    """Distil from the frozen model with the memorised token penalised."""

    Options = UNDIALOptions
    needs_reference = True

    def forget_loss(self, out: Any, batch: Batch, ref_out: Any | None) -> torch.Tensor:
        if ref_out is None:
            raise ValueError("UNDIAL needs the frozen model's outputs on the forget batch")
        logits, targets, mask = batch.units(out.logits)
        with torch.no_grad():
            ref_logits = batch.units(ref_out.logits)[0][mask].float()
            onehot = F.one_hot(targets[mask], ref_logits.size(-1)).to(ref_logits.dtype)
            soft = torch.softmax(ref_logits - self.options.beta * onehot, dim=-1)
        return F.cross_entropy(logits[mask].float(), soft)
