"""benchmarks/nf4_check.py (gpu_check.sh's NF4 step) on CPU: bitsandbytes' NF4 equals the hand reference, its
Linear4bit layers compute like the fake-quantized model the quantize attack scores, and it prints no library
noise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_nf4_check_on_cpu() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "nf4_check.py"), "--device", "cpu"],
                          capture_output=True, text=True, timeout=180, check=True, cwd=ROOT)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ok"] is True and out["layers_4bit"] > 0 and out["dequantized_vs_reference"] < 1e-5
    assert "Failed to load" not in proc.stderr and "Enum subclass" not in proc.stderr, proc.stderr


def test_gpu_check_runs_the_nf4_step() -> None:
    script = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    assert "nf4_check.py" in script and '"nf4_bitsandbytes"' in script
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")], check=True)
