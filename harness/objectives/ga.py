"""GA, gradient ascent: maximise the forget-set NLL, no retain term.

Reference: open-unlearning `src/trainer/unlearn/grad_ascent.py` (`GradAscent.compute_loss`: the loss is
`-outputs.loss` on the forget inputs); TOFU's `grad_ascent` (locuslab/tofu `dataloader.py`).
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from harness.config import ObjectiveOptions
from harness.data.batch import Batch
from harness.objectives.base import OBJECTIVES, Objective, mean_nll


class GAOptions(ObjectiveOptions):
    """GA has no retain term by default."""

    name: Literal["ga"] = "ga"
    retain_loss: Literal["nll", "kl", "none"] = "none"


@OBJECTIVES.register("ga")
class GradientAscent(Objective):
    """`L_forget = -CE(forget)` averaged over the forget tokens (or images)."""

    Options = GAOptions

    def forget_loss(self, out: Any, batch: Batch, ref_out: Any | None) -> torch.Tensor:
        return -mean_nll(out.logits, batch)
