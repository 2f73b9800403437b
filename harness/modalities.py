"""What a model reads, in one place per modality: how to load it, encode examples and collate batches.

Training (the Ray Train workers, reference fine-tuning) and scoring work through these, so the loop is
the same for a causal LM on TOFU and an image classifier on CIFAR-100. A modality is one class
registered in `MODALITIES`; a benchmark names its modality (`BenchmarkOptions.modality`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, ClassVar

import torch

from harness.batch import Batch
from harness.registry import Registry

MODALITIES: Registry[type[Modality]] = Registry("modality")


class Modality(ABC):
    """How one kind of model is loaded, and how its examples become batches."""

    name: ClassVar[str]

    @abstractmethod
    def load(self, source: str, dtype: torch.dtype = torch.float32,
             trust_remote_code: bool = False) -> tuple[torch.nn.Module, Any]:
        """A model and its processor (tokenizer, image transform) from a directory or hub id."""

    @abstractmethod
    def encode(self, processor: Any, examples: Sequence[Any], max_length: int) -> list[Any]:
        """Examples in the form `collate` takes (done once, before streaming)."""

    @abstractmethod
    def collate(self, processor: Any) -> Callable[[list[Any]], Batch]:
        """A function that turns a list of encoded examples into a Batch."""


@MODALITIES.register("text")
class TextModality(Modality):
    """Causal LMs: examples are (context, continuation) pairs; the continuation (plus EOS) is scored."""

    name = "text"

    def load(self, source: str, dtype: torch.dtype = torch.float32,
             trust_remote_code: bool = False) -> tuple[torch.nn.Module, Any]:
        from harness.models import load_pretrained

        return load_pretrained(source, dtype, trust_remote_code)

    def encode(self, processor: Any, examples: Sequence[Any], max_length: int) -> list[Any]:
        from harness.train.data import encode_pairs

        return encode_pairs(processor, [tuple(e) for e in examples], max_length)

    def collate(self, processor: Any) -> Callable[[list[Any]], Batch]:
        from harness.train.data import collate

        pad = processor.pad_token_id if processor.pad_token_id is not None else processor.eos_token_id
        return partial(collate, pad_id=pad)


def get_modality(name: str) -> Modality:
    """The modality registered as `name`."""
    return MODALITIES.get(name)()
