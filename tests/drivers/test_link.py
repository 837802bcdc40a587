"""The fault log every connection writes through, and the line budget a poller's devices share
(drivers/_link.py): a hall's devices failing and recovering together must not flood the log."""

from __future__ import annotations

import logging

import pytest

from drivers._link import FaultLog, LogBudget

LOGGER = "rgtest.link"


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


def test_without_a_budget_every_fault_and_recovery_is_written_once(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    faults = FaultLog(logging.getLogger(LOGGER), "dev")
    for _ in range(3):
        faults.fault("timeout", "no answer within %.3g s", 0.5)
    faults.recovered("timeout")
    faults.recovered("timeout")                 # not active any more: nothing
    assert _lines(caplog, logging.ERROR) == ["dev: no answer within 0.5 s (first occurrence)"]
    assert _lines(caplog, logging.INFO) == ["dev: recovered from timeout after 3 occurrence(s)"]


def test_a_shared_budget_writes_its_lines_then_one_summary_per_window(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    log = logging.getLogger(LOGGER)
    clock = Clock()
    budget = LogBudget(log, "poller (30 devices)", lines=5, window_s=10.0, clock=clock)
    devices = [FaultLog(log, f"dev{k}", budget) for k in range(30)]
    for dev in devices:                          # all fail at once
        dev.fault("timeout", "no answer")
        dev.fault("timeout", "no answer")        # a repeat: DEBUG, never counted
    for dev in devices[:4]:
        dev.recovered()
    assert len(_lines(caplog, logging.ERROR)) == 5
    assert _lines(caplog, logging.INFO) == []
    assert _lines(caplog, logging.WARNING) == []
    clock.t += 3.0
    budget.flush_due()                           # the window is not over: nothing yet
    assert _lines(caplog, logging.WARNING) == []
    clock.t += 7.0
    budget.flush_due()
    (summary,) = _lines(caplog, logging.WARNING)
    assert summary == ("poller (30 devices): 29 more fault and recovery line(s) in 10 s not "
                       "written one by one (over 5 per 10 s): timeout 25, "
                       "recovered from timeout 4")
    # a new window: lines again, and a quiet window writes no summary
    devices[10].recovered()
    assert _lines(caplog, logging.INFO) == ["dev10: recovered from timeout after 2 occurrence(s)"]
    clock.t += 30.0
    budget.flush_due()
    assert len(_lines(caplog, logging.WARNING)) == 1


def test_a_line_after_the_window_writes_the_summary_first(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    log = logging.getLogger(LOGGER)
    clock = Clock()
    budget = LogBudget(log, "poller", lines=1, window_s=10.0, clock=clock)
    a, b = FaultLog(log, "a", budget), FaultLog(log, "b", budget)
    a.fault("connect", "refused")
    b.fault("connect", "refused")
    clock.t += 12.0
    b.recovered()
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert messages == [
        "a: refused (first occurrence)",
        "poller: 1 more fault and recovery line(s) in 12 s not written one by one "
        "(over 1 per 10 s): connect 1",
        "b: recovered from connect after 1 occurrence(s)"]
    budget.flush()                               # nothing held: nothing written
    assert len([r for r in caplog.records if r.name == LOGGER]) == 3
