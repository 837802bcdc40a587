"""MQTT endpoints of the simulator: stand-ins for the node agents and the zone sensors.

One MQTT connection carries every simulated agent (a hall has thousands; a real agent has its
own connection and its own last will). The simulated agents publish their telemetry and their
retained ``online`` status on the node agent topics of docs/mqtt.md, take cap commands by the
same rules as the real agent (:class:`drivers.caps.CapGate`; given the controller's
``command_key``, only signed ones, as the real agent: docs/security.md) and ack them; the
zones publish their telemetry; ``rampguard/sim/status`` is retained with the last will
``stopped``. On a clean stop every agent's status is set ``offline``; after a crash the agents'
statuses stay ``online`` but the simulator's status says ``stopped`` (its will) and their
telemetry stops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self

from pydantic import ValidationError

from drivers._link import stop_task
from drivers.caps import AgentSpec, CapGate, CapResult, CapStats, make_ack
from drivers.errors import DriverError
from drivers.mqtt import MqttConfig, MqttLink, StatusSpec, Subscription
from drivers.payloads import (
    SIM_STATUS_TOPIC,
    AgentStatus,
    AgentTelemetry,
    CapCommand,
    GpuTelemetry,
    Payload,
    SimStatus,
    ZoneTelemetry,
    agent_command_key,
    zone_topic,
)

__all__ = [
    "AgentProvider",
    "AgentState",
    "CapApplier",
    "GpuState",
    "MqttEndpointStats",
    "MqttEndpoints",
    "ResultSink",
    "SimClock",
    "ZoneProvider",
    "ZoneState",
]

_log = logging.getLogger(__name__)
_PUBLISH_BATCH = 512


@dataclass(frozen=True, slots=True)
class GpuState:
    """One GPU as its agent would report it (W, °C)."""

    power_w: float
    temp_c: float
    limit_w: float
    throttle: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AgentState:
    """A server's agent's view: per-GPU state and the server's input power (W) if known."""

    gpus: tuple[GpuState, ...]
    server_power_w: float | None = None


@dataclass(frozen=True, slots=True)
class ZoneState:
    inlet_c: float
    it_load_kw: float
    cooling_kw: float
    units_ok: int


#: ``agent_state(server_id)`` → the agent's telemetry now, or None while the agent is down
#: (server off or not yet booted): no telemetry then, and commands are not taken.
AgentProvider = Callable[[str], AgentState | None]
#: ``apply_caps(server_id, caps_w)`` (one cap per GPU, already checked against the GPU's
#: limits) → what the GPUs enforce now (read back), or ``ok=False`` with a reason.
CapApplier = Callable[[str, tuple[float, ...]], CapResult]
#: ``zone_state(zone_id)`` → the zone's sensors now, or None (no telemetry).
ZoneProvider = Callable[[str], ZoneState | None]
#: ``sim_clock()`` → ``(speed, sim_t_s)``: the pace against the wall clock and virtual time.
SimClock = Callable[[], tuple[float, float]]
#: ``on_result(server_id, command, result)``: called for every command judged and applied or
#: refused (before its ack goes out); must not block. ``rampguard sim serve --record`` logs it.
ResultSink = Callable[[str, CapCommand, CapResult], None]


@dataclass
class MqttEndpointStats(CapStats):
    telemetry_published: int = 0
    telemetry_dropped: int = 0
    invalid_state: int = 0


class MqttEndpoints:
    """Simulated agents and zone sensors on one MQTT connection.

    ::

        async with MqttEndpoints(config, agents, agent_state, apply_caps,
                                 zones=topo.zone_id, zone_state=zone_state) as ep:
            await ep.wait_connected(5.0)

    ``period_s``: telemetry period (``None``: only when :meth:`publish_telemetry` is called,
    e.g. by a virtual-time runner). ``clock``: the wall clock of the payloads (Unix s).
    ``status_topic`` is ``rampguard/sim/status`` (tests move it to keep a shared broker clean).
    ``on_result``: see :data:`ResultSink`.
    ``command_key``: the hall's cap-command key; each stand-in takes only commands signed with
    its own key derived from it (``agent_command_key``, as the controller signs them; None: any
    command, as a rig without keys needs); ``issuer``: the only issuer taken (None: any).
    """

    def __init__(
        self,
        config: MqttConfig,
        agents: Sequence[AgentSpec],
        agent_state: AgentProvider,
        apply_caps: CapApplier,
        *,
        zones: Sequence[str] = (),
        zone_state: ZoneProvider | None = None,
        sim_clock: SimClock | None = None,
        period_s: float | None = 1.0,
        clock: Callable[[], float] = time.time,
        backend: str = "sim",
        status_topic: str = SIM_STATUS_TOPIC,
        on_result: ResultSink | None = None,
        command_key: bytes | None = None,
        issuer: str | None = None,
    ) -> None:
        servers = [a.server for a in agents]
        if len(set(servers)) != len(servers):
            raise ValueError("each server may have one agent")
        self._agents = {a.server: a for a in agents}
        self._gates = {a.server: CapGate(a, clock=clock, key=None if command_key is None
                                         else agent_command_key(command_key, a.server),
                                         issuer=issuer)
                       for a in agents}
        self._seq = dict.fromkeys(self._agents, 0)
        self._agent_state = agent_state
        self._apply = apply_caps
        self._zones = tuple(zones)
        self._zone_state = zone_state
        self._sim_clock = sim_clock or (lambda: (1.0, 0.0))
        self._period = period_s
        self._clock = clock
        self._backend = backend
        self._on_result = on_result
        self.stats = MqttEndpointStats()
        self._commands: asyncio.Queue[tuple[str, CapCommand]] = asyncio.Queue(maxsize=10_000)
        self._by_topic = {a.topics.caps_set: a.server for a in agents}
        subs = [Subscription(a.topics.caps_set, CapCommand, self._on_command, qos=1)
                for a in agents]
        status = StatusSpec(status_topic, lambda: self._sim_status("running"),
                            lambda: self._sim_status("stopped"))
        self.link = MqttLink(config, subscriptions=subs, status=status, clock=clock,
                             on_connect=self._announce, on_close=self._say_offline)
        self._tasks: list[asyncio.Task[None]] = []
        # the flag as well as the cancellation: on Python 3.11 aiomqtt's wait_for can swallow
        # the cancellation of a publish (an ack) that is completing, and a loop that only waits
        # to be cancelled would never stop
        self._closing = False

    # -- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        await self.link.__aenter__()
        self._tasks.append(asyncio.create_task(self._command_worker(), name="sim cap commands"))
        if self._period is not None:
            self._tasks.append(asyncio.create_task(self._telemetry_loop(self._period),
                                                   name="sim telemetry"))
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        # a stop driven by cancellation (SIGTERM in `sim serve`) runs this in a cancelling
        # task, where stop_task raises the cancellation again: the link is closed first (the
        # agents say offline in its on_close, after a connect under way has announced them
        # online), then the loops are reaped
        self._closing = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        failure: BaseException | None = None
        try:
            link_failure = await self.link.aclose()
        finally:
            for task in tasks:             # a failure here is a bug in a provider: raise it
                failure = failure or await stop_task(task)
        failure = failure or link_failure
        if failure is not None and exc is None:
            raise failure

    async def wait_connected(self, timeout_s: float | None = None) -> None:
        await self.link.wait_connected(timeout_s)

    # -- payloads ----------------------------------------------------------------------------
    def _sim_status(self, state: Literal["running", "stopped"]) -> SimStatus:
        speed, sim_t_s = self._sim_clock()
        return SimStatus(v=1, t=self._clock(), state=state, speed=speed, sim_t_s=sim_t_s)

    def _agent_status(self, agent: AgentSpec,
                      state: Literal["online", "offline"]) -> AgentStatus:
        return AgentStatus(v=1, t=self._clock(), server=agent.server, state=state,
                           backend=self._backend, read_only=False)

    async def _announce(self) -> None:
        """After every (re)connect: every agent says it is online (retained)."""
        await self._publish_batch([(a.topics.status, self._agent_status(a, "online"))
                                   for a in self._agents.values()], qos=1, retain=True)

    async def _say_offline(self) -> None:
        """On a clean stop, while still connected: every agent says it is offline."""
        await self._publish_batch([(a.topics.status, self._agent_status(a, "offline"))
                                   for a in self._agents.values()], qos=1, retain=True)

    async def _publish_batch(self, items: Sequence[tuple[str, Payload]], *, qos: int,
                             retain: bool = False) -> int:
        """Publish many messages concurrently; returns how many went out."""
        sent = 0
        for k in range(0, len(items), _PUBLISH_BATCH):
            chunk = items[k:k + _PUBLISH_BATCH]
            results = await asyncio.gather(
                *(self.link.publish(topic, payload, qos=qos, retain=retain)
                  for topic, payload in chunk), return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException) and not isinstance(r, DriverError):
                    raise r
                sent += r is None
        return sent

    # -- telemetry ---------------------------------------------------------------------------
    async def _telemetry_loop(self, period_s: float) -> None:
        loop = asyncio.get_running_loop()
        next_s = loop.time()
        while not self._closing:
            next_s += period_s
            await asyncio.sleep(max(0.0, next_s - loop.time()))
            await self.publish_telemetry()

    async def publish_telemetry(self) -> int:
        """Publish one round of agent and zone telemetry now; returns messages sent. While
        disconnected the round is dropped (and counted)."""
        now = self._clock()
        items: list[tuple[str, Payload]] = []
        for server, agent in self._agents.items():
            state = self._agent_state(server)
            if state is None:
                continue
            self._seq[server] += 1
            try:
                items.append((agent.topics.telemetry, AgentTelemetry(
                    v=1, server=server, t=now, seq=self._seq[server],
                    gpus=[GpuTelemetry(index=k, power_w=g.power_w, temp_c=g.temp_c,
                                       limit_w=g.limit_w, throttle=list(g.throttle))
                          for k, g in enumerate(state.gpus)],
                    server_power_w=state.server_power_w)))
            except ValidationError as exc:
                self._invalid(f"agent {server}", exc)
        if self._zone_state is not None:
            for zone in self._zones:
                z = self._zone_state(zone)
                if z is None:
                    continue
                try:
                    items.append((zone_topic(zone), ZoneTelemetry(
                        v=1, t=now, zone=zone, inlet_c=z.inlet_c, it_load_kw=z.it_load_kw,
                        cooling_kw=z.cooling_kw, units_ok=z.units_ok)))
                except ValidationError as exc:
                    self._invalid(f"zone {zone}", exc)
        if not self.link.connected:
            self.stats.telemetry_dropped += len(items)
            return 0
        sent = await self._publish_batch(items, qos=0)
        self.stats.telemetry_published += sent
        self.stats.telemetry_dropped += len(items) - sent
        return sent

    def _invalid(self, what: str, exc: ValidationError) -> None:
        self.stats.invalid_state += 1
        if self.stats.invalid_state == 1 or _log.isEnabledFor(logging.DEBUG):
            _log.log(logging.ERROR if self.stats.invalid_state == 1 else logging.DEBUG,
                     "cannot publish %s: the plant gave values outside the contract: %s",
                     what, exc.errors(include_url=False, include_input=False)[:2])

    # -- cap commands ------------------------------------------------------------------------
    def _on_command(self, topic: str, cmd: CapCommand) -> None:
        self.stats.commands += 1
        try:
            self._commands.put_nowait((self._by_topic[topic], cmd))
        except asyncio.QueueFull:
            self.stats.count_ignored("overload")

    async def _command_worker(self) -> None:
        while not self._closing:
            server, cmd = await self._commands.get()
            await self.handle_command(server, cmd)

    async def handle_command(self, server: str, cmd: CapCommand) -> CapResult | None:
        """Judge, apply and ack one command for ``server``'s agent; None when it is ignored."""
        gate = self._gates[server]
        agent = gate.spec
        if self._agent_state(server) is None:      # a down agent hears nothing
            self.stats.count_ignored("agent_down")
            return None
        decision = gate.decide(cmd)
        if decision.ignore is not None:
            self.stats.count_ignored(decision.ignore)
            return None
        if decision.refuse is not None:
            state = self._agent_state(server)
            enforced = tuple(g.limit_w for g in state.gpus) if state else ()
            result = CapResult(ok=False, enforced_w=enforced, reason=decision.refuse)
        else:
            result = self._apply(server, decision.caps_w)
        self.stats.count_result(result)
        gate.taken(cmd)
        if self._on_result is not None:
            self._on_result(server, cmd, result)
        try:
            await self.link.publish(agent.topics.caps_ack, make_ack(cmd, result, t=self._clock()),
                                    qos=1)
        except DriverError:
            self.stats.ack_failures += 1
        else:
            self.stats.acks += 1
        return result

    @property
    def ignored(self) -> dict[str, int]:
        return dict(self.stats.ignored)

