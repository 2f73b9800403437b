"""harness: bounded parameter-efficient unlearning, evaluated at scale."""

__version__ = "0.1.0"
