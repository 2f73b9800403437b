"""The search objective of `tune` spaces and `sweep` files: one final metric and which way is better."""

from __future__ import annotations

from typing import Literal

from harness.config.loader import StrictModel


class SearchObjective(StrictModel):
    """A final metric that `harness tune` optimises and `harness sweep` plots (forget quality up, model utility up,
    ...), and which way is better."""

    metric: str
    split: str
    mode: Literal["max", "min"] = "max"

    @property
    def column(self) -> str:
        """Its column in sweep.parquet."""
        return f"{self.split}/{self.metric}"
