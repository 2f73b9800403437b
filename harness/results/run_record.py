"""A run directory's record of its models (`models.json`) and the reading of a finished run.

`harness run` writes `models.json` beside its results, so that `harness export` and `harness eval`
find the models a run scored without parsing summary.md; every model is recorded per seed (the
reference models per reference seed, the methods per job seed)::

    {"format_version": 2,
     "models": {"target": {"0": "<dir or hub id>"}, "retain": {"0": "<dir or hub id>"},
                "<method>": {"0": {"base": "<dir or hub id>", "adapter": "checkpoints/<method>/seed0"},
                             "1": {...}}}}

Format version 1 (one model per name, no seeds) is read as seed 0.

Paths inside the run directory are stored relative to it (a run directory can be moved); other local
paths are stored absolute; anything else (a hub id) as given. `read_models` resolves them back.
A method that diverged is not scored and not recorded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pydantic import BaseModel, ValidationError

from harness.config import REFERENCE_METHODS, FrozenModel
from harness.core.errors import DataError
from harness.core.io import atomic_write_json, read_json_file, read_parquet_file
from harness.results.contract import METRIC_COLUMNS, TRAIN_LOG_COLUMNS, unattacked
from harness.results.run_dir import require_finished

RECORD_NAME = "models.json"
RECORD_VERSION = 2


class MethodModels(FrozenModel):
    """The model an unlearned method was scored as, for one seed: its base model plus its adapter directory."""

    base: str
    adapter: str | None = None
    seed: int = 0


class RunModels(BaseModel):
    """Every model of a run: the reference models per reference seed and each scored method per seed."""

    targets: dict[int, str]
    retains: dict[int, str] = {}
    methods: dict[str, dict[int, MethodModels]] = {}

    @property
    def target(self) -> str:
        """The target model of the first reference seed."""
        return self.targets[min(self.targets)]

    @property
    def retain(self) -> str | None:
        """The retain model of the first reference seed (None when the run had none)."""
        return self.retains[min(self.retains)] if self.retains else None


def _stored(path: str | Path | None, run_dir: Path) -> str | None:
    """`path` as written into the record: relative inside the run dir, absolute if local, else unchanged."""
    if path is None:
        return None
    local = Path(path).expanduser()
    if not local.exists():
        return str(path)  # a hub id, or a path that does not exist here
    local = local.resolve()
    try:
        return str(local.relative_to(run_dir.resolve()))
    except ValueError:
        return str(local)


def _resolved(stored: str | None, run_dir: Path) -> str | None:
    if stored is None:
        return None
    path = Path(stored).expanduser()
    if not path.is_absolute() and (run_dir / path).exists():
        return str((run_dir / path).resolve())
    return stored


def _key(key: str | tuple[str, int]) -> tuple[str, int]:
    return (key, 0) if isinstance(key, str) else (str(key[0]), int(key[1]))


def record_models(run_dir: str | Path,
                  sources: Mapping[str | tuple[str, int], tuple[str, str | Path | None]]) -> Path:
    """Write `run_dir/models.json` from (name, seed) -> (model dir or hub id, adapter dir or None).

    `sources` is what the pipeline scores: `target` and `retain` with no adapter, and each method with its
    base model and adapter directory; a plain name as key means seed 0.
    """
    run_dir = Path(run_dir)
    models: dict[str, dict[str, Any]] = {}
    for key, (model, adapter) in sources.items():
        name, seed = _key(key)
        entry: Any = _stored(model, run_dir)
        if name not in REFERENCE_METHODS:
            entry = {"base": entry, "adapter": _stored(adapter, run_dir)}
        models.setdefault(name, {})[str(seed)] = entry
    if "target" not in models:
        raise ValueError("record_models needs the 'target' model")
    return atomic_write_json(run_dir / RECORD_NAME, {"format_version": RECORD_VERSION, "models": models})


def read_models(run_dir: str | Path) -> RunModels:
    """The models recorded in `run_dir/models.json`, paths resolved (DataError when absent or malformed)."""
    run_dir = Path(run_dir)
    path = run_dir / RECORD_NAME
    if not path.is_file():
        raise DataError(f"{path} is missing: {run_dir} has no record of its models (runs written before "
                        f"{RECORD_NAME} existed, or not a run directory)")
    try:
        data = json.loads(path.read_text())
        raw = dict(data["models"])
        version = int(data.get("format_version", 1))
        if version == 1:  # one model per name: seed 0
            raw = {name: {"0": entry} for name, entry in raw.items()}
        per_seed = {name: {int(seed): entry for seed, entry in dict(seeds).items()} for name, seeds in raw.items()}
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise DataError(f"{path} is malformed: {err!r}") from None
    methods: dict[str, dict[int, dict[str, Any]]] = {}
    for name, seeds in per_seed.items():
        if name in REFERENCE_METHODS:
            continue
        for seed, entry in seeds.items():
            if not isinstance(entry, dict):
                raise DataError(f"{path}: models.{name}.{seed} must be an object with 'base' and 'adapter'")
            methods.setdefault(name, {})[seed] = {"base": _resolved(entry.get("base"), run_dir),
                                                  "adapter": _resolved(entry.get("adapter"), run_dir), "seed": seed}
    try:
        return RunModels(targets={s: _resolved(p, run_dir) for s, p in per_seed.get("target", {}).items()},
                         retains={s: _resolved(p, run_dir) for s, p in per_seed.get("retain", {}).items()},
                         methods=methods)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise DataError(f"{path} is malformed: {problems}") from None


@dataclass(frozen=True)
class FinishedRun:
    """A finished run directory, read: its resolved spec (as data), env.json, metrics, training log and (read when
    first used) its models; `label` names it in a comparison of runs (default: its directory name)."""

    run_dir: Path
    spec: dict[str, Any]
    env: dict[str, Any]
    metrics: pd.DataFrame
    train_log: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=TRAIN_LOG_COLUMNS))
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.run_dir.name)

    @cached_property
    def models(self) -> RunModels:
        """The models recorded in models.json (DataError when absent or malformed)."""
        return read_models(self.run_dir)

    @property
    def name(self) -> str:
        """The job name of the run."""
        return str(self.spec.get("name", self.run_dir.name))

    @property
    def methods(self) -> list[str]:
        """Reference models first, then the unlearning methods in the order the run lists them (those with metrics
        or a training log)."""
        seen = list(dict.fromkeys(self.metrics["method"].tolist() + self.train_log["method"].tolist()))
        spec_order = [m.get("name") for m in self.spec.get("methods", []) if isinstance(m, dict)]
        rest = [m for m in spec_order if m in seen] + [m for m in seen if m not in spec_order]
        return [m for m in REFERENCE_METHODS if m in seen] + [m for m in rest if m not in REFERENCE_METHODS]

    def method_spec(self, method: str) -> dict[str, Any]:
        """The resolved spec of one method (`{}` when spec.yaml does not list it)."""
        for m in self.spec.get("methods") or []:
            if isinstance(m, dict) and m.get("name") == method:
                return m
        return {}

    def diverged(self, method: str) -> bool:
        """True when metrics.parquet records that `method` diverged."""
        m = self.metrics
        hit = m[(m["method"] == method) & (m["metric"] == "diverged")]["value"]
        return bool(len(hit)) and not math.isnan(float(hit.iloc[0])) and float(hit.iloc[0]) > 0

    def method_model(self, method: str, seed: int | None = None) -> MethodModels:
        """The recorded base + adapter of `method` with `seed` (default: its first seed); DataError naming the
        run's methods, or the method's seeds, when unknown."""
        if method in self.models.methods:
            seeds = self.models.methods[method]
            seed = min(seeds) if seed is None else seed
            if seed not in seeds:
                raise DataError(f"{self.run_dir}: method {method!r} has no seed {seed} (seeds: "
                                f"{', '.join(map(str, sorted(seeds)))})")
            entry = seeds[seed]
            if entry.adapter is None:
                raise DataError(f"{self.run_dir}: method {method!r} has no adapter recorded")
            return entry
        known = ", ".join(sorted(self.models.methods)) or "none"
        if self.diverged(method):
            raise DataError(f"{self.run_dir}: method {method!r} diverged, so it has no scored model "
                            f"(scored methods: {known})")
        raise DataError(f"{self.run_dir}: unknown method {method!r} (scored methods: {known})")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise DataError(f"{path} is not readable YAML: {err}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} is malformed: expected a mapping")
    return data


def read_run_metrics(run_dir: str | Path, what: str = "metrics file", attacks: bool = False) -> pd.DataFrame:
    """metrics.parquet of a finished run directory: DataError naming the run when it did not finish, the file when
    it is missing or damaged. Every reader of a finished run's metrics goes through here. Rows of attacked models
    (harness/attacks) are left out unless `attacks`: reports, nightly and sweeps compare the models as scored."""
    run_dir = Path(run_dir)
    require_finished(run_dir)
    path = run_dir / "metrics.parquet"
    if not path.is_file():
        raise DataError(f"{run_dir} is not a finished run: {path} is missing")
    metrics = read_parquet_file(path, what)
    return metrics if attacks else unattacked(metrics)


def read_run_train_log(run_dir: str | Path, required: bool = False) -> pd.DataFrame:
    """train_log.parquet of a run directory (an empty log with the contract's columns when absent and not
    `required`); DataError naming the file when damaged."""
    path = Path(run_dir) / "train_log.parquet"
    if not required and not path.is_file():
        return pd.DataFrame(columns=TRAIN_LOG_COLUMNS)
    return read_parquet_file(path, "training log")


def read_run_env(run_dir: str | Path, what: str = "run environment") -> dict[str, Any]:
    """env.json of a run directory (`{}` when absent); DataError naming the file when damaged or not an object."""
    path = Path(run_dir) / "env.json"
    env = read_json_file(path, what) if path.is_file() else {}
    if not isinstance(env, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(env).__name__}")
    return env


def load_finished_run(run_dir: str | Path, complete: bool = True, label: str = "") -> FinishedRun:
    """Read a finished run directory; DataError naming what is missing or damaged.

    `complete`: the run must have finished with its whole record (env.json with its finish time, spec.yaml,
    models.json), as exporting or scoring its models needs. Else only metrics.parquet is required (what a comparison
    of runs reads, also of runs an older harness wrote): spec.yaml and env.json are read when present, the metrics
    and training log get the contract's columns they lack, and models.json is read only when `models` is used.
    """
    run_dir = Path(run_dir)
    if not complete:
        return _results_only(run_dir, label)
    if not run_dir.is_dir():
        raise DataError(f"run directory {run_dir} does not exist")
    require_finished(run_dir)
    env_path = run_dir / "env.json"
    if not env_path.is_file() or not (run_dir / "spec.yaml").is_file():
        raise DataError(f"{run_dir} is not a run directory (no env.json / spec.yaml)")
    try:
        env = json.loads(env_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{env_path} is not valid JSON: {err}") from None
    if not isinstance(env, dict) or not env.get("finished"):
        raise DataError(f"{run_dir} is not a finished run: {env_path} has no 'finished' time "
                        "(the run is still going, or stopped before writing its results)")
    metrics = read_run_metrics(run_dir)
    run = FinishedRun(run_dir, _read_yaml(run_dir / "spec.yaml"), env, metrics, read_run_train_log(run_dir), label)
    _ = run.models  # read now: a run without its record of models fails here
    return run


def _results_only(run_dir: Path, label: str) -> FinishedRun:
    """`load_finished_run(complete=False)`."""
    metrics = read_run_metrics(run_dir)
    missing = [c for c in ("method", "split", "metric", "value") if c not in metrics.columns]
    if missing:
        raise DataError(f"{run_dir / 'metrics.parquet'} lacks the columns {', '.join(missing)}")
    for col in METRIC_COLUMNS:
        if col not in metrics.columns:
            metrics[col] = float("nan") if col in ("ci_low", "ci_high") else ""
    train_log = read_run_train_log(run_dir)
    for col in TRAIN_LOG_COLUMNS:
        if col not in train_log.columns:
            train_log[col] = pd.Series(dtype="float64")
    spec: Any = {}
    if (run_dir / "spec.yaml").is_file():
        try:
            spec = yaml.safe_load((run_dir / "spec.yaml").read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise DataError(f"{run_dir / 'spec.yaml'} is not valid YAML: {err}") from None
    env = read_run_env(run_dir)
    return FinishedRun(run_dir, spec if isinstance(spec, dict) else {}, env, metrics, train_log, label)
