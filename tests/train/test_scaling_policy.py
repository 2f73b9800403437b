"""On a local instance harness's trainers ask no autoscaler for resources (`ray_run._without_autoscaling_requests`):
the fixed-size policy still sizes the worker group, and never creates the coordinator's client (whose first use
starts the instance's `_AutoscalingCoordinatorActor`). tests/train/test_distributed.py checks the actor never
starts in real fits."""

from __future__ import annotations

from ray.train import ScalingConfig
from ray.train.v2._internal.execution.scaling_policy import FixedScalingPolicy
from ray.train.v2._internal.execution.scaling_policy.scaling_policy import ResizeDecision

from harness.train.ray_run import _without_autoscaling_requests


def test_the_local_policy_sizes_the_group_without_a_coordinator_client() -> None:
    policy = _without_autoscaling_requests(FixedScalingPolicy(ScalingConfig(num_workers=2)))
    assert isinstance(policy, FixedScalingPolicy)
    policy.after_controller_start(None)  # the base class would create the client and send a request here
    decision = policy.make_decision_for_non_running_worker_group()
    assert isinstance(decision, ResizeDecision) and decision.num_workers == 2
    assert policy._coordinator_client is None
    policy.before_controller_abort()  # nothing to cancel


def test_any_other_policy_is_left_as_it_is() -> None:
    class Elastic(FixedScalingPolicy):
        pass

    other = Elastic(ScalingConfig(num_workers=1))
    assert _without_autoscaling_requests(other) is other
