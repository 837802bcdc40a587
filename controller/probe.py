"""The commissioning check behind ``rampguard probe``: reach every bound endpoint once, read
every binding, and say what answered and whether what it said is plausible.

:func:`probe` takes a config, its topology and its resolved bindings
(:func:`controller.bindings.resolve_bindings`) and, concurrently and read-only:

* **Modbus devices** (meters and switched rack PDUs, :mod:`drivers.modbus`): connects to each
  once (one attempt, no retry), reads its whole register map once, and for an actuator of the
  built-in PDU profile also reads its coils (function 01: the relays read back). Nothing is ever
  written: no coil write, no register write.
* **MQTT** (:mod:`drivers.mqtt`, only when the bindings name agents or MQTT meters): connects to
  the broker once and subscribes to every bound agent's ``status`` and ``telemetry`` topics, every
  MQTT meter's topic and every zone's sensor topic (docs/mqtt.md). It publishes nothing: no cap
  command, no status, no last will.

Plausibility is judged by the rules that already exist, never by new ones here: the drivers'
decode quality (NaN and infinite floats, data-valid and meter-fault status bits, negative or
absurd magnitudes: :mod:`drivers.registers`), and the controller's telemetry store
(:class:`controller.telemetry.TelemetryStore`: per-pole range against the node's rating, current
on an absent pole, negative, non-finite, children's sum against their parent, an agent's GPU
count and values). A single probe has no history, so neither staleness nor jumps are judged.

Which agents must answer: an agent whose server is known to be off (every outlet its PSUs plug
into reads back off) need not answer; any other must send valid telemetry within the timeout
(a retained ``online`` status alone does not prove it is alive). Zone sensors are not bindings:
they are reported when heard, and never make the probe fail.

Time: everything that talks to the network stops at 90 % of ``timeout_s`` after the start;
closing the connections takes the rest, so :func:`probe` returns within ``timeout_s`` even when a
device accepts the connection and never answers. It returns early once everything that must
answer has answered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from controller.bindings import (
    ResolvedBindings,
    meter_targets,
    pdu_nodes,
    target_currents,
)
from controller.model import HallConfig
from controller.telemetry import TelemetryStore
from controller.topology import Topology
from drivers._link import LinkState
from drivers.errors import (
    DecodeError,
    DeviceException,
    DeviceMismatch,
    DeviceTimeout,
    DeviceUnreachable,
    DriverConfigError,
    DriverError,
)
from drivers.modbus import ClientFactory, ModbusDevice, ModbusDeviceConfig, pymodbus_client
from drivers.mqtt import MqttConfig, MqttLink, Subscription
from drivers.payloads import (
    AgentStatus,
    AgentTelemetry,
    MeterTelemetry,
    ZoneTelemetry,
    zone_topic,
)
from drivers.registers import PROFILE_METER, PROFILE_PDU, Quality, Snapshot

__all__ = [
    "AgentReport",
    "BrokerReport",
    "DeviceReport",
    "MqttMeterReport",
    "OutletReport",
    "ProbeReport",
    "ZoneReport",
    "probe",
]

#: Share of the timeout kept for closing connections after the network work stops.
CLOSE_SHARE = 0.1
#: After the broker connection, how long to wait for things that need not answer (zone
#: sensors, the retained status of an agent whose server is off) before finishing early.
GRACE_S = 1.5
_POLL_S = 0.05
_MAX_VALUE_PROBLEMS = 8

#: Words for the telemetry store's reasons (controller/telemetry.py).
_REASONS = {
    "not_finite": "a current is NaN or infinite",
    "negative": "a negative current",
    "current_on_absent_pole": "current on a pole the node does not have",
    "out_of_range": "a current beyond the physical range for its rating",
    "children_sum_disagrees": "disagrees with the sum of its children's currents",
    "future_timestamp": "a timestamp from the future",
    "wrong_shape": "not one current per pole",
    "implausible_agent": "GPU count or values implausible for this server",
}


# ============================================================================================
# Reports
# ============================================================================================
def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 2)


def _finite(value: float | None) -> float | None:
    """JSON has no NaN: a value that is not finite is written as null."""
    return value if value is not None and math.isfinite(value) else None


@dataclass
class OutletReport:
    """One outlet of a PDU: ``relay_on`` from the coils (function 01) of an actuator, else from
    the register map's relay bits; ``energized`` from the register map (None where absent)."""

    outlet: int
    node: str | None            # None: no PSU plugs into it (not in the compiled tree)
    relay_on: bool | None
    energized: bool | None

    def to_dict(self) -> dict[str, Any]:
        return {"outlet": self.outlet, "node": self.node, "relay_on": self.relay_on,
                "energized": self.energized}


@dataclass
class DeviceReport:
    """What one Modbus device did. ``status``: ``ok``; ``unreachable`` (no connection);
    ``timeout`` (connected, no answer in time); ``exception`` (a Modbus exception reply);
    ``mismatch`` (not the device the config describes); ``decode_error``; ``implausible``
    (answered, but with values that cannot be true)."""

    device: str
    node: str
    profile: str
    roles: tuple[str, ...]
    status: str = "unreachable"
    answered: bool = False
    connect_s: float | None = None
    latency_s: float | None = None
    requests: int = 0
    values: dict[str, tuple[float, str, str]] = field(default_factory=dict)
    breaker_open: bool | None = None
    banks_open: tuple[int, ...] = ()
    outlets: list[OutletReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok" and not self.problems

    def to_dict(self) -> dict[str, Any]:
        host, _, rest = self.device.rpartition(":")
        port, _, unit = rest.partition("/")
        return {
            "device": self.device, "node": self.node, "host": host, "port": int(port),
            "unit_id": int(unit), "profile": self.profile, "roles": list(self.roles),
            "ok": self.ok, "status": self.status, "answered": self.answered,
            "connect_ms": _ms(self.connect_s), "latency_ms": _ms(self.latency_s),
            "requests": self.requests,
            "values": {name: {"value": _finite(v), "unit": u, "quality": q}
                       for name, (v, u, q) in self.values.items()},
            "breaker_open": self.breaker_open, "banks_open": list(self.banks_open),
            "outlets": [o.to_dict() for o in self.outlets], "problems": list(self.problems),
        }


@dataclass
class BrokerReport:
    url: str
    connected: bool = False
    connect_s: float | None = None
    received: int = 0
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"url": _redacted(self.url), "connected": self.connected,
                "connect_ms": _ms(self.connect_s), "received": self.received,
                "accepted": self.accepted, "rejected": dict(self.rejected),
                "problems": list(self.problems)}


@dataclass
class AgentReport:
    """One node agent: its retained ``status`` (``online``/``offline``, None: none seen), whether
    valid telemetry came (``latency`` from the subscription to the first), the last telemetry's
    values, and whether its server is powered per the outlet read-backs (None: unknown)."""

    server: str
    prefix: str
    status: str | None = None
    telemetry: bool = False
    latency_s: float | None = None
    gpus: int | None = None
    gpu_power_w: float | None = None
    gpu_limit_w: float | None = None
    gpu_temp_c: float | None = None
    server_power_w: float | None = None
    server_powered: bool | None = None
    required: bool = True
    problems: list[str] = field(default_factory=list)

    @property
    def answered(self) -> bool:
        return self.telemetry or self.status is not None

    def to_dict(self) -> dict[str, Any]:
        return {"server": self.server, "topic_prefix": self.prefix, "ok": not self.problems,
                "answered": self.answered, "status": self.status, "telemetry": self.telemetry,
                "latency_ms": _ms(self.latency_s), "gpus": self.gpus,
                "gpu_power_w": self.gpu_power_w, "gpu_limit_w": self.gpu_limit_w,
                "gpu_temp_c": self.gpu_temp_c, "server_power_w": self.server_power_w,
                "server_powered": self.server_powered, "required": self.required,
                "problems": list(self.problems)}


@dataclass
class MqttMeterReport:
    node: str
    topic: str
    heard: bool = False
    latency_s: float | None = None
    current_a: tuple[float, ...] | None = None
    power_w: tuple[float, ...] | None = None
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "topic": self.topic, "ok": not self.problems,
                "heard": self.heard, "latency_ms": _ms(self.latency_s),
                "current_a": None if self.current_a is None else list(self.current_a),
                "power_w": None if self.power_w is None else list(self.power_w),
                "problems": list(self.problems)}


@dataclass
class ZoneReport:
    """A cooling zone's sensors (``rampguard/sim/zones/{zone}/telemetry``): informational."""

    zone: str
    heard: bool = False
    inlet_c: float | None = None
    it_load_kw: float | None = None
    cooling_kw: float | None = None
    units_ok: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"zone": self.zone, "heard": self.heard, "inlet_c": self.inlet_c,
                "it_load_kw": self.it_load_kw, "cooling_kw": self.cooling_kw,
                "units_ok": self.units_ok}


@dataclass
class ProbeReport:
    """The whole probe: ``ok`` when every device and agent that must answer answered and said
    nothing implausible (``rampguard probe`` exits 0 then, else 3)."""

    hall: str
    timeout_s: float
    devices: list[DeviceReport]
    agents: list[AgentReport]
    mqtt_meters: list[MqttMeterReport]
    zones: list[ZoneReport]
    broker: BrokerReport | None
    elapsed_s: float = 0.0
    notes: tuple[str, ...] = ()

    def problems(self) -> list[str]:
        """Every problem, each prefixed by what it is about."""
        out = [f"broker {_redacted(self.broker.url)}: {p}" for p in self.broker.problems] \
            if self.broker is not None else []
        out += [f"{d.node} ({d.device}): {p}" for d in self.devices for p in d.problems]
        out += [f"agent {a.server}: {p}" for a in self.agents for p in a.problems]
        out += [f"meter {m.node} ({m.topic}): {p}" for m in self.mqtt_meters for p in m.problems]
        return out

    @property
    def ok(self) -> bool:
        return not self.problems() and all(d.ok for d in self.devices)

    def to_dict(self) -> dict[str, Any]:
        return {
            "hall": self.hall, "ok": self.ok, "timeout_s": self.timeout_s,
            "probe_seconds": round(self.elapsed_s, 3),
            "counts": {
                "devices": len(self.devices),
                "devices_answered": sum(d.answered for d in self.devices),
                "devices_ok": sum(d.ok for d in self.devices),
                "agents": len(self.agents),
                "agents_answered": sum(a.answered for a in self.agents),
                "agents_ok": sum(not a.problems for a in self.agents),
                "mqtt_meters": len(self.mqtt_meters),
                "zones_heard": sum(z.heard for z in self.zones),
            },
            "devices": [d.to_dict() for d in self.devices],
            "broker": None if self.broker is None else self.broker.to_dict(),
            "agents": [a.to_dict() for a in self.agents],
            "mqtt_meters": [m.to_dict() for m in self.mqtt_meters],
            "zones": [z.to_dict() for z in self.zones],
            "problems": self.problems(),
            "notes": list(self.notes),
        }


def _redacted(url: str) -> str:
    """A broker URL without its password."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"


# ============================================================================================
# Which nodes a device's readings land on (for the telemetry store)
# ============================================================================================
# ============================================================================================
# The probe
# ============================================================================================
class _Probe:
    def __init__(self, config: HallConfig, topo: Topology, bindings: ResolvedBindings, *,
                 timeout_s: float, mqtt_url: str | None, client_factory: ClientFactory,
                 mqtt_client_factory: Any | None, mqtt_config: MqttConfig | None = None
                 ) -> None:
        self.config, self.topo, self.bindings = config, topo, bindings
        self.timeout_s = timeout_s
        self.mqtt_url = mqtt_url
        self.mqtt_config = mqtt_config
        self.client_factory = client_factory
        self.mqtt_client_factory = mqtt_client_factory
        self.pdus = pdu_nodes(config, topo)
        self.targets = {cfg.key: meter_targets(cfg, topo, self.pdus) for cfg in bindings.modbus}
        meter_nodes = {t.node for ts in self.targets.values() for t in ts}
        meter_nodes |= {topo.node_index[m.node_id] for m in bindings.mqtt_meters}
        self.server_index = {s: k for k, s in enumerate(topo.server_id)}
        # The store's clock is the probe's: set to each reading's time as it is ingested, and
        # to the earliest at the end, so that one probe never calls its own readings stale.
        self._store_now = time.monotonic()
        self.store = TelemetryStore(
            topo, config.controller, sorted(meter_nodes),
            agent_servers=[self.server_index[a.server] for a in bindings.agents],
            clock=lambda: self._store_now)
        self._ingest_times: list[float] = []
        self.devices = [DeviceReport(cfg.key, cfg.node_id, cfg.profile_id,
                                     tuple(r for r, on in (("meter", cfg.meter),
                                                           ("actuator", cfg.actuator)) if on))
                        for cfg in bindings.modbus]
        self.agents = [AgentReport(a.server, a.topics.prefix) for a in bindings.agents]
        self.mqtt_meters = [MqttMeterReport(m.node_id, m.topic) for m in bindings.mqtt_meters]
        self.zones = [ZoneReport(z) for z in topo.zone_id]
        self.broker = (BrokerReport(mqtt_url or "")
                       if bindings.agents or bindings.mqtt_meters else None)
        self.modbus_done = asyncio.Event()

    # -- Modbus --------------------------------------------------------------------------------
    async def run_modbus(self, until: float) -> None:
        try:
            results = await asyncio.gather(*(
                self._device(rep, cfg, until)
                for rep, cfg in zip(self.devices, self.bindings.modbus, strict=True)))
            for rep, cfg, (snap, coils) in zip(self.devices, self.bindings.modbus, results,
                                               strict=True):
                if snap is not None:
                    self._judge_device(rep, cfg, snap, coils)
            self._judge_nodes()
        finally:
            self.modbus_done.set()

    async def _device(self, rep: DeviceReport, cfg: ModbusDeviceConfig, until: float
                      ) -> tuple[Snapshot | None, tuple[bool, ...] | None]:
        loop = asyncio.get_running_loop()
        budget = until - loop.time()
        if budget <= 0:
            rep.problems.append("not probed: no time left")
            return None, None
        # one connect attempt and each request bounded by the device's timeout and the budget
        cfg = replace(cfg, timeout_s=min(cfg.timeout_s, budget))
        snap: Snapshot | None = None
        coils: tuple[bool, ...] | None = None
        try:
            async with asyncio.timeout_at(until):
                async with ModbusDevice(cfg, client_factory=self.client_factory) as dev:
                    t0 = loop.time()
                    await dev.wait_first_attempt()
                    if not dev.connected:
                        rep.status = "unreachable"
                        rep.problems.append(f"no connection to {cfg.host}:{cfg.port} "
                                            f"(refused, or no answer within {cfg.timeout_s:g} s)")
                        return None, None
                    rep.connect_s = loop.time() - t0
                    t0 = loop.time()
                    rep.requests = len(cfg.read_plan())
                    snap = await dev.read()
                    rep.latency_s = loop.time() - t0
                    rep.answered, rep.status = True, "ok"
                    if cfg.actuator and isinstance(cfg.profile, str):
                        try:
                            coils = await dev.read_outlets()
                            rep.requests += 1
                        except DriverError as exc:
                            rep.problems.append(f"outlet relays (coils) not read back: "
                                                f"{exc.message}")
        except DeviceTimeout as exc:
            rep.status = "timeout"
            rep.problems.append(f"timed out: connected, but {exc.message}")
        except DeviceException as exc:
            rep.status, rep.answered = "exception", True
            rep.problems.append(f"exception reply: {exc.message}")
        except DeviceMismatch as exc:
            rep.status, rep.answered = "mismatch", True
            rep.problems.append(f"not the device the config describes: {exc.message}")
        except DecodeError as exc:
            rep.status, rep.answered = "decode_error", True
            rep.problems.append(f"answer does not decode: {exc.message}")
        except DeviceUnreachable as exc:
            rep.status = "unreachable"
            rep.problems.append(f"connection lost: {exc.message}")
        except DriverError as exc:       # pragma: no cover - every driver error is named above
            rep.status = "unreachable"
            rep.problems.append(exc.message)
        except TimeoutError:
            if snap is None:
                rep.status = "timeout"
                rep.problems.append(f"timed out: no answer before the probe's deadline "
                                    f"({self.timeout_s:g} s)")
            else:
                rep.problems.append("outlet relays (coils) not read back before the "
                                    "probe's deadline")
        return snap, coils

    def _judge_device(self, rep: DeviceReport, cfg: ModbusDeviceConfig, snap: Snapshot,
                      coils: tuple[bool, ...] | None) -> None:
        rep.values = {name: (r.value, r.unit, r.quality.label)
                      for name, r in snap.readings().items()}
        rep.breaker_open = snap.breaker_open
        rep.banks_open = tuple(k for k, is_open in enumerate(snap.bank_breaker_open, 1)
                               if is_open)
        header = snap.header
        if header is not None and (not header.data_valid or header.meter_fault):
            rep.problems.append("the device says its readings are not valid ("
                                + ("meter fault" if header.meter_fault else "data-valid bit clear")
                                + ")")
        else:
            bad = [(name, r) for name, r in snap.readings().items() if r.quality is not
                   Quality.GOOD]
            for name, r in bad[:_MAX_VALUE_PROBLEMS]:
                rep.problems.append(f"{name} = {r.value:g} {r.unit}: {r.quality.label}")
            if len(bad) > _MAX_VALUE_PROBLEMS:
                rep.problems.append(f"... and {len(bad) - _MAX_VALUE_PROBLEMS} more values not "
                                    "good")
        outlet_nodes = self.pdus[cfg.node_id].outlets if cfg.node_id in self.pdus else ()
        relays = coils if coils is not None else snap.outlets_on
        for n in range(1, cfg.outlets + 1):
            node = outlet_nodes[n - 1] if n <= len(outlet_nodes) else -1
            relay = relays[n - 1] if n <= len(relays) else None
            energized = (snap.outlets_energized[n - 1] if n <= len(snap.outlets_energized)
                         else None)
            rep.outlets.append(OutletReport(n, self.topo.node_id[node] if node >= 0 else None,
                                            relay, energized))
            if coils is not None and n <= len(snap.outlets_on) and snap.outlets_on[n - 1] != relay:
                rep.problems.append(f"outlet {n}: the coil reads {'on' if relay else 'off'}, "
                                    f"the register map says "
                                    f"{'on' if snap.outlets_on[n - 1] else 'off'}")
        for target in self.targets[cfg.key]:
            currents = target_currents(snap, target, self.topo)
            if currents is not None:
                self._store_now = snap.t_mono_s
                self._ingest_times.append(snap.t_mono_s)
                self.store.ingest_node(target.node, currents, t_s=snap.t_mono_s)

    def _judge_nodes(self) -> None:
        """The store's verdict per node (after the sum checks), onto each device's report."""
        if self._ingest_times:
            self._store_now = min(self._ingest_times)
        self.store.refresh()
        for rep, cfg in zip(self.devices, self.bindings.modbus, strict=True):
            if not rep.answered:
                continue
            for target in self.targets[cfg.key]:
                reason = self.store.fault("node", target.node)
                if reason is not None:
                    current = ", ".join(f"{x:g}" for x in self.store.node_i_a[target.node])
                    rep.problems.append(
                        f"node {self.topo.node_id[target.node]}: {_REASONS.get(reason, reason)}"
                        + (f" (last accepted [{current}] A)"
                           if reason == "children_sum_disagrees" else ""))
            if rep.problems and rep.status == "ok":
                rep.status = "implausible"

    def server_powered(self) -> list[bool | None]:
        """Per server: True when an outlet of its PSUs reads back energized (or its relay on
        where no energized state is read), False when every one reads off, else None."""
        state: dict[int, bool | None] = {}
        for rep in self.devices:
            for o in rep.outlets:
                if o.node is not None:
                    state[self.topo.node_index[o.node]] = (
                        o.energized if o.energized is not None else o.relay_on)
        out: list[bool | None] = []
        for s in range(self.topo.n_servers):
            psus = np.flatnonzero(self.topo.psu_server == s)
            seen = [state.get(int(self.topo.psu_node[p])) for p in psus]
            if any(v is True for v in seen):
                out.append(True)
            elif seen and all(v is False for v in seen):
                out.append(False)
            else:
                out.append(None)
        return out

    # -- MQTT ----------------------------------------------------------------------------------
    def _subscriptions(self, t0: list[float]) -> list[Subscription]:
        subs: list[Subscription] = []
        for rep, spec in zip(self.agents, self.bindings.agents, strict=True):
            subs.append(Subscription(spec.topics.status, AgentStatus, self._on_status(rep)))
            subs.append(Subscription(spec.topics.telemetry, AgentTelemetry,
                                     self._on_telemetry(rep, t0)))
        for meter, mrep in zip(self.bindings.mqtt_meters, self.mqtt_meters, strict=True):
            subs.append(Subscription(meter.topic, MeterTelemetry, self._on_meter(mrep, t0)))
        for zrep in self.zones:
            subs.append(Subscription(zone_topic(zrep.zone), ZoneTelemetry, self._on_zone(zrep)))
        return subs

    def _on_status(self, rep: AgentReport) -> Callable[[str, Any], None]:
        def handle(topic: str, payload: AgentStatus) -> None:
            if _names_other(rep.problems, topic, "server", payload.server, rep.server):
                return
            rep.status = payload.state
        return handle

    def _on_telemetry(self, rep: AgentReport, t0: list[float]) -> Callable[[str, Any], None]:
        index = self.server_index[rep.server]

        def handle(topic: str, payload: AgentTelemetry) -> None:
            now = time.monotonic()
            if _names_other(rep.problems, topic, "server", payload.server, rep.server):
                return
            if not rep.telemetry:
                rep.latency_s = now - t0[0]
            rep.telemetry = True
            gpus = payload.gpus
            rep.gpus = len(gpus)
            rep.gpu_power_w = math.fsum(g.power_w for g in gpus)
            rep.gpu_limit_w = max((g.limit_w for g in gpus), default=None)
            rep.gpu_temp_c = max((g.temp_c for g in gpus), default=None)
            rep.server_power_w = payload.server_power_w
            self._store_now = now
            self.store.ingest_server(index, [g.power_w for g in gpus],
                                     [g.limit_w for g in gpus], t_s=now)
        return handle

    def _on_meter(self, rep: MqttMeterReport, t0: list[float]) -> Callable[[str, Any], None]:
        node = self.topo.node_index[rep.node]

        def handle(topic: str, payload: MeterTelemetry) -> None:
            now = time.monotonic()
            if _names_other(rep.problems, topic, "node", payload.node, rep.node):
                return
            if not rep.heard:
                rep.latency_s = now - t0[0]
            rep.heard = True
            rep.current_a = tuple(payload.current_a)
            rep.power_w = tuple(payload.power_w)
            self._store_now = now
            self._ingest_times.append(now)
            self.store.ingest_node(node, payload.current_a, t_s=now)
        return handle

    @staticmethod
    def _on_zone(rep: ZoneReport) -> Callable[[str, Any], None]:
        def handle(topic: str, payload: ZoneTelemetry) -> None:
            rep.heard = True
            rep.inlet_c, rep.it_load_kw = payload.inlet_c, payload.it_load_kw
            rep.cooling_kw, rep.units_ok = payload.cooling_kw, payload.units_ok
        return handle

    def _settled(self, powered: list[bool | None] | None, grace_over: bool) -> bool:
        """Everything that must answer has answered (and the rest had its grace)."""
        if powered is None:
            return False
        for rep in self.agents:
            is_powered = powered[self.server_index[rep.server]]
            if not rep.telemetry and not (is_powered is False and (rep.status or grace_over)):
                return False
        if not all(m.heard for m in self.mqtt_meters):
            return False
        return grace_over or all(z.heard for z in self.zones)

    async def run_mqtt(self, until: float) -> None:
        assert self.broker is not None
        broker = self.broker
        loop = asyncio.get_running_loop()
        try:
            overrides: dict[str, Any] = {
                "client_id": f"rampguard-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}",
                "connect_timeout_s": max(min(5.0, until - loop.time()), 0.01)}
            mqtt = (dataclasses.replace(self.mqtt_config, **overrides)
                    if self.mqtt_config is not None
                    else MqttConfig.from_url(self.mqtt_url or "", **overrides))
        except DriverConfigError as exc:     # the CLI checks the URL first: a caller's bug
            broker.problems.append(f"bad broker URL: {exc.message}")
            return
        t0 = [loop.time()]
        failed = asyncio.Event()

        def on_state(state: LinkState) -> None:
            if state is LinkState.BACKOFF and not broker.connected:
                failed.set()       # the one connect attempt failed: no retry

        kwargs = {} if self.mqtt_client_factory is None else {
            "client_factory": self.mqtt_client_factory}
        link = MqttLink(mqtt, subscriptions=self._subscriptions(t0), **kwargs)
        link.add_listener(on_state)
        try:
            async with asyncio.timeout_at(until):
                async with link:
                    connected = asyncio.create_task(link.wait_connected())
                    gave_up = asyncio.create_task(failed.wait())
                    try:
                        await asyncio.wait((connected, gave_up),
                                           return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for task in (connected, gave_up):
                            task.cancel()
                        await asyncio.gather(connected, gave_up, return_exceptions=True)
                    if not link.connected:
                        broker.problems.append("cannot connect to the broker")
                        return
                    broker.connected = True
                    broker.connect_s = loop.time() - t0[0]
                    t0[0] = loop.time()
                    powered: list[bool | None] | None = None
                    while True:
                        if powered is None and self.modbus_done.is_set():
                            powered = self.server_powered()
                        if self._settled(powered, loop.time() - t0[0] >= GRACE_S):
                            break
                        await asyncio.sleep(_POLL_S)
        except TimeoutError:
            if not broker.connected:
                broker.problems.append(f"no connection to the broker before the probe's "
                                       f"deadline ({self.timeout_s:g} s)")
        finally:
            counters = link.counters
            broker.received, broker.accepted = counters.received, counters.accepted
            broker.rejected = dict(counters.rejected)
        if broker.rejected:
            reasons = ", ".join(f"{k}: {v}" for k, v in sorted(broker.rejected.items()))
            broker.problems.append(f"{sum(broker.rejected.values())} payload(s) on probed "
                                   f"topics rejected ({reasons}; docs/mqtt.md)")

    def judge_mqtt(self) -> None:
        powered = self.server_powered()
        window = f"{self.timeout_s:g} s"
        reachable = self.broker is not None and self.broker.connected
        for rep in self.agents:
            rep.server_powered = powered[self.server_index[rep.server]]
            rep.required = rep.server_powered is not False
            if not reachable:
                if rep.required:
                    rep.problems.append("not checked: the broker is not reachable")
                continue
            reason = self.store.fault("server", self.server_index[rep.server])
            if reason is not None:
                rep.problems.append(f"telemetry rejected: {_REASONS.get(reason, reason)}")
            if not rep.required or rep.telemetry:
                continue
            if rep.status == "offline":
                rep.problems.append("reports offline, but its server is not known to be off")
            elif rep.status == "online":
                rep.problems.append(f"status online, but no valid telemetry within {window}")
            else:
                rep.problems.append(f"no status and no valid telemetry within {window}")
        for mrep in self.mqtt_meters:
            if not reachable:
                mrep.problems.append("not checked: the broker is not reachable")
                continue
            if not mrep.heard:
                mrep.problems.append(f"no valid reading within {window}")
                continue
            reason = self.store.fault("node", self.topo.node_index[mrep.node])
            if reason is not None:
                mrep.problems.append(_REASONS.get(reason, reason))


def _names_other(problems: list[str], topic: str, what: str, named: str, expected: str
                 ) -> bool:
    """A payload on ``expected``'s topic that names someone else: one problem, not counted."""
    if named == expected:
        return False
    problem = f"a payload on {topic} names {what} {named!r}"
    if problem not in problems:
        problems.append(problem)
    return True


async def probe(
    config: HallConfig,
    topo: Topology,
    bindings: ResolvedBindings,
    *,
    timeout_s: float = 5.0,
    mqtt_url: str | None = "mqtt://127.0.0.1:1883",
    client_factory: ClientFactory = pymodbus_client,
    mqtt_client_factory: Any | None = None,
    started_s: float | None = None,
    mqtt_config: MqttConfig | None = None,
) -> ProbeReport:
    """Probe every endpoint of ``bindings`` once, read-only; returns within ``timeout_s`` of
    ``started_s`` (a ``time.monotonic()`` reading, default now: the CLI passes the moment it
    began, before loading the config).

    ``mqtt_url`` is the broker of the agents and MQTT meters (only used when the bindings name
    any); ``mqtt_config`` (credentials, TLS: the CLI's ``--mqtt-*`` options) replaces it when
    given. ``client_factory`` and ``mqtt_client_factory`` are the drivers' transport seams.
    """
    if not (math.isfinite(timeout_s) and timeout_s > 0):
        raise ValueError(f"timeout_s must be a positive number, got {timeout_s!r}")
    loop = asyncio.get_running_loop()
    started = loop.time() if started_s is None else loop.time() - (time.monotonic() - started_s)
    until = started + timeout_s * (1.0 - CLOSE_SHARE)
    run = _Probe(config, topo, bindings, timeout_s=timeout_s, mqtt_url=mqtt_url,
                 client_factory=client_factory, mqtt_client_factory=mqtt_client_factory,
                 mqtt_config=mqtt_config)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(run.run_modbus(until), name="probe modbus")
        if run.broker is not None:
            tg.create_task(run.run_mqtt(until), name="probe mqtt")
    run.judge_mqtt()
    return ProbeReport(topo.name, timeout_s, run.devices, run.agents, run.mqtt_meters,
                       run.zones, run.broker, elapsed_s=loop.time() - started,
                       notes=bindings.notes)


def format_report(report: ProbeReport, *, config: str) -> str:
    """The human-readable report: a summary table of the devices, then a table per device
    (values, outlets, problems), the broker, the agents, the zones and the verdict."""
    lines = [f"rampguard probe {config} (hall {report.hall}): {len(report.devices)} Modbus "
             f"device(s), {len(report.agents)} agent(s), {len(report.mqtt_meters)} MQTT "
             f"meter(s); timeout {report.timeout_s:g} s, took {report.elapsed_s:.2f} s", ""]
    rows: list[tuple[str, ...]]
    if report.devices:
        rows = [("device", "node", "roles", "answered", "latency ms", "status", "problems")]
        rows += [(d.device, d.node, "+".join(d.roles), "yes" if d.answered else "no",
                  _fmt_ms(d.latency_s), d.status, str(len(d.problems))) for d in report.devices]
        lines += ["Modbus devices", *_table(rows), ""]
    for d in report.devices:
        lines.append(f"{d.node} ({d.device}, {d.profile}): "
                     + ("answered in " + _fmt_ms(d.latency_s) + " ms" if d.answered
                        else "no answer") + f", {d.status}")
        lines += ["  " + row for row in _device_tables(d)]
        if d.breaker_open is not None:
            lines.append(f"  breaker: {'open' if d.breaker_open else 'closed'}"
                         + (f"; bank breakers open: {_ids(d.banks_open)}" if d.banks_open
                            else ""))
        if d.outlets:
            on = [o.outlet for o in d.outlets if o.relay_on]
            live = [o.outlet for o in d.outlets if o.energized]
            lines.append(f"  outlets read back: relay on: {_ids(on)}; energized: {_ids(live)}")
        lines += [f"  problem: {p}" for p in d.problems] or ["  problems: none"]
        lines.append("")
    if report.broker is not None:
        b = report.broker
        lines.append(f"MQTT broker {_redacted(b.url)}: "
                     + (f"connected in {_fmt_ms(b.connect_s)} ms, {b.accepted} message(s) "
                        f"taken, {sum(b.rejected.values())} rejected" if b.connected
                        else "not connected"))
        lines += [f"  problem: {p}" for p in b.problems]
        lines.append("")
    if report.agents:
        rows = [("agent", "status", "telemetry", "latency ms", "gpus", "gpu W", "limit W",
                 "powered", "problems")]
        rows += [(a.server, a.status or "-", "yes" if a.telemetry else "no",
                  _fmt_ms(a.latency_s), _fmt(a.gpus), _fmt(a.gpu_power_w),
                  _fmt(a.gpu_limit_w), {True: "yes", False: "no", None: "?"}[a.server_powered],
                  "; ".join(a.problems) or "none") for a in report.agents]
        lines += ["Node agents", *_table(rows), ""]
    if report.mqtt_meters:
        rows = [("meter", "topic", "heard", "latency ms", "current A", "problems")]
        rows += [(m.node, m.topic, "yes" if m.heard else "no", _fmt_ms(m.latency_s),
                  ", ".join(f"{x:g}" for x in m.current_a) if m.current_a else "-",
                  "; ".join(m.problems) or "none") for m in report.mqtt_meters]
        lines += ["MQTT meters", *_table(rows), ""]
    if report.broker is not None and report.zones:
        rows = [("zone (informational)", "heard", "inlet C", "IT kW", "cooling kW", "units")]
        rows += [(z.zone, "yes" if z.heard else "no", _fmt(z.inlet_c), _fmt(z.it_load_kw),
                  _fmt(z.cooling_kw), _fmt(z.units_ok)) for z in report.zones]
        lines += [*_table(rows), ""]
    problems = report.problems()
    if report.ok:
        lines.append("verdict: OK: every endpoint answered and every value is plausible")
    else:
        lines.append(f"verdict: NOT OK: {len(problems)} problem(s)")
        lines += [f"  - {p}" for p in problems]
    return "\n".join(lines)


def _device_tables(d: DeviceReport) -> list[str]:
    """A built-in map's values as an inlet table (per phase), a bank and an outlet table; any
    other profile's as one row per quantity. A value that is not good carries its quality."""
    def cell(name: str) -> str:
        if name not in d.values:
            return "-"
        value, _, quality = d.values[name]
        return f"{value:.4g}" + ("" if quality == "good" else f" ({quality})")

    if not d.values:
        return []
    if "voltage_l1" not in d.values or d.profile not in (PROFILE_PDU, PROFILE_METER):
        rows: list[tuple[str, ...]] = [("quantity", "value", "unit")]
        rows += [(name, cell(name), unit) for name, (_, unit, _) in d.values.items()]
        return _table(rows)
    out = _table([
        ("inlet", "L1", "L2", "L3", "N / total"),
        ("current A", cell("current_l1"), cell("current_l2"), cell("current_l3"),
         cell("current_n")),
        ("voltage V", cell("voltage_l1"), cell("voltage_l2"), cell("voltage_l3"), ""),
        ("power W", cell("power_l1"), cell("power_l2"), cell("power_l3"),
         cell("power_total")),
        ("energy Wh", "", "", "", cell("energy")),
    ])
    banks = sorted({int(n[4:].split(".")[0]) for n in d.values if n.startswith("bank")})
    if banks:
        rows = [("bank", "current A", "voltage V", "power W", "breaker")]
        rows += [(str(b), cell(f"bank{b}.current"), cell(f"bank{b}.voltage"),
                  cell(f"bank{b}.power"), "open" if b in d.banks_open else "closed")
                 for b in banks]
        out += _table(rows)
    if d.outlets:
        rows = [("outlet", "node", "relay", "energized", "current A", "power W")]
        rows += [(str(o.outlet), o.node or "(none)", _onoff(o.relay_on), _onoff(o.energized),
                  cell(f"outlet{o.outlet}.current"), cell(f"outlet{o.outlet}.power"))
                 for o in d.outlets]
        out += _table(rows)
    return out


def _onoff(state: bool | None) -> str:
    return "-" if state is None else ("on" if state else "off")


def _fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f}"


def _fmt(value: float | int | None) -> str:
    return "-" if value is None else f"{value:g}"


def _ids(values: Sequence[int]) -> str:
    return ", ".join(str(v) for v in values) if values else "none"


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
            for r in rows]
