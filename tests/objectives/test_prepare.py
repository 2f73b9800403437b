"""Preparation passes on one worker: the gradient pass, SalUn's saliency mask and LoKU's FILA start, each against
an independent computation of its defining property."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from harness.adapters import adapted_layers, attach
from harness.config import AdapterSpec
from harness.data.encode import BatchStream, collate
from harness.models.text import build_builtin
from harness.objectives import FORGET, RETAIN, PrepareContext, base_weight_gradients, make_objective, mean_nll
from harness.objectives.loku import FISHER_EPS, ROW_EPS, fila_factors
from harness.objectives.salun import saliency_masks
from harness.spec import objective_spec

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB, BATCH = 40, 4


def _examples(seed: int, n: int) -> list[tuple[list[int], int]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(3, VOCAB, (int(torch.randint(5, 9, (1,), generator=g)),), generator=g).tolist(), 2)
            for _ in range(n)]


FORGET_SET, RETAIN_SET = _examples(0, 10), _examples(1, 14)


def _streams(seed: int) -> dict:
    col = lambda ex: collate(ex, pad_id=0)  # noqa: E731
    return {FORGET: lambda: iter(BatchStream(FORGET_SET, BATCH, col, seed)),
            RETAIN: lambda: iter(BatchStream(RETAIN_SET, BATCH, col, seed + 1))}


def _adapted(bound: str = "sine", seed: int = 0) -> torch.nn.Module:
    model = build_builtin("tiny-llama", VOCAB, seed=0)
    attach(model, AdapterSpec(bound=bound, rank=4, alpha=8.0, omega=5.0), seed=seed)
    return model


def _ctx(model: torch.nn.Module, seed: int = 0) -> PrepareContext:
    return PrepareContext(model, torch.device("cpu"), seed, streams=_streams(seed),
                          epoch_batches=int(np.ceil(len(FORGET_SET) / BATCH)))


def _plain_grads(role: str, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Per global batch, d mean NLL / d W of an unadapted copy (W0 trainable), by plain autograd."""
    model = build_builtin("tiny-llama", VOCAB, seed=0)
    names = list(adapted_layers(_adapted()))
    weights = {n: model.get_submodule(n).weight for n in names}
    out = []
    for batch in _ctx(model, seed).batches(role):
        loss = mean_nll(model(**batch.model_inputs()).logits, batch)
        out.append(dict(zip(names, torch.autograd.grad(loss, list(weights.values())))))
    return out


def test_base_weight_gradients_equal_plain_autograd_on_the_unadapted_model() -> None:
    got = list(base_weight_gradients(_ctx(_adapted()), FORGET, lambda o, b: mean_nll(o.logits, b)))
    want = _plain_grads(FORGET)
    assert len(got) == len(want) == 3  # one pass over 10 examples in batches of 4
    for (grads, units), plain, batch in zip(got, want, _ctx(_adapted()).batches(FORGET)):
        assert units == batch.n_scored
        for name in plain:
            torch.testing.assert_close(grads[name], plain[name], atol=1e-6, rtol=1e-5)


def test_saliency_masks_keep_exactly_the_top_fraction() -> None:
    g = torch.Generator().manual_seed(0)
    sal = {"a": torch.rand(6, 5, generator=g), "b": torch.rand(3, 7, generator=g)}
    for fraction in (0.1, 0.5, 0.77, 1.0):
        masks = saliency_masks(sal, fraction)
        kept = torch.cat([sal[k][masks[k]] for k in sal])
        dropped = torch.cat([sal[k][~masks[k]] for k in sal])
        assert kept.numel() == int(51 * fraction)
        assert dropped.numel() == 0 or kept.min() > dropped.max()


def test_salun_mask_is_the_top_half_of_the_summed_forget_gradient_and_restricts_the_update() -> None:
    model = _adapted()
    obj = make_objective(objective_spec(name="salun"))
    state = obj.prepare(_ctx(model))
    plain = _plain_grads(FORGET)
    summed = {n: sum(g[n] for g in plain) for n in adapted_layers(model)}
    flat = torch.cat([summed[n].abs().flatten() for n in summed])
    threshold = torch.sort(flat, descending=True).values[int(flat.numel() * 0.5) - 1]
    for name in summed:
        mask = state[f"{name}.update_mask"]
        assert mask.dtype == torch.bool
        assert torch.equal(mask, summed[name].abs() >= threshold)
    assert sum(int(m.sum()) for m in state.values()) == int(flat.numel() * 0.5)
    obj.apply_prepared(model, state)
    for name, layer in adapted_layers(model).items():
        with torch.no_grad():
            layer.lora_B.weight.normal_()
        unchanged = ~state[f"{name}.update_mask"]
        assert float(layer.delta_weight().detach()[unchanged].abs().max()) == 0.0


def _fisher(role: str, n_batches: int) -> dict[str, torch.Tensor]:
    """sum_b n_b g_b^2 / sum_b n_b, directly."""
    grads = _plain_grads(role)[:n_batches]
    counts = [b.n_scored for b in list(_ctx(_adapted()).batches(role))[:n_batches]]
    return {n: sum(c * g[n] ** 2 for c, g in zip(counts, grads)) / sum(counts) for n in grads[0]}


@pytest.fixture(scope="module")
def fishers() -> None:
    # as many retain batches as one pass over the forget set, as the reference pairs them
    FISHERS.update({FORGET: _fisher(FORGET, 3), RETAIN: _fisher(RETAIN, 3)})


FISHERS: dict[str, dict[str, torch.Tensor]] = {}


@pytest.mark.usefixtures("fishers")
@pytest.mark.parametrize("bound", ["none", "sine", "tanh"])
def test_fila_factors_are_the_fisher_weighted_svd_and_the_start_is_a_no_op(bound: str) -> None:
    model = _adapted(bound)
    pristine = build_builtin("tiny-llama", VOCAB, seed=0).eval()
    obj = make_objective(objective_spec(name="loku"))
    state = obj.prepare(_ctx(model))
    f_forget, f_retain = FISHERS[FORGET], FISHERS[RETAIN]
    for name, layer in adapted_layers(model).items():
        w0 = layer.base_weight().detach().double().numpy()
        importance = (f_forget[name] / (FISHER_EPS + f_retain[name])).double().numpy()
        rows = np.sqrt(importance.sum(axis=1))
        u, s, vt = np.linalg.svd(rows[:, None] * w0, full_matrices=False)
        best = (u[:, :4] * s[:4]) @ vt[:4]  # Eckart-Young: the best rank-4 approximation of diag(w) W0
        slope = layer.bound.scale * (5.0 if bound != "none" else 1.0)
        a0, b0 = state[f"{name}.origin_A"].double(), state[f"{name}.origin_B"].double()
        np.testing.assert_allclose(slope * (b0 @ a0).numpy(), best / (rows + ROW_EPS)[:, None], atol=2e-5, rtol=1e-3)
        # the factors split sqrt(S / k) evenly: A0 A0^T = B0^T diag(w + eps)^2 B0
        np.testing.assert_allclose((a0 @ a0.t()).numpy(), (b0.t() * (rows + ROW_EPS) ** 2 @ b0).numpy(),
                                   atol=1e-4, rtol=1e-3)
    obj.apply_prepared(model, state)
    with torch.no_grad():
        ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(9))
        torch.testing.assert_close(model.eval()(ids).logits, pristine(ids).logits, atol=1e-5, rtol=1e-4)
    for name, layer in adapted_layers(model).items():
        assert torch.equal(layer.lora_A.weight, state[f"{name}.origin_A"].to(layer.lora_A.weight.dtype))


def test_fila_factors_match_the_reference_formula_on_a_small_matrix() -> None:
    # csm9493/efficient-llm-unlearning TOFU/forget.py: row_importance = importance.sum(dim=1).sqrt();
    # U, S, V = svd(row_importance[:, None] * W); S = S / scaling; A = (V sqrt(S))^T;
    # B = (1 / (row_importance + 1e-5))[:, None] * (U sqrt(S)); residual W - scaling * B A.
    g = torch.Generator().manual_seed(0)
    w0, imp = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.rand(6, 5, generator=g, dtype=torch.float64)
    a0, b0 = fila_factors(w0, imp, rank=2, slope=2.0)
    rows = imp.sum(1).sqrt()
    u, s, vh = torch.linalg.svd(rows[:, None] * w0, full_matrices=False)
    s = s[:2] / 2.0
    torch.testing.assert_close(a0.double(), (vh[:2].t() * s.sqrt()).t(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(b0.double(), (1 / (rows + 1e-5))[:, None] * (u[:, :2] * s.sqrt()), atol=1e-6, rtol=1e-5)


def test_fila_needs_the_retain_set_and_can_be_switched_off() -> None:
    model = _adapted()
    ctx = _ctx(model)
    del ctx.streams[RETAIN]
    with pytest.raises(ValueError, match="retain"):
        make_objective(objective_spec(name="loku")).prepare(ctx)
    off = make_objective(objective_spec(name="loku", fila=False))
    assert off.prepare(ctx) == {} and not off.moves_start


def test_preparation_is_deterministic_and_leaves_the_training_streams_alone() -> None:
    a, b = _adapted(), copy.deepcopy(_adapted())
    s1 = make_objective(objective_spec(name="salun")).prepare(_ctx(a))
    s2 = make_objective(objective_spec(name="salun")).prepare(_ctx(b))
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert all(not layer.base_layer.weight.requires_grad for layer in adapted_layers(a).values())
