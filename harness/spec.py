"""Pydantic job specs: every field validated, every default explicit in the resolved spec."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, TypeAdapter, field_validator, model_validator

import harness.adapters.bounds  # noqa: F401 - fills the bound registry AdapterSpec checks names against
from harness.benchmarks import PACKAGES
from harness.config import (
    BENCHMARK_OPTIONS,
    REFERENCE_METHODS,
    AdapterSpec,
    BenchmarkOptions,
    EvalSpec,
    ModelSource,
    ModelSpec,
    ObjectiveOptions,
    ReferenceSpec,
    ResourcesSpec,
    StrictModel,
    TrackingSpec,
    TrainSpec,
    apply_override,
    load_yaml,
    tagged_union,
    validate_config,
)
from harness.models.image import builtin_modality
from harness.objectives import OBJECTIVES, Objective, options_models


def _load_extension_options() -> tuple[Any, Any]:
    """The discriminated unions of benchmark options and objective options, from their registries.

    Each benchmark package defines its options in `harness/benchmarks/<name>/options.py` and each objective
    in `harness/objectives/<name>.py`; importing them fills the registries the unions are built from.
    """
    for package in PACKAGES:
        importlib.import_module(f"harness.benchmarks.{package}.options")
    benchmarks = {name: BENCHMARK_OPTIONS.get(name) for name in BENCHMARK_OPTIONS.names()}
    return (tagged_union(benchmarks, "benchmark", default="tofu"),
            tagged_union(options_models(), "objective", default="gd"))


BenchmarkSpec, ObjectiveSpec = _load_extension_options()
_BENCHMARK_ADAPTER: TypeAdapter[Any] = TypeAdapter(BenchmarkSpec)
_OBJECTIVE_ADAPTER: TypeAdapter[Any] = TypeAdapter(ObjectiveSpec)


def benchmark_spec(**data: Any) -> BenchmarkOptions:
    """Validated benchmark options (`name` picks the benchmark; tofu when omitted)."""
    return _BENCHMARK_ADAPTER.validate_python(data)


def objective_spec(**data: Any) -> ObjectiveOptions:
    """Validated objective options (`name` picks the objective)."""
    return _OBJECTIVE_ADAPTER.validate_python(data)


def _default_objective() -> ObjectiveOptions:
    return objective_spec(name="gd")


class MethodSpec(StrictModel):
    """One unlearning method of the job: a name plus its adapter, objective and training settings."""

    name: str
    adapter: AdapterSpec = AdapterSpec()
    objective: ObjectiveSpec = Field(default_factory=_default_objective)
    train: TrainSpec = TrainSpec()

    @model_validator(mode="after")
    def _penalty_needs_full_factors(self) -> MethodSpec:
        if self.train.zero_stage == 3 and OBJECTIVES.get(self.objective.name).penalty is not Objective.penalty:
            raise ValueError(f"objective {self.objective.name!r} adds a penalty on the adapted weights, which needs "
                             "train.zero_stage 0-2 (ZeRO-3 partitions them outside their layer's forward)")
        return self

    @field_validator("name")
    @classmethod
    def _reserved(cls, v: str) -> str:
        if v in REFERENCE_METHODS:
            raise ValueError(f"method name {v!r} is reserved for the reference models")
        if not v.replace("_", "").replace("-", "").replace("+", "").isalnum():
            raise ValueError(f"method name {v!r} must be letters, digits, '_', '-' or '+'")
        return v


class JobSpec(StrictModel):
    """A whole job: one model, one benchmark, several methods compared side by side, each run once per seed."""

    name: str = "job"
    seeds: list[int] = Field([0], min_length=1, description="every method runs once per seed (adapter "
                             "initialisation, batch order); conclusions use across-seed statistics")
    out: str = "results/{name}"
    model: ModelSpec = ModelSpec()
    benchmark: BenchmarkSpec = Field(default_factory=lambda: benchmark_spec(name="tofu"))
    reference: ReferenceSpec = ReferenceSpec()
    adapter: AdapterSpec = AdapterSpec()
    objective: ObjectiveSpec = Field(default_factory=_default_objective)
    train: TrainSpec = TrainSpec()
    methods: list[MethodSpec] = Field([], description="what `harness run` trains (at least one, unless the "
                                      "spec only lists `models` for `harness eval`)")
    models: list[ModelSource] = Field([], description="models `harness eval` scores without training (see "
                                      "harness/scoring/load.py); `harness run` ignores them")
    eval: EvalSpec = EvalSpec()
    resources: ResourcesSpec = ResourcesSpec()
    tracking: TrackingSpec | None = Field(TrackingSpec(), description="MLflow tracking of the finished runs "
                                          "(harness.tracking); null = off")

    @model_validator(mode="before")
    @classmethod
    def _methods_inherit_defaults(cls, data: Any) -> Any:
        """Each method starts from the job-level adapter/objective/train and overrides what it names."""
        if not isinstance(data, dict) or not isinstance(data.get("methods"), list):
            return data
        data = dict(data)
        methods = []
        for m in data["methods"]:
            if isinstance(m, dict):
                m = dict(m)
                for section in ("adapter", "objective", "train"):
                    base = data.get(section) or {}
                    if isinstance(base, BaseModel):
                        base = base.model_dump()
                    own = m.get(section) or {}
                    if isinstance(own, BaseModel):
                        own = own.model_dump(exclude_unset=True)
                    if isinstance(base, dict) and isinstance(own, dict):
                        if section == "objective" and own.get("name", base.get("name")) != base.get("name"):
                            # another objective: only the options every objective has carry over
                            base = {k: v for k, v in base.items() if k in ObjectiveOptions.model_fields
                                    and k not in ("name", "retain_loss")}
                        m[section] = {**base, **own}
            methods.append(m)
        data["methods"] = methods
        return data

    @model_validator(mode="before")
    @classmethod
    def _seed_is_now_seeds(cls, data: Any) -> Any:
        if isinstance(data, dict) and "seed" in data:
            raise ValueError(f"seed: the job's seeds are a list now; write `seeds: [{data['seed']}]`")
        return data

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v: list[int]) -> list[int]:
        dupes = sorted({s for s in v if v.count(s) > 1})
        if dupes:
            raise ValueError(f"seeds must be distinct; repeated: {', '.join(map(str, dupes))}")
        return v

    @model_validator(mode="after")
    def _model_fits_the_benchmark(self) -> JobSpec:
        kind = builtin_modality(self.model.name)
        if kind is not None and kind != self.benchmark.modality:
            what = {"text": "a language model", "image": "an image classifier"}
            raise ValueError(f"model.name: {self.model.name!r} is {what[kind]}; the {self.benchmark.name} benchmark "
                             f"needs {what[self.benchmark.modality]}")
        return self

    @model_validator(mode="after")
    def _objectives_fit_the_benchmark(self) -> JobSpec:
        modality = self.benchmark.modality
        for i, m in enumerate(self.methods):
            objective = OBJECTIVES.get(m.objective.name)
            if modality not in objective.modalities:
                raise ValueError(f"methods.{i}.objective.name: {m.objective.name!r} does not apply to "
                                 f"{self.benchmark.name} ({modality}) benchmarks")
        return self

    @model_validator(mode="after")
    def _methods_or_models(self) -> JobSpec:
        if not self.methods and not self.models:
            raise ValueError("methods: a job needs at least one method (or, for `harness eval`, `models`)")
        return self

    @model_validator(mode="after")
    def _unique_method_names(self) -> JobSpec:
        names = [m.name for m in self.methods]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"method names must be unique; repeated: {', '.join(dupes)}")
        return self

    @model_validator(mode="after")
    def _batch_splits_over_workers(self) -> JobSpec:
        workers = self.resources.num_workers
        for i, m in enumerate(self.methods):
            if m.train.batch_size % workers:
                raise ValueError(f"methods.{i}.train.batch_size ({m.train.batch_size}) must be a multiple of "
                                 f"resources.num_workers ({workers})")
        return self

    def out_dir(self) -> Path:
        """The run's output directory with `{name}` filled in."""
        return Path(self.out.format(name=self.name)).expanduser()


def validate_spec(data: Any, source: str = "") -> JobSpec:
    """Validate raw spec data, raising SpecError with one line per bad field path."""
    return validate_config(JobSpec, data, "job spec", source)


def load_spec(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    """Read a YAML job spec, apply `--set` overrides, and validate it."""
    return validate_spec(read_spec_data(path, overrides), str(path))


def read_spec_data(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """The raw data of a YAML job spec with `--set` overrides applied, not yet validated."""
    data = load_yaml(path, "job spec")
    for assignment in overrides or []:
        data = apply_override(data, assignment)
    return data


def dump_spec(spec: JobSpec) -> str:
    """The resolved spec as YAML, every default filled in; `load_spec` reads it back to an equal spec."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
