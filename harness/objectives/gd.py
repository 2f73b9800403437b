"""GD, gradient difference: ascent on the forget set plus descent (NLL, or KL to the frozen model) on retain.

Reference: open-unlearning `src/trainer/unlearn/grad_diff.py` (`GradDiff`: `gamma * forget_loss + alpha *
retain_loss`, forget loss `-outputs.loss`, retain loss NLL or KL; defaults gamma = alpha = 1,
`retain_loss_type: NLL`); TOFU's `grad_diff`. Here gamma is `w_forget` and alpha `w_retain`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch

from harness.config import ObjectiveOptions
from harness.data.batch import Batch
from harness.objectives.base import OBJECTIVES, Objective, mean_nll


class GDOptions(ObjectiveOptions):
    """GD: NLL on the retain set by default."""

    name: Literal["gd"] = "gd"

    search_space: ClassVar[dict[str, dict[str, Any]]] = {"objective.w_retain": {"uniform": [0.5, 4.0]}}


@OBJECTIVES.register("gd")
class GradientDifference(Objective):
    """`L_forget = -CE(forget)`; the retain term from `retain_loss`."""

    Options = GDOptions

    def forget_loss(self, out: Any, batch: Batch, ref_out: Any | None) -> torch.Tensor:
        return -mean_nll(out.logits, batch)
