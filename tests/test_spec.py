"""Job specs: defaults, method inheritance, overrides, clear errors, and the spec.yaml round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness.commands.study.spec import is_study, load_study
from harness.config import apply_override
from harness.core.errors import SpecError
from harness.spec import JobSpec, dump_spec, load_spec, validate_spec

ROOT = Path(__file__).resolve().parents[1]
MINIMAL = {"methods": [{"name": "a"}]}


def test_methods_inherit_job_defaults_and_override() -> None:
    spec = validate_spec({
        "adapter": {"bound": "tanh", "rank": 4},
        "train": {"lr": 0.5},
        "methods": [{"name": "a"}, {"name": "b", "adapter": {"rank": 16}, "train": {"epochs": 2}}],
    })
    a, b = spec.methods
    assert (a.adapter.bound, a.adapter.rank, a.train.lr) == ("tanh", 4, 0.5)
    assert (b.adapter.bound, b.adapter.rank, b.train.lr, b.train.epochs) == ("tanh", 16, 0.5, 2)


def test_objective_defaults_are_resolved_explicitly() -> None:
    spec = validate_spec({"methods": [{"name": "a", "objective": {"name": "ga"}},
                                      {"name": "b", "objective": {"name": "npo"}}]})
    assert spec.methods[0].objective.retain_loss == "none"
    assert spec.methods[1].objective.beta == pytest.approx(0.1)
    assert spec.methods[1].objective.retain_loss == "nll"


@pytest.mark.parametrize("data, field", [
    ({"methods": [{"name": "a"}], "modle": {}}, "modle"),
    ({"methods": [{"name": "a", "adapter": {"bound": "cosine"}}]}, "methods.0.adapter.bound"),
    ({"methods": [{"name": "a", "adapter": {"rank": 0}}]}, "methods.0.adapter.rank"),
    ({"methods": [{"name": "a", "train": {"lr": "fast"}}]}, "methods.0.train.lr"),
    ({"methods": [{"name": "a", "objective": {"name": "magic"}}]}, "methods.0.objective"),
    ({"methods": []}, "methods"),
    ({"methods": [{"name": "a"}, {"name": "a"}]}, "repeated: a"),
    ({"methods": [{"name": "target"}]}, "methods.0.name"),
    ({"methods": [{"name": "a"}], "reference": {"mode": "load"}}, "reference.target"),
])
def test_bad_specs_name_the_field(data: dict, field: str) -> None:
    with pytest.raises(SpecError) as err:
        validate_spec(data, "x.yaml")
    assert field in str(err.value)


def test_overrides_by_dotted_path_and_index() -> None:
    data = apply_override({"methods": [{"name": "a"}]}, "methods.0.adapter.omega=10")
    data = apply_override(data, "train.max_grad_norm=null")
    data = apply_override(data, "benchmark.forget_split=forget05")
    spec = validate_spec(data)
    assert spec.methods[0].adapter.omega == 10
    assert spec.methods[0].train.max_grad_norm is None
    assert spec.benchmark.forget_split == "forget05"
    with pytest.raises(SpecError, match="index"):
        apply_override(data, "methods.3.adapter.omega=1")
    with pytest.raises(SpecError, match="key.path=value"):
        apply_override(data, "methods")


def test_override_is_validated_like_the_file(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    with pytest.raises(SpecError, match="train.batch_size"):
        load_spec(path, ["train.batch_size=-1"])


def test_spec_round_trips_through_spec_yaml(tmp_path: Path) -> None:
    spec = load_spec(ROOT / "jobs" / "quickstart.yaml")
    path = tmp_path / "spec.yaml"
    path.write_text(dump_spec(spec))
    again = load_spec(path)
    assert again == spec
    assert dump_spec(again) == dump_spec(spec)


def test_shipped_job_specs_validate() -> None:
    shipped = {p: yaml.safe_load(p.read_text()) for p in sorted((ROOT / "jobs").glob("*.yaml"))}
    # suites (jobs/nightly*.yaml) list jobs and are checked in tests/commands/test_nightly.py
    jobs = [p for p, data in shipped.items() if "jobs" not in data and not is_study(data)]
    studies = [p for p, data in shipped.items() if is_study(data)]
    assert len(jobs) >= 8 and len(studies) >= 2
    for path in jobs:
        assert isinstance(load_spec(path), JobSpec), path
    for path in studies:  # a study spec names its job: both validate
        study, job = load_study(path)
        assert isinstance(job, JobSpec) and study.methods, path


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("methods: [\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(SpecError, match="mapping"):
        load_spec(bad)


@pytest.mark.parametrize("data, message", [
    ({**MINIMAL, "benchmark": {"name": "muse", "forget_split": "forget10"}}, "benchmark.muse.forget_split"),
    ({**MINIMAL, "benchmark": {"name": "tofu", "mink_k": 0.2}}, "benchmark.tofu.mink_k"),
    ({**MINIMAL, "benchmark": {"name": "cifar"}}, "benchmark: unknown name 'cifar' (known:"),
    ({"methods": [{"name": "a", "objective": {"name": "gd", "beta": 0.1}}]}, "methods.0.objective.gd.beta"),
    ({**MINIMAL, "seed": 1}, "seeds: [1]"),
    ({**MINIMAL, "seeds": [0, 0]}, "repeated: 0"),
    ({**MINIMAL, "seeds": []}, "seeds"),
    ({**MINIMAL, "reference": {"mode": "load", "target": "x", "per_seed": True}}, "per_seed"),
    ({"benchmark": {"name": "tofu"}, "methods": [{"name": "a", "train": {"optimizer": "lion"}}]},
     "methods.0.train.optimizer"),
])
def test_benchmark_and_objective_options_belong_to_their_own(data: dict, message: str) -> None:
    with pytest.raises(SpecError) as err:
        validate_spec(data, "x.yaml")
    assert message in str(err.value)


def test_a_method_switching_objective_keeps_only_the_shared_options() -> None:
    spec = validate_spec({"objective": {"name": "npo", "beta": 0.3, "w_retain": 2.0},
                          "methods": [{"name": "a"}, {"name": "b", "objective": {"name": "ga"}}]})
    a, b = spec.methods
    assert (a.objective.name, a.objective.beta, a.objective.w_retain) == ("npo", 0.3, 2.0)
    assert (b.objective.name, b.objective.w_retain, b.objective.retain_loss) == ("ga", 2.0, "none")


def test_seeds_and_shared_or_per_seed_references() -> None:
    from harness.train.reference import reference_seed_for, reference_seeds

    shared = validate_spec({**MINIMAL, "seeds": [3, 1, 2], "reference": {"seed": 7}})
    assert shared.seeds == [3, 1, 2] and reference_seeds(shared) == [7] and reference_seed_for(shared, 1) == 7
    own = validate_spec({**MINIMAL, "seeds": [3, 1], "reference": {"per_seed": True}})
    assert reference_seeds(own) == [3, 1] and reference_seed_for(own, 1) == 1
