"""A run's checkpoint on the workers: the files it holds, the run's state (state.json) and where a restarted or
resumed worker picks up (the latest checkpoint of this attempt, or one an earlier attempt left)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATE_FILE = "state.json"
ADAPTER_DIR = "adapter"
ENGINE_TAG = "engine"
#: The objective's preparation result in a checkpoint (safetensors), loaded by a resumed worker.
PREPARED_FILE = "prepared.safetensors"
# Each report names the workers' placement group (in Tune's trial results, for diagnosing a trial's resources).
PLACEMENT_GROUP_KEY = "placement_group"
#: Reported with every metrics row: true on a run's final checkpoint. Not `done`, which Ray Tune reads as
#: "this trial has finished" when a trial forwards the trainer's reports (TuneReportCallback).
RUN_DONE_KEY = "run_done"


@dataclass
class ResumePoint:
    """Where the latest checkpoint left off: its run index, whether that run was done, and its state."""

    run: int
    done: bool
    state: dict[str, Any]
    checkpoint: Any


def latest_checkpoint() -> ResumePoint | None:
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        state = json.loads((Path(d) / STATE_FILE).read_text())
    return ResumePoint(state["run"], bool(state.get("done")), state, checkpoint)


def earlier_checkpoint(path: str, index: int) -> ResumePoint:
    """A checkpoint an earlier, interrupted attempt of the job left for this run (`harness run --resume`)."""
    from ray.train import Checkpoint

    state = json.loads((Path(path) / STATE_FILE).read_text())
    return ResumePoint(index, False, state, Checkpoint.from_directory(path))


@dataclass
class RunState:
    """Where a run stands: its step log so far and whether it diverged (why). Written into every checkpoint
    (state.json, with the run's index, key and preparation record) and read back by a resumed worker."""

    log: list[dict[str, Any]] = field(default_factory=list)
    diverged: bool = False
    reason: str | None = None
    #: seconds the run took in earlier attempts (a resumed run adds its own)
    earlier_seconds: float = 0.0

    @classmethod
    def resumed(cls, state: dict[str, Any]) -> RunState:
        """The state a checkpoint recorded (state.json)."""
        return cls(log=list(state["log"]), earlier_seconds=float(state.get("seconds", 0.0)))

    def record(self, index: int, key: str, prepare: dict[str, Any], step: int, seconds: float,
               done: bool = False) -> dict[str, Any]:
        """The state.json of a checkpoint at `step`."""
        out = {"log": self.log, "run": index, "key": key, "prepare": prepare, "diverged": self.diverged,
               "reason": self.reason, "step": step, "seconds": seconds}
        return {**out, "done": True} if done else out
