"""Memory estimate: each term equals a hand count; ZeRO sharding, offload and checkpointing; shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import main
from harness.config import AdapterSpec, TrainSpec
from harness.core.errors import ModelError
from harness.models.text import builtin_config, load_model_config, shipped_config, shipped_config_ids
from harness.spec import load_spec
from harness.train.memory import GIB, OVERHEAD_BYTES, ModelShape, estimate_memory, model_shape

ROOT = Path(__file__).resolve().parents[2]

# builtin tiny-llama with a 1024-token vocabulary, counted by hand: hidden 128, intermediate 384,
# 4 layers, tied embeddings. Block: q,k,v,o 4*128*128 + gate,up,down 3*128*384 + 2 norms of 128.
H, INTER, L, V = 128, 384, 4, 1024
BLOCK = 4 * H * H + 3 * H * INTER + 2 * H
N_PARAMS = V * H + L * BLOCK + H  # embedding (tied with the head) + blocks + final norm
RANK = 8
N_ADAPTER = L * 3 * RANK * (H + INTER)  # gate/up/down each r * (d_in + d_out)
FACTOR = 8 + 2 + 4 * INTER / H  # attention + gated MLP, saved values per token and hidden unit


@pytest.fixture(scope="module")
def tiny() -> tuple[object, ModelShape]:
    config = builtin_config("tiny-llama", V)
    return config, model_shape(config)


def _train(**kw: object) -> TrainSpec:
    return TrainSpec(**{"batch_size": 8, "max_length": 64, **kw})


def test_model_shape_matches_hand_count(tiny: tuple[object, ModelShape]) -> None:
    _, shape = tiny
    assert shape.n_params == N_PARAMS
    assert (shape.hidden, shape.intermediate, shape.n_layers, shape.vocab, shape.gated_mlp) == (H, INTER, L, V, True)
    assert len(shape.adapted) == 3 * L and shape.adapter_params(RANK) == N_ADAPTER
    assert shape.largest_adapted() == H * INTER and shape.largest_block == BLOCK and shape.largest_tensor == V * H


def test_fp32_single_device_terms(tiny: tuple[object, ModelShape]) -> None:
    config, shape = tiny
    est = estimate_memory(config, AdapterSpec(bound="sine", rank=RANK), _train(), 1, dtype="float32",
                          forward_batches=2, shape=shape)
    tokens = 8 * 64 * 2
    assert est.base == N_PARAMS * 4 and est.gathered == 0
    assert est.adapter == N_ADAPTER * 4 and est.adapter_grads == N_ADAPTER * 4 and est.optimizer == N_ADAPTER * 8
    assert est.bound == 3 * H * INTER * 4
    assert est.activations == pytest.approx(tokens * H * FACTOR * 4 * L)
    assert est.logits == tokens * V * 4 * 3 and est.overhead == OVERHEAD_BYTES
    assert est.total == pytest.approx(sum(est.terms().values()))
    lora = estimate_memory(config, AdapterSpec(bound="none", rank=RANK), _train(), 1, shape=shape)
    assert lora.bound == 0


def test_zero_stages_shard_like_deepspeed(tiny: tuple[object, ModelShape]) -> None:
    config, shape = tiny
    n, a = 4, AdapterSpec(rank=RANK)
    z = {s: estimate_memory(config, a, _train(zero_stage=s, precision="bf16"), n, shape=shape) for s in range(4)}
    assert z[0].adapter == N_ADAPTER * 2 and z[0].adapter_grads == N_ADAPTER * 2 and z[0].optimizer == N_ADAPTER * 12
    assert z[1].optimizer == N_ADAPTER * 12 / n and z[1].adapter_grads == N_ADAPTER * 2
    assert z[2].adapter_grads == N_ADAPTER * 2 / n and z[2].adapter == N_ADAPTER * 2
    assert z[3].adapter == N_ADAPTER * 2 / n
    assert all(z[s].base == N_PARAMS * 2 and z[s].gathered == 0 for s in range(3))
    assert z[3].base == N_PARAMS * 2 / n and z[3].gathered == BLOCK * 2
    # the micro-batch per device is the global batch split over the workers
    assert z[3].logits == (8 // n) * 64 * V * 4 * 3
    assert z[3].bound == 3 * H * INTER * 2


def test_offload_zeroes_device_state(tiny: tuple[object, ModelShape]) -> None:
    config, shape = tiny
    t = _train(zero_stage=3, precision="bf16", offload_optimizer=True, offload_params=True)
    est = estimate_memory(config, AdapterSpec(rank=RANK), t, 2, shape=shape)
    assert est.optimizer == 0 and est.base == 0 and est.adapter == 0
    assert est.adapter_grads == N_ADAPTER * 2 / 2 and est.gathered == BLOCK * 2


def test_gradient_checkpointing_keeps_block_inputs(tiny: tuple[object, ModelShape]) -> None:
    config, shape = tiny
    est = estimate_memory(config, AdapterSpec(rank=RANK), _train(gradient_checkpointing=True), 1, shape=shape)
    tokens = 8 * 64
    assert est.activations == pytest.approx(tokens * H * L * 4 + tokens * H * FACTOR * 4)


@pytest.fixture(scope="module")
def llama8b() -> ModelShape:
    return model_shape(load_model_config("meta-llama/Llama-3.1-8B-Instruct"))


def test_llama31_8b_fits_with_zero3_bf16_not_fp32_single_gpu(llama8b: ModelShape) -> None:
    assert llama8b.n_params == 8_030_261_248  # the published parameter count
    spec = load_spec(ROOT / "jobs" / "tofu_llama31_8b.yaml")
    m = next(m for m in spec.methods if m.adapter.bound == "sine")
    assert (m.train.zero_stage, m.train.precision, spec.resources.num_workers) == (3, "bf16", 8)
    sharded = estimate_memory(None, m.adapter, m.train, 8, dtype="bfloat16", forward_batches=2, shape=llama8b)
    assert sharded.fits(80) and sharded.base == pytest.approx(llama8b.n_params * 2 / 8)
    # the same effective batch of 32 on one GPU in fp32, no ZeRO and no accumulation
    fp32 = m.train.model_copy(update={"zero_stage": 0, "precision": "fp32"})
    single = estimate_memory(None, m.adapter, fp32, 1, dtype="float32", forward_batches=2, shape=llama8b)
    assert not single.fits(80) and single.total > 80 * GIB


def test_shipped_configs_are_the_published_architectures() -> None:
    ids = shipped_config_ids()
    assert {"microsoft/phi-1_5", "meta-llama/Llama-2-7b-chat-hf", "meta-llama/Llama-3.1-8B-Instruct"} <= set(ids)
    c = shipped_config("meta-llama/Llama-3.1-8B-Instruct")
    assert (c.model_type, c.hidden_size, c.intermediate_size, c.num_hidden_layers) == ("llama", 4096, 14336, 32)
    assert (c.num_attention_heads, c.num_key_value_heads, c.vocab_size) == (32, 8, 128256)
    phi = shipped_config("microsoft/phi-1_5")
    assert (phi.model_type, phi.hidden_size, phi.intermediate_size, phi.vocab_size) == ("phi", 2048, 8192, 51200)
    assert shipped_config("nobody/nothing") is None


def test_unknown_model_error_lists_shipped_ids() -> None:
    with pytest.raises(ModelError, match="Llama-3.1-8B-Instruct"):
        load_model_config("nobody/no-such-model-xyz")


def test_dry_run_of_8b_job_prints_memory_table_offline(capsys: pytest.CaptureFixture) -> None:
    assert main(["run", str(ROOT / "jobs" / "tofu_llama31_8b.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "MLP layers" in out and "resolved spec:" in out and "gd_lora" in out and "gd_sine" in out
    table = out[out.index("memory per device"):out.index("resolved spec:")]
    for term in ("base", "gathered", "optimizer", "bound", "activations", "logits", "total"):
        assert term in table
    assert "fits on 80 GiB" in table and "ZeRO-3, bf16" in table


def test_a_sensitivity_twin_doubles_the_model_and_its_training_state(tiny: tuple[object, ModelShape]) -> None:
    from harness.config import SensitivitySpec

    config, shape = tiny
    adapter = AdapterSpec(bound="sine", rank=RANK)
    plain = estimate_memory(config, adapter, _train(), 1, forward_batches=2, shape=shape)
    twin = estimate_memory(config, adapter, _train(sensitivity=SensitivitySpec()), 1, forward_batches=2, shape=shape)
    for term in ("base", "adapter", "adapter_grads", "optimizer"):
        assert getattr(twin, term) == 2 * getattr(plain, term)
    for term in ("gathered", "bound", "activations", "logits", "overhead"):
        assert getattr(twin, term) == getattr(plain, term)
