"""harness.core.console: the known library messages are dropped unless verbose; the libraries' other warnings stay."""

from __future__ import annotations

import logging

import pytest

from harness.core.console import configure_console

SEARCHER = "ray.tune.search.optuna.optuna_search"


def _logged(caplog: pytest.LogCaptureFixture, message: str) -> bool:
    caplog.clear()
    logging.getLogger(SEARCHER).warning(message)
    return any(r.getMessage() == message for r in caplog.records)


@pytest.fixture
def restore_console(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HARNESS_VERBOSE", "0")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    yield
    configure_console(False)


def test_stopped_trial_warning_dropped_others_kept(caplog: pytest.LogCaptureFixture, restore_console) -> None:
    caplog.set_level(logging.WARNING)
    configure_console(False)
    assert not _logged(caplog, "The value None could not be cast to float; The value None could not be cast to float")
    assert _logged(caplog, "The value nan is not acceptable")  # a trial that reported NaN stays visible
    assert _logged(caplog, "Received additional completion for trial t1, but it already finished.")


def test_verbose_shows_it_again(caplog: pytest.LogCaptureFixture, restore_console) -> None:
    caplog.set_level(logging.WARNING)
    configure_console(True)
    assert _logged(caplog, "The value None could not be cast to float")
