"""A run's checkpoint on the workers: the files it holds, the run's state (state.json) and where a restarted or
resumed worker picks up (the latest checkpoint of this attempt, or one an earlier attempt left)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
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
class CheckpointRecord:
    """A checkpoint's state.json: the run's step log so far, its index and key, the objective's preparation record
    (`passes`, `loads`, `seconds`), whether it diverged (why), the step it reached, its seconds, and whether it is
    the run's final (`done`) checkpoint."""

    log: list[dict[str, Any]]
    run: int
    key: str
    prepare: dict[str, Any]
    diverged: bool
    reason: str | None
    step: int
    seconds: float
    done: bool = False

    @classmethod
    def read(cls, directory: Path) -> CheckpointRecord:
        """The record in a checkpoint directory."""
        state = json.loads((Path(directory) / STATE_FILE).read_text())
        return cls(log=list(state["log"]), run=state["run"], key=state["key"], prepare=state["prepare"],
                   diverged=state["diverged"], reason=state["reason"], step=int(state["step"]),
                   seconds=float(state.get("seconds", 0.0)), done=bool(state.get("done")))

    def write(self, directory: Path) -> None:
        """Write it as the checkpoint directory's state.json (`done` only on a final checkpoint)."""
        state = asdict(self)
        if not self.done:
            del state["done"]
        (Path(directory) / STATE_FILE).write_text(json.dumps(state))


@dataclass
class ResumePoint:
    """Where a checkpoint left off: its run index, whether that run was done, its record and the checkpoint."""

    run: int
    done: bool
    state: CheckpointRecord
    checkpoint: Any


def latest_checkpoint() -> ResumePoint | None:
    """The latest checkpoint of this attempt (a restarted worker group picks up there); None at the start."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        state = CheckpointRecord.read(Path(d))
    return ResumePoint(state.run, state.done, state, checkpoint)


def earlier_checkpoint(path: str, index: int) -> ResumePoint:
    """A checkpoint an earlier, interrupted attempt of the job left for this run (`harness run --resume`)."""
    from ray.train import Checkpoint

    return ResumePoint(index, False, CheckpointRecord.read(Path(path)), Checkpoint.from_directory(path))


@dataclass
class TrainingState:
    """Where a training stands: its step log so far and whether it diverged (why). Written into every checkpoint
    (`CheckpointRecord`, with the run's index, key and preparation record) and read back by a resumed worker."""

    log: list[dict[str, Any]] = field(default_factory=list)
    diverged: bool = False
    reason: str | None = None
    #: seconds the run took in earlier attempts (a resumed run adds its own)
    earlier_seconds: float = 0.0

    @classmethod
    def resumed(cls, record: CheckpointRecord) -> TrainingState:
        """The state a checkpoint recorded."""
        return cls(log=list(record.log), earlier_seconds=record.seconds)

    def record(self, index: int, key: str, prepare: dict[str, Any], step: int, seconds: float,
               done: bool = False) -> CheckpointRecord:
        """The record of a checkpoint at `step`."""
        return CheckpointRecord(log=self.log, run=index, key=key, prepare=prepare, diverged=self.diverged,
                                reason=self.reason, step=step, seconds=seconds, done=done)
