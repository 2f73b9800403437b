"""Where an image set comes from: the bundled digits, the synthetic CIFAR-100 stand-in, local files or the hub."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.benchmarks.vision import cifar
from harness.benchmarks.vision.data import DIGITS_SOURCE, SYNTHETIC_SOURCE, ImageDataset, digits_dataset
from harness.benchmarks.vision.synth import SyntheticCifarSpec, ensure_synthetic
from harness.core.errors import DataError


def load_image_dataset(source: str, data_dir: str | Path, *, seed: int = 0, test_fraction: float = 0.2,
                       label_column: str = "fine_label", synthetic: Any = None) -> ImageDataset:
    """The image set named by `source`: `digits`, `synthetic` (sizes from `synthetic`, a SyntheticCifarSpec), a
    local CIFAR-100 directory, or a hub id."""
    if source == DIGITS_SOURCE:
        return digits_dataset(test_fraction, seed)
    if source == SYNTHETIC_SOURCE:
        return cifar.read_cifar100_pickles(ensure_synthetic(data_dir, synthetic or SyntheticCifarSpec(), seed))
    path = Path(source).expanduser()
    if path.is_dir():
        if cifar.find_pickle_dir(path) is not None:
            return cifar.read_cifar100_pickles(path)
        if cifar.find_parquet_shards(path, "train"):
            return cifar.read_hub_parquet_dir(path, label_column=label_column)
        raise DataError(f"benchmark.source {source!r}: the directory holds neither the cifar-100-python pickles "
                        "(train, test, meta) nor parquet shards in the hub layout (train-*.parquet, test-*.parquet)")
    if cifar.looks_like_hub_id(source):
        return cifar.load_hub_dataset(source, label_column=label_column)
    raise DataError(f"benchmark.source {source!r}: expected 'digits', 'synthetic', a local directory of CIFAR-100 "
                    "files, or a hub dataset id such as 'uoft-cs/cifar100'; no such directory exists")
