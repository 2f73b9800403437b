"""NF4 through bitsandbytes on one device (gpu_check.sh step 4): prints one JSON line.

On a tiny Llama with its MLP weights re-drawn: (1) the quantize attack's NF4 (bitsandbytes `quantize_4bit` /
`dequantize_4bit` on the device) against the hand reference (blockwise absmax, nearest NF4 code); (2) the same
model with bitsandbytes' `Linear4bit` layers (the CUDA 4-bit path, harness.attacks.quantization.nf4_modules)
against the fake-quantized model the attack scores: largest logit difference. `ok` when both agree.
    python benchmarks/nf4_check.py --device cuda      (gpu_check.sh)      --device cpu (a quick CPU run)
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from harness.core.console import quiet_libraries

quiet_libraries()  # before torchao / bitsandbytes are imported (their load-time warnings)

from harness.attacks.quantization import dequantized, nf4_modules, quantize_model  # noqa: E402
from harness.models.text import build_builtin  # noqa: E402

#: The NF4 code values (QLoRA, arXiv 2305.14314, appendix E).
NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
       0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]


def reference_nf4(w: torch.Tensor, blocksize: int) -> torch.Tensor:
    """Blockwise absmax over the flattened matrix, each value to the nearest NF4 code, in float64 on the CPU."""
    blocks = w.detach().double().cpu().reshape(-1, blocksize)
    absmax = blocks.abs().amax(dim=1, keepdim=True)
    code = torch.tensor(NF4, dtype=torch.float64)
    idx = (blocks / absmax).unsqueeze(-1).sub(code).abs().argmin(-1)
    return (code[idx] * absmax).reshape(w.shape).float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--blocksize", type=int, default=64)
    args = parser.parse_args()
    device = torch.device(args.device)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = build_builtin("tiny-llama", 512, seed=0).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn_like(p) * 0.05)
    w = model.model.layers[0].mlp.up_proj.weight
    on_device = dequantized(w.to(device), "nf4", blocksize=args.blocksize).cpu()
    ref_err = float((on_device - reference_nf4(w, args.blocksize)).abs().max())

    fake = copy.deepcopy(model)
    quantize_model(fake, "nf4", blocksize=args.blocksize, skip=["lm_head", "embed"], device=device)
    real = copy.deepcopy(model)
    replaced = nf4_modules(real, blocksize=args.blocksize, skip=["lm_head", "embed"])
    ids = torch.randint(3, 512, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model.to(device)(input_ids=ids.to(device)).logits.float().cpu()
        a = fake.to(device)(input_ids=ids.to(device)).logits.float().cpu()
        b = real.to(device)(input_ids=ids.to(device)).logits.float().cpu()
    logit_err, noise = float((a - b).abs().max()), float((a - full).abs().max())
    # Linear4bit's kernels accumulate in their own order: its difference from the fake-quantized model must be
    # small next to the quantization noise itself (fake-quantized vs full precision)
    print(json.dumps({"device": str(device), "layers_4bit": len(replaced), "dequantized_vs_reference": ref_err,
                      "linear4bit_vs_fake_quant_max_logit_diff": logit_err, "nf4_noise_max_logit_diff": noise,
                      "ok": ref_err < 1e-5 and logit_err < 0.1 * noise and len(replaced) > 0,
                      "seconds": round(time.perf_counter() - t0, 2)}))


if __name__ == "__main__":
    main()
