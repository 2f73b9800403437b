"""The rephrase attack (TOFU): the forget questions asked in other forms, the model's weights unchanged.

Forms (`attacks.rephrase.forms`):
- `paraphrased`: TOFU's own `paraphrased_question` of each forget example (published in the `_perturbed`
  configs, and in the synthetic set's);
- `template`: another prompt template (`attacks.rephrase.template`, default `Q: {question}\\nA:`);
- `few_shot`: a prefix of `shots` retain question-answer pairs in the job's prompt format before the question.
The answer scored and generated is unchanged, so forget probability, ROUGE-L recall and truth ratio are
TOFU's, under the new prompt; forget quality compares with the retain model asked the same way.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

from harness.attacks.base import (
    ATTACKS,
    REFERENCES,
    Attack,
    AttackInputs,
    AttackOutput,
    ModelKey,
    aggregate_attacked,
    base_value,
    example_rows,
    recovery_row,
    tag,
    target_of,
)
from harness.benchmarks.base import Benchmark, ModelScores
from harness.benchmarks.tofu.benchmark import Tofu
from harness.benchmarks.tofu.score import answer_text, prompt_for, score_tofu_split, split_kind
from harness.core.errors import DataError, SpecError


class RephrasedTofu(Tofu):
    """A TOFU view that scores the forget split only, each question through `prompt` (or its paraphrase)."""

    prompt: Callable[[str], str] | None = None

    def score(self, backend: Any, tokenizer: Any, eval_spec: Any) -> ModelScores:
        split = self.spec.forget_split
        records = self.data.eval_splits[split]
        records = records[: eval_spec.max_examples] if eval_spec.max_examples else records
        sc = score_tofu_split(backend, split, records, split_kind(split), self.spec.prompt_format, tokenizer,
                              eval_spec.max_new_tokens, prompt=self.prompt)
        return ModelScores(examples=sc.example_rows(), generations=sc.generation_rows(), raw={split: sc})


def rephrased_view(bench: Benchmark, form: str, template: str, shots: int, tokenizer: Any) -> RephrasedTofu:
    """The view of `bench` (TOFU) that asks its forget questions in `form`."""
    if not isinstance(bench, Tofu):
        raise SpecError(f"attacks.rephrase: the {bench.name} benchmark has no question-answer forget set to rephrase "
                        "(TOFU only)")
    view = copy.copy(bench)
    view.__class__ = RephrasedTofu
    split, fmt = bench.spec.forget_split, bench.spec.prompt_format
    records = bench.data.eval_splits[split]
    if form == "paraphrased":
        missing = [i for i, r in enumerate(records) if not isinstance(r.get("paraphrased_question"), str)]
        if missing:
            raise DataError(f"attacks.rephrase: TOFU {split}_perturbed example {missing[0]} has no "
                            "'paraphrased_question' (drop the 'paraphrased' form)")
        records = [{**r, "question": r["paraphrased_question"]} for r in records]
    elif form == "template":
        view.prompt = lambda q: template.format(question=q)
    elif form == "few_shot":
        shots_pairs = bench.data.retain[:shots]
        prefix = "".join(prompt_for(r["question"], fmt, tokenizer) + answer_text(r["answer"], fmt) + "\n\n"
                         for r in shots_pairs)
        view.prompt = lambda q: prefix + prompt_for(q, fmt, tokenizer)
    else:
        raise SpecError(f"attacks.rephrase: unknown form {form!r}")
    view.data = dataclasses.replace(bench.data, eval_splits={split: records})
    return view


@ATTACKS.register("rephrase")
class Rephrase(Attack):
    """Score every model's forget split under each form of `attacks.rephrase.forms`."""

    name = "rephrase"

    def run(self, inputs: AttackInputs) -> AttackOutput:
        opts, out = self.options, AttackOutput()
        _, tokenizer = next(iter(inputs.models.values()))()
        for form in opts.forms:
            view = rephrased_view(inputs.bench, form, opts.template, opts.shots, tokenizer)
            same: dict[ModelKey, ModelKey] = {key: key for key in inputs.models}
            inputs.log(f"attack rephrase: scoring {len(same)} model(s) with the forget questions in form {form!r}")
            scores = inputs.score(view, same)
            params: dict[str, Any] = {"form": form}
            if form == "template":
                params["template"] = opts.template
            if form == "few_shot":
                params["shots"] = opts.shots
            for (name, seed) in inputs.models:
                retain = scores.get(("retain", seed if name in REFERENCES else inputs.ref_seed(seed)))
                rows = aggregate_attacked(view, scores[(name, seed)], retain, inputs.spec.eval)
                if name != "target":
                    rows += recovery_row(view, rows, base_value(inputs, name, seed),
                                         base_value(inputs, *target_of(inputs, name, seed)))
                out.metric_rows += tag(rows, self.name, form, params, name, seed)
                out.example_rows += tag(example_rows(scores[(name, seed)], view.name), self.name, form, params, name,
                                        seed)
        return out
