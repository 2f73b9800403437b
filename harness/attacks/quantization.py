"""Weight-only post-training quantization of a model's linear layers through maintained libraries.

- `int8`: torchao `Int8WeightOnlyConfig` (symmetric, one scale per output row: `s = absmax / 127.5`,
  `q = clamp(round(w * (1/s)), -128, 127)`; torchao multiplies by the reciprocal of the scale).
- `int4`: torchao `IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(g))` (symmetric, one scale
  per group of `g` input columns: `s = absmax / 7.5`, `q = clamp(round(w * (1/s)), -8, 7)`).
- `nf4`: bitsandbytes `quantize_4bit(quant_type="nf4")` (one absmax per block of `blocksize` consecutive
  weights of the flattened matrix; each weight divided by its absmax goes to the nearest of the 16 NF4 code
  values), read back with `dequantize_4bit`.

Why the libraries' own module-level API on the merged model rather than transformers' `TorchAoConfig` /
`BitsAndBytesConfig` at `from_pretrained`: the attacked model is the unlearned model with its (bounded)
adapter merged in memory, and the harness scores every model by loading a directory in its scoring workers
(Ray actors, the hf or vLLM backend). So the quantizer runs on the merged model's weights and the model is
written with its dequantized weights ("fake quantization"): exactly the weights a weight-only quantized
model computes with, servable unchanged by every backend and by `eval.workers` > 1. transformers'
bitsandbytes integration needs CUDA for 4-bit loading and its torchao path reads a checkpoint from disk, so
neither runs the same way here and on a GPU. Both libraries run on this CPU and on CUDA; bitsandbytes'
`Linear4bit` (the CUDA NF4 path, `nf4_modules`) computes with the same dequantized weights
(benchmarks/gpu_check.sh checks it against the fake-quantized model on a GPU).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from harness.core.console import quiet_libraries
from harness.core.errors import SpecError

SCHEMES = ("int8", "int4", "nf4")


@contextlib.contextmanager
def _quiet_import() -> Iterator[None]:
    """Import the quantization libraries with their load-time warnings hidden (harness.core.console)."""
    quiet_libraries()
    yield


def _torchao_dequantized(w: torch.Tensor, scheme: str, group_size: int) -> torch.Tensor:
    with _quiet_import():
        from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, quantize_
        from torchao.quantization.granularity import PerGroup
    config = (Int8WeightOnlyConfig() if scheme == "int8" else
              IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size)))
    holder = nn.Sequential(nn.Linear(w.shape[1], w.shape[0], bias=False, device=w.device))
    holder[0].weight.data = w.detach().clone()
    quantize_(holder, config)
    return holder[0].weight.dequantize().to(torch.float32)


def _nf4_dequantized(w: torch.Tensor, blocksize: int) -> torch.Tensor:
    with _quiet_import():
        import bitsandbytes.functional as bnbf
    q, state = bnbf.quantize_4bit(w.detach().contiguous(), blocksize=blocksize, quant_type="nf4")
    return bnbf.dequantize_4bit(q, state).to(torch.float32)


def dequantized(w: torch.Tensor, scheme: str, group_size: int = 32, blocksize: int = 64) -> torch.Tensor:
    """`w` (d_out x d_in) quantized with `scheme` by its library and read back in float32."""
    w = w.detach().to(torch.float32)
    if scheme in ("int8", "int4"):
        if scheme == "int4" and w.shape[1] % group_size:
            raise SpecError(f"attacks.quantize.group_size {group_size} does not divide a layer's {w.shape[1]} "
                            "input columns")
        return _torchao_dequantized(w, scheme, group_size)
    if scheme == "nf4":
        return _nf4_dequantized(w, blocksize)
    raise SpecError(f"unknown quantization scheme {scheme!r} (known: {', '.join(SCHEMES)})")


def quantizable_layers(model: nn.Module, skip: Sequence[str]) -> dict[str, nn.Module]:
    """The linear layers (nn.Linear, GPT-2's Conv1D) whose name contains none of `skip`."""
    from transformers.pytorch_utils import Conv1D

    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.Linear | Conv1D) and not any(s in name for s in skip)}


@torch.no_grad()
def quantize_model(model: nn.Module, scheme: str, group_size: int = 32, blocksize: int = 64,
                   skip: Sequence[str] = (), device: torch.device | str | None = None) -> list[str]:
    """Replace each quantizable layer's weight by its quantized-then-dequantized value, in place; the names.

    `device` (default: where each weight is) is where the library quantizes: CUDA kernels on a GPU."""
    from transformers.pytorch_utils import Conv1D

    layers = quantizable_layers(model, skip)
    if not layers:
        raise SpecError("attacks.quantize: the model has no linear layer to quantize (check attacks.quantize.skip)")
    for layer in layers.values():
        transposed = isinstance(layer, Conv1D)  # Conv1D keeps (d_in, d_out): rows must be output channels
        w = layer.weight.t() if transposed else layer.weight
        dq = dequantized(w.to(device) if device is not None else w, scheme, group_size, blocksize)
        layer.weight.copy_((dq.t() if transposed else dq).to(layer.weight.device, layer.weight.dtype))
    return list(layers)


def nf4_modules(model: nn.Module, blocksize: int = 64, skip: Sequence[str] = ()) -> list[str]:
    """Replace each quantizable nn.Linear by bitsandbytes' `Linear4bit` (NF4), in place: the path that computes
    in 4 bits on CUDA (and on CPU with bitsandbytes >= 0.49); the names replaced."""
    with _quiet_import():
        import bitsandbytes as bnb
    replaced = []
    for name, layer in quantizable_layers(model, skip).items():
        if not isinstance(layer, nn.Linear):
            continue
        new = bnb.nn.Linear4bit(layer.in_features, layer.out_features, bias=layer.bias is not None,
                                compute_dtype=torch.float32, quant_type="nf4", quant_storage=torch.uint8)
        new.weight = bnb.nn.Params4bit(layer.weight.data.to(torch.float32), requires_grad=False,
                                       quant_type="nf4", blocksize=blocksize)
        if layer.bias is not None:
            new.bias = nn.Parameter(layer.bias.data.clone(), requires_grad=False)
        new = new.to(layer.weight.device)  # Params4bit quantizes when moved
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
        replaced.append(name)
    return replaced
