"""TDEC benchmark: memorised sequences to forget, scored by MA and EL_n through greedy generation.

Follows joeljang/knowledge-unlearning `models/Neo_Model.py`; the formulas live in
`harness.benchmarks.tdec.metrics`.

Metrics (long format, DESIGN.md section 4):
- `forget/ma`, `forget/el_{n}`: mean MA and EL_n over the forget sequences (n = 10 by default).
- `holdout/ma_threshold`, `holdout/el_threshold`: mean MA and EL_n of the same model on held-out
  sequences, the paper's forgetting thresholds (reported when the data has a holdout set).
- `retain/ma`, `retain/ppl`: retention on the retain sequences (when the data has them): MA, and the
  perplexity `exp(mean over sequences of the mean token NLL after the BOS)`; unlearning should keep both.
- `forget/forgotten`: 1.0 when forget MA and EL_n are both at or below the *target* model's holdout
  thresholds (the model's own when no target was scored), else 0.0. The reference's early stopping
  tests `ma < ma_threshold and el < el_threshold`; `<=` here, because held-out EL is often exactly 0
  on small sets, which a strict test could never meet.
- rows of the utility tasks named by the spec (registry `UTILITY_TASKS`; none by default: the paper's
  LM benchmarks such as LAMBADA or PIQA plug in there).
Per-sequence `ma` and `el_{n}` go to `examples.parquet` (splits `forget`, `holdout`); one generation per
sequence (the continuation of its first half) to `generations.parquet`.

How MA and EL are computed through the text-only `Backend`: each sequence is tokenised with the job's
tokenizer (no special tokens) and cut to T tokens (`sequence_length`; 200 in the paper, 64 for the
synthetic default). Every prefix `x[:t]` is decoded to text and sent as a greedy generation request
(the backend re-tokenises it, adding the BOS training also puts before the text):
- MA: one new token per prefix t = 1..T-1; the decoded token is compared with the decoded true token.
- EL_n: `T - i` new tokens per prefix i = 1..T-n (longer prefixes add nothing to EL). Both the output and
  the true suffix `x[i:T]` are compared as `encode(text)` (the suffix as `encode(decode(x[i:T]))`, the
  output cut to the suffix's length), so both sides pass through the same decode/encode round trip
  and a verbatim continuation scores exactly 1.
Cost per sequence: T - 1 one-token generations plus T - n generations of T - i tokens, about
(T - n)(T + n) / 2 generated tokens (~2,000 for T = 64, n = 10; ~19,000 for T = 200). Keep T small on CPU.
Caveat: a prefix that ends inside a word may re-tokenise differently from the original ids.

Settings (`TdecOptions`, harness/benchmarks/tdec/options.py): `sequence_length` (default 64 for the
synthetic set, else the paper's 200), `el_n` (10), `utility_tasks` (none). Training pairs are whole
texts after an empty context (the reference trains on each CSV `text`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from harness.benchmarks.base import BENCHMARKS, Benchmark, MatchedUtility, ModelScores, Pair, mean_metric_row
from harness.benchmarks.tdec.data import corpus_texts, load_tdec
from harness.benchmarks.tdec.metrics import (
    METRICS,
    PAPER_SEQUENCE_LENGTH,
    extraction_likelihood_from_pairs,
    memorization_accuracy,
)
from harness.benchmarks.tdec.options import TdecOptions
from harness.benchmarks.tdec.synth import SYNTH_SEQUENCE_LENGTH
from harness.config import EvalSpec
from harness.core.errors import DataError
from harness.core.registry import Registry
from harness.data.requests import Backend, GenRequest, LoglikRequest
from harness.render.tables import Column

#: A utility task scores one model: `task(backend, tokenizer, eval_spec)` -> rows `{split, metric, value}`.
UtilityTask = Callable[[Backend, Any, EvalSpec], list[dict[str, Any]]]
#: Utility tasks by name (`@UTILITY_TASKS.register("lambada")`); a job lists the ones to run.
UTILITY_TASKS: Registry[UtilityTask] = Registry("TDEC utility task")
EVAL_SPLITS = ("forget", "holdout")


def _next_tokens(backend: Backend, tokenizer: Any, seqs: list[list[int]]) -> list[str]:
    """The greedy next token after every prefix `x[:t]`, t = 1..T-1, of each sequence (MA's predictions)."""
    return backend.generate([GenRequest(tokenizer.decode(ids[:t]), 1) for ids in seqs for t in range(1, len(ids))])


def retention_scores(backend: Backend, tokenizer: Any, texts: list[str], length: int) -> tuple[np.ndarray, np.ndarray]:
    """What the model keeps of sequences it should remember: per sequence, MA (next-token accuracy, as on the
    forget set) and the mean token NLL of the sequence after the BOS (its log-perplexity)."""
    seqs = [list(tokenizer(t, add_special_tokens=False)["input_ids"][:length]) for t in texts]
    preds = _next_tokens(backend, tokenizer, seqs)
    ma, a = [], 0
    for ids in seqs:
        ma.append(memorization_accuracy(preds[a:a + len(ids) - 1], [tokenizer.decode([x]) for x in ids]))
        a += len(ids) - 1
    logps = backend.loglikelihood([LoglikRequest("", tokenizer.decode(ids), add_eos=False) for ids in seqs])
    return np.asarray(ma, dtype=np.float64), np.asarray([-float(np.mean(lp)) for lp in logps], dtype=np.float64)


def score_sequences(backend: Backend, tokenizer: Any, texts: list[str], length: int,
                    n: int) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str, str]]]:
    """Per-sequence MA and EL_n of `texts` cut to `length` tokens, and one (prompt, reference, output) each."""
    seqs = [list(tokenizer(t, add_special_tokens=False)["input_ids"][:length]) for t in texts]
    for j, ids in enumerate(seqs):
        if len(ids) <= n:
            raise DataError(f"TDEC sequence {j} has {len(ids)} tokens; EL_{n} needs more than {n}")

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids)

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    ma_out = _next_tokens(backend, tokenizer, seqs)
    el_out = backend.generate([GenRequest(decode(ids[:i]), len(ids) - i)
                               for ids in seqs for i in range(1, len(ids) - n + 1)])
    ma, el, gens = [], [], []
    a = b = 0
    for ids in seqs:
        L = len(ids)
        preds = ma_out[a:a + L - 1]
        a += L - 1
        ma.append(memorization_accuracy(preds, [decode([x]) for x in ids]))
        outputs = el_out[b:b + L - n]
        b += L - n
        labels = [encode(decode(ids[i:])) for i in range(1, L - n + 1)]
        cont = [encode(o)[:len(lab)] for o, lab in zip(outputs, labels, strict=True)]
        el.append(extraction_likelihood_from_pairs(cont, labels, n, L))
        half = min(L // 2, L - n)
        gens.append((decode(ids[:half]), decode(ids[half:]), outputs[half - 1]))
    return np.asarray(ma, dtype=np.float64), np.asarray(el, dtype=np.float64), gens


@BENCHMARKS.register("tdec")
class Tdec(Benchmark):
    """TDEC: unlearn memorised sequences; MA and EL_n on them and on held-out sequences (the thresholds)."""

    declared_metrics = METRICS

    name = "tdec"

    def __init__(self, spec: TdecOptions) -> None:
        super().__init__(spec)
        self.data = load_tdec(spec.source, spec.data_dir, spec.synthetic, spec.seed, spec.forget_split)
        default_length = SYNTH_SEQUENCE_LENGTH if spec.source == "synthetic" else PAPER_SEQUENCE_LENGTH
        self.sequence_length = spec.sequence_length or default_length
        self.el_n = spec.el_n
        if not 1 <= self.el_n < self.sequence_length:
            raise DataError(f"TDEC needs 1 <= el_n < sequence_length, got el_n={self.el_n}, "
                            f"sequence_length={self.sequence_length}")
        self.utility_tasks: list[str] = list(spec.utility_tasks)
        self.el_metric = f"el_{self.el_n}"

    @classmethod
    def matched_utility_for(cls, options: TdecOptions) -> MatchedUtility:
        # The knowledge-unlearning reading: retain MA kept, forget MA and EL_n down.
        return MatchedUtility(utility=("retain", "ma"), forget=(("forget", "ma"), ("forget", f"el_{options.el_n}")),
                              goal="min")

    @classmethod
    def summary_columns_for(cls, options: TdecOptions) -> list[Column]:
        n = options.el_n
        return [
            cls.column("forget", "ma", "forget MA"),
            cls.column("forget", f"el_{n}", f"forget EL_{n}"),
            cls.column("retain", "ma", "retain MA"),
            cls.column("retain", "ppl", "retain PPL"),
            cls.column("holdout", "ma_threshold", "MA threshold"),
            cls.column("holdout", "el_threshold", f"EL_{n} threshold"),
        ]

    # ---- training pairs -------------------------------------------------------------------------

    def _retain_texts(self) -> list[str]:
        if not self.data.retain:
            raise DataError(f"TDEC data {self.data.source} has no retain set: add retain.csv (doc_id,corpus,text) "
                            "for retain losses and the retain reference model")
        return [r["text"] for r in self.data.retain]

    def corpus_texts(self) -> list[str]:
        return corpus_texts(self.data)

    def reference_examples(self, kind: str, tokenizer: Any) -> list[Pair]:
        if kind == "target":
            texts = [r["text"] for r in self.data.forget] + self._retain_texts()
        elif kind == "retain":
            texts = self._retain_texts()
        else:
            raise ValueError(f"unknown reference model kind {kind!r} (known: target, retain)")
        return [("", t) for t in texts]

    def forget_examples(self, tokenizer: Any, objective: Any, seed: int = 0) -> list[Pair]:
        return [("", objective.forget_answer({"question": "", "answer": r["text"]}, i))
                for i, r in enumerate(self.data.forget)]

    def retain_examples(self, tokenizer: Any) -> list[Pair]:
        return [("", t) for t in self._retain_texts()]

    # ---- scoring --------------------------------------------------------------------------------

    def score(self, backend: Any, tokenizer: Any, eval_spec: EvalSpec) -> ModelScores:
        cap = eval_spec.max_examples
        result = ModelScores(raw={"ma": {}, self.el_metric: {}, "utility": []})
        for split in EVAL_SPLITS:
            records = getattr(self.data, split)
            records = records[:cap] if cap else records
            if not records:
                continue
            ma, el, gens = score_sequences(backend, tokenizer, [r["text"] for r in records],
                                           self.sequence_length, self.el_n)
            for metric, values in (("ma", ma), (self.el_metric, el)):
                result.raw[metric][split] = values
                result.examples.extend({"split": split, "example_id": i, "metric": metric, "value": float(v)}
                                       for i, v in enumerate(values.tolist()))
            result.generations.extend({"split": split, "example_id": i, "prompt": p, "reference": r, "output": o}
                                      for i, (p, r, o) in enumerate(gens))
        if self.data.retain:  # retention: what unlearning must not take away
            records = self.data.retain[:cap] if cap else self.data.retain
            ma, nll = retention_scores(backend, tokenizer, [r["text"] for r in records], self.sequence_length)
            result.raw["ma"]["retain"], result.raw["nll"] = ma, nll
            for metric, values in (("ma", ma), ("nll", nll)):
                result.examples.extend({"split": "retain", "example_id": i, "metric": metric, "value": float(v)}
                                       for i, v in enumerate(values.tolist()))
        for task in self.utility_tasks:
            result.raw["utility"].extend(UTILITY_TASKS.get(task)(backend, tokenizer, eval_spec))
        return result

    def aggregate(self, scores: dict[str, ModelScores], eval_spec: EvalSpec) -> list[dict[str, Any]]:
        el = self.el_metric

        def thresholds(s: ModelScores) -> tuple[float, float] | None:
            if "holdout" not in s.raw["ma"]:
                return None
            return float(np.mean(s.raw["ma"]["holdout"])), float(np.mean(s.raw[el]["holdout"]))

        target_thr = thresholds(scores["target"]) if "target" in scores else None
        rows: list[dict[str, Any]] = []
        for method, s in scores.items():
            own = [mean_metric_row("forget", "ma", s.raw["ma"]["forget"], eval_spec.bootstrap, self.seed),
                   mean_metric_row("forget", el, s.raw[el]["forget"], eval_spec.bootstrap, self.seed)]
            thr = thresholds(s)
            if thr is not None:
                own += [{"split": "holdout", "metric": "ma_threshold", "value": thr[0]},
                        {"split": "holdout", "metric": "el_threshold", "value": thr[1]}]
            ref = target_thr or thr
            if ref is not None:
                forgotten = own[0]["value"] <= ref[0] and own[1]["value"] <= ref[1]
                own.append({"split": "forget", "metric": "forgotten", "value": float(forgotten)})
            if "retain" in s.raw["ma"]:
                own += [mean_metric_row("retain", "ma", s.raw["ma"]["retain"], eval_spec.bootstrap, self.seed),
                        {"split": "retain", "metric": "ppl", "value": float(np.exp(np.mean(s.raw["nll"])))}]
            own += [dict(r) for r in s.raw["utility"]]
            rows.extend({"method": method, **row} for row in own)
        return rows
