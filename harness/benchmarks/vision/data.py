"""Image sets in memory (uint8 images, int labels, class names) and the class-deletion splits.

`load_image_dataset(source, ...)` reads one of:

- `digits`: scikit-learn's bundled UCI handwritten digits (`sklearn.datasets.load_digits`: 1,797 real 8x8
  images with 17 grey levels 0..16, 10 classes), scaled to uint8 0..255, replicated to 3 channels and split
  into train/test by a seeded stratified split (`sklearn.model_selection.train_test_split`);
- `synthetic`: the synthetic CIFAR-100-format set of `synth.py`, generated once and cached under `data_dir`;
- a local directory holding the published `cifar-100-python` pickles (or its parent), or a directory in the
  Hugging Face hub layout of `uoft-cs/cifar100` (parquet shards), see `cifar.py`;
- a hub dataset id (`uoft-cs/cifar100`), read from the local Hugging Face cache only.

Class deletion (SalUn, OPTML-Group/Unlearn-Saliency `Classification/dataset.py`, class-wise forgetting):
forget = the training images of the deleted classes, retain = the other training images, and the test split
divided into the retained classes' images (SalUn's test loader: it drops the deleted class) and the deleted
classes' images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from harness.core.errors import DataError

#: Names of the four class-deletion splits, as they appear in the results' `split` column.
SPLITS = ("forget", "retain", "test_retain", "test_forget")
DIGITS_SOURCE = "digits"
SYNTHETIC_SOURCE = "synthetic"


@dataclass(frozen=True)
class ImageSplit:
    """Images `(N, H, W, 3)` uint8, labels `(N,)` int64, and `ids`: each image's index in its source split."""

    images: np.ndarray
    labels: np.ndarray
    ids: np.ndarray

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise DataError(f"images must be a uint8 array (N, H, W, 3); got {self.images.dtype} {self.images.shape}")
        n = len(self.images)
        if self.labels.shape != (n,) or self.ids.shape != (n,):
            raise DataError(f"{n} images but labels {self.labels.shape} and ids {self.ids.shape}")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> ImageSplit:
        """The images at `index` (positions or a boolean mask), in that order."""
        return ImageSplit(self.images[index], self.labels[index], self.ids[index])

    @classmethod
    def of(cls, images: np.ndarray, labels: Sequence[int] | np.ndarray) -> ImageSplit:
        """A split with ids 0..N-1 (its images in source order)."""
        labels = np.asarray(labels, dtype=np.int64)
        return cls(np.ascontiguousarray(images), labels, np.arange(len(labels), dtype=np.int64))


@dataclass(frozen=True)
class ImageDataset:
    """A labelled image set: `train` and `test` splits, the class names (index = label), and where it came from."""

    train: ImageSplit
    test: ImageSplit
    class_names: tuple[str, ...]
    source: str = ""
    files: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.class_names)
        for name, split in (("train", self.train), ("test", self.test)):
            if len(split) == 0:
                raise DataError(f"{self.source or 'image set'}: the {name} split is empty")
            bad = split.labels[(split.labels < 0) | (split.labels >= n)]
            if len(bad):
                raise DataError(f"{self.source or 'image set'}: {name} label {int(bad[0])} is outside the "
                                f"{n} class names")

    @property
    def num_classes(self) -> int:
        """Number of classes (length of `class_names`)."""
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int]:
        """`(H, W)` of the images."""
        return int(self.train.images.shape[1]), int(self.train.images.shape[2])


@dataclass(frozen=True)
class ClassDeletionSplits:
    """The four class-deletion splits (see `SPLITS`) and which classes were deleted."""

    forget: ImageSplit
    retain: ImageSplit
    test_retain: ImageSplit
    test_forget: ImageSplit
    deleted: tuple[int, ...]
    class_names: tuple[str, ...]

    @property
    def retained(self) -> tuple[int, ...]:
        """Ids of the classes that are kept."""
        return tuple(c for c in range(len(self.class_names)) if c not in self.deleted)

    def split(self, name: str) -> ImageSplit:
        """The split called `name` (one of `SPLITS`)."""
        if name not in SPLITS:
            raise DataError(f"unknown class-deletion split {name!r} (known: {', '.join(SPLITS)})")
        return getattr(self, name)


def digits_dataset(test_fraction: float = 0.2, seed: int = 0) -> ImageDataset:
    """scikit-learn's 8x8 digits as uint8 RGB (0..16 -> 0..255), split train/test stratified by `seed`."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0 < test_fraction < 1:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    digits = load_digits()
    grey = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    labels = digits.target.astype(np.int64)
    index = np.arange(len(labels))
    train_idx, test_idx = train_test_split(index, test_size=test_fraction, stratify=labels, random_state=seed)
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    # ids index the bundled 1,797-image array, so a row can be traced back to its source image
    return ImageDataset(
        train=ImageSplit(rgb[train_idx], labels[train_idx], train_idx.astype(np.int64)),
        test=ImageSplit(rgb[test_idx], labels[test_idx], test_idx.astype(np.int64)),
        class_names=tuple(str(int(n)) for n in digits.target_names),
        source=DIGITS_SOURCE,
    )


def resolve_classes(classes: Sequence[int | str], class_names: Sequence[str]) -> tuple[int, ...]:
    """Class ids of `classes` (ids or names), sorted and distinct; DataError naming an unknown one."""
    if isinstance(classes, (str, int)):
        classes = [classes]
    if not classes:
        raise DataError("no class to delete: give at least one class id or name")
    names = {name: i for i, name in enumerate(class_names)}
    out: set[int] = set()
    for c in classes:
        if isinstance(c, (int, np.integer)) and not isinstance(c, bool):
            if not 0 <= int(c) < len(class_names):
                raise DataError(f"unknown class id {int(c)}: the data has classes 0..{len(class_names) - 1}")
            out.add(int(c))
        elif isinstance(c, str) and c in names:
            out.add(names[c])
        else:
            shown = ", ".join(list(class_names)[:12]) + (", ..." if len(class_names) > 12 else "")
            raise DataError(f"unknown class {c!r}: not a class id 0..{len(class_names) - 1} nor a class name "
                            f"({shown})")
    if len(out) == len(class_names):
        raise DataError(f"cannot delete every class ({len(class_names)}): nothing would be retained")
    return tuple(sorted(out))


def subsample_per_class(split: ImageSplit, max_per_class: int | None, seed: int) -> ImageSplit:
    """At most `max_per_class` images of each class, drawn with `seed`, kept in source order (None: all)."""
    if max_per_class is None:
        return split
    if max_per_class < 1:
        raise DataError(f"max images per class must be >= 1, got {max_per_class}")
    rng = np.random.default_rng(seed)
    keep: list[np.ndarray] = []
    for label in np.unique(split.labels):
        idx = np.flatnonzero(split.labels == label)
        keep.append(idx if len(idx) <= max_per_class else rng.choice(idx, max_per_class, replace=False))
    return split.subset(np.sort(np.concatenate(keep)))


def class_deletion_splits(data: ImageDataset, deleted: Sequence[int | str], *, max_train_per_class: int | None = None,
                          max_test_per_class: int | None = None, seed: int = 0) -> ClassDeletionSplits:
    """Forget / retain / test_retain / test_forget of `data` with the classes `deleted` (ids or names)."""
    ids = resolve_classes(deleted, data.class_names)
    train = subsample_per_class(data.train, max_train_per_class, seed)
    test = subsample_per_class(data.test, max_test_per_class, seed + 1)
    in_train, in_test = np.isin(train.labels, ids), np.isin(test.labels, ids)
    splits = ClassDeletionSplits(forget=train.subset(in_train), retain=train.subset(~in_train),
                                 test_retain=test.subset(~in_test), test_forget=test.subset(in_test),
                                 deleted=ids, class_names=data.class_names)
    for name in SPLITS:
        if len(splits.split(name)) == 0:
            raise DataError(f"{data.source}: the {name} split of deleting classes {list(ids)} is empty")
    return splits
