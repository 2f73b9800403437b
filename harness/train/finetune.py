"""Full fine-tuning with the plain loss (LM or classification): how builtin reference models are made."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from harness.data.encode import BatchStream
from harness.models.modality import get_modality
from harness.objectives import mean_nll
from harness.train.schedule import make_scheduler


def finetune(
    model: torch.nn.Module,
    processor: Any,
    examples: Sequence[Any],
    epochs: int,
    lr: float,
    batch_size: int,
    warmup_ratio: float,
    seed: int,
    max_length: int = 128,
    device: torch.device | str = "cpu",
    desc: str = "finetune",
    progress: bool = True,
    modality: str = "text",
) -> list[float]:
    """Train every parameter on `examples` (continuations of pairs, or image labels); the per-step loss."""
    mod = get_modality(modality)
    stream = BatchStream(mod.encode(processor, examples, max_length), batch_size, mod.collate(processor), seed)
    n_steps = stream.batches_per_epoch * epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    scheduler = make_scheduler(optimizer, "cosine", n_steps, warmup_ratio)
    model.to(device).train()
    losses: list[float] = []
    batches = iter(stream)
    bar = tqdm(range(n_steps), desc=desc, disable=None if progress else True, leave=False)
    for _ in bar:
        batch = next(batches).to(device)
        loss = mean_nll(model(**batch.model_inputs()).logits, batch)
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError(f"{desc}: non-finite loss at step {len(losses)}; lower reference.train.lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses
