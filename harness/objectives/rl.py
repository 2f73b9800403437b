"""RL, random labelling: descend on the forget images relabelled at random, and on the retain set.

Reference: OPTML-Group/Unlearn-Saliency `Classification/unlearn/RL.py` (CIFAR-100 branch: forget targets
`np.random.randint(0, num_classes)`, trained with cross-entropy together with the retain set), as SalUn's paper
runs it (arXiv 2310.12508, Sec. 4). Here the random labels are drawn once per seed (`forget_labels`), uniform over
every class (the true one included, as `randint` draws), and each step pairs a forget batch with a retain batch
(`w_forget * CE(forget, random) + w_retain * CE(retain)`, both weighted 1) instead of shuffling their union.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

from harness.config import ObjectiveOptions
from harness.data.batch import Batch
from harness.objectives.base import IMAGE, OBJECTIVES, Objective, mean_nll


class RLOptions(ObjectiveOptions):
    """RL has no options of its own."""

    name: Literal["rl"] = "rl"


def random_labels(labels: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
    """A label per image drawn uniformly from every class, fixed by `seed`."""
    return np.random.default_rng(seed).integers(0, num_classes, size=len(labels)).astype(np.asarray(labels).dtype)


@OBJECTIVES.register("rl")
class RandomLabels(Objective):
    """Cross-entropy toward fixed random labels on the forget set."""

    Options = RLOptions
    modalities = frozenset({IMAGE})

    def forget_labels(self, labels: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
        return random_labels(labels, num_classes, seed)

    def forget_loss(self, out: Any, batch: Batch, ref_out: Any | None) -> torch.Tensor:
        return mean_nll(out.logits, batch)
