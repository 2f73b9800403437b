"""The `eval.lm_eval_tasks` section: which lm-evaluation-harness tasks run on every scored model."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from harness.config.loader import StrictModel


class LmEvalSpec(StrictModel):
    """lm-evaluation-harness tasks to run on each scored model (a bare list means `tasks`)."""

    tasks: list[str] = Field(default_factory=list, description="lm-eval task or group names")
    include_path: str | None = Field(None, description="directory of extra task YAML files")
    include_defaults: bool = Field(True, description="also index lm-eval's own tasks (takes ~7 s)")
    limit: float | None = Field(None, gt=0, description="examples per task (a fraction when < 1); null = all")
    num_fewshot: int | None = Field(None, ge=0, description="null = each task's own default")
    batch_size: int = Field(8, ge=1)
    bootstrap_iters: int = Field(1000, ge=0, description="lm-eval's bootstrap for non-mean stderrs; 0 = off")
    backend: Literal["hf", "vllm"] = "hf"
    vllm_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra vllm.LLM arguments")
    seed: int = 1234

    @model_validator(mode="before")
    @classmethod
    def _list_is_tasks(cls, data: Any) -> Any:
        return {"tasks": data} if isinstance(data, list) else data
