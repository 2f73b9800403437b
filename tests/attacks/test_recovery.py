"""The recovery score on hand-made numbers."""

from __future__ import annotations

import math

import pytest

from harness.attacks.recovery import recovery_score


def test_recovery_on_hand_made_numbers() -> None:
    # target forget probability 0.9, unlearned 0.1: unlearning removed 0.8
    assert recovery_score(0.1, 0.1, 0.9) == 0.0  # nothing comes back
    assert recovery_score(0.5, 0.1, 0.9) == pytest.approx(0.5)  # half of the removed 0.8
    assert recovery_score(0.9, 0.1, 0.9) == pytest.approx(1.0)  # back to the target
    assert recovery_score(0.05, 0.1, 0.9) == pytest.approx(-0.0625)  # the attack removes more
    assert recovery_score(1.0, 0.1, 0.9) == pytest.approx(1.125)  # beyond the target


def test_recovery_is_invariant_to_an_affine_change_of_the_metric() -> None:
    # accuracy 0.9 -> 0.2 -> 0.55 is UA 0.1 -> 0.8 -> 0.45: the same share comes back
    assert recovery_score(0.55, 0.2, 0.9) == pytest.approx(recovery_score(0.45, 0.8, 0.1)) == pytest.approx(0.5)


def test_recovery_is_undefined_when_nothing_was_removed() -> None:
    assert math.isnan(recovery_score(0.5, 0.3, 0.3))
    assert math.isnan(recovery_score(float("nan"), 0.1, 0.9))
