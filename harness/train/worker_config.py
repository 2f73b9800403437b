"""What the driver sends the Ray Train workers: every (method, seed) run, each dataset once, the run settings.

Typed dataclasses, not dicts, across Ray: `ray_run` builds a `WorkerConfig`, `loop.train_loop_per_worker` reads it.
Ray Train's controller unpickles it too (it is in the trainer's `train_loop_config`), so this module imports nothing
heavy at module level: the controller then starts in about 2 s instead of 5 (it would import torch, transformers and
every registry through `harness.spec`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.spec import MethodSpec


@dataclass(frozen=True)
class PlannedTraining:
    """One (method, seed) training as the workers see it: its datasets by content key and its DeepSpeed config."""

    key: str
    method: dict[str, Any]  # the resolved MethodSpec as JSON data (validated again in the worker)
    seed: int
    target: str  # the directory (or hub id) the target model and processor load from
    forget: str
    retain: str | None
    prepare_forget: str | None  # the forget set with the benchmark's own targets, for the objective's prepare
    deepspeed: dict[str, Any]
    modality: str = "text"  # of the target model and the examples (harness.models.modality)

    def method_spec(self) -> MethodSpec:
        """The run's method, validated."""
        from harness.spec import MethodSpec

        return MethodSpec.model_validate(self.method)


@dataclass(frozen=True)
class KillAt:
    """Test hook: the worker of `rank` SIGKILLs itself once (the `marker` file records it), before step `step` of
    run `run` (its index)."""

    rank: int
    step: int
    marker: str
    run: int = 0


@dataclass(frozen=True)
class WorkerConfig:
    """Every run of one Ray Train run and what they share."""

    runs: list[PlannedTraining]
    data: dict[str, list[Any]]
    use_gpu: bool
    threads: int
    #: test hook: each names a worker that SIGKILLs itself once
    faults: tuple[KillAt, ...] = ()
    #: run key -> checkpoint directory of an earlier, interrupted attempt to continue from
    resume_from: dict[str, str] = field(default_factory=dict)
    #: the driver's progress channel (harness.train.progress.ProgressChannel; None: no progress bars)
    progress: Any = None
