"""Synthetic TDEC: code-like token sequences the reference model memorises, generated from a seed.

The real TDEC forget sets (joeljang/knowledge-unlearning `data/main/lm_extraction_{32,128}_{0..4}.csv`)
are Pile sequences from the Training Data Extraction Challenge that GPT-Neo memorised in pre-training.
Here the target model memorises them in its reference fine-tuning instead. Each sequence is a run of
statements such as `set kora.mib = 412;` over a seeded vocabulary of invented identifiers: the
keywords and punctuation are predictable from the format (so held-out sequences get a non-zero MA,
as natural text does), the identifiers and numbers only from memory.

Splits, each a list of `{doc_id, corpus, text}` records (the CSV columns of the real files):
`forget` (memorised, then unlearned), `retain` (memorised by both reference models, the retain set
of regularised objectives) and `holdout` (same distribution, never trained on: the thresholds).
"""

from __future__ import annotations

import random

from pydantic import Field

from harness.config import StrictModel
from harness.core.errors import DataError

#: Bump when the generator's output changes, so cached copies are regenerated.
SYNTH_VERSION = 1
SPLITS = ("forget", "retain", "holdout")
#: Sequence length T (tokens) of the synthetic default; the paper uses 200 (GPT-Neo tokens).
SYNTH_SEQUENCE_LENGTH = 64

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "n", "r", "s", "x", "b")
_STATEMENTS = (
    "set {a}.{b} = {n};",
    "call {a}({b}, {n});",
    "if {a} > {n} then {b};",
    "let {a} = {b} + {n};",
)


class SyntheticTdecSpec(StrictModel):
    """Size of the synthetic TDEC set: sequences per split and statements per sequence."""

    n_forget: int = Field(32, ge=1)
    n_retain: int = Field(32, ge=1)
    n_holdout: int = Field(32, ge=1)
    statements_per_sequence: int = Field(10, ge=2)
    n_identifiers: int = Field(300, ge=20)


def _identifiers(rng: random.Random, n: int) -> list[str]:
    """`n` distinct lower-case pseudo-words of 2 syllables."""
    out: set[str] = set()
    for _ in range(100 * n):
        if len(out) == n:
            break
        out.add("".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(2)) + rng.choice(_CODAS))
    if len(out) < n:
        raise DataError(f"synthetic TDEC: cannot draw {n} distinct identifiers from the syllable tables")
    return sorted(out)


def _sequence(rng: random.Random, identifiers: list[str], n_statements: int) -> str:
    return " ".join(rng.choice(_STATEMENTS).format(a=rng.choice(identifiers), b=rng.choice(identifiers),
                                                   n=rng.randint(0, 999))
                    for _ in range(n_statements))


def generate_tdec(spec: SyntheticTdecSpec, seed: int) -> dict[str, list[dict]]:
    """The `forget`, `retain` and `holdout` records of a synthetic set, deterministic in `spec` and `seed`."""
    rng = random.Random(f"harness-tdec-synth-v{SYNTH_VERSION}:{seed}")
    identifiers = _identifiers(rng, spec.n_identifiers)
    sizes = {"forget": spec.n_forget, "retain": spec.n_retain, "holdout": spec.n_holdout}
    seen: set[str] = set()
    out: dict[str, list[dict]] = {}
    doc_id = 0
    for split in SPLITS:
        records = []
        while len(records) < sizes[split]:
            text = _sequence(rng, identifiers, spec.statements_per_sequence)
            if text in seen:  # practically never; keeps the splits disjoint
                continue
            seen.add(text)
            records.append({"doc_id": doc_id, "corpus": "synthetic", "text": text})
            doc_id += 1
        out[split] = records
    return out
