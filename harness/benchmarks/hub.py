"""Reading a benchmark's published configs from the Hugging Face hub with `datasets` (offline: its local cache)."""

from __future__ import annotations

import os
from typing import Any

from harness.core.errors import DataError


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in
               ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


def hub_records(source: str, config: str, split: str, layout: str) -> list[dict[str, Any]]:
    """Records of one config/split of hub dataset `source`; DataError naming the id and what to do on failure.

    `layout` names the local alternative in the message (e.g. "the published TOFU files").
    """
    try:
        import datasets
    except ImportError:
        raise DataError(f"benchmark.source {source!r} is neither 'synthetic' nor an existing directory, and "
                        "reading a hub dataset needs the `datasets` package: install the `hub` extra "
                        f"(pip install 'harness[hub]') or pass a local directory of {layout}") from None
    try:
        return [dict(r) for r in datasets.load_dataset(source, config, split=split)]
    except Exception as err:  # noqa: BLE001 - datasets raises many types (network, offline, missing config)
        todo = (f"offline, hub dataset {source!r} must already be in the local datasets cache: download it once "
                "with network access (HF_DATASETS_OFFLINE and HF_HUB_OFFLINE unset)" if _offline() else
                f"check the id {source!r} and the network")
        raise DataError(f"cannot load config {config!r} split {split!r} of hub dataset {source!r}: {err}; {todo}, "
                        f"or pass a local directory of {layout} as benchmark.source") from None
