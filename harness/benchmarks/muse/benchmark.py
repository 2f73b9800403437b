"""MUSE benchmark: training pairs from raw articles and QA, and the VerbMem / KnowMem / PrivLeak suite.

Follows muse_bench `eval.py` (swj0419/muse_bench); the formulas live in `harness.benchmarks.muse.metrics`.

Metrics (long format, DESIGN.md section 4):
- `forget/verbmem_rouge`: mean ROUGE-L F1 x 100 of the greedy continuation (128 new tokens) of each
  VerbMem prompt against the true continuation cut to 128 tokens.
- `forget/knowmem_rouge`, `retain/knowmem_rouge`: mean ROUGE-L F1 x 100 of few-shot greedy answers
  (32 new tokens, cut at a blank line or `Question`); the retain value is MUSE's utility preservation.
- `forget/mink_auc`: AUC of Min-40% Prob scores, forget (label 0) vs holdout (label 1).
- `forget/privleak`: `(AUC - AUC_retrain) / AUC_retrain x 100` with AUC_retrain measured on the job's
  `retain` model (or `benchmark.auc_retrain` when the spec has that field); left out when neither exists.
Per-example values (`examples.parquet`) are on the same x 100 scale, so their mean is the aggregate;
`mink_score` rows hold each text's Min-K% score (splits `forget`, `holdout`).

Training pairs: raw text is scored as a continuation of an empty context (so the context is just the
BOS the tokenizer adds) and cut into chunks of at most `chunk_tokens` tokens per article (muse_bench's
trainer cuts its concatenated text file into `max_len` windows). The target reference model learns
forget + retain1 + retain2 text and the KnowMem QA of both splits, each answer after its exact
evaluation prompt (few-shot examples included); the retain model the same without the forget text and
forget QA. Unlearning forgets the raw forget text and retains on raw retain1 (as muse_bench's
`unlearn_news.sh` does).

Settings (`MuseOptions`, harness/benchmarks/muse/options.py; muse_bench defaults):
`verbmem_max_new_tokens` (128), `knowmem_max_new_tokens` (32), `mink_k` (0.4), `chunk_tokens` (126),
`auc_retrain` (none: measured). `eval.max_new_tokens` and `benchmark.prompt_format` are not used: MUSE
has fixed generation budgets and a fixed plain `Question:`/`Answer:` prompt.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.benchmarks.base import BENCHMARKS, Benchmark, MatchedUtility, ModelScores, Pair, mean_metric_row
from harness.benchmarks.muse.data import corpus_texts, load_muse
from harness.benchmarks.muse.metrics import (
    KNOWMEM_STOP,
    METRICS,
    cut_answer,
    knowmem_prompt,
    min_k_score,
    mink_auc,
    privleak,
    rouge_l_f1,
    truncate_tokens,
)
from harness.benchmarks.muse.options import MuseOptions
from harness.config import EvalSpec
from harness.data.requests import GenRequest, LoglikRequest
from harness.render.tables import Column

KNOWMEM_SPLITS = ("forget", "retain")
PRIVLEAK_SPLITS = ("forget", "holdout")


def chunk_text(tokenizer: Any, text: str, max_tokens: int) -> list[str]:
    """`text` unchanged when it has at most `max_tokens` tokens, else decoded windows of that many tokens."""
    if max_tokens < 1:
        raise ValueError(f"chunk size must be >= 1 token, got {max_tokens}")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return [text] if text else []
    return [tokenizer.decode(ids[i:i + max_tokens]) for i in range(0, len(ids), max_tokens)]


@BENCHMARKS.register("muse")
class Muse(Benchmark):
    """MUSE-News style unlearning with muse_bench's VerbMem, KnowMem and PrivLeak metrics."""

    declared_metrics = METRICS

    name = "muse"

    @classmethod
    def matched_utility_for(cls, options: MuseOptions) -> MatchedUtility:
        # MUSE's reading: retain KnowMem kept, forget VerbMem and KnowMem (ROUGE x 100) down; PrivLeak (near 0 is
        # best) stays in the confirmation's summary.md beside them.
        return MatchedUtility(utility=("retain", "knowmem_rouge"),
                              forget=(("forget", "verbmem_rouge"), ("forget", "knowmem_rouge")), goal="min",
                              forget_range=(0.0, 100.0), utility_range=(0.0, 100.0))

    @classmethod
    def summary_columns_for(cls, options: MuseOptions) -> list[Column]:
        return [
            cls.column("forget", "verbmem_rouge", "forget VerbMem"),
            cls.column("forget", "knowmem_rouge", "forget KnowMem"),
            cls.column("retain", "knowmem_rouge", "retain KnowMem"),
            cls.column("forget", "privleak", "PrivLeak"),
        ]

    def __init__(self, spec: MuseOptions) -> None:
        super().__init__(spec)
        self.data = load_muse(spec.source, spec.data_dir, spec.synthetic, spec.seed)
        self.verbmem_max_new_tokens = spec.verbmem_max_new_tokens
        self.knowmem_max_new_tokens = spec.knowmem_max_new_tokens
        self.mink_k = spec.mink_k
        self.chunk_tokens = spec.chunk_tokens
        #: Published retrain AUC, for jobs without a retrain model (PrivLeak otherwise uses the job's).
        self.auc_retrain: float | None = spec.auc_retrain

    # ---- training pairs -------------------------------------------------------------------------

    def _raw_chunks(self, splits: tuple[str, ...], tokenizer: Any) -> list[str]:
        return [c for s in splits for text in self.data.raw[s] for c in chunk_text(tokenizer, text, self.chunk_tokens)]

    def _qa_pairs(self, split: str) -> list[Pair]:
        icl = self.data.icl[split]
        return [(knowmem_prompt(r["question"], icl), r["answer"]) for r in self.data.knowmem[split]]

    def corpus_texts(self) -> list[str]:
        return corpus_texts(self.data)

    def reference_examples(self, kind: str, tokenizer: Any) -> list[Pair]:
        if kind == "target":
            raw, qa = ("forget", "retain1", "retain2"), ("forget", "retain")
        elif kind == "retain":
            raw, qa = ("retain1", "retain2"), ("retain",)
        else:
            raise ValueError(f"unknown reference model kind {kind!r} (known: target, retain)")
        return [("", c) for c in self._raw_chunks(raw, tokenizer)] + [p for s in qa for p in self._qa_pairs(s)]

    def forget_examples(self, tokenizer: Any, objective: Any, seed: int = 0) -> list[Pair]:
        chunks = self._raw_chunks(("forget",), tokenizer)
        return [("", objective.forget_answer({"question": "", "answer": c}, i)) for i, c in enumerate(chunks)]

    def retain_examples(self, tokenizer: Any) -> list[Pair]:
        return [("", c) for c in self._raw_chunks(("retain1",), tokenizer)]

    # ---- scoring --------------------------------------------------------------------------------

    def score(self, backend: Any, tokenizer: Any, eval_spec: EvalSpec) -> ModelScores:
        cap = eval_spec.max_examples

        def take(xs: list) -> list:
            return xs[:cap] if cap else xs

        result = ModelScores(raw={"verbmem_rouge": {}, "knowmem_rouge": {}, "mink_score": {}})

        def record(metric: str, split: str, values: list[float], gen_split: str | None = None,
                   gens: list[tuple[str, str, str]] | None = None) -> None:
            arr = np.asarray(values, dtype=np.float64)
            result.raw[metric][split] = arr
            result.examples.extend({"split": split, "example_id": i, "metric": metric, "value": float(v)}
                                   for i, v in enumerate(arr.tolist()))
            for i, (p, r, o) in enumerate(gens or []):
                result.generations.append({"split": gen_split, "example_id": i, "prompt": p, "reference": r,
                                           "output": o})

        # VerbMem: greedy continuation vs the true continuation cut to the same token budget
        n_verb = self.verbmem_max_new_tokens
        verb = take(self.data.verbmem)
        prompts = [r["prompt"] for r in verb]
        outputs = backend.generate([GenRequest(p, n_verb) for p in prompts])
        refs = [truncate_tokens(tokenizer, r["gt"], n_verb) for r in verb]
        record("verbmem_rouge", "forget", [100.0 * rouge_l_f1(g, o) for g, o in zip(refs, outputs, strict=True)],
               "verbmem_forget", list(zip(prompts, refs, outputs, strict=True)))

        # KnowMem: few-shot QA on the forget and retain splits
        for split in KNOWMEM_SPLITS:
            qa = take(self.data.knowmem[split])
            prompts = [knowmem_prompt(r["question"], self.data.icl[split]) for r in qa]
            requests = [GenRequest(p, self.knowmem_max_new_tokens, KNOWMEM_STOP) for p in prompts]
            outputs = [cut_answer(o) for o in backend.generate(requests)]
            answers = [r["answer"] for r in qa]
            record("knowmem_rouge", split, [100.0 * rouge_l_f1(a, o) for a, o in zip(answers, outputs, strict=True)],
                   f"knowmem_{split}", list(zip(prompts, answers, outputs, strict=True)))

        # PrivLeak: Min-K% of each text, scored after the BOS alone, no EOS (detect-pretrain-code)
        texts = {s: take(self.data.privleak[s]) for s in PRIVLEAK_SPLITS}
        requests = [LoglikRequest("", t, add_eos=False) for s in PRIVLEAK_SPLITS for t in texts[s]]
        logprobs = backend.loglikelihood(requests)
        start = 0
        for s in PRIVLEAK_SPLITS:
            chunk = logprobs[start:start + len(texts[s])]
            start += len(texts[s])
            record("mink_score", s, [min_k_score(lp, self.mink_k) for lp in chunk])
        return result

    def aggregate(self, scores: dict[str, ModelScores], eval_spec: EvalSpec) -> list[dict[str, Any]]:
        aucs = {m: mink_auc(s.raw["mink_score"]["forget"], s.raw["mink_score"]["holdout"]) for m, s in scores.items()}
        auc_retrain = self.auc_retrain if self.auc_retrain is not None else aucs.get("retain")
        rows: list[dict[str, Any]] = []
        for method, s in scores.items():
            n_boot = eval_spec.bootstrap
            own = [mean_metric_row("forget", "verbmem_rouge", s.raw["verbmem_rouge"]["forget"], n_boot, self.seed)]
            own += [mean_metric_row(split, "knowmem_rouge", s.raw["knowmem_rouge"][split], n_boot, self.seed)
                    for split in KNOWMEM_SPLITS]
            own.append({"split": "forget", "metric": "mink_auc", "value": aucs[method]})
            if auc_retrain is not None:
                own.append({"split": "forget", "metric": "privleak", "value": privleak(aucs[method], auc_retrain)})
            rows.extend({"method": method, **row} for row in own)
        return rows
