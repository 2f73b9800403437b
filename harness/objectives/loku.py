"""LoKU (Cha et al., ICLR 2025, arXiv 2408.06621): the inverted hinge loss (IHL) plus FILA, a Fisher-weighted
initialisation of the LoRA factors.

IHL: `L_forget = mean_t (1 + p(y_t) - max_{v != y_t} p(v))` over the forget tokens (a multiclass hinge on the
softmax, clamped at 0, which never binds), retain NLL, both weighted 1. Reference: csm9493/efficient-llm-unlearning
`TOFU/dataloader.py` (`loss_type == "IHL"`, `multiclass_hinge_loss` with alpha 1, crammer-singer margin).

FILA (reference `TOFU/measure_importance.py` and `TOFU/forget.py`, `importance_file`): one pass over the forget
set and as many retain batches accumulates `F_f = sum_b n_b g_b^2` and `F_r` (g_b: the gradient of the batch's
mean NLL w.r.t. each adapted weight, n_b its scored tokens); the importance `I = (F_f / n_f) / (1e-5 + F_r / n_r)`
weighs each output row by `w = sqrt(sum_j I_ij)`; the rank-r SVD `diag(w) W0 = U S V^T` gives
`A0 = (V sqrt(S / k))^T`, `B0 = diag(1 / (w + 1e-5)) U sqrt(S / k)`, so that `k B0 A0` is the row-weighted
rank-r approximation of `W0`, and the base becomes `W0 - k B0 A0`. `k` is the reference's LoRA scaling alpha/r.

How FILA composes with a bound (our choice): the factors use `k = d delta / d M at 0` (alpha/r for plain LoRA
and clip, exactly the reference; `scale * omega` for sine and tanh, where delta is linear near zero), and the
base becomes `W0 - delta(B0 A0)`, the bounded update itself, not its linearisation. So every bound starts as
an exact no-op (up to rounding), and the model is `W0 + delta(B A) - delta(B0 A0)`: under a bound
`|delta| <= c` its change from the target stays within `2c` elementwise. With clip, elements of `B0 A0` beyond
+-c start saturated (zero gradient). The SVD is the exact truncated `torch.linalg.svd` (the reference calls the
randomised `torch.svd_lowrank`), so every worker gets the same factors. The Fisher pass uses the run's global
batch (the reference measured with batch 4 and trained with 2 x 16).

LoKU's TOFU recipe (reference README / `run_forget.sh`, set in the job's `train`, not here): LoRA r = 32,
alpha = 2r, lr 1e-4 (Llama-2-7B; 2e-4 for Phi-1.5), 5 epochs, effective batch 32, weight decay 0.01.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from harness.adapters import adapted_layers, linear_slope, set_origin
from harness.config import ObjectiveOptions
from harness.data.batch import Batch
from harness.objectives.base import OBJECTIVES, Objective, mean_nll
from harness.objectives.prepare import FORGET, RETAIN, PrepareContext, base_weight_gradients

#: The reference's constants: Fisher ratio and row-weight regularisers.
FISHER_EPS = 1e-5
ROW_EPS = 1e-5


class LoKUOptions(ObjectiveOptions):
    """IHL with the FILA initialisation (`fila: false` trains IHL from the usual LoRA init)."""

    name: Literal["loku"] = "loku"
    fila: bool = True


def inverted_hinge(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-unit IHL `clamp(1 + p_y - max_{v != y} p_v, min=0)` for logits `[N, V]` and targets `[N]`."""
    p = torch.softmax(logits.float(), dim=-1)
    p_true = p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    p_other = p.scatter(-1, targets.unsqueeze(-1), float("-inf")).max(-1).values
    return (1.0 + p_true - p_other).clamp_min(0.0)


def fisher(ctx: PrepareContext, role: str) -> dict[str, torch.Tensor]:
    """`sum_b n_b g_b^2 / sum_b n_b` over one pass of `role` (as many batches as one pass over the forget set)."""
    total: dict[str, torch.Tensor] = {}
    units = 0.0
    for grads, n in base_weight_gradients(ctx, role, lambda out, batch: mean_nll(out.logits, batch)):
        for name, g in grads.items():
            total[name] = total.get(name, 0) + n * g.pow(2)
        units += n
    return {name: f / max(units, 1.0) for name, f in total.items()}


def fila_factors(w0: torch.Tensor, importance: torch.Tensor, rank: int, slope: float) -> tuple[torch.Tensor, ...]:
    """FILA's `(A0, B0)` for a weight `w0` (d_out x d_in) and its elementwise importance."""
    w0 = w0.float()
    rows = importance.float().sum(dim=1).sqrt()
    u, s, vh = torch.linalg.svd(rows[:, None] * w0, full_matrices=False)
    u, s, v = u[:, :rank], s[:rank] / slope, vh[:rank].t()
    a0 = (v * s.sqrt()).t()
    b0 = (1.0 / (rows + ROW_EPS))[:, None] * (u * s.sqrt())
    return a0.contiguous(), b0.contiguous()


@OBJECTIVES.register("loku")
class LoKU(Objective):
    """IHL on the forget set, NLL on retain, from FILA's Fisher-weighted start."""

    Options = LoKUOptions

    @property
    def moves_start(self) -> bool:
        return self.options.fila

    def forget_loss(self, out: Any, batch: Batch, ref_out: Any | None) -> torch.Tensor:
        logits, targets, mask = batch.units(out.logits)
        return inverted_hinge(logits[mask], targets[mask]).mean()

    def prepare(self, ctx: PrepareContext) -> dict[str, torch.Tensor]:
        if not self.options.fila:
            return {}
        if not ctx.has(RETAIN):
            raise ValueError("LoKU's FILA needs the retain set (objective.w_retain > 0 and a retain_loss)")

        f_forget, f_retain = fisher(ctx, FORGET), fisher(ctx, RETAIN)
        state = {}
        for name, layer in adapted_layers(ctx.model).items():
            importance = f_forget[name] / (FISHER_EPS + f_retain[name])
            a0, b0 = fila_factors(layer.base_weight(), importance, layer.r, linear_slope(layer))
            state[f"{name}.origin_A"], state[f"{name}.origin_B"] = a0, b0
        return state

    def apply_prepared(self, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        for name, layer in adapted_layers(model).items():
            if f"{name}.origin_A" in state:
                set_origin(layer, state[f"{name}.origin_A"], state[f"{name}.origin_B"])
