"""Stabiliser controls usable with any method (gradient clipping, weight decay, an L2 penalty on B A), their spec
validation, and the forget-quality vs model-utility Pareto table and plot of multi-method jobs."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from harness.adapters import adapted_layers, attach
from harness.config import AdapterSpec, TrainSpec
from harness.core.errors import SpecError
from harness.models.text import build_builtin
from harness.objectives import make_objective
from harness.render.tables import non_dominated, pareto_table, plot_pareto
from harness.spec import objective_spec, validate_spec
from harness.train.deepspeed_config import build_deepspeed_config
from harness.train.loop import make_optimizer
from harness.train.step import penalty

pytestmark = pytest.mark.usefixtures("one_thread")


def _adapted() -> torch.nn.Module:
    model = build_builtin("tiny-llama", 32, seed=0)
    attach(model, AdapterSpec(bound="sine", rank=2, omega=3.0), seed=0)
    with torch.no_grad():
        for layer in adapted_layers(model).values():
            layer.lora_B.weight.normal_()
    return model


def test_adapter_l2_adds_the_squared_product_norm_to_any_objective() -> None:
    model = _adapted()
    product = sum(float((layer.lora_B.weight @ layer.lora_A.weight).pow(2).sum())
                  for layer in adapted_layers(model).values())
    gd = make_objective(objective_spec(name="gd"))
    assert penalty(model, gd, TrainSpec(), 0.0) is None
    assert float(penalty(model, gd, TrainSpec(adapter_l2=0.3), 0.0).detach()) == pytest.approx(0.3 * product, rel=1e-5)
    l1 = make_objective(objective_spec(name="l1_sparse", gamma=0.0))
    assert float(penalty(model, l1, TrainSpec(adapter_l2=0.3), 0.5).detach()) == pytest.approx(0.3 * product, rel=1e-5)


def test_weight_decay_and_clipping_reach_the_optimizer_and_deepspeed() -> None:
    params = [torch.nn.Parameter(torch.ones(3))]
    for optimizer in ("adamw", "sgd"):
        opt = make_optimizer(params, TrainSpec(weight_decay=0.07, optimizer=optimizer))
        assert opt.param_groups[0]["weight_decay"] == 0.07
    config = build_deepspeed_config(TrainSpec(max_grad_norm=0.5, weight_decay=0.07), 1)
    assert config["gradient_clipping"] == 0.5 and "optimizer" not in config  # the harness's optimizer is used


def _job(**train: object) -> dict:
    return {"methods": [{"name": "m", "objective": {"name": "l1_sparse"}, "train": train}]}


def test_penalties_need_unpartitioned_factors() -> None:
    with pytest.raises(SpecError, match="adapter_l2 needs zero_stage 0-2"):
        validate_spec({"methods": [{"name": "m", "train": {"adapter_l2": 0.1, "zero_stage": 3}}]})
    with pytest.raises(SpecError, match="l1_sparse.*zero_stage 0-2"):
        validate_spec(_job(zero_stage=3))
    assert validate_spec(_job(zero_stage=2)).methods[0].train.adapter_l2 == 0.0


def _stats(points: dict[str, tuple[float, float]]) -> pd.DataFrame:
    rows = []
    for method, (fq, mu) in points.items():
        for metric, value in (("forget_quality", fq), ("model_utility", mu)):
            rows.append({"method": method, "column": metric, "split": "x", "metric": metric, "higher_is_better": True,
                         "mean": value, "ci_low": value * 0.9, "ci_high": value * 1.1, "n": 2,
                         "values": [value, value]})
    return pd.DataFrame(rows)


def test_pareto_table_marks_the_non_dominated_methods_and_never_the_references(tmp_path) -> None:
    points = {"target": (1e-6, 0.9), "retain": (1.0, 0.8), "a": (0.1, 0.5), "b": (0.01, 0.6), "c": (0.05, 0.4),
              "d": (0.2, 0.1)}
    table = pareto_table(_stats(points), list(points), ("target", "retain"))
    front = set(table.loc[table["pareto"], "method"])
    assert front == {"a", "b", "d"}  # c is dominated by a; the references are not candidates
    assert not table.loc[table["reference"], "pareto"].any()
    assert plot_pareto(table, tmp_path / "pareto.png") == tmp_path / "pareto.png"
    assert (tmp_path / "pareto.png").stat().st_size > 0
    assert pareto_table(_stats({}), [], ()).empty and plot_pareto(pd.DataFrame(), tmp_path / "none.png") is None


def test_non_dominated_matches_a_direct_pairwise_check() -> None:
    g = torch.Generator().manual_seed(0)
    values = torch.rand(30, 2, generator=g).numpy()
    direct = [not any((values[j] >= values[i]).all() and (values[j] > values[i]).any() for j in range(30))
              for i in range(30)]
    assert non_dominated(values).tolist() == direct
