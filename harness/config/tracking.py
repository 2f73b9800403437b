"""The `tracking:` section: where MLflow records the finished runs (harness.tracking logs them)."""

from __future__ import annotations

from pydantic import Field

from harness.config.loader import StrictModel


class TrackingSpec(StrictModel):
    """Where finished runs are logged to MLflow (a `tracking: null` section turns it off)."""

    mlflow_uri: str | None = Field(None, description="MLflow tracking URI; null = MLFLOW_TRACKING_URI, else a "
                                   "local store <out>/mlflow.db")
    experiment: str | None = Field(None, description="MLflow experiment; null = the job's name (tune: "
                                   "tune-<job>, nightly: nightly-<suite>)")
