"""IDK: descend on a refusal answer for each forget question (TOFU's `idk` baseline).

Reference: locuslab/tofu `dataloader.py` (`CustomTrainerForgetting`, loss type `idk`: the forget answers are
replaced by lines of `data/idontknow.jsonl`, trained with the plain LM loss) and open-unlearning's
`IdkNLL`. The refusals here are a fixed list, cycled by example index.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from harness.config import ObjectiveOptions
from harness.data.batch import Batch
from harness.objectives.base import OBJECTIVES, TEXT, Objective, mean_nll

IDK_ANSWERS = (
    "I don't know.",
    "I'm not sure about that.",
    "I have no information on that.",
    "That is not something I know.",
    "I cannot answer that.",
)


class IDKOptions(ObjectiveOptions):
    """IDK has no options of its own."""

    name: Literal["idk"] = "idk"


@OBJECTIVES.register("idk")
class IDontKnow(Objective):
    """NLL toward a refusal on the forget questions."""

    Options = IDKOptions
    modalities = frozenset({TEXT})

    def forget_loss(self, out: Any, batch: Batch, ref_out: Any | None) -> torch.Tensor:
        return mean_nll(out.logits, batch)

    def forget_answer(self, record: dict[str, Any], index: int) -> str:
        return IDK_ANSWERS[index % len(IDK_ANSWERS)]
