"""Check a Ray cluster launcher config (cluster.yaml) against Ray's own schema and the job specs it must run.

`check_cluster` returns the problems, one line each (empty: the config is fine):

1. the config against `ray/autoscaler/ray-schema.json`, the schema `ray up` validates with (every error,
   with its path), then Ray's own preparation (`prepare_config` + `validate_config`: provider defaults,
   head node type, min/max workers), as `ray up` does before it contacts the cloud;
2. what the harness needs on top: worker node types that declare their CPUs (and GPUs), and local
   `file_mounts` sources that exist (relative to the config's directory, where `ray up` runs);
3. every job spec in `jobs/` against the node types at their maximum count: one worker
   (`resources.cpus_per_worker` CPUs, a GPU when `resources.use_gpu`) fits some node type, and
   `resources.num_workers` (training) and `eval.workers` (scoring, when > 1) workers fit at once, next
   to the driver's GPU when `resources.device` is `cuda` (`harness submit` reserves one for it).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.commands.study.spec import is_study
from harness.core.errors import HarnessError, SpecError
from harness.spec import validate_spec


@dataclass(frozen=True)
class NodeType:
    """A node type of the cluster: its Ray resources and how many such nodes the autoscaler may run."""

    name: str
    cpus: float
    gpus: float
    count: int

    def slots(self, cpus: float, gpus: float, reserved_gpus: float = 0) -> int:
        """How many workers of `cpus` CPUs and `gpus` GPUs fit on one node of this type."""
        fits = [math.floor(self.cpus / cpus) if cpus > 0 else math.inf]
        if gpus > 0:
            fits.append(math.floor(max(0.0, self.gpus - reserved_gpus) / gpus))
        n = min(fits)
        return 0 if n == math.inf else int(n)

    def describe(self) -> str:
        return f"{self.name}: {_n(self.cpus, 'CPU')}, {_n(self.gpus, 'GPU')}"


def _n(value: float, unit: str) -> str:
    return f"{value:g} {unit}" + ("" if value == 1 else "s")


def _ray_schema() -> dict[str, Any]:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def _where(path: Iterable[Any]) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def schema_problems(config: Any) -> list[str]:
    """Every violation of Ray's cluster-config schema (ray/autoscaler/ray-schema.json), path first."""
    import jsonschema

    schema = _ray_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{_where(e.absolute_path)}: {e.message}" for e in errors]


def ray_problems(config: dict[str, Any]) -> list[str]:
    """What Ray's own preparation and validation (as in `ray up`, before any cloud call) reject."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    provider = config["provider"]["type"]
    try:
        from ray.autoscaler._private.providers import _DEFAULT_CONFIGS

        known = sorted([*_DEFAULT_CONFIGS, "external"])
    except ImportError:  # a private module: only the message loses the list
        known = []
    if known and provider not in known:
        return [f"provider.type: Ray has no node provider {provider!r} (known: {', '.join(known)})"]
    ray_log = logging.getLogger("ray.autoscaler._private.util")  # its "setting max workers" notes
    level = ray_log.level
    ray_log.setLevel(logging.WARNING)
    try:
        validate_config(prepare_config(copy.deepcopy(config)))
    except Exception as err:  # Ray raises ValueError, RuntimeError, AssertionError, jsonschema errors
        msg = getattr(err, "message", None) or str(err) or type(err).__name__
        return [f"Ray rejects the config: {msg}"]
    finally:
        ray_log.setLevel(level)
    return []


def node_types(config: dict[str, Any]) -> tuple[list[NodeType], list[str]]:
    """The node types with their declared resources and maximum counts, and what is missing to check fits."""
    problems = []
    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    global_max = int(config.get("max_workers", 2))
    nodes = []
    for name, t in types.items():
        res = (t or {}).get("resources") or {}
        if name != head and "CPU" not in res:
            problems.append(f"available_node_types.{name}.resources: declare CPU (and GPU on GPU nodes), e.g. "
                            '{"CPU": 96, "GPU": 8}, so job specs can be checked against this node type')
        count = 1 if name == head else min(int(t.get("max_workers", global_max)), global_max)
        nodes.append(NodeType(name, float(res.get("CPU", 0)), float(res.get("GPU", 0)), count))
    return nodes, problems


def mount_problems(config: dict[str, Any], base: Path) -> list[str]:
    """Local `file_mounts` sources that do not exist (relative paths: from the config's directory)."""
    problems = []
    for remote, local in (config.get("file_mounts") or {}).items():
        src = Path(os.path.expanduser(str(local)))
        if not src.is_absolute():
            src = base / src
        if not src.exists():
            problems.append(f"file_mounts.{remote}: local path {local!r} does not exist ({src})")
    return problems


def _capacity(nodes: list[NodeType], global_max: int, head: str | None, cpus: float, gpus: float,
              driver_gpu: bool) -> int:
    """Most workers of (`cpus`, `gpus`) the cluster holds at once at its maximum size."""
    per_node: list[tuple[NodeType, int]] = []
    workers_left = global_max
    head_nodes = [n for n in nodes if n.name == head]
    others = sorted((n for n in nodes if n.name != head), key=lambda n: -n.slots(cpus, gpus))
    for n in head_nodes:
        per_node.append((n, n.slots(cpus, gpus)))
    for n in others:
        take = min(n.count, workers_left)
        workers_left -= take
        per_node += [(n, n.slots(cpus, gpus))] * take
    total = sum(s for _, s in per_node)
    if driver_gpu:
        losses = [s - n.slots(cpus, gpus, reserved_gpus=1) for n, s in per_node if n.gpus >= 1]
        if not losses:
            return -1
        total -= min(losses)
    return total


def job_problems(spec: Any, label: str, nodes: list[NodeType], global_max: int, head: str | None) -> list[str]:
    """Whether one job spec's Ray resource requests fit the cluster's node types."""
    res = spec.resources
    problems = []
    driver_gpu = res.device == "cuda"
    if driver_gpu and not any(n.gpus >= 1 for n in nodes):
        return [f"{label}: resources.device is cuda (the driver needs a GPU) but no node type has a GPU"]
    phases = [("resources.num_workers", res.num_workers, 1.0 if res.use_gpu else 0.0)]
    if spec.eval.workers > 1:
        phases.append(("eval.workers", spec.eval.workers, 1.0 if (res.use_gpu or driver_gpu) else 0.0))
    known = "; ".join(n.describe() for n in nodes)
    for field, count, gpus in phases:
        cpus = float(res.cpus_per_worker)
        if not any(n.slots(cpus, gpus) >= 1 for n in nodes):
            if gpus and not any(n.gpus >= gpus for n in nodes):
                problems.append(f"{label}: resources.use_gpu asks for a GPU per worker but no node type has a GPU "
                                f"({known})")
            else:
                problems.append(f"{label}: resources.cpus_per_worker={res.cpus_per_worker}"
                                + (" with a GPU" if gpus else "")
                                + f": no node type has room for one worker ({known})")
            continue
        cap = _capacity(nodes, global_max, head, cpus, gpus, driver_gpu)
        if cap < count:
            need = f"{count} workers of {_n(cpus, 'CPU')}" + (f" and {_n(gpus, 'GPU')}" if gpus else "")
            if driver_gpu:
                need += " plus 1 GPU for the driver (resources.device: cuda)"
            problems.append(f"{label}: {field}={count}: {need} do not fit; the cluster holds at most {max(cap, 0)} "
                            f"such workers at max_workers={global_max} ({known}; counts: "
                            + ", ".join(f"{n.name} x{n.count}" for n in nodes) + ")")
    return list(dict.fromkeys(problems))  # training and scoring workers alike may not fit: say it once


def _job_specs(jobs_dir: Path) -> list[tuple[Path, dict[str, Any] | None]]:
    """The job specs of a directory: YAML files with a `methods` list (suites, search spaces and study specs, which
    name their `job`, skipped: the job a study names is checked itself)."""
    found = []
    for path in sorted(jobs_dir.glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError:
            found.append((path, None))
            continue
        if isinstance(data, dict) and "methods" in data and not is_study(data):
            found.append((path, data))
    return found


def check_cluster(path: str | Path, jobs_dir: str | Path | None = None) -> list[str]:
    """Problems of a Ray cluster config and of the job specs (default: `jobs/` beside it) it must run."""

    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"cluster config {path} does not exist")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        return [f"{path} is not valid YAML: {err}"]
    if not isinstance(config, dict):
        return [f"{path}: expected a mapping at the top level"]
    problems = schema_problems(config)
    if problems:
        return problems  # Ray's preparation assumes a schema-valid config
    problems += ray_problems(config)
    nodes, node_missing = node_types(config)
    problems += node_missing
    problems += mount_problems(config, path.resolve().parent)
    if problems:
        return problems
    jobs = Path(jobs_dir) if jobs_dir is not None else path.resolve().parent / "jobs"
    if not jobs.is_dir():
        return [f"jobs directory {jobs} does not exist"]
    for spec_path, data in _job_specs(jobs):
        label = spec_path.name if jobs_dir is None else str(spec_path)
        if data is None:
            problems.append(f"{label}: not valid YAML")
            continue
        try:
            spec = validate_spec(data, label)
        except SpecError as err:
            problems.append(str(err))
            continue
        problems += job_problems(spec, label, nodes, int(config.get("max_workers", 2)),
                                 config.get("head_node_type"))
    return problems


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`harness cluster`'s subcommand (`check`) and its arguments."""
    sub = parser.add_subparsers(dest="cluster_command", required=True)
    check = sub.add_parser("check", help="validate a cluster config (Ray's schema) and that the jobs fit")
    check.add_argument("config", help="Ray cluster launcher config, e.g. cluster.yaml")
    check.add_argument("--jobs", help="directory of job specs to check (default: jobs/ beside the config)")


def main(args: argparse.Namespace) -> int:
    """`harness cluster check`: print each problem (exit 2) or OK."""
    problems = check_cluster(args.config, args.jobs)
    if problems:
        print(f"{args.config}: {len(problems)} problem(s)")
        for p in problems:
            print(f"  - {p}")
        return 2
    print(f"OK: {args.config} passes Ray's cluster schema and fits every job spec in {args.jobs or 'jobs/'}")
    return 0
