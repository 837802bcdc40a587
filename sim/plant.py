"""The simulated plant: servers, PSUs, the electrical tree with its breakers, sources and UPSs,
cooling zones and meters, stepped in virtual time.

The plant is event driven inside fixed steps. Loads change only when something happens: an
action executes at its exact time (outlets switched in one instant see their inrush together),
a server reaches the end of a timed phase (BMC, POST, boot), a breaker's predicted trip time
arrives, a GPU crosses a temperature threshold, a fault starts or clears. Each change moves only
the loads on the paths it touches (:func:`kernels.plant.commit_loads`), advancing each touched
breaker's thermal image exactly over the interval it held its current, and predicts the node's
next trip in closed form. A step of ``dt_s`` therefore costs little unless something happens in
it; the thermal zones and GPU temperatures are integrated every step.

Everything a HIL endpoint needs is here: per-node per-phase current, voltage, power and energy,
breaker states, outlet states, server and GPU power and temperature, zone temperatures
(:meth:`Plant.node_current_a`, ...), and the actions of :mod:`sim.actions` (switch outlets, set
GPU caps, reset breakers). :meth:`Plant.observe` gives what a controller sees through meters and
agents, faults included. See docs/simulator.md for the model and its estimates.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

import kernels
from controller.model import HallConfig
from controller.topology import KIND_CODE, KIND_NAMES, Topology, compile_hall
from kernels import plant as kp
from kernels import thermal as kt
from kernels.rows import row_max, row_sum
from sim.actions import Action, ActionResult, ResetBreakers, SetGpuCaps, SetWork, SwitchOutlets
from sim.faults import (
    AgentIgnoresCaps,
    BootOverdraw,
    BreakerTolerance,
    CoolingUnitFailure,
    Fault,
    FeedLoss,
    MeterDead,
    MeterLying,
    MeterStale,
    MeterStuck,
    ModbusUnreachable,
    WorkloadStorm,
)
from sim.meters import QUALITY_OK, MeterBank
from sim.observation import Observation
from sim.options import PlantOptions
from sim.records import PlantEvent, Trip, Violation

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
I32 = npt.NDArray[np.int32]
_SQRT2 = math.sqrt(2.0)
_INF = math.inf

SERVER_STARTING = (kp.SERVER_BMC, kp.SERVER_POST, kp.SERVER_BOOT)
#: GPU temperatures and their slowdown/shutdown thresholds are evaluated this often (s).
GPU_PERIOD_S = 1.0


@dataclass
class _Overload:
    start_s: float
    peak_x: float
    deadline_s: float
    violated: bool = False


@dataclass
class _Open:
    """An open violation interval of a ramp, step or inlet check."""

    start_s: float
    peak: float
    last_s: float


class Plant:
    """One hall's plant in virtual time. ``Plant(config)`` compiles the config; pass ``topo`` to
    share an already compiled one. Deterministic for a given ``seed``.

    Time: :attr:`t_s` (s, starts at 0); :meth:`step` advances it by ``dt_s``; :meth:`submit`
    queues actions at their ``t_s``; :meth:`schedule_fault` queues a fault.
    """

    def __init__(self, config: HallConfig, topo: Topology | None = None, *, seed: int = 0,
                 options: PlantOptions | None = None, source: str = "<config>") -> None:
        self.config = config
        self.topo = topo if topo is not None else compile_hall(config, source=source)
        self.options = options if options is not None else PlantOptions()
        self.seed = int(seed)
        topo = self.topo
        n, s_n, k_n, z_n = topo.n_nodes, topo.n_servers, topo.n_psus, len(topo.zone_id)
        self.t_s = 0.0
        self._now = 0.0
        seeds = np.random.SeedSequence(self.seed).spawn(3)
        rng_boot = np.random.default_rng(seeds[0])
        self._rng_faults = np.random.default_rng(seeds[2])

        # -- static arrays ------------------------------------------------------------------
        self._parent = np.ascontiguousarray(topo.parent_idx, dtype=np.int32)
        self._v_ln = np.ascontiguousarray(topo.v_ln_v, dtype=np.float64)
        self._rating = np.ascontiguousarray(topo.rating_a)
        self._limit = np.ascontiguousarray(topo.limit_a)
        self._kind = np.ascontiguousarray(topo.node_kind, dtype=np.int8)
        self._has_breaker = np.ascontiguousarray(topo.has_breaker, dtype=np.bool_)
        self._k = np.array(topo.trip.thermal_k, dtype=np.float64)
        self._tau = np.array(topo.trip.thermal_tau_s, dtype=np.float64)
        self._mag = np.array(topo.trip.magnetic_x, dtype=np.float64)
        self._pick = np.array(topo.trip.short_pickup_x, dtype=np.float64)
        self._delay = np.array(topo.trip.short_delay_s, dtype=np.float64)
        order = np.argsort(topo.psu_server, kind="stable").astype(np.int32)
        self._psu_order = order
        self._psu_start = np.searchsorted(topo.psu_server[order], np.arange(s_n + 1)).astype(
            np.int32)
        self._psu_server = np.ascontiguousarray(topo.psu_server, dtype=np.int32)
        self._psu_node = np.ascontiguousarray(topo.psu_node, dtype=np.int32)
        self._psu_phase = np.ascontiguousarray(topo.psu_phase, dtype=np.int8)
        self._psu_inrush_a = np.ascontiguousarray(
            topo.server_inrush_peak_a[topo.psu_server] / _SQRT2)
        self._psu_inrush_s = np.ascontiguousarray(topo.server_inrush_duration_s[topo.psu_server])
        self._outlet_psu = np.full(n, -1, dtype=np.int64)
        self._outlet_psu[topo.psu_node] = np.arange(k_n)
        models = {m.id: m for m in config.server_models}
        psu_rating = np.asarray([models[m].psu_rating_w for m in topo.server_model_id])
        self._s_psu_rating_w = np.ascontiguousarray(psu_rating[topo.server_model], np.float64)
        self._s_pf = np.ascontiguousarray(topo.server_pf)
        self._s_zone = np.ascontiguousarray(topo.server_zone, dtype=np.int32)
        self._s_boot_n = np.ascontiguousarray(topo.server_psus_to_boot, dtype=np.int32)
        self._s_carry_n = np.ascontiguousarray(topo.server_psus_to_carry, dtype=np.int32)
        self._s_gpus = np.ascontiguousarray(topo.server_gpus, dtype=np.int32)
        self._s_bmc_s = np.ascontiguousarray(topo.server_bmc_ready_s)
        self._s_gpu_min = np.ascontiguousarray(topo.server_gpu_min_cap_w)
        self._s_gpu_max = np.ascontiguousarray(topo.server_gpu_max_w)
        lo, hi = topo.server_post_s[:, 0], topo.server_post_s[:, 1]
        self.server_post_s = lo + (hi - lo) * rng_boot.random(s_n)
        lo, hi = topo.server_boot_s[:, 0], topo.server_boot_s[:, 1]
        self.server_boot_s = lo + (hi - lo) * rng_boot.random(s_n)
        # outlets that can be switched: those of switched rack PDUs
        pdu_of = topo.rack_pdu_of()
        self._pdu_of = pdu_of
        switched_pdu = self._switched_pdus(config, topo)
        is_outlet = self._kind == KIND_CODE["outlet"]
        self._switchable = is_outlet & (pdu_of >= 0) & switched_pdu[np.maximum(pdu_of, 0)]

        # -- node state -----------------------------------------------------------------------
        self._va = np.zeros((n, 3))
        self._pw = np.zeros((n, 3))
        self._theta = np.zeros((n, 3))
        self._timer = np.zeros((n, 3))
        self._t_state = np.zeros(n)
        self._energy_j = np.zeros(n)
        self._t_trip = np.full(n, _INF)
        self._peak_util = np.zeros(n)
        self._over_since = np.full(n, _INF)
        self._over_peak_x = np.zeros(n)
        self._tripped = np.zeros(n, dtype=np.bool_)
        self._live = self._has_breaker.copy()
        self._outlet_on = ~(is_outlet & self._switchable)  # unswitched outlets are always on
        self._source_up = np.ones(n, dtype=np.bool_)
        self._closed = self._outlet_on.copy()
        self._energized = np.zeros(n, dtype=np.bool_)
        self._mark = np.zeros(n, dtype=np.bool_)
        self._touched = np.zeros(n, dtype=np.int32)
        self._n_touched = np.zeros(1, dtype=np.int64)
        self._ev_node = np.zeros(n, dtype=np.int32)
        self._ev_kind = np.zeros(n, dtype=np.int8)
        self._ev_start = np.zeros(n)
        self._ev_peak = np.zeros(n)
        self._n_ev = np.zeros(1, dtype=np.int64)
        self._trip_min = np.array([_INF, -1.0])
        self._scratch_va = np.zeros((n, 3))
        self._inrush_nodes = np.zeros(n, dtype=np.int32)
        self._inrush_xs = np.zeros(n)
        self._inrush_n = np.zeros(1, dtype=np.int64)
        self._recent_inrush: list[tuple[float, npt.NDArray[np.int64]]] = []

        # -- PSUs and servers -------------------------------------------------------------------
        self._alive = np.zeros(k_n, dtype=np.bool_)
        self._alive_applied = np.zeros(k_n, dtype=np.bool_)
        self.server_state = np.zeros(s_n, dtype=np.int8)
        self._next_s = np.full(s_n, _INF)
        self._server_next_min = np.zeros(1)
        self._server_next_min[0] = _INF
        self._alive_count = np.zeros(s_n, dtype=np.int32)
        self.server_cap_w = self._s_gpu_max.copy()
        self._work = np.ones(s_n, dtype=np.bool_)
        self._ignore_caps = np.zeros(s_n, dtype=np.bool_)
        self._slowed = np.zeros(s_n, dtype=np.bool_)
        self._braked = np.zeros(s_n, dtype=np.bool_)
        self._overdraw = np.ones(s_n)
        self._p_w = np.zeros(s_n)
        self._gpu_w = np.zeros(s_n)
        self._p_applied = np.zeros(s_n)
        self._dirty = np.zeros(s_n, dtype=np.bool_)
        self._changed = np.zeros(s_n, dtype=np.bool_)
        self._gpu_temp = np.ascontiguousarray(topo.zone_supply_setpoint_c[self._s_zone]).copy()
        self._first_slowdown_s: float | None = None
        self._gpu_dt = 0.0
        self._gpu_event_s = {"gpu-slowdown": -_INF, "gpu-shutdown": -_INF}
        self.server_changes = 0  # counts commits of changed servers (cheap change detection)
        self.gpu_slowdowns = 0  # servers whose GPUs entered slowdown, counted per entry
        self.gpu_shutdowns = 0
        self._first_shutdown_s: float | None = None

        # -- zones ---------------------------------------------------------------------------
        self._z_unit_w = topo.zone_capacity_w / np.maximum(topo.zone_units, 1)
        self._z_failed = np.zeros(z_n, dtype=np.int64)
        self._z_cap = np.ascontiguousarray(topo.zone_capacity_w, dtype=np.float64).copy()
        it_w = np.bincount(self._s_zone, weights=topo.server_max_w, minlength=z_n)
        self._z_c_mass = np.ascontiguousarray(
            topo.zone_mass_heat_capacity_j_per_k_per_w * np.maximum(it_w, 1000.0))
        self._z_g = np.ascontiguousarray(self._z_c_mass / topo.zone_mass_time_constant_s)
        self._z_c_air = np.ascontiguousarray(topo.zone_air_heat_capacity_j_per_k, np.float64)
        self._z_tau = np.ascontiguousarray(topo.zone_response_tau_s, np.float64)
        self._z_set = np.ascontiguousarray(topo.zone_supply_setpoint_c, np.float64)
        self.zone_t_air_c = self._z_set.copy()
        self.zone_t_mass_c = self._z_set.copy()
        self.zone_q_cool_w = np.zeros(z_n)
        self.zone_p_it_w = np.zeros(z_n)
        self.zone_e_it_j = np.zeros(z_n)
        self.zone_e_cool_j = np.zeros(z_n)
        self._z_allow = np.asarray(topo.zone_inlet_allowable_c, np.float64)
        self._z_allow_min = float(self._z_allow.min()) if z_n else math.inf
        self.peak_inlet_c = float(self._z_set.max()) if z_n else 0.0

        # -- ramp / step checks ----------------------------------------------------------------
        ramp_mask = np.isfinite(topo.ramp_limit_w_per_s) | np.isfinite(topo.max_step_w)
        self._ramp_nodes = np.flatnonzero(ramp_mask)
        self._ramp_limit = np.asarray(topo.ramp_limit_w_per_s)[self._ramp_nodes]
        self._step_limit = np.asarray(topo.max_step_w)[self._ramp_nodes]
        self._ramp_buf: np.ndarray | None = None
        self._ramp_pos = 0
        self._ramp_dt = 0.0
        self._last_load_change_s = -_INF
        self._ramp_open: dict[tuple[int, str], _Open] = {}
        self._ramp_rebase = False
        self._inlet_open: dict[int, _Open] = {}

        # -- meters, faults, records --------------------------------------------------------------
        self.meters = MeterBank(config, topo, self.options, seeds[1])
        self._queue: list[tuple[float, int, str, Any]] = []
        self._seq = itertools.count()
        self.trips: list[Trip] = []
        self.violations: list[Violation] = []
        self.events: list[PlantEvent] = []
        self._overloads: dict[int, _Overload] = {}
        self._next_resync_s = self.options.resync_period_s
        self._fault_state: dict[int, dict[str, Any]] = {}
        self._fault_ids = itertools.count()
        self.action_results: list[ActionResult] = []

        self._power_flow(0.0, None)
        self._settle(0.0)

    # ===================================================================== construction helpers
    @staticmethod
    def _switched_pdus(config: HallConfig, topo: Topology) -> npt.NDArray[np.bool_]:
        """Per node: True for rack PDUs whose model is switched."""
        out = np.zeros(topo.n_nodes, dtype=np.bool_)
        models = {m.id: m.switched for m in config.pdu_models}
        templates = {t.id: t for t in config.rack_templates}
        for group in config.racks:
            template = templates[group.template]
            for rack in group.expanded_ids():
                for slot in template.pdus:
                    i = topo.node_index.get(f"{rack}-{slot.slot}")
                    if i is not None:
                        out[i] = models[slot.model]
        # any rack PDU not found by name (renamed ids) counts as switched
        pdus = topo.nodes_of_kind("rack_pdu")
        named = {topo.node_index.get(f"{rack}-{slot.slot}")
                 for group in config.racks for rack in group.expanded_ids()
                 for slot in templates[group.template].pdus}
        for i in pdus:
            if int(i) not in named:
                out[i] = True
        return out

    # ===================================================================== public: time
    def submit(self, actions: Action | Iterable[Action]) -> None:
        """Queue actions; each executes at its ``t_s`` (``None``: now). Times in the past run
        now."""
        if isinstance(actions, SwitchOutlets | SetGpuCaps | SetWork | ResetBreakers):
            actions = [actions]
        for action in actions:
            t = self._now if action.t_s is None else max(float(action.t_s), self._now)
            heapq.heappush(self._queue, (t, next(self._seq), "action", action))

    def apply_now(self, action: Action) -> ActionResult:
        """Execute one action at once, at the plant's present time (for endpoints)."""
        result = self._execute(action, self._now)
        self._settle(self._now)
        return result

    def schedule_fault(self, fault: Fault, at_s: float) -> None:
        """Start ``fault`` at virtual time ``at_s`` (s); it clears after its ``duration_s``."""
        fid = next(self._fault_ids)
        at = max(float(at_s), self._now)
        heapq.heappush(self._queue, (at, next(self._seq), "fault-on", (fid, fault)))
        if isinstance(fault, WorkloadStorm):
            heapq.heappush(self._queue, (at + fault.idle_s, next(self._seq), "storm-release",
                                         (fid, fault)))
        elif fault.duration_s is not None:
            heapq.heappush(self._queue, (at + fault.duration_s, next(self._seq), "fault-off",
                                         (fid, fault)))

    def process_due(self) -> None:
        """Execute what is queued for the present time or earlier (faults and actions), without
        advancing time: a harness calls it before a strategy's tick so that the tick sees a
        fault that starts at that very time."""
        if self._queue and self._queue[0][0] <= self._now:
            while self._queue and self._queue[0][0] <= self._now:
                _, _, what, payload = heapq.heappop(self._queue)
                self._dispatch(what, payload, self._now)
            self._settle(self._now)

    def step(self, dt_s: float) -> None:
        """Advance virtual time by ``dt_s`` seconds."""
        if not (dt_s > 0 and math.isfinite(dt_s)):
            raise ValueError(f"dt_s must be a positive number of seconds, got {dt_s!r}")
        t1 = round(self.t_s + dt_s, 9)  # no drift of the clock over 10⁶ steps
        self.action_results = []
        while True:
            te = self._queue[0][0] if self._queue else _INF
            tt = self._trip_min[0]
            if tt <= t1 and tt <= te:
                self._now = max(tt, self._now)
                self._trip_due(self._now)
                self._settle(self._now)
                continue
            if te < t1:
                self._now = max(te, self._now)
                while self._queue and self._queue[0][0] <= te:
                    _, _, what, payload = heapq.heappop(self._queue)
                    self._dispatch(what, payload, self._now)
                self._settle(self._now)
                continue
            break
        self._now = t1
        if self._server_next_min[0] <= t1:
            kp._advance_servers(t1, self._alive_count, self._s_boot_n, self._s_bmc_s,
                                self.server_post_s, self.server_boot_s, self._work,
                                self.server_state, self._next_s, self._dirty,
                                self._server_next_min)
            self._settle(t1)
        self._thermal(dt_s, t1)
        self._check_ramps(dt_s, t1)
        self._check_inlets(t1)
        if self._overloads:
            self._check_overloads(t1)
        if self.meters.next_due_s <= t1:
            self.meters.sample(t1, self._va, self._pw, self._v_ln, self._energized,
                               self._energy_j, self._t_state)
        if t1 >= self._next_resync_s:
            self._resync()
            self._next_resync_s = t1 + self.options.resync_period_s
        self.t_s = t1

    def run_until(self, t_end_s: float, dt_s: float = 0.1) -> None:
        """Step by ``dt_s`` until ``t_s`` reaches ``t_end_s``."""
        while self.t_s < t_end_s - 1e-9:
            self.step(min(dt_s, t_end_s - self.t_s))

    def finish(self) -> None:
        """Close the violations still open at the present time (call once, at the end)."""
        t = self.t_s
        for (node, kind), op in list(self._ramp_open.items()):
            self._close_ramp(node, kind, op, t)
        self._ramp_open.clear()
        for z, op in list(self._inlet_open.items()):
            self._close_inlet(z, op, t)
        self._inlet_open.clear()
        for node, ov in list(self._overloads.items()):
            if ov.violated or t - ov.start_s > ov.deadline_s:
                self._record_overload(node, ov, t)
        self._overloads.clear()

    # ===================================================================== public: readouts
    @property
    def n_nodes(self) -> int:
        return self.topo.n_nodes

    def node_current_a(self) -> F64:
        """Per-node per-phase current (n, 3) A."""
        return np.maximum(self._va, 0.0) / self._v_ln[:, None]

    def node_apparent_power_va(self) -> F64:
        """Per-node per-phase apparent power (n, 3) VA (V_LN × I)."""
        return np.maximum(self._va, 0.0)

    def node_power_w(self) -> F64:
        """Per-node per-phase real power (n, 3) W."""
        return np.maximum(self._pw, 0.0)

    def node_voltage_v(self) -> F64:
        """Per-node per-phase line-to-neutral voltage (n, 3) V: nominal where energized and the
        pole exists, 0 elsewhere (no voltage drop is modelled)."""
        return (self._v_ln * self._energized)[:, None] * (self._rating > 0)

    def node_energy_wh(self) -> F64:
        """Per-node energy since the start (n,) Wh."""
        e = self._energy_j + row_sum(self._pw) * (self._now - self._t_state)
        return e / 3600.0

    def node_utilization(self) -> F64:
        """Per-node load / continuous limit, worst pole (n,) (1.0 = at the limit)."""
        cur = self.node_current_a()
        with np.errstate(divide="ignore", invalid="ignore"):
            u = np.where(self._limit > 0, cur / np.where(self._limit > 0, self._limit, 1.0), 0.0)
        return row_max(u)

    def node_theta(self) -> F64:
        """Breaker heating state θ (n, 3) (×rating)², advanced to the present time."""
        dt = self._now - self._t_state
        x = self.node_current_a() / np.where(self._rating > 0, self._rating, 1.0)
        x2 = x * x
        decay = np.exp(-dt / self._tau)[:, None]
        return np.where(self._rating > 0, x2 + (self._theta - x2) * decay, 0.0)

    @property
    def breaker_nodes(self) -> I32:
        """Indices of the nodes that have a breaker."""
        return np.flatnonzero(self._has_breaker).astype(np.int32)

    def breaker_closed(self) -> npt.NDArray[np.bool_]:
        """Per node: False where the node's breaker has tripped (True for nodes without one)."""
        return ~self._tripped

    def energized(self) -> npt.NDArray[np.bool_]:
        """Per node: carries voltage."""
        return self._energized.copy()

    def outlet_on(self) -> npt.NDArray[np.bool_]:
        """Per node: the outlet's switch state (True for nodes that are not outlets)."""
        return self._outlet_on.copy()

    def outlets_reachable(self, outlets: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
        """Per outlet given: its PDU's Modbus device answers (modbus-unreachable faults)."""
        mb = self.meters
        out = np.ones(len(outlets), dtype=np.bool_)
        if not mb.device_unreachable.any():
            return out
        for j, o in enumerate(np.asarray(outlets).tolist()):
            pdu = int(self._pdu_of[o]) if 0 <= o < self.topo.n_nodes else -1
            dev = mb.pdu_device.get(pdu)
            if dev is not None and mb.device_unreachable[mb.device_index[dev]]:
                out[j] = False
        return out

    @property
    def switchable_outlets(self) -> I32:
        """Indices of the outlets that can be switched (those of switched rack PDUs)."""
        return np.flatnonzero(self._switchable).astype(np.int32)

    def server_power_w(self) -> F64:
        """Per-server input power (S,) W."""
        return np.where(self._alive_count > 0, self._p_w, 0.0)

    def server_gpu_power_w(self) -> F64:
        """Per-server power per GPU (S,) W."""
        return np.where(self._alive_count > 0, self._gpu_w, 0.0)

    def server_gpu_temp_c(self) -> F64:
        """Per-server GPU temperature (S,) °C."""
        return self._gpu_temp.copy()

    def server_psus_powered(self) -> I32:
        """Per-server count of powered PSUs (S,)."""
        return self._alive_count.copy()

    def psu_powered(self) -> npt.NDArray[np.bool_]:
        """Per PSU: its outlet carries voltage (K,)."""
        return self._alive.copy()

    def server_slowed(self) -> npt.NDArray[np.bool_]:
        return self._slowed.copy()

    def server_braked(self) -> npt.NDArray[np.bool_]:
        return self._braked.copy()

    def energized_servers(self) -> int:
        """Servers with at least one powered PSU."""
        return int(np.count_nonzero(self._alive_count > 0))

    def working_servers(self) -> int:
        return int(np.count_nonzero(self.server_state == kp.SERVER_LOADED))

    def starting_servers(self) -> int:
        """Servers still starting (BMC, POST, boot)."""
        st = self.server_state
        return int(np.count_nonzero((st == kp.SERVER_BMC) | (st == kp.SERVER_POST)
                                    | (st == kp.SERVER_BOOT)))

    def servers_at_cap(self, planned_cap_w: F64) -> int:
        """Servers working at the given per-GPU cap (clamped to their range), neither slowed
        nor braked."""
        planned = np.clip(planned_cap_w, self._s_gpu_min, self._s_gpu_max)
        cap = np.clip(self.server_cap_w, self._s_gpu_min, self._s_gpu_max)
        ok = ((self.server_state == kp.SERVER_LOADED) & ~self._slowed & ~self._braked
              & np.isclose(cap, planned, rtol=0, atol=1e-6))
        return int(np.count_nonzero(ok))

    def zone_inlet_c(self) -> F64:
        return self.zone_t_air_c.copy()

    def zone_capacity_available_w(self) -> F64:
        return self._z_cap.copy()

    def peak_utilization(self) -> F64:
        """Per-node largest utilization seen so far (load / continuous limit)."""
        return self._peak_util.copy()

    def utilization_by_kind(self) -> F64:
        """Present largest utilization of each node kind (len(KIND_NAMES),)."""
        out = np.empty(len(KIND_NAMES))
        kp._utilization_by_kind(self._va, self._v_ln, self._limit, self._kind, out)
        return out

    def source_power_w(self, nodes: npt.NDArray[Any]) -> F64:
        """Total real power (W) of the given nodes, (len(nodes),)."""
        return row_sum(self._pw[nodes])

    # ===================================================================== public: endpoint ops
    def switch_outlet(self, outlet: int | str, on: bool) -> ActionResult:
        return self.apply_now(SwitchOutlets(np.array([self._node(outlet)]), bool(on)))

    def set_gpu_cap(self, server: int | str, cap_w: float) -> ActionResult:
        return self.apply_now(SetGpuCaps(np.array([self._server(server)]), np.array([cap_w])))

    def reset_breaker(self, node: int | str) -> ActionResult:
        return self.apply_now(ResetBreakers(np.array([self._node(node)])))

    def _node(self, ref: int | str) -> int:
        if isinstance(ref, str):
            if ref not in self.topo.node_index:
                raise KeyError(f"no node {ref!r}")
            return self.topo.node_index[ref]
        return int(ref)

    def _server(self, ref: int | str) -> int:
        if isinstance(ref, str):
            try:
                return self.topo.server_id.index(ref)
            except ValueError:
                raise KeyError(f"no server {ref!r}") from None
        return int(ref)

    # ===================================================================== observation
    def observe(self) -> Observation:
        """A snapshot of what meters, read-backs, agents and zone sensors report now."""
        mb = self.meters
        q = mb.quality()
        bad = q != QUALITY_OK
        i_a = mb.i_a.copy()
        v_v = mb.v_v.copy()
        p_w = mb.p_w.copy()
        e_wh = mb.e_wh.copy()
        for arr in (i_a, v_v, p_w):
            arr[bad] = np.nan
        e_wh[bad] = np.nan
        outlets = self.switchable_outlets
        reach = self.outlets_reachable(outlets)
        up = (self.server_state == kp.SERVER_IDLE) | (self.server_state == kp.SERVER_LOADED) \
            | (self.server_state == kp.SERVER_HALTED)
        nan = np.full(self.topo.n_servers, np.nan)
        breakers = self.breaker_nodes
        return Observation(
            t_s=self._now,
            meter_node=mb.node.copy(),
            meter_i_a=i_a, meter_v_v=v_v, meter_p_w=p_w, meter_e_wh=e_wh,
            meter_t_sample_s=mb.t_sample_s.copy(), meter_quality=q,
            meter_device=mb.device.copy(), device_names=tuple(mb.device_names),
            outlet_node=outlets, outlet_on=self._outlet_on[outlets].copy(),
            outlet_reachable=reach,
            breaker_node=breakers, breaker_closed=~self._tripped[breakers],
            server_agent_up=up,
            server_p_w=np.where(up, self._p_w, nan),
            server_gpu_w=np.where(up, self._gpu_w, nan),
            server_gpu_temp_c=np.where(up, self._gpu_temp, nan),
            server_cap_w=np.where(up, self.server_cap_w, nan),
            zone_inlet_c=self.zone_t_air_c.copy(),
        )

    # ===================================================================== internals: events
    def _dispatch(self, what: str, payload: Any, t: float) -> None:
        if what == "action":
            self.action_results.append(self._execute(payload, t))
        elif what == "fault-on":
            self._fault(payload[0], payload[1], t, on=True)
        elif what == "fault-off":
            self._fault(payload[0], payload[1], t, on=False)
        elif what == "storm-release":
            fid = payload[0]
            servers = self._fault_state.get(fid, {}).get("servers")
            if servers is not None:
                self._set_work(servers, True)
                self.events.append(PlantEvent(t, "fault-cleared",
                                              f"workload storm: {servers.size} servers step to "
                                              "their cap at once"))

    def _execute(self, action: Action, t: float) -> ActionResult:
        if isinstance(action, SwitchOutlets):
            idx = action.outlets
            bad = (idx < 0) | (idx >= self.topo.n_nodes)
            ok_idx = idx[~bad]
            not_sw = ok_idx[~self._switchable[ok_idx]]
            ok_idx = ok_idx[self._switchable[ok_idx]]
            refused = tuple(int(i) for i in np.concatenate([idx[bad], not_sw]))
            change = ok_idx[self._outlet_on[ok_idx] != action.on]
            if change.size:
                self._outlet_on[change] = action.on
                self._closed[change] = self._outlet_on[change] & ~self._tripped[change] \
                    & self._source_up[change]
                self._power_flow(t, change)
            return ActionResult(action, t, not refused,
                                "" if not refused else "not a switchable outlet", refused)
        if isinstance(action, SetGpuCaps):
            idx = action.servers
            bad = (idx < 0) | (idx >= self.topo.n_servers)
            good = idx[~bad]
            cap = np.clip(action.cap_w[~bad], self._s_gpu_min[good], self._s_gpu_max[good])
            self.server_cap_w[good] = cap
            self._dirty[good[self.server_state[good] == kp.SERVER_LOADED]] = True
            clamped = int(np.count_nonzero(cap != action.cap_w[~bad]))
            return ActionResult(action, t, not bad.any(),
                                f"{clamped} caps clamped to the model's range" if clamped else "",
                                tuple(int(i) for i in idx[bad]))
        if isinstance(action, SetWork):
            idx = action.servers
            bad = (idx < 0) | (idx >= self.topo.n_servers)
            self._set_work(idx[~bad], action.on)
            return ActionResult(action, t, not bad.any(), "", tuple(int(i) for i in idx[bad]))
        if isinstance(action, ResetBreakers):
            idx = action.nodes
            bad = (idx < 0) | (idx >= self.topo.n_nodes)
            nodes = idx[~bad]
            nodes = nodes[self._tripped[nodes]]
            if nodes.size:
                self._advance_nodes(nodes, t)
                self._tripped[nodes] = False
                self._live[nodes] = self._has_breaker[nodes]
                self._closed[nodes] = self._outlet_on[nodes] & self._source_up[nodes]
                self._refresh(t, nodes.astype(np.int32))
                for i in nodes:
                    self.events.append(PlantEvent(t, "breaker-reset", self.topo.node_id[i]))
                self._power_flow(t, None)
            return ActionResult(action, t, not bad.any(), "", tuple(int(i) for i in idx[bad]))
        raise TypeError(f"not an action: {action!r}")

    def _set_work(self, servers: npt.NDArray[Any], on: bool) -> None:
        self._work[servers] = on
        st = self.server_state[servers]
        if on:
            go = servers[st == kp.SERVER_IDLE]
            self.server_state[go] = kp.SERVER_LOADED
        else:
            go = servers[st == kp.SERVER_LOADED]
            self.server_state[go] = kp.SERVER_IDLE
        self._dirty[go] = True

    # ===================================================================== internals: faults
    def _fault(self, fid: int, fault: Fault, t: float, *, on: bool) -> None:
        topo = self.topo
        verb = "fault" if on else "fault-cleared"
        if isinstance(fault, FeedLoss):
            feed = 0 if fault.feed == "A" else 1
            src = np.flatnonzero((self._kind == KIND_CODE["source"])
                                 & (topo.node_feed == feed))
            self._source_up[src] = not on
            self._closed[src] = self._outlet_on[src] & ~self._tripped[src] & (not on)
            before = self.energized_servers()
            self._power_flow(t, None)
            after = self.energized_servers()
            self.events.append(PlantEvent(t, verb, f"feed {fault.feed} "
                                          + ("lost" if on else "restored")
                                          + f": {before} → {after} servers with power"))
            # The load that moves between feeds in this instant is a transfer, not a ramp or a
            # step that anyone scheduled: the ramp/step windows restart from the new loads.
            self._ramp_rebase = True
        elif isinstance(fault, BreakerTolerance):
            bnodes = np.asarray([i for i in topo.match_nodes(fault.nodes)
                                if self._has_breaker[i]], dtype=np.int32)
            if bnodes.size:
                self._advance_nodes(bnodes, t)
                trips = topo.trip_guard if on else topo.trip
                self._k[bnodes] = trips.thermal_k[bnodes]
                self._tau[bnodes] = trips.thermal_tau_s[bnodes]
                self._mag[bnodes] = trips.magnetic_x[bnodes]
                self._pick[bnodes] = trips.short_pickup_x[bnodes]
                self._delay[bnodes] = trips.short_delay_s[bnodes]
                self._refresh(t, bnodes)
            self.events.append(PlantEvent(t, verb, f"{bnodes.size} breakers "
                                          + ("at the fast end of their tolerance" if on
                                             else "back to their nominal curve")))
        elif isinstance(fault, CoolingUnitFailure):
            if fault.zones is None:
                zones = [0] if topo.zone_id else []
            else:
                zones = _glob_indices(fault.zones, topo.zone_id)
            for z in zones:
                units = int(topo.zone_units[z])
                n_fail = units if fault.units == "all" else min(int(fault.units), units)
                if on:
                    self._fault_state.setdefault(fid, {})[f"zone{z}"] = n_fail
                    self._z_failed[z] = min(units, self._z_failed[z] + n_fail)
                else:
                    n_fail = self._fault_state.get(fid, {}).get(f"zone{z}", 0)
                    self._z_failed[z] = max(0, self._z_failed[z] - n_fail)
                self._z_cap[z] = (units - self._z_failed[z]) * self._z_unit_w[z]
                self.events.append(PlantEvent(t, verb, f"zone {topo.zone_id[z]}: {n_fail} of "
                                              f"{units} cooling units "
                                              + ("failed" if on else "repaired")))
        elif isinstance(fault, MeterStale | MeterStuck | MeterLying | MeterDead
                        | ModbusUnreachable):
            meters = self._meters_for(fault.nodes)
            mb = self.meters
            if isinstance(fault, MeterStale):
                mb.stale[meters] = on
            elif isinstance(fault, MeterStuck):
                mb.stuck[meters] = on
            elif isinstance(fault, MeterLying):
                mb.lie_x[meters] = fault.factor if on else 1.0
            elif isinstance(fault, MeterDead):
                mb.dead[meters] = on
            else:
                devices = set(mb.device[meters].tolist())
                for i in self._fault_nodes(fault.nodes):
                    dev = mb.pdu_device.get(int(self._pdu_of[i])) if self._pdu_of[i] >= 0 \
                        else None
                    if dev is not None:
                        devices.add(mb.device_index[dev])
                for d in devices:
                    mb.device_unreachable[d] = on
            self.events.append(PlantEvent(t, verb, f"{fault.kind}: {meters.size} meter(s)"))
        elif isinstance(fault, AgentIgnoresCaps | BootOverdraw):
            if on:
                servers = self._pick_servers(fault.servers, fault.fraction)
                self._fault_state.setdefault(fid, {})["servers"] = servers
            else:
                servers = self._fault_state.get(fid, {}).get("servers", np.zeros(0, np.int64))
            if isinstance(fault, AgentIgnoresCaps):
                self._ignore_caps[servers] = on
            else:
                self._overdraw[servers] = fault.factor if on else 1.0
            self._dirty[servers] = True
            self.events.append(PlantEvent(t, verb, f"{fault.kind}: {servers.size} servers"))
        elif isinstance(fault, WorkloadStorm):
            servers = np.asarray(self.topo.match_servers(fault.servers), dtype=np.int64)
            self._fault_state.setdefault(fid, {})["servers"] = servers
            self._set_work(servers, False)
            self.events.append(PlantEvent(t, verb, f"workload storm: {servers.size} servers "
                                          f"idle for {fault.idle_s:g} s"))

    def _fault_nodes(self, pattern: str | None) -> list[int]:
        if pattern is None:
            return [int(self.meters.node[0])] if self.meters.count else []
        return self.topo.match_nodes(pattern)

    def _meters_for(self, pattern: str | None) -> npt.NDArray[np.int64]:
        if pattern is None:
            return np.arange(min(1, self.meters.count))
        return self.meters.meters_of(self.topo.match_nodes(pattern))

    def _pick_servers(self, pattern: str, fraction: float) -> npt.NDArray[np.int64]:
        servers = np.asarray(self.topo.match_servers(pattern), dtype=np.int64)
        if fraction >= 1.0 or servers.size == 0:
            return servers
        count = max(1, math.ceil(fraction * servers.size))
        return np.sort(self._rng_faults.choice(servers, size=count, replace=False))

    # ===================================================================== internals: power
    def _power_flow(self, t: float, outlets: npt.NDArray[Any] | None) -> None:
        """Recompute which nodes are energized (all, or only the given outlets) and account for
        the PSUs whose power flipped: server states, then inrush of those switched on."""
        if outlets is None:
            kp._energize(self._parent, self._closed, self._energized)
            new = self._energized[self._psu_node]
            flipped = np.flatnonzero(new != self._alive).astype(np.int32)
        else:
            self._energized[outlets] = self._closed[outlets] & self._energized[
                self._parent[outlets]]
            psus = self._outlet_psu[outlets]
            psus = psus[psus >= 0]
            new = self._energized[self._psu_node[psus]]
            flipped = psus[new != self._alive[psus]].astype(np.int32)
        if flipped.size == 0:
            return
        self._alive[flipped] = ~self._alive[flipped]
        kp._alive_changed(t, flipped, self._alive, self._psu_server, self._s_boot_n,
                          self._s_bmc_s, self.server_post_s, self._alive_count,
                          self.server_state, self._next_s, self._dirty, self._server_next_min)
        on = flipped[self._alive[flipped]].astype(np.int64)
        if on.size:
            self._inrush(t, on)

    def _inrush(self, t: float, on: npt.NDArray[np.int64]) -> None:
        """Magnetic check of the PSUs switched on at ``t`` together with those whose inrush is
        still flowing (started less than their inrush duration ago)."""
        self._recent_inrush = [(t0, p) for t0, p in self._recent_inrush
                               if t - t0 < float(self._psu_inrush_s[p].max())]
        parts = [p[(t - t0 < self._psu_inrush_s[p]) & self._alive[p]]
                 for t0, p in self._recent_inrush]
        # one record per instant: an endpoint switching outlets one call at a time within a
        # step must not make this list (and each call's walk over it) grow with every call
        # (3,000 single switches in one step of the 32k hall froze the simulator for 64 s)
        if self._recent_inrush and self._recent_inrush[-1][0] == t:
            self._recent_inrush[-1] = (t, np.concatenate([self._recent_inrush[-1][1], on]))
        else:
            self._recent_inrush.append((t, on))
        psus = np.concatenate([on, *parts]).astype(np.int32) if parts else on.astype(np.int32)
        kp._inrush_x(psus, self._psu_inrush_a, self._psu_node, self._psu_phase, self._parent,
                     self._v_ln, self._va, self._rating, self._scratch_va, self._mark,
                     self._inrush_nodes, self._inrush_xs, self._inrush_n)
        m = int(self._inrush_n[0])
        nodes = self._inrush_nodes[:m]
        xs = self._inrush_xs[:m]
        trip = (xs >= self._mag[nodes]) & self._live[nodes]
        if not trip.any():
            return
        below_count = self._count_below(psus)
        for i, x in zip(nodes[trip].tolist(), xs[trip].tolist(), strict=True):
            below = int(below_count[i])
            rating = float(self._rating[i].max())
            self._open(i, t, "inrush", x * rating, float(self._mag[i]) * rating,
                       f"inrush of {below} PSU(s) switched on together: peak {x * rating:.0f} A "
                       f"(I_peak/√2 plus steady load) against the magnetic trip at "
                       f"{self._mag[i] * rating:.0f} A ({self._mag[i]:g}×{rating:g} A)",
                       flow=False)
        self._power_flow(t, None)

    def _count_below(self, psus: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
        """Per node, how many of ``psus`` hang below it (one walk up the tree for all)."""
        count = np.zeros(self.topo.n_nodes, dtype=np.int64)
        cur = self._psu_node[psus].astype(np.int64)
        while cur.size:
            np.add.at(count, cur, 1)
            cur = self._parent[cur].astype(np.int64)
            cur = cur[cur >= 0]
        return count

    def _open(self, node: int, t: float, cause: str, current_a: float, threshold_a: float,
              detail: str, *, flow: bool = True) -> None:
        """A breaker opens: record the trip, de-energize everything below."""
        self._advance_nodes(np.array([node], dtype=np.int32), t)
        self._tripped[node] = True
        self._live[node] = False
        self._closed[node] = False
        self._refresh(t, np.array([node], dtype=np.int32))
        self.trips.append(Trip(self.topo.node_id[node], KIND_NAMES[self._kind[node]], t, cause,
                               current_a, threshold_a, detail))
        log.debug("trip %s at %.3f s (%s)", self.topo.node_id[node], t, cause)
        if flow:
            self._power_flow(t, None)

    def _trip_due(self, t: float) -> None:
        node = int(self._trip_min[1])
        self._advance_nodes(np.array([node], dtype=np.int32), t)
        cur = np.maximum(self._va[node], 0.0) / self._v_ln[node]
        rating = self._rating[node]
        present = rating > 0
        x = np.where(present, cur / np.where(present, rating, 1.0), 0.0)
        j = int(np.argmax(x))
        xj = float(x[j])
        ratings = float(rating[j])
        if xj >= self._mag[node]:
            cause, thr = "magnetic", self._mag[node]
        elif xj >= self._pick[node] and (self._timer[node] >= self._delay[node] - 1e-9).any():
            cause, thr = "short-time", self._pick[node]
        else:
            cause, thr = "thermal", self._k[node]
        detail = (f"{cause} element: {xj * ratings:.1f} A on pole L{j + 1} = "
                  f"{xj:.2f}×{ratings:g} A (threshold {thr:g}×)")
        self._open(node, t, cause, xj * ratings, float(thr) * ratings, detail)

    def _settle(self, t: float) -> None:
        """Commit the servers marked dirty at ``t``: new powers, tree loads, breaker predictions;
        then open every breaker whose trip is due now."""
        while True:
            dirty = np.flatnonzero(self._dirty).astype(np.int32)
            if dirty.size:
                self.server_changes += 1
                self._dirty[dirty] = False
                kp._server_power(dirty, self.server_state, self._alive_count, self.server_cap_w,
                                 self._ignore_caps, self._slowed, self._overdraw,
                                 self.topo.server_standby_w, self.topo.server_post_w,
                                 self.topo.server_boot_w, self.topo.server_idle_w, self._s_gpus,
                                 self.topo.server_gpu_idle_w, self._s_gpu_min, self._s_gpu_max,
                                 self.topo.server_other_max_w, self._s_carry_n,
                                 self._s_psu_rating_w, self.options.gpu_slowdown_power_x,
                                 self._p_w, self._gpu_w, self._braked)
                self._n_touched[0] = 0
                kp._commit_loads(t, dirty, self._p_w, self._s_pf, self._s_zone, self._psu_start,
                                 self._psu_order, self._alive, self._psu_node, self._psu_phase,
                                 self._parent, self._v_ln, self._rating, self._tau, self._pick,
                                 self._p_applied, self._alive_applied, self._va, self._pw,
                                 self._theta, self._timer, self._t_state, self._energy_j,
                                 self.zone_p_it_w, self._mark, self._touched, self._n_touched)
                m = int(self._n_touched[0])
                if m:
                    self._last_load_change_s = t
                    self._refresh(t, self._touched[:m])
            if self._trip_min[0] <= t:
                self._trip_due(t)
                continue
            if not self._dirty.any():
                return

    def _refresh(self, t: float, nodes: I32) -> None:
        self._n_ev[0] = 0
        kp._refresh_nodes(t, np.ascontiguousarray(nodes, dtype=np.int32), self._va, self._v_ln,
                          self._rating, self._limit, self._k, self._tau, self._mag, self._pick,
                          self._delay, self._theta, self._timer, self._live, self._t_trip,
                          self._peak_util, self._over_since, self._over_peak_x, self._mark,
                          self._ev_node, self._ev_kind, self._ev_start, self._ev_peak,
                          self._n_ev, self._trip_min)
        n_ev = int(self._n_ev[0])
        for j in range(n_ev):
            node = int(self._ev_node[j])
            if self._ev_kind[j] == kp.EVENT_OVERLOAD_START:
                peak = float(self._ev_peak[j])
                self._overloads[node] = _Overload(t, peak, self._deadline(node, peak))
            else:
                ov = self._overloads.pop(node, None)
                if ov is not None:
                    ov.peak_x = max(ov.peak_x, float(self._ev_peak[j]))
                    if t - ov.start_s > ov.deadline_s:
                        self._record_overload(node, ov, t)

    def _advance_nodes(self, nodes: I32, t: float) -> None:
        """Bring the breaker state and energy of ``nodes`` to ``t`` at their present currents."""
        dt = t - self._t_state[nodes]
        if not (dt > 0).any():
            return
        rating = self._rating[nodes]
        present = rating > 0
        x = np.where(present, np.maximum(self._va[nodes], 0.0) / self._v_ln[nodes, None]
                     / np.where(present, rating, 1.0), 0.0)
        x2 = x * x
        decay = np.exp(-dt / self._tau[nodes])[:, None]
        self._theta[nodes] = np.where(present, x2 + (self._theta[nodes] - x2) * decay, 0.0)
        hot = present & (x >= self._pick[nodes, None])
        self._timer[nodes] = np.where(hot, self._timer[nodes] + dt[:, None], 0.0)
        self._energy_j[nodes] += row_sum(self._pw[nodes]) * dt
        self._t_state[nodes] = t

    # ===================================================================== internals: checks
    def _deadline(self, node: int, peak_x: float) -> float:
        """Shed deadline of an overload peaking at ``peak_x`` ×rating: the time the guard trip
        curve (earliest tolerance, lowest magnetic) leaves from steady state at the continuous
        limit; capped at ``max_shed_deadline_s``."""
        cap = self.options.max_shed_deadline_s
        if not self._has_breaker[node]:
            return min(self.options.unprotected_shed_deadline_s, cap)
        g = self.topo.trip_guard
        rating = self._rating[node:node + 1]
        present = rating > 0
        frac = np.where(present, self._limit[node:node + 1] / np.where(present, rating, 1.0), 0.0)
        theta0 = frac * frac
        t = kernels.time_to_trip_s(
            np.where(present, peak_x * rating, 0.0), rating,
            g.thermal_k[node:node + 1], g.thermal_tau_s[node:node + 1],
            g.magnetic_x[node:node + 1], g.short_pickup_x[node:node + 1],
            g.short_delay_s[node:node + 1], theta0, np.zeros((1, 3)))
        return float(min(t[0], cap))

    def _check_overloads(self, t: float) -> None:
        for node, ov in self._overloads.items():
            peak = float(self._over_peak_x[node])
            if peak > ov.peak_x:
                ov.peak_x = peak
                ov.deadline_s = self._deadline(node, peak)
            if not ov.violated and t - ov.start_s > ov.deadline_s:
                ov.violated = True

    def _record_overload(self, node: int, ov: _Overload, t_end: float) -> None:
        rating = float(self._rating[node].max())
        limit = float(self._limit[node].max())
        util = ov.peak_x * rating / limit if limit > 0 else _INF
        self.violations.append(Violation(
            self.topo.node_id[node], KIND_NAMES[self._kind[node]], "overload", ov.start_s,
            t_end - ov.start_s, util, 1.0, "×limit",
            f"above the continuous limit ({limit:.1f} A) for {t_end - ov.start_s:.1f} s, longer "
            f"than the shed deadline of {ov.deadline_s:.1f} s at {ov.peak_x * rating:.1f} A"))

    def _check_ramps(self, dt: float, t: float) -> None:
        r = self._ramp_nodes
        if r.size == 0:
            return
        window = self.options.ramp_window_s
        if self._ramp_buf is None or abs(self._ramp_dt - dt) > 1e-12:
            rows = max(1, round(window / dt))
            p0 = row_sum(self._pw[r])
            self._ramp_buf = np.tile(p0, (rows + 1, 1))
            self._ramp_pos = 0
            self._ramp_dt = dt
        buf = self._ramp_buf
        rows = buf.shape[0]
        if self._ramp_rebase:
            self._ramp_rebase = False
            buf[:] = row_sum(self._pw[r])
        quiet = t - self._last_load_change_s > window + 2 * dt
        if quiet and not self._ramp_open:
            return
        p_now = row_sum(self._pw[r])
        prev = buf[self._ramp_pos]
        oldest = buf[(self._ramp_pos + 1) % rows]
        span = (rows - 1) * dt
        rise_w_per_s = (p_now - oldest) / span
        step_w = np.abs(p_now - prev)
        self._ramp_pos = (self._ramp_pos + 1) % rows
        buf[self._ramp_pos] = p_now
        ramp_bad = rise_w_per_s > self._ramp_limit * (1 + 1e-9)
        step_bad = step_w > self._step_limit * (1 + 1e-9)
        for kind, bad, value in (("ramp", ramp_bad, rise_w_per_s), ("step", step_bad, step_w)):
            for j in np.flatnonzero(bad):
                key = (int(r[j]), kind)
                op = self._ramp_open.get(key)
                if op is None:
                    self._ramp_open[key] = _Open(t, float(value[j]), t)
                else:
                    op.peak = max(op.peak, float(value[j]))
                    op.last_s = t
        for key in list(self._ramp_open):
            node, kind = key
            jj = int(np.searchsorted(r, node))
            still = ramp_bad[jj] if kind == "ramp" else step_bad[jj]
            if not still:
                self._close_ramp(node, kind, self._ramp_open.pop(key), t)

    def _close_ramp(self, node: int, kind: str, op: _Open, t: float) -> None:
        j = int(np.searchsorted(self._ramp_nodes, node))
        limit = float(self._ramp_limit[j] if kind == "ramp" else self._step_limit[j])
        unit = "W/s" if kind == "ramp" else "W"
        what = (f"load rose {op.peak / 1e3:.0f} kW/s over {self.options.ramp_window_s:g} s "
                f"against a ramp limit of {limit / 1e3:.0f} kW/s" if kind == "ramp" else
                f"load stepped by {op.peak / 1e3:.0f} kW within one step against a largest "
                f"load step of {limit / 1e3:.0f} kW")
        self.violations.append(Violation(self.topo.node_id[node], KIND_NAMES[self._kind[node]],
                                         kind, op.start_s, max(t - op.start_s, self._ramp_dt),
                                         op.peak, limit, unit, what))

    def _check_inlets(self, t: float) -> None:
        ta = self.zone_t_air_c
        hi = float(ta.max()) if ta.size else 0.0
        if hi > self.peak_inlet_c:
            self.peak_inlet_c = hi
        if hi <= self._z_allow_min and not self._inlet_open:
            return
        bad = ta > self._z_allow
        for zi in np.flatnonzero(bad).tolist():
            op = self._inlet_open.get(zi)
            if op is None:
                self._inlet_open[zi] = _Open(t, float(ta[zi]), t)
                self.events.append(PlantEvent(t, "inlet-above-allowable",
                                              f"zone {self.topo.zone_id[zi]} inlet "
                                              f"{ta[zi]:.1f} °C > {self._z_allow[zi]:g} °C"))
            else:
                op.peak = max(op.peak, float(ta[zi]))
        for z in [z for z in self._inlet_open if not bad[z]]:
            self._close_inlet(z, self._inlet_open.pop(z), t)

    def _close_inlet(self, z: int, op: _Open, t: float) -> None:
        self.violations.append(Violation(
            self.topo.zone_id[z], "zone", "inlet", op.start_s, t - op.start_s, op.peak,
            float(self._z_allow[z]), "°C",
            f"inlet above the allowable {self._z_allow[z]:g} °C, up to {op.peak:.1f} °C"))

    # ===================================================================== internals: thermal
    def _thermal(self, dt: float, t: float) -> None:
        kt._zone_step(dt, self.options.zone_substep_s, self.zone_p_it_w, self._z_cap,
                      self._z_set, self._z_c_air, self._z_c_mass, self._z_g, self._z_tau,
                      self.zone_t_air_c, self.zone_t_mass_c, self.zone_q_cool_w,
                      self.zone_e_it_j, self.zone_e_cool_j)
        # GPU temperatures move on a time scale of tens of seconds: they are advanced (exactly,
        # for the powers of the moment) once per GPU_PERIOD_S of virtual time, not every step.
        self._gpu_dt += dt
        if self._gpu_dt < GPU_PERIOD_S - 1e-9:
            return
        gdt, self._gpu_dt = self._gpu_dt, 0.0
        o = self.options
        kt._gpu_temperature_step(gdt, self.zone_t_air_c, self._s_zone, self._gpu_w,
                                 self._s_gpu_max, o.gpu_temp_rise_k, o.gpu_thermal_tau_s,
                                 o.gpu_slowdown_c, o.gpu_shutdown_c,
                                 o.gpu_slowdown_hysteresis_k, self.server_state, self._gpu_temp,
                                 self._slowed, self._changed)
        if self._changed.any():
            changed = np.flatnonzero(self._changed)
            self._changed[changed] = False
            self._dirty[changed] = True
            halted = changed[self.server_state[changed] == kp.SERVER_HALTED]
            slowed = changed[self._slowed[changed]]
            self.gpu_shutdowns += int(halted.size)
            self.gpu_slowdowns += int(slowed.size)
            if halted.size:
                if self._first_shutdown_s is None:
                    self._first_shutdown_s = t
                self._gpu_event(t, "gpu-shutdown", halted, o.gpu_shutdown_c)
            if slowed.size:
                if self._first_slowdown_s is None:
                    self._first_slowdown_s = t
                self._gpu_event(t, "gpu-slowdown", slowed, o.gpu_slowdown_c)
            self._settle(t)

    def _gpu_event(self, t: float, kind: str, servers: npt.NDArray[Any], at_c: float) -> None:
        """One event per kind and minute at most: GPU events come in thousands."""
        if t - self._gpu_event_s[kind] < 60.0:
            return
        self._gpu_event_s[kind] = t
        verb = "shut down" if kind == "gpu-shutdown" else "slow down"
        self.events.append(PlantEvent(t, kind, f"GPUs of {servers.size} server(s) {verb} at "
                                      f"{at_c:g} °C, e.g. {self.topo.server_id[int(servers[0])]}"))

    @property
    def first_gpu_slowdown_s(self) -> float | None:
        return self._first_slowdown_s

    @property
    def first_gpu_shutdown_s(self) -> float | None:
        return self._first_shutdown_s

    # ===================================================================== internals: resync
    def _resync(self) -> None:
        """Recompute the tree loads from scratch against rounding drift of the increments."""
        alive = self._alive_applied
        p = self._p_applied
        kernels.psu_load_va_into(p, self._s_pf, self._psu_server, self._psu_node,
                                 self._psu_phase, alive, self._va)
        kernels.aggregate_tree_into(self._parent, self._va)
        kernels.psu_load_va_into(p, np.ones_like(self._s_pf), self._psu_server, self._psu_node,
                                 self._psu_phase, alive, self._pw)
        kernels.aggregate_tree_into(self._parent, self._pw)
        drawn = np.where(self._alive_count > 0, p, 0.0)
        self.zone_p_it_w[:] = np.bincount(self._s_zone, weights=drawn,
                                          minlength=self.zone_p_it_w.shape[0])

    # ===================================================================== conservation
    def conservation_error(self) -> float:
        """Largest |parent − Σ children − own PSU load| over nodes and phases, relative to the
        largest load (VA); 0 for a perfect tree. For tests."""
        own = kernels.psu_load_va(self._p_applied, self._s_pf, self._psu_server, self._psu_node,
                                  self._psu_phase, self._alive_applied, self.topo.n_nodes)
        child_sum = own.copy()
        parent = self._parent
        has_parent = parent >= 0
        np.add.at(child_sum, parent[has_parent], self._va[has_parent])
        scale = max(float(np.abs(self._va).max()), 1.0)
        return float(np.abs(self._va - child_sum).max()) / scale


def _glob_indices(pattern: str, names: tuple[str, ...]) -> list[int]:
    import fnmatch

    return [i for i, name in enumerate(names) if fnmatch.fnmatchcase(name, pattern)]
