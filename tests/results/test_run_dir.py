"""A run directory always describes the results in it: staging, status.json, --overwrite, readers of finished runs.

Every test here runs in this process without Ray: the job's phases are replaced where a test needs them to
fail, to be interrupted, or to finish at once.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml

import harness.pipeline.job
from harness.cli import main
from harness.core.errors import DataError, OutputError
from harness.results.run_dir import STATUS_NAME, RunDirectory, check_out_dir, read_status, require_finished
from harness.results.run_record import load_finished_run
from harness.spec import load_spec

# The smallest job that gets past the preflight and the data: its phases are replaced by each test.
JOB = {"name": "tiny", "seeds": [0],
       "benchmark": {"synthetic": {"n_authors": 10, "qa_per_author": 2, "n_real_authors": 4, "n_world_facts": 4}},
       "methods": [{"name": "gd", "adapter": {"bound": "sine"}}]}


def _tree(path: Path) -> dict[str, str]:
    """Every file under `path` (relative name -> sha256 of its bytes)."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _job(tmp_path: Path, out: Path, **benchmark: Any) -> Path:
    data = json.loads(json.dumps(JOB))
    data["out"] = str(out)
    data["benchmark"].update({"data_dir": str(tmp_path / "data"), **benchmark})
    data["reference"] = {"cache_dir": str(tmp_path / "cache")}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.") and
                  not p.name.endswith(".lock"))


@pytest.fixture
def earlier_run(hand_made_run: Any, tmp_path: Path) -> Path:
    """A copy of a finished run (written before status.json existed: its metrics make it finished)."""
    return Path(shutil.copytree(hand_made_run.run_dir, tmp_path / "run"))


def _finish_at_once(ctx: Any, progress: bool) -> harness.pipeline.context.JobResult:
    (ctx.out / "metrics.parquet").write_bytes(b"new metrics")
    (ctx.out / "spec.yaml").write_text(f"name: {ctx.spec.name}\n")
    for name in ("env.json", "models.json"):
        (ctx.out / name).unlink(missing_ok=True)
    return harness.pipeline.context.JobResult(ctx.out, "the new table")


# ---- the lifecycle ------------------------------------------------------------------------------------

def test_a_finished_run_replaces_the_out_dir_only_at_its_end(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with RunDirectory(out) as run:
        assert read_status(out)["state"] == "running" and read_status(out)["pid"] > 0
        (run.staging / "metrics.parquet").write_bytes(b"m")
        assert not (out / "metrics.parquet").exists()  # nothing is visible before the run finishes
        with pytest.raises(OutputError, match=f"output directory {out} is in use by another run"):
            RunDirectory(out).__enter__()
        run.commit()
    assert read_status(out)["state"] == "finished" and (out / "metrics.parquet").read_bytes() == b"m"
    assert _leftovers(out) == []
    require_finished(out)


@pytest.mark.parametrize("error, state, reason", [(DataError("bad model"), "failed", "bad model"),
                                                  (RuntimeError("boom"), "failed", "RuntimeError: boom"),
                                                  (KeyboardInterrupt(), "interrupted", None)])
def test_a_run_that_ends_early_is_marked_and_leaves_nothing_behind(tmp_path: Path, error: BaseException,
                                                                   state: str, reason: str | None) -> None:
    out = tmp_path / "out"
    with pytest.raises(type(error)), RunDirectory(out) as run:
        (run.staging / "spec.yaml").write_text("x")
        raise error
    status = read_status(out)
    assert (status["state"], status["reason"]) == (state, reason) and status["ended"]
    assert sorted(p.name for p in out.iterdir()) == [STATUS_NAME] and _leftovers(out) == []
    with pytest.raises(DataError, match=f"{out} is not a finished run: its status.json says {state}"):
        require_finished(out)
    check_out_dir(out)  # an unfinished attempt does not make the out dir used: the next run takes it


def test_a_killed_run_is_recognised_and_its_staging_removed_by_the_next(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / STATUS_NAME).write_text(json.dumps({"state": "running", "pid": 2**22 + 7, "host": __import__(
        "socket").gethostname()}))
    stale = tmp_path / ".out.staging-99999"
    stale.mkdir()
    with pytest.raises(DataError, match="that process is gone: it was killed before it finished"):
        load_finished_run(out)
    with RunDirectory(out) as run:
        assert not stale.exists()
        run.commit()


# ---- used and unusable out dirs -----------------------------------------------------------------------

def test_a_used_out_dir_is_refused_without_overwrite(earlier_run: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    before = _tree(earlier_run)
    assert main(["run", str(_job(tmp_path, earlier_run))]) == 2
    err = capsys.readouterr().err
    assert f"output directory {earlier_run} already holds a finished run's results; pass --overwrite" in err
    assert _tree(earlier_run) == before


def test_a_non_empty_directory_that_is_not_a_run_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=f"{tmp_path} is not empty and is not a run directory"):
        check_out_dir(tmp_path, overwrite=True)


@pytest.mark.parametrize("where", ["under_a_file", "read_only"])
def test_an_out_dir_that_cannot_be_written_exits_2_naming_it(tmp_path: Path, where: str,
                                                             capsys: pytest.CaptureFixture,
                                                             request: pytest.FixtureRequest) -> None:
    if where == "under_a_file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "out"
    else:
        out = request.getfixturevalue("read_only_dir") / "out"
    assert main(["run", str(_job(tmp_path, out))]) == 2
    err = capsys.readouterr().err
    assert f"output directory {out} cannot be created" in err and "Traceback" not in err


# ---- a failed or interrupted rerun keeps the earlier results ----------------------------------------

def test_a_rerun_with_a_bad_data_source_leaves_the_earlier_run_byte_identical(
        earlier_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    before = _tree(earlier_run)
    job = _job(tmp_path, earlier_run, source=str(tmp_path / "no-such-data"))
    assert main(["run", str(job), "--overwrite"]) == 2
    assert f"directory {tmp_path / 'no-such-data'} does not exist" in capsys.readouterr().err
    assert _tree(earlier_run) == before and _leftovers(earlier_run) == []


@pytest.mark.parametrize("error, code", [(DataError("the target model is broken"), 2), (KeyboardInterrupt(), 130)])
def test_a_rerun_that_fails_after_starting_leaves_the_earlier_run_byte_identical(
        earlier_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
        error: BaseException, code: int) -> None:
    def fail(*args: Any, **kwargs: Any) -> None:
        raise error

    monkeypatch.setattr(harness.pipeline.job, "prepare_references", fail)  # after spec.yaml and env.json are staged
    before = _tree(earlier_run)
    assert main(["run", str(_job(tmp_path, earlier_run)), "--overwrite"]) == code
    assert "earlier results in" in capsys.readouterr().err
    assert _tree(earlier_run) == before and _leftovers(earlier_run) == []
    load_finished_run(earlier_run)


def test_an_interrupted_fresh_run_is_marked_interrupted_and_the_sigint_handler_is_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    def interrupt(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(harness.pipeline.job, "prepare_references", interrupt)  # Ctrl-C while training references
    handler = signal.getsignal(signal.SIGINT)
    out = tmp_path / "out"
    assert main(["run", str(_job(tmp_path, out))]) == 130
    err = capsys.readouterr().err
    assert "run interrupted (Ctrl-C)" in err and f"{out} is marked interrupted" in err
    assert read_status(out)["state"] == "interrupted" and signal.getsignal(signal.SIGINT) is handler
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 2
    assert f"{out} is not a finished run: its status.json says interrupted" in capsys.readouterr().err


def test_overwrite_replaces_the_results_when_the_rerun_finishes(earlier_run: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness.pipeline.job, "prepare_references", lambda *a, **k: None)
    monkeypatch.setattr(harness.pipeline.job, "_train_and_score", _finish_at_once)
    result = harness.pipeline.job.run_job(load_spec(_job(tmp_path, earlier_run)), overwrite=True)
    assert result.out_dir == earlier_run and result.summary == "the new table"
    assert sorted(p.name for p in earlier_run.iterdir()) == ["metrics.parquet", "spec.yaml", STATUS_NAME]
    assert read_status(earlier_run)["state"] == "finished" and _leftovers(earlier_run) == []


# ---- readers ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("state", ["running", "failed"])
def test_report_and_export_refuse_an_unfinished_run(earlier_run: Path, tmp_path: Path, state: str,
                                                     capsys: pytest.CaptureFixture) -> None:
    (earlier_run / STATUS_NAME).write_text(json.dumps({"state": state, "reason": "out of memory", "pid": 1,
                                                       "host": "elsewhere"}))
    assert main(["report", str(earlier_run), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert f"{earlier_run} is not a finished run: its status.json says" in err
    assert ("failed: out of memory" if state == "failed" else "still running (pid 1 on elsewhere") in err
    assert main(["export", str(earlier_run), "--method", "gd_sine", "--out", str(tmp_path / "e")]) == 2
    assert "is not a finished run" in capsys.readouterr().err
    (earlier_run / STATUS_NAME).write_text('{"state": ')
    with pytest.raises(DataError, match=f"run status {earlier_run / STATUS_NAME} is not valid JSON"):
        require_finished(earlier_run)
