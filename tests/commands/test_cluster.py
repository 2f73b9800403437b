"""cluster.yaml against Ray's own cluster schema, and the job specs against its node types."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.cli import main
from harness.commands.cluster import check_cluster

ROOT = Path(__file__).resolve().parents[2]
GPU_TYPE = "gpu_8x_a100"


@pytest.fixture(scope="module")
def shipped() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


@pytest.fixture
def write(tmp_path: Path, shipped: dict[str, Any]):
    """Write a modified copy of the shipped config (with the repo's jobs/ and empty mount sources) to check."""
    shutil.copytree(ROOT / "jobs", tmp_path / "jobs")
    config = copy.deepcopy(shipped)
    config["file_mounts"] = {"~/harness/jobs": "./jobs"}

    def _write(change=lambda c: None) -> Path:
        c = copy.deepcopy(config)
        change(c)
        path = tmp_path / "cluster.yaml"
        path.write_text(yaml.safe_dump(c))
        return path

    return _write


def test_shipped_cluster_config_passes(shipped: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert check_cluster(ROOT / "cluster.yaml") == []
    assert main(["cluster", "check", str(ROOT / "cluster.yaml")]) == 0
    assert capsys.readouterr().out.startswith("OK")
    # What the harness relies on: a CPU head and an autoscaling 8-GPU worker type with explicit resources.
    gpu = shipped["available_node_types"][GPU_TYPE]
    assert gpu["resources"] == {"CPU": 96, "GPU": 8} and gpu["min_workers"] < gpu["max_workers"]
    assert shipped["provider"]["type"] == "aws"
    assert any("pip install" in c and "--no-deps -r locks/gpu.txt" in c for c in shipped["setup_commands"])


def test_cluster_image_runs_the_locked_ray(shipped: dict[str, Any]) -> None:
    # A Jobs client (the CPU lock) and the cluster (its image and the GPU lock) must run one Ray version.
    from harness.stack import read_lock

    image_ray = shipped["docker"]["image"].split(":")[1].split("-")[0]
    assert read_lock(ROOT / "locks" / "gpu.txt").pins["ray"][1] == image_ray
    assert read_lock(ROOT / "locks" / "cpu.txt").pins["ray"][1] == image_ray


def test_missing_provider_type_is_a_schema_error(write) -> None:
    problems = check_cluster(write(lambda c: c["provider"].pop("type")))
    assert problems == ["provider: 'type' is a required property"]


def test_unknown_provider_is_named(write) -> None:
    (problem,) = check_cluster(write(lambda c: c["provider"].update(type="nimbus")))
    assert "provider.type" in problem and "'nimbus'" in problem and "aws" in problem


def test_worker_type_without_resources(write, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(lambda c: c["available_node_types"][GPU_TYPE].pop("resources"))
    assert check_cluster(path) == [f"available_node_types.{GPU_TYPE}: 'resources' is a required property"]
    assert main(["cluster", "check", str(path)]) == 2
    assert "'resources' is a required property" in capsys.readouterr().out
    # Empty resources are valid for Ray (it reads them off the instance type) but leave nothing to check.
    (problem,) = check_cluster(write(lambda c: c["available_node_types"][GPU_TYPE].update(resources={})))
    assert f"available_node_types.{GPU_TYPE}.resources: declare CPU" in problem


def test_ray_semantic_checks(write) -> None:
    (problem,) = check_cluster(write(lambda c: c.update(head_node_type="nope")))
    assert "head_node_type" in problem
    (problem,) = check_cluster(write(lambda c: c["available_node_types"][GPU_TYPE].update(min_workers=3)))
    assert "max_workers" in problem


def test_missing_mount_source(write) -> None:
    (problem,) = check_cluster(write(lambda c: c["file_mounts"].update({"~/data": "./no_such_dir"})))
    assert problem.startswith("file_mounts.~/data: local path './no_such_dir' does not exist")


def test_job_needing_more_gpus_than_the_cluster_is_flagged(write, tmp_path: Path) -> None:
    job = yaml.safe_load((ROOT / "jobs" / "tofu_llama31_8b.yaml").read_text())
    job["resources"]["num_workers"] = 32
    job["train"]["batch_size"] = 64
    (tmp_path / "jobs" / "huge.yaml").write_text(yaml.safe_dump(job))
    problems = check_cluster(write())
    assert len(problems) == 1
    assert problems[0].startswith("huge.yaml: resources.num_workers=32: 32 workers of 4 CPUs and 1 GPU plus 1 GPU "
                                  "for the driver")
    assert "at most 15 such workers" in problems[0]  # 2 nodes x 8 GPUs, one kept by the driver


def test_one_node_of_8_gpus_is_too_small_next_to_the_driver(write) -> None:
    problems = check_cluster(write(lambda c: c.update(max_workers=1)))
    assert problems and all("do not fit" in p for p in problems)
    assert any(p.startswith("tofu_llama31_8b.yaml: resources.num_workers=8") for p in problems)
    assert any(p.startswith("tofu_llama31_8b.yaml: eval.workers=8") for p in problems)


def test_worker_cpus_must_fit_a_node(write, tmp_path: Path) -> None:
    job = yaml.safe_load((ROOT / "jobs" / "tofu_phi15.yaml").read_text())
    job["resources"]["cpus_per_worker"] = 128
    (tmp_path / "jobs" / "fat.yaml").write_text(yaml.safe_dump(job))
    (problem,) = check_cluster(write())
    assert problem.startswith("fat.yaml: resources.cpus_per_worker=128 with a GPU: no node type has room")


def test_gpu_jobs_on_a_cluster_without_gpus(write) -> None:
    problems = check_cluster(write(lambda c: c["available_node_types"][GPU_TYPE].update(resources={"CPU": 96})))
    assert any(p.startswith("tofu_llama31_8b.yaml: resources.device is cuda") for p in problems)


def test_invalid_job_spec_is_reported(write, tmp_path: Path) -> None:
    (tmp_path / "jobs" / "bad.yaml").write_text("methods: [{name: x}]\nresources: {num_workers: 0}\n")
    (problem,) = check_cluster(write())
    assert "bad.yaml" in problem and "resources.num_workers" in problem
