"""The `benchmark:` options of a MUSE job (chosen by `benchmark.name: muse`), with muse_bench's defaults."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from harness.benchmarks.muse.synth import SyntheticMuseSpec
from harness.config import BENCHMARK_OPTIONS, BenchmarkOptions


@BENCHMARK_OPTIONS.register("muse")
class MuseOptions(BenchmarkOptions):
    """MUSE: generation budgets, Min-K% fraction, training chunk size, and the synthetic set's sizes."""

    name: Literal["muse"] = "muse"
    verbmem_max_new_tokens: int = Field(128, ge=1)
    knowmem_max_new_tokens: int = Field(32, ge=1)
    mink_k: float = Field(0.4, gt=0, le=1)
    chunk_tokens: int = Field(126, ge=1, description="tokens per training chunk of an article")
    auc_retrain: float | None = Field(None, gt=0, lt=1, description="published retrain AUC; null = the job's "
                                      "retain model")
    synthetic: SyntheticMuseSpec = SyntheticMuseSpec()
