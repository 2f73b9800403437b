"""Image classifiers: a builtin tiny ViT built from a config, and ViT / DeiT / CLIP-vision checkpoints.

Every model is a transformers `PreTrainedModel` whose forward takes `pixel_values` and returns an output with
`.logits` (N, num_labels), loaded through `AutoModelForImageClassification`:

- ViT and DeiT checkpoints (`google/vit-base-patch16-224`; `facebook/deit-small-patch16-224` is a plain ViT
  architecture, `model_type: vit`) load as `ViTForImageClassification` / `DeiTForImageClassification`;
- CLIP checkpoints (`openai/clip-vit-large-patch14`) load as transformers' `CLIPForImageClassification`: the
  CLIP vision tower plus one linear head on the mean of the patch tokens' last hidden states (the text tower
  is not built). It round-trips through `save_pretrained` / `from_pretrained` like the others.

The head is always sized for the dataset (`num_labels`, `id2label`, `label2id` from its class names); a
checkpoint's own head of another size (ImageNet's 1000 classes) is dropped and re-initialised
(`ignore_mismatched_sizes=True`). The bounded adapters go on the MLP linears only (`adapted_mlp_names`);
a model whose MLP the target map (`harness.adapters.targets.MLP_TARGETS`) does not know is a ModelError.

Builtin image models live in their own registry, `BUILTIN_IMAGE_MODELS`, beside the causal LMs'
`harness.models.text.BUILTIN_MODELS`: a builtin LM is sized by its tokenizer's vocabulary and built as a causal LM,
an image model by the dataset's classes and built as an image classifier, so the two builders do not share a
signature. Names are unique across both registries (a test checks it), so `builtin:<name>` means one model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForImageClassification, PretrainedConfig, PreTrainedModel

from harness.core.errors import ModelError
from harness.core.io import atomic_write_json
from harness.core.registry import Registry
from harness.models.preprocess import BUILTIN_PREPROCESSOR
from harness.models.text import (
    BUILTIN_MODELS,
    BUILTIN_PREFIX,
    SHIPPED_CONFIG_DIR,
    is_builtin,
    load_model_config,
    loading,
    own_aligned,
)

#: Builtin tiny image classifiers: name -> function(num_labels) -> config. Built from config, random init.
BUILTIN_IMAGE_MODELS: Registry[Callable[[int], PretrainedConfig]] = Registry("builtin image model")
#: Preprocessor configs of the builtin image models (the digits are upsampled to 32x32).
BUILTIN_PREPROCESSORS: dict[str, dict[str, Any]] = {"tiny-vit": BUILTIN_PREPROCESSOR}
#: Published preprocessor_config.json files of the shipped vision models, for offline use.
SHIPPED_PREPROCESSOR_DIR = SHIPPED_CONFIG_DIR / "preprocessors"
PREPROCESSOR_FILE = "preprocessor_config.json"


@BUILTIN_IMAGE_MODELS.register("tiny-vit")
def _tiny_vit(num_labels: int) -> PretrainedConfig:
    from transformers import ViTConfig

    return ViTConfig(architectures=["ViTForImageClassification"], image_size=32, patch_size=8, num_channels=3,
                     hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=num_labels)


def is_builtin_image_model(name: str) -> bool:
    """True for `builtin:<name>` (or a bare name) registered in BUILTIN_IMAGE_MODELS."""
    return name.removeprefix(BUILTIN_PREFIX) in BUILTIN_IMAGE_MODELS


def label_maps(class_names: Sequence[str]) -> dict[str, Any]:
    """`num_labels`, `id2label` and `label2id` of a classifier over `class_names` (index = label)."""
    names = [str(n) for n in class_names]
    if len(set(names)) != len(names):
        raise ModelError(f"class names must be distinct to label a classifier head: {names}")
    return {"num_labels": len(names), "id2label": dict(enumerate(names)),
            "label2id": {n: i for i, n in enumerate(names)}}


def _set_labels(config: PretrainedConfig, class_names: Sequence[str]) -> PretrainedConfig:
    maps = label_maps(class_names)
    config.id2label, config.label2id = maps["id2label"], maps["label2id"]
    return config


def builtin_image_config(name: str, class_names: Sequence[str]) -> PretrainedConfig:
    """Config of a builtin image model with a head over `class_names`."""
    config = BUILTIN_IMAGE_MODELS.get(name.removeprefix(BUILTIN_PREFIX))(len(class_names))
    return _set_labels(config, class_names)


def _check_image_classifier(config: PretrainedConfig, name: str) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES as NAMES

    if config.model_type not in NAMES:
        raise ModelError(f"model {name!r} (model_type {config.model_type!r}) is not an image classifier that "
                         "transformers' AutoModelForImageClassification can build (ViT, DeiT and CLIP checkpoints "
                         "are; a CLIP vision-only checkpoint needs the full CLIP checkpoint)")


def image_classifier_config(name: str, class_names: Sequence[str], trust_remote_code: bool = False) -> PretrainedConfig:
    """A classifier's config with its head over `class_names`, without weights (builtin, local, cache, shipped)."""
    if is_builtin_image_model(name):
        return builtin_image_config(name, class_names)
    config = load_model_config(name, trust_remote_code)
    _check_image_classifier(config, name)
    return _set_labels(config, class_names)


def build_builtin_image_model(name: str, class_names: Sequence[str], seed: int = 0,
                              dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A randomly initialised builtin image classifier over `class_names`, reproducible from `seed`."""
    config = builtin_image_config(name, class_names)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForImageClassification.from_config(config, dtype=dtype)


def _resolve(name: str) -> str:
    path = Path(name).expanduser()
    return str(path) if path.exists() else name


def load_image_classifier(name: str, class_names: Sequence[str], *, seed: int = 0, dtype: torch.dtype = torch.float32,
                          revision: str | None = None, trust_remote_code: bool = False) -> PreTrainedModel:
    """A builtin (random init from `seed`) or pretrained image classifier with a head over `class_names`."""
    if is_builtin_image_model(name):
        return build_builtin_image_model(name, class_names, seed, dtype)
    config = load_model_config(name, trust_remote_code)
    _check_image_classifier(config, name)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # a re-initialised head is reproducible too
            model = AutoModelForImageClassification.from_pretrained(
                _resolve(name), dtype=dtype, revision=revision, trust_remote_code=trust_remote_code,
                use_safetensors=True, ignore_mismatched_sizes=True, **label_maps(class_names))
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot load image classifier {name!r}: {err}") from None
    return model


def save_image_classifier(model: PreTrainedModel, out_dir: str | Path,
                          preprocessor_config: dict[str, Any]) -> Path:
    """Save weights (safetensors), config and `preprocessor_config.json` so `load_image_classifier` reads them."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    atomic_write_json(out / PREPROCESSOR_FILE, preprocessor_config)
    return out


def shipped_preprocessor_ids() -> list[str]:
    """Hub ids whose preprocessor config ships with harness."""
    return sorted(p.stem.replace("--", "/", 1) for p in SHIPPED_PREPROCESSOR_DIR.glob("*.json"))


def _cached_preprocessor(name: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(name, PREPROCESSOR_FILE)
    except ValueError:  # not a valid repo id
        return None
    return Path(found) if isinstance(found, str) else None


def load_preprocessor_config(name: str) -> dict[str, Any]:
    """The image-processor config of a model: builtin, local directory, hub cache, or the shipped copy (offline)."""
    if is_builtin_image_model(name):
        return dict(BUILTIN_PREPROCESSORS[name.removeprefix(BUILTIN_PREFIX)])
    local = Path(name).expanduser()
    if local.exists():
        path: Path | None = local / PREPROCESSOR_FILE
    else:
        path = _cached_preprocessor(name) or SHIPPED_PREPROCESSOR_DIR / (name.replace("/", "--") + ".json")
    if path is None or not path.is_file():
        raise ModelError(f"no {PREPROCESSOR_FILE} for model {name!r} (looked in the local directory, the hub cache "
                         f"and the shipped configs: {', '.join(shipped_preprocessor_ids())})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ModelError(f"{path} is not valid JSON: {err}") from None


def builtin_modality(name: str) -> str | None:
    """"text" or "image" for a known `builtin:<name>`, None for anything else (a hub id, a directory)."""
    if not is_builtin(name):
        return None

    bare = name.removeprefix(BUILTIN_PREFIX)
    if bare in BUILTIN_MODELS:
        return "text"
    return "image" if bare in BUILTIN_IMAGE_MODELS else None


def load_image_model(name: str, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False,
                     revision: str | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load a saved image classifier (its own head) and its `preprocessor_config.json` from a directory or hub id."""
    from transformers import AutoModelForImageClassification

    source = _resolve(name)
    with loading(name, source, revision):
        model = AutoModelForImageClassification.from_pretrained(
            source, dtype=dtype, trust_remote_code=trust_remote_code, revision=revision, use_safetensors=True)
    return own_aligned(model), load_preprocessor_config(source)
