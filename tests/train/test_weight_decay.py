"""`train.weight_decay` reaches the optimizer DeepSpeed steps (ZeRO 0 and 2): with zero gradients, one AdamW step
shrinks every adapter factor by exactly `1 - lr * weight_decay` (decoupled decay), and nothing else moves."""

from __future__ import annotations

import pytest
import torch

from harness.adapters import adapter_parameters, attach
from harness.config import AdapterSpec, TrainSpec
from harness.models.text import build_builtin
from harness.train.deepspeed_config import build_deepspeed_config
from harness.train.loop import make_optimizer

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("zero", [0, 2])
def test_weight_decay_shrinks_the_factors_through_deepspeed(process_group: None, zero: int) -> None:
    import deepspeed

    train = TrainSpec(lr=0.1, weight_decay=0.5, zero_stage=zero, batch_size=1)
    model = build_builtin("tiny-llama", 32, seed=0)
    attach(model, AdapterSpec(bound="sine", rank=2), seed=0)
    with torch.no_grad():
        for p in adapter_parameters(model):
            p.fill_(0.25)
    params = adapter_parameters(model)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=make_optimizer(params, train),
                                                   config=build_deepspeed_config(train, 1))
    assert optimizer.param_groups[0]["weight_decay"] == 0.5
    ids = torch.randint(0, 32, (1, 6))
    engine.backward(engine(input_ids=ids).logits.sum() * 0.0)
    engine.step()
    for p in adapter_parameters(model):
        torch.testing.assert_close(p.detach(), torch.full_like(p, 0.25 * (1 - 0.1 * 0.5)))
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p.detach(), frozen[n]), n
