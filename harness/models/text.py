"""Model and tokenizer loading: hub ids, local directories, and builtin tiny configs built offline."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig

from harness.config import BUILTIN_PREFIX
from harness.core.errors import ModelError
from harness.core.registry import Registry

#: Builtin tiny architectures: name -> function(vocab_size) -> config. Built from config, random init.
BUILTIN_MODELS: Registry[Any] = Registry("builtin model")


def _common(vocab_size: int) -> dict[str, Any]:
    return {"vocab_size": vocab_size, "tie_word_embeddings": True}


@BUILTIN_MODELS.register("tiny-llama")
def _tiny_llama(vocab_size: int) -> PretrainedConfig:
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=512, rms_norm_eps=1e-5,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, **_common(vocab_size),
    )


@BUILTIN_MODELS.register("small-llama")
def _small_llama(vocab_size: int) -> PretrainedConfig:
    """About 10M parameters (8 layers, hidden 320): a deeper model to see where the stability picture changes."""
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=320, intermediate_size=864, num_hidden_layers=8, num_attention_heads=5,
        num_key_value_heads=5, max_position_embeddings=512, rms_norm_eps=1e-5,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, **_common(vocab_size),
    )


@BUILTIN_MODELS.register("tiny-gpt2")
def _tiny_gpt2(vocab_size: int) -> PretrainedConfig:
    from transformers import GPT2Config

    return GPT2Config(n_embd=128, n_layer=4, n_head=4, n_positions=512, n_inner=512,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0, **_common(vocab_size))


@BUILTIN_MODELS.register("tiny-gpt-neox")
def _tiny_neox(vocab_size: int) -> PretrainedConfig:
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                         max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                         **_common(vocab_size))


@BUILTIN_MODELS.register("tiny-gpt-neo")
def _tiny_neo(vocab_size: int) -> PretrainedConfig:
    from transformers import GPTNeoConfig

    return GPTNeoConfig(hidden_size=128, intermediate_size=512, num_layers=4, num_heads=4,
                        attention_types=[[["global", "local"], 2]], window_size=64,
                        max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                        **_common(vocab_size))


@BUILTIN_MODELS.register("tiny-phi")
def _tiny_phi(vocab_size: int) -> PretrainedConfig:
    from transformers import PhiConfig

    return PhiConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                     max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                     **_common(vocab_size))


@BUILTIN_MODELS.register("tiny-opt")
def _tiny_opt(vocab_size: int) -> PretrainedConfig:
    from transformers import OPTConfig

    return OPTConfig(hidden_size=128, ffn_dim=512, num_hidden_layers=4, num_attention_heads=4,
                     word_embed_proj_dim=128, max_position_embeddings=512,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0, **_common(vocab_size))


def is_builtin(name: str) -> bool:
    """True for `builtin:<name>` model names."""
    return name.startswith(BUILTIN_PREFIX)


def builtin_config(name: str, vocab_size: int) -> PretrainedConfig:
    """Config of a builtin tiny model (`builtin:tiny-llama` or `tiny-llama`)."""
    return BUILTIN_MODELS.get(name.removeprefix(BUILTIN_PREFIX))(vocab_size)


def build_builtin(name: str, vocab_size: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A randomly initialised builtin tiny causal LM, reproducible from `seed`."""
    config = builtin_config(name, vocab_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model


def _resolve(name: str) -> str:
    path = Path(name).expanduser()
    return str(path) if path.exists() else name


def safetensors_problem(path: str | Path) -> str | None:
    """What is wrong with a safetensors file (unreadable, truncated, bad header), or None; reads only its header.

    The header lists every tensor's byte range and safetensors checks that they cover the file exactly,
    so a truncated or padded file is caught without reading the tensors.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            fh.keys()
    except SafetensorError as err:
        return f"is not a readable safetensors file (truncated or damaged?): {err}"
    except OSError as err:
        return f"cannot be read: {err.strerror or err}"
    return None


def damaged_file(directory: str | Path) -> str | None:
    """The first damaged file of a model or adapter directory as `<path> <what is wrong>`, or None.

    Checks that every `*.json` parses and every `*.safetensors` header is sound (cheap: headers only).
    """
    directory = Path(directory)
    for path in sorted(directory.glob("*.json")):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            return f"{path} is not valid JSON (truncated or edited?): {err}"
        except OSError as err:
            return f"{path} cannot be read: {err.strerror or err}"
    for path in sorted(directory.glob("*.safetensors")):
        problem = safetensors_problem(path)
        if problem:
            return f"{path} {problem}"
    return None


def _files_of(name: str, source: str, revision: str | None) -> Path | None:
    """The local directory holding a model's files: itself, or its snapshot in the hub cache (None if unknown)."""
    if Path(source).is_dir():
        return Path(source)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the local hub cache: nothing to inspect
        return None


def load_pretrained(name: str, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False,
                    revision: str | None = None) -> tuple[torch.nn.Module, Any]:
    """Load a causal LM and its tokenizer from a local directory or a hub id (cache only when offline).

    Any failure to read the model's files is a ModelError naming the model and, where one is damaged
    (a truncated safetensors file, a JSON file cut short), that file and what is wrong with it.
    """
    source = _resolve(name)
    with loading(name, source, revision):
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, trust_remote_code=trust_remote_code, revision=revision, use_safetensors=True
        )
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, revision=revision)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return own_aligned(model), tokenizer


#: Byte alignment of fresh torch CPU allocations (c10's `gAlignment`).
_ALIGNMENT = 64


def own_aligned(model: torch.nn.Module) -> torch.nn.Module:
    """Copy every parameter and buffer that is not `_ALIGNMENT`-byte aligned into fresh storage, in place.

    `from_pretrained` returns tensors that view the memory-mapped safetensors file at 8-byte offsets, while a
    built, trained or deep-copied model owns aligned storage. CPU GEMM/attention kernels take different
    (unaligned) code paths on such weights, so the same model scored from disk and from memory differs in the
    last bits. Tied weights are one `Parameter`, so they stay tied.
    """
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.device.type == "cpu" and t.numel() and t.data_ptr() % _ALIGNMENT:
                t.data = t.data.clone(memory_format=torch.contiguous_format)
    return model


@contextlib.contextmanager
def loading(name: str, source: str, revision: str | None) -> Iterator[None]:
    """Turn any failure to read a model's files into a ModelError naming the model and its damaged file."""
    try:
        yield
    except ModelError:
        raise
    except Exception as err:  # noqa: BLE001 - safetensors, tokenizers and transformers each raise their own types
        files = _files_of(name, source, revision)
        cause = (damaged_file(files) if files is not None else None) or f"{type(err).__name__}: {err}"
        raise ModelError(f"cannot load model {name!r}: {cause}") from None


#: Published config.json files of the models the shipped job specs name, for offline `--dry-run` plans.
SHIPPED_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"


def _shipped_path(name: str) -> Path:
    return SHIPPED_CONFIG_DIR / (name.replace("/", "--") + ".json")


def shipped_config_ids() -> list[str]:
    """Hub ids whose architecture config ships with harness (usable offline without the hub cache)."""
    return sorted(p.stem.replace("--", "/", 1) for p in SHIPPED_CONFIG_DIR.glob("*.json"))


def shipped_config(name: str) -> PretrainedConfig | None:
    """The shipped config of hub id `name` (architecture only, no weights), or None if none ships."""
    path = _shipped_path(name)
    if "/" not in name or not path.is_file():
        return None
    data = json.loads(path.read_text())
    config = AutoConfig.for_model(data.pop("model_type"), **data)
    config.name_or_path = name
    return config


def _from_cache(name: str, trust_remote_code: bool) -> PretrainedConfig | None:
    try:
        return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code, local_files_only=True)
    except (OSError, ValueError):
        return None


def load_model_config(name: str, trust_remote_code: bool = False) -> PretrainedConfig:
    """A model's config without its weights: local directory, hub cache, shipped config, then the hub."""
    local = Path(name).expanduser().exists()
    if not local:
        config = _from_cache(name, trust_remote_code) or shipped_config(name)
        if config is not None:
            return config
    try:
        return AutoConfig.from_pretrained(_resolve(name), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot read the config of model {name!r}: {err} (configs shipped for offline use: "
                         + ", ".join(shipped_config_ids()) + ")") from None


def torch_dtype(name: str) -> torch.dtype:
    """`float32` / `bfloat16` / `float16` as a torch dtype."""
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def save_model(model: torch.nn.Module, tokenizer: Any, out_dir: str | Path) -> Path:
    """Save weights (safetensors) and tokenizer so `load_pretrained(out_dir)` reads them back."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
