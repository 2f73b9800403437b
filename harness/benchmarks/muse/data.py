"""MUSE data: read the muse_bench file layout (a local directory, the synthetic set, or the HF dataset).

Local layout (what muse_bench's `load_data.py` writes from `muse-bench/MUSE-News`, one directory per corpus):

    raw/forget.json | .txt       forget articles (required; a .txt is read as one document)
    raw/retain1.json | .txt      retain set of the unlearning regulariser (required)
    raw/retain2.json | .txt      further retain articles, source of the retain QA (optional)
    raw/holdout.json | .txt      articles never trained on (optional; PrivLeak reads privleak/holdout)
    verbmem/forget.json          [{prompt, gt}]
    knowmem/forget_qa.json, forget_qa_icl.json, retain_qa.json, retain_qa_icl.json   [{question, answer}]
                                 (older releases name the retain files retain2_qa*.json; both are read)
    privleak/forget.json, holdout.json   lists of strings (or of {"text": ...}); privleak/retain.json optional

JSON files may also be JSON lines. A hub id (e.g. `muse-bench/MUSE-News`) is read with `datasets`, configs
`raw`, `verbmem`, `knowmem`, `privleak`, as `load_data.py` does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.benchmarks.hub import hub_records
from harness.benchmarks.muse.synth import SYNTH_VERSION, SyntheticMuseSpec, generate_muse
from harness.benchmarks.synthetic_cache import ensure_cached
from harness.benchmarks.synthetic_cache import synth_dir as _synth_dir
from harness.core.errors import DataError
from harness.core.io import atomic_write_text

#: File keys (path without suffix) of the synthetic set, all written by `write_muse`.
SYNTH_FILES = ("raw/forget", "raw/retain1", "raw/retain2", "raw/holdout", "verbmem/forget",
               "knowmem/forget_qa", "knowmem/forget_qa_icl", "knowmem/retain_qa", "knowmem/retain_qa_icl",
               "privleak/forget", "privleak/retain", "privleak/holdout")
_QA_FILES = {"forget": ("forget_qa", "forget_qa_icl"), "retain": ("retain_qa", "retain_qa_icl")}
_LEGACY_QA = {"retain_qa": "retain2_qa", "retain_qa_icl": "retain2_qa_icl"}


@dataclass
class MuseData:
    """One MUSE corpus: raw training texts and the evaluation sets of VerbMem, KnowMem and PrivLeak."""

    #: Raw article texts by split: forget, retain1, retain2 (may be empty), holdout (may be empty).
    raw: dict[str, list[str]]
    #: VerbMem forget records `{prompt, gt}`.
    verbmem: list[dict]
    #: KnowMem QA `{question, answer}` by split (`forget`, `retain`) and their few-shot examples.
    knowmem: dict[str, list[dict]]
    icl: dict[str, list[dict]]
    #: PrivLeak texts by split: forget, holdout (and retain when present).
    privleak: dict[str, list[str]]
    source: str = ""
    files: dict[str, str] = field(default_factory=dict)


# ---- writing -------------------------------------------------------------------------------------


def write_muse(files: Mapping[str, list], out_dir: str | Path) -> Path:
    """Write each `key -> records` as `{out_dir}/{key}.json` (and `raw/*.txt`, texts joined by a blank line)."""
    out = Path(out_dir).expanduser()
    for key, records in files.items():
        atomic_write_text(out / f"{key}.json", json.dumps(records, ensure_ascii=False, indent=1) + "\n")
        if key.startswith("raw/"):
            atomic_write_text(out / f"{key}.txt", "\n\n".join(records))
    return out


def synth_dir(data_dir: str | Path, synthetic: SyntheticMuseSpec, seed: int) -> Path:
    """Where the synthetic set of this spec and seed is cached: `{data_dir}/muse-synth-<hash>`."""
    return _synth_dir(data_dir, "muse", synthetic, seed, SYNTH_VERSION)


def ensure_synthetic(data_dir: str | Path, synthetic: SyntheticMuseSpec, seed: int) -> Path:
    """Generate and write the synthetic set unless a complete copy is cached; return its directory."""
    return ensure_cached(synth_dir(data_dir, synthetic, seed), [f"{key}.json" for key in SYNTH_FILES],
                         lambda: generate_muse(synthetic, seed), write_muse)


# ---- reading -------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    """One JSON document, or JSON lines."""
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        try:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise DataError(f"{path} is neither JSON nor JSON lines: {err}") from None


def _texts(records: Any, where: str) -> list[str]:
    """A list of strings (or of `{"text": ...}` records) as a list of strings."""
    if not isinstance(records, list):
        raise DataError(f"{where}: expected a list of texts, got {type(records).__name__}")
    out = []
    for i, r in enumerate(records):
        if isinstance(r, dict):
            r = r.get("text")
        if not isinstance(r, str):
            raise DataError(f"{where}, record {i}: expected a string (or an object with a 'text' string)")
        out.append(r)
    return out


def validate_records(where: str, records: Any, fields: Iterable[str], allow_empty: bool = False) -> list[dict]:
    """Records as a list of dicts whose `fields` are strings; else a DataError naming file, record and field."""
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise DataError(f"{where}: expected a list of JSON objects")
    if not records and not allow_empty:
        raise DataError(f"{where} has no records")
    for i, rec in enumerate(records):
        for name in fields:
            if not isinstance(rec.get(name), str):
                raise DataError(f"{where}, record {i}: field {name!r} must be a string, "
                                f"got {type(rec.get(name)).__name__}")
    return records


def _raw(directory: Path, name: str, required: bool, files: dict[str, str]) -> list[str]:
    json_path, txt_path = directory / "raw" / f"{name}.json", directory / "raw" / f"{name}.txt"
    if json_path.is_file():
        files[f"raw/{name}"] = str(json_path)
        return _texts(_read_json(json_path), str(json_path))
    if txt_path.is_file():
        files[f"raw/{name}"] = str(txt_path)
        return [txt_path.read_text(encoding="utf-8")]
    if required:
        raise DataError(f"MUSE file {json_path} (or {txt_path.name}) not found")
    return []


def _file(directory: Path, key: str, required: bool = True) -> Path | None:
    """`{directory}/{key}.json`, or its legacy name; None (or DataError when required) if absent."""
    folder, _, stem = key.partition("/")
    for name in (stem, _LEGACY_QA.get(stem)):
        if name and (directory / folder / f"{name}.json").is_file():
            return directory / folder / f"{name}.json"
    if required:
        raise DataError(f"MUSE file {directory / (key + '.json')} not found")
    return None


def read_muse_dir(directory: str | Path) -> MuseData:
    """Read and validate a MUSE corpus directory in muse_bench's layout (see the module docstring)."""
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise DataError(f"MUSE data directory {d} does not exist")
    files: dict[str, str] = {}
    raw = {"forget": _raw(d, "forget", True, files), "retain1": _raw(d, "retain1", True, files),
           "retain2": _raw(d, "retain2", False, files), "holdout": _raw(d, "holdout", False, files)}
    for name in ("forget", "retain1"):
        if not raw[name]:
            raise DataError(f"MUSE file {files[f'raw/{name}']} has no texts")

    def load(key: str, required: bool = True) -> tuple[str, Any]:
        """(file path, parsed JSON) of one file; ("", None) when it is optional and absent."""
        path = _file(d, key, required)
        if path is None:
            return "", None
        files[key] = str(path)
        return str(path), _read_json(path)

    verbmem = validate_records(*load("verbmem/forget"), ("prompt", "gt"))
    knowmem, icl = {}, {}
    for split, (qa_key, icl_key) in _QA_FILES.items():
        knowmem[split] = validate_records(*load(f"knowmem/{qa_key}"), ("question", "answer"))
        icl[split] = validate_records(*load(f"knowmem/{icl_key}"), ("question", "answer"), allow_empty=True)
    privleak = {}
    for split in ("forget", "holdout", "retain"):
        where, records = load(f"privleak/{split}", required=split != "retain")
        if records is not None:
            privleak[split] = _texts(records, where)
            if not privleak[split]:
                raise DataError(f"{where} has no texts")
    return MuseData(raw=raw, verbmem=verbmem, knowmem=knowmem, icl=icl, privleak=privleak,
                    source=str(d), files=files)


def _read_hub(source: str) -> MuseData:
    """The MUSE configs of a hub dataset, as muse_bench's `load_data.py` reads them."""

    def split(config: str, name: str) -> list[dict]:
        return hub_records(source, config, name, "muse_bench's layout")

    raw = {name: [r["text"] for r in split("raw", name)] for name in ("forget", "retain1", "retain2", "holdout")}
    knowmem = {s: validate_records(f"{source} knowmem/{qa}", split("knowmem", qa), ("question", "answer"))
               for s, (qa, _) in _QA_FILES.items()}
    icl = {s: validate_records(f"{source} knowmem/{ic}", split("knowmem", ic), ("question", "answer"), True)
           for s, (_, ic) in _QA_FILES.items()}
    verbmem = validate_records(f"{source} verbmem/forget", split("verbmem", "forget"), ("prompt", "gt"))
    privleak = {s: [r["text"] for r in split("privleak", s)] for s in ("forget", "holdout", "retain")}
    return MuseData(raw=raw, verbmem=verbmem, knowmem=knowmem, icl=icl, privleak=privleak, source=source)


def load_muse(source: str, data_dir: str, synthetic: SyntheticMuseSpec, seed: int) -> MuseData:
    """Load and validate MUSE from `synthetic` (generated and cached), a local directory, or a hub id."""
    if source == "synthetic":
        return read_muse_dir(ensure_synthetic(data_dir, synthetic, seed))
    path = Path(source).expanduser()
    if path.is_dir():
        return read_muse_dir(path)
    if source.startswith(("/", "./", "../", "~")):
        raise DataError(f"benchmark.source: directory {source} does not exist")
    return _read_hub(source)


def corpus_texts(data: MuseData) -> list[str]:
    """Sorted distinct texts of every split (raw articles, QA, few-shot examples, VerbMem), for tokenizers."""
    texts: set[str] = set()
    for group in data.raw.values():
        texts.update(group)
    for group in data.privleak.values():
        texts.update(group)
    for records in (*data.knowmem.values(), *data.icl.values()):
        for r in records:
            texts.update((r["question"], r["answer"], f"Question: {r['question']}\nAnswer: {r['answer']}"))
    for r in data.verbmem:
        texts.update((r["prompt"], r["gt"]))
    return sorted(texts)
