"""The decision core: one pure, synchronous function from what is known to what to do.

:func:`decide` takes the hall (:class:`CoreContext`, built once), the telemetry
(:class:`~controller.telemetry.TelemetryStore`, refreshed by the caller, and :class:`Readbacks`:
outlet states, breaker states, zone inlets), the controller's state (:class:`CoreState`) and the
time, and returns the actions to take and the next state. It performs no I/O, reads no clock
and keeps nothing between calls: the dry run (virtual time, the simulated plant), the service
(the wall clock, Modbus and MQTT) and the tests drive this same function (DESIGN.md).

Each call, in this order (docs/controller.md explains every rule):

1. **What is on.** Outlet read-backs say which PSUs are powered; a PSU seen on that the state
   did not know about (a restart, a manual switch) counts as long on; one seen off that was on
   (a trip, an operator) counts as off.
2. **Worst case.** Every energized server counts at the most it can draw now: its POST/boot
   power before the earliest moment it can start work; its full power from then until its GPU
   cap is confirmed by read-back (DESIGN rule 1); its confirmed cap after. Load the meters see
   beyond that model (``background``) is added, up the tree, twice after a feed loss (its feed
   is unknown). Metered nodes without a trusted reading (rule 5) get no new load below them.
3. **Shedding** (rule 6), on measured load (the worst case where the meter is not trusted):
   above ``capping_threshold`` × the continuous limit, caps come down until the load is
   predicted at ``capping_target``, lowest priority first and highest drawing first within a
   priority; below ``uncapping_threshold`` the shed caps are released in steps of
   ``unthrottle_step_fraction`` after random delays within ``unthrottle_delay_s``. When the load
   stays above the continuous limit past half the deadline that the guard trip curve leaves and
   the policy allows it, outlets of the lowest-priority servers below the node are switched off.
4. **Ramp.** PSU switch-ons and cap raises of the plan that are due are admitted when the
   worst case with them stays within ``limit × (1 − admission_margin)`` at every ancestor, pole
   and feed-loss scenario (rule 1), no guarded node below sees two switch-ons closer than its
   inrush guard (rule 2), their zone is neither on hold nor unknown (rule 4) and their
   telemetry is known (rule 5). The plan itself keeps the ramp and step limits (rule 3); when
   the ramp was held, or the meters depart from the model, the plan is recomputed from what is
   true now before the ramp goes on.
5. **Mode**, set in one place (:func:`_mode`): SAFE (sticky until an operator resumes), then
   SHEDDING, IDLE, STEADY, HOLDING, RAMPING.

Operator commands (:func:`start_ramp`, :func:`pause`, :func:`resume`, :func:`abort`,
:func:`enter_safe`) are pure functions of the state as well.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from controller.model import ControllerSettings
from controller.planner import PlannerContext, PlannerSettings, PlanResult, PlanState, plan
from controller.prediction import ancestor_table, magnetic_threshold_a, server_times_s
from controller.schedule import Schedule
from controller.telemetry import Q_GOOD, Quality, TelemetryStore
from controller.topology import Topology
from kernels import feed_loss_current_a, time_to_trip_s
from kernels.aggregate import (
    _measured_load_into,
    _tree_current_into,
    _worst_case_current_into,
    _worst_case_current_update_into,
)
from kernels.rows import row_any, row_max
from kernels.tick import (
    _guard_servers_into,
    _measured_at_into,
    _node_utilization_into,
    _psu_on_into,
    _step_budget_into,
    _unknown_since_into,
    _worst_server_power_into,
)

F64 = npt.NDArray[np.float64]
I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]

#: Relative tolerance of the limit checks (rounding, not margin).
_RTOL = 1e-9
#: Meter accuracy: a reading counts as beyond the model only by more than this fraction of the
#: reading plus this many A (class 1 meters, 3σ of the simulator's default noise, quantization).
METER_TOLERANCE_X = 0.02
METER_TOLERANCE_A = 0.5
#: A meter reading below this fraction of the nominal voltage on every phase: no supply.
DEAD_VOLTAGE_FRACTION = 0.5
#: Shed deadline of an overloaded node without a breaker of its own (UPS, PDU inlet), and the
#: longest deadline (an overload the trip curve would carry for ever); as the simulator's.
UNPROTECTED_DEADLINE_S = 60.0
MAX_DEADLINE_S = 900.0
#: A per-GPU cap read back within this many W of the command counts as confirmed.
CAP_CONFIRM_TOLERANCE_W = 1.0
#: GPUs drawing more than their enforced cap by this fraction plus these W per GPU ignore it.
OVERDRAW_TOLERANCE_X = 0.03
OVERDRAW_TOLERANCE_W = 5.0
#: Thermal shedding: a zone whose inlet is this far from its hold threshold to its allowable
#: temperature has its servers capped to their minimum (no new heat already from the hold).
THERMAL_CAP_FRACTION = 0.5
#: Cap changes of shedding and unthrottling move at most this fraction of the largest load
#: step (and of the ramp limit × one tick, for raises) per tick at every ancestor that has one.
STEP_BUDGET_FRACTION = 0.9
#: the ramp guard's cap grid (W per GPU) and the margin above a whole step before it raises
GUARD_STEP_W = 25.0
GUARD_RAISE_HYSTERESIS_W = 5.0
#: POST power calibration: a server counts as surely in POST from this long after its POST
#: can start until this long before its boot can start (s)
CALIBRATION_GUARD_S = 0.5
#: the least POST current (A, on one phase of one meter) a calibration is judged on, and the
#: factors a meter may show and be believed (outside: a meter that lies, or a model that is
#: wrong beyond what a factor can fix; that meter is not used)
CALIBRATION_MIN_A = 5.0
CALIBRATION_RANGE_X = (0.5, 3.0)
#: a measured POST factor above this raises the ``post-power-above-model`` alarm
POST_ALARM_X = 1.1


class Mode(StrEnum):
    IDLE = "IDLE"
    RAMPING = "RAMPING"
    HOLDING = "HOLDING"
    STEADY = "STEADY"
    SHEDDING = "SHEDDING"
    SAFE = "SAFE"


# ============================================================================== actions
@dataclass(frozen=True, slots=True)
class Reason:
    """Why an action was taken: the rule, the node that decided it, and the values (A or W)."""

    rule: str
    node: str | None = None
    measured: float | None = None
    predicted: float | None = None
    limit: float | None = None
    unit: str = "A"

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True, slots=True)
class Energize:
    """Switch outlets on, each at its time ``at_s`` (>= now, inrush-spaced)."""

    outlets: I32
    at_s: F64
    reason: Reason


@dataclass(frozen=True, slots=True)
class SwitchOff:
    """Switch outlets off now (shedding's last resort, where the policy allows it)."""

    outlets: I32
    reason: Reason


@dataclass(frozen=True, slots=True)
class SetCaps:
    """Command per-GPU power caps (W per GPU) to servers' node agents."""

    servers: I32
    cap_w: F64
    reason: Reason


@dataclass(frozen=True, slots=True)
class Alarm:
    """Something an operator must know: a code, the node (or zone) concerned, a message."""

    code: str
    message: str
    node: str | None = None
    active: bool = True


CoreAction = Energize | SwitchOff | SetCaps | Alarm


# ============================================================================== inputs
@dataclass(frozen=True, slots=True)
class Readbacks:
    """What the controller reads back besides the meters, indexed like :class:`CoreContext`.

    ``outlet_on`` (O,) bool and ``outlet_known`` (O,) bool (False: the PDU did not answer), over
    ``CoreContext.outlet_node``; ``breaker_closed`` (n,) bool (True where unknown or no
    breaker); ``zone_inlet_c`` (Z,) °C (NaN: unknown); ``node_live`` (n,) bool, optional:
    False where a meter reads no voltage (its feed is lost: everything below it is without
    power, and the servers' other PSUs carry all of their load); ``None``: all live.
    """

    outlet_on: B
    outlet_known: B
    breaker_closed: B
    zone_inlet_c: F64
    node_live: B | None = None


@dataclass(frozen=True, slots=True)
class ServerModel:
    """The hall as the core plans it: ``topo`` with the servers' POST power × ``post_x``, its
    planner context, and each server's largest power before it can work (W)."""

    post_x: float
    topo: Topology
    planner: PlannerContext
    floor_w: F64


class CoreContext:
    """What does not change while the controller runs: the hall's arrays and derived tables."""

    def __init__(self, topo: Topology, settings: ControllerSettings,
                 outlet_nodes: Sequence[int] | npt.NDArray[np.integer] | None = None,
                 planner: PlannerContext | None = None) -> None:
        self.topo = topo
        self.settings = settings
        self.shed = settings.shedding
        psu_outlets = np.unique(topo.psu_node)
        self.outlet_node: I32 = np.asarray(
            psu_outlets if outlet_nodes is None else outlet_nodes, dtype=np.int32)
        self.outlet_of_node = np.full(topo.n_nodes, -1, np.int64)
        self.outlet_of_node[self.outlet_node] = np.arange(self.outlet_node.size)
        #: outlet index of every PSU (-1: the outlet is not switchable by the controller)
        self.psu_outlet: I64 = self.outlet_of_node[topo.psu_node]
        self.anc: I64 = ancestor_table(topo)                       # (K, D)
        #: the ancestor table with its -1 padding pointing at an extra index n
        self.anc_pad: I64 = np.where(self.anc >= 0, self.anc, topo.n_nodes)
        self.planner = planner or PlannerContext(
            topo, PlannerSettings.from_controller(settings))
        lim = topo.limit_a * (1.0 - settings.admission_margin)
        admit = np.broadcast_to(lim, (3, topo.n_nodes, 3)).copy()
        admit[:, topo.limit_a <= 0] = np.inf
        admit[1, topo.node_feed == 0] = np.inf  # a node is not judged when its own feed is lost
        admit[2, topo.node_feed == 1] = np.inf
        self.admit_limit_a: F64 = admit
        #: the admission check's bound: the limit with the rounding tolerance of the checks
        self.admit_check_a: F64 = admit * (1 + _RTOL)
        self._scratch = threading.local()
        self.limit_node_a: F64 = np.where(topo.limit_a > 0, topo.limit_a, np.inf)
        self.mag_thr_a: F64 = magnetic_threshold_a(topo, settings.magnetic_margin)
        self.floor_w: F64 = np.maximum.reduce(
            [topo.server_standby_w, topo.server_post_w, topo.server_boot_w])
        self.guarded_nodes: I64 = np.flatnonzero(topo.inrush_guard_s > 0)
        self.server_psus: list[I64] = []
        order = np.argsort(topo.psu_server, kind="stable")
        counts = np.bincount(topo.psu_server, minlength=topo.n_servers)
        start = np.concatenate([[0], np.cumsum(counts)])
        self.server_psu_order: I64 = order.astype(np.int64)
        self.server_psu_start: I64 = start.astype(np.int64)
        # the servers below each node, as (node, server) pairs through the PSUs
        k_idx, d_idx = np.nonzero(self.anc >= 0)
        pair_node = self.anc[k_idx, d_idx]
        pair_server = topo.psu_server[k_idx].astype(np.int64)
        key = np.unique(pair_node * topo.n_servers + pair_server)
        self.below_node: I64 = key // max(topo.n_servers, 1)
        self.below_server: I64 = key % max(topo.n_servers, 1)
        self.below_start: I64 = np.searchsorted(self.below_node, np.arange(topo.n_nodes + 1))
        self.depth_levels: list[I64] = [np.flatnonzero(topo.depth == d)
                                        for d in range(int(topo.depth.max(initial=0)), 0, -1)]
        #: the depth levels concatenated (deepest first) and where each starts, for the kernel
        self.level_order: I64 = np.ascontiguousarray(
            np.concatenate([np.zeros(0, np.int64), *self.depth_levels]), np.int64)
        self.level_start: I64 = np.ascontiguousarray(np.concatenate(
            [[0], np.cumsum([lv.size for lv in self.depth_levels])]), np.int64)
        self.n_outlets = int(self.outlet_node.size)
        # the topology arrays of the worst-case kernels, checked once by the checked wrapper
        feed_loss_current_a(np.zeros(topo.n_servers), topo.server_pf, topo.psu_server,
                            topo.psu_node, topo.psu_phase, topo.psu_feed,
                            np.ones(topo.n_psus, bool), topo.parent_idx, topo.v_ln_v)
        self.kernel_args = (
            np.ascontiguousarray(topo.server_pf, np.float64),
            np.ascontiguousarray(topo.psu_server, np.int32),
            np.ascontiguousarray(topo.psu_node, np.int32),
            np.ascontiguousarray(topo.psu_phase, np.int8),
            np.ascontiguousarray(topo.psu_feed, np.int8),
            np.ascontiguousarray(topo.parent_idx, np.int32),
            np.ascontiguousarray(np.broadcast_to(topo.v_ln_v, (topo.n_nodes,)), np.float64))
        self._models: dict[float, ServerModel] = {
            1.0: ServerModel(1.0, topo, self.planner, self.floor_w)}
        self._times_key: F64 | None = None
        self._times_val: F64 = np.zeros((0, 5))
        #: the last worst case of :func:`decide` and what it came from (None: none yet):
        #: (normal W, contingency W, alive, (3, n, 3) A read-only, (3, n, 3) VA of its nodes)
        self._worst_memo: tuple[F64, F64, B, F64, F64] | None = None
        self._worst_lock = threading.Lock()
        self._worst_arrays = _Recycler((3, topo.n_nodes, 3))
        self._metered_of: tuple[B, I64] | None = None
        self._planned_of: tuple[PlanResult, B] | None = None
        #: per worst case computed (a counter), the nodes it recomputed (None: all)
        self._worst_version = 0
        self._worst_log: dict[int, I64 | None] = {}
        #: the partial recomputation's marks, all False between two of them (under the lock)
        self._worst_marks: B = np.zeros(topo.n_nodes, np.bool_)
        # per node, its PSUs in PSU order and its children from the highest index down (the
        # order in which the worst-case kernel sums them), for the partial recomputation
        psu_by_node = np.argsort(topo.psu_node, kind="stable")
        self.node_psu_order: I64 = np.ascontiguousarray(psu_by_node, np.int64)
        self.node_psu_start: I64 = np.ascontiguousarray(np.searchsorted(
            topo.psu_node[psu_by_node], np.arange(topo.n_nodes + 1)), np.int64)
        kids = np.flatnonzero(topo.parent_idx >= 0)
        kids = kids[np.lexsort((-kids, topo.parent_idx[kids]))]
        self.child_order: I64 = np.ascontiguousarray(kids, np.int64)
        self.child_start: I64 = np.ascontiguousarray(np.searchsorted(
            topo.parent_idx[kids], np.arange(topo.n_nodes + 1)), np.int64)
        #: unexplained load (A) beyond which the plan is recomputed: 2 % of the limit, >= 1 A
        self.departure_a: F64 = np.maximum(0.02 * topo.limit_a, 1.0)
        #: per zone, the inlet (°C) at which its servers are capped to their minimum
        self.thermal_cap_c: F64 = topo.zone_inlet_hold_c + THERMAL_CAP_FRACTION * (
            topo.zone_inlet_allowable_c - topo.zone_inlet_hold_c)
        # nodes with a largest load step or a ramp limit, and their (node, server) pairs
        step = np.asarray(topo.max_step_w, float)
        ramp = np.asarray(topo.ramp_limit_w_per_s, float)
        self.step_nodes: I64 = np.flatnonzero(np.isfinite(step) | np.isfinite(ramp))
        limited = np.zeros(topo.n_nodes, bool)
        limited[self.step_nodes] = True
        self.step_pairs: I64 = np.flatnonzero(limited[self.below_node])
        # the same pairs as (slot in step_nodes, server), and the budgets per slot
        slot_of_node = np.full(topo.n_nodes, -1, np.int64)
        slot_of_node[self.step_nodes] = np.arange(self.step_nodes.size)
        self.step_pair_slot: I64 = slot_of_node[self.below_node[self.step_pairs]]
        self.step_pair_server: I64 = self.below_server[self.step_pairs]
        self.drop_budget_w: F64 = STEP_BUDGET_FRACTION * np.where(np.isfinite(step), step,
                                                                  np.inf)
        self.rise_budget_w: F64 = STEP_BUDGET_FRACTION * np.minimum(
            self.drop_budget_w / STEP_BUDGET_FRACTION, ramp * settings.tick_s)
        #: the server arrays of kernels.tick._step_budget_into
        min_cap, max_w, other, gpus, server_max = (np.ascontiguousarray(x, np.float64) for x in (
            topo.server_gpu_min_cap_w, topo.server_gpu_max_w, topo.server_other_max_w,
            topo.server_gpus, topo.server_max_w))
        self.step_server_args: tuple[F64, F64, F64, F64, F64] = (
            min_cap, max_w, other, gpus, server_max)

    def scratch_worst_a(self) -> F64:
        """A (3, n, 3) buffer of this thread for worst cases that are judged and dropped
        (the admission trials): a fresh array of that size costs more in page faults than the
        kernel that fills it."""
        buf: F64 | None = getattr(self._scratch, "worst_a", None)
        if buf is None:
            buf = self._scratch.worst_a = np.empty((3, self.topo.n_nodes, 3))
        return buf

    def metered_nodes(self, store: TelemetryStore) -> I64:
        """The indices of the store's metered nodes (remembered per store: a store's meters
        are fixed when it is made)."""
        found = self._metered_of
        if found is None or found[0] is not store.metered:
            found = self._metered_of = (store.metered, np.ascontiguousarray(
                np.flatnonzero(store.metered), np.int64))
        return found[1]

    def _worst_rows_since(self, version: int | None) -> I64 | None:
        """The nodes the worst cases after ``version`` recomputed, up to the last one, with
        repeats (None: not known, or all of them)."""
        if version is None or version > self._worst_version:
            return None
        parts = []
        for v in range(version + 1, self._worst_version + 1):
            rows = self._worst_log.get(v)
            if rows is None:
                return None
            parts.append(rows)
        return np.ascontiguousarray(np.concatenate([np.zeros(0, np.int64), *parts]))

    def model(self, post_x: float) -> ServerModel:
        """The hall with its servers' POST power scaled by ``post_x`` (what the planner and the
        worst case use while the POST draw is uncertain, or after it was measured above the
        model); built once per factor (a planner context costs about 0.1 s on a 32k hall)."""
        key = round(float(post_x), 4)
        found = self._models.get(key)
        if found is None:
            topo = dataclasses.replace(self.topo, server_post_w=self.topo.server_post_w * key)
            planner = PlannerContext(topo, self.planner.settings)
            floor = np.maximum.reduce([topo.server_standby_w, topo.server_post_w,
                                       topo.server_boot_w])
            if len(self._models) > 8:   # a factor changes once or twice per ramp
                self._models = {1.0: self._models[1.0]}
            found = self._models[key] = ServerModel(key, topo, planner, floor)
        return found

    def server_times(self, psu_on_s: F64) -> F64:
        """:func:`controller.prediction.server_times_s`, remembered for the last input (the
        switch-on times change only when something is switched)."""
        key = self._times_key
        if key is not None and np.array_equal(key, psu_on_s):
            return self._times_val
        val = server_times_s(self.topo, psu_on_s)
        val.setflags(write=False)
        self._times_key, self._times_val = psu_on_s.copy(), val
        return val

    def under(self, node_mask: B, psus: I64 | None = None) -> B:
        """Per PSU (default: all, else ``psus``), whether any node above it is in
        ``node_mask`` (n,)."""
        padded = np.append(node_mask, False)
        rows = self.anc_pad if psus is None else self.anc_pad[psus]
        return row_any(padded[rows])

    def unplanned_psus(self, result: PlanResult) -> B:
        """Per PSU, whether plan ``result`` leaves it alone (not switched on by the plan, or
        not through an outlet of ours); remembered for the last plan (asked twice a tick)."""
        found = self._planned_of
        if found is None or found[0] is not result:
            sched = result.schedule
            found = self._planned_of = (
                result, ~(np.isfinite(sched.psu_on_s) & (self.psu_outlet >= 0)))
        return found[1]

    def servers_below(self, node: int) -> I64:
        return self.below_server[self.below_start[node]:self.below_start[node + 1]]

    def work_w(self, cap_w: F64, servers: I64 | None = None) -> F64:
        """Power (W) of ``servers`` (default: all) working at per-GPU caps ``cap_w``."""
        t = self.topo
        sel = slice(None) if servers is None else servers
        cap = np.clip(cap_w, t.server_gpu_min_cap_w[sel], t.server_gpu_max_w[sel])
        return np.minimum(t.server_other_max_w[sel] + t.server_gpus[sel] * cap,
                          t.server_max_w[sel])


class _Recycler:
    """Arrays of one shape that are handed out read-only, and whose memory is used again once
    nobody else holds them: writing a fresh 4 MB array costs page faults, and copying all of
    the last one into a free one costs memory bandwidth, both more than the partial worst case
    that fills it; an array used again is tagged with what it holds, so that only what changed
    since then is written.

    An array is taken again only when its reference count says that this list is its only
    holder. Whatever can read an array holds a reference to it (a variable, an attribute, a
    container, a view through its ``base``, a memoryview), so nothing can read the array
    while it is overwritten. Not thread-safe: the caller holds a lock."""

    def __init__(self, shape: tuple[int, ...], keep: int = 4) -> None:
        self.shape, self.keep = shape, keep
        self.arrays: list[F64] = []
        self.tags: list[int | None] = []

    def take(self) -> tuple[F64, int | None]:
        """A writeable array of the shape and the tag it was given (None: a new array)."""
        for i in range(len(self.arrays)):
            if sys.getrefcount(self.arrays[i]) <= _ONLY_LISTED:
                found = self.arrays[i]
                found.setflags(write=True)
                return found, self.tags[i]
        fresh = np.empty(self.shape)
        if len(self.arrays) < self.keep:
            self.arrays.append(fresh)
            self.tags.append(None)
        return fresh, None

    def tag(self, array: F64, tag: int) -> None:
        for i, a in enumerate(self.arrays):
            if a is array:
                self.tags[i] = tag


#: how many worst cases back the nodes they recomputed are remembered
_WORST_LOG_TICKS = 8
#: ``sys.getrefcount`` of an array that only a list holds, taken as :meth:`_Recycler.take`
#: takes it (the list's reference and the call's argument)
_ONLY_LISTED = (lambda held: sys.getrefcount(held[0]))([np.empty(0)])


# ============================================================================== state
@dataclass(frozen=True)
class CoreState:
    """Everything the core remembers between calls. Replaced, never mutated, by :func:`decide`.

    Times are on the caller's monotonic clock (s). ``plan_t0_s``: the clock time of the plan's
    time 0. ``psu_on_s`` (K,): when each PSU was seen or commanded on (-inf: on since before we
    knew; +inf: off). ``psu_commanded`` (K,): an energize command was sent (never twice).
    ``cap_cmd_w`` (S,) W per GPU: the last cap commanded (NaN: none yet); ``cap_plan_w`` the
    plan's cap in force; ``shed_cap_w`` the shedding cap (NaN: none); ``unthrottle_at_s`` when
    the next release step of a shed cap may happen. ``unknown_since_s`` (n,) when each node's
    telemetry became untrusted (+inf: trusted).
    """

    mode: Mode
    mode_reason: str
    ramp_active: bool
    paused: bool
    safe_reason: str
    plan: PlanResult | None
    plan_t0_s: float
    psu_on_s: F64
    psu_commanded: B
    guard_last_s: F64
    cap_cmd_w: F64
    cap_plan_w: F64
    shed_cap_w: F64
    unthrottle_at_s: F64
    over_since_s: F64
    unknown_since_s: F64
    next_cap_event: int
    replan_due: bool
    last_replan_s: float
    rng_seed: int
    ticks: int = 0
    last_tick_s: float = -math.inf
    full_hold: bool = False
    hold_reasons: tuple[str, ...] = ()
    alarms_active: frozenset[str] = frozenset()
    transitions: tuple[tuple[float, str, str, str], ...] = ()
    #: (S,) W per GPU: the ramp guard's cap after the bring-up (NaN or None: none)
    guard_cap_w: F64 | None = None
    #: (S,) W: each server's power as the ramp guard saw it at its last pass (None: no pass)
    guard_seen_w: F64 | None = None
    #: (S,) servers seen drawing above the cap their agent reports (None: none seen yet)
    cap_overdraw: B | None = None
    #: the factor on the servers' POST power the core plans with, and whether the meters
    #: have measured it yet (until then: 1 + ``boot_power_margin``)
    post_x: float = 1.0
    post_measured: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> CoreState:
        """A copy with ``changes``, as :func:`dataclasses.replace` gives it (the class has no
        ``__post_init__`` and no field with ``init=False``), at a tenth of its cost: the core
        replaces its state about ten times a tick, and the generic function builds every one
        of its 32 fields through ``__init__``."""
        unknown = changes.keys() - _STATE_FIELDS
        if unknown:
            raise TypeError(f"CoreState has no field(s) {', '.join(sorted(unknown))}")
        new = object.__new__(CoreState)
        fields = new.__dict__
        fields.update(self.__dict__)
        fields.update(changes)
        return new


#: the names :meth:`CoreState.replace` accepts
_STATE_FIELDS = frozenset(f.name for f in dataclasses.fields(CoreState))


def initial_state(ctx: CoreContext, *, seed: int = 0, now_s: float = 0.0) -> CoreState:
    """A controller that has seen nothing yet: IDLE, no plan, everything off."""
    t = ctx.topo
    return CoreState(
        mode=Mode.IDLE, mode_reason="started", ramp_active=False, paused=False,
        safe_reason="", plan=None, plan_t0_s=now_s,
        psu_on_s=np.full(t.n_psus, np.inf), psu_commanded=np.zeros(t.n_psus, bool),
        guard_last_s=np.full(t.n_nodes, -np.inf),
        cap_cmd_w=np.full(t.n_servers, np.nan), cap_plan_w=t.server_gpu_max_w.astype(float),
        shed_cap_w=np.full(t.n_servers, np.nan), unthrottle_at_s=np.full(t.n_servers, -np.inf),
        over_since_s=np.full(t.n_nodes, np.inf), unknown_since_s=np.full(t.n_nodes, np.inf),
        next_cap_event=0, replan_due=False, last_replan_s=-np.inf, rng_seed=seed,
        post_x=1.0 + float(ctx.settings.boot_power_margin),
    )


# ============================================================================== commands
class CommandRefusedError(Exception):
    """An operator command that cannot be carried out now (the reason is the message)."""


def start_ramp(ctx: CoreContext, state: CoreState, now_s: float) -> CoreState:
    """Start (or restart after an abort) the staged bring-up; the next :func:`decide` plans it
    from what is true then."""
    if state.mode == Mode.SAFE:
        raise CommandRefusedError(f"controller is SAFE ({state.safe_reason}); resume first")
    if state.ramp_active:
        raise CommandRefusedError("a ramp is already active")
    return state.replace(ramp_active=True, paused=False, replan_due=True, last_replan_s=-np.inf)


def pause(state: CoreState) -> CoreState:
    if not state.ramp_active:
        raise CommandRefusedError("no ramp is active")
    return state.replace(paused=True)


def resume(ctx: CoreContext, state: CoreState, store: TelemetryStore | None = None
           ) -> CoreState:
    """Leave a pause, or leave SAFE once its cause is gone (telemetry trusted again)."""
    if state.mode == Mode.SAFE:
        if store is not None:
            unknown = store.unknown_nodes() & ctx_metered(store)
            if unknown.any():
                node = ctx.topo.node_id[int(np.flatnonzero(unknown)[0])]
                raise CommandRefusedError(f"telemetry of {node} is still not trusted")
        return state.replace(mode=Mode.IDLE if not state.ramp_active else Mode.HOLDING,
                             safe_reason="", paused=False, replan_due=state.ramp_active,
                             last_replan_s=-np.inf)
    if not state.paused:
        raise CommandRefusedError("nothing to resume")
    return state.replace(paused=False, replan_due=True, last_replan_s=-np.inf)


def abort(state: CoreState) -> CoreState:
    """Stop the bring-up: nothing more is energized; what is on stays on; shedding goes on."""
    if not state.ramp_active:
        raise CommandRefusedError("no ramp is active")
    return state.replace(ramp_active=False, paused=False)


def enter_safe(state: CoreState, reason: str, now_s: float) -> CoreState:
    """DESIGN rule 9: an unexpected error moves the controller to SAFE."""
    return _set_mode(state, Mode.SAFE, reason, now_s).replace(safe_reason=reason)


def ctx_metered(store: TelemetryStore) -> B:
    return store.metered


# ============================================================================== decide
@dataclass(frozen=True)
class Decision:
    actions: tuple[CoreAction, ...]
    state: CoreState
    #: worst-case load per scenario (3, n, 3) A, for metrics and the status
    worst_a: F64
    #: load taken as measured (n, 3) A: meters where trusted, the worst case at metered nodes
    #: whose reading is not, 0 at unmetered nodes
    measured_a: F64


def decide(ctx: CoreContext, store: TelemetryStore, rb: Readbacks, state: CoreState,
           now_s: float) -> Decision:
    """One control step. ``store`` must have been refreshed at ``now_s``."""
    topo = ctx.topo
    actions: list[CoreAction] = []
    st = state.replace(ticks=state.ticks + 1)

    # -- 1. what is on -------------------------------------------------------------------
    # the read-backs against the switch-on times, in one pass (kernels.tick._psu_on_into):
    # an outlet read on is on; read off, off, unless commanded less than meter_stale_s ago (a
    # read-back older than the command may still show it off: the command is trusted)
    psu_on_s = np.empty(topo.n_psus)
    powered = np.empty(topo.n_psus, np.bool_)
    _psu_on_into(ctx.psu_outlet, np.ascontiguousarray(rb.outlet_known, np.bool_),
                 np.ascontiguousarray(rb.outlet_on, np.bool_),
                 np.ascontiguousarray(st.psu_on_s, np.float64),
                 np.ascontiguousarray(st.psu_commanded, np.bool_), float(now_s),
                 float(ctx.settings.meter_stale_s), psu_on_s, powered)
    open_nodes = ~rb.breaker_closed
    if rb.node_live is not None:
        open_nodes = open_nodes | ~rb.node_live
    if open_nodes.any():
        dead = ctx.under(open_nodes)
        powered &= ~dead
    st = st.replace(psu_on_s=psu_on_s)

    # -- 2. telemetry and the worst case ---------------------------------------------------
    unknown = store.unknown_nodes()
    # since when each node is untrusted, the meters to alarm (a meter that has not answered
    # yet is not alarmed before its first reading is overdue; it holds the ramp all the same)
    # and those lost for long, in one pass (kernels.tick._unknown_since_into)
    n = topo.n_nodes
    unknown_since = np.empty(n)
    metered_unknown, overdue, lost_long = (np.empty(n, np.bool_) for _ in range(3))
    _unknown_since_into(np.ascontiguousarray(unknown, np.bool_),
                        np.ascontiguousarray(store.metered, np.bool_),
                        np.ascontiguousarray(store.node_quality, np.int8),
                        np.ascontiguousarray(st.unknown_since_s, np.float64), float(now_s),
                        float(ctx.settings.meter_stale_s), float(ctx.settings.telemetry_safe_s),
                        unknown_since, metered_unknown, overdue, lost_long)
    st = st.replace(unknown_since_s=unknown_since)
    overdraw = _cap_overdraw(ctx, store)
    st = st.replace(cap_overdraw=overdraw)
    confirmed_cap = _confirmed_caps(store, st, overdraw)
    st, post_actions = _calibrate_post(ctx, st, store, psu_on_s, powered)
    actions.extend(post_actions)
    model = ctx.model(st.post_x)
    server_w, server_wc = _worst_server_w(ctx, psu_on_s, powered, confirmed_cap,
                                          st.cap_cmd_w, now_s, model.floor_w)
    model_a = _worst_currents_a(ctx, server_w, server_wc, powered)
    # the measured load beyond the model (``background``), the worst case with it, and the
    # load shedding judges at the metered nodes: their reading where trusted, else the worst
    # case (rule 5); unmetered nodes are kept inside their limits by admission alone
    up_a, worst_a, measured_a, departed = _measured_load(ctx, store, model_a)

    # telemetry alarms and SAFE after a long loss
    alarms = set(st.alarms_active)
    for k in np.flatnonzero(overdue):
        node = int(k)
        code = f"telemetry:{topo.node_id[node]}"
        if code not in alarms:
            q = Quality(int(store.node_quality[node])).name.lower()
            actions.append(Alarm("telemetry", f"reading of {topo.node_id[node]} is {q}: no new "
                                 "load below it, worst case assumed", topo.node_id[node]))
            alarms.add(code)
    for code in [a for a in alarms if a.startswith("telemetry:")]:
        back = topo.node_index.get(code.split(":", 1)[1])
        if back is not None and not metered_unknown[back]:
            actions.append(Alarm("telemetry", f"reading of {topo.node_id[back]} trusted again",
                                 topo.node_id[back], active=False))
            alarms.discard(code)
    if rb.node_live is not None:
        _latch_alarms(actions, alarms, "supply", ~rb.node_live, topo.node_id,
                      "{} reads no voltage: its feed is lost, the other PSUs carry all",
                      "{} has supply again")
    _latch_alarms(actions, alarms, "cap-ignored", overdraw, topo.server_id,
                  "{} draws more than the GPU cap its agent reports: counted at full power",
                  "{} keeps its GPU cap again")
    if lost_long.any() and st.mode != Mode.SAFE:
        lost_id = topo.node_id[int(np.flatnonzero(lost_long)[0])]
        reason = (f"telemetry of {lost_id} lost for {ctx.settings.telemetry_safe_s:g} s")
        actions.append(Alarm("safe", reason, lost_id))
        st = enter_safe(st, reason, now_s)

    # -- 3. shedding ------------------------------------------------------------------------
    hot_zone, _ = _zone_heat(ctx, rb.zone_inlet_c)
    _latch_alarms(actions, alarms, "thermal", hot_zone, topo.zone_id,
                  "zone {} inlet past its thermal threshold: GPUs capped to their minimum",
                  "zone {} inlet below its thermal threshold")
    st, shed_actions, shedding = _shed(ctx, st, store, measured_a, server_w, psu_on_s, now_s,
                                       rb.zone_inlet_c)
    actions.extend(shed_actions)

    # -- 3b. ramp guard after the bring-up: GPUs far below their caps could all step up at
    # once (a workload starting together); caps follow the load up at the ramp limit
    if not st.ramp_active or ramp_complete(ctx, st, now_s):
        st, guard_actions = _ramp_guard(ctx, st, store, server_w, now_s)
        actions.extend(guard_actions)
    elif st.guard_cap_w is not None and np.isfinite(st.guard_cap_w).any():
        st = st.replace(guard_cap_w=None, guard_seen_w=None)
        st, guard_actions = _command_caps(ctx, st, np.arange(topo.n_servers, dtype=np.int64),
                                          {})
        actions.extend(guard_actions)

    # -- 4. ramp ------------------------------------------------------------------------------
    holds: list[str] = []
    if st.ramp_active and st.full_hold and math.isfinite(st.last_tick_s):
        # the whole ramp waited during the last tick: the rest of the plan moves later by as
        # much, so that its inrush, ramp and cooling timing holds as planned
        st = st.replace(plan_t0_s=st.plan_t0_s + max(now_s - st.last_tick_s, 0.0))
    st = st.replace(full_hold=False)
    if st.ramp_active and st.mode == Mode.SAFE:
        st = st.replace(full_hold=True)
    elif st.ramp_active:
        if st.paused:
            holds.append("operator pause")
            st = st.replace(full_hold=True)
        elif shedding:
            holds.append("shedding")
            st = st.replace(full_hold=True)
        else:
            if departed:
                st = st.replace(replan_due=True)
            if st.replan_due and now_s - st.last_replan_s >= ctx.settings.replan_min_s:
                st = _replan(ctx, st, now_s, _scenario_background(ctx, up_a))
            st, ramp_actions, ramp_holds = _ramp(ctx, st, store, rb, unknown, worst_a,
                                                 up_a, server_w,
                                                 server_wc, powered, confirmed_cap, now_s,
                                                 open_nodes)
            actions.extend(ramp_actions)
            holds.extend(ramp_holds)
    if st.ramp_active and servers_left_off(st):
        st = st.replace(replan_due=True)
    st = st.replace(last_tick_s=now_s)
    st = st.replace(hold_reasons=tuple(dict.fromkeys(holds)), alarms_active=frozenset(alarms))
    st = _mode(ctx, st, shedding, now_s)
    return Decision(tuple(actions), st, worst_a, measured_a)


def _latch_alarms(actions: list[CoreAction], alarms: set[str], code: str, on: B,
                  names: Sequence[str], raise_msg: str, clear_msg: str) -> None:
    """Raise an alarm ``code`` once for each index newly ``on``; clear it when it goes off.
    ``alarms`` holds the active ones as ``code:name``."""
    for k in np.flatnonzero(on):
        key = f"{code}:{names[int(k)]}"
        if key not in alarms:
            actions.append(Alarm(code, raise_msg.format(names[int(k)]), names[int(k)]))
            alarms.add(key)
    prefix = f"{code}:"
    active = [a for a in alarms if a.startswith(prefix)]
    if active:
        index = {n: i for i, n in enumerate(names)} if len(active) > 8 else None
        for key in active:
            name = key[len(prefix):]
            i = index.get(name) if index is not None else (
                names.index(name) if name in names else None)
            if i is None or not on[i]:
                actions.append(Alarm(code, clear_msg.format(name), name, active=False))
                alarms.discard(key)


def _confirmed_caps(store: TelemetryStore, st: CoreState, overdraw: B) -> F64:
    """Per server, the per-GPU cap confirmed by read-back (NaN: not confirmed).

    Confirmed: the agent's reading is trusted and the cap it enforces is at most the cap last
    commanded (a cap read back above the command is not confirmed: the server may draw more),
    and the server draws no more than it (``overdraw``: :func:`_cap_overdraw`)."""
    good = store.has_agent & (store.server_quality == Q_GOOD)
    enforced = store.server_cap_w
    ok = good & np.isfinite(enforced) & np.isfinite(st.cap_cmd_w) & (
        enforced <= st.cap_cmd_w + CAP_CONFIRM_TOLERANCE_W) & ~overdraw
    return np.where(ok, enforced, np.nan)


def _cap_overdraw(ctx: CoreContext, store: TelemetryStore) -> B:
    """Servers whose GPUs measurably draw more than the cap their agent says is in force (an
    agent that ignores caps still reports them): their cap is not confirmed, whatever the
    read-back says."""
    gpus = np.maximum(ctx.topo.server_gpus, 1)
    per_gpu = store.server_power_w / gpus
    with np.errstate(invalid="ignore"):
        return (store.server_quality == Q_GOOD) & (
            per_gpu > store.server_cap_w * (1 + OVERDRAW_TOLERANCE_X) + OVERDRAW_TOLERANCE_W)


def _worst_server_w(ctx: CoreContext, psu_on_s: F64, powered: B, confirmed_cap: F64,
                    cap_cmd_w: F64, now_s: float, floor_w: F64) -> tuple[F64, F64]:
    """The most each server can draw now (W), normally and in the feed-loss contingency.

    Normally (module docstring, step 2): POST/boot power before the earliest moment it can
    work, full power from then until its cap is confirmed, the confirmed cap after. In the
    contingency of a lost feed, a server whose cap was commanded counts at that cap even before
    the read-back: a feed loss and a failed node agent together are two failures, and the
    controller keeps every *single* failure survivable (docs/controller.md). ``floor_w``: each
    server's largest power before it can work, from the model the core plans with."""
    on_s = np.where(powered, psu_on_s, np.inf)
    times = ctx.server_times(np.where(np.isinf(on_s) & (on_s < 0), -1e12, on_s))
    n = times.shape[0]
    w, wc = np.empty(n), np.empty(n)
    # in one pass (kernels.tick._worst_server_power_into)
    _worst_server_power_into(np.ascontiguousarray(times[:, 0]), np.ascontiguousarray(times[:, 4]),
                             np.ascontiguousarray(confirmed_cap, np.float64),
                             np.ascontiguousarray(cap_cmd_w, np.float64), float(now_s),
                             np.ascontiguousarray(floor_w, np.float64), *ctx.step_server_args,
                             w, wc)
    return w, wc


def _worst_currents_a(ctx: CoreContext, w_normal: F64, w_contingency: F64, alive: B,
                      out: F64 | None = None) -> F64:
    """(3, n, 3) A: scenario 0 from ``w_normal``, the feed-loss scenarios from
    ``w_contingency``, in one kernel pass (:func:`kernels.aggregate._worst_case_current_into`).

    The raw kernel runs on the topology arrays checked once in :class:`CoreContext`; only the
    per-tick inputs are checked here (finite, non-negative powers) and the output after.
    ``out``: a (3, n, 3) float64 C-contiguous array to fill, e.g. a scratch buffer (default:
    a read-only result, see below).

    Without ``out`` (the tick's own worst case) the result is computed from the last one
    (:func:`kernels.aggregate._worst_case_current_update_into`): only the nodes above a
    server whose powers or PSUs changed are summed again, in the order of the full kernel, so
    the bits are those of a full computation; with nothing changed (a steady tick) the last
    result itself is returned. Results are read-only: earlier decisions that keep one
    (``Decision.worst_a``) never see it change, as nothing writes into an array once it was
    handed out (a write raises)."""
    k = ctx.kernel_args
    wn = np.ascontiguousarray(w_normal, np.float64)
    wc = np.ascontiguousarray(w_contingency, np.float64)
    al = np.ascontiguousarray(alive, np.bool_)
    if not (np.isfinite(wc).all() and (wc >= 0).all() and np.isfinite(wn).all()
            and (wn >= 0).all()):
        raise ValueError("server powers must be finite and non-negative")
    finite = np.empty(1, np.bool_)
    if out is not None:
        _worst_case_current_into(wn, wc, k[0], k[1], k[2], k[3], k[4], al, k[5], k[6], out,
                                 finite)
        if not finite[0]:
            raise ValueError("worst-case currents are not finite")
        return out
    with ctx._worst_lock:
        memo, ctx._worst_memo = ctx._worst_memo, None
        if memo is None:
            va = np.empty((3, ctx.topo.n_nodes, 3))
            changed = np.ones(wn.size, np.bool_)
        else:
            prev_wn, prev_wc, prev_al, prev, va = memo
            # 0.0 and -0.0 W give the same sums: equal values are unchanged
            changed = (prev_wn != wn) | (prev_wc != wc)
            alive_flip = prev_al != al
            if alive_flip.any():
                changed[k[1][alive_flip]] = True
            n_changed = int(np.count_nonzero(changed))
            if n_changed == 0:
                ctx._worst_memo = memo
                return prev
            if 4 * n_changed > wn.size:   # a large change: everything again, no copy
                changed[:] = True
        every = memo is None or bool(changed.all())
        result, held = ctx._worst_arrays.take()
        prev = result if memo is None else memo[3]
        stale = np.zeros(0, np.int64)
        if not every:
            # the array is brought to the last result first: the nodes recomputed since the
            # one it holds are copied (all of it when that is not known)
            rows = ctx._worst_rows_since(held)
            if rows is None:
                np.copyto(result, prev)
            else:
                stale = rows
        changed_servers = (np.arange(wn.size, dtype=np.int64) if every
                           else np.flatnonzero(changed).astype(np.int64))
        affected = np.empty(ctx.topo.n_nodes, np.int64)
        n_affected = np.empty(1, np.int64)
        _worst_case_current_update_into(
            wn, wc, k[0], k[1], k[2], k[3], k[4], al, k[5], k[6], ctx.node_psu_start,
            ctx.node_psu_order, ctx.child_start, ctx.child_order, ctx.server_psu_start,
            ctx.server_psu_order, changed_servers, prev, stale, ctx._worst_marks, affected,
            n_affected, va, result, finite)
        if not finite[0]:
            ctx._worst_log.clear()
            raise ValueError("worst-case currents are not finite")   # the memo stays None
        ctx._worst_version += 1
        ctx._worst_log[ctx._worst_version] = (
            None if every else affected[:int(n_affected[0])].copy())
        ctx._worst_log.pop(ctx._worst_version - _WORST_LOG_TICKS, None)
        ctx._worst_arrays.tag(result, ctx._worst_version)
        result.setflags(write=False)
        ctx._worst_memo = (wn.copy(), wc.copy(), al.copy(), result, va)
    return result


def _calibrate_post(ctx: CoreContext, st: CoreState, store: TelemetryStore, psu_on_s: F64,
                    powered: B) -> tuple[CoreState, list[CoreAction]]:
    """Measure the servers' POST draw against their model, once per ramp.

    The first servers switched on reach POST a BMC delay later; by then the waves after them are
    on (in standby), so a POST draw above the model would break the ramp limit of every wave
    before a meter could show it. Until it is measured the core plans POST at
    1 + ``boot_power_margin`` times the model. At the first tick at which some trusted meter
    sees only servers whose state is certain at its sample time (off, standby before POST, or
    surely in POST), and their POST current is at least :data:`CALIBRATION_MIN_A` on a phase,
    the factor is measured there: (measured − standby of the others) / modelled POST, the
    largest over such meters whose factor is within :data:`CALIBRATION_RANGE_X`. From then on
    the core plans with that factor (at least 1) and re-plans; above :data:`POST_ALARM_X` it
    alarms.
    """
    if st.post_measured or not st.ramp_active or not powered.any():
        return st, []
    topo = ctx.topo
    good = store.metered & (store.node_quality == Q_GOOD) & np.isfinite(store.node_t_s)
    if not good.any():
        return st, []
    on_s = np.where(powered, psu_on_s, np.inf)
    times = ctx.server_times(np.where(np.isinf(on_s) & (on_s < 0), -1e12, on_s))
    t_first, t_post, e2 = times[:, 0], times[:, 1], times[:, 2]
    sampled = store.node_t_s[good]
    lo, hi, g = float(sampled.min()), float(sampled.max()), CALIBRATION_GUARD_S
    off = ~(t_first <= hi + g)
    pre = (t_first < lo - g) & (hi < t_post - g)
    in_post = (lo >= t_post + g) & (hi < e2 - g)
    if not in_post.any():
        return st, []
    unsure = np.bincount(ctx.below_node, weights=~(off | pre | in_post)[ctx.below_server],
                         minlength=topo.n_nodes)
    usable = good & (unsure == 0)
    if not usable.any():
        return st, []
    base_a = _tree_a(ctx, np.where(pre, topo.server_standby_w, 0.0), powered)
    post_a = _tree_a(ctx, np.where(in_post, topo.server_post_w, 0.0), powered)
    rows = np.flatnonzero(usable & (row_max(post_a) >= CALIBRATION_MIN_A))
    if rows.size == 0:
        return st, []
    phase = np.argmax(post_a[rows], axis=1)
    factor = (store.node_i_a[rows, phase] - base_a[rows, phase]) / post_a[rows, phase]
    plausible = (factor >= CALIBRATION_RANGE_X[0]) & (factor <= CALIBRATION_RANGE_X[1])
    if not plausible.any():
        return st, []
    rows, factor = rows[plausible], factor[plausible]
    worst = int(np.argmax(factor))
    measured_x = float(factor[worst])
    post_x = max(1.0, measured_x)
    actions: list[CoreAction] = []
    node = topo.node_id[int(rows[worst])]
    if measured_x > POST_ALARM_X:
        actions.append(Alarm("post-power-above-model",
                             f"servers draw {measured_x:.2f}x their model's POST power "
                             f"(measured at {node}); planning with {post_x:.2f}x", node))
    extra = dict(st.extra, post_measured_x=measured_x, post_measured_at=node)
    return st.replace(post_x=post_x, post_measured=True, extra=extra,
                      replan_due=st.replan_due or abs(post_x - st.post_x) > 1e-6), actions


def _tree_a(ctx: CoreContext, server_w: F64, alive: B) -> F64:
    """(n, 3) A: the per-phase currents of ``server_w`` up the tree, every feed live."""
    k = ctx.kernel_args
    out = np.empty((ctx.topo.n_nodes, 3))
    _tree_current_into(np.ascontiguousarray(server_w, np.float64), k[0], k[1], k[2], k[3],
                       np.ascontiguousarray(alive, np.bool_), k[5], k[6],
                       np.empty((ctx.topo.n_nodes, 3)), out)
    return out


def _measured_load(ctx: CoreContext, store: TelemetryStore, model_a: F64
                   ) -> tuple[F64 | None, F64, F64, bool]:
    """The trusted meter readings against the model's worst case ``model_a`` (3, n, 3) A, in
    one kernel pass (:func:`kernels.aggregate._measured_load_into`):

    - ``up_a`` (n, 3) A (None: none): measured load beyond the model (beyond the meter
      tolerance), carried up the tree (see
      :func:`controller.planner.background_from_measurement`); the background is that in the
      normal scenario and twice that after a feed loss (its feed is unknown);
    - ``worst_a`` (3, n, 3) A: ``model_a`` plus the background (``model_a`` itself without);
    - ``measured_a`` (n, 3) A: the reading where trusted, the worst case at metered nodes whose
      reading is not, 0 at unmetered nodes;
    - whether the background departs from the model by more than
      :attr:`CoreContext.departure_a` somewhere (the plan is then recomputed)."""
    n = ctx.topo.n_nodes
    # first the metered nodes alone: without a reading beyond the model (the usual case) the
    # measured load is all there is to compute
    measured_a = np.zeros((n, 3))
    excess = np.empty(1, np.bool_)
    _measured_at_into(ctx.metered_nodes(store), np.ascontiguousarray(store.node_i_a, np.float64),
                      np.ascontiguousarray(store.node_quality, np.int8), model_a,
                      METER_TOLERANCE_X, METER_TOLERANCE_A, measured_a, excess)
    if not excess[0]:
        return None, model_a, measured_a, False
    trusted = store.metered & (store.node_quality == Q_GOOD)
    up_a = np.empty((n, 3))
    worst_a = np.empty((3, n, 3))
    flags = np.empty(2, np.bool_)
    _measured_load_into(np.ascontiguousarray(store.node_i_a, np.float64), trusted,
                        np.ascontiguousarray(store.metered, np.bool_), model_a,
                        ctx.kernel_args[5], ctx.level_order, ctx.level_start,
                        ctx.departure_a, METER_TOLERANCE_X, METER_TOLERANCE_A,
                        np.empty((n, 3)), up_a, worst_a, measured_a, flags)
    if not flags[0]:
        # no background: the worst case is the model's (the kernel wrote neither array)
        return None, model_a, measured_a, False
    return up_a, worst_a, measured_a, bool(flags[1])


def _scenario_background(ctx: CoreContext, up_a: F64 | None) -> F64:
    """The background (3, n, 3) A of the three scenarios from its normal one ``up_a``
    (None: none)."""
    if up_a is None:
        return np.zeros((3, ctx.topo.n_nodes, 3))
    return np.stack([up_a, 2.0 * up_a, 2.0 * up_a])


# ============================================================================== shedding
def _shed(ctx: CoreContext, st: CoreState, store: TelemetryStore, measured_a: F64,
          server_w: F64, psu_on_s: F64, now_s: float, zone_inlet_c: F64 | None = None
          ) -> tuple[CoreState, list[CoreAction], bool]:
    topo, pol = ctx.topo, ctx.shed
    actions: list[CoreAction] = []
    # per node: utilization, since when it is over its limit, and how many are over the
    # capping threshold, in one pass (kernels.tick._node_utilization_into)
    # (only metered nodes carry a measured load: elsewhere it is 0, u = 0, never over)
    n = topo.n_nodes
    util = np.zeros(n)
    over_since = np.full(n, np.inf)
    n_over = np.empty(1, np.int64)
    _node_utilization_into(ctx.metered_nodes(store), np.ascontiguousarray(measured_a, np.float64),
                           ctx.limit_node_a, np.ascontiguousarray(st.over_since_s, np.float64),
                           float(now_s), 1.0 + _RTOL, float(pol.capping_threshold), util,
                           over_since, n_over)
    over = util > pol.capping_threshold if n_over[0] else None
    shed = st.shed_cap_w.copy()
    gpus = topo.server_gpus.astype(float)
    cap_now = np.where(np.isfinite(shed), np.minimum(shed, st.cap_plan_w), st.cap_plan_w)
    cap_before = cap_now.copy()
    meas_server = np.where(store.has_agent & (store.server_quality == Q_GOOD),
                           store.server_power_w + topo.server_other_max_w, server_w)
    draw_w = np.minimum(np.maximum(meas_server, 0.0), topo.server_max_w)
    changed = np.zeros(topo.n_servers, bool)
    reasons: dict[int, Reason] = {}
    over_nodes = np.zeros(0, np.int64) if over is None else (
        np.flatnonzero(over)[np.argsort(-util[over])])
    for node in over_nodes:
        servers = ctx.servers_below(int(node))
        if servers.size == 0:
            continue
        frac = 1.0 - pol.capping_target / util[node]
        need_w = frac * float(draw_w[servers].sum())
        # lowest priority first, highest drawing first within a priority
        order = servers[np.lexsort((-draw_w[servers], topo.server_priority[servers]))]
        floor = topo.server_gpu_min_cap_w[order]
        room_w = np.maximum(cap_now[order] - floor, 0.0) * gpus[order]
        take = np.minimum(room_w, np.maximum(need_w - np.concatenate(
            [[0.0], np.cumsum(room_w)[:-1]]), 0.0))
        cut = take > 0
        if cut.any():
            sel = order[cut]
            new = cap_now[sel] - take[cut] / np.maximum(gpus[sel], 1.0)
            cap_now[sel] = new
            shed[sel] = new
            changed[sel] = True
            i_now = float(measured_a[node].max())
            for s in sel:
                reasons.setdefault(int(s), Reason(
                    "shed", topo.node_id[node], i_now, None,
                    float(ctx.limit_node_a[node].min()) * pol.capping_target))
        last_resort = _outlets_off(ctx, st, int(node), float(util[node]), over_since[node],
                                   now_s, psu_on_s)
        if last_resort is not None:
            actions.append(last_resort)
    # thermal: servers of a zone whose inlet is past the thermal threshold go to their minimum
    hot_zone, cool_zone = _zone_heat(ctx, zone_inlet_c)
    if hot_zone.any():
        hot = hot_zone[topo.server_zone] & (server_w > 0)
        floor = topo.server_gpu_min_cap_w
        sel = np.flatnonzero(hot & (cap_now > floor + 0.5))
        if sel.size:
            cap_now[sel] = floor[sel]
            shed[sel] = floor[sel]
            changed[sel] = True
            assert zone_inlet_c is not None
            for s in sel:
                z = int(topo.server_zone[s])
                reasons.setdefault(int(s), Reason(
                    "thermal", topo.zone_id[z], float(zone_inlet_c[z]), None,
                    float(ctx.thermal_cap_c[z]), "°C"))
    # release shed caps below nodes that are back under the uncapping threshold
    shed_servers = np.flatnonzero(np.isfinite(shed) & ~changed)
    unthrottle = st.unthrottle_at_s.copy()
    if shed_servers.size:
        rng = np.random.default_rng([st.rng_seed, st.ticks])
        worst_util = _server_max_util(ctx, util)
        lo, hi = pol.unthrottle_delay_s
        quiet = (worst_util[shed_servers] < pol.uncapping_threshold) & cool_zone[
            topo.server_zone[shed_servers]]
        calm = shed_servers[quiet & (unthrottle[shed_servers] <= now_s)]
        if calm.size:
            step = pol.unthrottle_step_fraction * (
                st.cap_plan_w[calm] - topo.server_gpu_min_cap_w[calm])
            new = shed[calm] + np.maximum(step, 1.0)
            done = new >= st.cap_plan_w[calm] - 1e-9
            shed[calm] = np.where(done, np.nan, new)
            cap_now[calm] = np.where(done, st.cap_plan_w[calm], new)
            changed[calm] = True
            for s in calm:
                reasons[int(s)] = Reason("unthrottle", None, float(worst_util[s]), None,
                                         pol.uncapping_threshold, "x")
        waiting = shed_servers[quiet]
        due = waiting[unthrottle[waiting] <= now_s]
        unthrottle[due] = now_s + rng.uniform(lo, hi, due.size)
    if changed.any():
        # no cap change of ours may make a load step (or, raising, a ramp) beyond the limits
        sel = np.flatnonzero(changed)
        limited = _limit_cap_change(ctx, sel, cap_before[sel], cap_now[sel], draw_w[sel])
        slowed = limited != cap_now[sel]
        if slowed.any():
            shed[sel[slowed]] = limited[slowed]
    st = st.replace(shed_cap_w=shed, over_since_s=over_since, unthrottle_at_s=unthrottle)
    if changed.any():
        st, cap_actions = _command_caps(ctx, st, np.flatnonzero(changed), reasons)
        actions.extend(cap_actions)
    shedding = bool(n_over[0] > 0 or np.isfinite(shed).any())
    return st, actions, shedding


def _ramp_guard(ctx: CoreContext, st: CoreState, store: TelemetryStore, server_w: F64,
                now_s: float) -> tuple[CoreState, list[CoreAction]]:
    """Keep the load the servers could add at once (what they would draw working at their
    caps less what they draw) within the rise budget (:data:`STEP_BUDGET_FRACTION` of the
    largest load step and of the ramp limit × one tick) at every node that has one: where it is
    not, the caps of the servers below come down to what they draw plus their share of the
    budget, and follow the load up tick by tick. The part no cap controls (an idle server's
    non-GPU power and its GPUs up to their minimum cap) counts first: where it alone fills the
    budget, the caps go to the minimum (controller/storm.py tells whether that suffices).
    Servers without a trusted agent reading are left alone (their draw is not known)."""
    topo = ctx.topo
    if ctx.step_nodes.size == 0:
        return st, []
    gpus = np.maximum(topo.server_gpus, 1).astype(float)
    # per server in one pass (kernels.tick._guard_servers_into): the cap in force (the plan's,
    # lowered by shedding), which draws are known (a trusted agent reading, the server on), the
    # base (what the GPUs draw, between their minimum and the cap) and what comes back whatever
    # the caps: a server drawing less than it would working at the base (an idle one: its GPUs
    # below their minimum cap, its CPUs and fans at rest), and what rose since the last pass
    # (within the ramp window it counts against the same budget: a workload that restarted
    # just now, then the guard's own raise)
    n_s = topo.n_servers
    plan_cap, base, fixed_all, seen_now = (np.empty(n_s) for _ in range(4))
    known = np.empty(n_s, np.bool_)
    seen_before = st.guard_seen_w if st.guard_seen_w is not None else np.full(n_s, np.nan)
    _guard_servers_into(np.ascontiguousarray(st.shed_cap_w, np.float64),
                        np.ascontiguousarray(st.cap_plan_w, np.float64),
                        np.ascontiguousarray(store.server_power_w, np.float64),
                        np.ascontiguousarray(store.server_quality, np.int8),
                        np.ascontiguousarray(server_w, np.float64),
                        np.ascontiguousarray(seen_before, np.float64), *ctx.step_server_args,
                        plan_cap, base, known, fixed_all, seen_now)
    servers = np.flatnonzero(known)
    guard = np.full(n_s, np.nan)
    if servers.size:
        limited = _limit_cap_change(ctx, servers, base[servers], plan_cap[servers],
                                    base[servers] * gpus[servers],
                                    fixed_rise_w=fixed_all[servers])
        below = limited < plan_cap[servers] - 0.5
        limited = _guard_steps(limited, None if st.guard_cap_w is None
                               else st.guard_cap_w[servers], base[servers])
        guard[servers[below]] = limited[below]
    prev = st.guard_cap_w
    st = st.replace(guard_seen_w=seen_now)
    if prev is None and not np.isfinite(guard).any():
        return st, []
    st = st.replace(guard_cap_w=guard if np.isfinite(guard).any() else None)
    touched = np.isfinite(guard) | (np.isfinite(prev) if prev is not None else False)
    if not np.any(touched):
        return st, []
    return _command_caps(ctx, st, np.flatnonzero(touched).astype(np.int64),
                         {int(s): Reason("ramp-guard") for s in np.flatnonzero(touched)})


def _guard_steps(guard_w: F64, prev_w: F64 | None, floor_w: F64) -> F64:
    """The ramp guard's caps on a grid of :data:`GUARD_STEP_W`, rounded down (never above what
    the budget allows, never below ``floor_w``: what the GPUs draw, or their minimum cap), and
    raised only once the budget allows a whole step more than the cap in force plus
    :data:`GUARD_RAISE_HYSTERESIS_W`: a draw that wobbles does not send a cap command every
    tick."""
    q = np.maximum(np.floor(guard_w / GUARD_STEP_W) * GUARD_STEP_W, floor_w)
    q = np.minimum(q, np.maximum(guard_w, floor_w))
    if prev_w is None:
        return q
    with np.errstate(invalid="ignore"):
        hold = np.isfinite(prev_w) & (q > prev_w) & (
            guard_w < prev_w + GUARD_STEP_W + GUARD_RAISE_HYSTERESIS_W)
    return np.where(hold, prev_w, q)


def _zone_heat(ctx: CoreContext, zone_inlet_c: F64 | None) -> tuple[B, B]:
    """Per zone: past the thermal capping threshold (hot), and below the hold threshold
    (cool: shed caps may be released). An unknown inlet is neither."""
    z = len(ctx.topo.zone_id)
    if zone_inlet_c is None:
        return np.zeros(z, bool), np.ones(z, bool)
    with np.errstate(invalid="ignore"):
        return (zone_inlet_c >= ctx.thermal_cap_c,
                zone_inlet_c < ctx.topo.zone_inlet_hold_c)


def _limit_cap_change(ctx: CoreContext, servers: I64, old_cap_w: F64, new_cap_w: F64,
                      draw_w: F64, fixed_rise_w: F64 | None = None) -> F64:
    """Per-GPU caps between ``old_cap_w`` and ``new_cap_w`` such that, at every node with a
    largest load step (and a ramp limit, for raises), the load the change removes or adds in
    one tick stays within :data:`STEP_BUDGET_FRACTION` of it; servers under a node that would
    exceed it move by the same fraction of their change. ``fixed_rise_w`` (per server of
    ``servers``): a rise that comes whatever the caps (the ramp guard's: servers idling below
    ``old_cap_w``, their non-GPU power); it uses up the rise budget first."""
    nodes = ctx.step_nodes
    if nodes.size == 0 or servers.size == 0:
        return new_cap_w
    topo = ctx.topo
    # per node with a budget (its slot in ``step_nodes``), the fraction of the change that the
    # load it drops and adds leaves within the budget, in one pass (kernels.tick)
    slot_of, server_of = ctx.step_pair_slot, ctx.step_pair_server
    rise_budget = ctx.rise_budget_w[nodes]
    if fixed_rise_w is not None:
        per_server_fixed = np.zeros(topo.n_servers)
        per_server_fixed[servers] = np.maximum(fixed_rise_w, 0.0)
        rise_budget = np.maximum(rise_budget - np.bincount(
            slot_of, weights=per_server_fixed[server_of], minlength=nodes.size), 0.0)
    f_node = np.empty(nodes.size)
    limited = np.empty(1, np.bool_)
    _step_budget_into(np.ascontiguousarray(servers, np.int64),
                      np.ascontiguousarray(old_cap_w, np.float64),
                      np.ascontiguousarray(new_cap_w, np.float64),
                      np.ascontiguousarray(draw_w, np.float64), *ctx.step_server_args,
                      np.ascontiguousarray(slot_of, np.int64),
                      np.ascontiguousarray(server_of, np.int64),
                      np.ascontiguousarray(ctx.drop_budget_w[nodes], np.float64),
                      np.ascontiguousarray(rise_budget, np.float64),
                      np.empty(topo.n_servers), np.empty(topo.n_servers), f_node, limited)
    if not limited[0]:
        return new_cap_w
    f_server = np.ones(topo.n_servers)
    np.minimum.at(f_server, server_of, f_node[slot_of])
    f = f_server[servers]
    return old_cap_w + f * (new_cap_w - old_cap_w)


def _server_max_util(ctx: CoreContext, util: F64) -> F64:
    """Per server, the highest utilization of any node above it."""
    out = np.zeros(ctx.topo.n_servers)
    np.maximum.at(out, ctx.below_server, util[ctx.below_node])
    return out


def _outlets_off(ctx: CoreContext, st: CoreState, node: int, util: float, over_since_s: float,
                 now_s: float, psu_on_s: F64) -> SwitchOff | None:
    """Switch off the lowest-priority servers below ``node`` when caps have not brought its load
    under the limit by half the deadline its guard trip curve leaves (policy permitting)."""
    pol = ctx.shed
    if pol.outlet_off == "never" or not math.isfinite(over_since_s) or util <= 1.0:
        return None
    deadline = shed_deadline_s(ctx.topo, node, util)
    if now_s - over_since_s < 0.5 * deadline:
        return None
    topo = ctx.topo
    servers = ctx.servers_below(node)
    if pol.outlet_off == "lowest_priority":
        servers = servers[topo.server_priority[servers] == topo.server_priority[servers].min()]
    on = np.zeros(topo.n_servers, bool)
    np.logical_or.at(on, topo.psu_server, psu_on_s <= now_s)
    servers = servers[on[servers]]
    if servers.size == 0:
        return None
    excess = 1.0 - 1.0 / util
    n_off = max(1, math.ceil(excess * servers.size))
    victims = servers[np.argsort(topo.server_priority[servers], kind="stable")[:n_off]]
    psus = np.flatnonzero(np.isin(topo.psu_server, victims))
    outlets = ctx.psu_outlet[psus]
    outlets = np.unique(outlets[outlets >= 0]).astype(np.int32)
    if outlets.size == 0:
        return None
    return SwitchOff(outlets.astype(np.int32),
                     Reason("shed-deadline", topo.node_id[node], util, None, 1.0, "x"))


def shed_deadline_s(topo: Topology, node: int, util: float) -> float:
    """Time (s) the guard trip curve leaves at ``util`` × the continuous limit, from steady state
    at the limit: :data:`UNPROTECTED_DEADLINE_S` for a node without a breaker, never more than
    :data:`MAX_DEADLINE_S` (the simulator judges violations by the same deadlines)."""
    if util <= 1.0:
        return math.inf
    if not topo.has_breaker[node]:
        return UNPROTECTED_DEADLINE_S
    lim = topo.limit_a[node:node + 1]
    rating = topo.rating_a[node:node + 1]
    g = topo.trip_guard
    theta = np.where(rating > 0, (lim / np.where(rating > 0, rating, 1.0)) ** 2, 0.0)
    t = time_to_trip_s(lim * util, rating, g.thermal_k[node:node + 1],
                       g.thermal_tau_s[node:node + 1], g.magnetic_x[node:node + 1],
                       g.short_pickup_x[node:node + 1], g.short_delay_s[node:node + 1],
                       theta, np.zeros_like(theta))
    return min(float(t[0]), MAX_DEADLINE_S)


def _command_caps(ctx: CoreContext, st: CoreState, servers: I64,
                  reasons: dict[int, Reason]) -> tuple[CoreState, list[CoreAction]]:
    """Send the effective cap (the plan's, lowered by shedding) where it differs from the last
    command."""
    eff = np.where(np.isfinite(st.shed_cap_w[servers]),
                   np.minimum(st.shed_cap_w[servers], st.cap_plan_w[servers]),
                   st.cap_plan_w[servers])
    if st.guard_cap_w is not None:
        guard = st.guard_cap_w[servers]
        eff = np.where(np.isfinite(guard), np.minimum(eff, guard), eff)
    eff = np.clip(eff, ctx.topo.server_gpu_min_cap_w[servers], ctx.topo.server_gpu_max_w[servers])
    prev = st.cap_cmd_w[servers]
    diff = ~(np.abs(eff - prev) <= 0.5)
    if not diff.any():
        return st, []
    sel, caps = servers[diff], eff[diff]
    cmd = st.cap_cmd_w.copy()
    cmd[sel] = caps
    groups: dict[Reason, list[int]] = {}
    for j, s in enumerate(sel):
        groups.setdefault(reasons.get(int(s), Reason("plan")), []).append(j)
    actions: list[CoreAction] = [SetCaps(sel[idx].astype(np.int32), caps[idx], r)
                                 for r, idx in ((r, np.asarray(i)) for r, i in groups.items())]
    return st.replace(cap_cmd_w=cmd), actions


# ============================================================================== ramp
def _replan(ctx: CoreContext, st: CoreState, now_s: float, background: F64 | None
            ) -> CoreState:
    """Plan the rest of the bring-up from what is true now (plan time 0 = now)."""
    topo = ctx.topo
    origin = st.plan_t0_s if st.plan is not None else now_s
    now_rel = max(now_s - origin, 0.0)
    on = st.psu_on_s <= now_s
    rel = np.where(on, np.clip(st.psu_on_s - origin, 0.0, now_rel), np.inf)
    caps = np.where(np.isfinite(st.cap_cmd_w), st.cap_cmd_w, topo.server_gpu_max_w)
    if st.cap_overdraw is not None:
        caps = np.where(st.cap_overdraw, topo.server_gpu_max_w, caps)
    state = PlanState(now_s=now_rel, psu_on_s=rel, cap_w=caps, background_a=background)
    model = ctx.model(st.post_x)
    result = plan(model.topo, "staged", state=state, context=model.planner)
    sched = result.schedule
    plan_cap = sched.gpu_cap_w.astype(np.float64).copy()
    # servers already on keep their commanded caps until a cap event raises them
    already = np.zeros(topo.n_servers, bool)
    np.logical_or.at(already, topo.psu_server, on)
    plan_cap = np.where(already & np.isfinite(st.cap_cmd_w), st.cap_cmd_w, plan_cap)
    first_event = int(np.searchsorted(sched.cap_t_s, now_rel, side="left"))
    return st.replace(plan=result, plan_t0_s=origin, replan_due=False, last_replan_s=now_s,
                      next_cap_event=first_event, cap_plan_w=plan_cap)


def _ramp(ctx: CoreContext, st: CoreState, store: TelemetryStore, rb: Readbacks,
          unknown: B, worst_a: F64, up_a: F64 | None, server_w: F64, server_wc: F64,
          powered: B, confirmed_cap: F64, now_s: float, dead_nodes: B | None = None
          ) -> tuple[CoreState, list[CoreAction], list[str]]:
    """Admit the plan's switch-ons and cap raises that are due (module docstring, step 4).
    ``up_a`` (n, 3) A: the measured load beyond the model in the normal scenario (None: none)."""
    topo, s = ctx.topo, ctx.settings
    floor_w = ctx.model(st.post_x).floor_w
    actions: list[CoreAction] = []
    holds: list[str] = []
    if st.plan is None:
        return st, actions, ["no plan"]
    sched: Schedule = st.plan.schedule
    horizon = now_s + s.tick_s
    planned_at = st.plan_t0_s + sched.psu_on_s
    due = (planned_at < horizon) & ~st.psu_commanded & ~(st.psu_on_s <= now_s) & (
        ctx.psu_outlet >= 0)
    # cap events due
    ev_t = st.plan_t0_s + sched.cap_t_s
    ev_end = int(np.searchsorted(ev_t, horizon, side="left"))
    ev = np.arange(st.next_cap_event, ev_end)
    if not due.any() and ev.size == 0:
        return st, actions, holds
    # behind the plan (held, or late): its inrush, ramp and cooling timing no longer holds;
    # wait for a re-plan from what is true now
    late = due & (planned_at < now_s - 1e-9)
    if late.any():
        holds.append("behind plan: re-planning")
        st = st.replace(replan_due=True)
        due &= ~late
    cand = np.flatnonzero(due)
    # every PSU still to go on of the servers concerned is checked: a server's PSUs go on
    # together or not at all (one held while its partner goes on would boot the server on one
    # feed alone, doubling the load and the ramp on that side)
    touched = np.zeros(topo.n_servers, bool)
    touched[topo.psu_server[cand]] = True
    pend = np.flatnonzero(touched[topo.psu_server] & ~st.psu_commanded
                          & ~(st.psu_on_s <= now_s) & (ctx.psu_outlet >= 0))
    # rule 5: no new load below an unknown node; outlets we cannot read back
    bad_tel = ctx.under(unknown, pend)
    bad_rb = ~rb.outlet_known[ctx.psu_outlet[pend]]
    if dead_nodes is not None and dead_nodes.any():
        no_supply = ctx.under(dead_nodes, pend)
        if no_supply.any():
            holds.append("supply lost")
            bad_rb = bad_rb | no_supply
    if bad_tel.any():
        holds.append("telemetry unknown")
    if bad_rb.any():
        holds.append("outlet state unknown")
    # rule 4: zone on hold (inlet above the hold threshold, or unknown)
    zone = topo.server_zone[topo.psu_server[pend]]
    inlet = rb.zone_inlet_c[zone]
    hot = ~(inlet < topo.zone_inlet_hold_c[zone])
    if hot.any():
        # the missing PSUs of a server that already has enough powered to boot add no heat:
        # they only share its load (and keep it on if a feed is lost)
        n_on = np.bincount(topo.psu_server[powered], minlength=topo.n_servers)
        hot &= ~(n_on >= np.maximum(topo.server_psus_to_boot, 1))[topo.psu_server[pend]]
    if hot.any():
        holds.append("zone inlet at hold" if np.isfinite(inlet[hot]).all()
                     else "zone inlet unknown")
    held = np.zeros(topo.n_servers, bool)
    held[topo.psu_server[pend[bad_tel | bad_rb | hot]]] = True
    held[topo.psu_server[late]] = True
    cand = cand[~held[topo.psu_server[cand]]]
    if cand.size == 0 and ev.size == 0:
        if due.any():
            st = st.replace(full_hold=True)
        return st, actions, holds
    # cap raises: only for servers whose caps are confirmed (else the raise is not the risk)
    ev_servers = sched.cap_server[ev]
    ev_caps = sched.cap_w[ev]
    background = None if up_a is None else _scenario_background(ctx, up_a)
    # rule 1 on the trial worst case; drop the latest-planned until it fits
    new_on = powered.copy()
    worst_above_a = worst_a + 1e-6   # a trial is judged only where it adds load
    accepted_cand = cand
    accepted_ev = np.ones(ev.size, bool)
    for _ in range(12):
        trial_alive = powered.copy()
        trial_alive[accepted_cand] = True
        trial_w = server_w.copy()
        trial_wc = server_wc.copy()
        newly = np.zeros(topo.n_servers, bool)
        newly[topo.psu_server[accepted_cand]] = True
        newly &= server_w == 0
        trial_w[newly] = floor_w[newly]
        trial_wc[newly] = floor_w[newly]
        if accepted_ev.any():
            srv = ev_servers[accepted_ev]
            raised = np.maximum(ctx.work_w(ev_caps[accepted_ev], srv.astype(np.int64)),
                                floor_w[srv])
            up = server_w[srv] > floor_w[srv]   # working (or able to): the raise counts
            conf = np.isfinite(confirmed_cap[srv]) & up
            trial_w[srv[conf]] = np.maximum(trial_w[srv[conf]], raised[conf])
            trial_wc[srv[up]] = np.maximum(trial_wc[srv[up]], raised[up])
        trial = _worst_currents_a(ctx, trial_w, trial_wc, trial_alive, ctx.scratch_worst_a())
        if background is not None:
            trial += background
        bad = (trial > ctx.admit_check_a) & (trial > worst_above_a)
        bad_node = row_any(bad[0] | bad[1] | bad[2])
        if not bad_node.any():
            break
        node = int(np.flatnonzero(bad_node)[0])
        holds.append(f"headroom at {topo.node_id[node]}")
        under = ctx.under(bad_node, accepted_cand)
        if under.any():
            # keep the earliest-planned half of those under a violated node
            idx = np.flatnonzero(under)
            order = idx[np.argsort(planned_at[accepted_cand[idx]], kind="stable")]
            drop = order[len(order) // 2:]
            dropped = np.zeros(topo.n_servers, bool)
            dropped[topo.psu_server[accepted_cand[drop]]] = True   # whole servers
            accepted_cand = accepted_cand[~dropped[topo.psu_server[accepted_cand]]]
        elif accepted_ev.any():
            srv_anc = np.zeros(ev.size, bool)
            for j in np.flatnonzero(accepted_ev):
                psus = ctx.server_psu_order[ctx.server_psu_start[ev_servers[j]]:
                                            ctx.server_psu_start[ev_servers[j] + 1]]
                srv_anc[j] = ctx.under(bad_node, psus).any()
            if not srv_anc.any():
                break
            # events apply in order: keep the prefix before the first one that does not fit
            first_bad = int(np.flatnonzero(srv_anc)[0])
            accepted_ev[first_bad:] = False
        else:
            break
    else:
        accepted_cand = accepted_cand[:0]
        accepted_ev[:] = False
    del new_on
    if (cand.size or ev.size) and accepted_cand.size == 0 and not accepted_ev.any():
        st = st.replace(full_hold=True)
    elif due.any() and cand.size == 0 and not late.any():
        st = st.replace(full_hold=True)
    # rule 2: inrush spacing under every guarded node
    if accepted_cand.size:
        order = accepted_cand[np.argsort(planned_at[accepted_cand], kind="stable")]
        last = st.guard_last_s.copy()
        guard = topo.inrush_guard_s
        at = np.empty(order.size)
        anc = ctx.anc.clip(0)[order]
        valid = ctx.anc[order] >= 0
        for q in range(int(order.size)):
            nodes = anc[q][valid[q] & (guard[anc[q]] > 0)]
            t = max(planned_at[order[q]], now_s)
            if nodes.size:
                t = max(t, float((last[nodes] + guard[nodes]).max()))
                last[nodes] = t
            at[q] = t
        psu_on = st.psu_on_s.copy()
        psu_on[order] = at
        commanded = st.psu_commanded.copy()
        commanded[order] = True
        # each server's first cap goes with its first switch-on (the agent applies it at boot)
        servers = np.unique(topo.psu_server[order]).astype(np.int64)
        first = servers[~np.isfinite(st.cap_cmd_w[servers])]
        st = st.replace(psu_on_s=psu_on, psu_commanded=commanded, guard_last_s=last)
        if first.size:
            plan_caps = st.cap_plan_w.copy()
            plan_caps[first] = sched.gpu_cap_w[first]
            st = st.replace(cap_plan_w=plan_caps)
            st, cap_actions = _command_caps(ctx, st, first, {})
            actions.extend(cap_actions)
        outlets = ctx.psu_outlet[order].astype(np.int32)
        uniq, first_idx = np.unique(outlets, return_index=True)
        actions.append(Energize(uniq.astype(np.int32), at[first_idx],
                                Reason("plan", None, None, None, None)))
    # cap raises that fit
    if ev.size:
        applied = ev[accepted_ev]
        if applied.size:
            caps = st.cap_plan_w.copy()
            caps[sched.cap_server[applied]] = sched.cap_w[applied]
            st = st.replace(cap_plan_w=caps)
            st, cap_actions = _command_caps(
                ctx, st, np.unique(sched.cap_server[applied]).astype(np.int64), {})
            actions.extend(cap_actions)
        # events are consumed in order; a refused one stops the cursor until it fits
        st = st.replace(next_cap_event=int(st.next_cap_event + accepted_ev.sum()))
    return st, actions, holds


# ============================================================================== mode
def ramp_complete(ctx: CoreContext, st: CoreState, now_s: float) -> bool:
    """Everything the plan switches on is on, and every cap event has been applied."""
    if st.plan is None:
        return False
    sched = st.plan.schedule
    if st.next_cap_event < sched.cap_t_s.size:
        return False
    return bool(((st.psu_on_s <= now_s) | ctx.unplanned_psus(st.plan)).all())


def servers_left_off(st: CoreState) -> int:
    """Servers the present plan leaves off (they do not fit, or their zone is on hold)."""
    if st.plan is None:
        return 0
    from kernels.planner import STATUS_FIXED, STATUS_PLACED

    status = st.plan.status
    return int(((status != STATUS_PLACED) & (status != STATUS_FIXED)).sum())


def _mode(ctx: CoreContext, st: CoreState, shedding: bool, now_s: float) -> CoreState:
    """The one place where the mode changes."""
    if st.mode == Mode.SAFE:
        return st
    if shedding:
        return _set_mode(st, Mode.SHEDDING, "load above the capping threshold", now_s)
    if not st.ramp_active:
        return _set_mode(st, Mode.IDLE, "no ramp active", now_s)
    if ramp_complete(ctx, st, now_s):
        left = servers_left_off(st)
        if left:
            return _set_mode(st, Mode.HOLDING, f"{left} server(s) do not fit the limits now; "
                             "re-planning as telemetry changes", now_s)
        return _set_mode(st, Mode.STEADY, "bring-up complete", now_s)
    if st.hold_reasons:
        return _set_mode(st, Mode.HOLDING, "; ".join(st.hold_reasons), now_s)
    return _set_mode(st, Mode.RAMPING, "following the plan", now_s)


def _set_mode(st: CoreState, mode: Mode, reason: str, now_s: float) -> CoreState:
    if mode == st.mode:
        return st if reason == st.mode_reason else st.replace(mode_reason=reason)
    transitions = (*st.transitions[-63:], (now_s, st.mode.value, mode.value, reason))
    return st.replace(mode=mode, mode_reason=reason, transitions=transitions)
