"""The sensitivity twin (harness/train/twin.py) through DeepSpeed, in this process: with epsilon 0 it is the run,
bit for bit, at every step (adapter dropout on, so both must draw the same random numbers); the run's own numbers
do not change when it has a twin; a twin costs exactly one more forward/backward of every micro-batch per step
(plus the probe forwards), and nothing when off."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from harness.adapters import adapter_parameters, attach
from harness.config import AdapterSpec, SensitivitySpec, TrainSpec
from harness.data.batch import TokenBatch
from harness.models.text import build_builtin
from harness.objectives import make_objective
from harness.spec import MethodSpec, objective_spec
from harness.train.deepspeed_config import build_deepspeed_config
from harness.train.loop import StepOutcome, make_optimizer, optimizer_step
from harness.train.twin import SENSITIVITY_KEYS, Twin

pytestmark = pytest.mark.e2e

STEPS = 5
VOCAB = 32
DEVICE = torch.device("cpu")


def _batch(seed: int) -> TokenBatch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (2, 7), generator=g)
    return TokenBatch(ids, torch.ones_like(ids), ids.clone())


class _Counter:
    """Counts a model's forward calls (a hook) and an engine's backward calls (a wrapper)."""

    def __init__(self, engine: Any, model: torch.nn.Module) -> None:
        self.forward = self.backward = 0
        model.register_forward_hook(lambda *_: self._forward())
        inner = engine.backward

        def backward(*args: Any, **kwargs: Any) -> Any:
            self.backward += 1
            return inner(*args, **kwargs)

        engine.backward = backward

    def _forward(self) -> None:
        self.forward += 1


def _train(sensitivity: SensitivitySpec | None, grad_accum: int = 1) -> dict[str, Any]:
    """STEPS optimizer steps of gradient difference (forget and retain batches) on a tiny Llama with a sine
    adapter with dropout, with or without a twin; its outcomes, final factors and call counts."""
    import deepspeed

    torch.manual_seed(0)
    train = TrainSpec(lr=1e-2, batch_size=2, grad_accum=grad_accum, scheduler="constant", sensitivity=sensitivity)
    method = MethodSpec(name="m", adapter=AdapterSpec(bound="sine", rank=2, omega=10, dropout=0.3), train=train)
    model = build_builtin("tiny-llama", VOCAB, seed=0)
    attach(model, method.adapter, seed=0)
    twin_model = copy.deepcopy(model) if sensitivity is not None else None

    def make_engine(module: torch.nn.Module) -> Any:
        return deepspeed.initialize(model=module, optimizer=make_optimizer(adapter_parameters(module), train),
                                    config=build_deepspeed_config(train, 1))[0]

    engine = make_engine(model)
    counts = {"run": _Counter(engine, model)}
    twin = None
    if sensitivity is not None and twin_model is not None:
        probe = _batch(99) if sensitivity.probe_batch else None
        twin = Twin.build(twin_model, sensitivity, 0, make_engine, probe)
        counts["twin"] = _Counter(twin.engine, twin.model)
        twin.start(engine, model)
    objective = make_objective(objective_spec(name="gd"))
    outcomes: list[StepOutcome] = []
    params = adapter_parameters(model)
    for step in range(STEPS):
        batches = [(_batch(2 * (step * grad_accum + i)), _batch(2 * (step * grad_accum + i) + 1))
                   for i in range(grad_accum)]
        outcomes.append(optimizer_step(engine, model, params, objective, method, batches, 1, DEVICE, step / STEPS,
                                       twin))
    return {"outcomes": outcomes, "run": [p.detach().clone() for p in params],
            "twin": [p.detach().clone() for p in adapter_parameters(twin.model)] if twin else None,
            "counts": {k: (c.forward, c.backward) for k, c in counts.items()}}


def test_a_twin_with_epsilon_zero_is_the_run_at_every_step(process_group: None) -> None:
    got = _train(SensitivitySpec(epsilon=0.0, probe_batch=2))
    for outcome in got["outcomes"]:
        assert outcome.stepped
        assert set(SENSITIVITY_KEYS) <= set(outcome.twin)
        assert outcome.twin["sens_adapter"] == 0.0 and outcome.twin["sens_logits"] == 0.0
        assert outcome.twin["sens_loss"] == 0.0
        assert outcome.twin["sens_adapter_signal"] > 0 and outcome.twin["sens_logits_signal"] > 0
    for run, twin in zip(got["run"], got["twin"], strict=True):
        assert torch.equal(run, twin)


def test_the_run_is_the_same_with_and_without_a_twin(process_group: None) -> None:
    plain = _train(None)
    with_twin = _train(SensitivitySpec(epsilon=1e-3, probe_batch=2))
    assert [o.values for o in with_twin["outcomes"]] == [o.values for o in plain["outcomes"]]
    assert [o.grad_norm for o in with_twin["outcomes"]] == [o.grad_norm for o in plain["outcomes"]]
    for a, b in zip(with_twin["run"], plain["run"], strict=True):
        assert torch.equal(a, b)
    assert all(o.twin == {} for o in plain["outcomes"])
    # a perturbed twin is a different trajectory from the first step on
    assert all(o.twin["sens_adapter"] > 0 and o.twin["sens_loss"] >= 0 for o in with_twin["outcomes"])


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_a_twin_costs_one_forward_backward_per_step_and_nothing_when_off(process_group: None,
                                                                         grad_accum: int) -> None:
    per_step = 2 * grad_accum  # forward passes: a forget and a retain batch per micro-batch
    plain = _train(None, grad_accum)["counts"]
    assert plain == {"run": (STEPS * per_step, STEPS * grad_accum)}
    twin = _train(SensitivitySpec(epsilon=1e-7, probe_batch=0), grad_accum)["counts"]
    assert twin == {"run": (STEPS * per_step, STEPS * grad_accum), "twin": (STEPS * per_step, STEPS * grad_accum)}
    probed = _train(SensitivitySpec(epsilon=1e-7, probe_batch=2), grad_accum)["counts"]
    # the probe batch: one no-grad forward of each model per step, plus the run's start logits
    assert probed == {"run": (STEPS * (per_step + 1) + 1, STEPS * grad_accum),
                      "twin": (STEPS * (per_step + 1), STEPS * grad_accum)}
