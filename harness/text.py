"""Tokenisation shared by training and scoring: a context and its scored continuation."""

from __future__ import annotations

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
