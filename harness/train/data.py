"""Training batches: examples encoded once, collated into a modality's Batch, streamed in seeded epochs."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from harness.batch import IGNORE, Batch, TokenBatch
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


def collate(examples: Sequence[Encoded], pad_id: int) -> TokenBatch:
    """Right-pad a list of encoded pairs into a TokenBatch whose labels cover only the continuations."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, n_ctx) in enumerate(examples):
        t = torch.tensor(ids, dtype=torch.long)
        input_ids[row, : len(ids)] = t
        mask[row, : len(ids)] = 1
        labels[row, n_ctx : len(ids)] = t[n_ctx:]
    return TokenBatch(input_ids, mask, labels)


class BatchStream:
    """Endless seeded stream of full global batches; worker `rank` of `world_size` gets its slice of each.

    Batches run on across epoch boundaries (each epoch a fresh permutation), so every global batch
    is full and splits evenly: with the same seed, 1 worker and N workers see the same global batches.
    `collate` turns a list of examples into a Batch.
    """

    def __init__(self, examples: Sequence[Any], batch_size: int, collate: Callable[[list[Any]], Batch], seed: int,
                 rank: int = 0, world_size: int = 1) -> None:
        if not examples:
            raise ValueError("cannot stream batches from an empty set of examples")
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} does not split over {world_size} workers")
        self.examples = list(examples)
        self.batch_size = batch_size
        self.collate = collate
        self.seed = seed
        self.rank = rank
        self.world_size = world_size

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.examples) / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed(self.seed)
        per_worker = self.batch_size // self.world_size
        order: list[int] = []
        while True:
            while len(order) < self.batch_size:
                order += torch.randperm(len(self.examples), generator=generator).tolist()
            batch, order = order[: self.batch_size], order[self.batch_size :]
            mine = batch[self.rank * per_worker : (self.rank + 1) * per_worker]
            yield self.collate([self.examples[j] for j in mine])
