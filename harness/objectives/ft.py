"""FT, fine-tuning on the retain set only: no forget term (the forgetting comes from catastrophic forgetting).

Reference: OPTML-Group/Unlearn-Saliency `Classification/unlearn/FT.py` (`FT_iter` without l1: cross-entropy on
`data_loaders["retain"]`), after Warnecke et al. 2023; README recipe: `--unlearn FT --unlearn_lr 0.01
--unlearn_epochs 10` (SGD, momentum 0.9, weight decay 5e-4 in its parser). `loss_forget` logs the forget
set's NLL, detached, so the curves show whether the forget set's loss rises; it has no gradient, and
`w_forget` (default 0) only scales that logged value in `loss`. Steps count epochs over the forget set, as for
every method of a job.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from harness.config import ObjectiveOptions
from harness.data.batch import Batch
from harness.objectives.base import OBJECTIVES, Objective, mean_nll


class FTOptions(ObjectiveOptions):
    """FT: retain NLL only."""

    name: Literal["ft"] = "ft"
    w_forget: float = Field(0.0, ge=0)


@OBJECTIVES.register("ft")
class FineTune(Objective):
    """Descend on the retain set; the forget term is telemetry only."""

    Options = FTOptions

    def forget_loss(self, out: Any, batch: Batch, ref_out: Any | None) -> torch.Tensor:
        return mean_nll(out.logits, batch).detach()
