"""The sections of a job spec that every layer reads: model, adapter, training, references, scoring, resources.

Names that live in registries above this layer (bounds, builtin models) are checked against those registries
once they are loaded (`harness.core.registry.loaded`); `harness.spec` loads every registry before it validates.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from harness.config.lm_eval import LmEvalSpec
from harness.config.loader import StrictModel
from harness.core.registry import loaded

#: The names the job's reference models take in the results (their method column); no method or scored model may
#: take them.
REFERENCE_METHODS = ("target", "retain")

#: The prefix of a config-built model's name (`builtin:tiny-llama`).
BUILTIN_PREFIX = "builtin:"


class ModelSpec(StrictModel):
    """Which model to unlearn: a hub id, a local directory, or `builtin:<name>` (config-built, offline)."""

    name: str = "builtin:tiny-llama"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False
    revision: str | None = None

    @field_validator("name")
    @classmethod
    def _known_builtin(cls, v: str) -> str:
        registries = [r for r in (loaded("builtin model"), loaded("builtin image model")) if r is not None]
        if v.startswith(BUILTIN_PREFIX) and registries and not any(v.removeprefix(BUILTIN_PREFIX) in r
                                                                    for r in registries):
            known = [n for r in registries for n in r.names()]
            raise ValueError(f"unknown builtin model {v!r} (known: "
                             + ", ".join(BUILTIN_PREFIX + n for n in known) + ")")
        return v


class AdapterSpec(StrictModel):
    """Bounded LoRA on the MLP projections: `W = W0 + (alpha/r) f(omega B A) / g(d_in)`."""

    bound: str = "sine"
    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    omega: float = Field(100.0, gt=0)
    clip_value: float = Field(0.01, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    targets: list[str] | None = None
    keep_dense: bool = Field(False, description="bounded adapters: keep the dense weight and d delta/dM from the "
                             "forward for the backward (2 d_out x d_in tensors per layer more memory, no "
                             "recomputation); false recomputes them (harness/adapters/fused.py)")

    @field_validator("bound")
    @classmethod
    def _known_bound(cls, v: str) -> str:
        bounds = loaded("bound")
        if bounds is not None and v not in bounds:
            raise ValueError(f"unknown bound {v!r} (known: {', '.join(bounds.names())})")
        return v


class SensitivitySpec(StrictModel):
    """Trajectory sensitivity (harness/train/twin.py): a twin of every run, perturbed by relative noise `epsilon` on
    the adapter factors and trained in lockstep on the same batches; their distance per step gives the run's
    finite-time Lyapunov exponent (harness/render/sensitivity.py)."""

    epsilon: float = Field(1e-7, ge=0, description="relative noise on the adapter factors: each factor moves by "
                           "epsilon * rms(factor) * N(0, 1); 0 gives a twin identical to the run")
    perturb: Literal["adapter"] = Field("adapter", description="what is perturbed: the adapter factors")
    probe_batch: int = Field(8, ge=0, description="forget examples whose logits are compared every step "
                             "(two no-grad forwards per step); 0 = no logit distance")


class TrainSpec(StrictModel):
    """Optimisation settings for one unlearning run (run by Ray Train workers, each a DeepSpeed engine)."""

    epochs: float = Field(5.0, gt=0)
    max_steps: int | None = Field(None, ge=1)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0, description="AdamW/SGD weight decay on the adapter factors (the only "
                                "trainable parameters); a stabiliser control")
    adapter_l2: float = Field(0.0, ge=0, description="weight of an L2 penalty sum_layers ||B A||_F^2 added to the "
                              "loss (on the product before the bound); a stabiliser control")
    batch_size: int = Field(8, ge=1, description="global micro-batch (forget examples), split over the workers")
    grad_accum: int = Field(1, ge=1)
    max_grad_norm: float | None = Field(None, gt=0, description="clip gradients to this norm; null = off")
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="sgd: plain SGD (a control for AdamW's "
                                               "normalised steps)")
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD momentum")
    scheduler: Literal["constant", "linear", "cosine"] = "linear"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    max_length: int = Field(128, ge=8)
    zero_stage: Literal[0, 1, 2, 3] = 0
    precision: Literal["fp32", "bf16"] = "fp32"
    offload_optimizer: bool = False
    offload_params: bool = False
    gradient_checkpointing: bool = False
    checkpoint_every: int | None = Field(None, ge=1, description="optimizer steps between checkpoints; null = end only")
    report_every: int = Field(10, ge=1, description="optimizer steps between metric reports to Ray (and Tune)")
    sensitivity: SensitivitySpec | None = Field(None, description="train a perturbed twin of every run in lockstep "
                                                "and log their distance per step (one more forward/backward per "
                                                "step); null = off")

    @model_validator(mode="after")
    def _offload_needs_zero(self) -> TrainSpec:
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage 1, 2 or 3")
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage 3")
        if self.adapter_l2 > 0 and self.zero_stage == 3:
            raise ValueError("adapter_l2 needs zero_stage 0-2 (ZeRO-3 partitions the factors outside their layer's "
                             "forward, where the penalty reads them)")
        if self.sensitivity is not None and self.zero_stage == 3:
            raise ValueError("sensitivity needs zero_stage 0-2 (the twins' update distance reads whole factors)")
        if self.sensitivity is not None and self.checkpoint_every is not None:
            raise ValueError("sensitivity needs checkpoint_every null (the twin is not checkpointed, so a resumed "
                             "run could not resume it)")
        return self


class ReferenceTrainSpec(StrictModel):
    """How the builtin reference models (target, retain) are fine-tuned from scratch."""

    epochs: int = Field(20, ge=1)
    lr: float = Field(5e-3, gt=0)
    batch_size: int = Field(32, ge=1)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)


class ReferenceSpec(StrictModel):
    """Reference models: `train` fine-tunes target and retain models (cached by config hash);
    `load` takes them from `target`/`retain` (hub ids or local directories).

    By default one pair of references (trained with `seed`) serves every seed of the job, so the seeds
    measure the spread of the unlearning runs alone; `per_seed: true` trains a pair per seed, so the
    spread includes the references' own.
    """

    mode: Literal["train", "load"] = "train"
    target: str | None = None
    retain: str | None = None
    train: ReferenceTrainSpec = ReferenceTrainSpec()
    cache_dir: str = "~/.cache/harness/reference"
    per_seed: bool = Field(False, description="train target and retain once per job seed (true) or once, with "
                           "`seed`, shared by every seed (false)")
    seed: int = Field(0, description="seed of shared reference models (initialisation and batch order)")

    @model_validator(mode="after")
    def _paths_for_load(self) -> ReferenceSpec:
        if self.mode == "load" and not self.target:
            raise ValueError("reference.mode 'load' needs reference.target (a hub id or local directory)")
        if self.mode == "load" and self.per_seed:
            raise ValueError("reference.per_seed needs mode 'train' (loaded references are one fixed pair)")
        return self


class EvalSpec(StrictModel):
    """Scoring settings: backend, batch size, generation length, example caps per split."""

    backend: str = "hf"
    batch_size: int = Field(16, ge=1)
    max_new_tokens: int = Field(200, ge=1)
    max_examples: int | None = Field(None, ge=1, description="cap per split; null = all")
    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples for confidence intervals; 0 = off")
    workers: int = Field(1, ge=1)
    lm_eval_tasks: LmEvalSpec | None = Field(None, description="lm-evaluation-harness tasks run on every scored "
                                             "model (a task list, or harness/scoring/lm_eval.py's LmEvalSpec); "
                                             "their metrics are rows with benchmark `lm_eval`")


class ResourcesSpec(StrictModel):
    """Where the job runs: Ray Train workers (ScalingConfig) and the local scoring device."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: int = Field(1, ge=1)
    address: str | None = Field(None, description="Ray cluster address; null = RAY_ADDRESS or a local instance")
    max_failures: int = Field(2, ge=0, description="worker-group restarts from the last checkpoint")
    threads: int | None = Field(None, ge=1, description="torch CPU threads of the driver; null = torch default")
