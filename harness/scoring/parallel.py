"""Parallel scoring on Ray: long-lived actors that each load one model replica once, and a pooled backend.

Three pieces:

- `ScoringWorker`: loads a model (a `save_model` directory or hub id, plus an optional saved adapter)
  ONCE in its constructor and serves `loglikelihood` / `generate` through a registered backend
  (`hf`, `vllm`, ...). Run as a Ray actor (`ray.remote(ScoringWorker)`); unlike lm-evaluation-harness's
  data-parallel vLLM path, nothing is rebuilt per call.
- `RayPoolBackend`: a `Backend` whose calls are split over N such actors. Requests are cut into the
  batches `HFBackend` runs (log-likelihood: `plan_loglik`'s shared-prompt batches; generation and
  classification: longest-first batches of `batch_size`), and each worker gets a
  contiguous run of whole batches, the runs balanced by estimated cost (padded tokens for
  log-likelihood; prompt width plus new tokens for generation). Each worker therefore runs exactly
  the batches a single in-process `HFBackend` would run, so results are identical to a one-worker
  run, returned in request order.
- `ScoringPool`: owns the actors. `pool.backend(model_dir, adapter_dir)` starts (or reuses) one group
  of `workers` actors for a model; `pool.score_models({...}, fn)` scores several models concurrently,
  one driver thread and one actor group per model. Each group's actors are reserved together in a
  Ray placement group (all or nothing, so two half-started groups can never wait on each other),
  at most `max_concurrent` groups run at once (default: as many as the cluster can hold), and a
  group is killed as soon as its model is scored. So at most `workers` replicas of any model are
  alive, and at most `max_concurrent * workers` replicas in all.
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

from harness.adapters import merge
from harness.core.errors import HarnessError
from harness.core.ray_env import ensure_ray
from harness.data.requests import Backend, ClassifyRequest, GenRequest, LoglikRequest
from harness.models.text import torch_dtype
from harness.scoring.backend import make_backend
from harness.scoring.load import load_with_adapter
from harness.scoring.sharding import loglik_shards, prompt_length, shard_requests

T = TypeVar("T")
# How long scoring workers may wait for CPUs/GPUs before the run fails instead of hanging.
PLACEMENT_TIMEOUT_S = float(os.environ.get("HARNESS_PLACEMENT_TIMEOUT_S", 600))
ModelLocation = tuple[str, str | None]


class ScoringError(HarnessError):
    """A scoring worker could not start or the cluster cannot hold a worker group."""

    exit_code = 1


# ---- the actor --------------------------------------------------------------------------------------


class ScoringWorker:
    """One model replica behind a scoring backend; run it as a Ray actor (`ray.remote(ScoringWorker)`).

    `merge_adapter=None` merges an attached adapter into dense weights for every backend but `hf`
    (vLLM serves plain weights); `hf` keeps the adapter layers, exactly as the in-process path does.
    """

    def __init__(self, source: str, adapter_dir: str | None = None, backend: str = "hf", batch_size: int = 16,
                 device: str = "cpu", dtype: str = "float32", threads: int | None = None,
                 trust_remote_code: bool = False, merge_adapter: bool | None = None, modality: str = "text") -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        model, tokenizer = load_with_adapter(source, adapter_dir, modality=modality, dtype=torch_dtype(dtype),
                                             trust_remote_code=trust_remote_code)
        if adapter_dir is not None and (merge_adapter if merge_adapter is not None else backend != "hf"):
            merge(model)
        self.source, self.adapter_dir = source, adapter_dir
        self.max_length = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
        self.backend = make_backend(backend, model.eval(), tokenizer, batch_size, device)

    def info(self) -> dict[str, Any]:
        """Where this replica runs and what the driver needs to shard for it."""
        return {"pid": os.getpid(), "source": self.source, "adapter_dir": self.adapter_dir,
                "max_length": self.max_length, "device": str(getattr(self.backend, "device", "?"))}

    def loglikelihood(self, requests: Sequence[LoglikRequest]) -> list[np.ndarray]:
        """The backend's log-likelihoods of one shard."""
        return self.backend.loglikelihood(requests)

    def generate(self, requests: Sequence[GenRequest]) -> list[str]:
        """The backend's generations of one shard."""
        return self.backend.generate(requests)

    def classify(self, requests: Sequence[ClassifyRequest]) -> list[np.ndarray]:
        """The backend's class log-probabilities of one shard."""
        return self.backend.classify(requests)

    def close(self) -> None:
        """Release what the backend holds outside this process (a vLLM engine's processes and export dir)."""
        close = getattr(self.backend, "close", None)
        if callable(close):
            close()




# ---- the pooled backend -----------------------------------------------------------------------------


class RayPoolBackend(Backend):
    """A `Backend` that splits each call over Ray `ScoringWorker` actors and gathers in request order.

    `tokenizer` and `max_length` let the driver order requests by token length exactly as the workers'
    `HFBackend` does (so shards hold whole batches of a single-worker run); without a tokenizer,
    character lengths stand in and results match a single worker only up to batch composition.
    """

    def __init__(self, actors: Sequence[Any], tokenizer: Any = None, batch_size: int = 16,
                 max_length: int | None = None, desc: str = "") -> None:
        if not actors:
            raise ValueError("RayPoolBackend needs at least one worker")
        self.actors = list(actors)
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

        pending = {getattr(actor, method).remote([requests[i] for i in shard]): shard
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
class _Group:
    """One model's actors, their placement group, and the backend over them."""

    actors: list[Any]
    placement_group: Any
    backend: RayPoolBackend


class ScoringPool:
    """Owns groups of `workers` scoring actors, one group per model; reusable across models.

    `num_cpus` / `num_gpus` are each worker's Ray resources (a worker with GPUs scores on `cuda`, else on
    `cpu` with `num_cpus` torch threads). Workers restart once if they die (`max_restarts`), and their
    calls are retried on the restarted replica (scoring is idempotent).
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
        self.max_concurrent = max_concurrent or self._groups_that_fit()
        self._groups: dict[ModelLocation, _Group] = {}  # started by `backend`, kept until `release`
        self._running: dict[int, _Group] = {}  # started by `score_models`, killed when their model is done
        self._lock = threading.Lock()

    @classmethod
    def from_spec(cls, spec: Any, device: Any = None) -> ScoringPool:
        """A pool for a job: `eval.workers` x `eval.backend`, `resources.cpus_per_worker` CPUs each, a GPU
        each when the job uses GPUs (`resources.use_gpu`, or a `cuda` scoring device)."""
        use_gpu = spec.resources.use_gpu or (device is not None and str(device).startswith("cuda"))
        return cls(spec.eval.workers, spec.eval.backend, batch_size=spec.eval.batch_size, dtype=spec.model.dtype,
                   num_cpus=spec.resources.cpus_per_worker, num_gpus=1 if use_gpu else 0,
                   trust_remote_code=spec.model.trust_remote_code, address=spec.resources.address,
                   modality=spec.benchmark.modality)

    def _groups_that_fit(self) -> int:
        """How many worker groups the cluster holds at once; fails early when not even one fits."""
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

    # ---- groups -------------------------------------------------------------------------------------

    def _start_group(self, source: str, adapter_dir: str | None, tokenizer: Any) -> _Group:
        """Reserve a placement group for `workers` actors, start them (each loads the model), wait until loaded."""
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
            ).remote(source, adapter_dir, **kwargs)
            for i in range(self.workers)
        ]
        try:
            infos = ray.get([a.info.remote() for a in actors])
        except Exception as err:  # the constructor's error, wrapped by Ray
            for a in actors:
                ray.kill(a)
            remove_placement_group(pg)
            raise ScoringError(f"scoring workers for {source!r} (adapter {adapter_dir}) failed to start: "
                               f"{err}") from err
        if tokenizer is None and self.modality == "text":  # to order requests as the workers batch them
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=self.trust_remote_code)
        name = Path(adapter_dir).name if adapter_dir else Path(source).name
        backend = RayPoolBackend(actors, tokenizer, self.batch_size, infos[0]["max_length"], desc=name)
        return _Group(actors, pg, backend)

    @staticmethod
    def _stop_group(group: _Group) -> None:
        """Let each worker close its backend (bounded wait), then kill the actors and free their resources."""
        import ray
        from ray.util.placement_group import remove_placement_group

        closing = [actor.close.remote() for actor in group.actors]
        try:
            ray.wait(closing, num_returns=len(closing), timeout=60)
        except Exception:  # noqa: BLE001 - a dead worker has nothing left to close
            pass
        for actor in group.actors:
            ray.kill(actor, no_restart=True)
        remove_placement_group(group.placement_group)

    def backend(self, source: str | Path, adapter_dir: str | Path | None = None,
                tokenizer: Any = None) -> RayPoolBackend:
        """The pooled backend for a model, starting its worker group on first use (kept until `release`)."""
        key = (str(source), str(adapter_dir) if adapter_dir is not None else None)
        with self._lock:
            group = self._groups.get(key)
            if group is None:
                group = self._groups[key] = self._start_group(key[0], key[1], tokenizer)
        return group.backend

    def release(self, source: str | Path, adapter_dir: str | Path | None = None) -> None:
        """Kill the worker group of a model (frees its replicas and resources)."""
        key = (str(source), str(adapter_dir) if adapter_dir is not None else None)
        with self._lock:
            group = self._groups.pop(key, None)
        if group is not None:
            self._stop_group(group)

    def score_models(self, models: Mapping[str, tuple[str | Path, str | Path | None]],
                     fn: Callable[[Backend], T], tokenizer: Any = None) -> dict[str, T]:
        """`fn(backend)` for every model `{name: (model_dir, adapter_dir | None)}`, models scored concurrently.

        One driver thread and one worker group per model, at most `max_concurrent` at a time; each group
        is released as soon as its `fn` returns. Results come back keyed like `models`.
        """

        def one(item: tuple[str, tuple[str | Path, str | Path | None]]) -> T:
            _, (source, adapter_dir) = item
            group = self._start_group(str(source), str(adapter_dir) if adapter_dir is not None else None,
                                      tokenizer)
            with self._lock:
                self._running[id(group)] = group
            try:
                return fn(group.backend)
            finally:
                with self._lock:
                    self._running.pop(id(group), None)
                self._stop_group(group)

        items = list(models.items())
        with ThreadPoolExecutor(max_workers=max(1, min(self.max_concurrent, len(items))),
                                thread_name_prefix="score") as ex:
            results = list(ex.map(one, items))
        return {name: r for (name, _), r in zip(items, results, strict=True)}

    def shutdown(self) -> None:
        """Kill every actor the pool started."""
        with self._lock:
            groups = [*self._groups.values(), *self._running.values()]
            self._groups, self._running = {}, {}
        for group in groups:
            self._stop_group(group)

    def __enter__(self) -> ScoringPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
