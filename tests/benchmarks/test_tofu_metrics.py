"""TOFU metrics against independent computations on small hand-made inputs, plus split scoring end to end."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
import scipy.stats
import torch
from transformers import PreTrainedTokenizerFast

from harness.benchmarks.text_metrics import rouge_l_f1, rouge_l_recall
from harness.benchmarks.tofu import metrics as M
from harness.benchmarks.tofu.score import (
    SplitScores,
    aggregate_tofu,
    answer_text,
    prompt_for,
    score_tofu_split,
    split_kind,
)
from harness.core.stats import bootstrap_ci
from harness.data.requests import Backend, GenRequest, LoglikRequest
from harness.data.text import encode_pair
from harness.models.text import build_builtin
from harness.models.tokenizer import train_bpe_tokenizer
from harness.scoring.hf_backend import HFBackend

# ---- metric formulas ------------------------------------------------------------------------------


def test_prob_qa() -> None:
    np.testing.assert_allclose(M.prob_qa([0.0, math.log(2), 1.5]), [1.0, 0.5, math.exp(-1.5)])


def test_prob_mc_hand_computed() -> None:
    gt = [math.log(2), math.log(4)]                       # p_a = 1/2, 1/4
    pert = [[math.log(4), math.log(4)], [math.log(2), math.log(8)]]  # p = (1/4, 1/4), (1/2, 1/8)
    want = [0.5 / (0.5 + 0.25 + 0.25), 0.25 / (0.25 + 0.5 + 0.125)]
    np.testing.assert_allclose(M.prob_mc(gt, pert), want)


def test_truth_ratio_R_is_geomean_ratio() -> None:
    base = np.array([0.7, 2.0])
    pert = np.array([[1.0, 2.0, 3.0], [0.5, 0.5, 2.0]])
    p_base, p_pert = np.exp(-base), np.exp(-pert)
    geomean = np.prod(p_pert, axis=1) ** (1 / 3)
    np.testing.assert_allclose(M.truth_ratio_R(base, pert), geomean / p_base)


def test_truth_ratio_stats_hand_computed() -> None:
    R = [0.5, 2.0, 1.0, 0.25]
    assert M.truth_ratio_stat(R, forget=True) == pytest.approx((0.5 + 0.5 + 1.0 + 0.25) / 4)
    assert M.truth_ratio_stat(R, forget=False) == pytest.approx((0.5 + 0.0 + 0.0 + 0.75) / 4)


def test_truth_ratio_stat_matches_tofu_aggregate_form() -> None:
    """TOFU aggregates curr = exp(pert - para) = 1/R: forget min(curr, 1/curr), else max(0, 1 - 1/curr)."""
    rng = np.random.default_rng(1)
    para, pert = rng.uniform(0.5, 3, 20), rng.uniform(0.5, 3, (20, 5))
    curr = np.exp(pert.mean(-1) - para)
    R = M.truth_ratio_R(para, pert)
    assert M.truth_ratio_stat(R, True) == pytest.approx(np.mean(np.minimum(curr, 1 / curr)))
    assert M.truth_ratio_stat(R, False) == pytest.approx(np.mean(np.maximum(0, 1 - 1 / curr)))


def test_forget_quality_equals_ks_on_inverse_ratio() -> None:
    rng = np.random.default_rng(0)
    r_unlearn, r_retain = np.exp(rng.normal(0.3, 0.5, 40)), np.exp(rng.normal(0.0, 0.5, 40))
    tofu_form = scipy.stats.ks_2samp(1 / r_unlearn, 1 / r_retain).pvalue
    assert M.forget_quality(r_unlearn, r_retain) == pytest.approx(tofu_form, rel=1e-12)
    assert M.forget_quality(r_retain, r_retain) == pytest.approx(1.0)


def _utility_values(xs: Sequence[float]) -> dict[tuple[str, str], float]:
    keys = [(s, m) for s in ("retain90", "real_authors", "world_facts") for m in M.UTILITY_METRICS]
    return dict(zip(keys, xs))


def test_model_utility_is_harmonic_mean() -> None:
    xs = [0.9, 0.4, 0.6, 0.8, 0.7, 0.5, 0.3, 0.95, 0.2]
    splits = ("retain90", "real_authors", "world_facts")
    assert M.model_utility(_utility_values(xs), splits) == pytest.approx(9 / sum(1 / x for x in xs))
    assert M.model_utility(_utility_values([*xs[:-1], 0.0]), splits) == 0.0
    with pytest.raises(ValueError, match="missing"):
        M.model_utility(_utility_values(xs[:-1]), splits)


# ---- text metrics ---------------------------------------------------------------------------------


def _lcs(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def test_rouge_l_against_hand_lcs() -> None:
    ref, pred = "the cat sat on a mat", "a cat sat in the red mat today"
    r, p = ref.split(), pred.split()
    lcs = _lcs(r, p)  # cat sat mat
    assert lcs == 3
    assert rouge_l_recall(ref, pred) == pytest.approx(lcs / len(r))
    prec, rec = lcs / len(p), lcs / len(r)
    assert rouge_l_f1(ref, pred) == pytest.approx(2 * prec * rec / (prec + rec))
    # lowercased, punctuation dropped
    assert rouge_l_recall("Paris, France.", "paris france") == pytest.approx(1.0)


def test_bootstrap_ci() -> None:
    x = np.random.default_rng(3).normal(1.0, 1.0, 50)
    low, high = bootstrap_ci(x, 500, seed=7)
    assert low < x.mean() < high
    assert (low, high) == bootstrap_ci(x, 500, seed=7)
    assert (low, high) != bootstrap_ci(x, 500, seed=8)
    assert all(math.isnan(v) for v in bootstrap_ci(x, 0, seed=7))
    assert all(math.isnan(v) for v in bootstrap_ci([1.0], 100, seed=7))


def _numpy_percentile_bootstrap(x: np.ndarray, n_resamples: int, seed: int, chunk: int) -> tuple[float, float]:
    """The interval by hand: resample indices from default_rng(seed) in chunks, means, 2.5/97.5 percentiles."""
    rng = np.random.default_rng(seed)
    means = np.concatenate([x[rng.integers(0, x.size, size=(min(chunk, n_resamples - s), x.size))].mean(axis=1)
                            for s in range(0, n_resamples, chunk)])
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


@pytest.mark.parametrize("size,n_resamples", [(2, 7), (50, 1000), (3000, 1500)])
def test_bootstrap_ci_equals_a_numpy_percentile_bootstrap(size: int, n_resamples: int) -> None:
    # The same Generator draws the same resamples in the same batches (2M indices at most; 3000 values
    # give batches of 666, so the last case spans three), so the two intervals agree to rounding.
    x = np.random.default_rng(size).exponential(1.0, size)
    expected = _numpy_percentile_bootstrap(x, n_resamples, seed=11, chunk=max(1, 2_000_000 // size))
    assert bootstrap_ci(x, n_resamples, seed=11) == pytest.approx(expected, rel=1e-12, abs=1e-12)


# ---- split scoring --------------------------------------------------------------------------------

CORPUS = [
    "Question: Where was the author born?\nAnswer: The author was born in Paris.",
    "Question: What genre does she write?\nAnswer: She writes science fiction novels.",
    "He was born in London. She writes crime stories. They write poems about the sea.",
]


def make_tokenizer() -> PreTrainedTokenizerFast:
    """The harness's byte-level BPE on the tiny corpus: <pad>=0, <bos>=1, <eos>=2, <unk>=3, BOS prepended."""
    return train_bpe_tokenizer(CORPUS, 300)


RECORDS = [
    {"question": "Where was the author born?", "answer": "The author was born in Paris.",
     "paraphrased_answer": "Paris is where the author was born.",
     "perturbed_answer": ["The author was born in London.", "He was born in Rome.", "Born in Oslo."]},
    {"question": "What genre does she write?", "answer": "She writes science fiction novels.",
     "paraphrased_answer": "Her novels are science fiction.",
     "perturbed_answer": ["She writes crime stories.", "Poems about the sea.", "She writes cookbooks."]},
]


@pytest.fixture(scope="module")
def setup() -> tuple[PreTrainedTokenizerFast, torch.nn.Module]:
    tok = make_tokenizer()
    return tok, build_builtin("tiny-llama", len(tok), seed=0).eval()


def _direct_avg_loss(model: torch.nn.Module, tok: PreTrainedTokenizerFast, prompt: str, answer: str) -> float:
    ids, n_ctx = encode_pair(tok, prompt, answer)
    with torch.no_grad():
        lp = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)[n_ctx - 1:-1]
    return float(-lp.gather(-1, torch.tensor(ids[n_ctx:])[:, None]).mean())


def test_prompt_and_answer_convention() -> None:
    assert prompt_for("Who?", "plain") == "Question: Who?\nAnswer:"
    assert answer_text("Me.") == " Me."
    assert [split_kind(s) for s in ("forget10", "retain90", "real_authors", "world_facts")] == [
        "forget", "retain", "mc", "mc"]


def test_score_split_prob_and_R_match_direct_loop(setup) -> None:
    tok, model = setup
    backend = HFBackend(model, tok, batch_size=4, device="cpu")
    sc = score_tofu_split(backend, "forget10", RECORDS, "forget", "plain", tok, max_new_tokens=6)
    prompt = "Question: Where was the author born?\nAnswer:"
    gt = _direct_avg_loss(model, tok, prompt, " The author was born in Paris.")
    assert sc.prob[0] == pytest.approx(math.exp(-gt), rel=1e-5)
    para = _direct_avg_loss(model, tok, prompt, " Paris is where the author was born.")
    pert = [_direct_avg_loss(model, tok, prompt, " " + a) for a in RECORDS[0]["perturbed_answer"]]
    assert sc.truth_ratio[0] == pytest.approx(math.exp(para - np.mean(pert)), rel=1e-5)
    assert sc.prob.shape == sc.truth_ratio.shape == sc.rouge_l_recall.shape == (2,)
    assert [g[1] for g in sc.generations] == [r["answer"] for r in RECORDS]

    mc = score_tofu_split(backend, "real_authors", RECORDS, "mc", "plain", tok, max_new_tokens=6)
    p_a, p_j = math.exp(-gt), np.exp(-np.array(pert))
    assert mc.prob[0] == pytest.approx(p_a / (p_a + p_j.sum()), rel=1e-5)
    assert mc.truth_ratio[0] == pytest.approx(math.exp(gt - np.mean(pert)), rel=1e-5)


class _CountingBackend(Backend):
    """Fake backend: fixed log-probs, records how often each method is called."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def loglikelihood(self, requests: Sequence[LoglikRequest]) -> list[np.ndarray]:
        self.calls.append(("loglikelihood", len(requests)))
        return [np.full(len(r.continuation.split()) + 1, -0.1 * len(r.continuation)) for r in requests]

    def generate(self, requests: Sequence[GenRequest]) -> list[str]:
        self.calls.append(("generate", len(requests)))
        assert all(r.stop == ("\nQuestion:",) for r in requests)
        return [" The author was born in Paris.", " I do not know."]


def test_one_call_per_request_type() -> None:
    fake = _CountingBackend()
    sc = score_tofu_split(fake, "forget10", RECORDS, "forget", "plain", None, max_new_tokens=8)
    assert fake.calls == [("loglikelihood", 2 * (1 + 1 + 3)), ("generate", 2)]
    assert sc.rouge_l_recall[0] == pytest.approx(1.0)
    fake = _CountingBackend()
    score_tofu_split(fake, "world_facts", RECORDS, "mc", "plain", None, max_new_tokens=8)
    assert fake.calls[0] == ("loglikelihood", 2 * (1 + 3))  # base = answer, scored once


def _scores(split: str, kind: str, prob, R, rouge) -> SplitScores:
    n = len(prob)
    return SplitScores(split, kind, np.asarray(prob, float), np.asarray(R, float), np.asarray(rouge, float),
                       np.zeros(n), np.zeros(n), np.zeros((n, 3)))


def test_aggregate_tofu() -> None:
    by_split = {
        "forget10": _scores("forget10", "forget", [0.5, 0.7], [0.5, 2.0], [0.2, 0.4]),
        "retain90": _scores("retain90", "retain", [0.8, 0.6], [0.5, 0.25], [0.9, 0.7]),
        "real_authors": _scores("real_authors", "mc", [0.4, 0.6], [0.5, 1.5], [0.5, 0.5]),
        "world_facts": _scores("world_facts", "mc", [0.3, 0.5], [0.2, 0.4], [1.0, 0.8]),
    }
    retain_R = np.array([1.0, 1.2, 0.9])
    rows = aggregate_tofu(by_split, retain_R, "forget10", n_resamples=50, seed=0)
    got = {(r["split"], r["metric"]): r["value"] for r in rows}
    assert got[("forget10", "truth_ratio")] == pytest.approx(0.5)
    assert got[("retain90", "truth_ratio")] == pytest.approx((0.5 + 0.75) / 2)
    assert got[("real_authors", "truth_ratio")] == pytest.approx(0.25)
    assert got[("forget10", "forget_quality")] == pytest.approx(
        scipy.stats.ks_2samp([0.5, 2.0], retain_R).pvalue)
    utility = [got[(s, m)] for s in ("retain90", "real_authors", "world_facts") for m in M.UTILITY_METRICS]
    assert got[("all", "model_utility")] == pytest.approx(9 / sum(1 / x for x in utility))
    assert all("ci_low" in r for r in rows if r["metric"] in ("prob", "rouge_l_recall", "truth_ratio"))
    partial = aggregate_tofu({"forget10": by_split["forget10"]}, None, "forget10")
    assert {r["metric"] for r in partial} == {"prob", "rouge_l_recall", "truth_ratio"}


def test_chat_template_prompt_drops_textual_bos() -> None:
    tok = make_tokenizer()
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    prompt = prompt_for("Who?", "chat_template", tok)
    assert prompt == "<|user|>Who?<|assistant|>"
    assert answer_text("Me.", "chat_template") == "Me."
    ids, _ = encode_pair(tok, prompt, "Me.")
    assert ids.count(tok.bos_token_id) == 1


def test_truth_ratio_follows_tofu_without_open_unlearnings_epsilon() -> None:
    """TOFU's truth ratio has no epsilon; open-unlearning's (`memorization.truth_ratio`) divides by
    `correct_prob + 1e-10` and takes `min(tr, 1 / (tr + 1e-10))`. Healthy models: the same; a collapsed model
    (correct-answer probability ~1e-10): different. The harness gives TOFU's value."""
    base = np.array([2.0, 23.0, 24.5])  # mean token NLL of the true answer: the last two collapsed
    pert = np.array([[2.5, 3.0], [23.2, 23.4], [24.0, 24.2]])
    R = M.truth_ratio_R(base, pert)
    tofu = np.minimum(R, 1 / R).mean()
    correct, wrong = np.exp(-base), np.exp(-pert).prod(axis=1) ** 0.5
    tr_ou = wrong / (correct + 1e-10)
    open_unlearning = np.minimum(tr_ou, 1 / (tr_ou + 1e-10)).mean()
    assert M.truth_ratio_stat(R, forget=True) == pytest.approx(tofu, rel=1e-12)
    assert tofu == pytest.approx((np.exp(-0.75) + np.exp(-0.3) + np.exp(-0.4)) / 3, rel=1e-12)
    assert abs(open_unlearning - tofu) > 0.05  # the epsilon dominates for the collapsed examples
    healthy = wrong[:1] / (correct[:1] + 1e-10)
    assert healthy[0] == pytest.approx(R[0], rel=1e-6)
