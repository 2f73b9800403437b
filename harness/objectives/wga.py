"""WGA, weighted gradient ascent: ascent on each forget token's NLL weighted by its (detached) probability.

`L_forget = -mean_t p_t^beta * CE_t` with `p_t = exp(-CE_t)` held constant (Wang et al. 2025, "Rethinking LLM
unlearning objectives: a gradient perspective and go beyond", arXiv 2502.19301). Reference: open-unlearning
`src/trainer/unlearn/wga.py` with `src/trainer/utils.py::compute_wga_loss` (`weight_ce = exp(-lm_loss).detach()
** beta`, `-(weight_ce * lm_loss)[labels != -100].mean()`) and `configs/trainer/WGA.yaml`: beta = 1,
gamma (w_forget) = 1, alpha (w_retain) = 1, retain NLL, lr 1e-5, 5 epochs.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from harness.config import ObjectiveOptions
from harness.data.batch import Batch
from harness.objectives.base import OBJECTIVES, Objective, unit_logprobs


class WGAOptions(ObjectiveOptions):
    """WGA's weight exponent `beta`."""

    name: Literal["wga"] = "wga"
    beta: float = Field(1.0, ge=0)


@OBJECTIVES.register("wga")
class WGA(Objective):
    """Gradient ascent where confident tokens weigh more."""

    Options = WGAOptions

    def forget_loss(self, out: Any, batch: Batch, ref_out: Any | None) -> torch.Tensor:
        logp, mask = unit_logprobs(out.logits, batch)
        weight = logp.detach().exp() ** self.options.beta
        return (weight * logp)[mask].mean()  # = -mean(w * CE)
