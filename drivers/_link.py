"""What every connection shares: its state enum, capped exponential backoff with jitter, and a
fault log that says a fault once at ERROR, its repeats at DEBUG, and its recovery at INFO, within
a line budget shared by many connections (a poller's devices)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from drivers.errors import DeviceTimeout, NotConnected


class LinkState(Enum):
    """A connection's state, changed in one place per connection class."""

    IDLE = "idle"              # not started
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKOFF = "backoff"        # waiting before the next connect attempt
    CLOSED = "closed"


class StatefulLink:
    """The state of one connection, changed only by :meth:`_set_state`, with listeners and a
    race-free wait for CONNECTED. Shared by the Modbus device and the MQTT link."""

    _link_name = "link"

    def _init_state(self) -> None:
        self._state = LinkState.IDLE
        self._changed = asyncio.Event()
        self._listeners: list[Callable[[LinkState], None]] = []

    @property
    def state(self) -> LinkState:
        return self._state

    @property
    def connected(self) -> bool:
        return self._state is LinkState.CONNECTED

    def add_listener(self, listener: Callable[[LinkState], None]) -> None:
        """Call ``listener(state)`` on every state change (synchronously, must not block)."""
        self._listeners.append(listener)

    def _set_state(self, state: LinkState) -> None:
        if state is self._state:
            return
        self._state = state
        self._changed.set()
        self._changed = asyncio.Event()
        for listener in list(self._listeners):
            listener(state)

    async def _wait_for_connected(self, timeout_s: float | None, device: str) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                while self._state is not LinkState.CONNECTED:
                    if self._state is LinkState.CLOSED:
                        raise NotConnected(f"{self._link_name} is closed", device=device)
                    await self._changed.wait()
        except TimeoutError:
            raise DeviceTimeout(f"not connected within {timeout_s} s", device=device) from None


@dataclass
class Backoff:
    """Delays ``initial_s · factor**k``, capped at ``max_s``, each scaled by a random factor in
    ``[1 − jitter, 1]`` ("equal jitter": never zero, never above the cap).

    ``next_s()`` gives the delay before the next attempt and advances; ``reset()`` after a
    success. The random source is injectable so that tests are deterministic.
    """

    initial_s: float = 0.1
    max_s: float = 5.0
    factor: float = 2.0
    jitter: float = 0.5
    rng: random.Random = field(default_factory=random.Random)
    attempts: int = 0

    def __post_init__(self) -> None:
        if not (0 < self.initial_s <= self.max_s):
            raise ValueError(f"need 0 < initial_s <= max_s, got {self.initial_s}, {self.max_s}")
        if self.factor < 1 or not (0 <= self.jitter < 1):
            raise ValueError("need factor >= 1 and 0 <= jitter < 1")

    def next_s(self) -> float:
        base = min(self.max_s, self.initial_s * self.factor ** min(self.attempts, 64))
        self.attempts += 1
        return base * (1.0 - self.jitter * self.rng.random())

    def reset(self) -> None:
        self.attempts = 0


class LogBudget:
    """At most ``lines`` fault and recovery lines per ``window_s``, shared by the
    :class:`FaultLog` of many connections. Past that, lines are counted by what they said, and
    one WARNING per window says how many were not written and of what kind.

    A hall's thousands of devices fail together when a plant or its network is slow, and
    recover, and fail again. One line each came to 3 million lines (441 MB) in 7 minutes, about
    1 MB a second, from the service on the 32k hall behind a simulator that answered late
    (``benchmarks/bench_load.py --freeze-sim-at-s 120 --sim-run-share 0.05``): a disk filled
    within days. The counters (``/status``, the metrics) still count every fault.
    """

    def __init__(self, logger: logging.Logger, what: str, *, lines: int = 20,
                 window_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._what = what
        self.lines = lines
        self.window_s = window_s
        self._clock = clock
        self._start_s = clock()
        self._used = 0
        self._held: dict[str, int] = {}

    def allow(self, kind: str) -> bool:
        """Whether a line of ``kind`` (``"timeout"``, ``"recovered from timeout"``) may be
        written now; if not, it is counted for the window's summary."""
        self.flush_due()
        if self._used < self.lines:
            self._used += 1
            return True
        self._held[kind] = self._held.get(kind, 0) + 1
        return False

    def flush_due(self) -> None:
        """Once the window is over: its summary (if anything was held back), a new window."""
        if self._clock() - self._start_s >= self.window_s:
            self.flush()

    def flush(self) -> None:
        """The summary of what was held back, if anything, now; a new window."""
        now = self._clock()
        if self._held:
            total = sum(self._held.values())
            kinds = ", ".join(f"{k} {n:,}" for k, n in
                              sorted(self._held.items(), key=lambda kv: (-kv[1], kv[0])))
            self._logger.warning("%s: %s more fault and recovery line(s) in %.0f s not written "
                                 "one by one (over %d per %g s): %s", self._what, f"{total:,}",
                                 now - self._start_s, self.lines, self.window_s, kinds)
            self._held = {}
        self._start_s = now
        self._used = 0


class FaultLog:
    """Log a fault once at ERROR and its repeats at DEBUG until :meth:`recovered`.

    A fault is identified by a short key (``"connect"``, ``"timeout"``, ``"payload:schema"``);
    a new key while another is active is a new fault (logged at ERROR once too). With a
    ``budget``, the ERROR and INFO lines count against it (:class:`LogBudget`).
    """

    def __init__(self, logger: logging.Logger, name: str,
                 budget: LogBudget | None = None) -> None:
        self._logger = logger
        self._name = name
        self._budget = budget
        self._active: dict[str, int] = {}

    @property
    def active(self) -> bool:
        return bool(self._active)

    def fault(self, key: str, message: str, *args: object) -> None:
        count = self._active.get(key, 0)
        self._active[key] = count + 1
        level = logging.ERROR if count == 0 else logging.DEBUG
        if self._logger.isEnabledFor(level) and (
                count or self._budget is None or self._budget.allow(key)):
            self._logger.log(level, "%s: " + message + " (%s)", self._name, *args,
                             "first occurrence" if count == 0 else f"repeat {count}")

    def recovered(self, key: str | None = None) -> None:
        """Clear one fault (or all): log the recovery at INFO if it was active."""
        keys = list(self._active) if key is None else [key]
        for k in keys:
            count = self._active.pop(k, 0)
            if count and (self._budget is None or self._budget.allow(f"recovered from {k}")):
                self._logger.info("%s: recovered from %s after %d occurrence(s)",
                                  self._name, k, count)


async def stop_task(task: asyncio.Task[Any] | None) -> BaseException | None:
    """Cancel ``task`` and wait for it. Returns the exception it failed with before (None if it
    ended by the cancellation or cleanly). Our own cancellation, arriving meanwhile, is never
    swallowed: it is raised again."""
    if task is None:
        return None
    if task.done():
        return None if task.cancelled() else task.exception()
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception as exc:
        return exc
    return None
