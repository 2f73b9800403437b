"""A `harness tune` search space (YAML, see tune_spaces/): the method's settings to search and their distributions,
the objectives, the in-training proxy ASHA stops trials on, and ASHA's settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from harness.config import SearchObjective, StrictModel, load_config


class Proxy(StrictModel):
    """An in-training metric (from the trainer's reports) that ASHA stops trials on."""

    metric: str = "loss_retain"
    mode: Literal["max", "min"] = "min"


class Asha(StrictModel):
    """ASHA settings, in units of trainer reports."""

    grace_period: int = Field(2, ge=1)
    reduction_factor: float = Field(2.0, gt=1)
    max_t: int = Field(100, ge=1)


class TuneSpace(StrictModel):
    """A search space over the settings of one method of a job spec (dotted paths inside the method)."""

    method: str | None = None
    num_samples: int = Field(8, ge=1)
    max_concurrent: int = Field(1, ge=1)
    seed: int = 0
    objectives: list[SearchObjective] = Field(min_length=1)
    proxy: Proxy = Proxy()
    asha: Asha | None = Asha()
    #: A trial fails when its trainer's workers wait this long for resources that no running work will free.
    trainer_pending_timeout_s: float = Field(300.0, gt=0)
    params: dict[str, dict[str, Any]] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> TuneSpace:
        names = [o.metric for o in self.objectives]
        if len(set(names)) != len(names):
            raise ValueError("objectives must name different metrics")
        check_params(self.params, "params")
        return self


DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")


def check_params(params: dict[str, dict[str, Any]], where: str) -> None:
    """ValueError naming `where.<path>` unless every distribution is exactly one of DISTRIBUTIONS."""
    for path, dist in params.items():
        if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
            raise ValueError(f"{where}.{path}: give exactly one of {', '.join(DISTRIBUTIONS)}")


def load_space(path: str | Path) -> TuneSpace:
    """Read and validate a search-space YAML file."""
    return load_config(TuneSpace, path, "search space")


def domain(dist: dict[str, Any]) -> Any:
    """The Ray Tune search domain of one distribution (`{loguniform: [lo, hi]}`, ...)."""
    from ray import tune

    kind, args = next(iter(dist.items()))
    if kind == "choice":
        return tune.choice(list(args))
    return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[kind](*args)
