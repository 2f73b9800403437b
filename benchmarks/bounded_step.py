"""Step time and memory of one adapted MLP block: vanilla LoRA vs the fused bounded adapter vs a naive one.

One SwiGLU MLP block (gate/up/down projections, `down(silu(gate(x)) * up(x))`) with an adapter on
each projection, forward + backward of `x` (tokens x hidden), in five variants measured in one run:

- `peft`:  PEFT's own LoRA layers (`peft.LoraModel` on a module with the same three `nn.Linear`s, the
  same weights and factors): the baseline every ratio is taken against;
- `lora`:  plain LoRA, the low-rank path `x W0^T + s (x A^T) B^T` (bound `none`);
- `fused`: the sine-bounded adapter through the fused autograd function (`bounded_linear`): it forms
  `W = W0 + s sin(omega B A) / sqrt(d_in)` for one GEMM and recomputes it in backward;
- `fused_keep`: the fused function with `keep=True` (`AdapterSpec.keep_dense`): sin and cos in one
  forward pass, `W` and `d delta / dM` kept for backward (no recomputation, two dense matrices more);
- `naive`: the same bounded adapter in plain autograd (`naive_bounded_linear`), which stores the
  dense `omega B A` and `W` of every layer for backward.

Memory, by device:
- CUDA: `torch.cuda.max_memory_allocated` over one step (parameters, input, activations, gradients
  and every transient buffer), after `reset_peak_memory_stats`.
- CPU (no allocator statistics): the bytes held between forward and backward, i.e. the parameters
  and the input plus every distinct storage saved for backward, found with
  `torch.autograd.graph.saved_tensors_hooks` (deduplicated by storage, so the frozen `W0` the fused
  function saves by reference counts once). This is what grows with the number of layers in a
  whole model; it leaves out transient buffers that live inside one layer's backward (the fused
  variant's recomputed dense matrices, one layer at a time).

Time: CUDA events around the step (CUDA), `time.perf_counter` (CPU); warm-up steps, then the
median of `--repeats` (variants alternate round by round, so load drift hits all alike). The
last line printed is one JSON object with the ratios.

    python benchmarks/bounded_step.py                          # shapes that suit the device
    python benchmarks/bounded_step.py --shape 4096,14336,4096 --dtype bfloat16 --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.adapters.bounds import Bound, make_bound
from harness.adapters.fused import bounded_linear, naive_bounded_linear

MIB = 2**20
#: (hidden, intermediate, tokens) and dtype used when no argument is given.
DEFAULTS = {"cuda": ((4096, 14336, 4096), "bfloat16", 20), "cpu": ((1024, 2752, 512), "float32", 5)}
VARIANTS = ("peft", "lora", "fused", "fused_keep", "naive")
#: PEFT-wrapped copies of each block, by `id(block)` (built by `make_block`).
PEFT_BLOCKS: dict[int, torch.nn.Module] = {}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

Linear = Callable[[torch.Tensor, "Proj"], torch.Tensor]


@dataclass
class Proj:
    """One adapted projection: frozen `w0` (d_out x d_in), trainable `a` (r x d_in), `b` (d_out x r)."""

    w0: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    sine: Bound
    lora: Bound


def make_proj(d_in: int, d_out: int, rank: int, omega: float, dtype: torch.dtype, device: str,
              gen: torch.Generator) -> Proj:
    """Random frozen weight and LoRA factors; `B` is scaled so `omega B A` is of order 1 (a non-trivial sine)."""
    w0 = torch.randn(d_out, d_in, generator=gen) / d_in**0.5
    a = (torch.rand(rank, d_in, generator=gen) * 2 - 1) / d_in**0.5
    b = torch.randn(d_out, rank, generator=gen) * (3 * d_in / rank) ** 0.5 / omega
    to = {"dtype": dtype, "device": device}
    return Proj(w0.to(**to), a.to(**to).requires_grad_(), b.to(**to).requires_grad_(),
                make_bound("sine", 2.0 * rank, rank, d_in, omega, 1.0), make_bound("none", 2.0 * rank, rank, d_in,
                                                                                   omega, 1.0))


def lora_linear(x: torch.Tensor, p: Proj) -> torch.Tensor:
    """Vanilla LoRA: `x W0^T + s (x A^T) B^T` (never forms a dense update)."""
    return F.linear(x, p.w0) + F.linear(F.linear(x, p.a), p.b) * p.lora.scale


def fused_linear(x: torch.Tensor, p: Proj) -> torch.Tensor:
    """Sine-bounded adapter through the fused autograd function."""
    return bounded_linear(x, p.w0, None, p.a, p.b, p.sine)


def fused_keep_linear(x: torch.Tensor, p: Proj) -> torch.Tensor:
    """The fused function keeping the dense weight and derivative from forward (`AdapterSpec.keep_dense`)."""
    return bounded_linear(x, p.w0, None, p.a, p.b, p.sine, keep=True)


def naive_linear(x: torch.Tensor, p: Proj) -> torch.Tensor:
    """Sine-bounded adapter in plain autograd (stores the dense intermediates)."""
    return naive_bounded_linear(x, p.w0, None, p.a, p.b, p.sine)


LINEARS: dict[str, Linear] = {"lora": lora_linear, "fused": fused_linear, "fused_keep": fused_keep_linear,
                              "naive": naive_linear}


def mlp(linear: Linear, x: torch.Tensor, block: dict[str, Proj]) -> torch.Tensor:
    """SwiGLU MLP: `down(silu(gate(x)) * up(x))`."""
    return linear(F.silu(linear(x, block["gate"])) * linear(x, block["up"]), block["down"])


class MLP(torch.nn.Module):
    """The same SwiGLU block as plain `nn.Linear`s, for PEFT to wrap."""

    def __init__(self, block: dict[str, Proj]) -> None:
        super().__init__()
        for name, p in block.items():
            layer = torch.nn.Linear(p.w0.shape[1], p.w0.shape[0], bias=False, device=p.w0.device, dtype=p.w0.dtype)
            layer.weight.data = p.w0  # shares the frozen weight
            setattr(self, name, layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


def make_peft(block: dict[str, Proj], rank: int) -> torch.nn.Module:
    """`peft.LoraModel` over `MLP(block)` with r=`rank`, alpha=2*rank (the harness LoRA's scale) and the
    block's own factors copied into PEFT's `lora_A` / `lora_B`."""
    from peft import LoraConfig, LoraModel

    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=list(block))
    model = LoraModel(MLP(block), config, "default")
    with torch.no_grad():
        for name, p in block.items():
            layer = getattr(model.model, name)
            layer.lora_A["default"].weight.copy_(p.a)
            layer.lora_B["default"].weight.copy_(p.b)
    return model


def forward(variant: str, x: torch.Tensor, block: dict[str, Proj]) -> torch.Tensor:
    """The block's output in `variant`."""
    if variant == "peft":
        return PEFT_BLOCKS[id(block)](x)
    return mlp(LINEARS[variant], x, block)


def make_block(hidden: int, inter: int, rank: int, omega: float, dtype: torch.dtype, device: str,
               seed: int = 0) -> dict[str, Proj]:
    """gate/up (hidden -> intermediate) and down (intermediate -> hidden) projections."""
    gen = torch.Generator().manual_seed(seed)
    return {"gate": make_proj(hidden, inter, rank, omega, dtype, device, gen),
            "up": make_proj(hidden, inter, rank, omega, dtype, device, gen),
            "down": make_proj(inter, hidden, rank, omega, dtype, device, gen)}


def make_blocks(hidden: int, inter: int, rank: int, omega: float, dtype: torch.dtype, device: str,
                seed: int = 0) -> dict[str, Proj]:
    """`make_block` plus its PEFT twin (registered in `PEFT_BLOCKS`)."""
    block = make_block(hidden, inter, rank, omega, dtype, device, seed)
    PEFT_BLOCKS[id(block)] = make_peft(block, rank)
    return block


def _leaves(x: torch.Tensor, block: dict[str, Proj]) -> list[torch.Tensor]:
    peft = PEFT_BLOCKS.get(id(block))
    extra = [] if peft is None else [t for t in peft.parameters() if t.requires_grad]
    return [x] + [t for p in block.values() for t in (p.a, p.b)] + extra


def step(variant: str, x: torch.Tensor, block: dict[str, Proj], grad_y: torch.Tensor) -> torch.Tensor:
    """One forward + backward of the block (gradients reset first); returns the output."""
    for t in _leaves(x, block):
        t.grad = None
    y = forward(variant, x, block)
    y.backward(grad_y)
    return y


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(variant: str, x: torch.Tensor, block: dict[str, Proj], grad_y: torch.Tensor) -> float:
    """Milliseconds of one step: CUDA events on GPU, perf_counter on CPU."""
    if x.device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step(variant, x, block, grad_y)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    step(variant, x, block, grad_y)
    return (time.perf_counter() - t0) * 1e3


def time_steps(x: torch.Tensor, block: dict[str, Proj], grad_y: torch.Tensor, repeats: int,
               warmup: int = 2) -> dict[str, float]:
    """Median step milliseconds per variant; variants alternate round by round so drift hits all alike."""
    for variant in VARIANTS:
        for _ in range(warmup):
            step(variant, x, block, grad_y)
    _sync(x.device.type)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(repeats):
        for variant in VARIANTS:
            times[variant].append(_timed(variant, x, block, grad_y))
    return {v: statistics.median(t) for v, t in times.items()}


def saved_bytes(variant: str, x: torch.Tensor, block: dict[str, Proj], grad_y: torch.Tensor) -> int:
    """Parameter + input bytes plus every distinct storage saved for backward in one forward."""
    if variant == "peft":
        static = [x] + list(PEFT_BLOCKS[id(block)].parameters())
    else:
        static = [x] + [t for p in block.values() for t in (p.w0, p.a, p.b)]
    seen = {t.untyped_storage().data_ptr() for t in static}
    total = sum(t.untyped_storage().nbytes() for t in static)

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
        return t

    for t in _leaves(x, block):
        t.grad = None
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = forward(variant, x, block)
    y.backward(grad_y)
    return total


def peak_bytes(variant: str, x: torch.Tensor, block: dict[str, Proj], grad_y: torch.Tensor) -> int:
    """CUDA: peak allocated bytes over one step (everything on the device included)."""
    for t in _leaves(x, block):
        t.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step(variant, x, block, grad_y)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def check_agreement(x: torch.Tensor, block: dict[str, Proj], grad_y: torch.Tensor) -> tuple[bool, float]:
    """Fused (both modes) vs naive: output and gradients (x, A, B) agree; returns (allclose, max relative error)."""
    results = {}
    for variant in ("fused", "fused_keep", "naive", "peft", "lora"):
        y = step(variant, x, block, grad_y)
        grads = [] if variant == "peft" else [t.grad.detach().float() for t in _leaves(x, block)[:1 + 2 * len(block)]]
        results[variant] = [y.detach().float(), *grads]
    tol = 1e-4 if x.dtype == torch.float32 else 3e-2
    worst, ok = 0.0, True
    # PEFT and the harness LoRA compute the same function (output and x gradient)
    assert torch.allclose(results["peft"][0], results["lora"][0], rtol=1e-3, atol=1e-3 * float(
        results["lora"][0].abs().max())), "PEFT LoRA and the harness LoRA disagree"
    for f, n in [*zip(results["fused"], results["naive"]), *zip(results["fused_keep"], results["naive"])]:
        scale = n.abs().max().clamp_min(1e-30)
        err = float((f - n).abs().max() / scale)
        worst = max(worst, err)
        ok = ok and torch.allclose(f, n, rtol=tol, atol=tol * float(scale))
    return ok, worst


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (unset ones are filled in for the device)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None)
    parser.add_argument("--shape", default=None, help="hidden,intermediate,tokens")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--omega", type=float, default=100.0)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--tokens", default=None, help="comma-separated token counts (overrides the shape's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    shape, dtype, repeats = DEFAULTS[args.device]
    args.shape = tuple(int(v) for v in args.shape.split(",")) if args.shape else shape
    if len(args.shape) != 3:
        parser.error("--shape needs hidden,intermediate,tokens")
    args.tokens = [int(v) for v in args.tokens.split(",")] if args.tokens else None
    args.dtype = args.dtype or dtype
    args.repeats = args.repeats or repeats
    return args


def run_one(args: argparse.Namespace, tokens: int) -> dict[str, object]:
    """Measure every variant at `tokens` tokens and print its table; returns that shape's summary."""
    hidden, inter, _ = args.shape
    dtype = DTYPES[args.dtype]
    block = make_blocks(hidden, inter, args.rank, args.omega, dtype, args.device, args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    x = torch.randn(tokens, hidden, generator=gen).to(dtype=dtype, device=args.device).requires_grad_()
    grad_y = torch.randn(tokens, hidden, generator=gen).to(dtype=dtype, device=args.device)
    ok, err = check_agreement(x, block, grad_y)
    cuda = args.device == "cuda"
    ms = time_steps(x, block, grad_y, args.repeats)
    mem = {v: (peak_bytes if cuda else saved_bytes)(v, x, block, grad_y) for v in VARIANTS}
    label = "peak MiB" if cuda else "saved MiB"
    print(f"\none MLP block, hidden={hidden} intermediate={inter} tokens={tokens} rank={args.rank} "
          f"omega={args.omega} {args.dtype} on {args.device} ({args.repeats} repeats, median); "
          f"fused vs naive: allclose={ok} (max relative error {err:.2e})")
    print(f"| variant | step ms | x peft | x lora | {label} | x peft | x lora |\n|---|---:|---:|---:|---:|---:|---:|")
    for v in VARIANTS:
        print(f"| {v} | {ms[v]:.2f} | {ms[v] / ms['peft']:.2f} | {ms[v] / ms['lora']:.2f} | {mem[v] / MIB:.1f} | "
              f"{mem[v] / mem['peft']:.2f} | {mem[v] / mem['lora']:.2f} |")
    PEFT_BLOCKS.pop(id(block), None)
    out: dict[str, object] = {}
    for v in ("lora", "fused", "fused_keep", "naive"):
        out[f"time_{v}_over_peft"] = round(ms[v] / ms["peft"], 4)
        out[f"mem_{v}_over_peft"] = round(mem[v] / mem["peft"], 4)
    for v in ("fused", "fused_keep", "naive"):
        out[f"time_{v}_over_lora"] = round(ms[v] / ms["lora"], 4)
        out[f"mem_{v}_over_lora"] = round(mem[v] / mem["lora"], 4)
    return out | {"step_ms": {v: round(ms[v], 3) for v in VARIANTS}, "shape": [hidden, inter, tokens],
                  "fused_naive_allclose": ok}


def run(args: argparse.Namespace) -> dict[str, object]:
    """Every token count of `--tokens` (or the shape's); the first one's ratios at the top level."""
    cuda = args.device == "cuda"
    counts = args.tokens or [args.shape[2]]
    per = [run_one(args, t) for t in counts]
    return per[0] | {"by_tokens": {str(t): r for t, r in zip(counts, per, strict=True)},
                     "device": torch.cuda.get_device_name() if cuda else "cpu", "dtype": args.dtype,
                     "rank": args.rank, "mem_metric": "peak_allocated" if cuda else "saved_for_backward_plus_params"}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; the last line printed is the JSON summary."""
    print(json.dumps(run(parse_args(argv))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
