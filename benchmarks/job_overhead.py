"""Fixed cost per training: one Ray Train worker group for every (method, seed) run vs one trainer per run.

The quickstart job on the embedded default (builtin tiny Llama, synthetic TOFU), with references trained
once into a temporary cache and every run cut to `--steps` optimizer steps, so the measurement is the cost
around the steps. Measured side by side in one process:

- `group x1`, `group xN`: the harness path, `run_unlearning_many` with 1 and with N runs (2 methods x N/2
  seeds) in one trainer; the marginal cost of an additional run is `(T_N - T_1) / (N - 1)`;
- `per-run xN`: the previous design, one `TorchTrainer` per run (`run_unlearning` N times);
- inside the workers, each run's own wall time (model copy, DeepSpeed engine, steps, checkpoint reports).

The last line printed is one JSON object with the times and ratios.

    python benchmarks/job_overhead.py              # N = 6, 5 steps per run: a few minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from harness.benchmarks import load_benchmark
from harness.core.ray_env import ensure_ray
from harness.pipeline.job import train_requests
from harness.spec import load_spec
from harness.train.ray_run import TrainingRequest, run_unlearning, run_unlearning_many
from harness.train.reference import prepare_references

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=6, help="N: runs of the larger job (2 methods x N/2 seeds)")
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per run")
    parser.add_argument("--skip-per-run", action="store_true", help="leave out the one-trainer-per-run variant")
    return parser.parse_args(argv)


def _time(fn: Any) -> tuple[float, Any]:
    began = time.perf_counter()
    out = fn()
    return time.perf_counter() - began, out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the variants, print a table and one JSON line; returns the summary."""
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="harness-overhead-"))
    seeds = list(range(max(1, args.runs // 2)))
    spec = load_spec(ROOT / "jobs" / "quickstart.yaml", [
        f"seeds={seeds}", f"train.max_steps={args.steps}", f"reference.cache_dir={tmp / 'cache'}",
        f"benchmark.data_dir={tmp / 'data'}", f"out={tmp / 'out'}"])
    bench = load_benchmark(spec.benchmark)
    refs = {spec.reference.seed: prepare_references(spec, bench, torch.device("cpu"), progress=False)}
    requests: list[TrainingRequest] = train_requests(spec, bench, refs)[: args.runs]
    n = len(requests)
    ensure_ray(spec.resources.address)  # Ray's own start-up is paid by every variant alike: not timed

    one_s, _ = _time(lambda: run_unlearning_many(requests[:1], spec, tmp / "one", progress=False))
    many_s, many = _time(lambda: run_unlearning_many(requests, spec, tmp / "many", progress=False))
    inside = [r.seconds for r in many.values()]
    per_run_s = float("nan")
    if not args.skip_per_run:
        per_run_s, _ = _time(lambda: [run_unlearning(r.method, spec, r.target, r.forget, r.retain,
                                                     tmp / f"alone-{i}", seed=r.seed) for i, r in enumerate(requests)])
    marginal = (many_s - one_s) / max(n - 1, 1)
    summary = {
        "runs": n, "steps_per_run": args.steps,
        "group_x1_s": round(one_s, 2), f"group_x{n}_s": round(many_s, 2), f"per_run_x{n}_s": round(per_run_s, 2),
        "marginal_s_per_additional_run": round(marginal, 2),
        "fixed_s_per_job": round(one_s - inside[0], 2) if inside else None,
        "inside_worker_s": {"first": round(inside[0], 2), "median_rest": round(statistics.median(inside[1:]), 2)
                            if n > 1 else None},
        "per_run_over_group": round(per_run_s / many_s, 2) if many_s else None,
    }
    print(f"{'variant':<22}{'runs':>6}{'wall s':>10}")
    print(f"{'group (harness)':<22}{1:>6}{one_s:>10.1f}")
    print(f"{'group (harness)':<22}{n:>6}{many_s:>10.1f}")
    if not args.skip_per_run:
        print(f"{'one trainer per run':<22}{n:>6}{per_run_s:>10.1f}")
    print(f"marginal cost of an additional run: {marginal:.2f} s (its {args.steps} steps included); "
          f"inside the worker: first run {inside[0]:.2f} s, later runs {summary['inside_worker_s']['median_rest']} s")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
