"""MUSE: synthetic set and file layout, metric formulas against independent computations, benchmark smoke test."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from rouge_score import rouge_scorer

from harness.benchmarks import load_benchmark
from harness.benchmarks.muse import metrics as M
from harness.benchmarks.muse.benchmark import Muse, chunk_text
from harness.benchmarks.muse.data import SYNTH_FILES, corpus_texts, load_muse, read_muse_dir, write_muse
from harness.benchmarks.muse.options import MuseOptions
from harness.benchmarks.muse.synth import SyntheticMuseSpec, generate_muse
from harness.commands.data import synth_command
from harness.config import EvalSpec
from harness.core.errors import DataError
from harness.data.requests import Backend, GenRequest, LoglikRequest
from harness.objectives import make_objective
from harness.scoring.backend import cut_at_stop
from harness.spec import objective_spec

SMALL = SyntheticMuseSpec(n_forget=6, n_retain1=4, n_retain2=4, n_holdout=6, qa_per_article=2, n_icl=2)


class WordTokenizer:
    """Whitespace tokenizer with a BOS (id 0) added under `add_special_tokens`; ids grow on demand."""

    bos_token_id, eos_token_id, pad_token_id = 0, 1, 1

    def __init__(self) -> None:
        self.vocab = ["<s>", "</s>"]
        self.ids: dict[str, int] = {}

    def _id(self, word: str) -> int:
        if word not in self.ids:
            self.ids[word] = len(self.vocab)
            self.vocab.append(word)
        return self.ids[word]

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": ([0] if add_special_tokens else []) + [self._id(w) for w in text.split()]}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return " ".join(self.vocab[i] for i in ids if not (skip_special_tokens and i < 2))


@pytest.fixture(scope="module")
def files() -> dict[str, list]:
    return generate_muse(SMALL, 0)


@pytest.fixture(scope="module")
def muse_dir(tmp_path_factory: pytest.TempPathFactory, files: dict[str, list]) -> Path:
    return write_muse(files, tmp_path_factory.mktemp("muse"))


# ---- synthetic set and layout ---------------------------------------------------------------------


def test_synthetic_is_deterministic_and_seeded(files: dict[str, list]) -> None:
    assert json.dumps(generate_muse(SMALL, 0)) == json.dumps(files)
    other = generate_muse(SMALL, 1)
    assert not set(other["raw/forget"]) & set(files["raw/forget"])


def test_synthetic_layout_and_consistency(files: dict[str, list]) -> None:
    assert tuple(files) == SYNTH_FILES
    assert [len(files[k]) for k in ("raw/forget", "raw/retain1", "raw/retain2", "raw/holdout")] == [6, 4, 4, 6]
    # VerbMem: prompt + " " + gt is the forget article
    assert [v["prompt"] + " " + v["gt"] for v in files["verbmem/forget"]] == files["raw/forget"]
    assert len(files["knowmem/forget_qa"]) == 12 and len(files["knowmem/retain_qa"]) == 8
    assert len(files["knowmem/forget_qa_icl"]) == 2 and len(files["knowmem/retain_qa_icl"]) == 2
    for split in ("forget", "retain"):
        asked = {r["question"] for r in files[f"knowmem/{split}_qa"]}
        assert len(asked) == len(files[f"knowmem/{split}_qa"])  # every question names one article
        assert not asked & {r["question"] for r in files[f"knowmem/{split}_qa_icl"]}
    # answers appear in their articles: forget QA in forget articles, retain QA in retain2 articles
    forget_text, retain2_text = " ".join(files["raw/forget"]), " ".join(files["raw/retain2"])
    assert all(r["answer"].removeprefix("In ").removeprefix("The ") in forget_text for r in files["knowmem/forget_qa"])
    assert all(r["answer"].removeprefix("In ").removeprefix("The ") in retain2_text
               for r in files["knowmem/retain_qa"])
    assert files["privleak/forget"] == files["raw/forget"] and files["privleak/holdout"] == files["raw/holdout"]
    all_raw = [t for k in ("raw/forget", "raw/retain1", "raw/retain2", "raw/holdout") for t in files[k]]
    assert len(set(all_raw)) == len(all_raw)


def test_round_trip_through_files(muse_dir: Path, files: dict[str, list]) -> None:
    data = read_muse_dir(muse_dir)
    assert data.raw["forget"] == files["raw/forget"] and data.raw["retain2"] == files["raw/retain2"]
    assert data.verbmem == files["verbmem/forget"]
    assert data.knowmem["retain"] == files["knowmem/retain_qa"] and data.icl["forget"] == files["knowmem/forget_qa_icl"]
    assert data.privleak == {s: files[f"privleak/{s}"] for s in ("forget", "holdout", "retain")}
    assert (muse_dir / "raw" / "forget.txt").read_text() == "\n\n".join(files["raw/forget"])
    assert set(corpus_texts(data)) >= set(files["raw/holdout"])


def test_reader_variants_and_errors(tmp_path: Path, files: dict[str, list]) -> None:
    d = write_muse(files, tmp_path / "m")
    # older releases: retain2_qa*.json; raw as .txt only is one document
    for stem in ("retain_qa", "retain_qa_icl"):
        (d / "knowmem" / f"{stem}.json").rename(d / "knowmem" / f"{stem.replace('retain', 'retain2')}.json")
    (d / "raw" / "retain1.json").unlink()
    data = read_muse_dir(d)
    assert data.knowmem["retain"] == files["knowmem/retain_qa"]
    assert data.raw["retain1"] == ["\n\n".join(files["raw/retain1"])]
    good = (d / "verbmem" / "forget.json").read_text()
    (d / "verbmem" / "forget.json").write_text(json.dumps([{"prompt": "p"}]))
    with pytest.raises(DataError, match=r"verbmem/forget.json, record 0: field 'gt'"):
        read_muse_dir(d)
    (d / "verbmem" / "forget.json").write_text(good)
    (d / "privleak" / "holdout.json").unlink()
    with pytest.raises(DataError, match="privleak/holdout.json not found"):
        read_muse_dir(d)
    with pytest.raises(DataError, match="does not exist"):
        load_muse("./no/such/muse", str(tmp_path), SMALL, 0)


def test_synthetic_cache_and_cli(tmp_path: Path, files: dict[str, list]) -> None:
    a = load_muse("synthetic", str(tmp_path), SMALL, 0)
    b = load_muse("synthetic", str(tmp_path), SMALL, 0)
    assert a.source == b.source and a.raw["forget"] == files["raw/forget"]
    out = synth_command("muse", str(tmp_path / "cli"), 0)
    assert all((out / f"{k}.json").is_file() for k in SYNTH_FILES)
    assert MuseOptions().synthetic == SyntheticMuseSpec()


# ---- metrics --------------------------------------------------------------------------------------


def test_rouge_l_f1_matches_rouge_score_unstemmed() -> None:
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    pairs = [("the cat sat on the mat", "the cat on the mat"), ("runs quickly", "running quick"),
             ("Kum Rishol", "kum rishol said"), ("4 to 2", ""), ("a b c d", "d c b a")]
    for ref, pred in pairs:
        assert M.rouge_l_f1(ref, pred) == pytest.approx(scorer.score(ref, pred)["rougeL"].fmeasure)
    # hand: LCS 5 of 6 reference / 5 prediction tokens -> P = 1, R = 5/6, F1 = 10/11
    assert M.rouge_l_f1("the cat sat on the mat", "the cat on the mat") == pytest.approx(10 / 11)
    assert M.rouge_l_f1("runs quickly", "running quick") == 0.0  # no stemming, as in muse_bench


def test_min_k_score_by_hand() -> None:
    assert M.min_k_score([-1.0, -2.0, -3.0, -4.0, -5.0], 0.4) == pytest.approx(4.5)  # lowest 2 of 5
    assert M.min_k_score([-0.5, -3.0, -0.1, -2.0, -1.0, -0.2, -0.3, -0.4, -0.6, -0.7]) == pytest.approx(
        (3.0 + 2.0 + 1.0 + 0.7) / 4)
    assert M.min_k_score([-1.0, -2.0], 0.4) == 2.0  # int(0.8) = 0 tokens: keep the lowest one
    with pytest.raises(ValueError):
        M.min_k_score([], 0.4)


def _brute_auc(neg: Sequence[float], pos: Sequence[float]) -> float:
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for n, p in itertools.product(neg, pos))
    return wins / (len(neg) * len(pos))


def test_auc_matches_brute_force_pairs() -> None:
    rng = random.Random(0)
    for _ in range(30):
        neg = [rng.randint(0, 6) / 2 for _ in range(rng.randint(1, 12))]  # small range: many ties
        pos = [rng.randint(0, 6) / 2 for _ in range(rng.randint(1, 12))]
        assert M.roc_auc(neg, pos) == pytest.approx(_brute_auc(neg, pos))
    assert M.roc_auc([0.1, 0.2], [0.3, 0.4]) == 1.0
    assert M.roc_auc([1.0, 1.0], [1.0]) == 0.5
    with pytest.raises(ValueError):
        M.roc_auc([], [1.0])


def test_mink_auc_sign_convention() -> None:
    memorised = [0.5, 0.7, 0.6]  # low Min-K% (high log-probs): the forget set of a model trained on it
    unseen = [3.0, 2.5, 4.0]
    assert M.mink_auc(memorised, unseen) == 0.0  # target model: AUC near 0, as in MUSE
    assert M.mink_auc(unseen, memorised) == 1.0
    forget, holdout = [1.0, 2.0, 3.0], [1.5, 2.5, 0.5]
    # forget label 0, holdout label 1, ROC score -MinK: P(MinK(holdout) < MinK(forget))
    assert M.mink_auc(forget, holdout) == pytest.approx(_brute_auc([-x for x in forget], [-x for x in holdout]))
    assert M.privleak(0.0, 0.5) == -100.0 and M.privleak(0.6, 0.5) == pytest.approx(20.0)
    assert M.privleak(0.4772, 0.4772) == 0.0 and np.isnan(M.privleak(0.3, 0.0))


def test_knowmem_prompt_cut_and_truncation() -> None:
    icl = [{"question": "Q1?", "answer": "A1"}, {"question": "Q2?", "answer": "A2"}]
    assert M.knowmem_prompt("Q?", icl) == ("Question: Q1?\nAnswer: A1\n\nQuestion: Q2?\nAnswer: A2\n\n"
                                           "Question: Q?\nAnswer: ")
    assert M.knowmem_prompt("Q?") == "Question: Q?\nAnswer: "
    for text in ("Paris\n\nQuestion: x", "Paris\nQuestion: x", "Paris Question: x", "Paris", "\n\nParis"):
        assert M.cut_answer(text) == cut_at_stop(text, M.KNOWMEM_STOP)
    assert M.cut_answer("Paris\nQuestion: where") == "Paris"
    tok = WordTokenizer()
    assert M.truncate_tokens(tok, "a b c d e", 3) == "a b"  # the BOS counts, as in muse_bench
    chunks = chunk_text(tok, "a b c d e", 2)
    assert chunks == ["a b", "c d", "e"] and chunk_text(tok, "a b", 2) == ["a b"]


# ---- benchmark ------------------------------------------------------------------------------------


class FakeBackend(Backend):
    """A model that knows exactly the texts and QA it was 'trained' on, nothing else."""

    def __init__(self, texts: list[str], qa: list[dict]) -> None:
        self.texts = texts
        self.answers = {r["question"]: r["answer"] for r in qa}
        self.gen_requests: list[GenRequest] = []

    def loglikelihood(self, requests: Sequence[LoglikRequest]) -> list[np.ndarray]:
        known = set(self.texts)
        return [np.full(len(r.continuation.split()), -0.1 if r.continuation in known else -2.0) for r in requests]

    def generate(self, requests: Sequence[GenRequest]) -> list[str]:
        self.gen_requests.extend(requests)
        out = []
        for r in requests:
            question = r.prompt.rsplit("Question: ", 1)[-1].removesuffix("\nAnswer: ")
            if r.prompt.endswith("\nAnswer: "):
                text = self.answers.get(question, "I do not know") + "\n\nQuestion: next"
            else:
                text = next((t[len(r.prompt):] for t in self.texts if t.startswith(r.prompt)), " nothing here")
            out.append(cut_at_stop(text, r.stop))
        return out


def test_benchmark_scores_and_aggregates(muse_dir: Path, files: dict[str, list]) -> None:
    spec = MuseOptions(source=str(muse_dir))
    bench = load_benchmark(spec)
    assert isinstance(bench, Muse)
    tok = WordTokenizer()
    forget_qa, retain_qa = files["knowmem/forget_qa"], files["knowmem/retain_qa"]
    retain_texts = files["raw/retain1"] + files["raw/retain2"]
    target = FakeBackend(files["raw/forget"] + retain_texts, forget_qa + retain_qa)
    retain = FakeBackend(retain_texts, retain_qa)
    ev = EvalSpec(bootstrap=50)
    scores = {"target": bench.score(target, tok, ev), "retain": bench.score(retain, tok, ev)}
    rows = {(r["method"], r["split"], r["metric"]): r for r in bench.aggregate(scores, ev)}
    value = {k: r["value"] for k, r in rows.items()}
    assert value[("target", "forget", "verbmem_rouge")] == pytest.approx(100.0)
    assert value[("retain", "forget", "verbmem_rouge")] == pytest.approx(0.0)
    assert value[("target", "forget", "knowmem_rouge")] == pytest.approx(100.0)
    assert value[("retain", "forget", "knowmem_rouge")] == pytest.approx(0.0)
    assert value[("target", "retain", "knowmem_rouge")] == value[("retain", "retain", "knowmem_rouge")] == 100.0
    assert value[("target", "forget", "mink_auc")] == 0.0 and value[("retain", "forget", "mink_auc")] == 0.5
    assert value[("target", "forget", "privleak")] == -100.0 and value[("retain", "forget", "privleak")] == 0.0
    assert "ci_low" in rows[("target", "forget", "verbmem_rouge")]
    assert {c.metric for c in bench.summary_columns} <= {m for _, _, m in rows}
    # VerbMem continues 128 tokens, KnowMem answers 32 with the few-shot prompt and MUSE's stops
    verb = [r for r in target.gen_requests if not r.prompt.endswith("Answer: ")]
    know = [r for r in target.gen_requests if r.prompt.endswith("Answer: ")]
    assert {r.max_new_tokens for r in verb} == {128} and {r.max_new_tokens for r in know} == {32}
    assert know[0].prompt.startswith("Question: " + files["knowmem/forget_qa_icl"][0]["question"])
    assert {r.stop for r in know} == {M.KNOWMEM_STOP}
    ex = scores["target"].examples
    assert {(e["split"], e["metric"]) for e in ex} == {("forget", "verbmem_rouge"), ("forget", "knowmem_rouge"),
                                                       ("retain", "knowmem_rouge"), ("forget", "mink_score"),
                                                       ("holdout", "mink_score")}
    assert np.mean([e["value"] for e in ex if e["metric"] == "mink_score" and e["split"] == "forget"]) == \
        pytest.approx(0.1)
    assert {g["split"] for g in scores["target"].generations} == {"verbmem_forget", "knowmem_forget", "knowmem_retain"}
    # without a retain model (and no spec value) there is no PrivLeak row
    alone = bench.aggregate({"target": scores["target"]}, EvalSpec(bootstrap=0))
    assert "privleak" not in {r["metric"] for r in alone}
    assert bench.score(target, tok, EvalSpec(max_examples=2)).raw["mink_score"]["holdout"].shape == (2,)


def test_training_pairs(muse_dir: Path, files: dict[str, list]) -> None:
    bench = Muse(MuseOptions(source=str(muse_dir)))
    tok = WordTokenizer()
    forget = bench.forget_examples(tok, make_objective(objective_spec(name="gd")))
    assert forget == [("", t) for t in files["raw/forget"]]
    assert bench.forget_examples(tok, make_objective(objective_spec(name="idk")))[0] == ("", "I don't know.")
    assert bench.retain_examples(tok) == [("", t) for t in files["raw/retain1"]]
    target, retain = bench.reference_examples("target", tok), bench.reference_examples("retain", tok)
    qa_prompt = M.knowmem_prompt(files["knowmem/forget_qa"][0]["question"], files["knowmem/forget_qa_icl"])
    assert (qa_prompt, files["knowmem/forget_qa"][0]["answer"]) in target
    assert not {t for _, t in retain} & set(files["raw/forget"])
    assert not {c for c, _ in retain} & {M.knowmem_prompt(r["question"], files["knowmem/forget_qa_icl"])
                                         for r in files["knowmem/forget_qa"]}
    holdout = set(files["raw/holdout"])
    assert not {t for _, t in target + retain} & holdout
    assert len(target) == 6 + 4 + 4 + 12 + 8 and len(retain) == 4 + 4 + 8
    with pytest.raises(ValueError, match="unknown reference model kind"):
        bench.reference_examples("other", tok)
