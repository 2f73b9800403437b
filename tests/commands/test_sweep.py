"""Sweeps: configurations from cases x grid (and random draws), method names, job splitting, bad files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness.commands.sweep import SweepSpec, config_name, configurations, load_sweep, sweep_jobs
from harness.core.errors import SpecError
from harness.spec import validate_spec

BASE = validate_spec({"name": "base", "seeds": [0], "methods": [{"name": "gd", "adapter": {"bound": "none"}}]})


def test_cases_are_alternatives_crossed_with_the_grid() -> None:
    sweep = SweepSpec(cases=[{"adapter.bound": ["none"]}, {"adapter.bound": ["sine"], "adapter.omega": [10, 100]}],
                      grid={"train.lr": [1e-3, 1e-2]})
    configs = configurations(sweep)
    assert len(configs) == (1 + 2) * 2
    assert {"adapter.bound": "sine", "adapter.omega": 100, "train.lr": 1e-2} in configs
    assert all("adapter.omega" not in c for c in configs if c["adapter.bound"] == "none")


def test_random_mode_draws_reproducibly_from_distributions() -> None:
    sweep = SweepSpec(mode="random", num_samples=5, grid={"train.lr": {"loguniform": [1e-4, 1e-1]},
                                                          "adapter.bound": ["none", "sine"]})
    a, b = configurations(sweep), configurations(sweep)
    assert a == b and len(a) == 5
    assert all(1e-4 <= c["train.lr"] <= 1e-1 and c["adapter.bound"] in ("none", "sine") for c in a)


def test_method_configurations_become_methods_of_one_job() -> None:
    sweep = SweepSpec(seeds=[3, 4], grid={"adapter.bound": ["none", "sine"], "train.lr": [1e-3, 3e-2]})
    jobs = sweep_jobs(BASE, sweep)
    assert len(jobs) == 1
    spec, named = jobs[0]
    assert spec.seeds == [3, 4] and sorted(named) == ["none_lr1e-3", "none_lr3e-2", "sine_lr1e-3", "sine_lr3e-2"]
    method = next(m for m in spec.methods if m.name == "sine_lr3e-2")
    assert (method.adapter.bound, method.train.lr) == ("sine", 3e-2)
    assert config_name({"adapter.omega": 100, "adapter.clip_value": 0.01, "train.optimizer": "sgd"}) == \
        "w100_c1e-2_sgd"


def test_job_level_paths_split_the_sweep_into_jobs() -> None:
    sweep = SweepSpec(grid={"reference.seed": [0, 1], "train.lr": [1e-3, 1e-2]})
    jobs = sweep_jobs(BASE, sweep)
    assert [j.reference.seed for j, _ in jobs] == [0, 1] and [j.name for j, _ in jobs] == ["base-0", "base-1"]
    assert all(sorted(named) == ["lr1e-2", "lr1e-3"] for _, named in jobs)


def test_bad_sweep_files_name_the_field(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    for data, needle in (({"grid": {"train.lr": 0.1}}, "grid.train.lr"), ({}, "grid` or `cases"),
                         ({"grid": {"train.lr": [1]}, "mode": "sideways"}, "mode")):
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(SpecError, match="invalid sweep file") as err:
            load_sweep(path)
        assert needle in str(err.value)
    with pytest.raises(SpecError, match="does not exist"):
        load_sweep(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="not a section|lr"):
        sweep_jobs(BASE, SweepSpec(grid={"train.lr": ["fast"]}))


def test_shipped_sweeps_validate() -> None:
    root = Path(__file__).resolve().parents[2]
    files = sorted((root / "sweeps").glob("*.yaml"))
    assert files
    for path in files:
        assert configurations(load_sweep(path))
