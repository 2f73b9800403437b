"""Configuration at the bottom: the one strict pydantic base and the one YAML loader of every command's input file.

Every input file (job spec, tune search space, sweep file, nightly suite) is read by `load_yaml` and validated by
`validate_config`, so a malformed file or an invalid field fails the same way for every command: a `SpecError`
(exit 2) naming the file and its line (YAML errors) or the field path (validation errors), never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from harness.core.errors import SpecError

Model = TypeVar("Model", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for spec sections: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class FrozenModel(StrictModel):
    """A strict model that cannot change once built (records read back from disk, model sources)."""

    model_config = ConfigDict(frozen=True)


def error_lines(err: ValidationError) -> list[str]:
    """One `path: message` line per validation error, in the words of a spec (unknown names listed)."""
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "union_tag_invalid":
            known = str(e["ctx"]["expected_tags"]).replace("'", "")
            msg = f"unknown name {e['ctx']['tag']!r} (known: {known})"
        elif e["type"] == "union_tag_not_found":
            msg = "needs a `name`"
        lines.append(f"  {path}: {msg}")
    return lines


def yaml_error(err: yaml.YAMLError) -> str:
    """A YAML parse error in one line: `line L, column C: problem` (where the parser knows the place)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).strip().splitlines()[0]
    context = getattr(err, "context", None)
    what = f"{problem} ({context})" if context else str(problem)
    if mark is None:
        return what
    return f"line {mark.line + 1}, column {mark.column + 1}: {what}"


def load_yaml(path: str | Path, what: str) -> dict[str, Any]:
    """The top-level mapping of the YAML file `path` (an empty file: `{}`); SpecError naming `what` and the file
    when it is missing, unreadable, not valid YAML (with the line) or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{what} {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"{what} {path} cannot be read: {err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpecError(f"{what} {path} is not valid YAML: {yaml_error(err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(f"invalid {what} {path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def validate_config(model: type[Model], data: Any, what: str, source: str | Path = "") -> Model:
    """`model` validated from raw `data`; SpecError `invalid <what> <source>:` with one `field: message` line per
    error."""
    where = f" {source}" if str(source) else ""
    if not isinstance(data, dict):
        raise SpecError(f"invalid {what}{where}: expected a mapping at the top level")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise SpecError("\n".join([f"invalid {what}{where}:", *error_lines(err)])) from None


def load_config(model: type[Model], path: str | Path, what: str) -> Model:
    """Read the YAML file `path` and validate it as `model` (see `load_yaml`, `validate_config`)."""
    return validate_config(model, load_yaml(path, what), what, path)
