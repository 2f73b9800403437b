"""`harness export`: one method of a finished run as a plain, merged Hugging Face checkpoint with a model card.

The method's adapter is attached to the base model its run recorded (`models.json`), merged exactly
(`harness.adapters.merge`: the dense `W0 + delta W` the fused layer computes) and saved with
`save_pretrained` (safetensors, config.json, generation config) plus the base model's tokenizer and a
README.md model card (YAML front matter: method, bound, settings from spec.yaml, the run's metrics
from metrics.parquet). Nothing in the output needs harness: `AutoModelForCausalLM.from_pretrained`,
vLLM and lm-evaluation-harness load it as any other causal LM.
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from harness.adapters import merge
from harness.config import REFERENCE_METHODS
from harness.core.errors import DataError
from harness.models.modality import get_modality
from harness.models.text import torch_dtype
from harness.models.tokenizer import load_tokenizer
from harness.render.tables import to_markdown
from harness.results.run_record import FinishedRun, load_finished_run
from harness.scoring.load import load_with_adapter
from harness.spec import benchmark_spec

CARD_NAME = "README.md"


def _clean(value: Any) -> Any:
    """A metric value for YAML: float, or None for NaN."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _seed_rows(metrics: pd.DataFrame, method: str, seed: int) -> pd.DataFrame:
    """The rows of `method` with `seed` (all rows of a run written before seeds existed)."""
    mine = metrics[metrics["method"] == method]
    return mine[mine["seed"] == seed] if "seed" in mine.columns and mine["seed"].notna().any() else mine


def _metric_rows(metrics: pd.DataFrame, method: str, seed: int = 0) -> list[dict[str, Any]]:
    rows = []
    for r in _seed_rows(metrics, method, seed).to_dict("records"):
        row = {"benchmark": r.get("benchmark"), "split": r["split"], "metric": r["metric"], "value": _clean(r["value"])}
        for key in ("ci_low", "ci_high"):
            if _clean(r.get(key)) is not None:
                row[key] = _clean(r[key])
        rows.append(row)
    return rows


def _metrics_table(metrics: pd.DataFrame, method: str, seed: int = 0) -> str:
    """Markdown table: one row per (split, metric), columns the method (this seed) and the reference models."""

    names = [method] + [m for m in REFERENCE_METHODS if m in set(metrics["method"])]
    shown = pd.concat([_seed_rows(metrics, method, seed), metrics[metrics["method"].isin(REFERENCE_METHODS)]])
    shown = shown[shown["split"] != "train"]
    if shown.empty:
        return "(the run recorded no metrics for this method)"
    table = shown.pivot_table(index=["split", "metric"], columns="method", values="value", aggfunc="first")
    table = table.reindex(columns=[n for n in names if n in table.columns]).reset_index()
    return to_markdown(table)


def model_card(run: FinishedRun, method: str, base: str, seed: int = 0) -> str:
    """README.md for the exported checkpoint: YAML front matter (machine-readable) and a short text."""
    spec = run.method_spec(method)
    adapter = spec.get("adapter") or {}
    bench = run.spec.get("benchmark") or {}
    local_base = Path(base).exists()
    front: dict[str, Any] = {
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["harness", "unlearning", "bounded-lora", f"bound-{adapter.get('bound', 'unknown')}",
                 str(bench.get("name", "benchmark"))],
    }
    if not local_base:
        front["base_model"] = base  # a hub id; a local directory is named under harness.base_model
    front["harness"] = {
        "run": run.name,
        "run_dir": str(run.run_dir.resolve()),
        "method": method,
        "bound": adapter.get("bound"),
        "base_model": base,
        "benchmark": {k: bench.get(k) for k in ("name", "source", "forget_split") if k in bench},
        "adapter": adapter,
        "objective": spec.get("objective") or {},
        "train": spec.get("train") or {},
        "seed": seed,
        "harness_version": run.env.get("harness_version"),
        "git_commit": run.env.get("git_commit"),
        "metrics": _metric_rows(run.metrics, method, seed),
    }
    settings = ", ".join(f"{k} {adapter[k]}" for k in ("rank", "alpha", "omega", "clip_value") if k in adapter)
    objective = (spec.get("objective") or {}).get("name", "?")
    body = f"""# {run.name}: {method} (merged)

The model `{method}` of the harness run `{run.name}`, as plain dense weights (no adapter, no harness code):

- base model: `{base}`
- unlearning: objective `{objective}` through a LoRA adapter on the MLP projections
- bound: `{adapter.get('bound', '?')}` ({settings}), merged exactly: `W = W0 + delta W`

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("this/dir")
tokenizer = AutoTokenizer.from_pretrained("this/dir")
```

## Metrics of the run

{_metrics_table(run.metrics, method, seed)}

Settings are the run's resolved spec.yaml; every value above is also in the front matter (`harness.metrics`).
"""
    return "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n\n" + body


def _modality(run: FinishedRun) -> str:
    """The modality of the run's benchmark (text when its spec no longer validates)."""
    from pydantic import ValidationError

    try:
        return benchmark_spec(**(run.spec.get("benchmark") or {})).modality
    except (ValidationError, TypeError):
        return "text"


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"--out {out} exists and is not empty; remove it or choose a new directory")


def export_method(run_dir: str | Path, method: str, out_dir: str | Path, seed: int | None = None) -> Path:
    """Write `method` (its run with `seed`; default the first) of the finished run `run_dir` as a merged HF
    checkpoint in `out_dir`; returns it.

    Bad input raises DataError / ModelError naming it: a run that did not finish, an unknown or
    diverged method, a missing or truncated weights file, an adapter that does not fit the base model.
    The directory appears complete or not at all (written beside it, then renamed).
    """

    out = Path(out_dir)
    _check_out(out)
    run = load_finished_run(run_dir)
    entry = run.method_model(method, seed)
    dtype = torch_dtype(str((run.spec.get("model") or {}).get("dtype", "float32")))
    modality = get_modality(_modality(run))
    model, processor = load_with_adapter(entry.base, entry.adapter, modality=modality.name, dtype=dtype)
    if modality.name == "text":
        processor = load_tokenizer(entry.base)  # as the base saved it (load_pretrained may set a pad token)
    merge(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        modality.save(model, processor, tmp)
        (tmp / CARD_NAME).write_text(model_card(run, method, entry.base, entry.seed))
        for path in [tmp, *tmp.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)  # mkdtemp makes the directory owner-only
        if out.exists():
            out.rmdir()  # empty (checked above)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`harness export`'s arguments."""
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a finished run directory (harness run --out)")
    parser.add_argument("--method", required=True, help="the method to export (a name in the run's spec)")
    parser.add_argument("--seed", type=int, help="which seed's run of the method (default: the first)")
    parser.add_argument("--out", required=True, help="new output directory")


def main(args: argparse.Namespace) -> int:
    """Export the method and say where it went."""
    path = export_method(args.run_dir, args.method, args.out, args.seed)
    print(f"exported {args.method} of {args.run_dir}: {path} (merged safetensors, config, tokenizer, README.md)")
    return 0
