"""Smoke test of benchmarks/bounded_step.py: runs at a tiny shape and ends with its JSON summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bounded_step_runs_and_ends_with_json() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bounded_step.py"), "--shape", "64,128,32", "--repeats", "1",
         "--device", "cpu"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("time_fused_over_lora", "time_naive_over_lora", "mem_fused_over_lora", "mem_naive_over_lora",
                "device", "shape"):
        assert key in summary
    assert summary["shape"] == [64, 128, 32] and summary["fused_naive_allclose"] is True
    assert summary["mem_naive_over_lora"] > summary["mem_fused_over_lora"]
    assert summary["mem_fused_keep_over_lora"] > summary["mem_fused_over_lora"]  # it keeps W and d delta/dM
