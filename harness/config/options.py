"""Spec building blocks with no dependencies: the strict base model and the option bases that benchmarks and
objectives extend beside their own code (harness/spec.py gathers them into discriminated unions)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Discriminator, Field, Tag

from harness.config.loader import StrictModel
from harness.core.registry import Registry

__all__ = ["BENCHMARK_OPTIONS", "BenchmarkOptions", "ObjectiveOptions", "StrictModel", "tagged_union"]


class BenchmarkOptions(StrictModel):
    """Options every benchmark has; each benchmark subclasses it with `name: Literal[...]` and its own fields.

    `source` is `synthetic` (the embedded default, generated and cached under `data_dir`), a local directory
    of the published files, or a hub id (from the local cache). `seed` fixes the synthetic set and any
    subsampling, so the data stay the same across the job's `seeds`.
    """

    #: What the benchmark's models read: "text" (causal LMs) or "image" (classifiers).
    modality: ClassVar[str] = "text"

    name: str
    source: str = "synthetic"
    data_dir: str = "~/.cache/harness/data"
    seed: int = Field(0, description="seed of the synthetic set and of subsampling (not of training)")

    def describe(self) -> str:
        """What is forgotten, for titles and plans (e.g. `tofu forget10`)."""
        return self.name


class ObjectiveOptions(StrictModel):
    """Options every objective has: `loss = w_forget * L_forget + w_retain * L_retain`.

    Each objective subclasses it with `name: Literal[...]`, its own default `retain_loss` and its own fields.
    """

    name: str
    w_forget: float = Field(1.0, ge=0)
    w_retain: float = Field(1.0, ge=0)
    retain_loss: Literal["nll", "kl", "none"] = "nll"

    #: The objective's own parameters that `harness study` searches by default (dotted paths inside a method,
    #: distributions as in tune_spaces/): each objective declares its own beside its options.
    search_space: ClassVar[dict[str, dict[str, Any]]] = {}

    @property
    def uses_retain(self) -> bool:
        """Whether the retain term contributes (it has a loss and a positive weight)."""
        return self.retain_loss != "none" and self.w_retain > 0


#: Benchmark option models by benchmark name (`@BENCHMARK_OPTIONS.register("tofu")` beside each benchmark).
BENCHMARK_OPTIONS: Registry[type[BenchmarkOptions]] = Registry("benchmark")


def tagged_union(members: dict[str, type[BaseModel]], kind: str, default: str | None = None) -> Any:
    """A pydantic union of `members` chosen by their `name` field (`default` when the input names none)."""

    def pick(value: Any) -> str | None:
        name = value.get("name", default) if isinstance(value, dict) else getattr(value, "name", None)
        return name if isinstance(name, str) else None

    from typing import Annotated, Union

    choices = tuple(Annotated[cls, Tag(name)] for name, cls in sorted(members.items()))
    return Annotated[Union[choices], Discriminator(pick)]  # noqa: UP007 - a runtime-built union needs typing.Union
