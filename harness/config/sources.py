"""Models to score that the job did not train (`models:` entries and `--model NAME=SOURCE[,key=value...]`).

Loading them is `harness.scoring.load`'s job; this module only parses and validates where they are.
"""

from __future__ import annotations

from typing import Any, Literal

import yaml
from pydantic import AliasChoices, Field, ValidationError, field_validator

from harness.config.loader import FrozenModel
from harness.config.sections import REFERENCE_METHODS
from harness.core.errors import SpecError

SourceKind = Literal["hf", "peft", "harness", "run"]


#: Names the job's reference models take in the results; a scored model cannot take them.
RESERVED_NAMES = REFERENCE_METHODS


class ModelSource(FrozenModel):
    """One model to score: a name for its result rows, where it is, and how to load it."""

    name: str
    path: str = Field(validation_alias=AliasChoices("path", "source"))
    kind: SourceKind | None = None
    base: str | None = None
    method: str | None = None
    seed: int | None = Field(None, description="a run's method: only this seed (default: every seed it ran)")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    revision: str | None = None
    trust_remote_code: bool = False

    @field_validator("name")
    @classmethod
    def _usable_name(cls, v: str) -> str:
        if v in RESERVED_NAMES:
            raise ValueError(f"model name {v!r} is reserved for the job's reference models")
        if not v or not v.replace("_", "").replace("-", "").replace("+", "").replace(".", "").isalnum():
            raise ValueError(f"model name {v!r} must be letters, digits, '_', '-', '+' or '.'")
        return v


def parse_model_arg(text: str) -> ModelSource:
    """`NAME=SOURCE[,key=value...]` (the `--model` syntax) as a ModelSource; SpecError naming the argument."""
    name, sep, rest = text.partition("=")
    if not sep or not name.strip() or not rest.strip():
        raise SpecError(f"--model {text!r}: expected NAME=SOURCE[,key=value...]")
    path, *options = rest.split(",")
    fields: dict[str, Any] = {"name": name.strip(), "path": path.strip()}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep:
            raise SpecError(f"--model {text!r}: option {option!r} is not key=value")
        fields[key.strip()] = yaml.safe_load(value) if key.strip() == "trust_remote_code" else value.strip()
    try:
        return ModelSource.model_validate(fields)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg'].removeprefix('Value error, ')}"
                             for e in err.errors())
        raise SpecError(f"--model {text!r}: {problems}") from None
