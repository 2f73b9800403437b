"""ImageTransform equals transformers' own ViT / CLIP / DeiT image processors (PIL backend) on random images."""

from __future__ import annotations

import numpy as np
import pytest
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.deit.image_processing_pil_deit import DeiTImageProcessorPil
from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

from harness.core.errors import DataError
from harness.models.image import load_preprocessor_config
from harness.models.preprocess import BUILTIN_PREPROCESSOR, ImageTransform, shortest_edge_size

PROCESSORS = {
    "google/vit-base-patch16-224": ViTImageProcessorPil,
    "openai/clip-vit-large-patch14": CLIPImageProcessorPil,
    "facebook/deit-small-patch16-224": DeiTImageProcessorPil,
    "builtin:tiny-vit": ViTImageProcessorPil,
}


def _images(shape: tuple[int, int], n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape, 3), dtype=np.uint8)


def _reference(cls: type, config: dict, images: np.ndarray) -> np.ndarray:
    return cls(**config)(list(images), return_tensors="np")["pixel_values"]


@pytest.mark.parametrize("name", sorted(PROCESSORS))
@pytest.mark.parametrize("shape", [(32, 32), (8, 8), (40, 28)])
def test_matches_transformers_processor(name: str, shape: tuple[int, int]) -> None:
    config = load_preprocessor_config(name)
    images = _images(shape)
    got = ImageTransform.from_config(config)(images)
    ref = _reference(PROCESSORS[name], config, images)
    assert got.dtype.is_floating_point and tuple(got.shape) == ref.shape
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-5, rtol=0)


def test_shipped_configs_give_224_inputs() -> None:
    for name in ("google/vit-base-patch16-224", "openai/clip-vit-large-patch14", "facebook/deit-small-patch16-224"):
        transform = ImageTransform.from_config(load_preprocessor_config(name))
        assert tuple(transform(_images((32, 32))).shape) == (3, 3, 224, 224)


def test_clip_shortest_edge_without_crop_keeps_aspect() -> None:
    config = {**load_preprocessor_config("openai/clip-vit-large-patch14"), "do_center_crop": False}
    images = _images((40, 28))
    got = ImageTransform.from_config(config)(images)
    assert tuple(got.shape) == (3, 3, 320, 224)  # 28 -> 224, 40 -> int(224 * 40 / 28) = 320
    np.testing.assert_allclose(got.numpy(), _reference(CLIPImageProcessorPil, config, images), atol=1e-5, rtol=0)


def test_shortest_edge_arithmetic() -> None:
    assert shortest_edge_size(40, 28, 224) == (320, 224)
    assert shortest_edge_size(28, 40, 224) == (224, 320)
    assert shortest_edge_size(30, 30, 10) == (10, 10)


def test_builtin_transform_upsamples_digits_to_32() -> None:
    digit = np.zeros((1, 8, 8, 3), np.uint8)
    digit[0, 2:6, 3:5] = 255
    x = ImageTransform.from_config(BUILTIN_PREPROCESSOR)(digit)
    assert tuple(x.shape) == (1, 3, 32, 32)
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0  # rescale to [0, 1], normalise by mean = std = 0.5
    assert ImageTransform.from_config(BUILTIN_PREPROCESSOR)(digit[0]).shape == x.shape  # one (H, W, 3) image


def test_rescale_and_normalise_by_hand() -> None:
    config = {"do_resize": False, "do_rescale": True, "rescale_factor": 0.5, "image_mean": [1, 2, 3],
              "image_std": [2, 2, 2]}
    image = np.full((1, 2, 2, 3), 10, np.uint8)
    x = ImageTransform.from_config(config)(image)
    np.testing.assert_allclose(x[0, :, 0, 0].numpy(), [(5 - 1) / 2, (5 - 2) / 2, (5 - 3) / 2])
    plain = ImageTransform.from_config({"do_resize": False, "do_rescale": False, "do_normalize": False})(image)
    assert float(plain.max()) == 10.0


def test_bad_config_or_input_is_a_data_error() -> None:
    with pytest.raises(DataError, match="size="):
        ImageTransform.from_config({"size": {"longest_edge": 5}})
    with pytest.raises(DataError, match="resample=9"):
        ImageTransform.from_config({"size": 4, "resample": 9})
    with pytest.raises(DataError, match="one value per RGB channel"):
        ImageTransform.from_config({"image_mean": [0.5, 0.5], "image_std": [1, 1, 1]})
    with pytest.raises(DataError, match="larger than the resized image"):
        ImageTransform.from_config({"do_resize": False, "do_center_crop": True, "crop_size": 64})(_images((8, 8)))
    with pytest.raises(DataError, match="uint8 images"):
        ImageTransform.from_config(BUILTIN_PREPROCESSOR)(np.zeros((1, 8, 8), np.float32))
