"""Training progress a person can follow: rank 0 of the workers streams each step to a small Ray actor, and
the driver draws one bar per run from it. When stderr is not a terminal (CI logs, pipes) it logs lines
instead: one per finished run, and one per running run every `line_every_s` seconds.

Ray Train's own reports cost about a second each (they wait for the controller's poll), so they stay
sparse; the actor call is fire-and-forget and costs well under a millisecond per step.

One sink actor serves every trainer a driver process starts (a named actor, found again by the next trainer):
an actor is a process of its own, about a second of CPU to start, and a job, a sweep or the test suite starts
many trainers. Each trainer writes to a channel of its own on it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

Steps = dict[str, tuple[int, int, float, float]]


class ProgressSink:
    """Ray actor: per channel (one per trainer), the latest step of every run and which runs finished."""

    def __init__(self) -> None:
        self.steps: dict[str, Steps] = {}
        self.finished: dict[str, dict[str, bool]] = {}

    def step(self, channel: str, key: str, done: int, total: int, loss: float, grad_norm: float) -> None:
        """Record that run `key` finished step `done` of `total`."""
        self.steps.setdefault(channel, {})[key] = (done, total, loss, grad_norm)

    def finish(self, channel: str, key: str, diverged: bool) -> None:
        """Record that run `key` ended (diverged or not)."""
        self.finished.setdefault(channel, {})[key] = diverged

    def snapshot(self, channel: str) -> tuple[Steps, dict[str, bool]]:
        """Everything recorded on `channel` so far."""
        return dict(self.steps.get(channel, {})), dict(self.finished.get(channel, {}))

    def close(self, channel: str) -> None:
        """Forget `channel` (its trainer ended)."""
        self.steps.pop(channel, None)
        self.finished.pop(channel, None)


@dataclass(frozen=True)
class ProgressChannel:
    """What the workers are given: the sink and their trainer's channel on it (fire-and-forget calls)."""

    sink: Any
    channel: str

    def step(self, key: str, done: int, total: int, loss: float, grad_norm: float) -> None:
        """Run `key` finished step `done` of `total`."""
        self.sink.step.remote(self.channel, key, done, total, loss, grad_norm)

    def finish(self, key: str, diverged: bool) -> None:
        """Run `key` ended."""
        self.sink.finish.remote(self.channel, key, diverged)

    def snapshot(self, timeout: float = 10) -> tuple[Steps, dict[str, bool]]:
        """Everything recorded on this channel so far (waits for the actor)."""
        import ray

        return ray.get(self.sink.snapshot.remote(self.channel), timeout=timeout)

    def close(self) -> None:
        """Forget this channel on the sink (its trainer ended)."""
        self.sink.close.remote(self.channel)


def shared_sink() -> Any:
    """This driver process's sink actor in the current Ray instance (created on first use)."""
    import ray

    return ray.remote(num_cpus=0)(ProgressSink).options(name=f"harness-progress-{os.getpid()}",
                                                         get_if_exists=True).remote()


class TrainingProgress:
    """Context manager around `trainer.fit()`: opens a channel on the sink actor and starts a thread that draws
    the bars.

    `sink` is the `ProgressChannel` to give the workers (None when progress is off).
    """

    def __init__(self, keys: Sequence[str], enabled: bool = True, log: Callable[[str], None] | None = None,
                 interval_s: float = 0.5, line_every_s: float = 30.0) -> None:
        self.keys = list(keys)
        self.enabled = enabled
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.interval_s = interval_s
        self.line_every_s = line_every_s
        self._last_line: dict[str, float] = {}
        self._started = time.monotonic()
        self.sink: ProgressChannel | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bars: dict[str, tqdm] = {}
        self._reported: set[str] = set()

    def __enter__(self) -> TrainingProgress:
        if not self.enabled:
            return self
        self.sink = ProgressChannel(shared_sink(), uuid.uuid4().hex)
        self._thread = threading.Thread(target=self._poll, name="harness-train-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        self._draw()  # the last state
        for bar in self._bars.values():
            bar.close()
        if self.sink is not None:
            self.sink.close()

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._draw()
            except Exception:  # noqa: BLE001 - a progress bar must never break training
                return

    def _draw(self) -> None:
        assert self.sink is not None
        steps, finished = self.sink.snapshot()
        tty = sys.stderr.isatty()
        for key in self.keys:
            if key not in steps:
                continue
            done, total, loss, grad_norm = steps[key]
            if tty:
                bar = self._bars.get(key)
                if bar is None:
                    bar = self._bars[key] = tqdm(total=total, desc=f"train {key}", leave=True, dynamic_ncols=True)
                bar.n = done
                bar.set_postfix(loss=f"{loss:.3g}", grad_norm=f"{grad_norm:.3g}", refresh=False)
                bar.refresh()
            if key in finished and key not in self._reported:
                self._reported.add(key)
                note = " (diverged)" if finished[key] else ""
                if not tty:
                    self.log(f"trained {key}: {done}/{total} steps, loss {loss:.4g}, grad norm {grad_norm:.4g}{note}")
            elif not tty and key not in finished:
                now = time.monotonic()
                if now - self._last_line.get(key, self._started) >= self.line_every_s:
                    self._last_line[key] = now
                    self.log(f"training {key}: {done}/{total} steps, loss {loss:.4g}, grad norm {grad_norm:.4g}")
