"""The study spec of `harness study`: which job, which methods, the equal search budget, selection and confirmation.

A study spec is a YAML file read by harness.config's one loader (bad YAML or a bad field exits 2 naming the file,
line or field). It points at a job spec (`job`, relative to the study file) and may replace its methods; a plain
job spec given to `harness study` is a study with every default. Every method gets the same search: `trials`
trials of `steps` optimizer steps each, on the same `search_seeds`, with the same sampler seed; the selected
configurations are rerun on `confirm_seeds`, which must be disjoint from the search seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from harness.commands.tune_space import check_params
from harness.config import StrictModel, load_yaml, validate_config
from harness.core.errors import SpecError
from harness.spec import JobSpec, read_spec_data, validate_spec

#: What every method searches besides its bound's and objective's own parameters.
LEARNING_RATE: dict[str, dict[str, Any]] = {"train.lr": {"loguniform": [1e-4, 3e-2]}}


class StudySpace(StrictModel):
    """Overrides of the default search spaces: `params` for every method, `methods.<name>` for one (dotted paths
    inside a method, distributions as in tune_spaces/). Defaults: LEARNING_RATE, then the bound's and the
    objective's own `search_space` (harness/adapters/bounds.py, harness/objectives/*.py)."""

    params: dict[str, dict[str, Any]] = {}
    methods: dict[str, dict[str, dict[str, Any]]] = {}

    @model_validator(mode="after")
    def _check(self) -> StudySpace:
        check_params(self.params, "params")
        for name, params in self.methods.items():
            check_params(params, f"methods.{name}")
        return self


class StudySpec(StrictModel):
    """A fair comparison of a job's methods (DESIGN.md section 5, "Fair comparison")."""

    name: str | None = Field(None, description="the study's name; default: the job's")
    job: str = Field(description="the job spec (YAML), relative to the study spec's directory")
    set: list[str] = Field([], description="`key.path=value` overrides of the job spec")
    methods: list[dict[str, Any]] | None = Field(None, description="replace the job's methods (the job's own "
                                                 "method syntax); null keeps them")
    trials: int = Field(8, ge=1, description="trials per method (the same for every method)")
    steps: int = Field(100, ge=1, description="optimizer steps of every training (search trials and confirmation)")
    search_seeds: list[int] = Field([0], min_length=1, description="seeds every trial trains (the metric is "
                                    "their mean)")
    confirm_seeds: list[int] = Field([100, 101, 102, 103, 104], min_length=2,
                                     description="fresh seeds the selected configurations are rerun on")
    sampler_seed: int = Field(0, description="seed of every method's Optuna sampler")
    delta: float = Field(0.1, ge=0, lt=1, description="utility budget: a trial is inside when its utility is at "
                         "least (1 - delta) x the target model's")
    multi_objective: bool = Field(True, description="Optuna searches forget score and utility together (false: "
                                  "the forget score alone)")
    baseline: dict[str, str] = Field({}, description="method -> the method it is compared with; default: the "
                                     "plain-LoRA (bound none) method of the same objective")
    search_eval_examples: int | None = Field(None, ge=1, description="eval.max_examples while searching (the "
                                             "confirmation scores every example); null = all")
    max_concurrent: int = Field(1, ge=1, description="trials running at once")
    pending_timeout_s: float = Field(300.0, gt=0, description="a trial fails when its trainer waits this long for "
                                     "resources nothing running will free")
    space: StudySpace = StudySpace()
    out: str = "results/study-{name}"

    @field_validator("search_seeds", "confirm_seeds")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError("seeds must be distinct")
        return v

    @model_validator(mode="after")
    def _fresh_confirmation(self) -> StudySpec:
        shared = sorted(set(self.search_seeds) & set(self.confirm_seeds))
        if shared:
            raise ValueError(f"confirm_seeds must be disjoint from search_seeds; both have {shared}")
        return self


def is_study(data: dict[str, Any]) -> bool:
    """Whether raw YAML data is a study spec (it names a `job`) rather than a job spec."""
    return "job" in data


def load_study(path: str | Path, overrides: list[str] | None = None,
               space: str | Path | None = None) -> tuple[StudySpec, JobSpec]:
    """The study spec at `path` and its job (with the study's methods and equal steps), validated; `overrides`
    (`--set`) apply to the job, `space` (a YAML file) replaces the study's search-space overrides. A job spec at
    `path` is a study of that job with every default."""
    path = Path(path)
    data = load_yaml(path, "study spec")
    if is_study(data):
        study = validate_config(StudySpec, data, "study spec", path)
        job_path = (path.parent / study.job) if not Path(study.job).is_absolute() else Path(study.job)
    else:
        study = StudySpec(job=str(path))
        job_path = path
    if space is not None:
        study = study.model_copy(update={"space": validate_config(StudySpace, load_yaml(space, "study search space"),
                                                                   "study search space", space)})
    job_data = read_spec_data(job_path, [*study.set, *(overrides or [])])
    if study.methods is not None:
        job_data["methods"] = study.methods
    job = validate_spec(job_data, str(job_path))
    # Equal budgets: every method trains exactly `steps` optimizer steps.
    dumped = job.model_dump(mode="json")
    for method in dumped["methods"]:
        method["train"]["max_steps"] = study.steps
    job = validate_spec(dumped, str(job_path))
    if study.name is None:
        study = study.model_copy(update={"name": job.name})
    unknown = sorted(set(study.space.methods) - {m.name for m in job.methods})
    if unknown:
        raise SpecError(f"study search space: methods {unknown} are not methods of job {job.name!r}")
    names = {m.name for m in job.methods}
    for method, base in study.baseline.items():
        if method not in names or base not in names:
            raise SpecError(f"study spec {path}: baseline.{method}: {method!r} -> {base!r} must name methods of the "
                            f"job ({', '.join(sorted(names))})")
    return study, job


def study_out(study: StudySpec, out: str | None = None) -> Path:
    """The study's output directory (`--out`, else the spec's `out` with `{name}` filled in)."""
    return Path(out or study.out.format(name=study.name)).expanduser()
