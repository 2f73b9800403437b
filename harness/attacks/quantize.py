"""The quantize attack: weight-only INT8, INT4 (group-wise) and NF4 of each merged model, then the benchmark's
own metrics on every split (harness.attacks.quantization says which library does what, and why).

Rows: `attack=quantize`, `attack_variant` the scheme; on `target` and `retain` they show the quantization's
own effect (its noise) beside the unlearned models'.
"""

from __future__ import annotations

from typing import Any

from harness.attacks.base import (
    ATTACKS,
    REFERENCES,
    Attack,
    AttackInputs,
    AttackOutput,
    AttackSource,
    ModelKey,
    aggregate_attacked,
    base_value,
    example_rows,
    merged_copy,
    recovery_row,
    remove_dir,
    save_attacked,
    tag,
    target_of,
)
from harness.attacks.quantization import quantize_model


def scheme_params(options: Any, scheme: str) -> dict[str, Any]:
    """The parameters that define one scheme's quantization (for `attack_params`)."""
    params: dict[str, Any] = {"scheme": scheme, "library": "bitsandbytes" if scheme == "nf4" else "torchao"}
    if scheme == "int4":
        params["group_size"] = options.group_size
    if scheme == "nf4":
        params["blocksize"] = options.nf4_blocksize
    return params


@ATTACKS.register("quantize")
class Quantize(Attack):
    """Quantize every model with each scheme of `attacks.quantize.schemes` and score it on the full benchmark."""

    name = "quantize"

    def run(self, inputs: AttackInputs) -> AttackOutput:
        opts, out = self.options, AttackOutput()
        work = inputs.work / "quantize"
        sources: dict[ModelKey, AttackSource] = {}
        for (name, seed), load in inputs.models.items():
            for scheme in opts.schemes:
                model, processor = merged_copy(load)
                quantize_model(model, scheme, opts.group_size, opts.nf4_blocksize, opts.skip, inputs.device)
                sources[(f"{name}@{scheme}", seed)] = save_attacked(model, processor, work / scheme / f"{name}-{seed}",
                                                                    inputs.spec)
                del model
        inputs.log(f"attack quantize: scoring {len(sources)} quantized model(s) ({', '.join(opts.schemes)})")
        scores = inputs.score(inputs.bench, sources)
        for (name, seed) in inputs.models:
            retain = inputs.base.get(("retain", seed if name in REFERENCES else inputs.ref_seed(seed)))
            for scheme in opts.schemes:
                attacked = scores[(f"{name}@{scheme}", seed)]
                rows = aggregate_attacked(inputs.bench, attacked, retain, inputs.spec.eval)
                if name != "target":
                    rows += recovery_row(inputs.bench, rows, base_value(inputs, name, seed),
                                         base_value(inputs, *target_of(inputs, name, seed)))
                params = scheme_params(opts, scheme)
                out.metric_rows += tag(rows, self.name, scheme, params, name, seed)
                out.example_rows += tag(example_rows(attacked, inputs.bench.name), self.name, scheme, params, name,
                                        seed)
        remove_dir(work)
        return out
