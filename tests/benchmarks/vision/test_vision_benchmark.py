"""The vision class-deletion benchmark: its spec, its examples, and its metric rows against hand computations."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import hmean, ks_2samp
from sklearn.metrics import accuracy_score

from harness.benchmarks import load_benchmark
from harness.benchmarks.vision.benchmark import Vision
from harness.benchmarks.vision.metrics import image_rows, svc_mia_efficacy
from harness.benchmarks.vision.options import VisionOptions
from harness.cli import main
from harness.config import EvalSpec
from harness.core.errors import SpecError
from harness.data.requests import Backend, ClassifyRequest, GenRequest, LoglikRequest
from harness.objectives import make_objective
from harness.spec import objective_spec, validate_spec

SPEC = VisionOptions(source="digits", deleted_classes=[0, 7], max_train_per_class=12, max_test_per_class=6)
METHODS = [{"name": "gd_sine"}]


class Lookup(Backend):
    """A 'classifier' that returns fixed log-probs per image, keyed by the image's bytes."""

    def __init__(self, table: dict[bytes, np.ndarray]) -> None:
        self.table = table

    def loglikelihood(self, requests: Sequence[LoglikRequest]) -> list[np.ndarray]:
        raise NotImplementedError

    def generate(self, requests: Sequence[GenRequest]) -> list[str]:
        raise NotImplementedError

    def classify(self, requests: Sequence[ClassifyRequest]) -> list[np.ndarray]:
        return [self.table[r.image.tobytes()] for r in requests]


def _backend(bench: Vision, rng: np.random.Generator, sharpness: float) -> Lookup:
    table = {}
    for split in ("forget", "retain", "test_retain", "test_forget"):
        s = bench.splits.split(split)
        for img, label in zip(s.images, s.labels, strict=True):
            logits = rng.normal(size=len(bench.class_names))
            logits[label] += sharpness
            table[img.tobytes()] = logits - np.log(np.exp(logits).sum())
    return Lookup(table)


@pytest.fixture(scope="module")
def bench() -> Vision:
    return load_benchmark(SPEC)


def test_splits_and_training_examples(bench: Vision) -> None:
    assert bench.modality == "image" and bench.splits.deleted == (0, 7)
    forget = bench.forget_examples(None, make_objective(objective_spec(name="gd")))
    assert {label for _, label in forget} == {0, 7} and len(forget) == 24
    assert all(img.dtype == np.uint8 and img.shape == (8, 8, 3) for img, _ in forget)
    retain = bench.retain_examples(None)
    assert {label for _, label in retain} == set(range(10)) - {0, 7} and len(retain) == 8 * 12
    assert len(bench.reference_examples("target", None)) == 10 * 12
    assert [label for _, label in bench.reference_examples("retain", None)] == [label for _, label in retain]
    with pytest.raises(ValueError, match="unknown reference model kind"):
        bench.reference_examples("other", None)


def test_metrics_match_independent_computations(bench: Vision) -> None:
    rng = np.random.default_rng(0)
    backends = {"target": _backend(bench, rng, 4.0), "retain": _backend(bench, rng, 0.5),
                "gd_sine": _backend(bench, rng, 1.5)}
    scores = {m: bench.score(b, None, EvalSpec(bootstrap=0)) for m, b in backends.items()}
    rows = {(r["method"], r["split"], r["metric"]): r["value"] for r in bench.aggregate(scores, EvalSpec(bootstrap=0))}
    for method, backend in backends.items():
        acc = {}
        for split in ("forget", "retain", "test_retain", "test_forget"):
            s = bench.splits.split(split)
            predicted = [int(np.argmax(backend.table[img.tobytes()])) for img in s.images]
            acc[split] = accuracy_score(s.labels, predicted)
        assert rows[(method, "forget", "ua")] == pytest.approx(1 - acc["forget"])
        assert rows[(method, "retain", "ra")] == pytest.approx(acc["retain"])
        assert rows[(method, "test_retain", "ta")] == pytest.approx(acc["test_retain"])
        assert rows[(method, "test_forget", "accuracy")] == pytest.approx(acc["test_forget"])
        assert rows[(method, "all", "model_utility")] == pytest.approx(hmean([acc["retain"], acc["test_retain"]]))
        raw = scores[method].raw
        mia = svc_mia_efficacy(raw["retain"], raw["test_retain"], raw["forget"])
        assert rows[(method, "forget", "mia_efficacy")] == pytest.approx(mia)
        confidence = [np.exp(backends[method].table[img.tobytes()][y])
                      for img, y in zip(bench.splits.forget.images, bench.splits.forget.labels, strict=True)]
        retrain = [np.exp(backends["retain"].table[img.tobytes()][y])
                   for img, y in zip(bench.splits.forget.images, bench.splits.forget.labels, strict=True)]
        assert rows[(method, "forget", "forget_quality")] == pytest.approx(ks_2samp(confidence, retrain).pvalue)
    keys = (("forget", "ua"), ("retain", "ra"), ("test_retain", "ta"), ("forget", "mia_efficacy"))
    gap = np.mean([abs(rows[("gd_sine", s, m)] - rows[("retain", s, m)]) for s, m in keys])
    assert rows[("gd_sine", "all", "avg_gap")] == pytest.approx(gap)
    assert rows[("retain", "all", "avg_gap")] == 0.0 and rows[("retain", "forget", "forget_quality")] == 1.0


def test_examples_hold_every_per_image_value_and_the_label(bench: Vision) -> None:
    scores = bench.score(_backend(bench, np.random.default_rng(1), 2.0), None, EvalSpec(bootstrap=0))
    forget = [r for r in scores.examples if r["split"] == "forget"]
    assert {r["metric"] for r in forget} == {"loss", "correct", "confidence", "entropy", "predicted", "label"}
    labels = {r["example_id"]: r["value"] for r in forget if r["metric"] == "label"}
    assert sorted(labels) == sorted(bench.splits.forget.ids.tolist())
    rows = image_rows(np.stack([np.log(np.full(10, 0.1))]), np.array([3]))
    assert rows.confidence[0] == pytest.approx(0.1) and rows.entropy[0] == pytest.approx(np.log(10))


@pytest.mark.parametrize("data, message", [
    ({"benchmark": {"name": "vision", "forget_split": "forget10"}, "model": {"name": "builtin:tiny-vit"}},
     "benchmark.vision.forget_split"),
    ({"benchmark": {"name": "tofu", "deleted_classes": [1]}}, "benchmark.tofu.deleted_classes"),
    ({"benchmark": {"name": "vision"}}, "is a language model; the vision benchmark needs an image classifier"),
    ({"benchmark": {"name": "tofu"}, "model": {"name": "builtin:tiny-vit"}}, "is an image classifier"),
    ({"benchmark": {"name": "vision"}, "model": {"name": "builtin:tiny-vit"},
      "methods": [{"name": "a", "objective": {"name": "idk"}}]}, "'idk' does not apply to vision"),
])
def test_spec_keeps_vision_and_language_apart(data: dict, message: str) -> None:
    with pytest.raises(SpecError) as err:
        validate_spec({"methods": METHODS, **data})
    assert message in str(err.value)


def _job(tmp_path: Path, **benchmark: object) -> Path:
    import yaml

    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"name": "builtin:tiny-vit"}, "methods": METHODS, "out": str(tmp_path / "out"),
        "benchmark": {"name": "vision", "data_dir": str(tmp_path / "data"), **benchmark},
        "reference": {"cache_dir": str(tmp_path / "cache")}}))
    return path


@pytest.mark.parametrize("benchmark, message", [
    ({"deleted_classes": [12]}, "unknown class id 12"),
    ({"deleted_classes": ["zebra"]}, "unknown class 'zebra'"),
    ({"source": "missing-pickles"}, "test not found"),
])
def test_bad_vision_input_exits_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture,
                                            benchmark: dict, message: str) -> None:
    if benchmark.get("source") == "missing-pickles":
        from harness.benchmarks.vision.synth import SyntheticCifarSpec, generate_cifar100, write_cifar100

        root = write_cifar100(generate_cifar100(SyntheticCifarSpec(n_classes=3), 0), tmp_path / "cifar")
        (next(root.rglob("test"))).unlink()
        benchmark = {"source": str(root)}
    assert main(["run", str(_job(tmp_path, **benchmark))]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "metrics.parquet").exists()


def test_a_model_without_an_mlp_to_adapt_exits_2_before_any_work(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    from transformers import ResNetConfig, ResNetForImageClassification

    resnet = tmp_path / "resnet"
    ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8], depths=[1], num_labels=10)
                                 ).save_pretrained(resnet)
    import yaml

    path = _job(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["model"] = {"name": str(resnet)}
    path.write_text(yaml.safe_dump(data))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "has no MLP layers the harness can adapt" in err and str(resnet) in err
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("job, model_type, tokens", [("cifar100_vit_b16", "vit", 197),
                                                      ("cifar100_vit_l14", "clip", 257),
                                                      ("cifar100_deit_s", "vit", 197)])
def test_scale_specs_dry_run_offline_with_a_memory_plan(job: str, model_type: str, tokens: int,
                                                        capsys: pytest.CaptureFixture) -> None:
    root = Path(__file__).resolve().parents[3]
    assert main(["run", str(root / "jobs" / f"{job}.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"({model_type}, " in out and f"images x {tokens} tokens" in out and "fits on 80 GiB" in out
    assert "MLP layers" in out and "memory per device" in out
