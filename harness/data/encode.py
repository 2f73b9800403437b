"""Training batches: examples encoded once, collated into a modality's Batch, streamed in seeded epochs."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from harness.data.batch import IGNORE, Batch, TokenBatch
from harness.data.text import encode_pair

#: A context and its continuation, or several continuations of one context (DPO: preferred, rejected).
Pair = tuple[str, str | tuple[str, ...]]
Encoded = tuple[list[int], int]


def _encode(tokenizer: Any, context: str, continuation: str, max_length: int) -> Encoded:
    ids, n_ctx = encode_pair(tokenizer, context, continuation, add_eos=True)
    return ids[:max_length], min(n_ctx, max_length)


def encode_training_pairs(tokenizer: Any, pairs: Sequence[Pair],
                          max_length: int) -> list[Encoded | tuple[Encoded, ...]]:
    """Token ids and context length of each pair (continuation + EOS scored), cut to `max_length`; a pair
    with several continuations gives a tuple of them."""
    out: list[Encoded | tuple[Encoded, ...]] = []
    for context, continuation in pairs:
        if isinstance(continuation, str):
            out.append(_encode(tokenizer, context, continuation, max_length))
        else:
            out.append(tuple(_encode(tokenizer, context, c, max_length) for c in continuation))
    return out


def collate(examples: Sequence[Encoded | tuple[Encoded, ...]], pad_id: int) -> TokenBatch:
    """Right-pad a list of encoded pairs into a TokenBatch whose labels cover only the continuations.

    Examples with k continuations give k * B rows, continuation-major: rows `[j*B, (j+1)*B)` hold every
    example's j-th continuation (DPO's preferred answers, then its rejected ones).
    """
    if isinstance(examples[0][1], tuple):
        k = len(examples[0])
        examples = [ex[j] for j in range(k) for ex in examples]  # type: ignore[misc]
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
