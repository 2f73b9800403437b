"""Pydantic job specs: every field validated, every default explicit in the resolved spec."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.errors import SpecError


class _Strict(BaseModel):
    """Base for spec sections: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSpec(_Strict):
    """Which model to unlearn: a hub id, a local directory, or `builtin:<name>` (config-built, offline)."""

    name: str = "builtin:tiny-llama"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False
    revision: str | None = None

    @field_validator("name")
    @classmethod
    def _known_builtin(cls, v: str) -> str:
        from harness.models import BUILTIN_MODELS, BUILTIN_PREFIX

        if v.startswith(BUILTIN_PREFIX) and v.removeprefix(BUILTIN_PREFIX) not in BUILTIN_MODELS:
            raise ValueError(f"unknown builtin model {v!r} (known: "
                             + ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_MODELS.names()) + ")")
        return v


class SyntheticTofuSpec(_Strict):
    """Size of the synthetic TOFU set (the published layout, fictitious authors)."""

    n_authors: int = Field(100, ge=10)
    qa_per_author: int = Field(4, ge=1, le=8)
    n_real_authors: int = Field(20, ge=1)
    n_world_facts: int = Field(20, ge=1)


def _synthetic_spec_class(benchmark: str) -> type[BaseModel]:
    """The model of `benchmark.synthetic` for a benchmark name (sizes of its synthetic set)."""
    if benchmark == "muse":
        from harness.benchmarks.muse.synth import SyntheticMuseSpec

        return SyntheticMuseSpec
    if benchmark == "tdec":
        from harness.benchmarks.tdec.synth import SyntheticTdecSpec

        return SyntheticTdecSpec
    return SyntheticTofuSpec


class BenchmarkSpec(_Strict):
    """Benchmark data: `source` is `synthetic`, a local directory of the published files, or a hub id.

    `synthetic` holds the sizes of the benchmark's own synthetic set (TOFU, MUSE or TDEC fields).
    The MUSE options (`verbmem_max_new_tokens`, `knowmem_max_new_tokens`, `mink_k`) and the TDEC
    options (`sequence_length`, `el_n`, `utility_tasks`) are ignored by the other benchmarks.
    """

    name: str = "tofu"
    source: str = "synthetic"
    forget_split: str = "forget10"
    prompt_format: Literal["plain", "chat_template"] = "plain"
    synthetic: Any = Field(None, validate_default=True)
    data_dir: str = "~/.cache/harness/data"
    verbmem_max_new_tokens: int = Field(128, ge=1)
    knowmem_max_new_tokens: int = Field(32, ge=1)
    mink_k: float = Field(0.4, gt=0, le=1)
    sequence_length: int | None = Field(None, ge=16, description="TDEC tokens per sequence; null = 64 synth, 200 real")
    el_n: int = Field(10, ge=1)
    utility_tasks: list[str] = []

    @field_validator("synthetic", mode="before")
    @classmethod
    def _synthetic_for_benchmark(cls, v: Any, info: Any) -> Any:
        model = _synthetic_spec_class(info.data.get("name", "tofu"))
        if isinstance(v, model):
            return v
        if v is None:
            return model()
        if isinstance(v, BaseModel):
            v = v.model_dump()
        return model.model_validate(v)


class AdapterSpec(_Strict):
    """Bounded LoRA on the MLP projections: `W = W0 + (alpha/r) f(omega B A) / g(d_in)`."""

    bound: str = "sine"
    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    omega: float = Field(100.0, gt=0)
    clip_value: float = Field(0.01, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    targets: list[str] | None = None

    @field_validator("bound")
    @classmethod
    def _known_bound(cls, v: str) -> str:
        from harness.adapters.bounds import BOUNDS

        if v not in BOUNDS:
            raise ValueError(f"unknown bound {v!r} (known: {', '.join(BOUNDS.names())})")
        return v


class ObjectiveSpec(_Strict):
    """Unlearning loss `w_forget * L_forget + w_retain * L_retain` (retain term: nll, kl or none)."""

    name: str = "gd"
    w_forget: float = Field(1.0, ge=0)
    w_retain: float = Field(1.0, ge=0)
    retain_loss: Literal["nll", "kl", "none"] | None = None
    beta: float | None = None
    delta: float = 0.0

    @model_validator(mode="after")
    def _resolve_defaults(self) -> ObjectiveSpec:
        from harness.objectives import OBJECTIVES

        if self.name not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.name!r} (known: {', '.join(OBJECTIVES.names())})")
        obj = OBJECTIVES.get(self.name)
        if self.retain_loss is None:
            object.__setattr__(self, "retain_loss", obj.default_retain_loss)
        if self.beta is None:
            object.__setattr__(self, "beta", obj.default_beta)
        return self


class TrainSpec(_Strict):
    """Optimisation settings for one unlearning run (run by Ray Train workers, each a DeepSpeed engine)."""

    epochs: float = Field(5.0, gt=0)
    max_steps: int | None = Field(None, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(8, ge=1, description="global micro-batch (forget examples), split over the workers")
    grad_accum: int = Field(1, ge=1)
    max_grad_norm: float | None = Field(None, gt=0, description="clip gradients to this norm; null = off")
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

    @model_validator(mode="after")
    def _offload_needs_zero(self) -> TrainSpec:
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage 1, 2 or 3")
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage 3")
        return self


class MethodSpec(_Strict):
    """One unlearning method of the job: a name plus its adapter, objective and training settings."""

    name: str
    adapter: AdapterSpec = AdapterSpec()
    objective: ObjectiveSpec = ObjectiveSpec()
    train: TrainSpec = TrainSpec()

    @field_validator("name")
    @classmethod
    def _reserved(cls, v: str) -> str:
        if v in ("target", "retain"):
            raise ValueError(f"method name {v!r} is reserved for the reference models")
        if not v.replace("_", "").replace("-", "").replace("+", "").isalnum():
            raise ValueError(f"method name {v!r} must be letters, digits, '_', '-' or '+'")
        return v


class ReferenceTrainSpec(_Strict):
    """How the builtin reference models (target, retain) are fine-tuned from scratch."""

    epochs: int = Field(20, ge=1)
    lr: float = Field(5e-3, gt=0)
    batch_size: int = Field(32, ge=1)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)


class ReferenceSpec(_Strict):
    """Reference models: `train` fine-tunes target and retain models (cached by config hash);
    `load` takes them from `target`/`retain` (hub ids or local directories)."""

    mode: Literal["train", "load"] = "train"
    target: str | None = None
    retain: str | None = None
    train: ReferenceTrainSpec = ReferenceTrainSpec()
    cache_dir: str = "~/.cache/harness/reference"

    @model_validator(mode="after")
    def _paths_for_load(self) -> ReferenceSpec:
        if self.mode == "load" and not self.target:
            raise ValueError("reference.mode 'load' needs reference.target (a hub id or local directory)")
        return self


class EvalSpec(_Strict):
    """Scoring settings: backend, batch size, generation length, example caps per split."""

    backend: str = "hf"
    batch_size: int = Field(16, ge=1)
    max_new_tokens: int = Field(200, ge=1)
    max_examples: int | None = Field(None, ge=1, description="cap per split; null = all")
    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples for confidence intervals; 0 = off")
    workers: int = Field(1, ge=1)


class ResourcesSpec(_Strict):
    """Where the job runs: Ray Train workers (ScalingConfig) and the local scoring device."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: int = Field(1, ge=1)
    address: str | None = Field(None, description="Ray cluster address; null = RAY_ADDRESS or a local instance")
    max_failures: int = Field(2, ge=0, description="worker-group restarts from the last checkpoint")
    threads: int | None = Field(None, ge=1, description="torch CPU threads of the driver; null = torch default")


class JobSpec(_Strict):
    """A whole job: one model, one benchmark, several methods compared side by side."""

    name: str = "job"
    seed: int = 0
    out: str = "results/{name}"
    model: ModelSpec = ModelSpec()
    benchmark: BenchmarkSpec = BenchmarkSpec()
    reference: ReferenceSpec = ReferenceSpec()
    adapter: AdapterSpec = AdapterSpec()
    objective: ObjectiveSpec = ObjectiveSpec()
    train: TrainSpec = TrainSpec()
    methods: list[MethodSpec] = Field(min_length=1)
    eval: EvalSpec = EvalSpec()
    resources: ResourcesSpec = ResourcesSpec()

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
                        m[section] = {**base, **own}
            methods.append(m)
        data["methods"] = methods
        return data

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


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid job spec {source}:"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"  {path}: {msg}")
    return "\n".join(lines)


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
            node = node.setdefault(key, {})
            if node is None:
                node = {}
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
    if not isinstance(data, dict):
        raise SpecError(f"invalid job spec {source}: expected a mapping at the top level")
    try:
        return JobSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(_format_errors(err, source)) from None


def load_spec(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    """Read a YAML job spec, apply `--set` overrides, and validate it."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"job spec {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise SpecError(f"job spec {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise SpecError(f"invalid job spec {path}: expected a mapping at the top level")
    for assignment in overrides or []:
        data = apply_override(data, assignment)
    return validate_spec(data, str(path))


def dump_spec(spec: JobSpec) -> str:
    """The resolved spec as YAML, every default filled in; `load_spec` reads it back to an equal spec."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
