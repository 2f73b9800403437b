"""TOFU scoring: builds backend requests per split, turns results into per-example and split-level metrics.

Follows locuslab/tofu `evaluate_util.py` (what is scored and generated) and `aggregate_eval_stat.py`
(how it is aggregated); the formulas live in `harness.benchmarks.tofu.metrics`.

Prompt convention ("plain"): the prompt is `Question: {q}\\nAnswer:` and the scored answer text is
`" " + answer`, so the separating space belongs to the answer. Scoring then sees exactly the text a
training example `prompt + answer_text` contains, and greedy generation starts where the answer
does (its output usually begins with that space; ROUGE ignores it). With "chat_template" the prompt
is the tokenizer's chat template with the generation prompt, and the answer follows it unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from harness.benchmarks.text_metrics import rouge_l_recall
from harness.benchmarks.tofu import metrics as M
from harness.core.errors import DataError
from harness.core.stats import bootstrap_ci
from harness.data.requests import Backend, GenRequest, LoglikRequest

Kind = Literal["forget", "retain", "mc"]
PromptFormat = Literal["plain", "chat_template"]
KINDS: tuple[str, ...] = ("forget", "retain", "mc")
PLAIN_STOP: tuple[str, ...] = ("\nQuestion:",)


@dataclass
class SplitScores:
    """Per-example TOFU results of one split (arrays aligned with the split's records)."""

    split: str
    kind: str
    prob: np.ndarray
    truth_ratio: np.ndarray
    rouge_l_recall: np.ndarray
    avg_gt_loss: np.ndarray
    avg_base_loss: np.ndarray
    avg_perturbed_loss: np.ndarray
    generations: list[tuple[str, str, str]] = field(default_factory=list)

    def example_rows(self) -> list[dict[str, Any]]:
        """Long rows `split, example_id, metric, value` for prob, truth_ratio (R) and rouge_l_recall."""
        rows = []
        for metric in ("prob", "truth_ratio", "rouge_l_recall"):
            for i, v in enumerate(getattr(self, metric).tolist()):
                rows.append({"split": self.split, "example_id": i, "metric": metric, "value": float(v)})
        return rows

    def generation_rows(self) -> list[dict[str, Any]]:
        """Rows `split, example_id, prompt, reference, output`, one per generation."""
        return [{"split": self.split, "example_id": i, "prompt": p, "reference": r, "output": o}
                for i, (p, r, o) in enumerate(self.generations)]


def split_kind(split: str) -> Kind:
    """TOFU role of a split by its name: `forget*` -> forget, `retain*` -> retain, others -> mc."""
    if split.startswith("forget"):
        return "forget"
    if split.startswith("retain"):
        return "retain"
    return "mc"


def prompt_for(question: str, fmt: PromptFormat, tokenizer: Any = None) -> str:
    """The prompt text for a question: plain `Question: {q}\\nAnswer:`, or the tokenizer's chat template."""
    if fmt == "plain":
        return f"Question: {question}\nAnswer:"
    if fmt == "chat_template":
        text = tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                             add_generation_prompt=True, tokenize=False)
        bos = getattr(tokenizer, "bos_token", None)
        # the template writes BOS as text; the context is tokenised with special tokens, which adds it again
        return text[len(bos):] if bos and text.startswith(bos) else text
    raise ValueError(f"unknown prompt format {fmt!r} (known: plain, chat_template)")


def answer_text(answer: str, fmt: PromptFormat = "plain") -> str:
    """The scored/trained answer: `" " + answer` after a plain prompt, as is after a chat template."""
    return " " + answer if fmt == "plain" else answer


def stop_strings(fmt: PromptFormat) -> tuple[str, ...]:
    """Stop strings of greedy answers: the next `Question:` for plain prompts, none for chat templates."""
    return PLAIN_STOP if fmt == "plain" else ()


def _field(rec: Mapping[str, Any], key: str, split: str, i: int) -> Any:
    """`rec[key]`, or a DataError naming the split, example and field."""
    if key not in rec:
        raise DataError(f"TOFU split {split!r} example {i}: missing field {key!r}")
    return rec[key]


def _perturbed(rec: Mapping[str, Any], split: str, i: int) -> list[str]:
    """The example's perturbed answers as a non-empty list of strings."""
    pert = _field(rec, "perturbed_answer", split, i)
    if isinstance(pert, str) or not isinstance(pert, Sequence) or len(pert) == 0:
        raise DataError(f"TOFU split {split!r} example {i}: 'perturbed_answer' must be a non-empty list")
    return [str(p) for p in pert]


def _avg_loss(logprobs: np.ndarray) -> float:
    """Mean token NLL of one scored continuation."""
    return float(-np.mean(logprobs))


def score_tofu_split(backend: Backend, split: str, records: Sequence[Mapping[str, Any]], kind: Kind,
                     fmt: PromptFormat, tokenizer: Any, max_new_tokens: int,
                     base_key: str | None = None) -> SplitScores:
    """Score one TOFU split: one `loglikelihood` call (answer, base, perturbed) and one `generate` call.

    `base_key` (the base answer of the truth ratio) defaults to TOFU's: `paraphrased_answer` on
    forget/retain, `answer` on the multiple-choice splits (real authors, world facts).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown TOFU split kind {kind!r} (known: {', '.join(KINDS)})")
    if not records:
        raise DataError(f"TOFU split {split!r} has no examples")
    base_key = base_key or ("answer" if kind == "mc" else "paraphrased_answer")
    questions = [str(_field(r, "question", split, i)) for i, r in enumerate(records)]
    prompts = [prompt_for(q, fmt, tokenizer) for q in questions]
    answers = [str(_field(r, "answer", split, i)) for i, r in enumerate(records)]
    bases = [str(_field(r, base_key, split, i)) for i, r in enumerate(records)]
    perts = [_perturbed(r, split, i) for i, r in enumerate(records)]
    if len({len(p) for p in perts}) != 1:
        raise DataError(f"TOFU split {split!r}: examples have different numbers of perturbed answers")
    k = len(perts[0])
    share_base = base_key == "answer"

    requests: list[LoglikRequest] = []
    for prompt, ans, base, pert in zip(prompts, answers, bases, perts, strict=True):
        texts = [ans] + ([] if share_base else [base]) + pert
        requests.extend(LoglikRequest(prompt, answer_text(t, fmt)) for t in texts)
    losses = np.array([_avg_loss(lp) for lp in backend.loglikelihood(requests)], dtype=np.float64)
    losses = losses.reshape(len(records), 1 + (0 if share_base else 1) + k)
    avg_gt = losses[:, 0]
    avg_base = avg_gt if share_base else losses[:, 1]
    avg_pert = losses[:, -k:]

    gen_requests = [GenRequest(p, max_new_tokens, stop_strings(fmt)) for p in prompts]
    outputs = [o.strip() for o in backend.generate(gen_requests)]
    rouge = np.array([rouge_l_recall(a, o) for a, o in zip(answers, outputs, strict=True)], dtype=np.float64)

    prob = M.prob_qa(avg_gt) if kind != "mc" else M.prob_mc(avg_gt, avg_pert)
    return SplitScores(
        split=split, kind=kind, prob=prob, truth_ratio=M.truth_ratio_R(avg_base, avg_pert),
        rouge_l_recall=rouge, avg_gt_loss=avg_gt, avg_base_loss=avg_base, avg_perturbed_loss=avg_pert,
        generations=list(zip(prompts, answers, outputs, strict=True)),
    )


def _row(split: str, metric: str, value: float, per_example: np.ndarray | None,
         n_resamples: int, seed: int) -> dict[str, Any]:
    """One long-format metric row, with a bootstrap CI of the mean when per-example terms are given."""
    row: dict[str, Any] = {"split": split, "metric": metric, "value": float(value)}
    if per_example is not None and n_resamples > 0:
        row["ci_low"], row["ci_high"] = bootstrap_ci(per_example, n_resamples, seed)
    return row


def _utility_splits(scores_by_split: Mapping[str, SplitScores]) -> tuple[str, str, str] | None:
    """Names of the retain, real_authors and world_facts splits, or None when any is missing."""
    retain = [s for s, sc in scores_by_split.items() if sc.kind == "retain"]
    if len(retain) != 1 or "real_authors" not in scores_by_split or "world_facts" not in scores_by_split:
        return None
    return retain[0], "real_authors", "world_facts"


def aggregate_tofu(scores_by_split: Mapping[str, SplitScores], retain_model_R_forget: np.ndarray | None,
                   forget_split_name: str, n_resamples: int = 0, seed: int = 0) -> list[dict[str, Any]]:
    """Split-level TOFU metrics as rows `{split, metric, value}` (+ `ci_low, ci_high` when bootstrapped).

    Per split: prob, rouge_l_recall, truth_ratio; forget_quality on the forget split when the retain
    model's per-example R there is given; model_utility (split "all") when the retain split,
    real_authors and world_facts were all scored (otherwise it is left out).
    """
    rows: list[dict[str, Any]] = []
    values: dict[tuple[str, str], float] = {}
    for split, sc in scores_by_split.items():
        tr_terms = M.truth_ratio_values(sc.truth_ratio, forget=sc.kind == "forget")
        terms_by_metric = {"prob": sc.prob, "rouge_l_recall": sc.rouge_l_recall, "truth_ratio": tr_terms}
        for metric, terms in terms_by_metric.items():
            values[(split, metric)] = float(np.mean(terms))
            rows.append(_row(split, metric, values[(split, metric)], terms, n_resamples, seed))
    if retain_model_R_forget is not None:
        if forget_split_name not in scores_by_split:
            raise ValueError(f"forget quality needs the forget split {forget_split_name!r} (not scored)")
        fq = M.forget_quality(scores_by_split[forget_split_name].truth_ratio, retain_model_R_forget)
        rows.append(_row(forget_split_name, "forget_quality", fq, None, 0, seed))
    utility_splits = _utility_splits(scores_by_split)
    if utility_splits is not None:
        rows.append(_row("all", "model_utility", M.model_utility(values, utility_splits), None, 0, seed))
    return rows
