"""The `benchmark:` options of a TOFU job (chosen by `benchmark.name: tofu`)."""

from __future__ import annotations

from typing import Literal

from harness.benchmarks.tofu.synth import SyntheticTofuSpec
from harness.config import BENCHMARK_OPTIONS, BenchmarkOptions


@BENCHMARK_OPTIONS.register("tofu")
class TofuOptions(BenchmarkOptions):
    """TOFU: which forget split, the prompt format, and the sizes of the synthetic set."""

    name: Literal["tofu"] = "tofu"
    forget_split: Literal["forget01", "forget05", "forget10"] = "forget10"
    prompt_format: Literal["plain", "chat_template"] = "plain"
    synthetic: SyntheticTofuSpec = SyntheticTofuSpec()

    def describe(self) -> str:
        return f"tofu {self.forget_split}"
