"""Pydantic job specs: every field validated, every default explicit in the resolved spec."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, TypeAdapter, field_validator, model_validator

from harness.attack_spec import AttacksSpec
from harness.config import load_yaml, validate_config
from harness.errors import SpecError
from harness.eval.lm_eval_tasks import LmEvalSpec
from harness.eval.model_source import ModelSource
from harness.specbase import BENCHMARK_OPTIONS, BenchmarkOptions, ObjectiveOptions, StrictModel, tagged_union
from harness.tracking import TrackingSpec


class ModelSpec(StrictModel):
    """Which model to unlearn: a hub id, a local directory, or `builtin:<name>` (config-built, offline)."""

    name: str = "builtin:tiny-llama"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False
    revision: str | None = None

    @field_validator("name")
    @classmethod
    def _known_builtin(cls, v: str) -> str:
        from harness.models import BUILTIN_PREFIX, builtin_modality

        if v.startswith(BUILTIN_PREFIX) and builtin_modality(v) is None:
            from harness.benchmarks.vision.models import BUILTIN_IMAGE_MODELS
            from harness.models import BUILTIN_MODELS

            known = [*BUILTIN_MODELS.names(), *BUILTIN_IMAGE_MODELS.names()]
            raise ValueError(f"unknown builtin model {v!r} (known: "
                             + ", ".join(BUILTIN_PREFIX + n for n in known) + ")")
        return v


class AdapterSpec(StrictModel):
    """Bounded LoRA on the MLP projections: `W = W0 + (alpha/r) f(omega B A) / g(d_in)`."""

    bound: str = "sine"
    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    omega: float = Field(100.0, gt=0)
    clip_value: float = Field(0.01, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    targets: list[str] | None = None
    keep_dense: bool = Field(False, description="bounded adapters: keep the dense weight and d delta/dM from the "
                             "forward for the backward (2 d_out x d_in tensors per layer more memory, no "
                             "recomputation); false recomputes them (harness/adapters/fused.py)")

    @field_validator("bound")
    @classmethod
    def _known_bound(cls, v: str) -> str:
        from harness.adapters.bounds import BOUNDS

        if v not in BOUNDS:
            raise ValueError(f"unknown bound {v!r} (known: {', '.join(BOUNDS.names())})")
        return v


def _load_extension_options() -> tuple[Any, Any]:
    """The discriminated unions of benchmark options and objective options, from their registries.

    Each benchmark package defines its options in `harness/benchmarks/<name>/options.py` and each objective
    in `harness/objectives/<name>.py`; importing them fills the registries the unions are built from.
    """
    import importlib

    from harness.benchmarks import PACKAGES
    from harness.objectives import options_models

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


class SensitivitySpec(StrictModel):
    """Trajectory sensitivity (harness/train/twin.py): a twin of every run, perturbed by relative noise `epsilon` on
    the adapter factors and trained in lockstep on the same batches; their distance per step gives the run's
    finite-time Lyapunov exponent (harness/sensitivity.py)."""

    epsilon: float = Field(1e-7, ge=0, description="relative noise on the adapter factors: each factor moves by "
                           "epsilon * rms(factor) * N(0, 1); 0 gives a twin identical to the run")
    perturb: Literal["adapter"] = Field("adapter", description="what is perturbed: the adapter factors")
    probe_batch: int = Field(8, ge=0, description="forget examples whose logits are compared every step "
                             "(two no-grad forwards per step); 0 = no logit distance")


class TrainSpec(StrictModel):
    """Optimisation settings for one unlearning run (run by Ray Train workers, each a DeepSpeed engine)."""

    epochs: float = Field(5.0, gt=0)
    max_steps: int | None = Field(None, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0, description="AdamW/SGD weight decay on the adapter factors (the only "
                                "trainable parameters); a stabiliser control")
    adapter_l2: float = Field(0.0, ge=0, description="weight of an L2 penalty sum_layers ||B A||_F^2 added to the "
                              "loss (on the product before the bound); a stabiliser control")
    batch_size: int = Field(8, ge=1, description="global micro-batch (forget examples), split over the workers")
    grad_accum: int = Field(1, ge=1)
    max_grad_norm: float | None = Field(None, gt=0, description="clip gradients to this norm; null = off")
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="sgd: plain SGD (a control for AdamW's "
                                               "normalised steps)")
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD momentum")
    scheduler: Literal["constant", "linear", "cosine"] = "linear"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    max_length: int = Field(128, ge=8)
    zero_stage: Literal[0, 1, 2, 3] = 0
    precision: Literal["fp32", "bf16"] = "fp32"
    offload_optimizer: bool = False
    offload_params: bool = False
    gradient_checkpointing: bool = False
    checkpoint_every: int | None = Field(None, ge=1, description="optimizer steps between checkpoints; null = end only")
    report_every: int = Field(10, ge=1, description="optimizer steps between metric reports to Ray (and Tune)")
    sensitivity: SensitivitySpec | None = Field(None, description="train a perturbed twin of every run in lockstep "
                                                "and log their distance per step (one more forward/backward per "
                                                "step); null = off")

    @model_validator(mode="after")
    def _offload_needs_zero(self) -> TrainSpec:
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage 1, 2 or 3")
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage 3")
        if self.adapter_l2 > 0 and self.zero_stage == 3:
            raise ValueError("adapter_l2 needs zero_stage 0-2 (ZeRO-3 partitions the factors outside their layer's "
                             "forward, where the penalty reads them)")
        if self.sensitivity is not None and self.zero_stage == 3:
            raise ValueError("sensitivity needs zero_stage 0-2 (the twins' update distance reads whole factors)")
        if self.sensitivity is not None and self.checkpoint_every is not None:
            raise ValueError("sensitivity needs checkpoint_every null (the twin is not checkpointed, so a resumed "
                             "run could not resume it)")
        return self


class MethodSpec(StrictModel):
    """One unlearning method of the job: a name plus its adapter, objective and training settings."""

    name: str
    adapter: AdapterSpec = AdapterSpec()
    objective: ObjectiveSpec = Field(default_factory=_default_objective)
    train: TrainSpec = TrainSpec()

    @model_validator(mode="after")
    def _penalty_needs_full_factors(self) -> MethodSpec:
        from harness.objectives import OBJECTIVES, Objective

        if self.train.zero_stage == 3 and OBJECTIVES.get(self.objective.name).penalty is not Objective.penalty:
            raise ValueError(f"objective {self.objective.name!r} adds a penalty on the adapted weights, which needs "
                             "train.zero_stage 0-2 (ZeRO-3 partitions them outside their layer's forward)")
        return self

    @field_validator("name")
    @classmethod
    def _reserved(cls, v: str) -> str:
        if v in ("target", "retain"):
            raise ValueError(f"method name {v!r} is reserved for the reference models")
        if not v.replace("_", "").replace("-", "").replace("+", "").isalnum():
            raise ValueError(f"method name {v!r} must be letters, digits, '_', '-' or '+'")
        return v


class ReferenceTrainSpec(StrictModel):
    """How the builtin reference models (target, retain) are fine-tuned from scratch."""

    epochs: int = Field(20, ge=1)
    lr: float = Field(5e-3, gt=0)
    batch_size: int = Field(32, ge=1)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)


class ReferenceSpec(StrictModel):
    """Reference models: `train` fine-tunes target and retain models (cached by config hash);
    `load` takes them from `target`/`retain` (hub ids or local directories).

    By default one pair of references (trained with `seed`) serves every seed of the job, so the seeds
    measure the spread of the unlearning runs alone; `per_seed: true` trains a pair per seed, so the
    spread includes the references' own.
    """

    mode: Literal["train", "load"] = "train"
    target: str | None = None
    retain: str | None = None
    train: ReferenceTrainSpec = ReferenceTrainSpec()
    cache_dir: str = "~/.cache/harness/reference"
    per_seed: bool = Field(False, description="train target and retain once per job seed (true) or once, with "
                           "`seed`, shared by every seed (false)")
    seed: int = Field(0, description="seed of shared reference models (initialisation and batch order)")

    @model_validator(mode="after")
    def _paths_for_load(self) -> ReferenceSpec:
        if self.mode == "load" and not self.target:
            raise ValueError("reference.mode 'load' needs reference.target (a hub id or local directory)")
        if self.mode == "load" and self.per_seed:
            raise ValueError("reference.per_seed needs mode 'train' (loaded references are one fixed pair)")
        return self


class EvalSpec(StrictModel):
    """Scoring settings: backend, batch size, generation length, example caps per split."""

    backend: str = "hf"
    batch_size: int = Field(16, ge=1)
    max_new_tokens: int = Field(200, ge=1)
    max_examples: int | None = Field(None, ge=1, description="cap per split; null = all")
    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples for confidence intervals; 0 = off")
    workers: int = Field(1, ge=1)
    lm_eval_tasks: LmEvalSpec | None = Field(None, description="lm-evaluation-harness tasks run on every scored "
                                             "model (a task list, or harness/eval/lm_eval_tasks.py's LmEvalSpec); "
                                             "their metrics are rows with benchmark `lm_eval`")


class ResourcesSpec(StrictModel):
    """Where the job runs: Ray Train workers (ScalingConfig) and the local scoring device."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: int = Field(1, ge=1)
    address: str | None = Field(None, description="Ray cluster address; null = RAY_ADDRESS or a local instance")
    max_failures: int = Field(2, ge=0, description="worker-group restarts from the last checkpoint")
    threads: int | None = Field(None, ge=1, description="torch CPU threads of the driver; null = torch default")


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
                                      "harness/eval/model_source.py); `harness run` ignores them")
    eval: EvalSpec = EvalSpec()
    resources: ResourcesSpec = ResourcesSpec()
    tracking: TrackingSpec | None = Field(TrackingSpec(), description="MLflow tracking of the finished runs "
                                          "(harness.tracking); null = off")
    attacks: AttacksSpec = Field(AttacksSpec(), description="attacks on every scored model (harness/attacks); "
                                 "each sub-section has `enabled`, all off by default")

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
        from harness.models import builtin_modality

        kind = builtin_modality(self.model.name)
        if kind is not None and kind != self.benchmark.modality:
            what = {"text": "a language model", "image": "an image classifier"}
            raise ValueError(f"model.name: {self.model.name!r} is {what[kind]}; the {self.benchmark.name} benchmark "
                             f"needs {what[self.benchmark.modality]}")
        return self

    @model_validator(mode="after")
    def _objectives_fit_the_benchmark(self) -> JobSpec:
        from harness.objectives import OBJECTIVES

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


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_override(data: dict[str, Any], assignment: str) -> dict[str, Any]:
    """Apply one `key.path=value` override (value parsed as YAML; list items by index) to raw spec data."""
    if "=" not in assignment:
        raise SpecError(f"--set {assignment!r}: expected key.path=value")
    path, _, raw = assignment.partition("=")
    keys = [k for k in path.strip().split(".") if k]
    if not keys:
        raise SpecError(f"--set {assignment!r}: empty key path")
    data = copy.deepcopy(data)
    node: Any = data
    for i, key in enumerate(keys[:-1]):
        where = ".".join(keys[: i + 1])
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise SpecError(f"--set {path}: {where} is not an index of a list of {len(node)}")
            node = node[int(key)]
        elif isinstance(node, dict):
            if node.get(key) is None:  # a missing or null section (`tracking: null`) becomes one
                node[key] = {}
            node = node[key]
        else:
            raise SpecError(f"--set {path}: {where} is not a section")
    last = keys[-1]
    value = _parse_value(raw)
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise SpecError(f"--set {path}: {last} is not an index of a list of {len(node)}")
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise SpecError(f"--set {path}: parent is not a section")
    return data


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
