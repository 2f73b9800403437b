"""The portable `hf` backend: batched transformers forward passes and greedy `generate` on one device."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from harness.data.requests import Backend, ClassifyRequest, GenRequest, LoglikRequest
from harness.scoring.backend import BACKENDS, cut_at_stop, encode_loglik_requests, resolve_device
from harness.scoring.loglik_plan import Unit, plan_loglik

#: Default padded-token budget of one log-likelihood batch, per `batch_size` row.
TOKENS_PER_ROW = 128


def _batches(order: list[int], batch_size: int) -> Iterator[list[int]]:
    """Consecutive slices of `order` of at most `batch_size` indices."""
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def _longest_first(lengths: Sequence[int]) -> list[int]:
    """Indices sorted by length, longest first (stable, so equal lengths keep request order)."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


def _progress(total: int, desc: str) -> tqdm:
    """A progress bar that stays quiet when stderr is not a terminal."""
    return tqdm(total=total, desc=desc, leave=False, disable=not sys.stderr.isatty())


@BACKENDS.register("hf")
class HFBackend(Backend):
    """Transformers backend: right-padded batched scoring and left-padded greedy generation with KV cache for
    language models; batched classification for image classifiers (whose processor comes as `tokenizer`)."""

    reloadable = True

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 16,
                 device: str | torch.device | None = "auto", max_batch_tokens: int | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        #: padded tokens of one log-likelihood batch (both passes); `batch_size` caps its continuations
        self.max_batch_tokens = max_batch_tokens or batch_size * TOKENS_PER_ROW
        if getattr(model, "hf_device_map", None) is None:
            model = model.to(resolve_device(device))
        self.model = model
        self.device = next(model.parameters()).device
        # a tokenizer for language models; an image classifier's processor has no pad token
        self.pad_id = self._pad_id() if hasattr(tokenizer, "pad_token_id") else None
        self.max_length = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
        self._keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters

    def _pad_id(self) -> int:
        """The tokenizer's pad id, else its EOS id (many causal LMs ship no pad token)."""
        for tid in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if tid is not None:
                return int(tid)
        raise ValueError("tokenizer has neither a pad nor an EOS token")

    @contextmanager
    def _eval_mode(self) -> Iterator[None]:
        """model.eval() + inference_mode, restoring the model's training flag afterwards."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            self.model.train(was_training)

    # ---- log-likelihood -------------------------------------------------------------------------

    def loglikelihood(self, requests: Sequence[LoglikRequest]) -> list[np.ndarray]:
        """Per request, float64 log-probs of its continuation tokens.

        Requests sharing a context are scored together (`plan_loglik`): per batch one forward pass over
        the distinct prompts, then one over all their continuations on the prompts' KV cache.
        """
        encoded = encode_loglik_requests(self.tokenizer, requests, self.max_length)
        batches, empty = plan_loglik(encoded, self.batch_size, self.max_batch_tokens)
        results: list[np.ndarray | None] = [None] * len(encoded)
        for i in empty:
            results[i] = np.zeros(0, dtype=np.float64)
        with self._eval_mode(), _progress(len(encoded), "loglikelihood") as bar:
            for batch in batches:
                for members, logprobs in zip((m for u in batch.units for m in u.members),
                                             self._score_units(batch.units), strict=True):
                    for i in members:
                        results[i] = logprobs
                bar.update(len(batch.requests))
        return results  # type: ignore[return-value]

    def _score_units(self, units: list[Unit]) -> list[np.ndarray]:
        """Log-probs of every continuation of `units`, in unit then continuation order.

        Prompt pass: the prompts left-padded, position ids counted from each prompt's first token; the
        last position predicts every continuation's first token. Continuation pass: each continuation but
        its last token, right-padded, on the prompt cache repeated per continuation, at positions
        `n_ctx + t` and attending over its prompt's unpadded tokens.
        """
        dev = self.device
        wp = max(len(u.context) for u in units)
        p_ids = torch.full((len(units), wp), self.pad_id, dtype=torch.long)
        p_mask = torch.zeros((len(units), wp), dtype=torch.long)
        for row, u in enumerate(units):
            p_ids[row, wp - len(u.context):] = torch.tensor(u.context, dtype=torch.long)
            p_mask[row, wp - len(u.context):] = 1
        p_pos = (p_mask.cumsum(-1) - 1).clamp_(min=0)
        extra = {"logits_to_keep": 1} if self._keeps_logits else {}
        out = self.model(input_ids=p_ids.to(dev), attention_mask=p_mask.to(dev), position_ids=p_pos.to(dev),
                         use_cache=True, **extra)
        first = out.logits[:, -1].float().log_softmax(-1)  # (units, vocab)
        conts = [(row, c) for row, u in enumerate(units) for c in u.continuations]
        unit_of = torch.tensor([row for row, _ in conts], dtype=torch.long)
        first_tok = torch.tensor([c[0] for _, c in conts], dtype=torch.long)
        lp_first = first[unit_of.to(first.device), first_tok.to(first.device)].double().cpu().numpy()
        wc = max(len(c) for _, c in conts) - 1
        if wc == 0:
            return [lp_first[j:j + 1] for j in range(len(conts))]
        c_ids = torch.full((len(conts), wc), self.pad_id, dtype=torch.long)
        target = torch.zeros((len(conts), wc), dtype=torch.long)
        c_mask = torch.zeros((len(conts), wc), dtype=torch.long)
        for j, (_, c) in enumerate(conts):
            n = len(c) - 1
            c_ids[j, :n] = torch.tensor(c[:-1], dtype=torch.long)
            target[j, :n] = torch.tensor(c[1:], dtype=torch.long)
            c_mask[j, :n] = 1
        n_ctx = torch.tensor([len(units[row].context) for row, _ in conts], dtype=torch.long)
        c_pos = n_ctx[:, None] + torch.arange(wc)[None, :]
        cache = out.past_key_values
        cache.reorder_cache(unit_of.to(dev))
        mask = torch.cat([p_mask[unit_of], c_mask], dim=1)
        logits = self.model(input_ids=c_ids.to(dev), attention_mask=mask.to(dev), position_ids=c_pos.to(dev),
                            past_key_values=cache, use_cache=True).logits
        lp = logits.float().log_softmax(-1).gather(-1, target.to(logits.device)[..., None])[..., 0]
        lp = lp.double().cpu().numpy()
        return [np.concatenate([lp_first[j:j + 1], lp[j, :len(c) - 1]]) for j, (_, c) in enumerate(conts)]

    # ---- generation -----------------------------------------------------------------------------

    def generate(self, requests: Sequence[GenRequest]) -> list[str]:
        """Per request, greedy text after the prompt (special tokens dropped), cut at its first stop."""
        prompts = [list(self.tokenizer(r.prompt, add_special_tokens=True)["input_ids"]) for r in requests]
        results: list[str | None] = [None] * len(requests)
        order = _longest_first([len(p) for p in prompts])
        with self._eval_mode(), _progress(len(order), "generate") as bar:
            for idx in _batches(order, self.batch_size):
                limits = [requests[i].max_new_tokens for i in idx]
                texts = self._generate_batch([prompts[i] for i in idx], limits)
                for i, text in zip(idx, texts, strict=True):
                    results[i] = cut_at_stop(text, requests[i].stop)
                bar.update(len(idx))
        return results  # type: ignore[return-value]

    def _generate_batch(self, prompts: list[list[int]], max_new: list[int]) -> list[str]:
        """Left-pad, greedy-generate with KV cache, decode only each row's new tokens up to its first EOS."""
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            mask[row, width - len(ids):] = 1
        eos_id = self.tokenizer.eos_token_id
        out = self.model.generate(
            input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
            do_sample=False, max_new_tokens=max(max_new), pad_token_id=self.pad_id,
            eos_token_id=eos_id, use_cache=True, temperature=None, top_p=None, top_k=None,
        )
        texts = []
        for row, limit in enumerate(max_new):
            new = out[row, width:width + limit].tolist()
            if eos_id is not None and eos_id in new:
                new = new[:new.index(eos_id)]
            texts.append(self.tokenizer.decode(new, skip_special_tokens=True))
        return texts

    # ---- classification -------------------------------------------------------------------------

    def classify(self, requests: Sequence[ClassifyRequest]) -> list[np.ndarray]:
        """Per image, float64 class log-probabilities; the processor preprocesses each batch of images."""
        out: list[np.ndarray] = []
        dtype = next(self.model.parameters()).dtype
        with self._eval_mode(), _progress(len(requests), "classify") as bar:
            for start in range(0, len(requests), self.batch_size):
                chunk = requests[start:start + self.batch_size]
                pixels = self.tokenizer(np.stack([r.image for r in chunk])).to(self.device, dtype=dtype)
                logp = self.model(pixel_values=pixels).logits.float().log_softmax(-1)
                out.extend(row for row in logp.double().cpu().numpy())
                bar.update(len(chunk))
        return out
