"""Error types that the CLI turns into clear messages and exit codes."""


class HarnessError(Exception):
    """Base class for errors caused by bad input (exit code 2)."""

    exit_code = 2


class SpecError(HarnessError):
    """A job spec is malformed: the message names the field path."""


class DataError(HarnessError):
    """Benchmark data is missing or malformed: the message names the file or split."""


class ModelError(HarnessError):
    """A model cannot be found or loaded: the message names the model."""


class OutputError(HarnessError):
    """An output or cache directory cannot be created or written: the message names it."""


class CacheError(HarnessError):
    """A cache entry cannot be built, replaced or locked: the message names it."""
