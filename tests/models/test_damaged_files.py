"""Damaged files and impossible paths: a HarnessError naming the file or directory (exit 2), never a traceback."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness.cli import main
from harness.core.errors import DataError, ModelError, OutputError
from harness.core.io import ensure_writable_dir, read_json_file, read_parquet_file
from harness.models.text import build_builtin, load_pretrained, save_model
from harness.models.tokenizer import get_or_train_tokenizer, load_tokenizer, train_bpe_tokenizer

TEXTS = ["Fuleil Lairu was born in 1922.", "Where was Fuleil Lairu born?", "In Broulbury."] * 5


def _truncate(path: Path, keep: float = 0.5) -> Path:
    os.truncate(path, int(path.stat().st_size * keep))
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tok = train_bpe_tokenizer(TEXTS, vocab_size=300)
    return save_model(build_builtin("tiny-llama", len(tok), seed=0), tok, tmp_path_factory.mktemp("m") / "model")


@pytest.fixture
def damaged_copy(model_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(model_dir, tmp_path / "model"))


# ---- model weights, tokenizers, adapters ------------------------------------------------------------

@pytest.mark.parametrize("keep", [0.5, 0.0])
def test_truncated_weights_name_the_file(damaged_copy: Path, keep: float) -> None:
    weights = _truncate(damaged_copy / "model.safetensors", keep)
    with pytest.raises(ModelError, match=f"{weights} is not a readable safetensors file .truncated"):
        load_pretrained(str(damaged_copy))


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json", "config.json"])
def test_truncated_json_of_a_model_names_the_file(damaged_copy: Path, name: str) -> None:
    path = _truncate(damaged_copy / name)
    with pytest.raises(ModelError, match=f"{path} is not valid JSON"):
        load_pretrained(str(damaged_copy))
    if name.startswith("tokenizer"):
        with pytest.raises(ModelError, match=f"tokenizer in {damaged_copy}: {path} is not valid JSON"):
            load_tokenizer(damaged_copy)


def test_a_sound_model_still_loads(model_dir: Path) -> None:
    model, tokenizer = load_pretrained(str(model_dir))
    assert model.config.model_type == "llama" and tokenizer.pad_token_id == 0


# ---- results: parquet and JSON ------------------------------------------------------------------------

def _run_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    pd.DataFrame([{"method": "target", "benchmark": "tofu", "split": "forget10", "metric": "prob", "value": 0.9}]
                 ).to_parquet(path / "metrics.parquet")
    pd.DataFrame([{"method": "gd", "step": 0, "loss": 1.0}]).to_parquet(path / "train_log.parquet")
    (path / "spec.yaml").write_text(yaml.safe_dump({"name": path.name}))
    (path / "env.json").write_text(json.dumps({"git_commit": "abc", "seeds": [0]}))
    return path


@pytest.mark.parametrize("name", ["metrics.parquet", "train_log.parquet", "env.json"])
def test_report_on_a_damaged_run_file_exits_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                        name: str) -> None:
    run = _run_dir(tmp_path / "run")
    path = _truncate(run / name)
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and ("truncated" in err or "damaged" in err)


def test_readers_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('{"x": ')
    with pytest.raises(DataError, match=f"bound config {tmp_path / 'a.json'} is not valid JSON"):
        read_json_file(tmp_path / "a.json", "bound config")
    (tmp_path / "b.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(DataError, match="is not UTF-8"):
        read_json_file(tmp_path / "b.json")
    with pytest.raises(DataError, match="is missing"):
        read_json_file(tmp_path / "none.json")
    (tmp_path / "c.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=f"{tmp_path / 'c.parquet'} is not a readable parquet file"):
        read_parquet_file(tmp_path / "c.parquet")


def test_nightly_names_a_damaged_job_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.commands.nightly.run
    from harness.commands.nightly import run_suite
    from harness.pipeline.context import JobResult

    def damaged_job(spec, progress=True):  # noqa: ANN001, ANN202 - writes a run whose metrics are cut short
        out = _run_dir(spec.out_dir())
        _truncate(out / "metrics.parquet")
        return JobResult(out, "summary", {})

    monkeypatch.setattr(harness.commands.nightly.run, "run_job", damaged_job)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({"name": "tiny", "methods": [{"name": "gd"}]}))
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"name": "t", "out": str(tmp_path / "runs"), "jobs": [{"spec": "tiny.yaml"}],
                                     "history": str(tmp_path / "history.parquet")}))
    result = run_suite(suite, progress=False)  # the job is recorded as failed, naming the file
    assert "DataError" in result.failures["tiny"] and "metrics.parquet is not a readable parquet file" \
        in result.failures["tiny"]


# ---- directories that cannot be written ---------------------------------------------------------------

def test_ensure_writable_dir(tmp_path: Path, read_only_dir: Path) -> None:
    assert ensure_writable_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b" and (tmp_path / "a" / "b").is_dir()
    assert list((tmp_path / "a" / "b").iterdir()) == []  # the write probe is gone
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=f"output directory {tmp_path / 'file' / 'out'} cannot be created: "
                                          f"{tmp_path / 'file'} is a file"):
        ensure_writable_dir(tmp_path / "file" / "out")
    with pytest.raises(OutputError, match="it is a file, not a directory"):
        ensure_writable_dir(tmp_path / "file")
    with pytest.raises(OutputError, match=f"{read_only_dir} is not writable"):
        ensure_writable_dir(read_only_dir)
    with pytest.raises(OutputError, match=f"{read_only_dir / 'sub'} cannot be created"):
        ensure_writable_dir(read_only_dir / "sub")


def test_cli_outputs_that_cannot_be_written_exit_2_naming_them(tmp_path: Path, read_only_dir: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    run = _run_dir(tmp_path / "run")
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file" / "report", read_only_dir):
        assert main(["report", str(run), "--out", str(out)]) == 2
        assert f"report directory {out}" in capsys.readouterr().err
    for out in (tmp_path / "file" / "tofu", read_only_dir / "tofu"):
        assert main(["data", "synth", "tofu", "--out", str(out)]) == 2
        assert f"output directory {out}" in capsys.readouterr().err
    suite = tmp_path / "suite.yaml"
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({"name": "tiny", "methods": [{"name": "gd"}]}))
    suite.write_text(yaml.safe_dump({"name": "t", "jobs": [{"spec": "tiny.yaml"}],
                                     "history": str(tmp_path / "history.parquet")}))
    assert main(["nightly", str(suite), "--out", str(read_only_dir)]) == 2
    assert f"nightly run directory {read_only_dir}" in capsys.readouterr().err


def test_a_cache_directory_that_cannot_be_created_names_it(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=f"cache directory {tmp_path / 'file' / 'tok'} cannot be created"):
        get_or_train_tokenizer(TEXTS, tmp_path / "file" / "tok", vocab_size=300)
