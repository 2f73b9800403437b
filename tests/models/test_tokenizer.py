"""Byte-level BPE tokenizer: lossless round trip, fixed special ids, BOS handling, cached reload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from harness.benchmarks.tofu.synth import SyntheticTofuSpec, generate_tofu
from harness.core.errors import DataError
from harness.models.tokenizer import get_or_train_tokenizer, train_bpe_tokenizer

SAMPLES = [
    "Fuleil Lairu was born in 1922.",
    "  leading and trailing spaces  ",
    "tabs\tand\nnew lines\n\n",
    "Unicode: Héllo wörld, 日本語, emoji 🙂!",
    "'Pride and Prejudice' was written by Jane Austen.",
]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    data = generate_tofu(SyntheticTofuSpec(n_authors=20), 0)
    return sorted({r[k] for recs in data.values() for r in recs for k in ("question", "answer")})


@pytest.fixture(scope="module")
def tok(texts: list[str]):
    return train_bpe_tokenizer(texts, vocab_size=512)


def test_round_trip(tok) -> None:
    for s in SAMPLES:
        ids = tok(s, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == s
        assert tok.decode(tok(s)["input_ids"], skip_special_tokens=True) == s


def test_special_ids(tok) -> None:
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert len(tok) == 512


def test_bos_only_with_special_tokens(tok) -> None:
    plain = tok("Where was Fuleil Lairu born?", add_special_tokens=False)["input_ids"]
    with_bos = tok("Where was Fuleil Lairu born?")["input_ids"]
    assert with_bos == [1, *plain]
    assert 1 not in plain and 2 not in with_bos


def test_padding_side(tok) -> None:
    tok.padding_side = "left"
    try:
        batch = tok(["a", "a longer text here"], padding=True)["input_ids"]
        assert batch[0][0] == 0 and batch[1][0] == 1
    finally:
        tok.padding_side = "right"
    batch = tok(["a", "a longer text here"], padding=True)["input_ids"]
    assert batch[0][-1] == 0 and batch[0][0] == 1


def test_deterministic(texts: list[str], tok) -> None:
    again = train_bpe_tokenizer(texts, vocab_size=512)
    model = json.loads(tok.backend_tokenizer.to_str())["model"]
    assert json.loads(again.backend_tokenizer.to_str())["model"] == model
    assert model["merges"]


def _entries(cache_dir: Path) -> list[Path]:
    """The cache entries (hidden names are their lock files)."""
    return [p for p in cache_dir.iterdir() if not p.name.startswith(".")]


def test_cached_reload(tmp_path: Path, texts: list[str], tok) -> None:
    first = get_or_train_tokenizer(texts, tmp_path, vocab_size=512)
    (saved,) = _entries(tmp_path)
    assert saved.name.startswith("bpe-") and (saved / "tokenizer.json").is_file()
    second = get_or_train_tokenizer(texts, tmp_path, vocab_size=512)
    offline = AutoTokenizer.from_pretrained(saved, local_files_only=True)
    for s in SAMPLES:
        ids = tok(s)["input_ids"]
        assert first(s)["input_ids"] == second(s)["input_ids"] == offline(s)["input_ids"] == ids
        assert offline.decode(offline(s, add_special_tokens=False)["input_ids"]) == s
    assert (offline.pad_token_id, offline.bos_token_id, offline.eos_token_id) == (0, 1, 2)
    get_or_train_tokenizer(texts[:-1], tmp_path, vocab_size=512)
    assert len(_entries(tmp_path)) == 2  # other texts -> another cache entry


def test_bad_input() -> None:
    with pytest.raises(DataError):
        train_bpe_tokenizer([])
    with pytest.raises(DataError):
        train_bpe_tokenizer(["abc"], vocab_size=100)


def test_damaged_cached_tokenizer_is_retrained(tmp_path: Path, texts: list[str], tok) -> None:
    from harness.core.cache import CacheWarning

    get_or_train_tokenizer(texts, tmp_path, vocab_size=512)
    (saved,) = _entries(tmp_path)
    tokenizer_json = saved / "tokenizer.json"
    clean = tokenizer_json.read_bytes()
    tokenizer_json.write_bytes(clean[: len(clean) // 2])
    with pytest.warns(CacheWarning, match=f"tokenizer {saved} is damaged: tokenizer.json has"):
        again = get_or_train_tokenizer(texts, tmp_path, vocab_size=512)
    assert tokenizer_json.read_bytes() == clean
    assert [again(s)["input_ids"] for s in SAMPLES] == [tok(s)["input_ids"] for s in SAMPLES]
