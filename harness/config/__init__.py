"""Configuration at the bottom (L1): every spec section, the one strict base, the one YAML loader.

The face of the package: import sections and helpers from `harness.config`. The job itself (`JobSpec`, the
unions over the objective and benchmark registries) is assembled one layer up, in `harness.spec`.
"""

from harness.config.lm_eval import LmEvalSpec
from harness.config.loader import (
    FrozenModel,
    StrictModel,
    error_lines,
    load_config,
    load_yaml,
    validate_config,
    yaml_error,
)
from harness.config.options import BENCHMARK_OPTIONS, BenchmarkOptions, ObjectiveOptions, tagged_union
from harness.config.overrides import apply_override
from harness.config.search import SearchObjective
from harness.config.sections import (
    BUILTIN_PREFIX,
    REFERENCE_METHODS,
    AdapterSpec,
    EvalSpec,
    ModelSpec,
    ReferenceSpec,
    ReferenceTrainSpec,
    ResourcesSpec,
    SensitivitySpec,
    TrainSpec,
)
from harness.config.sources import RESERVED_NAMES, ModelSource, SourceKind, parse_model_arg
from harness.config.tracking import TrackingSpec

__all__ = [
    "BENCHMARK_OPTIONS", "BUILTIN_PREFIX", "REFERENCE_METHODS", "RESERVED_NAMES", "AdapterSpec", "BenchmarkOptions",
    "EvalSpec", "FrozenModel", "LmEvalSpec", "ModelSource", "ModelSpec", "ObjectiveOptions", "ReferenceSpec",
    "ReferenceTrainSpec", "ResourcesSpec", "SearchObjective", "SensitivitySpec", "SourceKind", "StrictModel",
    "TrackingSpec", "TrainSpec", "apply_override", "error_lines", "load_config", "load_yaml", "parse_model_arg",
    "tagged_union", "validate_config", "yaml_error",
]
