"""SalUn, saliency unlearning (Fan et al., ICLR 2024, arXiv 2310.12508): random labelling restricted to the
weights most salient for the forget set.

The mask keeps the top `fraction` of weights by `|sum_b grad_W L_f(b)|`, `L_f` the forget set's cross-entropy
on its true labels summed over one pass of batches, ranked globally over every adapted layer (exactly
`int(fraction * N)` of the N weights). Reference: OPTML-Group/Unlearn-Saliency
`Classification/generate_mask.py` (`save_gradient_ratio`: gradients of `-criterion(output, target)` summed over
the forget loader in eval mode, `abs`, one global ranking, `hard_dict` = rank < `int(len * ratio)`) and
`Classification/unlearn/RL.py` (RL with the mask applied to the gradients); README: `--mask_path
mask/with_0.5.pt`, so fraction = 0.5, and RL on top of it.

With bounded adapters the mask sits on the dense update: `W = W0 + M * delta(B A)` (harness/adapters/extras.py),
computed once in the preparation pass from the gradient w.r.t. `W0` (= the gradient w.r.t. `W`, the reference's
parameter), so weights outside the mask stay exactly at `W0`, as the reference's masked gradients keep them.
The ranking covers the adapted (MLP) layers, the only weights that move; the reference ranks every parameter.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from harness.adapters import adapted_layers, set_update_mask
from harness.config import ObjectiveOptions
from harness.objectives.base import OBJECTIVES, mean_nll
from harness.objectives.prepare import FORGET, PrepareContext, base_weight_gradients
from harness.objectives.rl import RandomLabels


class SalUnOptions(ObjectiveOptions):
    """The fraction of weights the saliency mask keeps."""

    name: Literal["salun"] = "salun"
    fraction: float = Field(0.5, gt=0, le=1, description="share of the adapted weights left free to change")

    search_space: ClassVar[dict[str, dict[str, Any]]] = {"objective.fraction": {"uniform": [0.1, 0.9]}}


def saliency_masks(saliency: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """Boolean masks keeping exactly `int(fraction * N)` of all N entries, those of largest saliency, ranked
    over every tensor together."""
    flat = torch.cat([s.flatten() for s in saliency.values()])
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    keep[torch.topk(flat, int(flat.numel() * fraction), sorted=False).indices] = True
    masks, start = {}, 0
    for name, s in saliency.items():
        masks[name] = keep[start : start + s.numel()].view(s.shape)
        start += s.numel()
    return masks


@OBJECTIVES.register("salun")
class SalUn(RandomLabels):
    """Random labelling through an update mask on the weights most salient for the forget set."""

    Options = SalUnOptions

    def prepare(self, ctx: PrepareContext) -> dict[str, torch.Tensor]:
        was_training = ctx.model.training
        ctx.model.eval()  # as the reference's mask pass
        total: dict[str, torch.Tensor] = {}
        for grads, _ in base_weight_gradients(ctx, FORGET, lambda out, batch: -mean_nll(out.logits, batch)):
            for name, g in grads.items():
                total[name] = total[name] + g if name in total else g
        ctx.model.train(was_training)
        masks = saliency_masks({name: g.abs() for name, g in total.items()}, self.options.fraction)
        return {f"{name}.update_mask": m for name, m in masks.items()}

    def apply_prepared(self, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        for name, layer in adapted_layers(model).items():
            set_update_mask(layer, state[f"{name}.update_mask"])
