"""TOFU (Maini et al. 2024): fictitious-author QA; forget a split, keep the rest and world knowledge."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from harness.benchmarks.base import BENCHMARKS, Benchmark, MatchedUtility, ModelScores, Pair
from harness.benchmarks.tofu.data import corpus_texts, load_tofu
from harness.benchmarks.tofu.metrics import METRICS
from harness.benchmarks.tofu.options import TofuOptions
from harness.benchmarks.tofu.score import (
    aggregate_tofu,
    answer_text,
    prompt_for,
    score_tofu_split,
    split_kind,
)
from harness.config import EvalSpec
from harness.core.errors import DataError
from harness.render.tables import Column


@BENCHMARKS.register("tofu")
class Tofu(Benchmark):
    """TOFU with its metric suite (locuslab/tofu `evaluate_util.py`, `aggregate_eval_stat.py`)."""

    declared_metrics = METRICS

    name = "tofu"

    def recovery_metric(self) -> tuple[str, str]:
        return self.spec.forget_split, "prob"

    def __init__(self, spec: TofuOptions) -> None:
        super().__init__(spec)
        self.data = load_tofu(spec.source, spec.data_dir, spec.synthetic, spec.seed, spec.forget_split)

    @classmethod
    def matched_utility_for(cls, options: TofuOptions) -> MatchedUtility:
        # TOFU's own reading: model utility kept, forget quality (KS p-value against the retain model) up.
        return MatchedUtility(utility=("all", "model_utility"), forget=((options.forget_split, "forget_quality"),),
                              goal="max")

    @classmethod
    def summary_columns_for(cls, options: TofuOptions) -> list[Column]:
        f = options.forget_split
        return [
            cls.column(f, "forget_quality", "forget quality"),
            cls.column("all", "model_utility", "model utility"),
            cls.column(f, "rouge_l_recall", "forget ROUGE-L"),
            cls.column(f, "truth_ratio", "forget truth ratio"),
            cls.column(f, "prob", "forget prob"),
            cls.column("retain", "rouge_l_recall", "retain ROUGE-L"),
        ]

    def _pairs(self, records: list[dict], tokenizer: Any,
               answer_for: Callable[[dict, int], str] | None = None) -> list[Pair]:
        fmt = self.spec.prompt_format

        def text(answer: str | tuple[str, ...]) -> str | tuple[str, ...]:
            # An objective may train on several answers of one question (DPO: preferred, rejected).
            return answer_text(answer, fmt) if isinstance(answer, str) else tuple(answer_text(a, fmt) for a in answer)

        return [(prompt_for(r["question"], fmt, tokenizer), text(answer_for(r, i) if answer_for else r["answer"]))
                for i, r in enumerate(records)]

    def corpus_texts(self) -> list[str]:
        return corpus_texts(self.data)

    def reference_examples(self, kind: str, tokenizer: Any) -> list[Pair]:
        # The target learns every author; the retain model all but the forget authors. Both also learn
        # the real-author and world-fact answers, the "pretraining" knowledge TOFU's base models bring.
        records = {"target": self.data.forget + self.data.retain, "retain": self.data.retain}[kind]
        return self._pairs(records + self.data.knowledge, tokenizer)

    def forget_examples(self, tokenizer: Any, objective: Any, seed: int = 0) -> list[Pair]:
        return self._pairs(self.data.forget, tokenizer, objective.forget_answer)

    def retain_examples(self, tokenizer: Any) -> list[Pair]:
        return self._pairs(self.data.retain, tokenizer)

    def forget_keys(self) -> list[str]:
        return [r["question"] for r in self.data.forget]

    def scored_forget_keys(self) -> list[str]:
        return [r["question"] for r in self.data.eval_splits[self.spec.forget_split]]

    def restrict_forget(self, keep: Sequence[int], forget_only: bool = False) -> Tofu:
        # forgetXX and forgetXX_perturbed hold the same questions in the same order (published layout)
        forget = self.spec.forget_split
        scored = self.data.eval_splits[forget]
        if [r["question"] for r in scored] != self.forget_keys():
            raise DataError(f"TOFU {forget} and {forget}_perturbed hold different questions: the relearn attack "
                            "cannot hold forget examples back")
        splits = {} if forget_only else dict(self.data.eval_splits)
        splits[forget] = [scored[i] for i in keep]
        view = copy.copy(self)
        view.data = dataclasses.replace(self.data, eval_splits=splits)
        return view

    def score(self, backend: Any, tokenizer: Any, eval_spec: EvalSpec) -> ModelScores:
        result = ModelScores()
        for split, records in self.data.eval_splits.items():
            records = records[: eval_spec.max_examples] if eval_spec.max_examples else records
            scores = score_tofu_split(backend, split, records, split_kind(split), self.spec.prompt_format,
                                      tokenizer, eval_spec.max_new_tokens)
            result.raw[split] = scores
            result.examples.extend(scores.example_rows())
            result.generations.extend(scores.generation_rows())
        return result

    def aggregate(self, scores: dict[str, ModelScores], eval_spec: EvalSpec) -> list[dict[str, Any]]:
        forget = self.spec.forget_split
        retain_r = scores["retain"].raw[forget].truth_ratio if "retain" in scores else None
        rows = []
        for method, s in scores.items():
            for row in aggregate_tofu(s.raw, retain_r, forget, eval_spec.bootstrap, self.seed):
                rows.append({"method": method, **row})
        return rows
