"""Each benchmark declares its metrics once (harness.results.contract.Metric): its summary columns take their
direction from the declarations, and nightly's default rules are built from them."""

from __future__ import annotations

import pytest

from harness.benchmarks import benchmark_classes
from harness.commands.nightly import default_rules, find_rule
from harness.spec import benchmark_spec

CLASSES = {cls.name: cls for cls in benchmark_classes()}


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_every_summary_column_is_declared_and_takes_its_direction(name: str) -> None:
    cls = CLASSES[name]
    assert cls.declared_metrics, f"{name} declares no metrics"
    for column in cls.summary_columns_for(benchmark_spec(name=name)):
        declared = cls.declaration(column.split, column.metric)
        assert declared is not None, f"{name}: column {column.split}/{column.metric} has no declaration"
        assert column.higher_is_better == declared.higher_is_better


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_nightly_judges_each_summary_column_by_its_declaration(name: str) -> None:
    cls = CLASSES[name]
    rules = default_rules()
    for column in cls.summary_columns_for(benchmark_spec(name=name)):
        declared = cls.declaration(column.split, column.metric)
        rule = find_rule(rules, "gd", column.split, column.metric)
        assert (rule.kind, rule.tolerance, rule.direction) == (declared.kind, declared.tolerance, declared.direction)
        reference = find_rule(rules, "target", column.split, column.metric)
        assert (reference.kind, reference.tolerance, reference.direction) == (declared.kind, declared.tolerance, "both")
