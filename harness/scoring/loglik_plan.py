"""Batch plan for log-likelihood scoring: requests grouped by shared context, packed on a token budget.

TOFU-style evaluations ask several continuations of one prompt (answer, paraphrase, perturbed answers).
`plan_loglik` groups encoded requests by their context ids, drops duplicate continuations, cuts each
group into units of at most `batch_size` distinct continuations, orders the units longest first and
packs them greedily into batches under a padded-token budget. `HFBackend` then runs each batch's
prompts once and its continuations on the prompts' expanded KV cache.

The plan depends only on the token ids, not on request order, and greedy packing is prefix-consistent:
re-planning the requests of any contiguous run of batches gives exactly those batches again. So the
Ray pool can hand each worker whole batches and the worker's `HFBackend` runs the very batches an
in-process backend would (bit-identical results).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

Ids = tuple[int, ...]


@dataclass
class Unit:
    """One prompt and up to `batch_size` distinct continuations; `members[j]` are the request indices
    whose continuation is `continuations[j]`."""

    context: Ids
    continuations: list[Ids]
    members: list[list[int]] = field(default_factory=list)

    @property
    def cont_width(self) -> int:
        """Tokens the continuation pass feeds per row (every continuation token but the last)."""
        return max(len(c) for c in self.continuations) - 1

    def sort_key(self) -> tuple:
        return (-len(self.context), -self.cont_width, self.context, self.continuations[0])


@dataclass
class Batch:
    """Units scored together: one prompt pass (rows = units) and one continuation pass (rows = continuations)."""

    units: list[Unit]

    @property
    def requests(self) -> list[int]:
        return [i for u in self.units for m in u.members for i in m]

    def cost(self) -> int:
        return batch_cost(self.units)


def batch_cost(units: Sequence[Unit]) -> int:
    """Padded tokens of both passes: prompts x widest prompt + continuations x (widest prompt + widest
    continuation input) (the continuation pass attends over the cache as well)."""
    wp = max(len(u.context) for u in units)
    wc = max(u.cont_width for u in units)
    n_cont = sum(len(u.continuations) for u in units)
    return len(units) * wp + n_cont * (wc + (wp if wc > 0 else 0))


def plan_loglik(encoded: Sequence[tuple[Sequence[int], int]], batch_size: int,
                max_batch_tokens: int) -> tuple[list[Batch], list[int]]:
    """Batches for `encoded` (ids, n_ctx) pairs, and the requests with nothing to score (empty continuation).

    A batch holds at most `batch_size` continuations and, unless a single unit is larger, at most
    `max_batch_tokens` padded tokens (`batch_cost`).
    """
    groups: dict[Ids, dict[Ids, list[int]]] = {}
    empty: list[int] = []
    for i, (ids, n_ctx) in enumerate(encoded):
        if len(ids) <= n_ctx:
            empty.append(i)
            continue
        ctx, cont = tuple(ids[:n_ctx]), tuple(ids[n_ctx:])
        groups.setdefault(ctx, {}).setdefault(cont, []).append(i)
    units: list[Unit] = []
    for ctx, conts in groups.items():
        ordered = sorted(conts, key=lambda c: (-len(c), c))
        for start in range(0, len(ordered), batch_size):
            chunk = ordered[start:start + batch_size]
            units.append(Unit(ctx, chunk, [conts[c] for c in chunk]))
    units.sort(key=Unit.sort_key)
    batches: list[Batch] = []
    current: list[Unit] = []
    n_cont = 0
    for unit in units:
        if current and (n_cont + len(unit.continuations) > batch_size
                        or batch_cost([*current, unit]) > max_batch_tokens):
            batches.append(Batch(current))
            current, n_cont = [], 0
        current.append(unit)
        n_cont += len(unit.continuations)
    if current:
        batches.append(Batch(current))
    return batches, empty
