"""Each MIA statistic against a direct formula on fixed logits, and against open-unlearning's formulas
(locuslab/open-unlearning src/evals/metrics/mia/*.py, transcribed with torch as they compute them)."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

from harness.benchmarks import mia as M

#: Fixed logits of 5 scored positions over a 4-token vocabulary, and the scored tokens (the last one: EOS).
LOGITS = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 0.3, 0.4], [-2.0, 3.0, 0.0, 1.0],
                       [1.0, 1.0, 1.0, -3.0], [0.0, -1.0, 2.5, 0.5]], dtype=torch.float64)
TOKENS = torch.tensor([0, 3, 2, 1, 2])
VOCAB = torch.log_softmax(LOGITS, dim=-1)
LP = VOCAB[torch.arange(5), TOKENS]


def test_loss_is_the_mean_nll_over_every_token() -> None:
    rows = LOGITS.tolist()
    direct = -sum(math.log(math.exp(rows[i][t]) / sum(math.exp(v) for v in rows[i]))
                  for i, t in enumerate(TOKENS.tolist())) / 5
    assert M.loss_score(LP.numpy()) == pytest.approx(float(direct), abs=1e-12)


def test_zlib_divides_by_the_compressed_length() -> None:
    text = "Basil was born in Kuwait City."
    assert M.zlib_score(LP.numpy(), text) == pytest.approx(M.loss_score(LP.numpy()) / len(zlib.compress(text.encode())))


@pytest.mark.parametrize("k", [0.2, 0.4, 0.5, 1.0])
def test_min_k_is_the_mean_of_the_lowest_tokens_without_eos(k: float) -> None:
    body = LP[:-1].tolist()  # open-unlearning's tokenwise_logprobs drops the EOS prediction
    n = max(1, int(len(body) * k))
    assert M.min_k_score(LP.numpy(), k) == pytest.approx(-np.mean(sorted(body)[:n]), abs=1e-12)
    # open-unlearning min_k.py: sorted_vals = np.sort(lp); -np.mean(sorted_vals[:num_k])
    lp = LP[:-1].float().numpy()
    assert M.min_k_score(LP.numpy(), k) == pytest.approx(float(-np.mean(np.sort(lp)[:max(1, int(len(lp) * k))])),
                                                         abs=1e-6)


@pytest.mark.parametrize("k", [0.2, 0.5, 1.0])
def test_min_k_plus_plus_standardises_by_the_model_distribution(k: float) -> None:
    z = []
    for i in range(4):  # EOS dropped
        p = [math.exp(v) for v in VOCAB[i].tolist()]
        mu = sum(pi * v for pi, v in zip(p, VOCAB[i].tolist(), strict=True))
        var = sum(pi * v * v for pi, v in zip(p, VOCAB[i].tolist(), strict=True)) - mu * mu
        z.append((float(LP[i]) - mu) / math.sqrt(max(var, 1e-6)))
    n = max(1, int(4 * k))
    got = M.min_k_plus_plus_score(LP.numpy(), VOCAB.numpy(), k)
    assert got == pytest.approx(-sum(sorted(z)[:n]) / n, abs=1e-12)
    # open-unlearning min_k_plus_plus.py, with torch as there
    all_probs, target = VOCAB[:-1], LP[:-1]
    mu_t = (torch.exp(all_probs) * all_probs).sum(-1)
    sigma = torch.clamp((torch.exp(all_probs) * torch.square(all_probs)).sum(-1) - torch.square(mu_t), min=1e-6)
    scores = (target.numpy() - mu_t.numpy()) / torch.sqrt(sigma).numpy()
    assert got == pytest.approx(-np.mean(sorted(scores)[:n]), abs=1e-12)


def test_reference_is_the_loss_difference() -> None:
    ref = LP.numpy() - 0.3
    assert M.reference_score(LP.numpy(), ref) == pytest.approx(-0.3, abs=1e-12)


def test_gradnorm_is_the_mean_of_per_tensor_norms_of_the_loss_gradient() -> None:
    torch.manual_seed(0)
    w1, w2 = torch.randn(3, 4, requires_grad=True), torch.randn(4, requires_grad=True)
    x = torch.randn(4)
    loss = (w1 @ (x * w2)).logsumexp(0) - (w1 @ (x * w2))[1]
    loss.backward()
    norms = [float(w1.grad.norm(p=2)), float(w2.grad.norm(p=2))]
    direct = (math.sqrt(sum(g * g for g in w1.grad.flatten().tolist()))
              + math.sqrt(sum(g * g for g in w2.grad.tolist()))) / 2
    assert M.gradnorm_score(norms) == pytest.approx(direct, rel=1e-6)
    assert M.norm_order("inf") == math.inf and M.norm_order(2) == 2.0


def test_auc_labels_forget_0_and_holdout_1() -> None:
    forget, holdout = [0.1, 0.4, 0.35], [0.8, 0.2, 0.9, 0.5]
    # pairwise: P(holdout score > forget score) + 0.5 P(tie), the ROC AUC with holdout positive
    pairs = [(h > f) + 0.5 * (h == f) for h in holdout for f in forget]
    assert M.mia_auc(forget, holdout) == pytest.approx(sum(pairs) / len(pairs))
    assert M.mia_auc([0.0, 0.1], [1.0, 2.0]) == 1.0  # forget much more likely (lower loss): AUC 1
