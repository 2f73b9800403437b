"""`--resume`: what an interrupted or failed job left in its staging directory, checked before it is reused.

- The spec must be the same as the staged `spec.yaml` except for `RESUME_MAY_CHANGE` (resources and output
  settings): `check_same_spec` names the first fields that differ (SpecError, exit 2).
- Trainings: every attempt's Ray Train checkpoints stay under `<staging>/ray/<attempt>/`. A (method, seed) run
  with a `done` checkpoint whose adapter and step log pass `verify_finished` is reused, not retrained (a
  damaged one is retrained, with a warning); an unfinished run continues from its latest checkpoint
  (`train.checkpoint_every`), else starts over.
- Scores: each scored model's `ModelScores` is kept under `<staging>/scores/` with what it scored (model,
  adapter digest), so a resumed job scores only what is not scored yet.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.adapters.checkpoint import lora_modules, read_bound_config, read_lora_weights
from harness.adapters.format import WEIGHTS_NAME
from harness.config import load_yaml
from harness.core.errors import DataError, SpecError
from harness.core.io import atomic_write_bytes
from harness.results.run_dir import has_results
from harness.train.checkpoint import ADAPTER_DIR, ENGINE_TAG, STATE_FILE
from harness.train.loop import total_steps
from harness.train.ray_run import read_finished_training

if TYPE_CHECKING:
    from harness.train.ray_run import TrainingRequest, TrainingResult

#: Top-level spec fields a resumed job may change: where it runs and where its output goes.
RESUME_MAY_CHANGE = ("resources", "out", "tracking")
#: The Ray Train run name of a job's first training attempt (later attempts: `unlearn-2`, `unlearn-3`, ...).
TRAIN_RUN_NAME = "unlearn"
SCORES_DIR = "scores"


def spec_differences(old: Any, new: Any, path: str = "") -> list[str]:
    """Dotted paths where two spec dumps differ (`train.lr`, `methods.0.adapter.bound`), in `new`'s order."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = list(dict.fromkeys([*new, *old]))
        return [d for k in keys for d in spec_differences(old.get(k, _MISSING), new.get(k, _MISSING),
                                                          f"{path}.{k}" if path else str(k))]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new, strict=True)) for d in spec_differences(a, b, f"{path}.{i}")]
    return [] if old == new else [path or "(top level)"]


_MISSING = object()


def check_same_spec(staging: Path, new: dict[str, Any]) -> None:
    """SpecError naming the fields where the job spec `new` (a `model_dump(mode="json")`) differs from the spec
    staged in `staging`, resources and output settings aside; nothing when the staging has no spec yet."""
    path = staging / "spec.yaml"
    if not path.is_file():
        return
    differ = [d for d in spec_differences(load_yaml(path, "staged job spec"), new)
              if d.split(".")[0] not in RESUME_MAY_CHANGE]
    if differ:
        shown = ", ".join(differ[:6]) + (f" and {len(differ) - 6} more" if len(differ) > 6 else "")
        raise SpecError(f"--resume: the job spec differs from the one of the interrupted run staged in {staging} "
                        f"in {shown}; resume with the same spec (only {', '.join(RESUME_MAY_CHANGE)} may change), "
                        "or run without --resume to start over")


def check_resumable(out: Path, new: dict[str, Any]) -> None:
    """`check_same_spec` against what a job's out dir holds: its finished results, else the latest staging
    directory an interrupted attempt left beside it (nothing to check when there is neither)."""

    if has_results(out):
        check_same_spec(out, new)
        return
    staged = sorted(out.parent.glob(f".{out.name}.staging-*"), key=lambda p: p.stat().st_mtime)
    if staged:
        check_same_spec(staged[-1], new)


def next_train_run_name(out: Path) -> str:
    """The Ray Train run name of this training attempt: `unlearn`, then `unlearn-2`, ... (earlier attempts'
    checkpoints stay for later resumes)."""
    n = 1
    while (out / "ray" / (TRAIN_RUN_NAME if n == 1 else f"{TRAIN_RUN_NAME}-{n}")).exists():
        n += 1
    return TRAIN_RUN_NAME if n == 1 else f"{TRAIN_RUN_NAME}-{n}"


@dataclass
class EarlierTraining:
    """What earlier attempts trained: verified `done` checkpoints and the latest checkpoint of unfinished runs
    (run key -> checkpoint directory), and the warnings about damaged ones."""

    finished: dict[str, Path] = field(default_factory=dict)
    partial: dict[str, Path] = field(default_factory=dict)
    partial_step: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def registered_checkpoints(out: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(checkpoint dir, its state.json) of every checkpoint each attempt's Ray Train run registered (its
    `checkpoint_manager_snapshot.json` lists those fully written), oldest first."""

    found = []
    for attempt in (out / "ray").glob("*/"):
        try:
            snapshot = json.loads((attempt / "checkpoint_manager_snapshot.json").read_text())
            names = [r["checkpoint_dir_name"] for r in snapshot["checkpoint_results"]]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # stopped before its first checkpoint was registered
        for name in names:
            try:
                state = json.loads((attempt / name / STATE_FILE).read_text())
            except (OSError, ValueError):
                continue
            if isinstance(state, dict) and "key" in state:
                found.append((attempt / name, state))
    return sorted(found, key=lambda cs: cs[0].stat().st_mtime)


def verify_finished(checkpoint: Path, state: dict[str, Any], method: str, seed: int, n_steps: int) -> str | None:
    """Why a run's `done` checkpoint cannot be reused (None: it can): its step log must hold each step
    0..n-1 once for this method and seed (all `n_steps` unless it diverged), and its adapter must load."""
    import math

    log = state.get("log")
    if not isinstance(log, list) or state.get("step") != len(log):
        return "its step log does not match its step count"
    if [row.get("step") for row in log] != list(range(len(log))):
        return "its step log does not hold each step once"
    if any(row.get("method") != method or row.get("seed") != seed for row in log):
        return "its step log belongs to another run"
    if not state.get("diverged") and len(log) != n_steps:
        return f"it has {len(log)} of {n_steps} steps"
    adapter = checkpoint / ADAPTER_DIR
    try:
        modules = read_bound_config(adapter)["modules"]
        weights = read_lora_weights(adapter / WEIGHTS_NAME)
    except DataError as err:
        return f"its adapter is damaged: {err}"
    if sorted(modules) != lora_modules(weights):
        return "its adapter's weights do not match its bound_config.json"
    if not state.get("diverged") and not all(math.isfinite(float(w.float().abs().sum())) for w in weights.values()):
        return "its adapter has non-finite weights"
    return None


def earlier_training(out: Path, runs: Iterable[tuple[str, str, int, int]]) -> EarlierTraining:
    """What earlier attempts left for `runs` ((key, method, seed, expected steps)) under `<out>/ray`."""

    states = registered_checkpoints(out)
    found = EarlierTraining()
    for key, method, seed, n_steps in runs:
        mine = [(c, s) for c, s in states if s["key"] == key]
        for ckpt, state in reversed([(c, s) for c, s in mine if s.get("done")]):
            problem = verify_finished(ckpt, state, method, seed, n_steps)
            if problem is None:
                found.finished[key] = ckpt
                break
            found.warnings.append(f"the finished training {key} in {ckpt} is damaged ({problem}): retraining it")
        if key in found.finished:
            continue
        partial = [(c, s) for c, s in mine if not s.get("done") and (c / ENGINE_TAG).is_dir()
                   and isinstance(s.get("step"), int)]
        if partial:
            ckpt, state = max(partial, key=lambda cs: cs[1]["step"])
            found.partial[key], found.partial_step[key] = ckpt, state["step"]
    return found


def earlier_trainings(out: Path, requests: Sequence[TrainingRequest], log: Callable[[str], None]
                 ) -> tuple[dict[str, TrainingResult], list[TrainingRequest], dict[str, str]]:
    """For a resumed job writing into `out`: the runs an earlier attempt finished (verified, their adapters copied
    to `<out>/checkpoints/`: reused, not retrained), the requests still to train, and the checkpoint each
    unfinished one continues from; each decision is logged."""

    found = earlier_training(out, [(r.key, r.method.name, r.seed, total_steps(len(r.forget), r.method))
                                   for r in requests])
    for warning in found.warnings:
        log(f"warning: {warning}")
    runs = {r.key: read_finished_training(found.finished[r.key], r, out) for r in requests if r.key in found.finished}
    if runs:
        log(f"reusing {len(runs)} finished training(s) of the interrupted run, not retrained: {', '.join(runs)}")
    todo = [r for r in requests if r.key not in runs]
    for r in todo:
        if r.key in found.partial:
            log(f"training {r.key} continues from its checkpoint at step {found.partial_step[r.key]}")
        else:
            log(f"training {r.key} starts over: the interrupted run left no checkpoint of it")
    return runs, todo, {key: str(path) for key, path in found.partial.items()}


# ---- scores -------------------------------------------------------------------------------------------

def _digest(adapter: str | Path | None) -> str | None:
    """sha256 of an adapter's weights (what a kept score was computed with), None without an adapter."""
    if adapter is None:
        return None

    path = Path(adapter) / WEIGHTS_NAME
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _score_path(cache: Path, key: tuple[str, int]) -> Path:
    return cache / key[0] / f"seed{key[1]}.pkl"


def save_scores(cache: Path, key: tuple[str, int], source: str, adapter: str | Path | None, scores: Any) -> None:
    """Keep one model's scores under `cache`, with the model they score."""
    record = {"source": str(source), "adapter": _digest(adapter), "scores": scores}
    atomic_write_bytes(_score_path(cache, key), pickle.dumps(record, protocol=5))


def load_scores(cache: Path, models: dict[tuple[str, int], tuple[str, str | Path | None]]
                ) -> dict[tuple[str, int], Any]:
    """Kept scores of `models` ((name, seed) -> (source, adapter dir)) scored on the same model and adapter."""
    kept: dict[tuple[str, int], Any] = {}
    for key, (source, adapter) in models.items():
        path = _score_path(cache, key)
        if not path.is_file():
            continue
        try:
            record = pickle.loads(path.read_bytes())  # noqa: S301 - written by this job's own earlier attempt
        except Exception:  # noqa: BLE001 - a damaged record is scored again
            continue
        if record.get("source") == str(source) and record.get("adapter") == _digest(adapter):
            kept[key] = record["scores"]
    return kept
