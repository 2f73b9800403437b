"""TOFU data: load the published configs (local files, hub, or the synthetic set) and validate them."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from harness.benchmarks.hub import hub_records
from harness.benchmarks.synthetic_cache import ensure_cached
from harness.benchmarks.synthetic_cache import synth_dir as _synth_dir
from harness.benchmarks.tofu.synth import CONFIGS, SYNTH_VERSION, SyntheticTofuSpec, generate_tofu
from harness.core.errors import DataError

FORGET_TO_RETAIN = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
FILE_SUFFIXES = (".json", ".jsonl", ".parquet")
_QA = ("question", "answer")
_FICTITIOUS_EVAL = ("question", "answer", "paraphrased_answer", "perturbed_answer")
_KNOWLEDGE_EVAL = ("question", "answer", "perturbed_answer")
_TEXT_FIELDS = ("question", "answer", "paraphrased_answer", "paraphrased_question")


@dataclass
class TofuData:
    """The TOFU configs one job needs: train sets, evaluation splits and background knowledge."""

    forget_split: str
    retain_split: str
    forget: list[dict]
    retain: list[dict]
    #: Evaluation splits: `<forget_split>` (its `_perturbed` config), `retain` (retain_perturbed),
    #: `real_authors` and `world_facts` (their `_perturbed` configs).
    eval_splits: dict[str, list[dict]]
    #: Plain QA of real_authors + world_facts: background knowledge for the reference models.
    knowledge: list[dict]
    source: str = ""
    files: dict[str, str] = field(default_factory=dict)


def retain_split_for(forget_split: str) -> str:
    """The retain config that complements a forget config (forget10 -> retain90)."""
    if forget_split not in FORGET_TO_RETAIN:
        raise DataError(f"benchmark.forget_split {forget_split!r} is not a TOFU forget split "
                        f"(allowed: {', '.join(FORGET_TO_RETAIN)})")
    return FORGET_TO_RETAIN[forget_split]


def _required(forget_split: str) -> dict[str, tuple[str, ...]]:
    """Config name -> fields each of its records must have."""
    return {
        forget_split: _QA,
        FORGET_TO_RETAIN[forget_split]: _QA,
        f"{forget_split}_perturbed": _FICTITIOUS_EVAL,
        "retain_perturbed": _FICTITIOUS_EVAL,
        "real_authors": _QA,
        "world_facts": _QA,
        "real_authors_perturbed": _KNOWLEDGE_EVAL,
        "world_facts_perturbed": _KNOWLEDGE_EVAL,
    }


def _json_default(obj: object) -> object:
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def write_tofu(configs: Mapping[str, list[dict]], out_dir: str | Path) -> Path:
    """Write each config as `{config}.json` (JSON lines, as in the HF repo), each file atomically."""
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    for name, records in configs.items():
        text = "".join(json.dumps(r, ensure_ascii=False, default=_json_default) + "\n" for r in records)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, out / f"{name}.json")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return out


def _find_file(directory: Path, config: str) -> Path:
    for suffix in FILE_SUFFIXES:
        path = directory / f"{config}{suffix}"
        if path.is_file():
            return path
    raise DataError(f"TOFU config {config!r} not found: expected {directory / (config + '.json')} "
                    f"(or .jsonl / .parquet)")


def _read_json(path: Path) -> list[dict]:
    """JSON lines (the HF layout) or one JSON array."""
    text = path.read_text(encoding="utf-8")
    try:
        if text.lstrip().startswith("["):
            return json.loads(text)
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON lines: {err}") from None


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as err:  # pyarrow raises several unrelated types for corrupt files
        raise DataError(f"{path} is not a readable parquet file: {err}") from None


def read_config(directory: str | Path, config: str) -> tuple[list[dict], Path]:
    """Records of one config from `{directory}/{config}.json|.jsonl|.parquet`, and the file read."""
    path = _find_file(Path(directory).expanduser(), config)
    records = _read_parquet(path) if path.suffix == ".parquet" else _read_json(path)
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise DataError(f"{path}: expected one JSON object per record")
    return records, path


def validate_records(config: str, records: list[dict], fields: Iterable[str]) -> None:
    """Fail naming config, record index and field when a required field is missing or mistyped."""
    if not records:
        raise DataError(f"TOFU config {config!r} has no records")
    for i, rec in enumerate(records):
        for name in fields:
            if name not in rec or rec[name] is None:
                raise DataError(f"TOFU config {config!r}, record {i}: missing field {name!r}")
            value = rec[name]
            if name == "perturbed_answer":
                if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
                    raise DataError(f"TOFU config {config!r}, record {i}: field 'perturbed_answer' must be "
                                    f"a non-empty list of strings, got {type(value).__name__}")
            elif not isinstance(value, str):
                raise DataError(f"TOFU config {config!r}, record {i}: field {name!r} must be a string, "
                                f"got {type(value).__name__}")


def synth_dir(data_dir: str | Path, synthetic: SyntheticTofuSpec, seed: int) -> Path:
    """Where the synthetic set of this spec and seed is cached: `{data_dir}/tofu-synth-<hash>`."""
    return _synth_dir(data_dir, "tofu", synthetic, seed, SYNTH_VERSION)


def ensure_synthetic(data_dir: str | Path, synthetic: SyntheticTofuSpec, seed: int) -> Path:
    """Generate and write the synthetic set unless a complete copy is cached; return its directory."""
    return ensure_cached(synth_dir(data_dir, synthetic, seed), [f"{name}.json" for name in CONFIGS],
                         lambda: generate_tofu(synthetic, seed), write_tofu)


def _read_hub(source: str, configs: Iterable[str]) -> dict[str, list[dict]]:
    return {config: hub_records(source, config, "train", "the published TOFU files") for config in configs}


def load_tofu(source: str, data_dir: str, synthetic: SyntheticTofuSpec, seed: int,
              forget_split: str) -> TofuData:
    """Load and validate the configs a job needs from `synthetic`, a local directory, or a hub id."""
    retain_split = retain_split_for(forget_split)
    required = _required(forget_split)
    if source == "synthetic":
        source_dir: Path | None = ensure_synthetic(data_dir, synthetic, seed)
    elif Path(source).expanduser().is_dir():
        source_dir = Path(source).expanduser()
    elif source.startswith(("/", "./", "../", "~")):
        raise DataError(f"benchmark.source: directory {source} does not exist")
    else:
        source_dir = None
    files: dict[str, str] = {}
    if source_dir is not None:
        configs = {}
        for name in required:
            configs[name], path = read_config(source_dir, name)
            files[name] = str(path)
    else:
        configs = _read_hub(source, required)
    for name, fields in required.items():
        validate_records(name, configs[name], fields)
    knowledge = [{"question": r["question"], "answer": r["answer"]}
                 for r in configs["real_authors"] + configs["world_facts"]]
    return TofuData(
        forget_split=forget_split, retain_split=retain_split,
        forget=configs[forget_split], retain=configs[retain_split],
        eval_splits={
            forget_split: configs[f"{forget_split}_perturbed"],
            "retain": configs["retain_perturbed"],
            "real_authors": configs["real_authors_perturbed"],
            "world_facts": configs["world_facts_perturbed"],
        },
        knowledge=knowledge, source=str(source_dir) if source_dir is not None else source, files=files,
    )


def _record_texts(records: Iterable[dict]) -> Iterable[str]:
    for rec in records:
        for name in _TEXT_FIELDS:
            if isinstance(rec.get(name), str):
                yield rec[name]
        yield from (p for p in rec.get("perturbed_answer") or [] if isinstance(p, str))


def corpus_texts(data: TofuData) -> list[str]:
    """Sorted distinct question/answer/paraphrase/perturbed strings, for tokenizer training.

    The forget split's own `_perturbed` config is left out, so the corpus (and the tokenizer trained
    on it) is the same for forget01/05/10: forget + retain is always `full`, and retain_perturbed
    already covers every paraphrase and perturbation template.
    """
    evals = [recs for name, recs in data.eval_splits.items() if name != data.forget_split]
    groups = [data.forget, data.retain, data.knowledge, *evals]
    return sorted({t for recs in groups for t in _record_texts(recs)})
