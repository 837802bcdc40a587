"""The real-time runner: pacing, overrun reporting, cancellation."""

from __future__ import annotations

import asyncio
import logging

import pytest

from sim.realtime import RealTimeRunner


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    async def sleep(self, dt: float) -> None:
        self.slept.append(dt)
        self.t += max(dt, 0.0)
        await asyncio.sleep(0)


class Plant:
    def __init__(self, clock: FakeClock, cost_s: list[float]) -> None:
        self.t_s = 0.0
        self.clock = clock
        self.cost_s = cost_s

    def step(self, dt_s: float) -> None:
        self.t_s += dt_s
        self.clock.t += self.cost_s.pop(0) if self.cost_s else 0.001


async def test_paces_plant_time_to_wall_time_at_speed() -> None:
    clock = FakeClock()
    plant = Plant(clock, [])
    runner = RealTimeRunner(plant, dt_s=0.1, speed=10.0, clock=clock, sleep=clock.sleep)
    stats = await runner.run(steps=100)
    assert stats.steps == 100 and stats.overruns == 0
    assert plant.t_s == pytest.approx(10.0)
    assert clock.t == pytest.approx(1.0)  # 10 s of plant time in 1 s of wall time at 10×


async def test_overruns_are_reported_once_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    plant = Plant(clock, [0.001, 0.05, 0.05, 0.05, 0.001, 0.001])
    runner = RealTimeRunner(plant, dt_s=0.1, speed=4.0, clock=clock, sleep=clock.sleep)
    with caplog.at_level(logging.DEBUG, logger="sim.realtime"):
        stats = await runner.run(steps=6)
    assert stats.overruns == 3
    assert stats.worst_overrun_s == pytest.approx(0.025)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "overran" in warnings[0].getMessage()
    assert any("keeps pace again" in r.getMessage() for r in caplog.records)


async def test_on_step_runs_after_each_step_and_cancellation_stops_between_steps() -> None:
    plant = Plant(FakeClock(), [])
    seen: list[float] = []
    five = asyncio.Event()

    async def publish() -> None:
        seen.append(plant.t_s)
        if len(seen) >= 5:
            five.set()

    runner = RealTimeRunner(plant, dt_s=0.01, speed=1000.0, on_step=publish)
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(five.wait(), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen[:3] == pytest.approx([0.01, 0.02, 0.03])


@pytest.mark.parametrize(("dt_s", "speed"), [(0.0, 1.0), (0.1, 0.0), (float("nan"), 1.0)])
def test_refuses_bad_parameters(dt_s: float, speed: float) -> None:
    with pytest.raises(ValueError):
        RealTimeRunner(Plant(FakeClock(), []), dt_s=dt_s, speed=speed)
