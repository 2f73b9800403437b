"""Every baseline method under Ray Train + DeepSpeed: 2 workers with ZeRO-2 give the adapter 1 worker gives, and a
run whose worker is killed resumes from its checkpoint without recomputing its preparation (CPU, gloo).

One Ray Train fit per configuration (1 worker; 2 workers with ZeRO-2) trains every method one after another, the
runs of both modalities in one worker group: text methods on the tiny Llama and a small synthetic TOFU, image
methods (RL, SalUn) on a tiny ViT through the image modality (uint8 images preprocessed by the model's processor
config, as the vision benchmark trains them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from harness.benchmarks import load_benchmark
from harness.models.text import build_builtin, save_model
from harness.models.tokenizer import get_or_train_tokenizer
from harness.objectives import make_objective, original_targets
from harness.spec import MethodSpec, validate_spec
from harness.train.finetune import finetune
from harness.train.ray_run import TrainingRequest, TrainingResult, run_unlearning_many

pytestmark = pytest.mark.e2e

STEPS = 5
#: The tolerances of tests/train/test_distributed.py: 1 vs 2 workers differ in padding and reduction order
#: only, ZeRO-2 partitions and reduces the same fp32 gradients in another order (AdamW magnifies last bits).
WORKERS_RTOL = 1e-4
ZERO_ATOL = 1e-4

SINE = {"bound": "sine", "omega": 10.0}
LORA = {"bound": "none"}
#: (method name, objective, adapter, train overrides): every new text objective, with the sine bound unless
#: named, plus NPO and IDK (GA and GD share their code paths; GD is tests/train/test_distributed.py's method).
TEXT_METHODS = [
    ("npo", {"name": "npo"}, SINE, {}),
    ("idk", {"name": "idk"}, SINE, {}),
    ("idkdpo", {"name": "idkdpo"}, SINE, {}),
    ("rmu", {"name": "rmu", "layer": 1, "steering_coeff": 4.0}, SINE, {}),
    ("undial", {"name": "undial"}, SINE, {}),
    ("wga", {"name": "wga"}, SINE, {}),
    ("satimp", {"name": "satimp"}, SINE, {}),
    ("ceu", {"name": "ceu"}, SINE, {}),
    ("loku_lora", {"name": "loku"}, LORA, {}),
    ("loku_sine", {"name": "loku"}, SINE, {}),
    ("ft", {"name": "ft"}, SINE, {}),
    ("l1_sparse", {"name": "l1_sparse", "gamma": 1e-3}, SINE, {}),
    ("gd_lora_stabilised", {"name": "gd"}, LORA, {"max_grad_norm": 1.0, "weight_decay": 0.1, "adapter_l2": 0.5}),
]
IMAGE_METHODS = [("rl", {"name": "rl"}, SINE, {}), ("salun", {"name": "salun"}, SINE, {}),
                 ("salun_lora", {"name": "salun", "fraction": 0.3}, LORA, {})]
#: Runs whose worker is killed (rank 1, at the last step, after checkpoints at steps 2 and 4), one per modality, in
#: the same 2-worker fit (two worker-group failures): both have a preparation. They report every step: Ray Train
#: keeps one unconsumed report per worker, so two reports after the step-2 checkpoint, that checkpoint is registered,
#: and the kill cannot lose it (only, at most, step 4's).
KILLED = {"text": "loku_sine", "image": "salun"}


def _spec_data(tmp: Path) -> dict:
    return {
        "name": "baselines", "out": str(tmp / "out"),
        "benchmark": {"synthetic": {"n_authors": 10, "qa_per_author": 4, "n_real_authors": 4, "n_world_facts": 4},
                      "data_dir": str(tmp / "data")},
        "train": {"max_steps": STEPS, "epochs": 50, "batch_size": 4, "lr": 1e-2, "scheduler": "constant",
                  "checkpoint_every": 2, "report_every": 100},
        "methods": [{"name": "placeholder"}],
        "resources": {"max_failures": 1},
    }


def _methods(table: list, zero: int) -> list[MethodSpec]:
    """The methods of `table` at ZeRO stage `zero`. Only the runs that get killed checkpoint during training
    (every 2 steps) and report every step; the others save their one checkpoint at the end, as every run does."""
    base = {"max_steps": STEPS, "epochs": 50, "batch_size": 4, "lr": 1e-2, "scheduler": "constant",
            "report_every": 100, "zero_stage": zero}
    killed = {"checkpoint_every": 2, "report_every": 1}
    return [MethodSpec.model_validate({"name": name, "objective": objective, "adapter": {"rank": 4, **adapter},
                                       "train": {**base, **train, **(killed if name in KILLED.values() else {})}})
            for name, objective, adapter, train in table]


def _fit(requests: list[TrainingRequest], tmp: Path, name: str, workers: int,
         killed: Sequence[str] = ()) -> dict[str, TrainingResult]:
    data = _spec_data(tmp)
    spec = validate_spec({**data, "resources": {"max_failures": max(1, len(killed)), "num_workers": workers}})
    names = [r.method.name for r in requests]
    faults = [{"rank": 1, "run": names.index(k), "step": STEPS - 1, "marker": str(tmp / f"{name}-{k}.killed")}
              for k in killed]
    return run_unlearning_many(requests, spec, tmp / name, fault=faults, name=name, progress=False)


@pytest.fixture(scope="module")
def text_requests(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], list[TrainingRequest]]:
    tmp = tmp_path_factory.mktemp("baselines-text")
    spec = validate_spec(_spec_data(tmp))
    bench = load_benchmark(spec.benchmark)
    tokenizer = get_or_train_tokenizer(bench.corpus_texts(), tmp / "tok")
    model = build_builtin("builtin:tiny-llama", len(tokenizer), seed=0)
    finetune(model, tokenizer, bench.reference_examples("target", tokenizer), epochs=2, lr=5e-3, batch_size=16,
             warmup_ratio=0.0, seed=0, progress=False)
    target = str(save_model(model, tokenizer, tmp / "target"))
    retain = bench.retain_examples(tokenizer)

    def requests(zero: int) -> list[TrainingRequest]:
        out = []
        for method in _methods(TEXT_METHODS, zero):
            objective = make_objective(method.objective)
            out.append(TrainingRequest(method, 0, bench.forget_examples(tokenizer, objective),
                                    retain if method.objective.uses_retain else [], target=target, modality="text"))
        return out

    return requests


def _images(n_classes: int = 5, per_class: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Class-dependent 8x8 uint8 patterns plus noise, (N, H, W, 3) as the image modality takes them."""
    rng = np.random.default_rng(0)
    protos = rng.uniform(40, 215, size=(n_classes, 8, 8, 3))
    labels = np.repeat(np.arange(n_classes), per_class)
    pixels = np.clip(protos[labels] + rng.normal(0, 20, size=(len(labels), 8, 8, 3)), 0, 255).astype(np.uint8)
    return pixels, labels


@pytest.fixture(scope="module")
def image_requests(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], list[TrainingRequest]]:
    from transformers import ViTConfig, ViTForImageClassification

    from harness.models.image import save_image_classifier
    from harness.models.preprocess import BUILTIN_PREPROCESSOR

    tmp = tmp_path_factory.mktemp("baselines-image")
    torch.manual_seed(0)
    vit = ViTForImageClassification(ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=32,
                                              num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                              num_labels=5))
    processor = {**BUILTIN_PREPROCESSOR, "size": {"height": 8, "width": 8}}
    save_image_classifier(vit, tmp / "vit", processor)
    pixels, labels = _images()
    forget_idx, retain_idx = np.flatnonzero(labels == 0), np.flatnonzero(labels != 0)
    retain = [(pixels[i], int(labels[i])) for i in retain_idx]

    def examples(objective, seed: int) -> list:
        targets = objective.forget_labels(labels[forget_idx], 5, seed)
        return [(pixels[i], int(t)) for i, t in zip(forget_idx, targets)]

    def requests(zero: int) -> list[TrainingRequest]:
        out = []
        for method in _methods(IMAGE_METHODS, zero):
            objective = make_objective(method.objective)
            forget, original = examples(objective, 0), examples(original_targets(), 0)
            out.append(TrainingRequest(method, 0, forget, retain, target=str(tmp / "vit"),
                                    forget_original=original if objective.has_prepare else [], modality="image"))
        return out

    return requests


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, text_requests: Callable[[int], list[TrainingRequest]],
         image_requests: Callable[[int], list[TrainingRequest]]) -> dict:
    """Both fits, every method of both modalities in each: one trainer per configuration, not per modality."""
    tmp = tmp_path_factory.mktemp("baselines")
    killed = [KILLED["text"], KILLED["image"]]
    return {"w1": _fit(text_requests(0) + image_requests(0), tmp, "w1", 1),
            "w2": _fit(text_requests(2) + image_requests(2), tmp, "w2", 2, killed=killed),
            "tmp": tmp}


def _view(runs: dict, table: list, kind: str) -> dict:
    names = {m[0] for m in table}
    pick = lambda fit: {k: v for k, v in fit.items() if k.split("/")[0] in names}  # noqa: E731
    return {"w1": pick(runs["w1"]), "w2": pick(runs["w2"]), "marker": runs["tmp"] / f"w2-{KILLED[kind]}.killed"}


@pytest.fixture(scope="module")
def text_runs(runs: dict) -> dict:
    return _view(runs, TEXT_METHODS, "text")


@pytest.fixture(scope="module")
def image_runs(runs: dict) -> dict:
    return _view(runs, IMAGE_METHODS, "image")


def _adapter(run: TrainingResult) -> dict[str, torch.Tensor]:
    return load_file(run.adapter_dir / "adapter_model.safetensors")


def _losses(run: TrainingResult) -> np.ndarray:
    return np.array([row["loss"] for row in run.log])


def _assert_equal_runs(one: TrainingResult, two: TrainingResult) -> None:
    assert [r["step"] for r in two.log] == list(range(STEPS)) and not one.diverged and not two.diverged
    np.testing.assert_allclose(_losses(two), _losses(one), rtol=WORKERS_RTOL, atol=1e-5)
    ref, other = _adapter(one), _adapter(two)
    assert ref.keys() == other.keys()
    for key in ref:
        torch.testing.assert_close(other[key], ref[key], atol=ZERO_ATOL, rtol=1e-3)


@pytest.mark.parametrize("method", [m[0] for m in TEXT_METHODS])
def test_text_method_two_workers_zero2_equal_one_worker(text_runs: dict, method: str) -> None:
    _assert_equal_runs(text_runs["w1"][f"{method}/seed0"], text_runs["w2"][f"{method}/seed0"])
    # the adapter moved: the comparison is not between two untouched initialisations
    first = _adapter(text_runs["w1"][f"{method}/seed0"])
    assert any(float(v.abs().max()) > 0 for k, v in first.items() if "lora_B" in k) or method.startswith("loku")


@pytest.mark.parametrize("method", [m[0] for m in IMAGE_METHODS])
def test_image_method_two_workers_zero2_equal_one_worker(image_runs: dict, method: str) -> None:
    _assert_equal_runs(image_runs["w1"][f"{method}/seed0"], image_runs["w2"][f"{method}/seed0"])


@pytest.mark.parametrize("kind", ["text", "image"])
def test_killed_run_resumes_without_recomputing_its_preparation(request, kind: str) -> None:
    runs = request.getfixturevalue(f"{kind}_runs")
    assert runs["marker"].exists(), "the fault hook never killed the worker"
    for key, run in runs["w2"].items():
        prepared = make_objective(run_method(kind, key).objective).has_prepare
        assert run.prepare["passes"] == int(prepared), key  # once, also for the run that was resumed
        # the restarted worker group loaded the killed run's preparation from its checkpoint
        assert run.prepare["loads"] == int(key == f"{KILLED[kind]}/seed0"), key
    killed = runs["w2"][f"{KILLED[kind]}/seed0"]
    assert [r["step"] for r in killed.log] == list(range(STEPS))


def run_method(kind: str, key: str) -> MethodSpec:
    table = TEXT_METHODS if kind == "text" else IMAGE_METHODS
    return next(m for m in _methods(table, 0) if m.name == key.split("/")[0])


def test_prepared_extras_reach_the_saved_adapters(text_runs: dict, image_runs: dict) -> None:
    import json

    cfg = lambda run: json.loads((run.adapter_dir / "bound_config.json").read_text())  # noqa: E731
    assert cfg(text_runs["w2"]["loku_sine/seed0"])["extras"] == ["origin"]
    assert cfg(image_runs["w2"]["salun/seed0"])["extras"] == ["update_mask"]
    assert cfg(text_runs["w2"]["wga/seed0"])["extras"] == []
    masks = load_file(image_runs["w2"]["salun_lora/seed0"].adapter_dir / "adapter_extras.safetensors")
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == int(0.3 * sum(m.numel() for m in masks.values()))
