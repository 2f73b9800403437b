"""Shared scoring fixtures: a BPE tokenizer trained on a small corpus and a tiny Llama with peaked outputs."""

from __future__ import annotations

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from harness.models.tokenizer import train_bpe_tokenizer

CORPUS = [
    "Question: Who wrote the book?\nAnswer: The author wrote it in Paris.",
    "The quick brown fox jumps over the lazy dog.",
    "Basil Mahfouz Al-Kuwaiti was born in Kuwait City in 1972.",
    "Answer the question about the novel and its famous writer.",
]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    """The texts the scoring tests' tokenizer is trained on."""
    return list(CORPUS)


@pytest.fixture(scope="module")
def tokenizer(corpus: list[str]) -> PreTrainedTokenizerFast:
    return train_bpe_tokenizer(corpus, 320)


@pytest.fixture(scope="module")
def model(tokenizer: PreTrainedTokenizerFast, peaked_llama) -> torch.nn.Module:
    """Tiny Llama with matrices re-drawn at std 0.1: peaked, context-dependent greedy outputs."""
    return peaked_llama(len(tokenizer))
