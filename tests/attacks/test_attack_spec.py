"""The `attacks:` spec section: off by default, one switch per attack, bad values named, light to import."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness.config.attacks import AttacksSpec, RelearnSpec
from harness.core.errors import SpecError
from harness.spec import validate_spec


def test_attacks_are_off_by_default_and_switch_on_one_by_one() -> None:
    spec = validate_spec({"methods": [{"name": "m"}]})
    assert spec.attacks.enabled() == []
    spec = validate_spec({"methods": [{"name": "m"}], "attacks": {"quantize": {"enabled": True, "schemes": ["nf4"]},
                                                                  "mia": {"enabled": True}}})
    assert spec.attacks.enabled() == ["quantize", "mia"]


def test_relearn_curve_is_0_quarter_half_full() -> None:
    assert RelearnSpec(steps=8).curve() == [0, 2, 4, 8]
    assert RelearnSpec(steps=0).curve() == [0]
    assert RelearnSpec(steps=10, points=[10, 5]).curve() == [0, 5, 10]


@pytest.mark.parametrize("attacks, match", [
    ({"quantize": {"schemes": ["int3"]}}, "attacks.quantize.schemes.0"),
    ({"relearn": {"fraction": 1.0}}, "attacks.relearn.fraction"),
    ({"relearn": {"steps": 4, "points": [5]}}, "points must lie in"),
    ({"quantize": {"nf4_blocksize": 48}}, "power of two"),
    ({"rephrase": {"forms": ["shout"]}}, "attacks.rephrase.forms.0"),
    ({"mia": {"statistics": ["recall"]}}, "attacks.mia.statistics.0"),
    ({"relearn": {"enabeld": True}}, "attacks.relearn.enabeld"),
])
def test_bad_attack_settings_name_the_field(attacks: dict, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        validate_spec({"methods": [{"name": "m"}], "attacks": attacks})


def test_the_section_imports_without_torch() -> None:
    code = "import sys, harness.config.attacks; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
    assert AttacksSpec().model_dump()["relearn"]["enabled"] is False
