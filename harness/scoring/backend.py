"""The scoring backend interface: two request types (log-likelihood, generation) every backend implements.

Shaped like lm-evaluation-harness's `LM`: benchmarks build requests and read results; they know
nothing about how a backend batches, pads or places the model. Backends register by name in
`BACKENDS` (`@BACKENDS.register("hf")`); `make_backend` builds one from its name.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import torch

from harness.core.registry import Registry
from harness.data.requests import Backend, LoglikRequest
from harness.data.text import encode_pair, encode_pairs

#: Backend classes by name; each is called as `cls(model, tokenizer, batch_size=..., device=...)`.
BACKENDS: Registry[type[Backend]] = Registry("backend")


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to (not including) the earliest occurrence of any stop string."""
    cut = len(text)
    for s in stop:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`auto`/None -> cuda when available else cpu; anything else as given."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _import_backend_module(name: str) -> None:
    """Import `harness.scoring.<name>_backend` so its class registers; a missing module is not an error here."""
    module = f"harness.scoring.{name}_backend"
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module:
            raise


def make_backend(name: str, model: Any, tokenizer: Any, batch_size: int = 16,
                 device: str | torch.device | None = "auto") -> Backend:
    """Build the backend registered as `name`, importing `harness.scoring.<name>_backend` on demand."""
    if name not in BACKENDS:
        _import_backend_module(name)
    return BACKENDS.get(name)(model, tokenizer, batch_size=batch_size, device=device)


def encode_loglik_request(tokenizer: Any, req: LoglikRequest, max_length: int | None) -> tuple[list[int], int]:
    """Token ids and context length of a log-likelihood request, the same for every backend.

    Context and continuation are tokenised as in training (`encode_pair`); an empty context gets a
    BOS (else EOS) to condition on; a request longer than the model's window loses context from the
    left, and a continuation that alone does not fit is an error.
    """
    ids, n_ctx = encode_pair(tokenizer, req.context, req.continuation, add_eos=req.add_eos)
    return _fit_window(tokenizer, req, ids, n_ctx, max_length)


def encode_loglik_requests(tokenizer: Any, requests: Sequence[LoglikRequest],
                           max_length: int | None) -> list[tuple[list[int], int]]:
    """`encode_loglik_request` of every request, tokenised in batches (`encode_pairs`): the same ids."""
    out: list[tuple[list[int], int] | None] = [None] * len(requests)
    for add_eos in (True, False):
        idx = [i for i, r in enumerate(requests) if r.add_eos == add_eos]
        encoded = encode_pairs(tokenizer, [(requests[i].context, requests[i].continuation) for i in idx], add_eos)
        for i, (ids, n_ctx) in zip(idx, encoded, strict=True):
            out[i] = _fit_window(tokenizer, requests[i], ids, n_ctx, max_length)
    return out  # type: ignore[return-value]


def _fit_window(tokenizer: Any, req: LoglikRequest, ids: list[int], n_ctx: int,
                max_length: int | None) -> tuple[list[int], int]:
    if n_ctx == 0:
        prefix = tokenizer.bos_token_id
        prefix = tokenizer.eos_token_id if prefix is None else prefix
        ids, n_ctx = [int(prefix)] + ids, 1
    if max_length is not None and len(ids) > max_length:
        n_cont = len(ids) - n_ctx
        if n_cont >= max_length:
            raise ValueError(f"continuation of {n_cont} tokens does not fit the model's "
                             f"{max_length}-token window: {req.continuation[:60]!r}")
        drop = len(ids) - max_length
        ids, n_ctx = ids[drop:], n_ctx - drop
    return ids, n_ctx
