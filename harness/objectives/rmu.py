"""RMU, representation misdirection: steer forget-token activations at one layer toward a fixed random vector.

`L_forget = mean_i (1/|a_i|) sum_{t in a_i} mean_d (h_l(x_i)_t - c)^2` with `c = k u / ||u||`, `u ~ U[0, 1)^d`
drawn once (here in the preparation pass, from the run's seed, and checkpointed), and the retain term
`embed_diff`, the same squared distance between the model's and the frozen model's activations on retain
tokens (Li et al. 2024, WMDP, arXiv 2403.03218). `a_i` are example i's answer tokens, `h_l` the output of
decoder layer `layer` (`hidden_states[layer + 1]`). Reference: open-unlearning `src/trainer/unlearn/rmu.py`
(`compute_activation_loss`, `get_control_vector`, `EMBED_DIFF`) and `configs/trainer/RMU.yaml`:
layer 7 (`model.layers.7`), steering_coeff = 2, gamma (w_forget) = 1, alpha (w_retain) = 1, retain
`EMBED_DIFF`, every parameter trainable (here: the adapters on every MLP). The layer must lie below the
model's last one, whose `hidden_states` entry comes after the final norm. One difference: the reference divides
its per-example sums (shape [b]) by the token counts (shape [b, 1]), which broadcasts to a b x b matrix and gives
`mean_j S_j * mean_i 1/n_i`; here each example's sum is divided by its own count, the per-example mean its
comments describe (the two agree when every example has as many answer tokens).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from harness.config import ObjectiveOptions
from harness.data.batch import IGNORE, Batch
from harness.objectives.base import OBJECTIVES, TEXT, Objective
from harness.objectives.prepare import PrepareContext


class RMUOptions(ObjectiveOptions):
    """RMU's layer, steering coefficient and retain term (`embed_diff` by default)."""

    name: Literal["rmu"] = "rmu"
    retain_loss: Literal["embed_diff", "nll", "kl", "none"] = "embed_diff"
    layer: int = Field(7, ge=0, description="decoder layer whose output is steered (hidden_states[layer + 1])")
    steering_coeff: float = Field(2.0, gt=0)


def activation_loss(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`mean_i sum_t mask_it mean_d (h - target)^2 / sum_t mask_it` (open-unlearning's `compute_activation_loss`)."""
    sq = (h.float() - target.float()).pow(2).mean(-1) * mask
    return (sq.sum(-1) / mask.sum(-1).clamp_min(1)).mean()


@OBJECTIVES.register("rmu")
class RMU(Objective):
    """Misdirect the forget activations at one layer; keep the retain activations where they were."""

    Options = RMUOptions
    modalities = frozenset({TEXT})
    needs_hidden_states = True
    forget_unit_mean = False

    def __init__(self, options: RMUOptions) -> None:
        super().__init__(options)
        self.control: torch.Tensor | None = None

    @property
    def retain_needs_reference(self) -> bool:
        return self.options.retain_loss in ("embed_diff", "kl")

    @property
    def retain_unit_mean(self) -> bool:
        return self.options.retain_loss != "embed_diff"

    def prepare(self, ctx: PrepareContext) -> dict[str, torch.Tensor]:
        dim = ctx.model.config.hidden_size
        u = torch.rand(dim, generator=torch.Generator().manual_seed(ctx.seed), dtype=torch.float64)
        return {"control": (u / u.norm() * self.options.steering_coeff).float()}

    def apply_prepared(self, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        self.control = state["control"]

    def _hidden(self, out: Any) -> torch.Tensor:
        states = out.hidden_states
        if states is None:
            raise ValueError("RMU needs hidden states (output_hidden_states)")
        if self.options.layer >= len(states) - 2:
            raise ValueError(f"objective.layer {self.options.layer} is not below the model's last decoder layer "
                             f"({len(states) - 2}); the model has {len(states) - 1} layers")
        return states[self.options.layer + 1]

    def forget_loss(self, out: Any, batch: Batch, ref_out: Any | None) -> torch.Tensor:
        if self.control is None:
            raise ValueError("RMU's control vector is missing: its preparation pass did not run")
        h = self._hidden(out)
        mask = (batch.labels != IGNORE).to(h.dtype)  # type: ignore[attr-defined]
        return activation_loss(h, self.control.to(h.device).expand_as(h), mask)

    def retain_loss(self, out: Any, batch: Batch, ref_out: Any | None) -> torch.Tensor:
        if self.options.retain_loss != "embed_diff":
            return super().retain_loss(out, batch, ref_out)
        if ref_out is None:
            raise ValueError("RMU's embed_diff retain term needs the frozen model's outputs")
        h = self._hidden(out)
        mask = (batch.labels != IGNORE).to(h.dtype)  # type: ignore[attr-defined]
        return activation_loss(h, self._hidden(ref_out).detach(), mask)
