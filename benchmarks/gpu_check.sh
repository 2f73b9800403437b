#!/usr/bin/env bash
# GPU check (issue 13 part 4): on one CUDA GPU, in under 8 minutes, print ONE JSON line with
#   1. the bounded-step benchmark in bf16 at Llama-8B MLP shapes (4096 x 14336, 512 and 4096 tokens),
#   2. the scoring benchmark with hf (and lm-eval's HFLM) on CUDA,
#   3. a 2-step ZeRO-3 bf16 training of the tiny model on one GPU (`harness run`, a tiny job), whose scored
#      models then go through the NF4 quantize attack (bitsandbytes on the GPU),
#   4. NF4 through bitsandbytes on the device (benchmarks/nf4_check.py): its dequantized weights against the hand
#      reference, and its Linear4bit layers against the fake-quantized model the quantize attack scores.
# Without CUDA it fails with exit 2. `--cpu-smoke` runs the same three steps tiny on CPU (fp32 ZeRO-3)
# to test the plumbing. Run from the repository root with the project's Python first on PATH (or PYTHON=...).
set -euo pipefail
PY=${PYTHON:-python}
MODE=gpu
[[ "${1:-}" == "--cpu-smoke" ]] && MODE=cpu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
WORK=$(mktemp -d -t gpu-check-XXXXXX)
trap 'rm -rf "$WORK"' EXIT

if [[ $MODE == gpu ]]; then
  if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: no CUDA device visible to torch; use --cpu-smoke to test the script on CPU" >&2
    exit 2
  fi
  BOUNDED=(--device cuda --dtype bfloat16 --shape 4096,14336,4096 --tokens 512,4096 --repeats 20)
  SCORING=(--device cuda --no-ray --no-vllm)
  DEV_SET=(--set resources.use_gpu=true --set train.precision=bf16)
else
  BOUNDED=(--device cpu --shape 64,128,32 --tokens 32,64 --repeats 1)
  SCORING=(--device cpu --no-ray --no-vllm --quick)
  DEV_SET=(--set resources.use_gpu=false --set train.precision=fp32)
fi

t0=$(date +%s)
"$PY" "$ROOT/benchmarks/bounded_step.py" "${BOUNDED[@]}" > "$WORK/bounded.log"
t1=$(date +%s)
"$PY" "$ROOT/benchmarks/eval_throughput.py" "${SCORING[@]}" > "$WORK/scoring.log" 2> "$WORK/scoring.err"
t2=$(date +%s)

cat > "$WORK/job.yaml" <<YAML
name: gpu_check
seeds: [0]
model: {name: "builtin:tiny-llama"}
benchmark: {name: tofu, source: synthetic, forget_split: forget10,
            synthetic: {n_authors: 10, n_real_authors: 2, n_world_facts: 2}}
reference: {mode: train, train: {epochs: 1, lr: 5.0e-3, batch_size: 8}}
objective: {name: gd}
train: {max_steps: 2, batch_size: 4, zero_stage: 3}
methods: [{name: gd_sine, adapter: {bound: sine, rank: 8, alpha: 16, omega: 100}}]
eval: {backend: hf, batch_size: 8, max_new_tokens: 4, max_examples: 3, bootstrap: 0}
attacks: {quantize: {enabled: true, schemes: [nf4]}}
YAML
"$PY" -m harness.cli run "$WORK/job.yaml" --out "$WORK/run" "${DEV_SET[@]}" > "$WORK/train.log" 2>&1 \
  || { tail -40 "$WORK/train.log" >&2; exit 1; }
t3=$(date +%s)
NF4_DEVICE=cuda
[[ $MODE == cpu ]] && NF4_DEVICE=cpu
"$PY" "$ROOT/benchmarks/nf4_check.py" --device "$NF4_DEVICE" > "$WORK/nf4.log"
t4=$(date +%s)

"$PY" - "$WORK" "$MODE" "$((t1 - t0))" "$((t2 - t1))" "$((t3 - t2))" "$((t4 - t3))" <<'PYEOF'
import json, sys
from pathlib import Path
work, mode, *secs = sys.argv[1:]
last = lambda name: json.loads((Path(work) / name).read_text().strip().splitlines()[-1])
bounded, scoring = last("bounded.log"), last("scoring.log")
print(json.dumps({
    "mode": mode,
    "bounded_step": {t: {k: v for k, v in r.items() if k.startswith(("time_", "mem_"))}
                     for t, r in bounded["by_tokens"].items()} | {"device": bounded["device"]},
    "scoring_tokens_per_s": scoring["tokens_per_s"],
    "hf_over_lm_eval_loglik": scoring["hf_over_lm_eval_loglik"],
    "training_2_steps_zero3": {"ok": True, "run_dir_files": len(list((Path(work) / "run").rglob("*")))},
    "nf4_bitsandbytes": last("nf4.log"),
    "seconds": dict(zip(["bounded_step", "scoring", "training", "nf4"], map(int, secs))),
}))
PYEOF
