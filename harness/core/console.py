"""What reaches the console: the harness's own progress and warnings always, library noise only with `--verbose`.

Hidden unless verbose: DeepSpeed's "Setting accelerator to CPU" warning, Ray's token-authentication notice,
Ray Tune's Optuna searcher's "None could not be cast to float" for trials stopped early, Ray Tune's
"may be a performance bottleneck" for a slow result (a stopped trial's, while its trainer is released),
transformers' / huggingface_hub's progress bars ("Writing model shards", downloads), MLflow's INFO lines and
Ray Tune's status tables. The setting travels to Ray workers in the environment (`HARNESS_VERBOSE`,
`HF_HUB_DISABLE_PROGRESS_BARS`) and through Ray's `worker_process_setup_hook` (`quiet_libraries`).
"""

from __future__ import annotations

import logging
import os
import sys

VERBOSE_ENV = "HARNESS_VERBOSE"
#: Messages dropped from library loggers unless verbose (substrings of the message).
NOISE = (
    "Setting accelerator to CPU",  # deepspeed.accelerator.real_accelerator, at import, no GPU
    "Token authentication is enabled for this Ray cluster",  # ray._private.authentication, at ray.init
    # Ray's Optuna searcher, for each trial ASHA stops before it reports the objectives: it tells Optuna
    # `[None, None]`, Optuna refuses and keeps the trial as failed (what a stopped trial is to its sampler).
    "The value None could not be cast to float",
    # Ray Tune, when handling a trial's result takes over 0.5 s: a stopped trial's result waits for its
    # trainer's release (harness.commands.tune), which is the point.
    "which may be a performance bottleneck",
)
#: The loggers those messages come from.
NOISY_LOGGERS = ("DeepSpeed", "ray._private.authentication.authentication_token_setup",
                 "ray.tune.search.optuna.optuna_search", "ray.tune.utils.util")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(n in message for n in NOISE)


def is_verbose() -> bool:
    """Whether library noise is shown (`harness --verbose`, or HARNESS_VERBOSE=1 in the environment)."""
    return os.environ.get(VERBOSE_ENV) == "1"


def quiet_libraries() -> None:
    """Hide the known library noise in this process and, through the environment, in those it starts.

    A logger filter (not a level) so it holds when the library creates its logger later (DeepSpeed sets
    its logger's level at import, then warns). Verbose: the filters come off again.
    """
    if is_verbose():
        for name in NOISY_LOGGERS:
            logger = logging.getLogger(name)
            for f in [f for f in logger.filters if isinstance(f, _DropNoise)]:
                logger.removeFilter(f)
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    if "huggingface_hub" in sys.modules:  # imported before the environment was set
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def configure_console(verbose: bool) -> None:
    """Set the console mode of this process (and the workers it starts), then apply it."""
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    quiet_libraries()
