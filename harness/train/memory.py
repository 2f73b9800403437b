"""Per-device memory estimate of one unlearning run (from a config alone: no weights, works offline).

The model is built on the meta device to count parameters and find the adapted MLP layers; every
term below is then plain arithmetic, in bytes per device, for `world_size` DeepSpeed workers:

- `base`: the frozen weights, `n_params x width` (bf16: 2 bytes, else the model dtype); ZeRO-3
  partitions them over the workers (`/ N`), and ZeRO-3 parameter offload moves them to the CPU.
- `gathered`: ZeRO-3 only, the full parameters it gathers for compute: the larger of one decoder
  block and the largest single tensor (the embedding), un-partitioned.
- `adapter`, `adapter_grads`: the trainable LoRA factors and their gradients (bf16: 2 bytes each,
  fp32: 4); `optimizer`: AdamW states (bf16: fp32 master copy + 2 moments = 12 bytes, fp32: 2
  moments = 8 bytes). Sharded as DeepSpeed does: stage 1 the optimizer states, stage 2 also the
  gradients, stage 3 also the parameters (each `/ N`); optimizer offload puts the states on the CPU.
- `bound`: a bounded (non-low-rank) adapter forms dense `d_out x d_in` matrices one layer at a time
  (W in forward; grad_W, the recomputed delta and its derivative in backward): `3 x` the largest
  adapted layer in the compute width. Plain LoRA (`bound: none`) keeps the low-rank path: 0.
- `activations`: `micro_batch x seq x hidden x layers x factor x width` for each batch held until
  the backward (the forget and the retain batch: `forward_batches`). `factor` counts the saved
  values per token and hidden unit of one decoder block with SDPA/flash attention (no seq^2 term):
  8 for attention and its norm, plus `2 + 4 x intermediate/hidden` for a gated (SwiGLU) MLP or
  `2 + 2 x intermediate/hidden` for a plain one. With gradient checkpointing only each block's
  input is kept, plus one block's full activations during its recomputation.
- `logits`: `micro_batch x seq x vocab x 4 bytes x 3` per batch: fp32 logits, the log-softmax the
  cross-entropy keeps for backward, and its gradient.
- Image classifiers (ViT, DeiT, CLIP vision tower + head): `seq` is the tokens per image (patches plus the
  class token, plus DeiT's distillation token), not `train.max_length`; the "vocabulary" is the number of
  labels, and the logits are one row per image, not per token. CLIP's sizes are its vision tower's.
- `overhead`: a fixed 2 GiB on a GPU for the CUDA context, NCCL buffers and allocator fragmentation.
- `train.sensitivity`: the twin is a second copy of the model with its own adapter, gradients and optimizer
  states (`base`, `adapter`, `adapter_grads` and `optimizer` doubled); it runs after the run's own passes,
  so the activations and logits are not.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields

import torch
from transformers import AutoModelForCausalLM, AutoModelForImageClassification, PretrainedConfig
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
)

from harness.adapters.bounds import BOUNDS
from harness.adapters.layer import layer_shape
from harness.adapters.targets import target_module_names
from harness.config import AdapterSpec, TrainSpec

GIB = 2**30
#: Bytes per element of each model dtype name.
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
#: Fixed allowance for the CUDA context, communication buffers and fragmentation.
OVERHEAD_BYTES = 2 * GIB
#: Dense d_out x d_in matrices alive at once in the bounded adapter's backward.
BOUND_DENSE_MATRICES = 3
#: fp32 vocab-sized tensors per token: logits, saved log-softmax, their gradient.
LOGIT_COPIES = 3
#: Saved values per token and hidden unit of attention (q, k, v, output, norms, residual).
ATTN_FACTOR = 8.0
#: Model types whose MLP is gated (gate/up/down: three d x i matrices).
GATED_MLP = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo", "olmo2",
                       "granite", "smollm3", "phi3"})


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know about a model: sizes and the adapted layers' shapes."""

    n_params: int
    hidden: int
    intermediate: int
    n_layers: int
    vocab: int
    gated_mlp: bool
    adapted: tuple[tuple[int, int], ...]  # (d_out, d_in) of each adapted layer
    largest_block: int  # parameters of the largest decoder block
    largest_tensor: int  # elements of the largest single parameter tensor
    tokens_per_example: int | None = None  # image classifiers: tokens per image (None: train.max_length)
    logits_per_token: bool = True  # False for classifiers: one row of logits per example

    def adapter_params(self, rank: int) -> int:
        """LoRA parameters `r x (d_in + d_out)` summed over the adapted layers."""
        return sum(rank * (d_out + d_in) for d_out, d_in in self.adapted)

    def largest_adapted(self) -> int:
        """Elements of the largest adapted weight matrix."""
        return max((d_out * d_in for d_out, d_in in self.adapted), default=0)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device of each memory term (see the module docstring) for one method."""

    base: float
    gathered: float
    adapter: float
    adapter_grads: float
    optimizer: float
    bound: float
    activations: float
    logits: float
    overhead: float

    def terms(self) -> dict[str, float]:
        """Term name -> bytes, in display order."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def total(self) -> float:
        """Sum of all terms in bytes."""
        return sum(self.terms().values())

    def fits(self, capacity_gib: float = 80.0) -> bool:
        """True when the total fits a device of `capacity_gib` GiB."""
        return self.total <= capacity_gib * GIB


def _intermediate(config: PretrainedConfig, hidden: int) -> int:
    for key in ("intermediate_size", "n_inner", "ffn_dim", "decoder_ffn_dim"):
        value = getattr(config, key, None)
        if value:
            return int(value)
    return 4 * hidden


def _blocks(model: torch.nn.Module, n_layers: int) -> list[torch.nn.Module]:
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n_layers]
    return list(lists[0]) if lists else []


def is_image_classifier(config: PretrainedConfig) -> bool:
    """True for configs transformers builds as image classifiers (ViT, DeiT, CLIP), not as causal LMs."""
    kind = config.model_type
    return kind in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES and kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def _architecture(config: PretrainedConfig) -> PretrainedConfig:
    """The config holding the transformer's sizes: a classifier's vision tower (CLIP), else the config itself."""
    vision = getattr(config, "vision_config", None)
    return vision if vision is not None and is_image_classifier(config) else config


def image_tokens(config: PretrainedConfig) -> int:
    """Tokens per image of a ViT-style encoder: patches + class token (+ DeiT's distillation token)."""
    arch = _architecture(config)
    patches = (int(arch.image_size) // int(arch.patch_size)) ** 2
    return patches + (2 if config.model_type == "deit" else 1)


def meta_model(config: PretrainedConfig) -> torch.nn.Module:
    """The model of `config` on the meta device (no memory, no weights): a causal LM or an image classifier."""
    auto = AutoModelForImageClassification if is_image_classifier(config) else AutoModelForCausalLM
    if config.architectures is None:
        # auto classes with several candidates (DeiT) iterate config.architectures, None on a config built in code
        config = copy.deepcopy(config)
        config.architectures = []
    with torch.device("meta"):
        return auto.from_config(config)


def model_shape(config: PretrainedConfig, targets: list[str] | None = None,
                model: torch.nn.Module | None = None) -> ModelShape:
    """Sizes of the model of `config` and its adapted layers (builds a meta model unless given one)."""

    model = meta_model(config) if model is None else model
    modules = dict(model.named_modules())
    adapted = tuple(layer_shape(modules[n])[::-1] for n in target_module_names(model, targets))
    image = is_image_classifier(config)
    arch = _architecture(config)
    hidden, n_layers = int(arch.hidden_size), int(arch.num_hidden_layers)
    blocks = _blocks(model, n_layers)
    return ModelShape(
        n_params=sum(p.numel() for p in model.parameters()), hidden=hidden,
        intermediate=_intermediate(arch, hidden), n_layers=n_layers,
        vocab=int(config.num_labels if image else config.vocab_size),
        gated_mlp=config.model_type in GATED_MLP, adapted=adapted,
        largest_block=max((sum(p.numel() for p in b.parameters()) for b in blocks), default=0),
        largest_tensor=max(p.numel() for p in model.parameters()),
        tokens_per_example=image_tokens(config) if image else None, logits_per_token=not image,
    )


def activation_factor(shape: ModelShape) -> float:
    """Saved values per token and hidden unit of one decoder block (SDPA attention, see module docs)."""
    ratio = shape.intermediate / shape.hidden
    return ATTN_FACTOR + 2.0 + (4.0 if shape.gated_mlp else 2.0) * ratio


def _adapter_terms(n: int, train: TrainSpec, world_size: int) -> tuple[float, float, float]:
    """(params, grads, optimizer states) bytes per device of `n` trainable parameters under ZeRO."""
    stage = train.zero_stage
    bf16 = train.precision == "bf16"
    params = n * (2 if bf16 else 4) / (world_size if stage >= 3 else 1)
    grads = n * (2 if bf16 else 4) / (world_size if stage >= 2 else 1)
    # AdamW keeps two fp32 moments (+ an fp32 master copy in bf16); SGD a momentum buffer if it has momentum.
    states = 2 if train.optimizer == "adamw" else int(train.momentum > 0)
    per_param = 4 * states + (4 if bf16 else 0)
    optim = 0.0 if train.offload_optimizer else n * per_param / (world_size if stage >= 1 else 1)
    if train.offload_params and stage == 3:
        params = 0.0
    return params, grads, optim


def estimate_memory(config: PretrainedConfig | None, adapter: AdapterSpec, train: TrainSpec, world_size: int = 1,
                    seq_len: int | None = None, *, dtype: str = "float32", forward_batches: int = 1,
                    shape: ModelShape | None = None, overhead: float = OVERHEAD_BYTES) -> MemoryEstimate:
    """Bytes per device of one method's training step (`shape` spares the meta model; micro-batch = batch / N)."""
    if shape is None:
        if config is None:
            raise ValueError("estimate_memory needs a config or a precomputed ModelShape")
        shape = model_shape(config, adapter.targets)
    seq = seq_len if seq_len is not None else (shape.tokens_per_example or train.max_length)
    width = 2 if train.precision == "bf16" else DTYPE_BYTES[dtype]
    stage3 = train.zero_stage == 3
    micro = -(-train.batch_size // world_size)
    base = 0.0 if (stage3 and train.offload_params) else shape.n_params * width / (world_size if stage3 else 1)
    gathered = max(shape.largest_block, shape.largest_tensor) * width if stage3 else 0.0
    params, grads, optim = _adapter_terms(shape.adapter_params(adapter.rank), train, world_size)
    bound = 0.0 if BOUNDS.get(adapter.bound).low_rank else BOUND_DENSE_MATRICES * shape.largest_adapted() * width
    tokens = micro * seq * forward_batches
    per_block = tokens * shape.hidden * activation_factor(shape) * width
    if train.gradient_checkpointing:
        acts = tokens * shape.hidden * shape.n_layers * width + per_block
    else:
        acts = per_block * shape.n_layers
    logit_rows = tokens if shape.logits_per_token else micro * forward_batches
    logits = logit_rows * shape.vocab * 4 * LOGIT_COPIES
    copies = 2 if train.sensitivity is not None else 1  # the sensitivity twin: a second model and optimizer
    return MemoryEstimate(base=base * copies, gathered=gathered, adapter=params * copies,
                          adapter_grads=grads * copies, optimizer=optim * copies, bound=bound, activations=acts,
                          logits=logits, overhead=overhead)
