"""IdkDPO: DPO with a refusal as the preferred answer and the true answer as the rejected one.

`L_forget = -(2/beta) mean_i log sigmoid(beta ((log pi(w_i|x_i) - log pi_ref(w_i|x_i))
                                              - (log pi(l_i|x_i) - log pi_ref(l_i|x_i))))`,
w = the refusal, l = the forget answer, log-probs summed over each answer's tokens.
Reference: open-unlearning `src/trainer/unlearn/dpo.py` (`DPO.compute_loss`: `win_inputs = alternate`,
`lose_inputs = original`) with `src/trainer/utils.py::compute_dpo_loss` (`-2/beta * logsigmoid(beta *
(win_log_ratio - lose_log_ratio)).mean()`, `compute_batch_nll` summing token NLLs), its TOFU experiment
`configs/experiment/unlearn/tofu/idk.yaml` (forget data `TOFU_QA_forget_idk`) and `configs/trainer/DPO.yaml`:
beta = 0.1, gamma (w_forget) = 1, alpha (w_retain) = 1, retain NLL; that experiment trains with lr 1e-5 and
weight decay 0.01 for 10 epochs. The refusals are the IDK objective's fixed list, cycled by example index
(open-unlearning draws a line of `idk.jsonl` at random).

Each forget example carries both answers; its batch holds the refusals in rows `[0, B)` and the true answers
in rows `[B, 2B)` (harness.data.encode.collate), so one forward scores both.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from harness.config import ObjectiveOptions
from harness.data.batch import Batch
from harness.objectives.base import OBJECTIVES, TEXT, Objective, sequence_logprob
from harness.objectives.idk import IDK_ANSWERS


class IdkDPOOptions(ObjectiveOptions):
    """DPO's inverse temperature `beta`."""

    name: Literal["idkdpo"] = "idkdpo"
    beta: float = Field(0.1, gt=0)


def dpo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO on sequence log-probs laid out `[preferred; rejected]` (each half one row per example)."""
    win, lose = (logp - ref_logp).chunk(2)
    return (-2.0 / beta * F.logsigmoid(beta * (win - lose))).mean()


@OBJECTIVES.register("idkdpo")
class IdkDPO(Objective):
    """Prefer the refusal over the true answer, relative to the frozen model."""

    Options = IdkDPOOptions
    modalities = frozenset({TEXT})
    needs_reference = True
    forget_unit_mean = False

    def forget_answer(self, record: dict[str, Any], index: int) -> tuple[str, str]:
        return IDK_ANSWERS[index % len(IDK_ANSWERS)], record["answer"]

    def forget_loss(self, out: Any, batch: Batch, ref_out: Any | None) -> torch.Tensor:
        if ref_out is None:
            raise ValueError("IdkDPO needs the frozen model's outputs on the forget batch")
        logp, _ = sequence_logprob(out.logits, batch)
        with torch.no_grad():
            ref_logp, _ = sequence_logprob(ref_out.logits, batch)
        return dpo_loss(logp, ref_logp, self.options.beta)
