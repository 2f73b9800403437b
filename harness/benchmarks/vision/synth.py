"""Synthetic CIFAR-100: small seeded 32x32 images in exactly the published `cifar-100-python` pickle layout.

Each class has a template: a random 4x4 colour grid, upsampled to 32x32. An image is its class template
shifted by up to 2 pixels, optionally flipped left-right, plus Gaussian pixel noise, so the classes are
learnable and images of one class differ. Images are stored in a seeded shuffled order (the published
files interleave the classes too). Fine label names are CIFAR-100's own; the coarse label of fine class
`c` is `c // 5` (the real mapping groups classes differently; no metric uses it).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from pydantic import Field

from harness.benchmarks.synthetic_cache import ensure_cached
from harness.benchmarks.synthetic_cache import synth_dir as _synth_dir
from harness.benchmarks.vision.cifar import COARSE_LABELS, FINE_LABELS, IMAGE_SIDE, PICKLE_DIR, PICKLE_FILES
from harness.config import StrictModel
from harness.core.io import atomic_write_bytes

#: Bump when the generator's output changes, so cached copies are regenerated.
SYNTH_VERSION = 1
_GRID = 4
_MAX_SHIFT = 2


class SyntheticCifarSpec(StrictModel):
    """Size of the synthetic CIFAR-100 set: classes, images per class in each split, pixel noise."""

    n_classes: int = Field(100, ge=2, le=len(FINE_LABELS))
    train_per_class: int = Field(5, ge=1)
    test_per_class: int = Field(2, ge=1)
    noise_std: float = Field(24.0, ge=0)


def _templates(rng: np.random.Generator, n: int) -> np.ndarray:
    grid = rng.integers(0, 256, size=(n, _GRID, _GRID, 3)).astype(np.float64)
    scale = IMAGE_SIDE // _GRID
    return grid.repeat(scale, axis=1).repeat(scale, axis=2)


def _images(rng: np.random.Generator, templates: np.ndarray, labels: np.ndarray, noise_std: float) -> np.ndarray:
    out = np.empty((len(labels), IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        dy, dx = rng.integers(-_MAX_SHIFT, _MAX_SHIFT + 1, size=2)
        image = np.roll(templates[label], (int(dy), int(dx)), axis=(0, 1))
        if rng.random() < 0.5:
            image = image[:, ::-1]
        image = image + rng.normal(0.0, noise_std, size=image.shape)
        out[i] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return out


def _split(rng: np.random.Generator, templates: np.ndarray, per_class: int, noise_std: float,
           batch_label: str) -> dict[bytes, object]:
    labels = rng.permutation(np.repeat(np.arange(len(templates)), per_class))
    images = _images(rng, templates, labels, noise_std)
    # the published row layout: 1024 red, 1024 green, 1024 blue values, each 32x32 row-major
    data = images.transpose(0, 3, 1, 2).reshape(len(labels), -1)
    return {
        b"filenames": [f"synthetic_{FINE_LABELS[c]}_s_{i:06d}.png".encode() for i, c in enumerate(labels)],
        b"batch_label": batch_label.encode(),
        b"fine_labels": [int(c) for c in labels],
        b"coarse_labels": [int(c) // 5 for c in labels],
        b"data": np.ascontiguousarray(data, dtype=np.uint8),
    }


def generate_cifar100(spec: SyntheticCifarSpec, seed: int) -> dict[str, dict[bytes, object]]:
    """The `train`, `test` and `meta` dicts of a synthetic set, deterministic in `spec` and `seed`."""
    rng = np.random.default_rng([SYNTH_VERSION, seed])
    templates = _templates(rng, spec.n_classes)
    return {
        "train": _split(rng, templates, spec.train_per_class, spec.noise_std, "training batch 1 of 1"),
        "test": _split(rng, templates, spec.test_per_class, spec.noise_std, "testing batch 1 of 1"),
        "meta": {b"fine_label_names": [n.encode() for n in FINE_LABELS[: spec.n_classes]],
                 b"coarse_label_names": [n.encode() for n in COARSE_LABELS]},
    }


def write_cifar100(files: dict[str, dict[bytes, object]], out_dir: str | Path) -> Path:
    """Write the dicts as pickles `{out_dir}/cifar-100-python/{train,test,meta}`; return that directory."""
    d = Path(out_dir).expanduser() / PICKLE_DIR
    for name in PICKLE_FILES:
        atomic_write_bytes(d / name, pickle.dumps(files[name], protocol=2))
    return d


def synth_dir(data_dir: str | Path, spec: SyntheticCifarSpec, seed: int) -> Path:
    """Where the synthetic set of this spec and seed is cached: `{data_dir}/cifar100-synth-<hash>`."""
    return _synth_dir(data_dir, "cifar100", spec, seed, SYNTH_VERSION)


def ensure_synthetic(data_dir: str | Path, spec: SyntheticCifarSpec, seed: int) -> Path:
    """Generate and write the synthetic set unless a complete copy is cached; return its directory."""
    target = synth_dir(data_dir, spec, seed)
    ensure_cached(target, [f"{PICKLE_DIR}/{n}" for n in PICKLE_FILES], lambda: generate_cifar100(spec, seed),
                  write_cifar100)
    return target / PICKLE_DIR
