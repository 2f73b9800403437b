"""Image preprocessing from a Hugging Face image-processor config, in numpy + PIL (no torchvision).

`ImageTransform.from_config(preprocessor_config)` reads the keys of a `preprocessor_config.json` (`do_resize`,
`size`, `resample`, `do_center_crop`, `crop_size`, `do_rescale`, `rescale_factor`, `do_normalize`,
`image_mean`, `image_std`) and applies them in transformers' order (its `PilBackend._preprocess`): resize
with PIL on the uint8 image, center crop, rescale, normalize. An int `size` means a square `size x size`,
except for CLIP processors, where it is the shortest edge (transformers' `default_to_square=False` for CLIP).
Missing keys take the defaults that transformers' ViT, DeiT and CLIP processors share (resize on, bilinear
unless `resample` says otherwise, rescale by 1/255 on, normalize on when a mean and std are given).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from harness.core.errors import DataError

#: PIL resampling filter codes as `resample` stores them (PIL.Image.Resampling values).
RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_BILINEAR = 2

#: The builtin default's preprocessing (8x8 digits or 32x32 images -> 32x32, [-1, 1]), as a processor config.
BUILTIN_PREPROCESSOR: dict[str, Any] = {
    "image_processor_type": "ViTImageProcessor",
    "do_resize": True, "size": {"height": 32, "width": 32}, "resample": _BILINEAR,
    "do_center_crop": False,
    "do_rescale": True, "rescale_factor": 1 / 255,
    "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
}


def _pair(value: Any, key: str, square: bool) -> tuple[tuple[int, int] | None, int | None]:
    """`((height, width), None)` or `(None, shortest_edge)` from a processor size entry."""
    if isinstance(value, int):
        return ((value, value), None) if square else (None, value)
    if isinstance(value, Mapping):
        if "height" in value and "width" in value:
            return (int(value["height"]), int(value["width"])), None
        if "shortest_edge" in value and "longest_edge" not in value:
            return None, int(value["shortest_edge"])
    if isinstance(value, Sequence) and len(value) == 2:
        return (int(value[0]), int(value[1])), None
    raise DataError(f"image processor {key}={value!r}: expected an int, {{'height', 'width'}} or "
                    "{'shortest_edge'}")


def _stats(values: Any, key: str) -> tuple[float, float, float]:
    seq = [float(values)] * 3 if isinstance(values, (int, float)) else [float(v) for v in values]
    if len(seq) != 3:
        raise DataError(f"image processor {key}={values!r}: expected one value per RGB channel")
    return seq[0], seq[1], seq[2]


def shortest_edge_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """`(height, width)` with the shorter side scaled to `shortest_edge` (transformers' rounding: int())."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = shortest_edge, int(shortest_edge * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


@dataclass(frozen=True)
class ImageTransform:
    """uint8 `(N, H, W, 3)` images -> float32 pixel values `(N, 3, H', W')`, as a model's image processor does."""

    size: tuple[int, int] | None = None
    shortest_edge: int | None = None
    resample: int = _BILINEAR
    crop_size: tuple[int, int] | None = None
    rescale_factor: float | None = 1 / 255
    image_mean: tuple[float, float, float] | None = None
    image_std: tuple[float, float, float] | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ImageTransform:
        """The transform of a `preprocessor_config.json` dict (see the module docstring for defaults)."""
        kind = str(config.get("image_processor_type") or config.get("feature_extractor_type") or "")
        square = not kind.startswith("CLIP")
        size = shortest = crop = None
        if config.get("do_resize", True) and config.get("size") is not None:
            size, shortest = _pair(config["size"], "size", square)
        if config.get("do_center_crop", False):
            crop, _ = _pair(config.get("crop_size", 224), "crop_size", True)
        resample = int(config.get("resample", _BILINEAR))
        if resample not in RESAMPLE_NAMES:
            raise DataError(f"image processor resample={resample}: expected a PIL filter code {sorted(RESAMPLE_NAMES)}")
        rescale = float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else None
        mean = std = None
        if config.get("do_normalize", True) and "image_mean" in config and "image_std" in config:
            mean, std = _stats(config["image_mean"], "image_mean"), _stats(config["image_std"], "image_std")
        return cls(size=size, shortest_edge=shortest, resample=resample, crop_size=crop, rescale_factor=rescale,
                   image_mean=mean, image_std=std)

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """`(height, width)` after the resize step."""
        if self.size is not None:
            return self.size
        if self.shortest_edge is not None:
            return shortest_edge_size(height, width, self.shortest_edge)
        return height, width

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """`(height, width)` of the pixel values for input images of `(height, width)`."""
        return self.crop_size or self.resized_size(height, width)

    def _resize(self, images: np.ndarray) -> np.ndarray:
        from PIL import Image

        h, w = self.resized_size(images.shape[1], images.shape[2])
        if (h, w) == images.shape[1:3]:
            return images
        return np.stack([np.asarray(Image.fromarray(im).resize((w, h), resample=self.resample)) for im in images])

    def _crop(self, images: np.ndarray) -> np.ndarray:
        if self.crop_size is None:
            return images
        (ch, cw), (h, w) = self.crop_size, images.shape[1:3]
        if ch > h or cw > w:
            raise DataError(f"center crop {ch}x{cw} is larger than the resized image {h}x{w}")
        top, left = (h - ch) // 2, (w - cw) // 2
        return images[:, top:top + ch, left:left + cw]

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        """Pixel values of a uint8 batch `(N, H, W, 3)` (a single `(H, W, 3)` image is treated as N = 1)."""
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise DataError(f"expected uint8 images (N, H, W, 3), got {images.dtype} {images.shape}")
        x = self._crop(self._resize(images)).astype(np.float32)
        if self.rescale_factor is not None:
            x = (x.astype(np.float64) * self.rescale_factor).astype(np.float32)
        if self.image_mean is not None and self.image_std is not None:
            x = (x - np.asarray(self.image_mean, np.float32)) / np.asarray(self.image_std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
