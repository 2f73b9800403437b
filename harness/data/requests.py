"""The scoring request interface benchmarks build and backends answer (shaped like lm-evaluation-harness's `LM`).

Benchmarks build requests and read results; they know nothing about how a backend batches, pads or places the
model. The backends themselves and their registry live in `harness.scoring`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np


@dataclass(frozen=True)
class LoglikRequest:
    """Score `continuation` (plus one EOS when `add_eos`) given `context`; tokenised by `encode_pair`."""

    context: str
    continuation: str
    add_eos: bool = True


@dataclass(frozen=True)
class GenRequest:
    """Greedy continuation of `prompt`: at most `max_new_tokens`, cut at the first of `stop`."""

    prompt: str
    max_new_tokens: int
    stop: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class ClassifyRequest:
    """Class log-probabilities of one uint8 image `(H, W, 3)`, preprocessed as the model's processor says."""

    image: np.ndarray


class Backend(ABC):
    """A model ready to score: per-token log-probs of continuations and greedy generations (language models),
    or class log-probabilities of images (image classifiers)."""

    #: True when a process can drop this backend's model and load another one (nothing kept outside the
    #: process): a scoring worker (harness.scoring.worker) then serves the next model instead of exiting.
    reloadable: ClassVar[bool] = False

    @abstractmethod
    def loglikelihood(self, requests: Sequence[LoglikRequest]) -> list[np.ndarray]:
        """Per request, the float64 log-probs of its continuation tokens (EOS included), in request order."""

    @abstractmethod
    def generate(self, requests: Sequence[GenRequest]) -> list[str]:
        """Per request, the greedy text after the prompt, cut at the first stop string, in request order."""

    def classify(self, requests: Sequence[ClassifyRequest]) -> list[np.ndarray]:
        """Per request, the float64 log-probabilities over the classes, in request order (image classifiers)."""
        raise NotImplementedError(f"the {type(self).__name__} backend scores language models only; "
                                  "use eval.backend: hf for image classifiers")
