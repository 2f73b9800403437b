"""What a model reads, in one place per modality: how to build, load and save it, and how examples become batches.

Training (the Ray Train workers, reference fine-tuning), reference caching and scoring work through these,
so the loop is the same for a causal LM on TOFU and an image classifier on CIFAR-100. A modality is one
class registered in `MODALITIES`; a benchmark names its modality (`BenchmarkOptions.modality`).

- text: causal LMs (`AutoModelForCausalLM`); the processor is the tokenizer (a BPE trained on the
  benchmark's text for builtin models); examples are (context, continuation) pairs.
- image: image classifiers (`AutoModelForImageClassification`: ViT, DeiT, CLIP vision + head, builtin tiny
  ViT); the processor is an `ImageProcessor` (the model's `preprocessor_config.json`, applied in numpy/PIL);
  examples are (uint8 image (H, W, 3), label) pairs, preprocessed batch by batch.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from harness.core.registry import Registry
from harness.data.batch import Batch, ImageBatch
from harness.data.encode import collate, encode_training_pairs
from harness.models.image import (
    load_image_classifier,
    load_image_model,
    load_preprocessor_config,
    save_image_classifier,
)
from harness.models.preprocess import ImageTransform
from harness.models.text import build_builtin, is_builtin, load_pretrained, save_model, torch_dtype
from harness.models.tokenizer import get_or_train_tokenizer

MODALITIES: Registry[type[Modality]] = Registry("modality")


def fingerprint(obj: Any) -> str:
    """A short content hash of a JSON-able object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Modality(ABC):
    """How one kind of model is built, loaded and saved, and how its examples become batches."""

    name: ClassVar[str]

    @abstractmethod
    def load(self, source: str, dtype: torch.dtype = torch.float32,
             trust_remote_code: bool = False) -> tuple[torch.nn.Module, Any]:
        """A model and its processor (tokenizer, image processor) from a directory or hub id."""

    @abstractmethod
    def processor(self, spec: Any, bench: Any, cache_root: Path) -> Any:
        """The processor of a job's model (a locally trained tokenizer for builtin LMs)."""

    @abstractmethod
    def base_model(self, spec: Any, processor: Any, bench: Any, seed: int) -> torch.nn.Module:
        """The job's model before reference fine-tuning (builtin: built from its config with `seed`)."""

    @abstractmethod
    def save(self, model: torch.nn.Module, processor: Any, out_dir: Path) -> Path:
        """Write the model and its processor so `load(out_dir)` reads them back."""

    @abstractmethod
    def processor_key(self, processor: Any) -> str:
        """A hash of what the processor does to inputs (part of the reference cache key)."""

    @abstractmethod
    def examples_key(self, examples: Sequence[Any]) -> str:
        """A content hash of training examples (part of the reference cache key)."""

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
        return load_pretrained(source, dtype, trust_remote_code)

    def processor(self, spec: Any, bench: Any, cache_root: Path) -> Any:
        if is_builtin(spec.model.name):
            return get_or_train_tokenizer(bench.corpus_texts(), cache_root / "tokenizers")
        return load_pretrained(spec.model.name, torch.float32, spec.model.trust_remote_code, spec.model.revision)[1]

    def base_model(self, spec: Any, processor: Any, bench: Any, seed: int) -> torch.nn.Module:
        dtype = torch_dtype(spec.model.dtype)
        if is_builtin(spec.model.name):
            return build_builtin(spec.model.name, len(processor), seed=seed, dtype=dtype)
        return load_pretrained(spec.model.name, dtype, spec.model.trust_remote_code, spec.model.revision)[0]

    def save(self, model: torch.nn.Module, processor: Any, out_dir: Path) -> Path:
        return save_model(model, processor, out_dir)

    def processor_key(self, processor: Any) -> str:
        return fingerprint(sorted(processor.get_vocab().items()))

    def examples_key(self, examples: Sequence[Any]) -> str:
        return fingerprint(examples)

    def encode(self, processor: Any, examples: Sequence[Any], max_length: int) -> list[Any]:
        return encode_training_pairs(processor, [tuple(e) for e in examples], max_length)

    def collate(self, processor: Any) -> Callable[[list[Any]], Batch]:
        pad = processor.pad_token_id if processor.pad_token_id is not None else processor.eos_token_id
        return partial(collate, pad_id=pad)


@dataclass
class ImageProcessor:
    """A model's image-processor config (`preprocessor_config.json`) and the transform it defines."""

    config: dict[str, Any]
    transform: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.transform = ImageTransform.from_config(self.config)

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        """uint8 `(N, H, W, 3)` -> float32 pixel values `(N, 3, H', W')`."""
        return self.transform(images)


def collate_images(examples: Sequence[tuple[np.ndarray, int]], processor: ImageProcessor) -> ImageBatch:
    """Stack (image, label) pairs and preprocess them into an ImageBatch."""
    images = np.stack([np.asarray(img, dtype=np.uint8) for img, _ in examples])
    labels = torch.tensor([int(label) for _, label in examples], dtype=torch.long)
    return ImageBatch(processor(images), labels)


@MODALITIES.register("image")
class ImageModality(Modality):
    """Image classifiers: examples are (uint8 image, class label) pairs; one scored unit per image."""

    name = "image"

    def load(self, source: str, dtype: torch.dtype = torch.float32,
             trust_remote_code: bool = False) -> tuple[torch.nn.Module, Any]:
        model, config = load_image_model(source, dtype, trust_remote_code)
        return model, ImageProcessor(config)

    def processor(self, spec: Any, bench: Any, cache_root: Path) -> Any:
        return ImageProcessor(load_preprocessor_config(spec.model.name))

    def base_model(self, spec: Any, processor: Any, bench: Any, seed: int) -> torch.nn.Module:
        return load_image_classifier(spec.model.name, bench.class_names, seed=seed,
                                     dtype=torch_dtype(spec.model.dtype), revision=spec.model.revision,
                                     trust_remote_code=spec.model.trust_remote_code)

    def save(self, model: torch.nn.Module, processor: Any, out_dir: Path) -> Path:
        return save_image_classifier(model, out_dir, processor.config)

    def processor_key(self, processor: Any) -> str:
        return fingerprint(processor.config)

    def examples_key(self, examples: Sequence[Any]) -> str:
        h = hashlib.sha256()
        for img, label in examples:
            arr = np.ascontiguousarray(img, dtype=np.uint8)
            h.update(str(arr.shape).encode())
            h.update(arr.tobytes())
            h.update(int(label).to_bytes(8, "little", signed=True))
        return h.hexdigest()[:16]

    def encode(self, processor: Any, examples: Sequence[Any], max_length: int) -> list[Any]:
        return [(np.asarray(img, dtype=np.uint8), int(label)) for img, label in examples]

    def collate(self, processor: Any) -> Callable[[list[Any]], Batch]:
        return partial(collate_images, processor=processor)


def get_modality(name: str) -> Modality:
    """The modality registered as `name`."""
    return MODALITIES.get(name)()
