"""What one Ray Train worker keeps across its runs: rank, device, modality, processor, encoded data, the pristine
target model, and the objective's preparation pass."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from harness.config import TrainSpec
from harness.data.batch import Batch
from harness.data.encode import BatchStream
from harness.models.modality import Modality, get_modality
from harness.objectives import FORGET, RETAIN, Objective, PrepareContext
from harness.train.checkpoint import PREPARED_FILE, ResumePoint
from harness.train.placement import placement_group_id
from harness.train.worker_config import PlannedTraining, WorkerConfig

#: Models up to this size are kept as a pristine copy in memory between runs; larger ones are re-read.
KEEP_PRISTINE_BYTES = 2**30


class Worker:
    """What a worker keeps across runs: its rank, device, the current target's modality, processor and pristine
    model each run starts from, and encoded data."""

    def __init__(self, config: WorkerConfig) -> None:
        import ray.train

        ctx = ray.train.get_context()
        self.config = config
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.modality: Modality = get_modality("text")  # the current target's (`use_target`)
        self.placement_group = placement_group_id()
        self.progress = config.progress
        self._target: str | None = None
        self._pristine: torch.nn.Module | None = None
        self._encoded: dict[tuple[str, str, int], list[Any]] = {}

    def use_target(self, target: str, modality: str = "text") -> None:
        """Load the target model and processor a run starts from (kept while the next runs share it)."""
        if (target, modality) == (self._target, self.modality.name):
            return
        self.modality = get_modality(modality)
        model, self.processor = self.modality.load(target)
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        self._pristine = model if size <= KEEP_PRISTINE_BYTES else None
        self.collate = self.modality.collate(self.processor)
        self._target = target

    def fresh_model(self) -> torch.nn.Module:
        """A new copy of the current target model (from memory when small, else from disk)."""
        if self._pristine is not None:
            return copy.deepcopy(self._pristine)
        assert self._target is not None
        return self.modality.load(self._target)[0]

    def encoded(self, data_key: str, train: TrainSpec) -> list[Any]:
        """A dataset encoded for the current target's processor (cached)."""
        assert self._target is not None
        cache_key = (self._target, data_key, train.max_length)
        if cache_key not in self._encoded:
            self._encoded[cache_key] = self.modality.encode(self.processor, self.config.data[data_key],
                                                            train.max_length)
        return self._encoded[cache_key]

    def stream(self, data_key: str | None, train: TrainSpec, seed: int) -> Iterator[Batch]:
        """This worker's slice of the seeded global batches of a dataset (empty when `data_key` is None)."""
        if data_key is None:
            return iter(())
        return iter(BatchStream(self.encoded(data_key, train), train.batch_size, self.collate, seed, self.rank,
                                self.world))

    def probe(self, data_key: str, train: TrainSpec, n: int) -> Batch | None:
        """The first `n` examples of a dataset as one batch on the device, the same on every worker (None: n 0)."""
        return self.collate(self.encoded(data_key, train)[:n]).to(self.device) if n else None

    def prepare(self, objective: Objective, model: torch.nn.Module, run: PlannedTraining, train: TrainSpec,
                use_retain: bool) -> dict[str, torch.Tensor]:
        """Run the objective's preparation pass on this worker (collective): the model moves to the device and
        reads fresh seeded streams of the forget set (the benchmark's own targets) and the retain set."""
        seed = run.seed
        streams = {FORGET: lambda: self.stream(run.prepare_forget or run.forget, train, seed)}
        if use_retain:
            streams[RETAIN] = lambda: self.stream(run.retain, train, seed + 1)
        n_forget = len(self.config.data[run.forget])
        ctx = PrepareContext(model.to(self.device), self.device, seed, self.rank, self.world, streams,
                             epoch_batches=math.ceil(n_forget / train.batch_size))
        return objective.prepare(ctx) or {}


def prepare_objective(worker: Worker, objective: Objective, model: torch.nn.Module, run: PlannedTraining,
                      train: TrainSpec, use_retain: bool, resume: ResumePoint | None
                      ) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any]]:
    """The objective's preparation result (None when it has none), applied to the model: loaded from the run's
    checkpoint when resuming, else computed (collective); and its record (`passes`, `loads`, `seconds`)."""
    if not objective.has_prepare:
        return None, {"passes": 0, "loads": 0, "seconds": 0.0}
    if resume is not None:
        with resume.checkpoint.as_directory() as d:
            prepared = load_file(str(Path(d) / PREPARED_FILE))
        info = {**resume.state.prepare, "loads": resume.state.prepare["loads"] + 1}
    else:
        began = time.perf_counter()
        prepared = worker.prepare(objective, model, run, train, use_retain)
        info = {"passes": 1, "loads": 0, "seconds": time.perf_counter() - began}
    objective.apply_prepared(model, prepared)
    return prepared, info
