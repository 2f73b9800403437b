"""Parallel scoring on Ray: crews of long-lived scoring actors (harness.scoring.worker), and a pooled backend.

Two pieces here (the actor itself, `ScoringWorker`, is in harness.scoring.worker):

- `RayPoolBackend`: a `Backend` whose calls are split over N worker actors. Requests are cut into the
  batches `HFBackend` runs (log-likelihood: `plan_loglik`'s shared-prompt batches; generation and
  classification: longest-first batches of `batch_size`), and each worker gets a
  contiguous run of whole batches, the runs balanced by estimated cost (padded tokens for
  log-likelihood; prompt width plus new tokens for generation). Each worker therefore runs exactly
  the batches a single in-process `HFBackend` would run, so results are identical to a one-worker
  run, returned in request order. Unlike lm-evaluation-harness's data-parallel vLLM path, nothing is
  rebuilt per call.
- `ScoringPool`: owns the actors, in crews of `workers` reserved together in a Ray placement group (all or
  nothing, so two half-started crews can never wait on each other). `pool.backend(model_dir, adapter_dir)`
  loads a model into a crew until `release`; `pool.score_models({...}, fn)` scores several models
  concurrently, one driver thread and one crew per model, at most `max_concurrent` crews at once (default:
  as many as the cluster can hold). A crew unloads a finished model and takes the next one (a backend that
  keeps state outside its process, vLLM, gets a fresh crew per model instead), so a job that scores many
  models (seeds, references, attacked variants) pays for `workers` process start-ups, not one per model.
  At most `workers` replicas of any model are alive, and at most `max_concurrent * workers` replicas in all.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm.auto import tqdm

from harness.core.ray_env import ensure_ray
from harness.data.requests import Backend, ClassifyRequest, GenRequest, LoglikRequest
from harness.scoring.sharding import loglik_shards, prompt_length, shard_requests
from harness.scoring.worker import ModelLocation, ScoringError, ScoringWorker

__all__ = ["RayPoolBackend", "ScoringError", "ScoringPool", "ScoringWorker"]

T = TypeVar("T")
# How long scoring workers may wait for CPUs/GPUs before the run fails instead of hanging.
PLACEMENT_TIMEOUT_S = float(os.environ.get("HARNESS_PLACEMENT_TIMEOUT_S", 600))


# ---- the pooled backend -----------------------------------------------------------------------------


class RayPoolBackend(Backend):
    """A `Backend` that splits each call over Ray `ScoringWorker` actors and gathers in request order.

    `model` is the (source, adapter dir) the workers serve, named in every call (see `ScoringWorker`).
    `tokenizer` and `max_length` let the driver order requests by token length exactly as the workers'
    `HFBackend` does (so shards hold whole batches of a single-worker run); without a tokenizer,
    character lengths stand in and results match a single worker only up to batch composition.
    """

    def __init__(self, actors: Sequence[Any], tokenizer: Any = None, batch_size: int = 16,
                 max_length: int | None = None, desc: str = "", model: ModelLocation | None = None) -> None:
        if not actors:
            raise ValueError("RayPoolBackend needs at least one worker")
        self.actors = list(actors)
        self.model = model  # named in every call: the workers load it first if they serve another
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.desc = desc

    def loglikelihood(self, requests: Sequence[LoglikRequest]) -> list[np.ndarray]:
        if self.tokenizer is not None:
            shards = loglik_shards(self.tokenizer, requests, self.batch_size, self.max_length, len(self.actors))
            return self._submit("loglikelihood", requests, shards)
        lengths = [len(r.context) + len(r.continuation) for r in requests]
        # one forward pass over the padded batch: rows x width (the first row is the longest)
        return self._run("loglikelihood", requests, lengths, lambda b: len(b) * lengths[b[0]])

    def generate(self, requests: Sequence[GenRequest]) -> list[str]:
        if self.tokenizer is not None:
            lengths = [prompt_length(self.tokenizer, r) for r in requests]
        else:
            lengths = [len(r.prompt) for r in requests]

        def cost(batch: list[int]) -> float:  # prefill + decode of the left-padded batch
            return len(batch) * (lengths[batch[0]] + max(requests[i].max_new_tokens for i in batch))

        return self._run("generate", requests, lengths, cost)

    def classify(self, requests: Sequence[ClassifyRequest]) -> list[np.ndarray]:
        # every image costs the same: equal runs of whole batches
        return self._run("classify", requests, [1] * len(requests), len)

    def _run(self, method: str, requests: Sequence[Any], lengths: list[int],
             cost: Callable[[list[int]], float]) -> list[Any]:
        """Shard longest-first batches of `batch_size` by `cost` and submit them."""
        return self._submit(method, requests, shard_requests(lengths, self.batch_size, len(self.actors), cost))

    def _submit(self, method: str, requests: Sequence[Any], shards: list[list[int]]) -> list[Any]:
        """Send shard k to worker k, gather with `ray.wait` (progress per finished shard), reorder."""
        import ray

        pending = {getattr(actor, method).remote([requests[i] for i in shard], self.model): shard
                   for actor, shard in zip(self.actors, shards, strict=False)}
        results: list[Any] = [None] * len(requests)
        desc = f"{method}{' ' + self.desc if self.desc else ''} ({len(pending)} workers)"
        with tqdm(total=len(requests), desc=desc, leave=False, disable=not sys.stderr.isatty()) as bar:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                shard = pending.pop(done[0])
                out = ray.get(done[0])
                if len(out) != len(shard):
                    raise ScoringError(f"a scoring worker returned {len(out)} results for {len(shard)} requests")
                for i, value in zip(shard, out, strict=True):
                    results[i] = value
                bar.update(len(shard))
        return results


# ---- the pool ---------------------------------------------------------------------------------------


@dataclass
class _Crew:
    """`workers` scoring actors reserved together in one placement group; they serve one model at a time."""

    actors: list[Any]
    placement_group: Any


class ScoringPool:
    """Owns crews of `workers` scoring actors; each crew serves one model at a time, then the next.

    `num_cpus` / `num_gpus` are each worker's Ray resources (a worker with GPUs scores on `cuda`, else on
    `cpu` with `num_cpus` torch threads). Workers restart once if they die (`max_restarts`), and their
    calls are retried on the restarted replica (scoring is idempotent; each call names its model).
    A crew whose backend can load another model in process (`Backend.reloadable`: `hf`) goes back to the
    idle crews when its model is done, so scoring ten models starts `workers` processes, not ten times as
    many; other crews (`vllm`: an engine per model) are killed.
    """

    def __init__(self, workers: int = 2, backend: str = "hf", *, batch_size: int = 16, dtype: str = "float32",
                 num_cpus: float = 1, num_gpus: float = 0, trust_remote_code: bool = False,
                 merge_adapter: bool | None = None, address: str | None = None,
                 max_concurrent: int | None = None, max_restarts: int = 1, modality: str = "text") -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")

        ensure_ray(address)
        self.workers, self.backend_name, self.batch_size, self.dtype = workers, backend, batch_size, dtype
        self.num_cpus, self.num_gpus = float(num_cpus), float(num_gpus)
        self.trust_remote_code, self.merge_adapter, self.max_restarts = trust_remote_code, merge_adapter, max_restarts
        self.modality = modality
        self.max_concurrent = max_concurrent or self._crews_that_fit()
        self._held: dict[ModelLocation, tuple[_Crew, RayPoolBackend]] = {}  # by `backend`, until `release`
        self._busy: dict[int, _Crew] = {}  # serving a model in `score_models`
        self._idle: list[_Crew] = []  # alive, no model loaded
        self.crews_started = 0
        self._lock = threading.RLock()  # `backend` holds it while `_serve` takes it again

    @classmethod
    def from_spec(cls, spec: Any, device: Any = None) -> ScoringPool:
        """A pool for a job: `eval.workers` x `eval.backend`, `resources.cpus_per_worker` CPUs each, a GPU
        each when the job uses GPUs (`resources.use_gpu`, or a `cuda` scoring device)."""
        use_gpu = spec.resources.use_gpu or (device is not None and str(device).startswith("cuda"))
        return cls(spec.eval.workers, spec.eval.backend, batch_size=spec.eval.batch_size, dtype=spec.model.dtype,
                   num_cpus=spec.resources.cpus_per_worker, num_gpus=1 if use_gpu else 0,
                   trust_remote_code=spec.model.trust_remote_code, address=spec.resources.address,
                   modality=spec.benchmark.modality)

    def _crews_that_fit(self) -> int:
        """How many crews the cluster holds at once; fails early when not even one fits."""
        import ray

        total = ray.cluster_resources()
        fits = []
        for key, per_worker in (("CPU", self.num_cpus), ("GPU", self.num_gpus)):
            if per_worker > 0:
                fits.append(int(total.get(key, 0) // (per_worker * self.workers)))
        n = min(fits) if fits else 1
        if n < 1:
            raise ScoringError(
                f"the Ray cluster ({total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs) cannot hold "
                f"{self.workers} scoring workers of {self.num_cpus:g} CPUs and {self.num_gpus:g} GPUs each; "
                "lower eval.workers or resources.cpus_per_worker")
        return n

    # ---- crews --------------------------------------------------------------------------------------

    def _start_crew(self) -> _Crew:
        """Reserve a placement group for `workers` actors and start them (no model loaded yet)."""
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        bundle: dict[str, float] = {"CPU": self.num_cpus}
        if self.num_gpus > 0:
            bundle["GPU"] = self.num_gpus
        pg = placement_group([dict(bundle) for _ in range(self.workers)], strategy="PACK")
        try:
            ray.get(pg.ready(), timeout=PLACEMENT_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError as err:
            remove_placement_group(pg)
            raise ScoringError(
                f"{self.workers} scoring workers ({bundle} each) were not placed within {PLACEMENT_TIMEOUT_S:g} s; "
                f"free Ray resources: {ray.available_resources()}. Other actors hold the cluster: stop them, "
                "or lower eval.workers / resources.cpus_per_worker") from err
        remote = ray.remote(ScoringWorker)
        kwargs = {"backend": self.backend_name, "batch_size": self.batch_size,
                  "device": "cuda" if self.num_gpus > 0 else "cpu", "dtype": self.dtype,
                  "threads": max(1, int(self.num_cpus)) if self.num_gpus == 0 else None,
                  "trust_remote_code": self.trust_remote_code, "merge_adapter": self.merge_adapter,
                  "modality": self.modality}
        actors = [
            remote.options(
                num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_restarts=self.max_restarts,
                max_task_retries=self.max_restarts,
                scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i),
            ).remote(**kwargs)
            for i in range(self.workers)
        ]
        with self._lock:
            self.crews_started += 1
        return _Crew(actors, pg)

    def _serve(self, source: str, adapter_dir: str | None, tokenizer: Any) -> tuple[_Crew, RayPoolBackend]:
        """An idle crew (else a new one) with this model loaded in every worker, and the backend over it."""
        import ray

        with self._lock:
            crew = self._idle.pop() if self._idle else None
        crew = crew or self._start_crew()
        try:
            infos = ray.get([a.load.remote(source, adapter_dir) for a in crew.actors])
        except Exception as err:  # the load's error, wrapped by Ray
            self._stop_crew(crew)
            raise ScoringError(f"scoring workers for {source!r} (adapter {adapter_dir}) failed to load it: "
                               f"{err}") from err
        if tokenizer is None and self.modality == "text":  # to order requests as the workers batch them
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=self.trust_remote_code)
        name = Path(adapter_dir).name if adapter_dir else Path(source).name
        backend = RayPoolBackend(crew.actors, tokenizer, self.batch_size, infos[0]["max_length"], desc=name,
                                 model=(source, adapter_dir))
        return crew, backend

    def _done(self, crew: _Crew) -> None:
        """The crew's model is scored: unload it and keep the crew for the next model when its workers can
        load one, else kill it."""
        import ray

        try:
            reusable = all(ray.get([a.unload.remote() for a in crew.actors], timeout=60))
        except Exception:  # noqa: BLE001 - a dead or stuck worker is not reused
            reusable = False
        if reusable:
            with self._lock:
                self._idle.append(crew)
        else:
            self._stop_crew(crew)

    @staticmethod
    def _stop_crew(crew: _Crew) -> None:
        """Let each worker close its backend (bounded wait), then kill the actors and free their resources."""
        import ray
        from ray.util.placement_group import remove_placement_group

        closing = [actor.close.remote() for actor in crew.actors]
        try:
            ray.wait(closing, num_returns=len(closing), timeout=60)
        except Exception:  # noqa: BLE001 - a dead worker has nothing left to close
            pass
        for actor in crew.actors:
            ray.kill(actor, no_restart=True)
        remove_placement_group(crew.placement_group)

    def backend(self, source: str | Path, adapter_dir: str | Path | None = None,
                tokenizer: Any = None) -> RayPoolBackend:
        """The pooled backend for a model, loading it into a crew on first use (held until `release`)."""
        key = (str(source), str(adapter_dir) if adapter_dir is not None else None)
        with self._lock:
            held = self._held.get(key)
            if held is None:
                held = self._held[key] = self._serve(key[0], key[1], tokenizer)
        return held[1]

    def release(self, source: str | Path, adapter_dir: str | Path | None = None) -> None:
        """Done with a model held by `backend`: its crew unloads it and serves the next model."""
        key = (str(source), str(adapter_dir) if adapter_dir is not None else None)
        with self._lock:
            held = self._held.pop(key, None)
        if held is not None:
            self._done(held[0])

    def score_models(self, models: Mapping[str, tuple[str | Path, str | Path | None]],
                     fn: Callable[[Backend], T], tokenizer: Any = None) -> dict[str, T]:
        """`fn(backend)` for every model `{name: (model_dir, adapter_dir | None)}`, models scored concurrently.

        One driver thread and one crew per model being scored, at most `max_concurrent` at a time; a crew
        takes the next model as soon as its `fn` returns. Results come back keyed like `models`.
        """

        def one(item: tuple[str, tuple[str | Path, str | Path | None]]) -> T:
            _, (source, adapter_dir) = item
            crew, backend = self._serve(str(source), str(adapter_dir) if adapter_dir is not None else None,
                                        tokenizer)
            with self._lock:
                self._busy[id(crew)] = crew
            try:
                return fn(backend)
            finally:
                with self._lock:
                    self._busy.pop(id(crew), None)
                self._done(crew)

        items = list(models.items())
        with ThreadPoolExecutor(max_workers=max(1, min(self.max_concurrent, len(items))),
                                thread_name_prefix="score") as ex:
            results = list(ex.map(one, items))
        return {name: r for (name, _), r in zip(items, results, strict=True)}

    def shutdown(self) -> None:
        """Kill every actor the pool started."""
        with self._lock:
            crews = [*(crew for crew, _ in self._held.values()), *self._busy.values(), *self._idle]
            self._held, self._busy, self._idle = {}, {}, []
        for crew in crews:
            self._stop_crew(crew)

    def __enter__(self) -> ScoringPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
