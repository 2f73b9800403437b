"""Bounded LoRA adapters: bounds, the fused layer, attaching to models, PEFT-format checkpoints."""

from harness.adapters.attachment import (
    adapted_layers,
    adapter_norm_bound,
    adapter_norms,
    adapter_parameters,
    adapter_product_sq,
    adapters_disabled,
    attach,
    attach_to,
    detach,
    merge,
)
from harness.adapters.bounds import BOUNDS, Bound, make_bound
from harness.adapters.checkpoint import (
    load_adapter,
    load_as_peft_model,
    read_bound_config,
    save_adapter,
    upgrade_adapter,
)
from harness.adapters.extras import linear_slope, set_origin, set_update_mask
from harness.adapters.fused import BoundedLinearFn, bounded_linear, naive_bounded_linear
from harness.adapters.layer import BoundedLoRALinear
from harness.adapters.targets import MLP_TARGETS, target_module_names

__all__ = [
    "BOUNDS",
    "MLP_TARGETS",
    "Bound",
    "BoundedLinearFn",
    "BoundedLoRALinear",
    "adapted_layers",
    "adapter_norm_bound",
    "adapter_norms",
    "adapter_parameters",
    "adapter_product_sq",
    "adapters_disabled",
    "attach",
    "attach_to",
    "bounded_linear",
    "detach",
    "linear_slope",
    "load_adapter",
    "load_as_peft_model",
    "make_bound",
    "merge",
    "naive_bounded_linear",
    "read_bound_config",
    "save_adapter",
    "set_origin",
    "set_update_mask",
    "target_module_names",
    "upgrade_adapter",
]
