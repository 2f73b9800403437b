"""Ray-free sharding of scoring requests: the batches one in-process backend would run, cut into contiguous runs
of whole batches balanced by estimated cost (padded tokens for log-likelihood, prompt plus new tokens for
generation), one run per scoring worker."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Sequence
from typing import Any

from harness.data.requests import GenRequest, LoglikRequest
from harness.data.text import encode_pair
from harness.scoring.backend import encode_loglik_requests
from harness.scoring.hf_backend import TOKENS_PER_ROW
from harness.scoring.loglik_plan import plan_loglik


def longest_first(lengths: Sequence[int]) -> list[int]:
    """Indices by length, longest first, stable: the order `HFBackend` batches in."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


def loglik_length(tokenizer: Any, req: LoglikRequest, max_length: int | None) -> int:
    """Token count `HFBackend` scores for `req` (BOS prefix for an empty context, left-truncated to the window)."""
    ids, n_ctx = encode_pair(tokenizer, req.context, req.continuation, add_eos=req.add_eos)
    n = len(ids) + (1 if n_ctx == 0 else 0)
    return min(n, max_length) if max_length else n


def prompt_length(tokenizer: Any, req: GenRequest) -> int:
    """Token count of a generation prompt (with the tokenizer's special tokens)."""
    return len(tokenizer(req.prompt, add_special_tokens=True)["input_ids"])


def plan_shards(costs: Sequence[float], n: int) -> list[range]:
    """Cut a sequence of batch costs into at most `n` contiguous, non-empty runs of similar total cost.

    Boundary k sits where the running cost is closest to k/n of the total (kept strictly increasing,
    leaving at least one batch for every later run).
    """
    b = len(costs)
    n = min(n, b)
    if n <= 1:
        return [range(0, b)] if b else []
    prefix = [0.0, *itertools.accumulate(float(c) for c in costs)]
    total = prefix[-1]
    bounds = [0]
    for k in range(1, n):
        lo, hi = bounds[-1] + 1, b - (n - k)
        j = min(max(bisect.bisect_left(prefix, total * k / n, lo, hi + 1), lo), hi)
        if j > lo and abs(prefix[j - 1] - total * k / n) <= abs(prefix[j] - total * k / n):
            j -= 1
        bounds.append(j)
    bounds.append(b)
    return [range(bounds[i], bounds[i + 1]) for i in range(n)]


def shard_requests(lengths: Sequence[int], batch_size: int, n_workers: int,
                   batch_cost: Callable[[list[int]], float]) -> list[list[int]]:
    """Request indices per worker: longest-first batches of `batch_size`, contiguous runs balanced by cost."""
    order = longest_first(lengths)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    runs = plan_shards([batch_cost(batch) for batch in batches], n_workers)
    return [[i for batch in batches[run.start:run.stop] for i in batch] for run in runs]


def loglik_shards(tokenizer: Any, requests: Sequence[LoglikRequest], batch_size: int, max_length: int | None,
                  n_workers: int) -> list[list[int]]:
    """Request indices per worker: contiguous runs of the batches `HFBackend` plans (`plan_loglik`),
    balanced by padded tokens; requests with nothing to score go with the first worker."""
    encoded = encode_loglik_requests(tokenizer, requests, max_length)
    batches, empty = plan_loglik(encoded, batch_size, batch_size * TOKENS_PER_ROW)
    runs = plan_shards([b.cost() for b in batches], n_workers)
    shards = [[i for b in batches[run.start:run.stop] for i in b.requests] for run in runs]
    if empty:
        shards = [empty + shards[0], *shards[1:]] if shards else [empty]
    return shards
