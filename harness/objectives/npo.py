"""NPO, negative preference optimisation (Zhang et al. 2024, arXiv 2404.05868).

`L_forget = -(2/beta) mean_i log sigmoid(-beta (log pi(y_i|x_i) - log pi_ref(y_i|x_i)))`, sequence log-probs
summed over the answer tokens. Reference: open-unlearning `src/trainer/unlearn/npo.py` with
`trainer/utils.py::compute_dpo_loss` (lose-only DPO: `-2/beta * logsigmoid(beta * (ref_logp - logp))`);
open-unlearning's `configs/trainer/NPO.yaml` and the NPO paper use beta = 0.1.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from harness.config import ObjectiveOptions
from harness.data.batch import Batch
from harness.objectives.base import OBJECTIVES, Objective, sequence_logprob


class NPOOptions(ObjectiveOptions):
    """NPO's inverse temperature `beta`."""

    name: Literal["npo"] = "npo"
    beta: float = Field(0.1, gt=0)

    search_space: ClassVar[dict[str, dict[str, Any]]] = {"objective.beta": {"loguniform": [0.03, 1.0]},
                                                         "objective.w_retain": {"uniform": [0.5, 4.0]}}


@OBJECTIVES.register("npo")
class NPO(Objective):
    """NPO against the frozen model (the adapters switched off)."""

    Options = NPOOptions
    needs_reference = True
    forget_unit_mean = False

    def forget_loss(self, out: Any, batch: Batch, ref_out: Any | None) -> torch.Tensor:
        if ref_out is None:
            raise ValueError("NPO needs the frozen model's outputs on the forget batch")
        beta = self.options.beta
        logp, _ = sequence_logprob(out.logits, batch)
        with torch.no_grad():
            ref_logp, _ = sequence_logprob(ref_out.logits, batch)
        return (-2.0 / beta * F.logsigmoid(-beta * (logp - ref_logp))).mean()
