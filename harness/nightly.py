"""Nightly regression suite: run job specs, keep a metric history, flag moves against a baseline by rules.

`harness nightly jobs/nightly.yaml` runs every job of the suite, appends each metric row to one history
parquet, compares each metric with the baseline (a pinned run, or the rolling median of the last runs),
and writes `nightly_report.md` / `nightly_report.html`. Exit 1 when anything regressed.

How a metric is judged (first matching rule wins; the suite's own rules come before the defaults):

- `absolute`: it moved when `|new - base| > tolerance`;
- `relative`: it moved when `|new - base| > tolerance * |base|`;
- `ci`: it moved when `new` falls outside the baseline's bootstrap interval `[ci_low - tolerance,
  ci_high + tolerance]` (metrics without an interval fall back to `absolute`).

A move is a regression or an improvement by the rule's direction (`higher_is_better`: a drop is a
regression; `lower_is_better`: a rise is; `both`: any move is). A metric the baseline has and the new
run lacks (or reports as NaN) is a regression; a metric without a baseline is `new` and never flagged.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import math
import secrets
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import Field, field_validator, model_validator

from harness.config import StrictModel, load_yaml, validate_config
from harness.errors import HarnessError, SpecError
from harness.results import ensure_writable_dir, read_json_file, read_parquet_file, unattacked
from harness.run_dir import require_finished
from harness.spec import JobSpec, load_spec
from harness.tracking import TrackingSpec

Glob = str | list[str]
Direction = Literal["higher_is_better", "lower_is_better", "both"]
KEYS = ["job", "method", "benchmark", "split", "metric"]
HISTORY_COLUMNS = ["run_id", "timestamp", "suite", "job", "git_commit", "out_dir", "method", "benchmark", "split",
                   "metric", "value", "ci_low", "ci_high"]
DEFAULT_HISTORY = "results/nightly/history.parquet"
REFERENCE_METHODS = ["target", "retain"]
JOB_METHOD = "(job)"  # the method column of the per-job `job_failed` row


# ---- the suite spec -------------------------------------------------------------------------------

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
        return all(_glob(pattern, str(value)) for pattern, value in
                   ((self.metric, metric), (self.split, split), (self.method, method)))

    def describe(self) -> str:
        """A short label for reports, e.g. `ci±0.02 ↓`."""
        arrow = {"higher_is_better": "↑", "lower_is_better": "↓", "both": "↕"}[self.direction]
        sign = {"absolute": "abs", "relative": "rel", "ci": "ci±"}[self.kind]
        return f"{sign}{self.tolerance:g} {arrow}"


def _glob(pattern: Glob, value: str) -> bool:
    patterns = [pattern] if isinstance(pattern, str) else pattern
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)


def _r(metric: Glob, kind: str, tol: float, direction: str, split: Glob = "*", method: Glob = "*") -> Rule:
    return Rule(metric=metric, split=split, method=method, kind=kind, tolerance=tol, direction=direction)


_FORGET = ["forget*", "forget"]
_UNLEARNED_RULES = [
    # TOFU (locuslab/tofu metric names); prob / ROUGE / truth ratio carry bootstrap intervals.
    _r("forget_quality", "absolute", 0.05, "higher_is_better"),          # KS p-value vs the retain model
    _r("model_utility", "relative", 0.05, "higher_is_better"),
    _r(["prob", "rouge_l_recall"], "ci", 0.02, "lower_is_better", split=_FORGET),
    _r(["prob", "rouge_l_recall"], "ci", 0.02, "higher_is_better"),      # retain, real_authors, world_facts
    _r("truth_ratio", "ci", 0.02, "higher_is_better"),
    # MUSE (x100 scale for the ROUGE metrics; PrivLeak is best at 0, so any move is flagged).
    _r(["verbmem_rouge", "knowmem_rouge"], "ci", 1.0, "lower_is_better", split=_FORGET),
    _r(["verbmem_rouge", "knowmem_rouge"], "ci", 1.0, "higher_is_better"),
    _r("privleak", "absolute", 5.0, "both"),
    _r("mink_auc", "absolute", 0.05, "both"),
    # TDEC: memorisation accuracy and extraction likelihood on the forget set; holdout thresholds.
    _r(["ma", "el_*"], "ci", 0.02, "lower_is_better", split=_FORGET),
    _r("ma", "ci", 0.02, "higher_is_better", split="retain"),            # retention
    _r("ppl", "relative", 0.05, "lower_is_better", split="retain"),
    _r(["ma_threshold", "el_threshold"], "absolute", 0.02, "both"),
    _r(["ma", "el_*"], "ci", 0.02, "both"),
    _r("forgotten", "absolute", 0.0, "higher_is_better"),
    # Vision class deletion (SalUn's metrics, fractions in [0, 1]).
    _r(["ua", "mia_efficacy"], "absolute", 0.02, "higher_is_better"),
    _r(["ra", "ta"], "absolute", 0.02, "higher_is_better"),
    _r("accuracy", "absolute", 0.02, "lower_is_better", split="test_forget"),
    _r("avg_gap", "absolute", 0.02, "lower_is_better"),
]


def default_rules() -> list[Rule]:
    """The built-in rules, most specific first; a final catch-all flags any metric moving by >10%."""
    rules = [
        _r("diverged", "absolute", 0.0, "lower_is_better"),   # any increase (0 -> 1) is a regression
        _r("job_failed", "absolute", 0.0, "lower_is_better"),
    ]
    # The reference models are not unlearned: any move of theirs beyond the tolerance is flagged.
    rules += [r.model_copy(update={"method": REFERENCE_METHODS, "direction": "both"}) for r in _UNLEARNED_RULES]
    rules += [r.model_copy() for r in _UNLEARNED_RULES]
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


# ---- history ----------------------------------------------------------------------------------------

def read_history(path: str | Path) -> pd.DataFrame:
    """The history parquet (an empty frame with the history columns when there is none yet)."""
    path = Path(path)
    if not path.is_file():
        return _empty_history()
    try:
        hist = pd.read_parquet(path)
    except Exception as err:  # noqa: BLE001 - any reader error means a bad file
        raise HarnessError(f"history {path} cannot be read: {err}") from None
    missing = [c for c in ("run_id", "timestamp", *KEYS, "value") if c not in hist.columns]
    if missing:
        raise HarnessError(f"history {path} lacks the columns {', '.join(missing)}")
    for col in HISTORY_COLUMNS:
        if col not in hist.columns:
            hist[col] = pd.Series(dtype="float64" if col in ("ci_low", "ci_high") else "object")
    hist["timestamp"] = pd.to_datetime(hist["timestamp"], utc=True)
    return hist


def _empty_history() -> pd.DataFrame:
    df = pd.DataFrame({c: pd.Series(dtype="object") for c in HISTORY_COLUMNS})
    for c in ("value", "ci_low", "ci_high"):
        df[c] = df[c].astype("float64")
    df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True)
    return df


def append_history(path: str | Path, rows: pd.DataFrame) -> pd.DataFrame:
    """Append `rows` to the history and rewrite the parquet atomically; returns the whole history."""
    from harness.results import atomic_write_parquet

    hist = read_history(path)
    rows = rows.copy()
    for col in HISTORY_COLUMNS:
        if col not in rows.columns:
            rows[col] = float("nan") if col in ("ci_low", "ci_high", "value") else None
    rows["timestamp"] = pd.to_datetime(rows["timestamp"], utc=True)
    parts = [df for df in (hist, rows.reindex(columns=hist.columns.union(rows.columns, sort=False))) if len(df)]
    combined = pd.concat(parts, ignore_index=True) if parts else hist
    atomic_write_parquet(path, combined)
    return combined


def run_order(history: pd.DataFrame) -> list[str]:
    """Run ids, oldest first."""
    if history.empty:
        return []
    first = history.groupby("run_id", sort=False)["timestamp"].min().sort_values(kind="stable")
    return first.index.tolist()


def baseline_frame(history: pd.DataFrame, mode: str = "rolling_median", run_id: str | None = None,
                   window: int = 5) -> tuple[pd.DataFrame, str]:
    """Baseline value (and CI) per (job, method, benchmark, split, metric) from past runs, and a description.

    `pinned`: the rows of `run_id` (None: the first run of the history). `rolling_median`: per key, the
    median of value / ci_low / ci_high over its last `window` runs.
    """
    cols = [*KEYS, "value", "ci_low", "ci_high"]
    if history.empty:
        return pd.DataFrame(columns=cols), "none (no history yet: this run becomes the baseline)"
    hist = history.copy()
    hist["benchmark"] = hist["benchmark"].fillna("")
    if mode == "pinned":
        order = run_order(hist)
        rid = run_id or order[0]
        if rid not in order:
            raise HarnessError(f"baseline run {rid!r} is not in the history (known: {', '.join(order[-5:])})")
        base = hist[hist["run_id"] == rid][cols].drop_duplicates(KEYS, keep="last")
        return base.reset_index(drop=True), f"pinned run {rid}"
    hist = hist.sort_values("timestamp", kind="stable")
    last = hist.groupby(KEYS, sort=False, dropna=False).tail(window)
    base = last.groupby(KEYS, sort=False, dropna=False)[["value", "ci_low", "ci_high"]].median().reset_index()
    n_runs = last["run_id"].nunique()
    return base[cols], f"rolling median of the last {window} runs per metric ({n_runs} runs used)"


# ---- rules ------------------------------------------------------------------------------------------

def find_rule(rules: Sequence[Rule], method: str, split: str, metric: str) -> Rule | None:
    """The first rule matching the row, or None."""
    return next((r for r in rules if r.matches(method, split, metric)), None)


def judge(new: float, base: float, ci_low: float, ci_high: float, rule: Rule) -> str:
    """`ok`, `regression` or `improvement` for one metric under one rule (see the module docstring)."""
    if _nan(base):
        return "ok" if _nan(new) else "new"
    if _nan(new):
        return "regression"
    delta = new - base
    if rule.kind == "ci" and not (_nan(ci_low) or _nan(ci_high)):
        moved = new < ci_low - rule.tolerance or new > ci_high + rule.tolerance
    elif rule.kind == "relative":
        moved = abs(delta) > rule.tolerance * abs(base)
    else:
        moved = abs(delta) > rule.tolerance
    if not moved:
        return "ok"
    if rule.direction == "higher_is_better":
        return "regression" if delta < 0 else "improvement"
    if rule.direction == "lower_is_better":
        return "regression" if delta > 0 else "improvement"
    return "regression"


def _nan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x)) or bool(pd.isna(x))


STATUS_ORDER = {"regression": 0, "missing": 1, "improvement": 2, "new": 3, "ok": 4, "unchecked": 5}


def compare(current: pd.DataFrame, baseline: pd.DataFrame, rules: Sequence[Rule]) -> pd.DataFrame:
    """Every metric of `current` (and every baseline metric it lacks) with baseline, new, delta, rule, status.

    Both frames have the columns job, method, benchmark, split, metric, value, ci_low, ci_high. Status:
    `regression`, `improvement`, `ok`, `new` (no baseline), `missing` (baseline only; a regression), or
    `unchecked` (no rule matches).
    """
    cur = _keyed(current)
    base = _keyed(baseline).rename(columns={"value": "baseline", "ci_low": "baseline_ci_low",
                                            "ci_high": "baseline_ci_high"})
    merged = cur.rename(columns={"value": "new"}).merge(base, on=KEYS, how="outer", indicator=True, sort=False)
    rows = []
    for rec in merged.to_dict("records"):
        rule = find_rule(rules, rec["method"], rec["split"], rec["metric"])
        new, b = rec.get("new"), rec.get("baseline")
        if rec["_merge"] == "right_only":
            status = "missing" if not _nan(b) else "ok"
        elif rule is None:
            status = "unchecked"
        else:
            status = judge(new, b, rec.get("baseline_ci_low"), rec.get("baseline_ci_high"), rule)
        delta = (new - b) if not (_nan(new) or _nan(b)) else float("nan")
        rows.append({**{k: rec[k] for k in KEYS}, "baseline": b, "baseline_ci_low": rec.get("baseline_ci_low"),
                     "baseline_ci_high": rec.get("baseline_ci_high"), "new": new, "delta": delta,
                     "rel_delta": delta / abs(b) if not _nan(delta) and b != 0 else float("nan"),
                     "rule": rule.describe() if rule else "—", "status": status})
    cols = [*KEYS, "baseline", "baseline_ci_low", "baseline_ci_high", "new", "delta", "rel_delta", "rule", "status"]
    out = pd.DataFrame(rows, columns=cols)
    for c in ("baseline", "baseline_ci_low", "baseline_ci_high", "new", "delta", "rel_delta"):
        out[c] = out[c].astype("float64")
    out["_order"] = out["status"].map(STATUS_ORDER)
    return out.sort_values(["_order", "job", "method"], kind="stable").drop(columns="_order").reset_index(drop=True)


def _keyed(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    for c in ("ci_low", "ci_high"):
        if c not in df.columns:
            df[c] = float("nan")
    if "benchmark" not in df.columns:
        df["benchmark"] = ""
    df["benchmark"] = df["benchmark"].fillna("")
    df = df[[*KEYS, "value", "ci_low", "ci_high"]].drop_duplicates(KEYS, keep="last")
    for c in ("value", "ci_low", "ci_high"):
        df[c] = df[c].astype("float64")
    return df


def is_flagged(status: str) -> bool:
    """Whether a status counts as a regression (the CLI exits 1)."""
    return status in ("regression", "missing")


# ---- running a suite --------------------------------------------------------------------------------

@dataclass
class SuiteResult:
    """A finished suite run: where it wrote, the comparison, and whether anything regressed."""

    run_id: str
    out_dir: Path
    report: Path
    comparison: pd.DataFrame
    baseline: str
    jobs: dict[str, Path] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def regressions(self) -> pd.DataFrame:
        """The flagged rows (regressions and missing metrics)."""
        return self.comparison[self.comparison["status"].map(is_flagged)]

    @property
    def regressed(self) -> bool:
        """Whether anything regressed."""
        return bool(len(self.regressions))


def new_run_id(now: dt.datetime) -> str:
    """A sortable, unique run id: UTC time plus a short random suffix."""
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def job_rows(job: str, out_dir: Path) -> tuple[pd.DataFrame, str | None]:
    """The metric rows of a finished job directory, reduced over its seeds, and its git commit (env.json).

    A multi-seed job is compared on its across-seed statistics (harness.seeds): `value` is the mean over
    seeds and `ci_low`/`ci_high` the across-seed 95% interval; a one-seed job keeps its bootstrap interval.
    A damaged file is a DataError naming it.
    """
    from harness.seeds import metrics_across_seeds

    require_finished(out_dir)
    metrics = unattacked(read_parquet_file(out_dir / "metrics.parquet", f"metrics of job {job!r}"))
    if "seed" in metrics.columns:
        metrics = metrics_across_seeds(metrics)
    env_path = out_dir / "env.json"
    env = read_json_file(env_path, f"environment of job {job!r}") if env_path.is_file() else {}
    commit = env.get("git_commit") if isinstance(env, dict) else None
    metrics = metrics.assign(job=job)
    return metrics, commit


def run_suite(suite: SuiteSpec | str | Path, history_path: str | Path | None = None, baseline: str | None = None,
              overrides: Sequence[str] = (), out: str | Path | None = None, progress: bool = True,
              resume: bool = False) -> SuiteResult:
    """Run every job of the suite, append to the history, compare with the baseline, write the report.

    `baseline` (a run id, or `latest` for the previous run) pins the baseline, overriding the suite's.
    `overrides` are `--set` assignments applied to every job after its own. `resume` continues the latest
    nightly run without a report: its finished jobs are kept, the others resume (`harness run --resume`).
    """
    from harness.pipeline import log, run_job
    from harness.resume import check_resumable
    from harness.run_dir import has_results

    if not isinstance(suite, SuiteSpec):
        suite = load_suite(suite)
    history_path = Path(history_path or suite.history).expanduser()
    started = dt.datetime.now(dt.UTC)
    run_id = new_run_id(started)
    suite_out = Path(out or suite.out).expanduser()
    unfinished = sorted(p.name for p in suite_out.glob("*T*Z-*") if not (p / "nightly_report.md").exists())
    if resume and unfinished:
        run_id = unfinished[-1]
        log(f"nightly {suite.name}: resuming the unfinished run {run_id}")
    run_dir = suite_out / run_id
    jobs = resolve_jobs(suite, run_dir, overrides)
    if suite.tracking is not None:
        from harness.tracking import resolve_uri, with_store

        store = resolve_uri(suite.tracking, suite_out)
        jobs = [(name, with_store(spec, store)) for name, spec in jobs]
    ensure_writable_dir(history_path.parent, "nightly history directory")
    ensure_writable_dir(run_dir, "nightly run directory")

    history = read_history(history_path)
    mode, pinned = suite.baseline.mode, suite.baseline.run_id
    if baseline:
        mode = "pinned"
        order = run_order(history)
        pinned = (order[-1] if order else None) if baseline == "latest" else baseline
    if mode == "pinned" and pinned and pinned not in set(history["run_id"]):
        raise HarnessError(f"baseline run {pinned!r} is not in the history {history_path}")

    for _, spec in jobs if resume else []:  # a changed spec is refused before anything runs
        check_resumable(spec.out_dir().expanduser().absolute(), spec.model_dump(mode="json"))
    frames, outs, failures = [], {}, {}
    for name, spec in jobs:
        if progress:
            log(f"nightly {suite.name} {run_id}: job {name}")
        failed = 0.0
        try:
            if resume and has_results(spec.out_dir()):
                log(f"job {name} finished before the interruption: kept, not rerun")
                job_out = spec.out_dir()
            else:
                job_out = (run_job(spec, progress=progress, resume=True) if resume else
                           run_job(spec, progress=progress)).out_dir
            metrics, commit = job_rows(name, job_out)
            outs[name] = job_out
        except Exception as err:  # noqa: BLE001 - a failed job is a regression, the suite goes on
            failures[name] = f"{type(err).__name__}: {err}"
            if progress:
                log(f"job {name} failed: {failures[name]}\n{traceback.format_exc()}")
            metrics, commit, failed = pd.DataFrame(), None, 1.0
        flag = pd.DataFrame([{"method": JOB_METHOD, "benchmark": "", "split": "run", "metric": "job_failed",
                              "value": failed}])
        rows = pd.concat([df for df in (metrics, flag) if len(df)], ignore_index=True).assign(
            job=name, git_commit=commit, out_dir=str(spec.out_dir()))
        frames.append(rows)
    current = pd.concat(frames, ignore_index=True)
    current = current.assign(run_id=run_id, timestamp=started, suite=suite.name)

    base, description = baseline_frame(history, mode, pinned, suite.baseline.window)
    comparison = compare(current, base, suite.all_rules())
    full = append_history(history_path, current)
    report = write_nightly_report(run_dir, suite, run_id, description, comparison, full, failures)
    result = SuiteResult(run_id, run_dir, report, comparison, description, outs, failures)
    if suite.tracking is not None:
        from harness.tracking import log_nightly, warn_failed

        try:
            log_nightly(suite.tracking, suite_out, suite.name, run_id, description, comparison, run_dir, failures)
        except Exception as err:  # noqa: BLE001 - tracking must not fail a finished suite
            warn_failed(f"nightly run {run_id}", err)
    if progress:
        log(f"nightly {suite.name}: {len(result.regressions)} regression(s); report {report}")
    return result


# ---- the report -------------------------------------------------------------------------------------

_SHOW = [*KEYS, "baseline", "new", "delta", "rel_delta", "baseline_ci_low", "baseline_ci_high", "rule", "status"]


def trend_figures(history: pd.DataFrame, comparison: pd.DataFrame, run_id: str) -> dict[str, Any]:
    """One figure per job: a panel per (split, metric), a line per method over the runs, flagged points in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = {}
    order = run_order(history)
    pos = {r: i for i, r in enumerate(order)}
    flagged = comparison[comparison["status"].map(is_flagged)]
    for job, hist in history.groupby("job", sort=False):
        hist = hist[hist["metric"] != "job_failed"]
        panels = list(dict.fromkeys(zip(hist["split"], hist["metric"], strict=True)))
        if not panels:
            continue
        ncols = min(4, len(panels))
        nrows = math.ceil(len(panels) / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.7 * nrows), squeeze=False)
        job_runs = [r for r in order if r in set(hist["run_id"])]
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        color = {m: colors[i % len(colors)] for i, m in enumerate(dict.fromkeys(hist["method"]))}
        for ax, (split, metric) in zip(axes.flat, panels):
            sub = hist[(hist["split"] == split) & (hist["metric"] == metric)]
            for method, g in sub.groupby("method", sort=False):
                g = g.assign(x=g["run_id"].map(pos)).sort_values("x")
                ax.plot(g["x"], g["value"], marker="o", markersize=3, linewidth=1.2, label=method, color=color[method])
            bad = flagged[(flagged["job"] == job) & (flagged["split"] == split) & (flagged["metric"] == metric)]
            bad = bad[bad["new"].notna()]
            if len(bad) and run_id in pos:
                ax.scatter([pos[run_id]] * len(bad), bad["new"], s=60, facecolors="none", edgecolors="red",
                           linewidths=1.5, zorder=5)
            ax.set_title(f"{split} / {metric}", fontsize=9)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            ticks = [pos[r] for r in job_runs]
            step = max(1, len(ticks) // 6)
            ax.set_xticks(ticks[::step], [f"{r[4:8]} {r[9:13]}" for r in job_runs][::step], rotation=30, fontsize=6)
        for ax in list(axes.flat)[len(panels):]:
            ax.set_visible(False)
        handles = [plt.Line2D([], [], color=c, marker="o", markersize=3, label=m) for m, c in color.items()]
        fig.legend(handles=handles, loc="upper right", fontsize=7, ncol=min(len(handles), 6))
        fig.suptitle(f"{job}: metric trends over nightly runs (red rings: flagged in {run_id})", fontsize=10)
        fig.tight_layout()
        figures[str(job)] = fig
    return figures


def write_nightly_report(run_dir: Path, suite: SuiteSpec, run_id: str, baseline: str, comparison: pd.DataFrame,
                         history: pd.DataFrame, failures: dict[str, str] | None = None) -> Path:
    """Write nightly_report.md and nightly_report.html (+ plots/trend_<job>.png) under `run_dir`."""
    import re

    from harness.compare import figure_png, html_image, html_page, html_table
    from harness.report import to_markdown
    from harness.results import atomic_write_bytes, atomic_write_parquet, atomic_write_text

    failures = failures or {}
    flagged = comparison[comparison["status"].map(is_flagged)][_SHOW]
    counts = comparison["status"].value_counts().to_dict()
    pngs = {}
    for job, fig in trend_figures(history, comparison, run_id).items():
        name = "trend_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", job) + ".png"
        pngs[name] = figure_png(fig)
        atomic_write_bytes(run_dir / "plots" / name, pngs[name])
    atomic_write_parquet(run_dir / "comparison.parquet", comparison)

    verdict = (f"**{len(flagged)} regression(s)**" if len(flagged) else "**no regressions**")
    head = [f"- run: `{run_id}`", f"- baseline: {baseline}", f"- verdict: {verdict}",
            "- statuses: " + ", ".join(f"{k} {counts[k]}" for k in sorted(counts, key=STATUS_ORDER.get))]
    head += [f"- job `{job}` failed: {msg}" for job, msg in failures.items()]
    md = [f"# Nightly {suite.name}: {run_id}", "", *head, "", "## Flagged regressions", ""]
    md += [to_markdown(flagged) if len(flagged) else "None.", "", "## All metrics (baseline, new, delta)", "",
           to_markdown(comparison[_SHOW]), "", "## Trends", ""]
    md += [f"![{n}](plots/{n})" for n in pngs] or ["No history to plot."]
    md_path = atomic_write_text(run_dir / "nightly_report.md", "\n".join(md) + "\n")

    import html as _html

    body = ["<ul>" + "".join(f"<li>{_html.escape(h[2:]).replace('**', '')}</li>" for h in head) + "</ul>",
            "<h2>Flagged regressions</h2>",
            html_table(flagged, "flagged", ["regression"] * len(flagged)) if len(flagged) else "<p>None.</p>",
            "<h2>All metrics (baseline, new, delta)</h2>",
            html_table(comparison[_SHOW], "metrics", comparison["status"].tolist()), "<h2>Trends</h2>"]
    body += [html_image(png, name) for name, png in pngs.items()]
    atomic_write_text(run_dir / "nightly_report.html", html_page(f"Nightly {suite.name}: {run_id}", "\n".join(body)))
    return md_path
