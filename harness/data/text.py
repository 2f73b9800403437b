"""Tokenisation shared by training and scoring: a context and its scored continuation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def encode_pair(tokenizer: Any, context: str, continuation: str, add_eos: bool = True) -> tuple[list[int], int]:
    """Token ids of `context + continuation (+ EOS)` and how many leading ids belong to the context.

    Context and continuation are tokenised separately (as lm-evaluation-harness does), so the scored
    tokens are exactly the continuation's, whatever the BPE merges at the boundary. The context gets
    the tokenizer's special tokens (BOS where it has one); the continuation gets none, plus one EOS.
    """
    ctx = tokenizer(context, add_special_tokens=True)["input_ids"]
    cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    if add_eos:
        if tokenizer.eos_token_id is None:
            raise ValueError("tokenizer has no EOS token, but the continuation is scored with one")
        cont = cont + [tokenizer.eos_token_id]
    return list(ctx) + list(cont), len(ctx)


def encode_pairs(tokenizer: Any, pairs: Sequence[tuple[str, str]], add_eos: bool = True) -> list[tuple[list[int], int]]:
    """`encode_pair` of every (context, continuation), the same ids, in two batched tokenizer calls.

    Each distinct context and continuation is tokenised once (TOFU asks 7 continuations per question),
    and the batch calls run in the tokenizer's native batch encoder rather than once per string.
    """
    if add_eos and tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has no EOS token, but the continuation is scored with one")
    contexts = list(dict.fromkeys(c for c, _ in pairs))
    continuations = list(dict.fromkeys(c for _, c in pairs))
    ctx_ids = dict(zip(contexts, _batch_ids(tokenizer, contexts, True), strict=True))
    cont_ids = dict(zip(continuations, _batch_ids(tokenizer, continuations, False), strict=True))
    eos = [tokenizer.eos_token_id] if add_eos else []
    return [(ctx_ids[c] + cont_ids[k] + eos, len(ctx_ids[c])) for c, k in pairs]


def _batch_ids(tokenizer: Any, texts: list[str], special: bool) -> list[list[int]]:
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=special)["input_ids"]]
