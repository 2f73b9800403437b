"""The `attacks:` section of a job spec: which attacks run on every scored model, with their parameters.

Config layer (L1): pydantic and the strict base only (no torch, no benchmark), so the spec can be read anywhere.
The attacks themselves live in `harness/attacks/` (one file each, registered by name); each sub-section
here has an `enabled` switch, and the whole section is off by default.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from harness.config.loader import StrictModel

QuantScheme = Literal["int8", "int4", "nf4"]
RephraseForm = Literal["paraphrased", "template", "few_shot"]
MiaStatistic = Literal["loss", "zlib", "min_k", "min_k_plus_plus", "reference", "gradnorm"]


class RelearnSpec(StrictModel):
    """Fine-tune the merged model (every weight, or a fresh LoRA) on a part of the forget set, score the held-back
    rest at 0, steps/4, steps/2 and `steps` optimizer steps (a recovery curve); `benign` adds the same fine-tune on
    retain examples only."""

    enabled: bool = False
    fraction: float = Field(0.5, gt=0, lt=1, description="share of the forget examples fine-tuned on; the rest "
                            "are the scored ones (disjoint)")
    steps: int = Field(8, ge=0, description="optimizer steps of the longest point of the curve")
    points: list[int] | None = Field(None, description="steps scored besides 0; null = steps/4, steps/2, steps")
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(8, ge=1)
    max_length: int = Field(128, ge=8)
    params: Literal["full", "lora"] = Field("full", description="what the attacker fine-tunes: every weight of the "
                                            "merged model, or a fresh plain LoRA on it (MLP projections)")
    lora_rank: int = Field(8, ge=1, description="rank of the attacker's LoRA (params: lora)")
    lora_alpha: float = Field(16.0, gt=0, description="alpha of the attacker's LoRA (params: lora)")
    benign: bool = Field(True, description="also fine-tune on as many retain examples (does unrelated "
                         "fine-tuning bring the forgotten data back?)")

    def curve(self) -> list[int]:
        """The steps scored, ascending and distinct; 0 (the model before fine-tuning) always among them."""
        pts = self.points if self.points is not None else [self.steps // 4, self.steps // 2, self.steps]
        return sorted({0, *pts})

    @model_validator(mode="after")
    def _points_within_steps(self) -> RelearnSpec:
        if self.points is not None and any(p < 0 or p > self.steps for p in self.points):
            raise ValueError(f"points must lie in [0, steps={self.steps}]")
        return self


class QuantizeSpec(StrictModel):
    """Weight-only post-training quantization of the merged model's linear layers (torchao INT8 per row,
    torchao INT4 per group, bitsandbytes NF4 per block), then the benchmark's own metrics."""

    enabled: bool = False
    schemes: list[QuantScheme] = Field(["int8", "int4", "nf4"], min_length=1)
    group_size: int = Field(32, ge=2, description="INT4 group size (input columns per scale)")
    nf4_blocksize: int = Field(64, ge=32, description="NF4 block size (weights per absmax)")
    skip: list[str] = Field(["lm_head", "embed", "classifier", "head"], description="linear layers whose name "
                            "contains one of these stay in full precision (as bitsandbytes/torchao users do)")

    @field_validator("nf4_blocksize")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError("nf4_blocksize must be a power of two (bitsandbytes' blocks)")
        return v


class RephraseSpec(StrictModel):
    """The forget questions asked in other forms: TOFU's paraphrased questions, another prompt template, a
    few-shot prefix of retain question-answer pairs."""

    enabled: bool = False
    forms: list[RephraseForm] = Field(["paraphrased", "template", "few_shot"], min_length=1)
    template: str = Field("Q: {question}\nA:", description="the other template ({question} is replaced)")
    shots: int = Field(3, ge=1, description="retain QA pairs before each question (few_shot)")


class MiaSpec(StrictModel):
    """Membership inference of forget vs holdout (AUC), as open-unlearning computes it."""

    enabled: bool = False
    statistics: list[MiaStatistic] = Field(["loss", "zlib", "min_k", "min_k_plus_plus", "reference", "gradnorm"],
                                           min_length=1)
    k: float = Field(0.4, gt=0, le=1, description="Min-K% and Min-K%++: the share of lowest-scored tokens")
    p: Literal[1, 2, "inf"] = Field(2, description="GradNorm: the norm of each parameter's gradient")
    max_examples: int | None = Field(None, ge=1, description="cap on forget and holdout examples; null = all")


class AttacksSpec(StrictModel):
    """Attacks applied to every unlearned model and to `target` and `retain` (their own effect); off by default."""

    relearn: RelearnSpec = RelearnSpec()
    quantize: QuantizeSpec = QuantizeSpec()
    rephrase: RephraseSpec = RephraseSpec()
    mia: MiaSpec = MiaSpec()
    seed: int = Field(0, description="seed of the relearn split and batch order")

    def enabled(self) -> list[str]:
        """Names of the attacks switched on, in the order they run (the order of the sections here); each name is
        the attack's module in harness/attacks/ and its registry name."""
        return [name for name in type(self).model_fields if getattr(getattr(self, name), "enabled", False)]
