"""The node agent (``rampguard agent``): one server's GPU power caps, applied on the
controller's command, read back, remembered on disk and restored when the GPUs lose them.

The contract is docs/mqtt.md (payloads in :mod:`drivers.payloads`, the command rules in
:class:`drivers.caps.CapGate`, which the simulator's stand-in agents follow too):

* ``PREFIX/caps/set`` (QoS 1): every valid command is judged by the gate: rejected when it is
  not the controller's (with ``command_key``: unsigned or wrongly signed; with ``issuer``: from
  another issuer; no ack, counted by reason, sent in telemetry as ``commands_rejected``, logged
  once at ERROR and its repeats at DEBUG, never with the key: docs/security.md), ignored (other
  server, replay, expired: no ack, counted), refused (wrong cap count, a cap outside the GPUs'
  [minimum, maximum], read-only agent, backend error: ``ok = false`` with a reason and the caps
  enforced now) or applied: the caps are saved on disk, set, read back and acked with what the
  GPUs enforce. An invalid payload (not JSON, wrong types, unknown fields, too large, from the
  future) is dropped and counted by :class:`drivers.mqtt.MqttLink`.
* ``PREFIX/telemetry`` every ``period_s``: per GPU power, temperature, enforced limit and
  throttle reasons, and ``cap_restores``.
* ``PREFIX/status`` retained, ``online`` after every (re)connect, ``offline`` as last will and
  on a clean stop.

Desired against observed (the reconcile, every period and at start, before the broker is even
reached): a GPU whose enforced limit differs from the last commanded cap by more than
``readback_tol_w`` — after a reboot, a driver reload, someone's ``nvidia-smi -pl`` — is set
again; the restore is logged, counted in telemetry (``cap_restores``) and reported as an event.
A backend that becomes unavailable (driver unloaded, GPU lost, stale handles) is reopened with
capped backoff and jitter; the next reconcile restores the caps. ``read_only``: nothing is ever
set (commands are refused with the reason ``read-only agent``; a drift is reported only) and the
state file is not written.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from pydantic import ValidationError

from controller.agent_state import (
    SavedCommand,
    SavedState,
    load_state,
    move_aside,
    save_state,
)
from controller.errors import StateFileCorrupt
from drivers._link import Backoff, FaultLog, LinkState, stop_task
from drivers.caps import REJECTIONS, AgentSpec, CapGate, CapResult, CapStats, make_ack
from drivers.errors import DriverError, GpuError, GpuUnavailable
from drivers.gpus import GpuBackend, GpuInfo, GpuReading
from drivers.mqtt import MqttConfig, MqttLink, StatusSpec, Subscription
from drivers.payloads import AgentStatus, AgentTelemetry, AgentTopics, CapCommand, GpuTelemetry

__all__ = ["AgentConfig", "AgentStats", "NodeAgent"]

_log = logging.getLogger(__name__)
_REASON_MAX = 200
_REJECTION_TEXT = {"unsigned": "no signature", "bad_signature": "wrong signature",
                   "wrong_issuer": "another issuer than the controller's"}

#: ``on_event({"event": NAME, ...})``: what the agent wants an operator to see (the CLI prints
#: one JSON line per event on stdout).
EventSink = Callable[[dict[str, object]], None]


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """One agent: its server, topics and broker; where it keeps its state (None: nowhere);
    ``expected``: the server as the bindings describe it (GPU count, [min cap, max] W), checked
    against the backend and intersected with the GPUs' own range. ``command_key``: the key
    that signs the controller's cap commands (None: unsigned commands are taken, a test rig
    only); ``issuer``: the controller's name, the only issuer taken (None: any)."""

    server: str
    topics: AgentTopics
    mqtt: MqttConfig
    state_path: Path | None = None
    read_only: bool = False
    period_s: float = 1.0
    expected: AgentSpec | None = None
    readback_tol_w: float = 1.0
    reopen_initial_s: float = 0.5
    reopen_max_s: float = 10.0
    queue_size: int = 1000
    command_key: bytes | None = field(default=None, repr=False)
    issuer: str | None = None

    def __post_init__(self) -> None:
        for name in ("period_s", "readback_tol_w", "reopen_initial_s", "reopen_max_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")


@dataclass
class AgentStats(CapStats):
    """Monotonic counters of one agent (the link's own are in ``agent.link.counters``)."""

    telemetry_sent: int = 0
    telemetry_dropped: int = 0
    cap_restores: int = 0
    restore_failures: int = 0
    backend_errors: int = 0
    reopens: int = 0
    invalid_readings: int = 0
    state_writes: int = 0
    state_write_failures: int = 0

    @property
    def rejected_total(self) -> int:
        """Commands rejected as not the controller's (unsigned, bad signature, issuer)."""
        return sum(self.ignored.get(reason, 0) for reason in REJECTIONS)


class NodeAgent:
    """The agent as an async context manager::

        async with NodeAgent(config, FakeGpuBackend(gpus=8)) as agent:
            await agent.wait()          # until cancelled (or a bug stops it)

    Entering opens the backend (a :class:`~drivers.errors.GpuError` here is raised: the GPUs
    cannot be managed at all), loads the state file (:class:`~controller.errors.StateFileError`
    raised; a corrupt file is reported, moved aside and ignored), restores the saved caps, then
    starts the MQTT link, the command worker and the telemetry loop. ``clock`` is the wall clock
    of payloads and command validity; ``rng`` the jitter of the backend's reopen backoff.
    """

    def __init__(self, config: AgentConfig, backend: GpuBackend, *,
                 clock: Callable[[], float] = time.time, on_event: EventSink | None = None,
                 rng: random.Random | None = None) -> None:
        self.config = config
        self.backend = backend
        self.stats = AgentStats()
        self._clock = clock
        self._emit = on_event or (lambda event: None)
        self._rng = rng or random.Random()  # noqa: S311 (jitter)
        self._faults = FaultLog(_log, f"agent {config.server}")
        self._backoff = Backoff(config.reopen_initial_s, config.reopen_max_s, rng=self._rng)
        self._infos: tuple[GpuInfo, ...] = ()
        self._last: tuple[GpuReading, ...] = ()
        self._desired: tuple[float, ...] | None = None
        self._saved_command: SavedCommand | None = None
        self._down = False
        self._retry_at = 0.0
        self._seq = 0
        self._drift_reported: tuple[int, ...] = ()
        self._queue: asyncio.Queue[CapCommand] = asyncio.Queue(maxsize=config.queue_size)
        # one writer of the GPUs at a time: a reconcile must not see a command half applied
        self._gpu_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._ready_sent = False
        # checked by the loops too: on Python 3.11, asyncio.wait_for (inside aiomqtt's QoS 1
        # publish) can swallow a cancellation that lands as the PUBACK arrives
        self._stopping = False
        self.gate: CapGate
        self.spec: AgentSpec
        self.link: MqttLink

    # -- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        cfg = self.config
        self._infos = await asyncio.to_thread(self._open)
        self.spec = self._spec(self._infos)
        self.gate = CapGate(self.spec, clock=self._clock, key=cfg.command_key,
                            issuer=cfg.issuer)
        self._load()
        self._seq = int(self._clock() * 1000)      # increases across restarts too
        await self.tick(publish=False)               # restore the caps before the broker
        status = StatusSpec(cfg.topics.status, lambda: self._status("online"),
                            lambda: self._status("offline"))
        self.link = MqttLink(cfg.mqtt, status=status, clock=self._clock, subscriptions=[
            Subscription(cfg.topics.caps_set, CapCommand, self._on_command, qos=1)])
        self.link.add_listener(self._on_link_state)
        try:
            await self.link.__aenter__()
            self._tasks = [
                asyncio.create_task(self._command_worker(), name=f"agent {cfg.server} commands"),
                asyncio.create_task(self._telemetry_loop(), name=f"agent {cfg.server} telemetry"),
            ]
        except BaseException:
            await self.link.aclose()
            await asyncio.to_thread(self.backend.close)
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        tasks, self._tasks = self._tasks, []
        failure: BaseException | None = None
        self._stopping = True
        for task in tasks:
            task.cancel()
        try:
            for task in tasks:          # re-raises our own cancellation, if we are cancelled
                failure = failure or await stop_task(task)
        finally:
            try:                        # the goodbye and the backend still get their turn
                failure = await self.link.aclose() or failure
            finally:
                await asyncio.to_thread(self.backend.close)
        if failure is not None and exc is None:
            raise failure

    async def wait(self) -> None:
        """Run until cancelled; raises what stopped the agent early (a bug)."""
        waiters: list[asyncio.Future[None]] = [*self._tasks,
                                               asyncio.ensure_future(self.link.wait())]
        try:
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiters[-1].cancel()
            await asyncio.gather(waiters[-1], return_exceptions=True)
        for fut in done:
            if not fut.cancelled() and fut.exception() is not None:
                raise fut.exception()  # type: ignore[misc]

    async def wait_connected(self, timeout_s: float | None = None) -> None:
        await self.link.wait_connected(timeout_s)

    @property
    def desired_w(self) -> tuple[float, ...] | None:
        """The caps last commanded (or restored from disk); None before the first."""
        return self._desired

    @property
    def gpus(self) -> tuple[GpuInfo, ...]:
        return self._infos

    # -- set-up ----------------------------------------------------------------------------
    def _open(self) -> tuple[GpuInfo, ...]:
        """(worker thread) Open the backend and read what does not change."""
        self.backend.open()
        try:
            return tuple(self.backend.info(k) for k in range(self.backend.count()))
        except BaseException:
            self.backend.close()
            raise

    def _spec(self, infos: Sequence[GpuInfo]) -> AgentSpec:
        """The gate's view: this server's GPU count and the cap range every GPU accepts (and
        the bindings allow)."""
        cfg = self.config
        if not infos:
            raise GpuError(f"the {self.backend.name} backend finds no GPU on this server",
                           device=self.backend.name)
        lo = max(g.min_w for g in infos)
        hi = min(g.max_w for g in infos)
        exp = cfg.expected
        if exp is not None:
            if exp.gpus != len(infos):
                raise GpuError(f"the bindings give {cfg.server} {exp.gpus} GPUs, the "
                               f"{self.backend.name} backend finds {len(infos)}",
                               device=self.backend.name)
            lo, hi = max(lo, exp.gpu_min_cap_w), min(hi, exp.gpu_max_w)
            if lo > hi:
                raise GpuError(f"the bindings' cap range [{exp.gpu_min_cap_w:g}, "
                               f"{exp.gpu_max_w:g}] W and the GPUs' do not overlap",
                               device=self.backend.name)
        return AgentSpec(server=cfg.server, topics=cfg.topics, gpus=len(infos),
                         gpu_min_cap_w=lo, gpu_max_w=hi)

    def _load(self) -> None:
        path = self.config.state_path
        if path is None:
            return
        try:
            saved = load_state(path, self.config.server)
        except StateFileCorrupt as exc:
            moved = None if self.config.read_only else move_aside(path, self._clock())
            _log.error("%s; starting without re-applying saved caps%s", exc,
                       f" (moved to {moved})" if moved else "")
            self._emit({"event": "state_corrupt", "path": str(path), "detail": exc.message,
                        "moved_to": str(moved) if moved else None})
            return
        if saved is None:
            return
        self.gate.last_seq.update(saved.last_seq)
        self._saved_command = saved.command
        caps = saved.caps_w
        if caps is None:
            return
        lo, hi, n = self.spec.gpu_min_cap_w, self.spec.gpu_max_w, self.spec.gpus
        if len(caps) != n or not all(lo <= c <= hi for c in caps):
            _log.error("%s: the saved caps %s do not fit this server's %d GPUs in [%g, %g] W; "
                       "not re-applied", path, caps, n, lo, hi)
            self._emit({"event": "state_mismatch", "path": str(path), "caps_w": caps,
                        "gpus": n, "range_w": [lo, hi]})
            return
        self._desired = tuple(caps)
        self._emit({"event": "state_loaded", "path": str(path), "caps_w": caps,
                    "command": saved.command.id if saved.command else None})

    async def _save(self, command: CapCommand | None) -> str | None:
        """Persist the desired caps and the gate's seqs; returns why it failed, or None."""
        path = self.config.state_path
        if path is None or self.config.read_only:
            return None
        if command is not None:
            self._saved_command = SavedCommand(id=command.id, issuer=command.issuer,
                                               seq=command.seq, t=command.t)
        state = SavedState(server=self.config.server, saved_t=self._clock(),
                           caps_w=list(self._desired) if self._desired else None,
                           command=self._saved_command, last_seq=dict(self.gate.last_seq))
        try:
            await asyncio.to_thread(save_state, path, state)      # fsyncs: off the loop
        except OSError as exc:
            self.stats.state_write_failures += 1
            self._faults.fault("state", "cannot save %s: %s", path, exc)
            return f"cannot save the caps to {path}: {exc.strerror or exc}"
        self.stats.state_writes += 1
        self._faults.recovered("state")
        return None

    # -- payloads ----------------------------------------------------------------------------
    def _status(self, state: Literal["online", "offline"]) -> AgentStatus:
        return AgentStatus(v=1, t=self._clock(), server=self.config.server, state=state,
                           backend=self.backend.name, read_only=self.config.read_only)

    def _on_link_state(self, state: LinkState) -> None:
        if state is LinkState.CONNECTED and not self._ready_sent:
            self._ready_sent = True
            self._emit({"event": "ready", "server": self.config.server,
                        "backend": self.backend.name, "read_only": self.config.read_only,
                        "topic_prefix": self.config.topics.prefix, "mqtt": self.config.mqtt.name,
                        "gpus": [{"index": g.index, "name": g.name, "uuid": g.uuid,
                                  "min_w": g.min_w, "max_w": g.max_w, "default_w": g.default_w}
                                 for g in self._infos],
                        "cap_range_w": [self.spec.gpu_min_cap_w, self.spec.gpu_max_w],
                        "desired_w": list(self._desired) if self._desired else None,
                        "limits_w": [r.limit_w for r in self._last]})

    # -- the backend, off the event loop -------------------------------------------------------
    async def _backend(self, what: str, fn: Callable[[], tuple[GpuReading, ...]]
                       ) -> tuple[GpuReading, ...] | None:
        """Run ``fn`` in a worker thread, reopening the backend first if it was lost; None
        (fault logged once) when the backend fails."""
        if self._down:
            loop = asyncio.get_running_loop()
            if loop.time() < self._retry_at:
                return None
            try:
                infos = await asyncio.to_thread(self._open)
                if len(infos) != self.spec.gpus:
                    await asyncio.to_thread(self.backend.close)
                    raise GpuUnavailable(f"found {len(infos)} GPUs after reopening, expected "
                                         f"{self.spec.gpus}", device=self.backend.name)
            except GpuError as exc:
                self._backend_failed("reopen", exc)
                return None
            self._down = False
            self.stats.reopens += 1
            self._faults.recovered("backend unavailable")
            self._backoff.reset()
            self._emit({"event": "backend_reopened", "backend": self.backend.name})
        try:
            result = await asyncio.to_thread(fn)
        except GpuError as exc:
            self._backend_failed(what, exc)
            return None
        self._faults.recovered(f"backend {what}")
        return result

    def _backend_failed(self, what: str, exc: GpuError) -> None:
        self.stats.backend_errors += 1
        if isinstance(exc, GpuUnavailable):
            if not self._down:
                self._emit({"event": "backend_lost", "backend": self.backend.name,
                            "detail": str(exc)})
            self._down = True
            self._retry_at = asyncio.get_running_loop().time() + self._backoff.next_s()
            self._faults.fault("backend unavailable", "%s: %s", what, exc)
        else:
            self._faults.fault(f"backend {what}", "%s: %s", what, exc)

    def _read_all(self) -> tuple[GpuReading, ...]:
        return tuple(self.backend.read(k) for k in range(self.spec.gpus))

    def _set_and_read(self, caps_w: Sequence[float | None]) -> tuple[GpuReading, ...]:
        """(worker thread) Set the GPUs whose cap is given, then read every GPU back."""
        for k, cap in enumerate(caps_w):
            if cap is not None:
                self.backend.set_power_limit_w(k, cap)
        return self._read_all()

    # -- the reconcile and the telemetry -------------------------------------------------------
    async def _telemetry_loop(self) -> None:
        loop = asyncio.get_running_loop()
        period = self.config.period_s
        next_t = loop.time()
        while not self._stopping:
            next_t = max(next_t + period, loop.time())
            await asyncio.sleep(next_t - loop.time())
            await self.tick()

    async def tick(self, *, publish: bool = True) -> None:
        """Read the GPUs, restore any cap they lost, publish the telemetry."""
        async with self._gpu_lock:
            readings = await self._backend("read", self._read_all)
            if readings is None:
                return
            readings = await self._restore(readings)
            self._last = readings
        if publish:
            await self._publish_telemetry(readings)

    def _drifted(self, readings: Sequence[GpuReading]) -> list[int]:
        desired, tol = self._desired, self.config.readback_tol_w
        if desired is None:
            return []
        return [k for k, r in enumerate(readings) if abs(r.limit_w - desired[k]) > tol]

    async def _restore(self, readings: tuple[GpuReading, ...]) -> tuple[GpuReading, ...]:
        drift = self._drifted(readings)
        if not drift:
            self._drift_reported = ()
            return readings
        assert self._desired is not None
        desired = self._desired
        found = [readings[k].limit_w for k in drift]
        wanted = [desired[k] for k in drift]
        if self.config.read_only:
            if tuple(drift) != self._drift_reported:        # once per new drift
                self._drift_reported = tuple(drift)
                _log.warning("%s: GPUs %s enforce %s W, not the commanded %s W (read-only: "
                             "left as found)", self.config.server, drift, found, wanted)
                self._emit({"event": "caps_differ", "gpus": drift, "found_w": found,
                            "commanded_w": wanted})
            return readings
        after = await self._backend("restore", lambda: self._set_and_read(
            [desired[k] if k in drift else None for k in range(len(desired))]))
        if after is None:
            self.stats.restore_failures += 1
            return readings
        still = self._drifted(after)
        restored = [k for k in drift if k not in still]
        self.stats.cap_restores += len(restored)
        _log.warning("%s: GPUs %s were found at %s W instead of the commanded %s W; set again "
                     "(now %s W)", self.config.server, drift, found, wanted,
                     [after[k].limit_w for k in drift])
        self._emit({"event": "caps_restored", "gpus": drift, "found_w": found,
                    "commanded_w": wanted, "enforced_w": [after[k].limit_w for k in drift],
                    "ok": not still})
        if still:
            self.stats.restore_failures += 1
        return after

    async def _publish_telemetry(self, readings: Sequence[GpuReading]) -> None:
        self._seq += 1
        try:
            payload = AgentTelemetry(
                v=1, server=self.config.server, t=self._clock(), seq=self._seq,
                gpus=[GpuTelemetry(index=k, power_w=r.power_w, temp_c=r.temp_c,
                                   limit_w=r.limit_w, throttle=list(r.throttle))
                      for k, r in enumerate(readings)],
                cap_restores=self.stats.cap_restores,
                commands_rejected=self.stats.rejected_total)
        except ValidationError as exc:
            self.stats.invalid_readings += 1
            self._faults.fault("reading", "the GPUs gave values outside the contract: %s",
                               exc.errors(include_url=False, include_input=False)[:2])
            return
        self._faults.recovered("reading")
        if await self.link.publish_telemetry(self.config.topics.telemetry, payload):
            self.stats.telemetry_sent += 1
        else:
            self.stats.telemetry_dropped += 1

    # -- cap commands ------------------------------------------------------------------------
    def _on_command(self, topic: str, cmd: CapCommand) -> None:
        self.stats.commands += 1
        try:
            self._queue.put_nowait(cmd)
        except asyncio.QueueFull:
            self.stats.count_ignored("overload")

    async def _command_worker(self) -> None:
        while not self._stopping:
            cmd = await self._queue.get()
            await self.handle_command(cmd)

    async def handle_command(self, cmd: CapCommand) -> CapResult | None:
        """Judge, apply, read back, save and ack one command; None when it is ignored."""
        decision = self.gate.decide(cmd)
        if decision.ignore is not None:
            self.stats.count_ignored(decision.ignore)
            if decision.ignore in REJECTIONS:
                self._faults.fault(f"reject {decision.ignore}",
                                   "rejected cap command %s from issuer %s: %s (not the "
                                   "controller's)", ascii(cmd.id), ascii(cmd.issuer),
                                   _REJECTION_TEXT[decision.ignore])
            return None
        if self._faults.active:
            for reason in REJECTIONS:
                self._faults.recovered(f"reject {reason}")
        self.gate.taken(cmd)                  # acked or refused, its seq cannot come back
        if decision.refuse is not None or self.config.read_only:
            reason = decision.refuse or "read-only agent: no setting is changed"
            readings = await self._backend("read", self._read_all)
            await self._save(None)
            result = CapResult(False, self._limits(readings), reason)
        else:
            async with self._gpu_lock:
                result = await self._apply(cmd, decision.caps_w)
        self.stats.count_result(result)
        try:
            await self.link.publish(self.config.topics.caps_ack,
                                    make_ack(cmd, result, t=self._clock()), qos=1)
        except DriverError as exc:
            self.stats.ack_failures += 1
            self._faults.fault("ack", "cannot ack %s: %s", cmd.id, exc)
        else:
            self.stats.acks += 1
            self._faults.recovered("ack")
        return result

    def _limits(self, readings: Sequence[GpuReading] | None) -> tuple[float, ...]:
        return tuple(r.limit_w for r in (readings if readings is not None else self._last))

    async def _apply(self, cmd: CapCommand, caps_w: tuple[float, ...]) -> CapResult:
        """Save first (a crash mid-way still restores these caps), then set and read back."""
        self._desired = caps_w
        not_saved = await self._save(cmd)
        readings = await self._backend("apply", lambda: self._set_and_read(caps_w))
        if readings is None:
            after = await self._backend("read", self._read_all)
            return CapResult(False, self._limits(after),
                             _short(f"cannot apply the caps ({self.backend.name} backend "
                                    "error); the agent retries every period"))
        self._last = readings
        off = self._drifted(readings)
        if off:
            k = off[0]
            return CapResult(False, self._limits(readings), _short(
                f"GPU {k} enforces {readings[k].limit_w:g} W after being set to "
                f"{caps_w[k]:g} W"))
        if not_saved is not None:
            return CapResult(False, self._limits(readings),
                             _short(f"caps applied but not saved: {not_saved}"))
        return CapResult(True, self._limits(readings))


def _short(text: str) -> str:
    return text if len(text) <= _REASON_MAX else text[:_REASON_MAX - 1] + "…"

