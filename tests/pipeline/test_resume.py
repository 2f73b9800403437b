"""SIGTERM handled like Ctrl-C, and `--resume` of an interrupted job, without Ray
(harness.core.signals, harness.pipeline.resume).

The job's phases are replaced where a test needs them to be interrupted; the slow end-to-end checks (a real
SIGTERM while training and while scoring, a resumed run equal to an uninterrupted one) are in
tests/e2e/test_interrupt.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import harness.pipeline.job
import harness.pipeline.score
from harness.cli import main
from harness.core.signals import Interrupted, cleaning_up, exit_code, sigterm_raises
from harness.pipeline.resume import check_same_spec, earlier_training, spec_differences
from harness.results.run_dir import RunDirectory, read_status
from harness.spec import dump_spec, load_spec

ROOT = Path(__file__).resolve().parents[2]
JOB = {"name": "tiny", "seeds": [0],
       "benchmark": {"synthetic": {"n_authors": 10, "qa_per_author": 2, "n_real_authors": 4, "n_world_facts": 4}},
       "methods": [{"name": "gd", "adapter": {"bound": "sine"}}]}


def _job(tmp_path: Path, out: Path) -> Path:
    data = json.loads(json.dumps(JOB))
    data["out"] = str(out)
    data["benchmark"]["data_dir"] = str(tmp_path / "data")
    data["reference"] = {"cache_dir": str(tmp_path / "cache")}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# ---- SIGTERM ------------------------------------------------------------------------------------------

def test_sigterm_raises_an_interruption_that_remembers_it_and_the_handler_is_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as caught, sigterm_raises():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except Interrupted:
            # Ray's blocking calls re-raise it as a plain KeyboardInterrupt: the signal is still known.
            assert exit_code(KeyboardInterrupt()) == 143
            raise
    assert isinstance(caught.value, KeyboardInterrupt) and exit_code(caught.value) == 143
    assert exit_code(KeyboardInterrupt()) == 130 and signal.getsignal(signal.SIGTERM) is before


def test_sigterm_during_a_run_exits_143_and_marks_it_interrupted_by_sigterm(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    def terminated(*args: Any, **kwargs: Any) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler sends it, while the references are prepared

    monkeypatch.setattr(harness.pipeline.job, "prepare_references", terminated)
    out = tmp_path / "out"
    assert main(["run", str(_job(tmp_path, out))]) == 143
    err = capsys.readouterr().err
    assert "run interrupted (SIGTERM)" in err and "interrupted (SIGTERM): harness run stopped" in err, err
    status = read_status(out)
    assert (status["state"], status["signal"], status["reason"]) == ("interrupted", "SIGTERM", None)


def test_a_second_signal_during_clean_up_ends_the_process_at_once() -> None:
    code = ("import os, signal, time\nfrom harness.core.signals import cleaning_up\nwith cleaning_up():\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n    time.sleep(30)\nprint('not reached')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 143 and "not reached" not in proc.stdout
    assert "second stop signal (SIGTERM) during clean-up: exiting at once" in proc.stderr
    with cleaning_up():  # the handlers in place before are back after it
        pass


# ---- the staging directory of an interrupted run ---------------------------------------------------------

def test_an_interrupted_run_keeps_its_progress_and_resume_adopts_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(Interrupted), RunDirectory(out) as run:
        (run.staging / "ray" / "unlearn").mkdir(parents=True)
        (run.staging / "spec.yaml").write_text("name: x\n")
        raise Interrupted(signal.SIGTERM)
    status = read_status(out)
    assert status["signal"] == "SIGTERM" and status["resume"] == str(run.staging) and run.staging.is_dir()
    with RunDirectory(out, resume=True, check_resume=lambda old: None) as again:
        assert again.resumed == run.staging and (again.staging / "ray" / "unlearn").is_dir()
        assert not run.staging.exists() or run.staging == again.staging
        again.commit()
    assert (out / "ray" / "unlearn").is_dir() and read_status(out)["state"] == "finished"


def test_a_resume_with_another_learning_rate_is_refused_naming_the_field(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    job = _job(tmp_path, out)
    staging = tmp_path / ".out.staging-12345"
    (staging / "ray" / "unlearn").mkdir(parents=True)
    (staging / "spec.yaml").write_text(dump_spec(load_spec(job)))
    out.mkdir()
    (out / "status.json").write_text(json.dumps({"state": "interrupted", "signal": "SIGTERM"}))
    assert main(["run", str(job), "--resume", "--set", "train.lr=0.5", "--set", "resources.num_workers=1"]) == 2
    err = capsys.readouterr().err
    assert "--resume: the job spec differs" in err and "in train.lr, methods.0.train.lr;" in err, err
    assert staging.is_dir() and read_status(out)["state"] == "interrupted"  # nothing changed
    check_same_spec(staging, load_spec(job, ["resources.num_workers=2", f"out={tmp_path / 'elsewhere'}"])
                    .model_dump(mode="json"))  # resources and output settings may change


def test_spec_differences_name_dotted_paths() -> None:
    old = {"train": {"lr": 1.0, "steps": 3}, "methods": [{"name": "a"}], "seeds": [0]}
    new = {"train": {"lr": 2.0, "steps": 3}, "methods": [{"name": "b"}], "seeds": [0, 1]}
    assert spec_differences(old, new) == ["train.lr", "methods.0.name", "seeds"]


# ---- earlier trainings: verified before reuse ----------------------------------------------------------

def _checkpoint(root: Path, name: str, adapter: Path | None, **state: Any) -> Path:
    ckpt = root / "ray" / "unlearn" / name
    ckpt.mkdir(parents=True)
    snapshot = root / "ray" / "unlearn" / "checkpoint_manager_snapshot.json"  # what Ray Train registered
    registered = json.loads(snapshot.read_text()) if snapshot.exists() else {"checkpoint_results": []}
    registered["checkpoint_results"].append({"checkpoint_dir_name": name})
    snapshot.write_text(json.dumps(registered))
    if adapter is not None:
        shutil.copytree(adapter, ckpt / "adapter")
    (ckpt / "engine").mkdir()
    (ckpt / "state.json").write_text(json.dumps(state))
    return ckpt


def _log(method: str, seed: int, n: int) -> list[dict[str, Any]]:
    return [{"method": method, "seed": seed, "step": i, "loss": 1.0} for i in range(n)]


def test_finished_trainings_are_verified_and_partial_ones_found(tmp_path: Path, hand_made_run: Any) -> None:
    adapter = hand_made_run.run_dir / "checkpoints" / "gd_sine"
    done = {"done": True, "diverged": False, "reason": None, "prepare": {}}
    good = _checkpoint(tmp_path, "checkpoint_1", adapter, key="a/seed0", step=3, log=_log("a", 0, 3), **done)
    damaged = _checkpoint(tmp_path, "checkpoint_2", adapter, key="b/seed0", step=3, log=_log("b", 0, 3), **done)
    (damaged / "adapter" / "adapter_model.safetensors").write_bytes(b"truncated")
    short = _checkpoint(tmp_path, "checkpoint_3", adapter, key="c/seed0", step=2, log=_log("c", 0, 2), **done)
    _checkpoint(tmp_path, "checkpoint_4", None, key="d/seed0", step=2, log=_log("d", 0, 2), done=False)
    _checkpoint(tmp_path, "checkpoint_5", None, key="d/seed0", step=4, log=_log("d", 0, 4), done=False)
    unregistered = tmp_path / "ray" / "unlearn" / "checkpoint_6"  # written, but its report never registered
    shutil.copytree(tmp_path / "ray" / "unlearn" / "checkpoint_5", unregistered)
    (unregistered / "state.json").write_text(json.dumps({"key": "d/seed0", "step": 6, "log": _log("d", 0, 6)}))
    found = earlier_training(tmp_path, [(f"{m}/seed0", m, 0, 3) for m in "abcd"])
    assert found.finished == {"a/seed0": good}
    assert found.partial == {"d/seed0": tmp_path / "ray" / "unlearn" / "checkpoint_5"}
    assert found.partial_step == {"d/seed0": 4}
    assert len(found.warnings) == 2
    assert f"the finished training b/seed0 in {damaged} is damaged (its adapter is damaged:" in found.warnings[0]
    assert f"the finished training c/seed0 in {short} is damaged (it has 2 of 3 steps)" in found.warnings[1]


# ---- eval --resume: only what is not scored yet ------------------------------------------------------------

def test_an_interrupted_eval_resumes_scoring_only_the_models_not_scored_yet(
        tmp_path: Path, hand_made_run: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
        one_thread: None) -> None:
    spec = tmp_path / "eval.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "ev", "model": {"name": "builtin:tiny-llama"},
        "benchmark": {"name": "tofu", "data_dir": str(tmp_path / "data"),
                      "synthetic": {"n_authors": 10, "qa_per_author": 2, "n_real_authors": 4, "n_world_facts": 4}},
        "reference": {"mode": "load", "target": str(hand_made_run.target_dir), "retain": str(hand_made_run.retain_dir)},
        "eval": {"bootstrap": 0, "max_new_tokens": 4}, "tracking": None}))
    argv = ["eval", str(spec), "--model", f"r={hand_made_run.run_dir},method=gd_sine", "--model",
            f"l={hand_made_run.run_dir},method=gd_lora"]
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    scored: list[int] = []
    real = harness.pipeline.score.score_model

    def stop_at_the_fourth(*args: Any, **kwargs: Any) -> Any:
        scored.append(1)
        if len(scored) == 4:  # target, retain and `r` are scored; SIGTERM while `l` is
            raise Interrupted(signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(harness.pipeline.score, "score_model", stop_at_the_fourth)
    out = tmp_path / "stopped"
    assert main([*argv, "--out", str(out)]) == 143
    assert read_status(out)["resume"]
    capsys.readouterr()
    scored.clear()
    assert main([*argv, "--out", str(out), "--resume"]) == 0
    assert len(scored) == 1  # `l` alone
    err = capsys.readouterr().err
    assert "reusing the scores of target/seed0, retain/seed0, r/seed0 from the interrupted run" in err, err
    assert (out / "summary.md").read_text() == (tmp_path / "whole" / "summary.md").read_text()
    assert not (out / "scores").exists()
