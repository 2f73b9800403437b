"""Synthetic TOFU generation, the published-file reader/writer, and their validation errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from harness.benchmarks.tofu.data import corpus_texts, load_tofu, read_config, write_tofu
from harness.benchmarks.tofu.synth import CONFIGS, SyntheticTofuSpec, generate_tofu
from harness.commands.data import synth_command
from harness.core.errors import DataError

SPEC = SyntheticTofuSpec()
PERTURBED_FIELDS = ("question", "answer", "paraphrased_answer", "paraphrased_question", "perturbed_answer")
KNOWLEDGE_FIELDS = ("question", "option1", "option2", "option3", "option4", "answer")


@pytest.fixture(scope="module")
def data() -> dict[str, list[dict]]:
    return generate_tofu(SPEC, 0)


@pytest.fixture(scope="module")
def tofu_dir(tmp_path_factory: pytest.TempPathFactory, data: dict[str, list[dict]]) -> Path:
    return write_tofu(data, tmp_path_factory.mktemp("tofu"))


def _qa(records: list[dict]) -> list[tuple[str, str]]:
    return [(r["question"], r["answer"]) for r in records]


def test_same_seed_identical_different_seed_different(data: dict[str, list[dict]]) -> None:
    assert json.dumps(generate_tofu(SPEC, 0)) == json.dumps(data)
    other = generate_tofu(SPEC, 1)
    assert other["full"] != data["full"]
    shared = {q for q, _ in _qa(data["full"])} & {q for q, _ in _qa(other["full"])}
    assert len(shared) < 10  # every question names its author: the authors differ


def test_configs_and_sizes(data: dict[str, list[dict]]) -> None:
    assert tuple(data) == CONFIGS
    sizes = {k: len(v) for k, v in data.items()}
    assert sizes["full"] == 400
    assert (sizes["forget01"], sizes["forget05"], sizes["forget10"]) == (4, 20, 40)
    assert (sizes["retain99"], sizes["retain95"], sizes["retain90"]) == (396, 380, 360)
    assert sizes["retain_perturbed"] == 40
    for pct in ("01", "05", "10"):
        assert _qa(data[f"forget{pct}_perturbed"]) == _qa(data[f"forget{pct}"])
    for name in ("real_authors", "real_authors_perturbed", "world_facts", "world_facts_perturbed"):
        assert sizes[name] == 20


def test_splits_partition_full_by_author(data: dict[str, list[dict]]) -> None:
    full = _qa(data["full"])
    for pct, keep in (("01", "99"), ("05", "95"), ("10", "90")):
        forget, retain = _qa(data[f"forget{pct}"]), _qa(data[f"retain{keep}"])
        assert retain + forget == full  # forget = the last authors, retain = the rest, in order
        assert not set(forget) & set(retain)
    assert set(_qa(data["forget01"])) < set(_qa(data["forget05"])) < set(_qa(data["forget10"]))
    assert set(_qa(data["retain_perturbed"])) <= set(_qa(data["retain90"]))
    assert len(set(full)) == len(full)
    # forget01 is exactly one author: a name in each of its questions and in no retain99 question
    names = set.intersection(*(_capitalised(q) for q, _ in _qa(data["forget01"])))
    assert len(names) == 2
    assert not any(names & _capitalised(q) == names for q, _ in _qa(data["retain99"]))


def _capitalised(question: str) -> set[str]:
    words = question.replace("'s ", " ").rstrip("?.").split()[1:]
    return {w for w in words if w[0].isupper()}


def test_fields_and_perturbed_answers(data: dict[str, list[dict]]) -> None:
    for name in ("forget01_perturbed", "forget05_perturbed", "forget10_perturbed", "retain_perturbed"):
        for rec in data[name]:
            assert set(rec) == set(PERTURBED_FIELDS)
            pert = rec["perturbed_answer"]
            assert isinstance(pert, list) and len(pert) == 5 and len(set(pert)) == 5
            assert rec["answer"] not in pert and rec["paraphrased_answer"] not in pert
            assert rec["paraphrased_answer"] != rec["answer"]
            assert len(rec["answer"].split()) <= 20
    for name in ("real_authors_perturbed", "world_facts_perturbed"):
        for rec in data[name]:
            assert set(rec) == {*KNOWLEDGE_FIELDS, "paraphrased_answer", "perturbed_answer"}
            pert = rec["perturbed_answer"]
            assert isinstance(pert, list) and len(pert) == 3 and rec["answer"] not in pert
            assert sorted(rec[f"option{i}"] for i in range(1, 5)) == sorted([rec["answer"], *pert])
        plain = name.removesuffix("_perturbed")
        assert [{k: r[k] for k in KNOWLEDGE_FIELDS} for r in data[name]] == data[plain]
    for name in ("full", "forget10", "retain90"):
        assert all(set(r) == {"question", "answer"} for r in data[name])


def test_more_facts_than_the_lists_cycle_then_fail() -> None:
    spec = SyntheticTofuSpec(n_authors=10, qa_per_author=8, n_real_authors=30, n_world_facts=40)
    data = generate_tofu(spec, 0)
    assert len(data["full"]) == 80 and len(data["forget01"]) == 8
    for name in ("real_authors", "world_facts"):
        questions = [r["question"] for r in data[name]]
        assert len(set(questions)) == len(questions)
    with pytest.raises(DataError, match="n_real_authors"):
        generate_tofu(SyntheticTofuSpec(n_real_authors=1000), 0)


def test_round_trip_through_local_directory(tofu_dir: Path, data: dict[str, list[dict]]) -> None:
    for name in CONFIGS:
        assert read_config(tofu_dir, name)[0] == data[name]
    loaded = load_tofu(str(tofu_dir), "/nonexistent", SPEC, 0, "forget05")
    assert loaded.forget == data["forget05"] and loaded.retain == data["retain95"]
    assert loaded.retain_split == "retain95"
    assert loaded.eval_splits == {
        "forget05": data["forget05_perturbed"], "retain": data["retain_perturbed"],
        "real_authors": data["real_authors_perturbed"], "world_facts": data["world_facts_perturbed"],
    }
    assert loaded.knowledge == _qa_dicts(data["real_authors"] + data["world_facts"])


def _qa_dicts(records: list[dict]) -> list[dict]:
    return [{"question": r["question"], "answer": r["answer"]} for r in records]


def test_synthetic_source_is_cached_and_equal(tmp_path: Path, data: dict[str, list[dict]]) -> None:
    first = load_tofu("synthetic", str(tmp_path), SPEC, 0, "forget10")
    assert first.forget == data["forget10"] and first.retain == data["retain90"]
    cached = Path(first.source)
    assert cached.parent == tmp_path and cached.name.startswith("tofu-synth-")
    stamp = (cached / "full.json").stat().st_mtime_ns
    again = load_tofu("synthetic", str(tmp_path), SPEC, 0, "forget10")
    assert again == first and (cached / "full.json").stat().st_mtime_ns == stamp
    other = load_tofu("synthetic", str(tmp_path), SPEC, 1, "forget10")
    assert other.source != first.source


def test_jsonl_and_parquet_files(tmp_path: Path, tofu_dir: Path, data: dict[str, list[dict]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for name in CONFIGS:
        if name.endswith("_perturbed"):
            pq.write_table(pa.Table.from_pylist(data[name]), tmp_path / f"{name}.parquet")
        else:
            (tmp_path / f"{name}.jsonl").write_text((tofu_dir / f"{name}.json").read_text())
    loaded = load_tofu(str(tmp_path), str(tmp_path), SPEC, 0, "forget10")
    assert loaded.eval_splits["forget10"] == data["forget10_perturbed"]
    assert loaded.files["forget10"].endswith("forget10.jsonl")


def test_corpus_texts_same_for_every_forget_split(tofu_dir: Path, data: dict[str, list[dict]]) -> None:
    texts = {s: corpus_texts(load_tofu(str(tofu_dir), "", SPEC, 0, s)) for s in ("forget01", "forget10")}
    assert texts["forget01"] == texts["forget10"] == sorted(set(texts["forget10"]))
    corpus = set(texts["forget10"])
    assert {r["answer"] for r in data["full"]} <= corpus
    assert set(data["retain_perturbed"][0]["perturbed_answer"]) <= corpus


def test_bad_forget_split(tofu_dir: Path) -> None:
    with pytest.raises(DataError, match=r"benchmark\.forget_split 'forget20'.*forget01, forget05, forget10"):
        load_tofu(str(tofu_dir), "", SPEC, 0, "forget20")


def _copy(src: Path, dst: Path) -> Path:
    for f in src.glob("*.json"):
        (dst / f.name).write_text(f.read_text())
    return dst


def test_missing_file_names_the_file(tmp_path: Path, tofu_dir: Path) -> None:
    d = _copy(tofu_dir, tmp_path)
    (d / "retain_perturbed.json").unlink()
    with pytest.raises(DataError, match="retain_perturbed.json"):
        load_tofu(str(d), "", SPEC, 0, "forget10")


def test_missing_field_names_config_record_and_field(tmp_path: Path, tofu_dir: Path) -> None:
    d = _copy(tofu_dir, tmp_path)
    records = [json.loads(line) for line in (d / "forget10_perturbed.json").read_text().splitlines()]
    del records[3]["paraphrased_answer"]
    write_tofu({"forget10_perturbed": records}, d)
    expected = r"'forget10_perturbed', record 3: missing field 'paraphrased_answer'"
    with pytest.raises(DataError, match=expected):
        load_tofu(str(d), "", SPEC, 0, "forget10")


def test_perturbed_answer_must_be_a_list(tmp_path: Path, tofu_dir: Path) -> None:
    d = _copy(tofu_dir, tmp_path)
    records = [json.loads(line) for line in (d / "world_facts_perturbed.json").read_text().splitlines()]
    records[0]["perturbed_answer"] = "just one string"
    write_tofu({"world_facts_perturbed": records}, d)
    expected = r"'world_facts_perturbed', record 0: field 'perturbed_answer' must be a non-empty list"
    with pytest.raises(DataError, match=expected):
        load_tofu(str(d), "", SPEC, 0, "forget10")


def test_hub_id_not_in_the_offline_cache_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(DataError) as err:
        load_tofu("harness-tests/no-such-tofu", "", SPEC, 0, "forget10")
    message = str(err.value)
    assert "'harness-tests/no-such-tofu'" in message and "config 'forget10'" in message
    assert "local datasets cache" in message and "network access" in message
    assert "local directory of the published TOFU files" in message


def test_hub_id_without_datasets_and_missing_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if `datasets` were not installed: import fails
    with pytest.raises(DataError, match=r"'locuslab/TOFU'.*needs the `datasets` package.*local directory"):
        load_tofu("locuslab/TOFU", "", SPEC, 0, "forget10")
    with pytest.raises(DataError, match="does not exist"):
        load_tofu("/no/such/tofu/dir", "", SPEC, 0, "forget10")


def test_synth_command(tmp_path: Path, data: dict[str, list[dict]]) -> None:
    out = synth_command("tofu", str(tmp_path / "tofu"), 0)
    assert sorted(p.stem for p in out.glob("*.json")) == sorted(CONFIGS)
    assert read_config(out, "forget10_perturbed")[0] == data["forget10_perturbed"]
    assert (synth_command("cifar100", str(tmp_path / "cifar"), 0) / "meta").is_file()
    with pytest.raises(DataError, match="unknown benchmark 'nope'"):
        synth_command("nope", str(tmp_path / "nope"), 0)
