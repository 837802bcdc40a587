"""Pacing the plant to the wall clock for the hardware-in-the-loop rig.

The plant steps in virtual time (:class:`sim.plant.Plant`); :class:`RealTimeRunner` advances it
by ``dt_s`` of plant time every ``dt_s / speed`` seconds of wall time, on an injected monotonic
clock and sleep. A step that takes longer than its wall budget is an *overrun*: the runner does
not try to catch up by running steps back to back (the endpoints would serve bursts of stale
time), it logs the overrun once at WARNING (repeats at DEBUG, with a count) and carries on from
the present, so plant time falls behind wall time by the overrun. ``overruns`` and
``lag_s`` say how far behind it is.

The runner is an asyncio task; cancelling it stops the plant between two steps.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)


class Steppable(Protocol):
    """What the runner needs of a plant: a step in virtual time."""

    def step(self, dt_s: float) -> None: ...


@dataclass
class RunnerStats:
    steps: int = 0
    overruns: int = 0
    worst_overrun_s: float = 0.0
    lag_s: float = 0.0
    step_wall_s: list[float] = field(default_factory=list)


class RealTimeRunner:
    """Step ``plant`` by ``dt_s`` at ``speed`` × real time until cancelled.

    ``on_step`` (optional) runs after every step, for instance to refresh the Modbus registers
    and publish MQTT telemetry; its time counts against the step's budget.
    """

    def __init__(
        self,
        plant: Steppable,
        dt_s: float = 0.1,
        speed: float = 1.0,
        on_step: Callable[[], Awaitable[None] | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        keep_step_times: int = 1000,
    ) -> None:
        if not (math.isfinite(dt_s) and dt_s > 0):
            raise ValueError(f"dt_s must be a positive number, got {dt_s!r}")
        if not (math.isfinite(speed) and speed > 0):
            raise ValueError(f"speed must be a positive number, got {speed!r}")
        self.plant = plant
        self.dt_s = dt_s
        self.speed = speed
        self.on_step = on_step
        self.clock = clock
        self.sleep = sleep
        self.stats = RunnerStats()
        self._keep = keep_step_times
        self._overrunning = False

    @property
    def budget_s(self) -> float:
        """Wall time allowed per step."""
        return self.dt_s / self.speed

    async def run(self, steps: int | None = None) -> RunnerStats:
        """Run ``steps`` steps (forever if None). Returns the statistics."""
        next_deadline = self.clock() + self.budget_s
        done = 0
        while steps is None or done < steps:
            started = self.clock()
            self.plant.step(self.dt_s)
            if self.on_step is not None:
                result = self.on_step()
                if result is not None:
                    await result
            finished = self.clock()
            self._record(finished - started)
            done += 1
            if finished > next_deadline:
                late = finished - next_deadline
                self._overrun(late)
                next_deadline = finished + self.budget_s
                await self.sleep(0)  # let the endpoints answer even while behind
            else:
                if self._overrunning:
                    log.info("simulation keeps pace again after %d overrun(s)",
                             self.stats.overruns)
                    self._overrunning = False
                await self.sleep(next_deadline - finished)
                next_deadline += self.budget_s
        return self.stats

    def _record(self, wall_s: float) -> None:
        self.stats.steps += 1
        times = self.stats.step_wall_s
        times.append(wall_s)
        if len(times) > self._keep:
            del times[: len(times) - self._keep]

    def _overrun(self, late_s: float) -> None:
        self.stats.overruns += 1
        self.stats.lag_s += late_s * self.speed
        self.stats.worst_overrun_s = max(self.stats.worst_overrun_s, late_s)
        if not self._overrunning:
            self._overrunning = True
            log.warning(
                "simulation step overran its %.1f ms budget by %.1f ms (speed %.3gx): plant "
                "time now lags wall time; lower --speed or the hall size",
                self.budget_s * 1e3, late_s * 1e3, self.speed,
            )
        else:
            log.debug("overrun %d by %.1f ms", self.stats.overruns, late_s * 1e3)
