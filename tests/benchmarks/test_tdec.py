"""TDEC: synthetic sequences and CSV layout, MA / EL_n against hand computations, benchmark smoke tests."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.benchmarks import load_benchmark
from harness.benchmarks.tdec import metrics as M
from harness.benchmarks.tdec.benchmark import UTILITY_TASKS, Tdec, score_sequences
from harness.benchmarks.tdec.data import load_tdec, read_csv, read_tdec_dir, write_csv, write_tdec
from harness.benchmarks.tdec.options import TdecOptions
from harness.benchmarks.tdec.synth import SPLITS, SyntheticTdecSpec, generate_tdec
from harness.commands.data import synth_command
from harness.config import EvalSpec
from harness.core.errors import DataError
from harness.data.requests import Backend, GenRequest, LoglikRequest
from harness.objectives import make_objective
from harness.spec import objective_spec

SMALL = SyntheticTdecSpec(n_forget=3, n_retain=2, n_holdout=2, statements_per_sequence=4, n_identifiers=40)


@UTILITY_TASKS.register("test-constant")
def _constant_task(backend: Any, tokenizer: Any, eval_spec: EvalSpec) -> list[dict[str, Any]]:
    return [{"split": "lambada", "metric": "acc", "value": 0.25}]


class WordTokenizer:
    """Whitespace tokenizer (ids grow on demand); `decode` joins words with single spaces."""

    def __init__(self) -> None:
        self.vocab: list[str] = []
        self.ids: dict[str, int] = {}

    def _id(self, word: str) -> int:
        if word not in self.ids:
            self.ids[word] = len(self.vocab)
            self.vocab.append(word)
        return self.ids[word]

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [self._id(w) for w in text.split()]}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return " ".join(self.vocab[i] for i in ids)


class Memoriser(Backend):
    """Greedy 'model' that continues memorised token sequences verbatim and emits `junk` elsewhere."""

    def __init__(self, tokenizer: Any, texts: list[str], junk: str = "zzz") -> None:
        self.tok = tokenizer
        self.junk = junk
        self.texts = set(texts)
        self.prefixes: dict[str, list[int]] = {}
        self.requests: list[GenRequest] = []
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            for t in range(1, len(ids)):
                self.prefixes.setdefault(tokenizer.decode(ids[:t]), ids[t:])

    def loglikelihood(self, requests: Sequence[LoglikRequest]) -> list[np.ndarray]:
        """Probability 1 per token of a memorised text, 1/2 per token of anything else (retention's NLL)."""
        out = []
        for r in requests:
            n = len(self.tok(r.continuation, add_special_tokens=False)["input_ids"])
            known = any(t.startswith(r.continuation) for t in self.texts)
            out.append(np.zeros(n) if known else np.full(n, -np.log(2.0)))
        return out

    def generate(self, requests: Sequence[GenRequest]) -> list[str]:
        self.requests.extend(requests)
        out = []
        for r in requests:
            rest = self.prefixes.get(r.prompt)
            out.append(self.tok.decode(rest[:r.max_new_tokens]) if rest else " ".join([self.junk] * r.max_new_tokens))
        return out


@pytest.fixture(scope="module")
def splits() -> dict[str, list[dict]]:
    return generate_tdec(SMALL, 0)


@pytest.fixture(scope="module")
def tdec_dir(tmp_path_factory: pytest.TempPathFactory, splits: dict[str, list[dict]]) -> Path:
    return write_tdec(splits, tmp_path_factory.mktemp("tdec"))


# ---- synthetic set and layout ---------------------------------------------------------------------


def test_synthetic_is_deterministic_and_disjoint(splits: dict[str, list[dict]]) -> None:
    assert json.dumps(generate_tdec(SMALL, 0)) == json.dumps(splits)
    assert generate_tdec(SMALL, 1)["forget"] != splits["forget"]
    assert tuple(splits) == SPLITS and [len(splits[s]) for s in SPLITS] == [3, 2, 2]
    texts = [r["text"] for s in SPLITS for r in splits[s]]
    assert len(set(texts)) == len(texts)
    assert sorted(r["doc_id"] for s in SPLITS for r in splits[s]) == list(range(7))
    assert all(t.count(";") == 4 for t in texts)
    default = generate_tdec(SyntheticTdecSpec(), 0)
    assert [len(default[s]) for s in SPLITS] == [32, 32, 32]


def test_csv_round_trip_and_layout(tmp_path: Path, tdec_dir: Path, splits: dict[str, list[dict]]) -> None:
    data = read_tdec_dir(tdec_dir, "forget10")  # no forget10.csv: the synthetic forget.csv
    assert [r["text"] for r in data.forget] == [r["text"] for r in splits["forget"]]
    assert data.forget[0]["doc_id"] == "0" and data.forget[0]["corpus"] == "synthetic"
    assert [r["text"] for r in data.holdout] == [r["text"] for r in splits["holdout"]]
    tricky = [{"doc_id": 7, "corpus": "github", "text": 'a, "quoted"\nline two\r\n\tend'},
              {"doc_id": 8, "corpus": "pile-cc", "text": ""}]
    write_csv(tricky, tmp_path / "lm_extraction_32_0.csv")
    real = read_tdec_dir(tmp_path, "lm_extraction_32_0")
    assert [r["text"] for r in real.forget] == [tricky[0]["text"]]  # empty text dropped, like dropna
    assert real.retain == [] and real.holdout == []
    with pytest.raises(DataError, match="CSV files there: lm_extraction_32_0"):
        read_tdec_dir(tmp_path, "lm_extraction_128_0")
    (tmp_path / "bad.csv").write_text("doc_id,body\n1,x\n")
    with pytest.raises(DataError, match="'text' column"):
        read_csv(tmp_path / "bad.csv")
    with pytest.raises(DataError, match="does not exist"):
        load_tdec("/no/such/tdec", str(tmp_path), SMALL, 0, "forget")


def test_synthetic_cache_and_cli(tmp_path: Path, splits: dict[str, list[dict]]) -> None:
    a = load_tdec("synthetic", str(tmp_path), SMALL, 0, "forget10")
    assert load_tdec("synthetic", str(tmp_path), SMALL, 0, "forget10").source == a.source
    assert [r["text"] for r in a.retain] == [r["text"] for r in splits["retain"]]
    out = synth_command("tdec", str(tmp_path / "cli"), 0)
    assert sorted(p.name for p in out.glob("*.csv")) == ["forget.csv", "holdout.csv", "retain.csv"]
    assert TdecOptions().synthetic == SyntheticTdecSpec()


# ---- metrics --------------------------------------------------------------------------------------


def test_ngrams_and_ma_by_hand() -> None:
    assert M.ngrams([1, 2, 3, 2, 3], 2) == [(1, 2), (2, 3), (3, 2), (2, 3)]
    assert M.ngrams([1, 2], 3) == []
    # predictions for positions 1..4 of a b c d e: b (hit), x, d (hit), y -> 2 / 4
    assert M.memorization_accuracy(["b", "x", "d", "y"], list("abcde")) == 0.5
    assert M.memorization_accuracy([2, 3], [1, 2, 3]) == 1.0
    with pytest.raises(ValueError):
        M.memorization_accuracy(["a"], list("abc"))


def test_el_by_hand() -> None:
    x = [1, 2, 3, 4, 5]  # T = 5, n = 2: prefixes i = 1, 2, 3 count; denominator T - n = 3
    greedy = [
        [2, 3, 9, 9],  # i=1: suffix 2345 has grams 23 34 45; continuation grams 23 39 99 -> 1/3
        [3, 4, 5],     # i=2: suffix 345 -> 2/2
        [5, 5],        # i=3: suffix 45, continuation 55 -> 0
        [7],           # i=4: suffix of 1 token has no 2-gram: adds nothing
    ]
    assert M.extraction_likelihood(greedy, x, 2) == pytest.approx((1 / 3 + 1 + 0) / 3)
    assert M.extraction_likelihood(greedy[:3], x, 2) == pytest.approx(4 / 9)
    assert M.extraction_likelihood([x[i:] for i in range(1, 5)], x, 2) == 1.0
    assert M.extraction_likelihood_from_pairs(greedy, [x[i:] for i in range(1, 5)], 2, 5) == pytest.approx(4 / 9)
    # the numerator counts the continuation's n-grams with repeats (as the reference does)
    assert M.el_term([1, 1], [1, 2], 1) == 1.0 and M.el_term([2, 2], [1, 2], 1) == 1.0
    assert M.el_term([3], [1, 2], 1) == 0.0 and M.el_term([1], [1], 2) is None
    with pytest.raises(ValueError, match="prefix lengths 1..3"):
        M.extraction_likelihood(greedy[:2], x, 2)
    with pytest.raises(ValueError):
        M.extraction_likelihood([[1]], [1, 2], 2)


# ---- benchmark ------------------------------------------------------------------------------------


def test_score_sequences_counts_and_values() -> None:
    tok = WordTokenizer()
    texts = ["a b c d e f g", "p q r s t u v w"]
    ma, el, gens = score_sequences(Memoriser(tok, texts[:1]), tok, texts, 6, 2)
    assert ma.tolist() == [1.0, 0.0] and el.tolist() == [1.0, 0.0]  # cut to T = 6 tokens
    assert gens[0] == ("a b c", "d e f", "d e f")
    backend = Memoriser(tok, texts)
    score_sequences(backend, tok, texts[:1], 6, 2)
    one = [r for r in backend.requests if r.max_new_tokens == 1]
    assert [r.prompt for r in one] == ["a", "a b", "a b c", "a b c d", "a b c d e"]
    el_requests = backend.requests[len(one):]
    assert [(r.prompt, r.max_new_tokens) for r in el_requests] == [("a", 5), ("a b", 4), ("a b c", 3), ("a b c d", 2)]
    # a half-memorised sequence: wrong tokens after position 3
    half = Memoriser(tok, ["a b c x y z"])
    ma, el, _ = score_sequences(half, tok, ["a b c d e f"], 6, 2)
    assert ma[0] == pytest.approx(2 / 5)  # b, c right; d, e, f wrong
    # i=1: 'b c x y z' vs 'b c d e f' -> bc / 4; i=2: 'c x y z' vs 'c d e f' -> 0; i=3, 4: junk -> 0
    assert el[0] == pytest.approx((1 / 4) / 4)


def test_benchmark_scores_and_aggregates(tdec_dir: Path, splits: dict[str, list[dict]]) -> None:
    bench = load_benchmark(TdecOptions(source=str(tdec_dir)))
    assert isinstance(bench, Tdec) and bench.sequence_length == 200 and bench.el_metric == "el_10"
    tok = WordTokenizer()
    forget, retain = [r["text"] for r in splits["forget"]], [r["text"] for r in splits["retain"]]
    ev = EvalSpec(bootstrap=20)
    bench.utility_tasks = ["test-constant"]
    scores = {"target": bench.score(Memoriser(tok, forget + retain), tok, ev),
              "retain": bench.score(Memoriser(tok, retain), tok, ev)}
    rows = {(r["method"], r["split"], r["metric"]): r for r in bench.aggregate(scores, ev)}
    value = {k: r["value"] for k, r in rows.items()}
    # near 1, not exactly: sequences opening with the same keyword share the one-token prefix
    assert value[("target", "forget", "ma")] > 0.95 and value[("target", "forget", "el_10")] > 0.95
    assert value[("retain", "forget", "ma")] == 0.0 and value[("retain", "forget", "el_10")] == 0.0
    assert value[("target", "holdout", "ma_threshold")] == 0.0 and value[("target", "holdout", "el_threshold")] == 0.0
    # the retain model never saw the forget set: at (not below) the target's zero thresholds, so forgotten
    assert value[("target", "forget", "forgotten")] == 0.0 and value[("retain", "forget", "forgotten")] == 1.0
    assert value[("retain", "lambada", "acc")] == 0.25
    assert "ci_low" in rows[("target", "forget", "ma")]
    # retention: both references memorised the retain sequences (perplexity 1); a forget-only model did not
    assert value[("target", "retain", "ma")] > 0.95 and value[("retain", "retain", "ppl")] == pytest.approx(1.0)
    forget_only = bench.aggregate({"f": bench.score(Memoriser(tok, forget), tok, ev)}, ev)
    f = {(r["split"], r["metric"]): r["value"] for r in forget_only}
    assert f[("retain", "ppl")] == pytest.approx(2.0) and f[("retain", "ma")] < value[("target", "retain", "ma")]
    assert {c.metric for c in bench.summary_columns} <= {m for _, _, m in rows}
    ex = scores["target"].examples
    assert {(e["split"], e["metric"]) for e in ex} == {(s, m) for s in ("forget", "holdout") for m in ("ma", "el_10")
                                                        } | {("retain", "ma"), ("retain", "nll")}
    assert len([g for g in scores["target"].generations if g["split"] == "forget"]) == 3
    assert bench.score(Memoriser(tok, forget), tok, EvalSpec(max_examples=1)).raw["ma"]["forget"].shape == (1,)
    with pytest.raises(Exception, match="unknown TDEC utility task"):
        bench.utility_tasks = ["nope"]
        bench.score(Memoriser(tok, forget), tok, ev)


def test_real_bpe_tokenizer_round_trip(tdec_dir: Path, splits: dict[str, list[dict]]) -> None:
    """Through a byte-level BPE, a verbatim memoriser scores MA = EL = 1 on what it memorised."""
    from harness.models.tokenizer import train_bpe_tokenizer

    bench = Tdec(TdecOptions(source=str(tdec_dir)))
    tok = train_bpe_tokenizer(bench.corpus_texts(), vocab_size=300)
    for record in splits["forget"]:
        memoriser = Memoriser(tok, [record["text"]], junk="\u00a7")
        ma, el, _ = score_sequences(memoriser, tok, [record["text"], splits["holdout"][0]["text"]], 24, 4)
        assert ma[0] == 1.0 and el[0] == 1.0
        assert ma[1] < 1.0 and el[1] == 0.0


def test_training_pairs(tdec_dir: Path, splits: dict[str, list[dict]], tmp_path: Path) -> None:
    bench = Tdec(TdecOptions(source=str(tdec_dir)))
    texts = {s: [r["text"] for r in splits[s]] for s in SPLITS}
    assert bench.forget_examples(None, make_objective(objective_spec(name="ga"))) == [("", t) for t in texts["forget"]]
    assert bench.retain_examples(None) == [("", t) for t in texts["retain"]]
    assert bench.reference_examples("target", None) == [("", t) for t in texts["forget"] + texts["retain"]]
    assert bench.reference_examples("retain", None) == [("", t) for t in texts["retain"]]
    write_csv(splits["forget"], tmp_path / "forget.csv")
    no_retain = Tdec(TdecOptions(source=str(tmp_path)))
    with pytest.raises(DataError, match="no retain set"):
        no_retain.retain_examples(None)
    # fields the spec may gain are read when present
    custom = Tdec(TdecOptions(source=str(tdec_dir), el_n=3, sequence_length=16))
    assert (custom.el_n, custom.sequence_length, custom.el_metric) == (3, 16, "el_3")
    with pytest.raises(DataError, match="el_n < sequence_length"):
        Tdec(TdecOptions(source=str(tdec_dir), el_n=300))
