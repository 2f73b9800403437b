"""Byte-level BPE tokenizers trained locally on a benchmark's text (for the builtin tiny models)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from harness.core.cache import ensure_entry
from harness.core.errors import DataError, ModelError
from harness.models.text import damaged_file

#: Special tokens and their fixed ids (the builtin model configs use pad 0, bos 1, eos 2).
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)
#: Bump when training changes, so cached tokenizers are retrained.
TOKENIZER_VERSION = 1


def _train_raw(texts: list[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE `tokenizers.Tokenizer` trained on `texts`, BOS prepended by its post-processor."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B:1", special_tokens=[("<bos>", BOS_ID)]
    )
    return tok


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
        clean_up_tokenization_spaces=False, model_max_length=512,
    )


def train_bpe_tokenizer(texts: list[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (lossless decode) with `<pad>`=0, `<bos>`=1, `<eos>`=2, `<unk>`=3."""
    if not texts:
        raise DataError("cannot train a tokenizer on an empty corpus")
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise DataError(f"tokenizer vocab_size {vocab_size} is below the 260 byte-level base tokens")
    tok = _train_raw(list(texts), vocab_size)
    for i, name in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(name) != i:
            raise RuntimeError(f"special token {name} got id {tok.token_to_id(name)}, expected {i}")
    return _wrap(tok)


def tokenizer_key(texts: list[str], vocab_size: int) -> str:
    """Cache key of a tokenizer: hash of the training texts, vocab size and trainer version."""
    h = hashlib.sha256(f"bpe-v{TOKENIZER_VERSION}:{vocab_size}\n".encode())
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


def load_tokenizer(path: str | Path) -> Any:
    """Load a saved tokenizer offline with `AutoTokenizer`; ModelError naming the directory (or damaged file)."""
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as err:  # noqa: BLE001 - tokenizers and transformers raise their own types

        cause = (damaged_file(path) if Path(path).is_dir() else None) or f"{type(err).__name__}: {err}"
        raise ModelError(f"cannot load the tokenizer in {path}: {cause}") from None


def get_or_train_tokenizer(texts: list[str], cache_dir: str | Path, vocab_size: int = 1024) -> Any:
    """The tokenizer for `texts` from the cache entry `cache_dir/bpe-<key>` (core.cache), trained on first use."""

    def build(scratch: Path) -> None:
        train_bpe_tokenizer(texts, vocab_size).save_pretrained(scratch)

    entry = ensure_entry(Path(cache_dir).expanduser() / f"bpe-{tokenizer_key(texts, vocab_size)}", build,
                         what="tokenizer", required=["tokenizer.json"])
    return load_tokenizer(entry)
