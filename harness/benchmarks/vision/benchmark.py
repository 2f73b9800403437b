"""Vision class deletion (SalUn's setting): forget every training image of the deleted classes of an image classifier.

Data (harness.benchmarks.vision.data): forget = the deleted classes' training images, retain = the other
training images, test_retain / test_forget = the retained / deleted classes' test images. The reference
models are `target` (fine-tuned on every class) and `retain` (the retrain model: fine-tuned without the
deleted classes, so it never saw them). Unlearning trains bounded adapters on the ViT's MLP layers only;
the classification head stays frozen like attention, so the adapters alone must remove the classes (a
trainable head could zero the deleted classes' rows and bypass the adapter the study is about).

Metrics (harness.benchmarks.vision.metrics, SalUn's conventions, fractions in [0, 1]):
- `forget/ua` = 1 - accuracy on the forget set; `retain/ra`; `test_retain/ta`; `test_forget/accuracy`
  (the deleted classes' test accuracy); `forget/mia_efficacy` (SalUn's SVC attack); all with bootstrap
  intervals where they are means over images;
- `all/avg_gap`: mean |UA, RA, TA, MIA-efficacy - the retrain model's|;
- `forget/forget_quality`: KS p-value of the forget images' true-class confidences, model vs retrain model;
- `all/model_utility`: harmonic mean of RA and TA.
Per image (examples.parquet): loss, correct, confidence, entropy, predicted and label, so every aggregate
and the per-class accuracy can be recomputed. `plots/per_class.png` shows each method's per-class test
accuracy against target and retrain, the deleted classes marked.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.benchmarks.base import BENCHMARKS, Benchmark, MatchedUtility, ModelScores, mean_metric_row
from harness.benchmarks.vision.data import SPLITS, class_deletion_splits
from harness.benchmarks.vision.metrics import METRICS, avg_gap, forget_quality, image_rows, model_utility, salun_metrics
from harness.benchmarks.vision.options import VisionOptions
from harness.benchmarks.vision.sources import load_image_dataset
from harness.config import EvalSpec
from harness.data.requests import ClassifyRequest
from harness.render.tables import Column, pyplot, save_figure

Example = tuple[np.ndarray, int]


@BENCHMARKS.register("vision")
class Vision(Benchmark):
    """Class deletion on an image classifier, scored with SalUn's metrics against the retrain model."""

    declared_metrics = METRICS

    name = "vision"

    def recovery_metric(self) -> tuple[str, str]:
        return "forget", "ua"

    def __init__(self, spec: VisionOptions) -> None:
        super().__init__(spec)
        data = load_image_dataset(spec.source, spec.data_dir, seed=spec.seed, test_fraction=spec.test_fraction,
                                  label_column=spec.label_column, synthetic=spec.synthetic)
        self.splits = class_deletion_splits(data, spec.deleted_classes, max_train_per_class=spec.max_train_per_class,
                                            max_test_per_class=spec.max_test_per_class, seed=spec.seed)
        self.class_names = data.class_names

    @classmethod
    def matched_utility_for(cls, options: VisionOptions) -> MatchedUtility:
        # SalUn's reading: test accuracy kept, UA and MIA-efficacy as close as possible to the retrain model's.
        return MatchedUtility(utility=("test_retain", "ta"), forget=(("forget", "ua"), ("forget", "mia_efficacy")),
                              goal="retain")

    @classmethod
    def summary_columns_for(cls, options: VisionOptions) -> list[Column]:
        return [
            cls.column("forget", "ua", "UA"),
            cls.column("retain", "ra", "RA"),
            cls.column("test_retain", "ta", "TA"),
            cls.column("test_forget", "accuracy", "deleted-class TA"),
            cls.column("forget", "mia_efficacy", "MIA-efficacy"),
            cls.column("all", "avg_gap", "avg gap to retrain"),
            cls.column("forget", "forget_quality", "forget quality"),
            cls.column("all", "model_utility", "model utility"),
        ]

    # ---- training examples ------------------------------------------------------------------------

    @staticmethod
    def _examples(images: np.ndarray, labels: Sequence[int]) -> list[Example]:
        return [(img, int(label)) for img, label in zip(images, labels, strict=True)]

    def reference_examples(self, kind: str, processor: Any) -> list[Example]:
        forget, retain = self.splits.forget, self.splits.retain
        if kind == "target":
            return self._examples(np.concatenate([forget.images, retain.images]),
                                  np.concatenate([forget.labels, retain.labels]))
        if kind == "retain":
            return self._examples(retain.images, retain.labels)
        raise ValueError(f"unknown reference model kind {kind!r} (known: target, retain)")

    def forget_examples(self, processor: Any, objective: Any, seed: int = 0) -> list[Example]:
        forget = self.splits.forget
        labels = objective.forget_labels(forget.labels, len(self.class_names), seed)
        return self._examples(forget.images, labels)

    def retain_examples(self, processor: Any) -> list[Example]:
        return self._examples(self.splits.retain.images, self.splits.retain.labels)

    def forget_keys(self) -> list[str]:
        return [str(i) for i in self.splits.forget.ids]

    def scored_forget_keys(self) -> list[str]:
        return [str(i) for i in self.splits.forget.ids]

    def restrict_forget(self, keep: Sequence[int], forget_only: bool = False) -> Vision:
        # SalUn's metrics need every split, so the other splits stay (images classify fast)
        view = copy.copy(self)
        view.splits = dataclasses.replace(self.splits, forget=self.splits.forget.subset(np.asarray(keep, dtype=int)))
        return view

    # ---- scoring ----------------------------------------------------------------------------------

    def score(self, backend: Any, processor: Any, eval_spec: EvalSpec) -> ModelScores:
        result = ModelScores()
        for split in SPLITS:
            images = self.splits.split(split)
            if eval_spec.max_examples:
                images = images.subset(np.arange(min(eval_spec.max_examples, len(images))))
            logp = backend.classify([ClassifyRequest(img) for img in images.images])
            rows = image_rows(np.stack(logp), images.labels)
            result.raw[split] = rows
            frame = rows.frame(images.ids)
            labels = pd.DataFrame({"example_id": images.ids, "metric": "label",
                                   "value": images.labels.astype(np.float64)})
            result.examples.extend({"split": split, **r} for r in pd.concat([frame, labels]).to_dict("records"))
        return result

    def aggregate(self, scores: dict[str, ModelScores], eval_spec: EvalSpec) -> list[dict[str, Any]]:
        feature = self.spec.mia_feature
        salun = {m: salun_metrics(s.raw["forget"], s.raw["retain"], s.raw["test_retain"], s.raw["test_forget"],
                                  feature) for m, s in scores.items()}
        retrain = scores.get("retain")
        n_boot, seed = eval_spec.bootstrap, self.seed
        rows: list[dict[str, Any]] = []
        for method, s in scores.items():
            m = salun[method]
            own = [mean_metric_row("forget", "ua", 1.0 - s.raw["forget"].correct, n_boot, seed),
                   mean_metric_row("retain", "ra", s.raw["retain"].correct.astype(float), n_boot, seed),
                   mean_metric_row("test_retain", "ta", s.raw["test_retain"].correct.astype(float), n_boot, seed),
                   mean_metric_row("test_forget", "accuracy", s.raw["test_forget"].correct.astype(float), n_boot,
                                   seed),
                   {"split": "forget", "metric": "mia_efficacy", "value": m["mia_efficacy"]},
                   {"split": "all", "metric": "model_utility", "value": model_utility(m["ra"], m["ta"])}]
            if retrain is not None:
                own += [{"split": "all", "metric": "avg_gap", "value": avg_gap(m, salun["retain"])},
                        {"split": "forget", "metric": "forget_quality",
                         "value": forget_quality(s.raw["forget"], retrain.raw["forget"])}]
            rows.extend({"method": method, **row} for row in own)
        return rows

    def plots(self, examples: pd.DataFrame, methods: Sequence[str], out_dir: Path) -> list[Path]:
        """`per_class.png`: each model's per-class test accuracy (mean over seeds), deleted classes marked."""
        plt = pyplot()
        test = examples[examples["split"].isin(["test_retain", "test_forget"])]
        if test.empty:
            return []
        wide = test.pivot_table(index=["method", "seed", "split", "example_id"], columns="metric", values="value")
        wide = wide.reset_index()
        per_class = wide.groupby(["method", "seed", "label"])["correct"].mean().groupby(["method", "label"]).mean()
        n = len(self.class_names)
        fig, ax = plt.subplots(figsize=(min(18, 4 + 0.25 * n * len(methods) / 2), 4))
        width = 0.8 / max(1, len(methods))
        style = {"target": {"color": "black", "alpha": 0.35}, "retain": {"color": "tab:green", "alpha": 0.5}}
        for i, method in enumerate(m for m in methods if m in per_class.index.get_level_values(0)):
            acc = per_class.loc[method].reindex(range(n)).to_numpy()
            label = "retain (retrain)" if method == "retain" else method
            if n <= 20:
                ax.bar(np.arange(n) + (i - (len(methods) - 1) / 2) * width, acc, width, label=label,
                       **style.get(method, {}))
            else:  # many classes: one line per model reads better than bars
                ax.plot(np.arange(n), acc, marker=".", linewidth=1, label=label, **style.get(method, {}))
        for c in self.splits.deleted:
            ax.axvspan(c - 0.45, c + 0.45, color="tab:red", alpha=0.12, linewidth=0)
        ax.set_xticks(range(n), [str(c) for c in range(n)] if n > 20 else list(self.class_names), fontsize=7)
        ax.set_xlabel("class (deleted classes shaded red)")
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=7, ncol=min(6, len(methods)), loc="upper center", bbox_to_anchor=(0.5, -0.18))
        ax.set_title("Per-class test accuracy (mean over seeds)")
        path = out_dir / "per_class.png"
        save_figure(fig, path)
        return [path]
