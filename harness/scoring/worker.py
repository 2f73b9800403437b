"""A scoring worker: one model at a time behind a registered backend, run as a Ray actor by
harness.scoring.parallel's pool (and usable in process)."""

from __future__ import annotations

import gc
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from harness.adapters import merge
from harness.core.errors import HarnessError
from harness.data.requests import Backend, ClassifyRequest, GenRequest, LoglikRequest
from harness.models.text import torch_dtype
from harness.scoring.backend import make_backend
from harness.scoring.load import load_with_adapter

#: (model source, adapter dir or None): which model a call is for.
ModelLocation = tuple[str, str | None]


class ScoringError(HarnessError):
    """A scoring worker could not start or the cluster cannot hold a worker group."""

    exit_code = 1


class ScoringWorker:
    """A scoring replica: one model at a time behind a scoring backend; run it as a Ray actor
    (`ray.remote(ScoringWorker)`).

    Every call names the model it is for (`model=(source, adapter_dir)`) and the worker loads that model first
    when it serves another one or none: so a worker that Ray restarted after a crash (it comes back with its
    constructor's arguments) scores the right model on the retried call, and the pool can hand a worker the
    next model instead of starting a new process. `merge_adapter=None` merges an attached adapter into dense
    weights for every backend but `hf` (vLLM serves plain weights); `hf` keeps the adapter layers, exactly as
    the in-process path does.
    """

    def __init__(self, source: str | None = None, adapter_dir: str | None = None, backend: str = "hf",
                 batch_size: int = 16, device: str = "cpu", dtype: str = "float32", threads: int | None = None,
                 trust_remote_code: bool = False, merge_adapter: bool | None = None, modality: str = "text") -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.backend_name, self.batch_size, self.device, self.dtype = backend, batch_size, device, dtype
        self.trust_remote_code, self.merge_adapter, self.modality = trust_remote_code, merge_adapter, modality
        self.source: str | None = None
        self.adapter_dir: str | None = None
        self.max_length: int | None = None
        self.backend: Backend | None = None
        if source is not None:
            self.load(source, adapter_dir)

    def load(self, source: str, adapter_dir: str | None = None) -> dict[str, Any]:
        """Serve this model from now on (nothing to do when it is the one loaded); returns `info()`."""
        if self.backend is None or (self.source, self.adapter_dir) != (source, adapter_dir):
            self.unload()
            model, tokenizer = load_with_adapter(source, adapter_dir, modality=self.modality,
                                                 dtype=torch_dtype(self.dtype),
                                                 trust_remote_code=self.trust_remote_code)
            merge_it = self.merge_adapter if self.merge_adapter is not None else self.backend_name != "hf"
            if adapter_dir is not None and merge_it:
                merge(model)
            self.max_length = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
            self.backend = make_backend(self.backend_name, model.eval(), tokenizer, self.batch_size, self.device)
            self.source, self.adapter_dir = source, adapter_dir
        return self.info()

    def unload(self) -> bool:
        """Drop the model (closing what its backend holds outside this process); True when this process can
        load another one (its backend is `reloadable`, or nothing was loaded)."""
        reloadable = self.backend is None or type(self.backend).reloadable
        self.close()
        self.backend, self.source, self.adapter_dir, self.max_length = None, None, None, None
        gc.collect()
        return reloadable

    def info(self) -> dict[str, Any]:
        """Where this replica runs, which model it serves and what the driver needs to shard for it."""
        return {"pid": os.getpid(), "source": self.source, "adapter_dir": self.adapter_dir,
                "max_length": self.max_length, "device": str(getattr(self.backend, "device", "?"))}

    def _serving(self, model: ModelLocation | None) -> Backend:
        if model is not None:
            self.load(*model)
        if self.backend is None:
            raise ScoringError("this scoring worker has no model loaded: name one with `model=`")
        return self.backend

    def loglikelihood(self, requests: Sequence[LoglikRequest], model: ModelLocation | None = None) -> list[np.ndarray]:
        """The backend's log-likelihoods of one shard."""
        return self._serving(model).loglikelihood(requests)

    def generate(self, requests: Sequence[GenRequest], model: ModelLocation | None = None) -> list[str]:
        """The backend's generations of one shard."""
        return self._serving(model).generate(requests)

    def classify(self, requests: Sequence[ClassifyRequest], model: ModelLocation | None = None) -> list[np.ndarray]:
        """The backend's class log-probabilities of one shard."""
        return self._serving(model).classify(requests)

    def close(self) -> None:
        """Release what the backend holds outside this process (a vLLM engine's processes and export dir)."""
        close = getattr(self.backend, "close", None)
        if callable(close):
            close()
