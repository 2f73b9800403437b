"""The `benchmark:` options of a vision class-deletion job (chosen by `benchmark.name: vision`)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from harness.benchmarks.vision.synth import SyntheticCifarSpec
from harness.config import BENCHMARK_OPTIONS, BenchmarkOptions


@BENCHMARK_OPTIONS.register("vision")
class VisionOptions(BenchmarkOptions):
    """Class deletion: which classes to delete, subsampling for quick runs, and the MIA feature.

    `source`: `digits` (scikit-learn's bundled UCI handwritten digits: 1,797 real 8x8 images, 10 classes; the
    embedded default), `synthetic` (a CIFAR-100-format set, `harness data synth cifar100`), a directory with
    the `cifar-100-python` pickles or the hub's parquet layout, or a hub id (`uoft-cs/cifar100`, from the
    local cache). Subsampling is seeded by `seed` and per class.
    """

    modality: ClassVar[str] = "image"

    name: Literal["vision"] = "vision"
    source: str = "digits"
    deleted_classes: list[int | str] = Field([0], min_length=1, description="class ids or names to delete")
    max_train_per_class: int | None = Field(None, ge=1, description="training images kept per class; null = all")
    max_test_per_class: int | None = Field(None, ge=1, description="test images kept per class; null = all")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="digits only: share of images held out for testing")
    label_column: str = Field("fine_label", description="hub layout: the label column (fine_label = 100 classes)")
    mia_feature: Literal["confidence", "entropy"] = "confidence"
    synthetic: SyntheticCifarSpec = SyntheticCifarSpec()

    def describe(self) -> str:
        return f"vision class deletion of {self.deleted_classes}"
