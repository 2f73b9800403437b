"""The nightly suite file: its jobs, its baseline, and the rules that judge each metric (defaults included)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from harness.benchmarks import benchmark_classes
from harness.commands.nightly.history import DEFAULT_HISTORY
from harness.config import REFERENCE_METHODS, StrictModel, TrackingSpec, load_yaml, validate_config
from harness.core.errors import SpecError
from harness.results.contract import glob_match
from harness.spec import JobSpec, load_spec

Glob = str | list[str]


Direction = Literal["higher_is_better", "lower_is_better", "both"]




JOB_METHOD = "(job)"  # the method column of the per-job `job_failed` row


class Rule(StrictModel):
    """How one family of metrics is judged: which rows it matches (globs) and what counts as a move."""

    metric: Glob = "*"
    split: Glob = "*"
    method: Glob = "*"
    kind: Literal["absolute", "relative", "ci"] = "relative"
    tolerance: float = Field(0.05, ge=0)
    direction: Direction = "both"

    def matches(self, method: str, split: str, metric: str) -> bool:
        """Whether every glob of the rule matches this row (case-sensitive fnmatch; a list means any of)."""
        return all(glob_match(pattern, str(value)) for pattern, value in
                   ((self.metric, metric), (self.split, split), (self.method, method)))

    def describe(self) -> str:
        """A short label for reports, e.g. `ci±0.02 ↓`."""
        arrow = {"higher_is_better": "↑", "lower_is_better": "↓", "both": "↕"}[self.direction]
        sign = {"absolute": "abs", "relative": "rel", "ci": "ci±"}[self.kind]
        return f"{sign}{self.tolerance:g} {arrow}"



def _r(metric: Glob, kind: str, tol: float, direction: str, split: Glob = "*", method: Glob = "*") -> Rule:
    return Rule(metric=metric, split=split, method=method, kind=kind, tolerance=tol, direction=direction)


def _declared_rules() -> list[Rule]:
    """One rule per metric every benchmark declares (harness.results.contract.Metric), in the benchmarks' order."""
    def glob(g: str | tuple[str, ...]) -> Glob:
        return g if isinstance(g, str) else list(g)

    return [Rule(metric=glob(m.metric), split=glob(m.split), kind=m.kind, tolerance=m.tolerance, direction=m.direction)
            for cls in benchmark_classes() for m in cls.declared_metrics]


def default_rules() -> list[Rule]:
    """The built-in rules, most specific first: the benchmarks' declared metrics (for the reference models any
    move beyond the tolerance counts), and a final catch-all that flags any metric moving by >10%."""
    declared = _declared_rules()
    rules = [
        _r("diverged", "absolute", 0.0, "lower_is_better"),   # any increase (0 -> 1) is a regression
        _r("job_failed", "absolute", 0.0, "lower_is_better"),
    ]
    # The reference models are not unlearned: any move of theirs beyond the tolerance is flagged.
    rules += [r.model_copy(update={"method": list(REFERENCE_METHODS), "direction": "both"}) for r in declared]
    rules += declared
    rules.append(_r("*", "relative", 0.10, "both"))
    return rules


class SuiteJob(StrictModel):
    """One job of the suite: a job spec (relative paths: to the suite file) and `--set` overrides."""

    spec: str
    set: list[str] = []
    name: str | None = Field(None, description="job name in the history; null = the spec's name")


class BaselineSpec(StrictModel):
    """What a run is compared with: a pinned run id (null = the first run in the history), or the rolling
    median of the last `window` runs of the same job/method/split/metric."""

    mode: Literal["pinned", "rolling_median"] = "rolling_median"
    run_id: str | None = None
    window: int = Field(5, ge=1)


class SuiteSpec(StrictModel):
    """A nightly suite: jobs, where the history lives, the baseline, and the regression rules."""

    name: str = "nightly"
    out: str = Field("results/nightly", description="runs go to <out>/<run_id>/<job>, the report beside them")
    history: str = DEFAULT_HISTORY
    jobs: list[SuiteJob] = Field(min_length=1)
    baseline: BaselineSpec = BaselineSpec()
    rules: list[Rule] = []
    use_default_rules: bool = Field(True, description="after the suite's rules, apply default_rules()")
    tracking: TrackingSpec | None = Field(TrackingSpec(), description="MLflow: one run per nightly run (default "
                                          "store <out>/mlflow.db, shared by the runs), and the jobs' runs there "
                                          "unless a job names its own URI; null = the nightly run is not logged")

    @field_validator("rules")
    @classmethod
    def _rules_have_patterns(cls, v: list[Rule]) -> list[Rule]:
        for i, rule in enumerate(v):
            for name in ("metric", "split", "method"):
                pattern = getattr(rule, name)
                if isinstance(pattern, list) and not pattern:
                    raise ValueError(f"rules.{i}.{name}: empty list matches nothing")
        return v

    @model_validator(mode="after")
    def _unique_job_names(self) -> SuiteSpec:
        names = [j.name for j in self.jobs if j.name]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"job names must be unique; repeated: {', '.join(dupes)}")
        return self

    def all_rules(self) -> list[Rule]:
        """The suite's rules, then (unless turned off) the defaults."""
        return list(self.rules) + (default_rules() if self.use_default_rules else [])


def load_suite(path: str | Path) -> SuiteSpec:
    """Read a suite YAML; job spec paths are resolved relative to the suite file's directory."""
    path = Path(path)
    suite = validate_suite(load_yaml(path, "suite spec"), str(path))
    jobs = [j.model_copy(update={"spec": str(_resolve(j.spec, path.parent))}) for j in suite.jobs]
    return suite.model_copy(update={"jobs": jobs})


def _resolve(spec: str, base: Path) -> Path:
    p = Path(spec).expanduser()
    return p if p.is_absolute() else base / p


def validate_suite(data: Any, source: str = "") -> SuiteSpec:
    """Validate raw suite data, raising SpecError with one line per bad field path."""
    return validate_config(SuiteSpec, data, "suite spec", source)


def resolve_jobs(suite: SuiteSpec, run_dir: Path, overrides: Sequence[str] = ()) -> list[tuple[str, JobSpec]]:
    """(job name, validated JobSpec with its out under `run_dir/<job>`) for every job: fails before any runs."""
    jobs = []
    for i, job in enumerate(suite.jobs):
        try:
            spec = load_spec(job.spec, [*job.set, *overrides])
        except SpecError as err:
            raise SpecError(f"suite job {i} ({job.spec}): {err}") from None
        name = job.name or spec.name
        jobs.append((name, spec.model_copy(update={"out": str(run_dir / name)})))
    names = [n for n, _ in jobs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SpecError(f"suite jobs share the name(s) {', '.join(dupes)}: set `name` on the jobs")
    return jobs
