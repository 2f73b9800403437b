"""TDEC data: CSV files of sequences (knowledge-unlearning layout), local or the cached synthetic set.

Layout of a source directory (joeljang/knowledge-unlearning keeps its forget sets in `data/main/`):

    <forget_split>.csv   the sequences to forget, e.g. `lm_extraction_32_0.csv` (32 Pile sequences from the
                         Training Data Extraction Challenge, fold 0); when no file has that name the
                         directory's `forget.csv` is used (the synthetic layout)
    holdout.csv          optional: sequences of the same distribution the model never saw; MA and EL on
                         them are the forgetting thresholds (the paper measured them on held-out Pile
                         data; without the file no thresholds are reported)
    retain.csv           optional: sequences the regularised objectives retain on (the paper's GA
                         needs none; the harness's unlearning loop needs a retain set)

Assumed CSV format (that of the repo's `data/main/*.csv`): a header row, columns `doc_id,corpus,text`
(only `text` is required), fields quoted as the `csv` module writes them, texts with embedded newlines
allowed. Rows whose text is empty are dropped, as the reference's `dataset.dropna()` does.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from harness.benchmarks.synthetic_cache import ensure_cached
from harness.benchmarks.synthetic_cache import synth_dir as _synth_dir
from harness.benchmarks.tdec.synth import SPLITS, SYNTH_VERSION, SyntheticTdecSpec, generate_tdec
from harness.core.errors import DataError
from harness.core.io import atomic_write_text

COLUMNS = ("doc_id", "corpus", "text")


@dataclass
class TdecData:
    """TDEC sequences: `forget` (required), `retain` and `holdout` (empty when the files are absent)."""

    forget: list[dict]
    retain: list[dict]
    holdout: list[dict]
    source: str = ""
    files: dict[str, str] = field(default_factory=dict)


def write_csv(records: list[dict], path: str | Path) -> Path:
    """Write records as CSV with the `doc_id,corpus,text` header, atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(records)
    return atomic_write_text(path, buf.getvalue())


def write_tdec(splits: Mapping[str, list[dict]], out_dir: str | Path) -> Path:
    """Write each split as `{out_dir}/{split}.csv`."""
    out = Path(out_dir).expanduser()
    for name, records in splits.items():
        write_csv(records, out / f"{name}.csv")
    return out


def read_csv(path: str | Path) -> list[dict]:
    """Records of one TDEC CSV (`text` required; empty texts dropped); DataError naming the file."""
    path = Path(path)
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or "text" not in reader.fieldnames:
                raise DataError(f"{path}: expected a CSV with a 'text' column (header: {reader.fieldnames})")
            records = [dict(r) for r in reader]
    except (csv.Error, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not a readable UTF-8 CSV file: {err}") from None
    records = [r for r in records if r.get("text")]
    if not records:
        raise DataError(f"{path} has no sequences")
    return records


def synth_dir(data_dir: str | Path, synthetic: SyntheticTdecSpec, seed: int) -> Path:
    """Where the synthetic set of this spec and seed is cached: `{data_dir}/tdec-synth-<hash>`."""
    return _synth_dir(data_dir, "tdec", synthetic, seed, SYNTH_VERSION)


def ensure_synthetic(data_dir: str | Path, synthetic: SyntheticTdecSpec, seed: int) -> Path:
    """Generate and write the synthetic set unless a complete copy is cached; return its directory."""
    return ensure_cached(synth_dir(data_dir, synthetic, seed), [f"{name}.csv" for name in SPLITS],
                         lambda: generate_tdec(synthetic, seed), write_tdec)


def forget_file(directory: Path, forget_split: str) -> Path:
    """`{directory}/{forget_split}.csv`, else `{directory}/forget.csv`; DataError listing the CSVs otherwise."""
    for name in (forget_split, "forget"):
        path = directory / f"{name}.csv"
        if path.is_file():
            return path
    found = sorted(p.stem for p in directory.glob("*.csv"))
    raise DataError(f"TDEC forget set {directory / (forget_split + '.csv')} not found (nor forget.csv); "
                    f"CSV files there: {', '.join(found) or 'none'}")


def read_tdec_dir(directory: str | Path, forget_split: str) -> TdecData:
    """Read the forget CSV and, when present, `holdout.csv` and `retain.csv` of a directory."""
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise DataError(f"TDEC data directory {d} does not exist")
    files = {"forget": str(forget_file(d, forget_split))}
    splits = {"forget": read_csv(files["forget"]), "retain": [], "holdout": []}
    for name in ("retain", "holdout"):
        path = d / f"{name}.csv"
        if path.is_file():
            files[name] = str(path)
            splits[name] = read_csv(path)
    return TdecData(**splits, source=str(d), files=files)


def load_tdec(source: str, data_dir: str, synthetic: SyntheticTdecSpec, seed: int, forget_split: str) -> TdecData:
    """Load TDEC from `synthetic` (generated and cached) or a local directory of CSV files."""
    if source == "synthetic":
        return read_tdec_dir(ensure_synthetic(data_dir, synthetic, seed), forget_split)
    if not Path(source).expanduser().is_dir():
        raise DataError(f"benchmark.source {source!r}: TDEC reads 'synthetic' or a local directory of CSV "
                        "files (knowledge-unlearning's data/main); the directory does not exist")
    return read_tdec_dir(source, forget_split)


def corpus_texts(data: TdecData) -> list[str]:
    """Sorted distinct sequence texts of every split, for tokenizer training."""
    return sorted({r["text"] for recs in (data.forget, data.retain, data.holdout) for r in recs})
