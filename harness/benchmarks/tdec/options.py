"""The `benchmark:` options of a TDEC job (chosen by `benchmark.name: tdec`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from harness.benchmarks.tdec.synth import SyntheticTdecSpec
from harness.config import BENCHMARK_OPTIONS, BenchmarkOptions


@BENCHMARK_OPTIONS.register("tdec")
class TdecOptions(BenchmarkOptions):
    """TDEC: the forget CSV, sequence length, EL_n's n, utility tasks, and the synthetic set's sizes."""

    name: Literal["tdec"] = "tdec"
    forget_split: str = Field("forget", description="the forget set is `<forget_split>.csv` (else forget.csv)")
    sequence_length: int | None = Field(None, ge=16, description="tokens per sequence; null = 64 synth, 200 real")
    el_n: int = Field(10, ge=1)
    utility_tasks: list[str] = []
    synthetic: SyntheticTdecSpec = SyntheticTdecSpec()

    def describe(self) -> str:
        return f"tdec {self.forget_split}"
