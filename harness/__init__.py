"""harness: bounded parameter-efficient unlearning, evaluated at scale."""

from harness.core.lazy_imports import defer_sklearn_in_transformers

__version__ = "0.1.0"

defer_sklearn_in_transformers()  # 0.85 s of CPU less in each process that loads a model (harness.core.lazy_imports)
