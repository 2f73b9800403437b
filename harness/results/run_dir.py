"""A run directory that always describes the results in it: staging, the status record, replacement at the end.

`harness run` never writes its results straight into the out dir `<parent>/<name>`:

- **One run per out dir.** The run holds a file lock `<parent>/.<name>.lock` (`filelock`: an `flock` the
  kernel releases when its holder dies) for as long as it runs; a second run into the same out dir is
  refused (OutputError naming it).
- **Staging.** Every file of the run goes into `<parent>/.<name>.staging-<pid>`; only when the run has
  finished does that directory replace the out dir (two renames; the earlier results are then deleted).
  A run that fails or is interrupted (SIGINT or SIGTERM) keeps its staging directory when it holds progress
  to resume (`RESUMABLE`: Ray Train checkpoints, scores), else deletes it; either way an earlier run's files
  stay byte-identical. `resume` adopts the latest staging directory left behind (after `check_resume`
  accepts it, e.g. the same spec); without it, the next run removes what earlier attempts left.
- **status.json.** The out dir's record of its state: `running`, `finished`, `failed` (with its `reason`)
  or `interrupted` (with its `signal`), written atomically. While an out dir holds a finished run's
  results, its status.json is that run's (a failed rerun with `--overwrite` leaves it as it was);
  otherwise it is the latest attempt's. Readers (`report`, `export`, `eval`, `nightly`, `sweep`) call
  `require_finished`.
- **Used out dirs.** One holding a finished run's results is refused without `overwrite` (exit 2 naming it);
  a non-empty directory that is not a run directory is always refused (replacing it would delete its files).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from filelock import FileLock, Timeout

import harness
from harness.core.errors import DataError, HarnessError, OutputError
from harness.core.io import atomic_write_json, ensure_writable_dir, read_json_file
from harness.core.signals import cleaning_up, signal_name, signals_deferred

STATUS_NAME = "status.json"
STATUS_FORMAT = 1
STATES = ("running", "finished", "failed", "interrupted")
#: Files whose presence makes a directory a run directory (older harness versions wrote no status.json).
RUN_FILES = (STATUS_NAME, "spec.yaml", "env.json", "metrics.parquet")
#: What in a staging directory is worth resuming: Ray Train checkpoints (`ray/`) and scores (`scores/`).
RESUMABLE = ("ray", "scores")
#: Ctrl-C (and SIGTERM) cannot cut a block in this context short (kept under its old name).
sigint_deferred = signals_deferred


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def read_status(run_dir: str | Path) -> dict[str, Any] | None:
    """The status.json record of `run_dir` (None when it has none); DataError naming it when damaged."""
    path = Path(run_dir) / STATUS_NAME
    if not path.is_file():
        return None
    status = read_json_file(path, "run status")
    if not isinstance(status, dict) or status.get("state") not in STATES:
        raise DataError(f"run status {path} is malformed: expected an object whose 'state' is one of "
                        f"{', '.join(STATES)}")
    return status


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


def describe_status(status: dict[str, Any]) -> str:
    """`failed: <reason>`, `interrupted`, or `running (pid N on host)` / `running ... but its process is gone`."""
    state = status["state"]
    if state == "failed":
        return f"failed: {status.get('reason') or 'no reason recorded'}"
    if state == "running":
        where = f"pid {status.get('pid')} on {status.get('host')}"
        if status.get("host") == socket.gethostname() and not _pid_alive(status.get("pid")):
            return f"running ({where}), but that process is gone: it was killed before it finished"
        return f"still running ({where}, started {status.get('started')})"
    return str(state)


def require_finished(run_dir: str | Path) -> None:
    """DataError naming `run_dir` and its state unless its status.json says `finished`.

    A directory without status.json (written by an older harness) passes: its readers check its files.
    """
    status = read_status(run_dir)
    if status is not None and status["state"] != "finished":
        raise DataError(f"{run_dir} is not a finished run: its {STATUS_NAME} says {describe_status(status)}")


def has_results(run_dir: str | Path) -> bool:
    """True when `run_dir` holds a finished run's results (status finished; without status.json, metrics)."""
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    if status is not None:
        return status["state"] == "finished"
    return (run_dir / "metrics.parquet").is_file()


def check_out_dir(out: str | Path, overwrite: bool = False) -> Path:
    """Fail (OutputError naming it) when `out` cannot take a new run's results; else the absolute out dir.

    Refused: a path that cannot be created or written (or whose parent cannot take the staging
    directory), a directory with a finished run's results unless `overwrite`, and a non-empty directory
    that is not a run directory. Nothing is written but the empty out dir itself.
    """
    out = Path(out).expanduser().absolute()
    ensure_writable_dir(out)
    ensure_writable_dir(out.parent, "parent of the output directory")
    try:
        used = has_results(out)
    except DataError as err:
        if not overwrite:
            raise OutputError(f"output directory {out} holds a damaged run record ({err}); pass --overwrite "
                              "to replace it") from None
        used = True
    if used and not overwrite:
        raise OutputError(f"output directory {out} already holds a finished run's results; pass --overwrite to "
                          "replace them (they are kept until the new run finishes), or choose another --out")
    if any(out.iterdir()) and not any((out / name).exists() for name in RUN_FILES):
        raise OutputError(f"output directory {out} is not empty and is not a run directory (no {STATUS_NAME}, "
                          "spec.yaml or metrics.parquet): replacing it would delete its files; choose an empty "
                          "or new --out")
    return out


class RunDirectory:
    """The out dir of one run: lock it, stage into a sibling directory, and `commit` the results at the end.

    Use as a context manager; `staging` is where the run writes. Leaving the block without `commit`
    (an exception) records `failed` (with the error as reason) or, on KeyboardInterrupt (SIGINT, SIGTERM),
    `interrupted` with the signal; the staging directory stays when it is `resumable`.
    With `resume`, the latest staging directory an earlier attempt left is adopted (`resumed` names it) once
    `check_resume(its path)` returns (it raises to refuse: nothing is changed then).
    """

    def __init__(self, out: str | Path, overwrite: bool = False, resume: bool = False,
                 check_resume: Callable[[Path], None] | None = None) -> None:
        self.out = Path(out).expanduser().absolute()
        if self.out.is_symlink():  # the renames replace the directory it points to, not the link
            self.out = self.out.resolve()
        self.overwrite = overwrite
        self.staging = self.out.with_name(f".{self.out.name}.staging-{os.getpid()}")
        self.started = _now()
        self.state: str | None = None
        self.resume, self._check_resume = resume, check_resume
        self.resumed: Path | None = None  #: the earlier attempt's staging directory this run continues
        self._lock = FileLock(str(self.out.with_name(f".{self.out.name}.lock")))

    def _record(self, state: str, reason: str | None = None, ended: bool = False,
                signal: str | None = None) -> dict[str, Any]:
        record = {"format_version": STATUS_FORMAT, "state": state, "reason": reason, "pid": os.getpid(),
                  "host": socket.gethostname(), "harness_version": harness.__version__, "started": self.started,
                  "ended": _now() if ended else None}
        if signal is not None:
            record["signal"] = signal
        if state in ("failed", "interrupted") and self.resumable():
            record["resume"] = str(self.staging)  # what `--resume` continues from
        return record

    def resumable(self) -> bool:
        """Whether the staging directory holds progress a `--resume` can continue from (`RESUMABLE`)."""
        return any((self.staging / name).is_dir() and any((self.staging / name).iterdir()) for name in RESUMABLE)

    def _adopt_earlier_staging(self) -> None:
        """With `resume`: the latest staging directory left by an earlier attempt becomes this run's (after
        `check_resume`); every other one is removed (the lock holder is the only writer)."""
        earlier = sorted(self.out.parent.glob(f".{self.out.name}.staging-*"), key=lambda p: p.stat().st_mtime)
        latest = earlier.pop() if self.resume and earlier else None
        if latest is not None and self._check_resume is not None:
            self._check_resume(latest)
        for old in earlier:
            shutil.rmtree(old, ignore_errors=True)  # left by a killed run or an attempt not resumed
        if latest is not None:
            latest.rename(self.staging)
            self.resumed = latest

    def __enter__(self) -> RunDirectory:
        check_out_dir(self.out, self.overwrite)
        try:
            self._lock.acquire(blocking=False)
        except Timeout:
            raise OutputError(f"output directory {self.out} is in use by another run (lock "
                              f"{self._lock.lock_file}); wait for it or choose another --out") from None
        except OSError as err:
            raise OutputError(f"cannot lock output directory {self.out} ({self._lock.lock_file}): {err}") from None
        try:
            check_out_dir(self.out, self.overwrite)  # again, now that no other run can change it
            self._adopt_earlier_staging()
            self.staging.mkdir(exist_ok=self.resumed is not None)
            self.keeps_results = has_results(self.out)
            if not self.keeps_results:
                atomic_write_json(self.out / STATUS_NAME, self._record("running"))
        except BaseException:
            if self.resumed is None:
                shutil.rmtree(self.staging, ignore_errors=True)
            self._lock.release()
            raise
        return self

    def commit(self) -> Path:
        """Mark the staged run finished and put it in place of the out dir; returns the out dir."""
        atomic_write_json(self.staging / STATUS_NAME, self._record("finished", ended=True))
        aside = self.out.with_name(f".{self.out.name}.replaced-{os.getpid()}")
        with signals_deferred():
            try:
                if self.out.exists():
                    self.out.rename(aside)
                self.staging.rename(self.out)
            except OSError as err:
                if aside.exists() and not self.out.exists():
                    aside.rename(self.out)
                raise OutputError(f"cannot move the finished run from {self.staging} to {self.out}: {err}") from None
            shutil.rmtree(aside, ignore_errors=True)
        self.state = "finished"
        return self.out

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        interrupted = exc is not None and isinstance(exc, KeyboardInterrupt)
        with cleaning_up() if interrupted else signals_deferred():
            try:
                if self.state is None:
                    self.state = "interrupted" if interrupted else "failed"
                    reason = None if interrupted else _reason(exc)
                    sig = signal_name(exc) if interrupted and exc is not None else None
                    if not self.keeps_results:
                        atomic_write_json(self.out / STATUS_NAME, self._record(self.state, reason, True, sig))
                if self.state == "finished" or not self.resumable():
                    shutil.rmtree(self.staging, ignore_errors=True)
            finally:
                self._lock.release()


def _reason(exc: BaseException | None) -> str:
    if exc is None:
        return "the run ended without committing its results"
    if isinstance(exc, HarnessError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
