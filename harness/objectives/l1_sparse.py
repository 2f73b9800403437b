"""l1-sparse (Jia et al., NeurIPS 2023, arXiv 2304.04934): fine-tuning on the retain set plus an l1 penalty
`gamma_t ||theta||_1` that decays linearly to 0 over the run.

Reference: OPTML-Group/Unlearn-Sparse `unlearn/FT.py` (`FT_l1`: `loss += current_alpha * l1_regularization(model)`,
`current_alpha = alpha * (1 - epoch / unlearn_epochs)`, l1 over every parameter) and its README recipe
(`--unlearn FT_prune --unlearn_lr 0.01 --unlearn_epochs 10`, `--alpha` left to the user; the parser's 0.2
default is another method's noise level). The reference leaves gamma to a search; 5e-4 here is a starting
point, to tune. Decay per optimizer step here, per epoch there.

On adapters (our choice, `on`): `weight` (default) puts the penalty on the adapted layers' weights
`W = W0 + M * delta(B A)`, the reference's `||theta||_1` restricted to the only weights that move (its
gradient reaches the adapter through delta); `update` puts it on the change `delta W` alone, a sparse
update. Both sum over elements, as the reference does.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from harness.adapters import adapted_layers
from harness.config import ObjectiveOptions
from harness.objectives.base import OBJECTIVES
from harness.objectives.ft import FineTune


class L1SparseOptions(ObjectiveOptions):
    """The l1 weight `gamma` (linearly decayed to 0) and what it applies to."""

    name: Literal["l1_sparse"] = "l1_sparse"
    w_forget: float = Field(0.0, ge=0)
    gamma: float = Field(5e-4, ge=0)
    on: Literal["weight", "update"] = "weight"


def l1_of_adapted(model: torch.nn.Module, on: str) -> torch.Tensor:
    """`sum ||W||_1` (on = weight) or `sum ||delta W||_1` (on = update) over the adapted layers (differentiable)."""

    terms = [(layer.effective_weight() if on == "weight" else layer.delta_weight()).abs().sum()
             for layer in adapted_layers(model).values()]
    return torch.stack(terms).sum()


@OBJECTIVES.register("l1_sparse")
class L1Sparse(FineTune):
    """FT plus a decaying l1 penalty on the adapted weights."""

    Options = L1SparseOptions

    def penalty(self, model: torch.nn.Module, progress: float) -> torch.Tensor:
        return self.options.gamma * (1.0 - progress) * l1_of_adapted(model, self.options.on)
