"""Training batches: (context, continuation) pairs tokenised once, padded, and streamed in seeded epochs."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from harness.objectives import IGNORE, Batch
from harness.text import encode_pair

Pair = tuple[str, str]
Encoded = tuple[list[int], int]


def encode_pairs(tokenizer: Any, pairs: Sequence[Pair], max_length: int) -> list[Encoded]:
    """Token ids and context length of each pair (continuation + EOS scored), cut to `max_length`."""
    out = []
    for context, continuation in pairs:
        ids, n_ctx = encode_pair(tokenizer, context, continuation, add_eos=True)
        out.append((ids[:max_length], min(n_ctx, max_length)))
    return out


def collate(examples: Sequence[Encoded], pad_id: int) -> Batch:
    """Right-pad a list of encoded pairs into a Batch whose labels cover only the continuations."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, n_ctx) in enumerate(examples):
        t = torch.tensor(ids, dtype=torch.long)
        input_ids[row, : len(ids)] = t
        mask[row, : len(ids)] = 1
        labels[row, n_ctx : len(ids)] = t[n_ctx:]
    return Batch(input_ids, mask, labels)


class BatchStream:
    """Endless seeded stream of shuffled batches over a fixed list of encoded examples."""

    def __init__(self, examples: Sequence[Encoded], batch_size: int, pad_id: int, seed: int) -> None:
        if not examples:
            raise ValueError("cannot stream batches from an empty set of examples")
        self.examples = list(examples)
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.examples) / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        while True:
            order = torch.randperm(len(self.examples), generator=self.generator).tolist()
            for i in range(0, len(order), self.batch_size):
                yield collate([self.examples[j] for j in order[i : i + self.batch_size]], self.pad_id)
