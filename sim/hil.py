"""The simulator behind its hardware-in-the-loop endpoints: ``rampguard sim serve``.

:class:`PlantView` adapts :class:`sim.plant.Plant` to the providers and callbacks of
:mod:`sim.endpoints` (docs/simulator-endpoints.md): it reads the plant once per plant step, shows
meter readings as the plant's meters see them (so meter faults reach the wire), and turns coil
writes and cap commands into plant actions. :func:`serve` runs the plant paced to the wall clock
(:class:`sim.realtime.RealTimeRunner`) with the Modbus servers and, given a broker, the MQTT
stand-ins for node agents and zone sensors, until cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from controller.bindings import pdu_nodes, resolve_bindings
from controller.model import HallConfig
from controller.topology import Topology
from drivers._link import stop_task
from drivers.caps import CapResult
from drivers.mqtt import MqttConfig, MqttLink, Subscription
from drivers.payloads import CapAck, CapCommand
from drivers.registers import BankSnapshot, MeterSnapshot, OutletSnapshot, PduSnapshot
from sim.endpoints import AgentState, GpuState, ModbusEndpoints, MqttEndpoints, ZoneState
from sim.endpoints._arrays import SnapshotArrays
from sim.faults import Scenario
from sim.meters import QUALITY_OK
from sim.observation import Observation
from sim.plant import Plant
from sim.realtime import RealTimeRunner, RunnerStats

log = logging.getLogger(__name__)

#: parts of a register refresh, with the event loop let go between them (on the 32k hall about
#: 2,100 devices and 10-15 ms of CPU each, from the array provider)
REFRESH_PARTS = 2


class PlantView:
    """The plant as the endpoints ask for it: providers and callbacks for both endpoints."""

    def __init__(self, plant: Plant, meter_period_s: float = 1.0) -> None:
        self.plant, self.topo, self.meter_period_s = plant, plant.topo, meter_period_s
        # PDU id -> (bank nodes, outlet node or -1 where the tree has none)
        self.pdus = {pdu: (nodes.banks, nodes.outlets)
                     for pdu, nodes in pdu_nodes(plant.config, self.topo).items()}
        self.server_index = {s: k for k, s in enumerate(self.topo.server_id)}
        # every PDU's banks and outlets, flat, for the once-per-step gather of _read: PDU ->
        # (first bank, banks, first outlet, outlet nodes); an outlet without a node reads node 0
        # and is shown empty
        banks_flat: list[int] = []
        outlets_flat: list[int] = []
        self._flat_at: dict[str, tuple[int, int, int, tuple[int, ...]]] = {}
        for pdu, (banks, outlets) in self.pdus.items():
            self._flat_at[pdu] = (len(banks_flat), len(banks), len(outlets_flat),
                                  tuple(int(o) for o in outlets))
            banks_flat += [int(b) for b in banks]
            outlets_flat += [max(int(o), 0) for o in outlets]
        self._banks_flat = np.asarray(banks_flat, dtype=np.int64)
        self._outlets_flat = np.asarray(outlets_flat, dtype=np.int64)
        # a bank across two lines reports its line-to-line voltage
        self._bank_v_factor = np.where(
            (self.topo.rating_a[self._banks_flat] > 0).sum(axis=1) == 2, math.sqrt(3), 1.0)
        self._t: float | None = None
        self._agent_t: float | None = None
        self._listed = False
        self._gather: dict[tuple[tuple[str, ...], tuple[int, int] | None], tuple[
            npt.NDArray[np.int64], npt.NDArray[np.int64] | None,
            npt.NDArray[np.int64] | None, npt.NDArray[np.bool_] | None]] = {}

    def _read(self) -> PlantView:
        if self._t != self.plant.t_s:       # one read-out per plant step
            p = self.plant
            self._t, self.obs = p.t_s, p.observe()
            self.i, self.v, self.w = p.node_current_a(), p.node_voltage_v(), p.node_power_w()
            self.e, self.closed = p.node_energy_wh(), p.breaker_closed()
            self.on, self.live = p.outlet_on(), p.energized()
            o = self.obs
            self.meter_of = np.full(len(self.i), -1, dtype=np.int64)   # node -> meter or -1
            self.meter_of[o.meter_node] = np.arange(len(o.meter_node))
            self.meter_ok_a = o.meter_quality == QUALITY_OK
            b, u = self._banks_flat, self._outlets_flat
            self.bank_i_a = self.i[b].max(axis=1)
            self.bank_v_a = self.v[b].max(axis=1) * self._bank_v_factor
            self.bank_w_a = self.w[b].sum(axis=1)
            self.bank_closed_a = self.closed[b]
            self.outlet_i_a = self.i[u].max(axis=1)
            self.outlet_w_a = self.w[u].sum(axis=1)
            self.outlet_on_a, self.outlet_live_a = self.on[u], self.live[u]
            self._listed = False
        return self

    def _lists(self) -> PlantView:
        """The read-out as Python lists, for :meth:`snapshot` (indexing a list per device is far
        cheaper than a numpy scalar per value); made once per step, when first asked for."""
        self._read()
        if not self._listed:
            o = self.obs
            self.meter = {int(n): m for m, n in enumerate(o.meter_node)}
            self.meter_ok = self.meter_ok_a.tolist()
            self.meter_i, self.meter_v = o.meter_i_a.tolist(), o.meter_v_v.tolist()
            self.meter_p, self.meter_e = o.meter_p_w.tolist(), o.meter_e_wh.tolist()
            self.meter_t = o.meter_t_sample_s.tolist()
            self.closed_l = self.closed.tolist()
            self.bank_i, self.bank_v = self.bank_i_a.tolist(), self.bank_v_a.tolist()
            self.bank_w, self.bank_closed = self.bank_w_a.tolist(), self.bank_closed_a.tolist()
            self.outlet_i, self.outlet_w = self.outlet_i_a.tolist(), self.outlet_w_a.tolist()
            self.outlet_on = self.outlet_on_a.tolist()
            self.outlet_live = self.outlet_live_a.tolist()
            self._listed = True
        return self

    def snapshot(self, node_id: str) -> MeterSnapshot | PduSnapshot | None:
        r, n = self._lists(), self.topo.node_index[node_id]
        m = r.meter.get(n)
        if m is None:                       # no meter in the plant: the tree's own values
            cur, volt, pw, e, t = r.i[n], r.v[n], r.w[n], r.e[n], r._t
        elif not r.meter_ok[m]:
            return None                     # a dead or unreachable meter answers nothing
        else:
            cur, volt, pw, e, t = (r.meter_i[m], r.meter_v[m], r.meter_p[m], r.meter_e[m],
                                   r.meter_t[m])
        t_s = float(t) if t is not None else math.nan
        seq = int(t_s / self.meter_period_s) if math.isfinite(t_s) else 0  # frozen when stale
        # before its first sample a meter has measured nothing: it says its data are not valid
        # (zeros with good quality would read as an idle, unloaded node)
        inlet = MeterSnapshot(_three(cur), _three(volt), _three(pw), energy_wh=float(e),
                              breaker_open=not r.closed_l[n], sequence=seq,
                              data_valid=math.isfinite(t_s))
        where = self._flat_at.get(node_id)
        if where is None:
            return inlet
        b0, nb, o0, outlets = where
        bi, bv, bw, bc = r.bank_i, r.bank_v, r.bank_w, r.bank_closed
        oi, ow, oon, olive = r.outlet_i, r.outlet_w, r.outlet_on, r.outlet_live
        return PduSnapshot(
            inlet,
            tuple(BankSnapshot(bi[k], bv[k], bw[k], breaker_open=not bc[k])
                  for k in range(b0, b0 + nb)),
            tuple(OutletSnapshot() if node < 0 else
                  OutletSnapshot(oi[k], ow[k], oon[k], olive[k])
                  for k, node in enumerate(outlets, o0)))

    def arrays(self, node_ids: Sequence[str], shape: tuple[int, int] | None) -> SnapshotArrays:
        """What :meth:`snapshot` shows for each of ``node_ids``, as arrays (the endpoints' array
        provider, :data:`sim.endpoints.modbus.ArrayProvider`): ``shape`` ``(banks, outlets)``
        asks for PDUs of that shape (``ValueError`` if a node is not one), ``None`` for the
        inlet only."""
        r = self._read()
        key = (tuple(node_ids), shape)
        where = self._gather.get(key)
        if where is None:
            where = self._gather_of(key[0], shape)
            if len(self._gather) >= 64:
                self._gather.clear()
            self._gather[key] = where
        idx, bank_at, outlet_at, outlet_missing = where
        o = r.obs
        m = r.meter_of[idx]
        metered = m >= 0
        mm = np.where(metered, m, 0)
        on_meter = metered[:, None]
        t_s = np.where(metered, o.meter_t_sample_s[mm], float(r._t or 0.0))
        valid = np.isfinite(t_s)
        with np.errstate(invalid="ignore"):
            seq = np.where(valid, np.trunc(np.where(valid, t_s, 0.0) / self.meter_period_s), 0)
        arrays = SnapshotArrays(
            present=np.where(metered, r.meter_ok_a[mm], True),
            current_a=np.where(on_meter, o.meter_i_a[mm], r.i[idx]),
            voltage_v=np.where(on_meter, o.meter_v_v[mm], r.v[idx]),
            power_w=np.where(on_meter, o.meter_p_w[mm], r.w[idx]),
            energy_wh=np.where(metered, o.meter_e_wh[mm], r.e[idx]),
            breaker_open=~r.closed[idx],
            data_valid=valid,
            sequence=seq.astype(np.int64))
        if shape is None:
            return arrays
        assert bank_at is not None and outlet_at is not None and outlet_missing is not None
        live = ~outlet_missing
        return dataclasses.replace(
            arrays,
            bank_current_a=r.bank_i_a[bank_at], bank_voltage_v=r.bank_v_a[bank_at],
            bank_power_w=r.bank_w_a[bank_at], bank_open=~r.bank_closed_a[bank_at],
            outlet_current_a=np.where(live, r.outlet_i_a[outlet_at], 0.0),
            outlet_power_w=np.where(live, r.outlet_w_a[outlet_at], 0.0),
            outlet_relay_on=live & r.outlet_on_a[outlet_at],
            outlet_energized=live & r.outlet_live_a[outlet_at])

    def _gather_of(self, node_ids: tuple[str, ...], shape: tuple[int, int] | None) -> tuple[
            npt.NDArray[np.int64], npt.NDArray[np.int64] | None,
            npt.NDArray[np.int64] | None, npt.NDArray[np.bool_] | None]:
        """Node indices, and for PDUs the flat bank and outlet positions ``(n, banks)``,
        ``(n, outlets)`` and where an outlet has no node, of ``node_ids``."""
        idx = np.fromiter((self.topo.node_index[n] for n in node_ids), dtype=np.int64,
                          count=len(node_ids))
        if shape is None:
            return idx, None, None, None
        banks, outlets = shape
        bank_at = np.zeros((len(node_ids), banks), dtype=np.int64)
        outlet_at = np.zeros((len(node_ids), outlets), dtype=np.int64)
        missing = np.zeros((len(node_ids), outlets), dtype=np.bool_)
        for k, node_id in enumerate(node_ids):
            flat = self._flat_at.get(node_id)
            if flat is None:
                raise ValueError(f"{node_id} is not a PDU")
            b0, nb, o0, outlet_nodes = flat
            if (nb, len(outlet_nodes)) != shape:
                raise ValueError(f"{node_id} has {nb} banks and {len(outlet_nodes)} outlets, "
                                 f"not {banks} and {outlets}")
            bank_at[k] = np.arange(b0, b0 + nb)
            outlet_at[k] = np.arange(o0, o0 + outlets)
            missing[k] = np.asarray(outlet_nodes, dtype=np.int64) < 0
        return idx, bank_at, outlet_at, missing

    def write(self, pdu_id: str, outlet: int, on: bool) -> bool:
        node = self.pdus[pdu_id][1][outlet - 1]
        if node < 0:
            return False                    # an outlet no PSU plugs into is not modelled
        self._t = None
        return self.plant.switch_outlet(node, on).ok

    def agent_state(self, server: str) -> AgentState | None:
        o, s = self._agent_obs(), self.server_index[server]
        if not o.server_agent_up[s]:
            return None
        gpu = GpuState(float(o.server_gpu_w[s]), float(o.server_gpu_temp_c[s]),
                       float(o.server_cap_w[s]))
        return AgentState((gpu,) * int(self.topo.server_gpus[s]),
                          server_power_w=float(o.server_p_w[s]))

    def _agent_obs(self) -> Observation:
        """The observation the agents report from: read once per plant step and kept through
        the coil writes and cap commands of that step. (A write makes the next :meth:`_read`
        read the plant again, so that the registers show it; an agent's telemetry waits for
        the next step. Re-reading for every agent after every write took the simulator of the
        32k hall 87 s for one round of 4,096 agents while a controller switched outlets.)"""
        if self._agent_t != self.plant.t_s:
            self._agent_t, self._agent_o = self.plant.t_s, self._read().obs
        return self._agent_o

    def apply_caps(self, server: str, caps_w: tuple[float, ...]) -> CapResult:
        result = self.plant.set_gpu_cap(server, min(caps_w))   # one cap per server: the lowest
        self._t = None
        enforced = float(self.plant.server_cap_w[self.server_index[server]])
        return CapResult(result.ok, (enforced,) * len(caps_w),
                         None if result.ok else (result.detail or "refused"))

    def zone_state(self, zone: str) -> ZoneState:
        p, z = self.plant, self.topo.zone_id.index(zone)
        unit_w = self.topo.zone_capacity_w[z] / self.topo.zone_units[z]
        return ZoneState(float(p.zone_t_air_c[z]), float(p.zone_p_it_w[z]) / 1e3,
                         float(p.zone_q_cool_w[z]) / 1e3,
                         round(float(p.zone_capacity_available_w()[z]) / unit_w))


def _follow_acks(plant: Plant, server: str) -> Callable[[str, CapAck], None]:
    """The plant takes the cap an external agent acknowledges as applied."""
    def handle(topic: str, ack: CapAck) -> None:
        if ack.ok and ack.enforced_w and ack.server == server:
            plant.set_gpu_cap(server, min(ack.enforced_w))
    return handle


def _recording(view: PlantView, record: Callable[[dict[str, Any]], None]) -> tuple[
        Callable[[str, int, bool], bool], Callable[[str, CapCommand, CapResult], None]]:
    """The view's coil writer and a cap-result sink that also record what they did."""
    def write(pdu_id: str, outlet: int, on: bool) -> bool:
        node = view.pdus[pdu_id][1][outlet - 1]
        was_on = bool(view.plant.outlet_on()[node]) if node >= 0 else False
        ok = view.write(pdu_id, outlet, on)
        record({"event": "write", "t_plant_s": round(view.plant.t_s, 3), "pdu": pdu_id,
                "outlet": outlet, "on": on, "was_on": was_on, "ok": ok})
        return ok

    def on_result(server: str, cmd: CapCommand, result: CapResult) -> None:
        record({"event": "caps", "t_plant_s": round(view.plant.t_s, 3), "server": server,
                "id": cmd.id, "seq": cmd.seq, "issuer": cmd.issuer, "cap_w": list(cmd.cap_w),
                "ok": result.ok})
    return write, on_result


def summary(plant: Plant) -> dict[str, Any]:
    """What the plant suffered, for a campaign's verdict: its trips, its violations (closed at
    the present time: call once, at the end) and the breakers open now."""
    plant.finish()
    closed = plant.breaker_closed()
    return {"event": "summary", "t_plant_s": round(plant.t_s, 3),
            "trips": [t.to_dict() for t in plant.trips],
            "violations": [v.to_dict() for v in plant.violations],
            "breakers_open": [plant.topo.node_id[int(n)] for n in plant.breaker_nodes
                              if not closed[int(n)]]}


def _three(values: Any) -> tuple[float, float, float]:
    return (float(values[0]), float(values[1]), float(values[2]))


async def serve(
    config: HallConfig,
    topo: Topology,
    *,
    source: str = "<config>",
    speed: float = 1.0,
    dt_s: float = 0.1,
    bind: str = "127.0.0.1",
    mqtt_url: str | None = None,
    seed: int = 0,
    ready: Callable[[dict[str, object]], None] | None = None,
    scenario: Scenario | None = None,
    external_agents: bool = False,
    record: Callable[[dict[str, Any]], None] | None = None,
    scenario_armed: asyncio.Event | None = None,
    stats: Callable[[dict[str, object]], None] | None = None,
    stats_every_s: float = 10.0,
    mqtt_config: MqttConfig | None = None,
    command_key: bytes | None = None,
) -> RunnerStats:
    """Serve the plant of ``config`` until cancelled (or forever).

    ``scenario``: faults injected at their times in plant seconds from the start (a fault given
    ``after_bring_up_s`` counts from the start too: a served plant does not know when a
    bring-up ends), with the scenario's plant overrides.

    ``external_agents``: the simulator runs no node agents of its own; real ``rampguard agent``
    processes (fake backend) answer the controller, and the plant follows the caps they
    acknowledge as applied (``caps/ack`` with ``ok``: the lowest enforced cap of the server).

    ``scenario_armed``: when given, the scenario's times count from the moment this event is
    set (``rampguard sim serve --scenario-on-signal``: SIGUSR1), not from the start, so that a
    campaign can inject its faults mid-ramp.

    ``record``: called with one plain dict per thing the plant was made to do (a fault
    campaign's ground truth): ``{"event": "write", "t_plant_s", "pdu", "outlet", "on",
    "was_on", "ok"}`` for every coil write, ``{"event": "caps", "t_plant_s", "server", "id",
    "seq", "issuer", "cap_w", "ok"}`` for every cap command applied or refused, and once, when
    the serving ends, ``{"event": "summary", "t_plant_s", "trips", "violations",
    "breakers_open"}`` (:func:`summary`).

    ``mqtt_config`` (credentials, TLS) replaces ``mqtt_url`` when given; ``command_key``: the
    simulated agents take only cap commands signed with it (docs/security.md).

    The meters' registers are refreshed (in :data:`REFRESH_PARTS` parts, the event loop let go
    between them) and the agents' and zones' telemetry published once per second of plant time;
    ``ready`` is called once everything listens, with the bound ports. ``stats``, if given, is
    called every ``stats_every_s`` of plant time with the runner's and the endpoints' counters
    (steps, overruns, lag, telemetry published and dropped, and the wall time of the last
    refresh and publish).
    """
    bindings = resolve_bindings(config, topo, source=source)
    plant = Plant(config, topo, seed=seed,
                  options=scenario.plant if scenario is not None else None)
    faults = scenario.faults if scenario is not None else ()
    if scenario_armed is None:
        for fault in faults:
            plant.schedule_fault(fault, fault.offset_s)
    view = PlantView(plant)
    write: Callable[[str, int, bool], bool] = view.write
    on_result: Callable[[str, CapCommand, CapResult], None] | None = None
    if record is not None:
        write, on_result = _recording(view, record)
    every = max(1, round(1.0 / dt_s))
    async with contextlib.AsyncExitStack() as stack:
        modbus = await stack.enter_async_context(ModbusEndpoints(
            bindings.modbus, view.snapshot, write, bind=bind, refresh_period_s=None,
            arrays=view.arrays))
        mqtt: MqttEndpoints | None = None
        if mqtt_url is not None or mqtt_config is not None:
            broker = mqtt_config or MqttConfig.from_url(mqtt_url or "")
            if external_agents:
                await stack.enter_async_context(MqttLink(
                    broker,
                    subscriptions=[Subscription(a.topics.caps_ack, CapAck,
                                                _follow_acks(plant, a.server), qos=1)
                                   for a in bindings.agents]))
            mqtt = await stack.enter_async_context(MqttEndpoints(
                broker, () if external_agents else bindings.agents,
                view.agent_state,
                view.apply_caps, zones=topo.zone_id, zone_state=view.zone_state,
                sim_clock=lambda: (speed, plant.t_s), period_s=None, on_result=on_result,
                command_key=command_key))
        steps = 0
        # the plant is never paced by the broker: a round of telemetry is published in a task
        # of its own (the next round is skipped while one is still out), so a broker that is
        # down, restarting or slow cannot freeze the meters (found by the HIL campaign)
        publishing: asyncio.Task[int] | None = None
        stats_every = max(1, round(stats_every_s / dt_s))
        io_wall_s = {"refresh_s": 0.0, "publish_s": 0.0}

        async def _publish_round(endpoints: MqttEndpoints) -> int:
            t1 = time.perf_counter()
            try:
                return await endpoints.publish_telemetry()
            finally:
                io_wall_s["publish_s"] = time.perf_counter() - t1

        async def on_step() -> None:
            nonlocal steps, publishing
            steps += 1
            if steps % every == 0:
                # every device from one read-out of the plant (the view reads once per plant
                # step), in parts with the event loop let go between them: a whole refresh
                # of the 32k hall held the loop 0.9 s, past the clients' 0.5 s timeout
                spent_s = 0.0
                for part in range(REFRESH_PARTS):
                    t0 = time.perf_counter()
                    modbus.refresh(part=(part, REFRESH_PARTS))
                    spent_s += time.perf_counter() - t0
                    await asyncio.sleep(0)
                io_wall_s["refresh_s"] = spent_s
                if publishing is not None and publishing.done():
                    done, publishing = publishing, None
                    if not done.cancelled() and done.exception() is not None:
                        raise done.exception()  # type: ignore[misc]  # a provider's bug
                if mqtt is not None and publishing is None:
                    publishing = asyncio.create_task(_publish_round(mqtt),
                                                     name="sim telemetry round")
            if stats is not None and steps % stats_every == 0:
                rs = runner.stats
                stats({"steps": rs.steps, "overruns": rs.overruns, "lag_s": round(rs.lag_s, 3),
                       "plant_t_s": round(plant.t_s, 3), "refreshes": modbus.stats.refreshes,
                       "telemetry_published": mqtt.stats.telemetry_published if mqtt else 0,
                       "telemetry_dropped": mqtt.stats.telemetry_dropped if mqtt else 0,
                       "last_refresh_s": round(io_wall_s["refresh_s"], 4),
                       "last_publish_s": round(io_wall_s["publish_s"], 4)})

        runner = RealTimeRunner(plant, dt_s=dt_s, speed=speed, on_step=on_step)
        if scenario_armed is not None and faults:
            async def arm() -> None:
                await scenario_armed.wait()
                t0_s = plant.t_s
                for fault in faults:
                    plant.schedule_fault(fault, t0_s + fault.offset_s)
                log.info("scenario armed at plant time %.1f s", t0_s)
                if record is not None:
                    record({"event": "scenario_armed", "t_plant_s": round(t0_s, 3)})
            stack.push_async_callback(stop_task, asyncio.create_task(arm(), name="arm faults"))
        # the registers hold the plant's first readings before anyone is told the simulator
        # serves (a probe right after `serving` read "data not valid" on a busy machine)
        modbus.refresh()
        if ready is not None:
            ready({
                "hall": topo.name,
                "modbus_ports": {port: modbus.bound_port(port) for port in modbus.ports},
                "devices": len(bindings.modbus),
                "agents": len(bindings.agents) if mqtt is not None and not external_agents
                else 0,
                "external_agents": external_agents,
                "mqtt": mqtt_url,
                "speed": speed,
            })
        try:
            return await runner.run()
        finally:
            if record is not None:
                record(summary(plant))
            if publishing is not None:
                publishing.cancel()
                await asyncio.gather(publishing, return_exceptions=True)
            log.info("simulator stopping at plant time %.1f s after %d steps (%d overruns)",
                     plant.t_s, runner.stats.steps, runner.stats.overruns)
