"""The adapter checkpoint format: file names and the markers that tell bounded adapters from plain LoRA."""

WEIGHTS_NAME = "adapter_model.safetensors"


CONFIG_NAME = "adapter_config.json"


BOUND_CONFIG_NAME = "bound_config.json"


README_NAME = "README.md"


PEFT_PREFIX = "base_model.model."


#: 1: every adapter_config.json said `peft_type: LORA`; 2: bounded adapters have their own peft_type.
FORMAT_VERSION = 2


#: The peft_type of bounded adapters: plain PEFT does not know it (harness.adapters.peft_bounded teaches it).
BOUNDED_PEFT_TYPE = "HARNESS_BOUNDED_LORA"


#: `init_lora_weights` as saved for bounded adapters: vLLM's LoRA loader ignores peft_type but refuses an
#: unknown init (vllm/lora/peft_helper.py), so it cannot serve them as plain LoRA either.
BOUNDED_INIT_MARKER = "harness_bounded_lora_not_plain_lora"
