"""Image classifiers: builtin tiny ViT, ViT / DeiT / CLIP loading, save/load, MLP targets, memory plans."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import torch
from transformers import (
    CLIPConfig,
    CLIPModel,
    DeiTConfig,
    DeiTForImageClassification,
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

from harness.adapters.targets import adapted_mlp_names
from harness.config import AdapterSpec, TrainSpec
from harness.core.errors import ModelError
from harness.models.image import (
    BUILTIN_IMAGE_MODELS,
    build_builtin_image_model,
    image_classifier_config,
    load_image_classifier,
    load_preprocessor_config,
    save_image_classifier,
    shipped_preprocessor_ids,
)
from harness.models.text import BUILTIN_MODELS, shipped_config
from harness.train.memory import ATTN_FACTOR, estimate_memory, meta_model, model_shape

CLASSES = tuple(f"c{i}" for i in range(5))
SHIPPED = ("google/vit-base-patch16-224", "openai/clip-vit-large-patch14", "facebook/deit-small-patch16-224")
# Only MLP linears: fc1/fc2 inside an `mlp` block, never attention projections or the classifier head.
MLP = re.compile(r"(^|\.)mlp\.fc[12]$")


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Tiny models: one torch thread."""


def _linears(model: torch.nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def _assert_exactly_mlp(model: torch.nn.Module, name: str, n_layers: int) -> None:
    names = adapted_mlp_names(model, name)
    assert names == [n for n in _linears(model) if MLP.search(n)] and len(names) == 2 * n_layers
    assert not any("attn" in n or "attention" in n or "classifier" in n for n in names)


def _tiny_clip_dir(tmp_path: Path) -> tuple[Path, CLIPModel]:
    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "vocab_size": 99},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 28, "patch_size": 14},
        projection_dim=16)
    torch.manual_seed(0)
    clip = CLIPModel(config)
    clip.save_pretrained(tmp_path / "clip")
    return tmp_path / "clip", clip


def test_builtin_tiny_vit() -> None:
    model = build_builtin_image_model("builtin:tiny-vit", CLASSES, seed=0)
    assert model.config.model_type == "vit" and model.config.id2label[3] == "c3"
    assert model.config.label2id["c4"] == 4 and model.config.num_labels == 5
    out = model(pixel_values=torch.randn(2, 3, 32, 32))
    assert tuple(out.logits.shape) == (2, 5)
    again = build_builtin_image_model("tiny-vit", CLASSES, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    other = build_builtin_image_model("tiny-vit", CLASSES, seed=1)
    assert not torch.equal(model.classifier.weight, other.classifier.weight)
    _assert_exactly_mlp(model, "builtin:tiny-vit", 4)
    assert load_preprocessor_config("builtin:tiny-vit")["size"] == {"height": 32, "width": 32}


def test_builtin_names_are_unique_across_registries() -> None:
    assert not set(BUILTIN_IMAGE_MODELS.names()) & set(BUILTIN_MODELS.names())


def test_deit_mlp_targets_and_tokens() -> None:
    config = DeiTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                        image_size=32, patch_size=8, num_labels=4)
    deit = DeiTForImageClassification(config)
    _assert_exactly_mlp(deit, "deit", 3)
    shape = model_shape(config)  # a config built in code (architectures None) still gets its meta model
    assert shape.tokens_per_example == deit.deit.embeddings.position_embeddings.shape[1] == 16 + 2
    assert shape.n_params == sum(p.numel() for p in deit.parameters()) and config.architectures is None


def test_vit_checkpoint_gets_a_new_head_for_the_dataset(tmp_path: Path) -> None:
    torch.manual_seed(0)
    vit = ViTForImageClassification(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                              intermediate_size=64, image_size=32, patch_size=8, num_labels=1000))
    vit.save_pretrained(tmp_path / "vit")
    model = load_image_classifier(str(tmp_path / "vit"), CLASSES, seed=0)
    assert model.classifier.weight.shape == (5, 32) and model.config.id2label[0] == "c0"
    assert torch.equal(model.vit.layers[1].mlp.fc2.weight, vit.vit.layers[1].mlp.fc2.weight)
    again = load_image_classifier(str(tmp_path / "vit"), CLASSES, seed=0)
    assert torch.equal(model.classifier.weight, again.classifier.weight)  # re-initialised head is seeded
    _assert_exactly_mlp(model, "vit", 2)


def test_clip_vision_tower_plus_linear_head(tmp_path: Path) -> None:
    path, clip = _tiny_clip_dir(tmp_path)
    model = load_image_classifier(str(path), CLASSES)
    assert type(model).__name__ == "CLIPForImageClassification" and not hasattr(model, "text_model")
    ref = clip.state_dict()
    vision = {k: v for k, v in model.state_dict().items() if k.startswith("vision_model.")}
    assert vision and all(torch.equal(v, ref[k]) for k, v in vision.items())
    assert tuple(model(pixel_values=torch.randn(2, 3, 28, 28)).logits.shape) == (2, 5)
    _assert_exactly_mlp(model, "clip", 2)
    assert all(n.startswith("vision_model.encoder.layers.") for n in adapted_mlp_names(model, "clip"))


@pytest.mark.parametrize("kind", ["vit", "clip"])
def test_save_load_round_trip(tmp_path: Path, kind: str) -> None:
    if kind == "vit":
        model, pre = build_builtin_image_model("tiny-vit", CLASSES, seed=2), load_preprocessor_config("tiny-vit")
        x = torch.randn(3, 3, 32, 32)
    else:
        model = load_image_classifier(str(_tiny_clip_dir(tmp_path)[0]), CLASSES)
        pre, x = load_preprocessor_config("openai/clip-vit-large-patch14"), torch.randn(3, 3, 28, 28)
    out = save_image_classifier(model, tmp_path / "saved", pre)
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    loaded = load_image_classifier(str(out), CLASSES)
    model.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=x).logits, model(pixel_values=x).logits)
    assert load_preprocessor_config(str(out)) == pre and loaded.config.id2label == model.config.id2label


def test_model_without_an_mlp_to_adapt_is_a_model_error() -> None:
    resnet = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1],
                                                       num_labels=3))
    with pytest.raises(ModelError, match="model 'my/resnet' has no MLP layers the harness can adapt"):
        adapted_mlp_names(resnet, "my/resnet")


def test_non_image_model_is_a_model_error(tmp_path: Path) -> None:
    from harness.models.text import build_builtin

    build_builtin("tiny-llama", 64).save_pretrained(tmp_path / "llm")
    with pytest.raises(ModelError, match="is not an image classifier"):
        load_image_classifier(str(tmp_path / "llm"), CLASSES)
    with pytest.raises(ModelError, match="no preprocessor_config.json"):
        load_preprocessor_config(str(tmp_path / "llm"))


def test_shipped_vision_configs_are_the_published_architectures() -> None:
    assert set(SHIPPED) <= set(shipped_preprocessor_ids())
    vit = model_shape(shipped_config("google/vit-base-patch16-224"))
    deit = model_shape(shipped_config("facebook/deit-small-patch16-224"))
    assert vit.n_params == 86_567_656 and deit.n_params == 22_050_664  # published counts, 1000-class heads
    assert (vit.hidden, vit.intermediate, vit.n_layers, vit.tokens_per_example) == (768, 3072, 12, 197)
    assert len(vit.adapted) == 24 and len(deit.adapted) == 24
    clip_config = image_classifier_config("openai/clip-vit-large-patch14", [str(i) for i in range(100)])
    clip = model_shape(clip_config)
    # CLIP ViT-L/14 vision tower: 303,179,776 parameters, plus the 1024 x 100 linear head
    assert clip.n_params == 303_179_776 + 1024 * 100 + 100
    assert (clip.hidden, clip.n_layers, clip.tokens_per_example, clip.vocab) == (1024, 24, 257, 100)
    assert len(clip.adapted) == 48
    assert type(meta_model(clip_config)).__name__ == "CLIPForImageClassification"


def test_memory_estimate_of_an_image_classifier_by_hand() -> None:
    config = image_classifier_config("google/vit-base-patch16-224", [str(i) for i in range(100)])
    shape = model_shape(config)
    train = TrainSpec(batch_size=32, max_length=512)  # max_length is a text setting: images have 197 tokens
    est = estimate_memory(config, AdapterSpec(bound="sine", rank=8), train, 1, dtype="float32", forward_batches=2,
                          shape=shape)
    factor = ATTN_FACTOR + 2 + 2 * 3072 / 768  # plain (ungated) GELU MLP
    assert est.activations == pytest.approx(32 * 197 * 2 * 768 * factor * 4 * 12)
    assert est.logits == 32 * 2 * 100 * 4 * 3  # one row of logits per image
    assert est.bound == 3 * 768 * 3072 * 4 and est.base == shape.n_params * 4


@pytest.mark.e2e
def test_tiny_vit_learns_digits_in_under_a_minute() -> None:
    """Full fine-tune of the builtin tiny ViT on the digits (one thread): high test accuracy, well under a minute."""
    from harness.benchmarks.vision.data import digits_dataset
    from harness.models.preprocess import ImageTransform

    data = digits_dataset(0.2, seed=0)
    transform = ImageTransform.from_config(load_preprocessor_config("builtin:tiny-vit"))
    x, y = transform(data.train.images), torch.as_tensor(data.train.labels)
    model = build_builtin_image_model("tiny-vit", data.class_names, seed=0)
    epochs, batch = 30, 64
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * -(-len(y) // batch),
                                                pct_start=0.1)
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), batch):
            idx = perm[i:i + batch]
            loss = torch.nn.functional.cross_entropy(model(pixel_values=x[idx]).logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        pred = model(pixel_values=transform(data.test.images)).logits.argmax(-1).numpy()
    acc = float((pred == data.test.labels).mean())
    print(f"tiny-vit on digits: test accuracy {acc:.3f} after {epochs} epochs in {seconds:.1f} s (1 thread)")
    assert acc >= 0.93 and seconds < 60
