"""Text metrics shared by benchmarks: ROUGE-L (rouge_score, stemmed) and bootstrap confidence intervals."""

from __future__ import annotations

from functools import lru_cache

from rouge_score import rouge_scorer, scoring


@lru_cache(maxsize=1)
def _rouge_l_scorer() -> rouge_scorer.RougeScorer:
    """One shared ROUGE-L scorer with Porter stemming, as TOFU uses (MUSE does not: `benchmarks/muse/metrics.py`)."""
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def _rouge_l(reference: str, prediction: str) -> scoring.Score:
    """The rougeL Score (precision, recall, fmeasure) of `prediction` against `reference`."""
    return _rouge_l_scorer().score(target=reference, prediction=prediction)["rougeL"]


def rouge_l_recall(reference: str, prediction: str) -> float:
    """ROUGE-L recall: LCS length / reference length in (stemmed) tokens (TOFU `eval_rouge_recall`)."""
    return float(_rouge_l(reference, prediction).recall)


def rouge_l_f1(reference: str, prediction: str) -> float:
    """Stemmed ROUGE-L F1 of `prediction` against `reference`.

    Not MUSE's VerbMem / KnowMem score: muse_bench scores unstemmed (`harness.benchmarks.muse.metrics.rouge_l_f1`).
    """
    return float(_rouge_l(reference, prediction).fmeasure)


