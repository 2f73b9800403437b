"""SatImp: ascent on each forget token's NLL weighted by saturation `p^beta1` and importance `(1 - p)^beta2`.

`L_forget = -mean_t p_t^beta1 (1 - p_t)^beta2 CE_t` with `p_t = exp(-CE_t)` held constant (Yang et al. 2025,
"Exploring criteria of loss reweighting to enhance LLM unlearning", arXiv 2505.11953). Reference:
open-unlearning `src/trainer/unlearn/satimp.py` with `src/trainer/utils.py::compute_satimp_loss` and
`configs/trainer/SatImp.yaml`: beta1 = 5, beta2 = 1, gamma (w_forget) = 0.1, alpha (w_retain) = 1.0, retain
NLL, lr 1e-5, 5 epochs (the config's values; the class's own defaults swap gamma and alpha).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from harness.config import ObjectiveOptions
from harness.data.batch import Batch
from harness.objectives.base import OBJECTIVES, Objective, unit_logprobs


class SatImpOptions(ObjectiveOptions):
    """SatImp's two exponents; the reference config weighs the forget term 0.1."""

    name: Literal["satimp"] = "satimp"
    beta1: float = Field(5.0, ge=0)
    beta2: float = Field(1.0, ge=0)
    w_forget: float = Field(0.1, ge=0)


@OBJECTIVES.register("satimp")
class SatImp(Objective):
    """Reweighted gradient ascent (saturation x importance)."""

    Options = SatImpOptions

    def forget_loss(self, out: Any, batch: Batch, ref_out: Any | None) -> torch.Tensor:
        logp, mask = unit_logprobs(out.logits, batch)
        p = logp.detach().exp()
        weight = p ** self.options.beta1 * (1 - p) ** self.options.beta2
        return (weight * logp)[mask].mean()  # = -mean(w * CE)
