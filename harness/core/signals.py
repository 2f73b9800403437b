"""SIGINT (Ctrl-C) and SIGTERM (SLURM, Kubernetes, Ray's autoscaler) stop a command the same way.

SIGTERM raises `Interrupted`, a `KeyboardInterrupt` that remembers its signal, so every clean-up path written
for Ctrl-C (Ray Train's workers aborted, Ray stopped, the out dir marked `interrupted`, the staging directory
kept for `--resume`) runs for both; the command then exits 128 + the signal number (130 for SIGINT, 143 for
SIGTERM). During that clean-up a second SIGINT or SIGTERM ends the process at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: The SIGTERM this process received, if any: Ray's blocking calls turn any exception a signal handler raises
#: into a plain KeyboardInterrupt (its core worker checks for signals and reports "interrupted"), so the
#: signal is remembered here too.
_received: int | None = None


class Interrupted(KeyboardInterrupt):
    """A stop signal other than Ctrl-C (SIGTERM), raised where the signal arrived (the main thread)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def signal_of(exc: BaseException) -> int:
    """The signal behind an interruption: its own for `Interrupted`; for another KeyboardInterrupt, the SIGTERM
    received (a Ray call re-raised it as a plain KeyboardInterrupt), else SIGINT."""
    if isinstance(exc, Interrupted):
        return exc.signum
    return _received if _received is not None else int(signal.SIGINT)


def signal_name(exc: BaseException) -> str:
    """`SIGINT` or `SIGTERM`: the signal behind an interruption, as status.json records it."""
    return signal.Signals(signal_of(exc)).name


def describe(exc: BaseException) -> str:
    """How an interruption is shown: `Ctrl-C` for SIGINT, else the signal's name."""
    signum = signal_of(exc)
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def exit_code(exc: BaseException) -> int:
    """The shell's code for a process stopped by the interruption's signal: 128 + its number."""
    return 128 + signal_of(exc)


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    global _received
    _received = signum
    raise Interrupted(signum)


def handle_sigterm() -> None:
    """Make SIGTERM raise `Interrupted` in the main thread (elsewhere: nothing). `ray.init` installs its own
    SIGTERM handler (exit without clean-up), so `harness.core.ray_env.ensure_ray` calls this again after it."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupted)


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """SIGTERM raises `Interrupted` inside the block (main thread only); the earlier handler is back after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    global _received
    _received = None
    previous = signal.getsignal(signal.SIGTERM)
    handle_sigterm()
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _received = None


@contextmanager
def _handlers(handler: Any) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def signals_deferred() -> AbstractContextManager[None]:
    """Ignore SIGINT and SIGTERM inside the block (main thread only): a step that must not be cut in two (the
    renames that put a finished run in place)."""
    return _handlers(signal.SIG_IGN)


def _exit_now(signum: int, frame: FrameType | None) -> None:
    name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    print(f"\nsecond stop signal ({name}) during clean-up: exiting at once", file=sys.stderr, flush=True)
    os._exit(128 + signum)


def cleaning_up() -> AbstractContextManager[None]:
    """The clean-up after an interruption (main thread only): a second SIGINT or SIGTERM inside the block ends
    the process at once with 128 + its number (a local Ray instance's processes share its fate)."""
    return _handlers(_exit_now)

