"""Objectives against direct computations on small hand-made logits."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from harness.objectives import (
    IGNORE,
    OBJECTIVES,
    ImageBatch,
    TokenBatch,
    kl_to_reference,
    make_objective,
    mean_nll,
    sequence_logprob,
)
from harness.spec import objective_spec


def _batch() -> tuple[torch.Tensor, TokenBatch]:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    ids = torch.randint(0, 7, (2, 5))
    labels = ids.clone()
    labels[:, :2] = IGNORE  # prompt
    labels[1, 4] = IGNORE  # padding
    return logits, TokenBatch(ids, torch.ones_like(ids), labels)


def out(logits: torch.Tensor) -> SimpleNamespace:
    """Model outputs as objectives see them."""
    return SimpleNamespace(logits=logits)


def _direct_token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> list[list[float]]:
    out = []
    for b in range(labels.size(0)):
        row = []
        for t in range(1, labels.size(1)):
            if labels[b, t] != IGNORE:
                row.append(float(torch.log_softmax(logits[b, t - 1], -1)[labels[b, t]]))
        out.append(row)
    return out


def test_mean_nll_and_sequence_logprob_match_a_direct_loop() -> None:
    logits, batch = _batch()
    direct = _direct_token_logprobs(logits, batch.labels)
    flat = [x for row in direct for x in row]
    assert float(mean_nll(logits, batch)) == pytest.approx(-sum(flat) / len(flat), rel=1e-5)
    logp, n = sequence_logprob(logits, batch)
    assert logp.tolist() == pytest.approx([sum(r) for r in direct], rel=1e-5)
    assert n.tolist() == [len(r) for r in direct]


def test_ga_and_gd_forget_term_is_negative_nll() -> None:
    logits, batch = _batch()
    for name in ("ga", "gd"):
        obj = make_objective(objective_spec(name=name))
        assert float(obj.forget_loss(out(logits), batch, None)) == pytest.approx(-float(mean_nll(logits, batch)))
    assert make_objective(objective_spec(name="ga")).options.retain_loss == "none"
    assert make_objective(objective_spec(name="gd")).options.retain_loss == "nll"


def test_npo_matches_its_formula() -> None:
    logits, batch = _batch()
    ref = logits + 0.3 * torch.randn_like(logits)
    obj = make_objective(objective_spec(name="npo", beta=0.1))
    direct = _direct_token_logprobs(logits, batch.labels)
    direct_ref = _direct_token_logprobs(ref, batch.labels)
    expected = sum(
        -(2 / 0.1) * math.log(1 / (1 + math.exp(0.1 * (sum(a) - sum(r))))) for a, r in zip(direct, direct_ref)
    ) / 2
    assert float(obj.forget_loss(out(logits), batch, out(ref))) == pytest.approx(expected, rel=1e-5)
    # at the reference the NPO loss is (2/beta) log 2
    assert float(obj.forget_loss(out(logits), batch, out(logits))) == pytest.approx(2 / 0.1 * math.log(2), rel=1e-5)


def test_simnpo_matches_its_formula() -> None:
    logits, batch = _batch()
    obj = make_objective(objective_spec(name="simnpo", beta=4.5, delta=0.5))
    direct = _direct_token_logprobs(logits, batch.labels)
    expected = sum(
        -(2 / 4.5) * math.log(1 / (1 + math.exp(-4.5 * (-sum(r) / len(r) - 0.5)))) for r in direct
    ) / 2
    assert float(obj.forget_loss(out(logits), batch, None)) == pytest.approx(expected, rel=1e-5)


def test_kl_retain_term_matches_torch_kl_div() -> None:
    logits, batch = _batch()
    ref = logits + torch.randn_like(logits)
    assert float(kl_to_reference(logits, logits, batch)) == pytest.approx(0.0, abs=1e-6)
    mask = batch.labels[:, 1:] != IGNORE
    per_tok = F.kl_div(torch.log_softmax(logits[:, :-1], -1), torch.log_softmax(ref[:, :-1], -1),
                       log_target=True, reduction="none").sum(-1)
    assert float(kl_to_reference(logits, ref, batch)) == pytest.approx(float(per_tok[mask].mean()), rel=1e-5)


def test_idk_swaps_in_refusals() -> None:
    obj = make_objective(objective_spec(name="idk"))
    answers = {obj.forget_answer({"answer": "x"}, i) for i in range(10)}
    assert "x" not in answers and len(answers) > 1


def test_image_batches_score_one_unit_per_image() -> None:
    torch.manual_seed(1)
    logits = torch.randn(4, 10)
    labels = torch.tensor([3, 0, 9, 3])
    batch = ImageBatch(torch.zeros(4, 3, 8, 8), labels)
    assert float(mean_nll(logits, batch)) == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-6)
    logp, n = sequence_logprob(logits, batch)
    assert logp.tolist() == pytest.approx(torch.log_softmax(logits, -1)[range(4), labels].tolist(), rel=1e-6)
    assert n.tolist() == [1, 1, 1, 1] and batch.n_scored == 4
    ga = make_objective(objective_spec(name="ga"))
    assert float(ga.forget_loss(out(logits), batch, None)) == pytest.approx(-float(F.cross_entropy(logits, labels)))


def test_every_objective_is_registered_with_its_options_and_modalities() -> None:
    assert {"ga", "gd", "npo", "simnpo", "idk"} <= set(OBJECTIVES.names())
    for name in OBJECTIVES.names():
        cls = OBJECTIVES.get(name)
        assert cls.Options.model_fields["name"].default == name
        assert cls.modalities <= {"text", "image"} and cls.modalities
    assert OBJECTIVES.get("idk").modalities == {"text"}
