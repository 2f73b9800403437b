"""SimNPO, reference-free NPO with length normalisation (Fan et al. 2024, arXiv 2410.07163).

`L_forget = -(2/beta) mean_i log sigmoid(beta (NLL_i/|y_i| - delta))`. Reference: open-unlearning
`src/trainer/unlearn/simnpo.py` (`forget_loss / loss_mask.sum(-1) - delta`, then
`-logsigmoid(beta * .) * 2 / beta`); OPTML-Group/Unlearn-Simple uses beta 4.5 and delta 0 on TOFU.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from harness.config import ObjectiveOptions
from harness.data.batch import Batch
from harness.objectives.base import OBJECTIVES, Objective, sequence_logprob


class SimNPOOptions(ObjectiveOptions):
    """SimNPO's `beta` and margin `delta`."""

    name: Literal["simnpo"] = "simnpo"
    beta: float = Field(4.5, gt=0)
    delta: float = 0.0


@OBJECTIVES.register("simnpo")
class SimNPO(Objective):
    """SimNPO: no reference model; the per-example mean NLL is pushed above `delta`."""

    Options = SimNPOOptions
    forget_unit_mean = False

    def forget_loss(self, out: Any, batch: Batch, ref_out: Any | None) -> torch.Tensor:
        beta, delta = self.options.beta, self.options.delta
        logp, n = sequence_logprob(out.logits, batch)
        return (-2.0 / beta * F.logsigmoid(beta * (-logp / n - delta))).mean()
