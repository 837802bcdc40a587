"""The ramp planner: when to switch each server on and at which GPU cap, within every rule.

``plan(topo, "staged")`` runs three steps (docs/planner.md):

1. **Cap allocation** (:func:`kernels.caps.allocate_caps`): the per-GPU caps at which every
   server can work at once, normally and after the loss of either feed, within every continuous
   limit × (1 − admission margin) and every zone's cooling capacity after the loss of one unit.
   Each server is counted at the highest power it can still draw (its POST or boot power if
   that is higher than its capped work), so the allocation bounds the load at *every* moment
   of the bring-up and the scheduler never has to check continuous limits over time. Servers
   that do not fit even at their minimum caps are left off (lowest priority first).
2. **Staged switch-on** (:func:`kernels.planner.plan_staged`): a list scheduler in priority
   order places every server's PSU switch-ons as early as the inrush rules, the ramp limits of
   its sources and UPSs and the cooling lag of its zone allow, with its GPUs at their minimum
   cap; once the server is certainly working, a cap event raises it to its allocated cap as
   soon as the same budgets allow.
3. **Lower bound** (:func:`lower_bound`): the physical bound on the time to full power, and
   which constraint binds.

Re-planning from a measured state (:class:`PlanState`: the time, the PSUs already on, the caps
in force, extra load seen by the meters, zones on hold) reuses a :class:`PlannerContext` built
once per hall: a re-plan costs one allocation and one scheduler run.

The baselines (``all-at-once``, ``fixed-delay``, ``fixed-rate``) are plans too
(:mod:`controller.schedule`), so that :mod:`controller.prediction` judges every strategy alike.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from controller.model import ControllerSettings
from controller.prediction import (
    ancestor_table,
    envelope_at,
    magnetic_alone_a,
    magnetic_threshold_a,
    ramp_nodes,
    schedule_makespan_s,
    server_times_s,
    work_power_w,
    zone_deficit_limit_w,
)
from controller.schedule import BASELINES, Schedule, baseline
from controller.topology import Topology
from kernels.caps import allocate_caps
from kernels.planner import (
    MODE_EXCLUDED,
    MODE_FIXED,
    MODE_PLAN,
    STATUS_HELD,
    STATUS_NAMES,
    STATUS_OVERFLOW,
    plan_staged,
)

F64 = npt.NDArray[np.float64]
I32 = npt.NDArray[np.int32]

STRATEGIES = ("staged", *BASELINES)
_SQRT2 = math.sqrt(2.0)


@dataclass(frozen=True, slots=True)
class PlannerSettings:
    """The planner's knobs. Margins come from the hall's ``[controller]`` table."""

    admission_margin: float = 0.02
    magnetic_margin: float = 0.5
    #: ramp and step limits are judged on rises within less than this window
    window_s: float = 1.0
    #: ramp sub-slot of the planner's budgets (a window spans round(window/slot) + 1 of them)
    ramp_slot_s: float = 0.1
    #: the planner's ramp windows are this much longer than ``window_s``: a check sampled on
    #: a grid of this step (the simulator at 0.1 s steps, a meter) counts rises up to
    #: window + step apart as one window (docs/planner.md)
    ramp_sample_s: float = 0.1
    #: cooling slot of the planner's zone budgets
    zone_slot_s: float = 1.0
    #: budgets start this long before ``now`` (at least one window)
    lookback_s: float = 2.0
    #: the baselines' parameters (DESIGN.md)
    fixed_delay_s: float = 2.0
    fixed_rate_per_min: float = 300.0
    #: horizon doublings before a server that does not fit is given up
    max_horizon_doublings: int = 4

    @classmethod
    def from_controller(cls, controller: ControllerSettings, **overrides: Any) -> PlannerSettings:
        values: dict[str, Any] = {
            "admission_margin": controller.admission_margin,
            "magnetic_margin": controller.magnetic_margin,
            "fixed_delay_s": controller.fixed_delay_s,
            "fixed_rate_per_min": controller.fixed_rate_per_min,
        }
        values.update(overrides)
        return cls(**values)


@dataclass(frozen=True)
class PlanState:
    """What is already true when (re-)planning. Everything defaults to a hall still off at 0 s.

    ``history``: the schedule executed so far (usually the previous plan): its PSU switch-ons
    up to ``now_s`` are the PSUs on, its first caps and its cap events up to ``now_s`` the caps
    the servers had. The re-plan keeps that past and plans the future after it, so that its
    schedule is the whole timeline (the ramp and cooling budgets of the next seconds depend on
    what just happened). Without a history: ``psu_on_s`` (K,) s, switch-on times of the PSUs
    already on (+inf: off), and ``cap_w`` (S,) W per GPU, the caps in force, taken as held since
    the servers came on (default: the GPUs' maximum, i.e. uncapped).

    ``background_a`` (3, n, 3) A: load the model does not explain (see
    :func:`background_from_measurement`); ``zone_background_w`` (Z,) W likewise; ``zone_hold``
    (Z,) bool: zones whose inlet is above the hold threshold (rule 4: no new heat).
    """

    now_s: float = 0.0
    history: Schedule | None = None
    psu_on_s: F64 | None = None
    cap_w: F64 | None = None
    background_a: F64 | None = None
    zone_background_w: F64 | None = None
    zone_hold: npt.NDArray[np.bool_] | None = None

    def known_psu_on_s(self, n_psus: int) -> F64:
        """Switch-on times of the PSUs on at ``now_s`` (+inf: off), validated."""
        if self.psu_on_s is not None:
            known = np.asarray(self.psu_on_s, dtype=np.float64)
        elif self.history is not None:
            known = np.where(self.history.psu_on_s <= self.now_s, self.history.psu_on_s, np.inf)
        else:
            return np.full(n_psus, np.inf)
        if known.shape != (n_psus,):
            raise ValueError(f"psu_on_s must have shape ({n_psus},)")
        if np.isnan(known).any() or (np.isfinite(known) & (known > self.now_s + 1e-9)).any():
            raise ValueError("psu_on_s: known switch-on times must be <= now_s (inf: off), "
                             "without NaN")
        return known

    def first_caps_w(self, topo: Topology) -> F64:
        """The caps the servers on started with (W per GPU)."""
        if self.history is not None:
            caps = self.history.gpu_cap_w.astype(np.float64)
        elif self.cap_w is not None:
            caps = np.asarray(self.cap_w, dtype=np.float64)
        else:
            return topo.server_gpu_max_w.astype(np.float64).copy()
        if caps.shape != (topo.n_servers,) or not np.isfinite(caps).all():
            raise ValueError(f"caps must have shape ({topo.n_servers},), finite")
        return np.clip(caps, topo.server_gpu_min_cap_w, topo.server_gpu_max_w)

    def past_cap_events(self) -> tuple[F64, npt.NDArray[np.int32], F64]:
        """The history's cap events up to ``now_s`` (times, servers, caps)."""
        if self.history is None:
            return np.zeros(0), np.zeros(0, np.int32), np.zeros(0)
        h = self.history
        past = h.cap_t_s <= self.now_s
        return h.cap_t_s[past], h.cap_server[past], h.cap_w[past]

    def caps_now_w(self, topo: Topology) -> F64:
        """The caps in force at ``now_s`` (W per GPU)."""
        caps = self.first_caps_w(topo)
        _, servers, values = self.past_cap_events()
        caps[servers] = values  # sorted by time: the last one wins
        return np.clip(caps, topo.server_gpu_min_cap_w, topo.server_gpu_max_w)


@dataclass(frozen=True, slots=True)
class LowerBound:
    """The physical lower bound on the time to full power (absolute, s) and what binds it."""

    total_s: float
    binding: str               # "boot", "ramp", "cooling" or "inrush"
    binding_where: str | None  # node, zone or server that sets the binding term
    terms_s: dict[str, float]  # each term, absolute time (s)

    def to_dict(self) -> dict[str, Any]:
        return {"lower_bound_s": self.total_s, "binding": self.binding,
                "binding_where": self.binding_where, "terms_s": dict(self.terms_s)}


@dataclass(frozen=True)
class PlanResult:
    """A plan and what the planner knows about it."""

    strategy: str
    schedule: Schedule
    final_cap_w: F64                 # (S,) W per GPU, the cap each server ends at
    allocated_cap_w: F64             # (S,) the allocation's caps (staged) or the baseline's
    status: npt.NDArray[np.int8]     # (S,) kernels.planner STATUS_* (baselines: placed)
    makespan_s: float                # worst-case time to full power (absolute, s)
    lower_bound: LowerBound
    plan_seconds: float
    now_s: float = 0.0
    servers_on: int = 0              # servers the schedule switches on (or already on)
    timings_s: dict[str, float] = field(default_factory=dict)

    def status_counts(self) -> dict[str, int]:
        codes, counts = np.unique(self.status, return_counts=True)
        return {STATUS_NAMES[int(c)]: int(k) for c, k in zip(codes, counts, strict=True)}


# --------------------------------------------------------------------------------------------
# What does not change between plans of one hall
# --------------------------------------------------------------------------------------------
class PlannerContext:
    """Arrays derived once from a compiled hall for the planner (cheap re-plans)."""

    def __init__(self, topo: Topology, settings: PlannerSettings | None = None) -> None:
        s = settings or PlannerSettings()
        self.topo = topo
        self.settings = s
        n, n_servers = topo.n_nodes, topo.n_servers
        counts = np.bincount(topo.psu_server, minlength=n_servers)
        self.server_psu_start = np.zeros(n_servers + 1, np.int32)
        self.server_psu_start[1:] = np.cumsum(counts)
        self.server_psu = np.argsort(topo.psu_server, kind="stable").astype(np.int32)
        self.anc = ancestor_table(topo)
        self.ramp_nodes = ramp_nodes(topo)
        self.ramp_of_node = np.full(n, -1, np.int32)
        self.ramp_of_node[self.ramp_nodes] = np.arange(self.ramp_nodes.shape[0], dtype=np.int32)
        rn = self.ramp_nodes
        self.ramp_budget_w = np.minimum(topo.ramp_limit_w_per_s[rn] * s.window_s,
                                        topo.max_step_w[rn])
        self.mag_thr_a = magnetic_threshold_a(topo, s.magnetic_margin)
        self.mag_alone_a = magnetic_alone_a(topo)
        self.psu_inrush_a = topo.server_inrush_peak_a[topo.psu_server] / _SQRT2
        self.psu_inrush_s = topo.server_inrush_duration_s[topo.psu_server]
        self.micro_s = max(float(self.psu_inrush_s.max(initial=0.0)), 1e-4)
        # continuous limits for the allocation, per scenario; +inf where not judged
        lim = topo.limit_a * (1.0 - s.admission_margin)
        base = np.broadcast_to(lim, (3, n, 3)).copy()
        base[:, topo.limit_a <= 0] = np.inf
        base[1, topo.node_feed == 0] = np.inf
        base[2, topo.node_feed == 1] = np.inf
        self.alloc_limit_a = base
        self.zone_cap_w = topo.zone_capacity_n1_w * (1.0 - s.admission_margin)
        self.zone_dmax_w = zone_deficit_limit_w(topo)
        self.floor_w = np.maximum(np.maximum(topo.server_standby_w, topo.server_post_w),
                                  topo.server_boot_w)
        self.path_s = (topo.server_bmc_ready_s + topo.server_post_s[:, 1]
                       + topo.server_boot_s[:, 1])
        index = np.arange(n_servers)
        prio = topo.server_priority.astype(np.int64)
        self.alloc_order = np.lexsort((index, -prio)).astype(np.int32)
        # plan order: priority, then round-robin over racks (the first server of every rack,
        # then the second, ...) so that the budgets of every source, UPS and zone fill together
        first_of_rack = np.full(len(topo.rack_id) + 1, n_servers, np.int64)
        np.minimum.at(first_of_rack, topo.server_rack, index)
        rank = index - first_of_rack[topo.server_rack]
        self.plan_order = np.lexsort((index, topo.server_rack, rank, -prio)).astype(np.int32)
        # (PSU, ancestor) pairs, flattened once: the lower bound and the horizon sum over them
        k_idx, d_idx = np.nonzero(self.anc >= 0)
        self.pair_psu = k_idx.astype(np.int64)
        self.pair_node = self.anc[k_idx, d_idx]
        rid = self.ramp_of_node[self.pair_node]
        ramp = rid >= 0
        self.ramp_pair_psu = self.pair_psu[ramp]
        self.ramp_pair_id = rid[ramp].astype(np.int64)
        guarded = topo.inrush_guard_s[self.pair_node] > 0
        self.guard_pair_psu = self.pair_psu[guarded]
        self.guard_pair_node = self.pair_node[guarded]
        codes = topo.psu_phase[self.pair_psu]
        self.mag_pairs: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]] = []
        for pole in range(3):
            on_pole = ((codes == pole) | ((codes >= 3) & (codes <= 5)
                                          & (((codes - 3) == pole) | (((codes - 2) % 3) == pole)))
                       | (codes == 6))
            sel = on_pole & np.isfinite(self.mag_thr_a[self.pair_node, pole])
            self.mag_pairs.append((self.pair_psu[sel], self.pair_node[sel]))

    # -- helpers --------------------------------------------------------------------------
    def psu_known(self, state: PlanState) -> F64:
        return state.known_psu_on_s(self.topo.n_psus)

    def caps_now(self, state: PlanState) -> F64:
        return state.caps_now_w(self.topo)

    def psus_on_per_server(self, known: F64) -> npt.NDArray[np.int64]:
        return np.bincount(self.topo.psu_server, weights=np.isfinite(known),
                           minlength=self.topo.n_servers).astype(np.int64)


# --------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------
def allocation_arguments(context: PlannerContext, state: PlanState | None = None
                         ) -> dict[str, Any]:
    """The keyword arguments of :func:`kernels.caps.allocate_caps` for ``state``."""
    st = state or PlanState()
    topo = context.topo
    known = context.psu_known(st)
    on_count = context.psus_on_per_server(known)
    forced = on_count > 0
    floor = context.floor_w.copy()
    if forced.any():
        times = server_times_s(topo, known)
        now = st.now_s
        t_post, e3, e5 = times[:, 1], times[:, 3], times[:, 5]
        rest = np.zeros(topo.n_servers)
        rest = np.where(now < t_post, np.maximum(rest, topo.server_standby_w), rest)
        rest = np.where(now < e3, np.maximum(rest, topo.server_post_w), rest)
        rest = np.where(now < e5, np.maximum(rest, topo.server_boot_w), rest)
        floor = np.where(forced, rest, floor)
    limit = context.alloc_limit_a
    if st.background_a is not None:
        limit = limit - np.asarray(st.background_a, dtype=np.float64)
    zone_limit = context.zone_cap_w.copy()
    if st.zone_background_w is not None:
        zone_limit = zone_limit - np.asarray(st.zone_background_w, dtype=np.float64)
    eligible = np.ones(topo.n_servers, dtype=bool)
    if st.zone_hold is not None:
        eligible = ~np.asarray(st.zone_hold, dtype=bool)[topo.server_zone]
    return dict(
        parent_idx=topo.parent_idx, v_ln_v=topo.v_ln_v, limit_a=limit, psu_node=topo.psu_node,
        psu_phase=topo.psu_phase, psu_feed=topo.psu_feed, psu_on=np.isfinite(known),
        server_psu_start=context.server_psu_start, server_psu=context.server_psu,
        order=context.alloc_order, priority=topo.server_priority, forced=forced,
        eligible=eligible, server_pf=topo.server_pf, server_zone=topo.server_zone,
        floor_w=floor, standby_w=topo.server_standby_w, other_max_w=topo.server_other_max_w,
        gpus=topo.server_gpus, min_cap_w=topo.server_gpu_min_cap_w,
        max_cap_w=topo.server_gpu_max_w, max_w=topo.server_max_w, zone_limit_w=zone_limit,
    )


def allocate(context: PlannerContext, state: PlanState | None = None) -> tuple[
        F64, npt.NDArray[np.bool_]]:
    """The caps (W per GPU, (S,)) at which every admitted server fits at steady full load, and
    which servers are admitted (bool (S,)). See :mod:`kernels.caps`."""
    return allocate_caps(**allocation_arguments(context, state))


def lower_bound(
    context: PlannerContext,
    final_cap_w: F64,
    servers: npt.NDArray[np.bool_],
    state: PlanState | None = None,
) -> LowerBound:
    """The physical lower bound on the time to full power of ``servers`` (bool (S,)) at
    ``final_cap_w``, from ``state`` (absolute s), and the binding term:

    * boot: now + bmc_ready + post_max + boot_max of a server still off (its known t_first +
      the same for one already on), at worst-case durations as the makespan;

    A term with nothing left to do (no rise still needed, no PSU still off) does not count; with
    nothing left at all the bound is the boot term of the servers already on (0 for none).
    * ramp: at every ramp-limited node, (rise still needed / budget per window − 1) windows,
      the rise being its steady real power at the final caps minus its present upper envelope;
    * cooling: per zone, τ·(ΔP − D_max)/D_max: with the deficit D = P − Q at most D_max, the heat
      rises at most by D_max at once and by D_max/τ per second after that;
    * inrush: per guarded node (switch-ons still to come − 1)·guard; per breaker pole
      (⌈Σ inrush / threshold⌉ − 1)·inrush duration.
    """
    st = state or PlanState()
    topo = context.topo
    now = st.now_s
    known = context.psu_known(st)
    terms: dict[str, tuple[float, str | None]] = {}

    times = server_times_s(topo, known)
    has_first = np.isfinite(times[:, 0])
    start = np.where(has_first, times[:, 0], now)
    finish = np.where(servers, start + context.path_s, -np.inf)
    if servers.any():
        s = int(np.argmax(finish))
        terms["boot"] = (float(finish[s]), topo.server_id[s])
    else:
        terms["boot"] = (-np.inf, None)

    # present upper envelope and final steady power per server (W)
    if has_first.any():
        caps_now = context.caps_now(st)
        sched = Schedule("state", known, caps_now)
        present_w, _ = envelope_at(topo, sched, now)
    else:
        present_w = np.zeros(topo.n_servers)
    final_w = np.where(servers, work_power_w(topo, final_cap_w), present_w)
    n_total = np.bincount(topo.psu_server, minlength=topo.n_servers).astype(np.float64)
    alive_now = known <= now
    n_alive = np.bincount(topo.psu_server, weights=alive_now, minlength=topo.n_servers)
    n_ramp = context.ramp_nodes.shape[0]
    best_ramp: tuple[float, str | None] = (-np.inf, None)
    if n_ramp:
        share_final = (final_w / np.maximum(n_total, 1.0))[topo.psu_server]
        share_now = np.where(alive_now, (present_w / np.maximum(n_alive, 1.0))[topo.psu_server],
                             0.0)
        kp, rid = context.ramp_pair_psu, context.ramp_pair_id
        w_final = np.bincount(rid, weights=share_final[kp], minlength=n_ramp)
        w_now = np.bincount(rid, weights=share_now[kp], minlength=n_ramp)
        rise = np.maximum(w_final - w_now, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            need = np.where(rise > 0, (rise / context.ramp_budget_w - 1.0)
                            * context.settings.window_s, 0.0)
        need = np.maximum(np.nan_to_num(need, nan=0.0, posinf=0.0), 0.0)
        need = np.where(rise > 1e-9, need, -np.inf)
        r = int(np.argmax(need))
        if np.isfinite(need[r]):
            best_ramp = (now + float(need[r]), topo.node_id[context.ramp_nodes[r]])
    terms["ramp"] = best_ramp

    heat_final = np.bincount(topo.server_zone, weights=final_w, minlength=len(topo.zone_id))
    heat_now = np.bincount(topo.server_zone, weights=present_w, minlength=len(topo.zone_id))
    dmax = context.zone_dmax_w
    tau = topo.zone_response_tau_s
    with np.errstate(divide="ignore", invalid="ignore"):
        cool = np.where(dmax > 0, tau * (heat_final - heat_now - dmax) / dmax,
                        np.where(heat_final > heat_now, np.inf, 0.0))
    cool = np.maximum(np.nan_to_num(cool, nan=0.0), 0.0)
    cool = np.where(heat_final - heat_now > 1e-9, cool, -np.inf)
    z = int(np.argmax(cool))
    terms["cooling"] = ((now + float(cool[z]), topo.zone_id[z]) if np.isfinite(cool[z])
                        else (-np.inf, None))

    off = ~np.isfinite(known) & servers[topo.psu_server]
    inrush_t = 0.0
    inrush_where: str | None = None
    if off.any():
        sel = off[context.guard_pair_psu]
        count = np.bincount(context.guard_pair_node[sel], minlength=topo.n_nodes)
        guard_need = np.maximum(count - 1, 0) * topo.inrush_guard_s
        i = int(np.argmax(guard_need))
        if guard_need[i] > inrush_t:
            inrush_t, inrush_where = float(guard_need[i]), topo.node_id[i]
        d_min = float(context.psu_inrush_s[off].min())
        for pole, (kp, nodes) in enumerate(context.mag_pairs):
            sel = off[kp]
            amps = np.bincount(nodes[sel], weights=context.psu_inrush_a[kp[sel]],
                               minlength=topo.n_nodes)
            # a PSU alone may exceed the margined threshold (magnetic_alone_a)
            thr = np.maximum(context.mag_thr_a[:, pole], float(context.psu_inrush_a[off].max()))
            with np.errstate(divide="ignore", invalid="ignore"):
                groups = np.where(np.isfinite(thr) & (amps > 0), np.ceil(amps / thr - 1e-9), 1)
            need = (np.maximum(groups, 1) - 1) * d_min
            i = int(np.argmax(need))
            if need[i] > inrush_t:
                inrush_t, inrush_where = float(need[i]), topo.node_id[i]
    terms["inrush"] = (now + inrush_t, inrush_where) if off.any() else (-np.inf, None)

    binding = max(terms, key=lambda k: terms[k][0])
    total = terms[binding][0] if np.isfinite(terms[binding][0]) else 0.0
    return LowerBound(total_s=total, binding=binding,
                      binding_where=terms[binding][1],
                      terms_s={k: v[0] for k, v in terms.items() if np.isfinite(v[0])})


def background_from_measurement(
    topo: Topology, measured_a: F64, predicted_a: F64
) -> F64:
    """Load the plan does not explain, as the planner's ``background_a`` (3, n, 3) A.

    ``measured_a`` (n, 3) A holds the meters' readings (NaN where a node has no meter);
    ``predicted_a`` (n, 3) A the upper envelope the plan predicts for now (scenario 0 of
    :func:`controller.prediction.predicted_currents_a`). The excess over the prediction is
    carried up the tree (an unmetered node gets the sum of its children's excess, a metered one
    the larger of its own and that sum) and, as the excess's feed is unknown, counted twice
    after the loss of a feed (the load of a 2N server moves wholly onto the surviving side).
    """
    measured = np.asarray(measured_a, dtype=np.float64)
    excess = np.where(np.isfinite(measured), np.maximum(measured - predicted_a, 0.0), 0.0)
    up = np.zeros_like(excess)
    parent = topo.parent_idx
    for i in range(topo.n_nodes - 1, -1, -1):  # children first
        own = np.maximum(excess[i], up[i])
        up[i] = own
        if parent[i] >= 0:
            up[parent[i]] += own
    return np.stack([up, 2.0 * up, 2.0 * up])


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------
def plan(
    topo: Topology,
    strategy: str = "staged",
    *,
    settings: PlannerSettings | None = None,
    state: PlanState | None = None,
    context: PlannerContext | None = None,
) -> PlanResult:
    """Plan the bring-up of ``topo`` with ``strategy`` (one of :data:`STRATEGIES`).

    The staged plan starts from ``state`` (a fresh hall by default); the baselines plan a fresh
    hall only. ``plan_seconds`` covers the allocation, the scheduler, the schedule and the lower
    bound; building the context (once per hall) is in ``timings_s["context"]``.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if context is None:
        context = PlannerContext(topo, settings)
    elif context.topo is not topo:
        raise ValueError("context was built for another hall")
    timings["context"] = time.perf_counter() - t0
    s = context.settings
    st = state or PlanState()
    t1 = time.perf_counter()
    if strategy == "staged":
        result = _plan_staged(context, st, timings)
    else:
        if state is not None and state.psu_on_s is not None and np.isfinite(state.psu_on_s).any():
            raise ValueError("the baselines plan a hall that is still off")
        sched = baseline(topo, strategy, s.fixed_delay_s, s.fixed_rate_per_min)
        status = np.ones(topo.n_servers, np.int8)
        t_lb = time.perf_counter()
        lb = lower_bound(context, sched.final_cap_w(), np.ones(topo.n_servers, bool), st)
        timings["lower_bound"] = time.perf_counter() - t_lb
        result = (sched, sched.final_cap_w(), status, lb)
    sched, allocated, status, lb = result
    plan_s = time.perf_counter() - t1
    return PlanResult(
        strategy=strategy, schedule=sched, final_cap_w=sched.final_cap_w(),
        allocated_cap_w=allocated, status=status,
        makespan_s=schedule_makespan_s(topo, sched), lower_bound=lb, plan_seconds=plan_s,
        now_s=st.now_s, servers_on=int(np.isfinite(server_times_s(topo, sched.psu_on_s)[:, 0])
                                         .sum()),
        timings_s=timings,
    )


def staged_kernel_arguments(
    context: PlannerContext, state: PlanState, cap_f: F64, admitted: npt.NDArray[np.bool_]
) -> dict[str, Any]:
    """The keyword arguments of :func:`kernels.planner.plan_staged` for a plan from ``state``
    towards the caps ``cap_f`` of the ``admitted`` servers (see :func:`allocate`), with a first
    ``horizon_s`` estimate."""
    topo = context.topo
    s = context.settings
    st = state
    now = float(st.now_s)
    known = context.psu_known(st)
    on_count = context.psus_on_per_server(known)
    psus = np.bincount(topo.psu_server, minlength=topo.n_servers)
    fixed = (on_count == psus) & (psus > 0)
    energized = on_count > 0
    mode = np.full(topo.n_servers, MODE_EXCLUDED, np.int8)
    mode[admitted & ~fixed] = MODE_PLAN
    mode[fixed] = MODE_FIXED
    caps_now = context.caps_now(st)
    min_cap = topo.server_gpu_min_cap_w
    first_cap = np.where(energized, st.first_caps_w(topo), min_cap)
    work_first = work_power_w(topo, first_cap)
    work_now = work_power_w(topo, np.where(energized, caps_now, min_cap))
    work_final = work_power_w(topo, cap_f)
    h_t, h_s, h_c = st.past_cap_events()
    keep = energized[h_s]
    h_t, h_s, h_c = h_t[keep], h_s[keep], h_c[keep]
    h_order = np.lexsort((h_t, h_s))
    hist_start = np.zeros(topo.n_servers + 1, np.int32)
    hist_start[1:] = np.cumsum(np.bincount(h_s, minlength=topo.n_servers))
    hist_t = h_t[h_order]
    hist_w = work_power_w(topo, h_c[h_order], h_s[h_order])
    zone_hold = (np.zeros(len(topo.zone_id), bool) if st.zone_hold is None
                 else np.asarray(st.zone_hold, dtype=bool))
    t_base = now - max(s.lookback_s, s.window_s + s.ramp_sample_s + s.ramp_slot_s)
    horizon = _horizon_estimate(context, mode, work_first, work_final, now) + (now - t_base)
    return dict(
        parent_idx=topo.parent_idx, guard_s=topo.inrush_guard_s, mag_thr_a=context.mag_thr_a,
        mag_alone_a=context.mag_alone_a,
        ramp_of_node=context.ramp_of_node, ramp_budget_w=context.ramp_budget_w,
        psu_node=topo.psu_node, psu_phase=topo.psu_phase, psu_inrush_a=context.psu_inrush_a,
        psu_inrush_s=context.psu_inrush_s, psu_known_s=known,
        server_psu_start=context.server_psu_start, server_psu=context.server_psu,
        order=context.plan_order, priority=topo.server_priority, mode=mode,
        server_zone=topo.server_zone, psus_to_boot=topo.server_psus_to_boot,
        bmc_s=topo.server_bmc_ready_s, post_s=topo.server_post_s, boot_s=topo.server_boot_s,
        standby_w=topo.server_standby_w, post_w=topo.server_post_w, boot_w=topo.server_boot_w,
        work_first_w=work_first, work_now_w=work_now, work_final_w=work_final,
        hist_start=hist_start, hist_t_s=hist_t, hist_work_w=hist_w,
        zone_dmax_w=context.zone_dmax_w, zone_tau_s=topo.zone_response_tau_s,
        zone_hold=zone_hold, now_s=now, t_base_s=t_base, ramp_slot_s=s.ramp_slot_s,
        zone_slot_s=s.zone_slot_s, micro_s=context.micro_s,
        window_s=s.window_s + s.ramp_sample_s,
        horizon_s=horizon, max_events=4 * topo.n_servers + 64,
    )


def _plan_staged(
    context: PlannerContext, st: PlanState, timings: dict[str, float]
) -> tuple[Schedule, F64, npt.NDArray[np.int8], LowerBound]:
    topo = context.topo
    s = context.settings
    now = float(st.now_s)
    t_a = time.perf_counter()
    cap_f, admitted = allocate(context, st)
    timings["allocate"] = time.perf_counter() - t_a
    arrays = staged_kernel_arguments(context, st, cap_f, admitted)
    horizon = arrays.pop("horizon_s")
    max_events = arrays.pop("max_events")
    known = arrays["psu_known_s"]
    energized = context.psus_on_per_server(known) > 0
    caps_now = context.caps_now(st)
    first_cap = np.where(energized, st.first_caps_w(topo), topo.server_gpu_min_cap_w)
    work_final = arrays["work_final_w"]
    t_k = time.perf_counter()
    for attempt in range(s.max_horizon_doublings + 1):
        psu_on, ev_t, ev_s, ev_w, status = plan_staged(**arrays, horizon_s=horizon,
                                                       max_events=max_events)
        if not (status == STATUS_OVERFLOW).any() or attempt == s.max_horizon_doublings:
            break
        horizon *= 2.0
        max_events *= 2
    timings["schedule"] = time.perf_counter() - t_k
    timings["horizon_s"] = horizon
    held = arrays["zone_hold"][topo.server_zone] & (arrays["mode"] == MODE_EXCLUDED)
    status = np.where(held, STATUS_HELD, status).astype(np.int8)

    # the schedule: first caps, raises, and lowered caps of servers already on
    # the first cap is the one the scheduler assumed (work_first): a raise that did not fit
    # leaves the server at it; the past cap events stay in the schedule
    gpu_cap = first_cap
    placed = np.isfinite(psu_on).reshape(-1)
    server_placed = np.bincount(topo.psu_server, weights=placed, minlength=topo.n_servers) > 0
    past_t, past_s, past_c = st.past_cap_events()
    ev_t_l: list[F64] = [past_t, ev_t]
    ev_s_l: list[npt.NDArray[np.int64]] = [past_s.astype(np.int64), ev_s.astype(np.int64)]
    # a raise's work power back to a per-GPU cap (the last step of each server lands on cap_f)
    gpus = np.maximum(topo.server_gpus[ev_s], 1)
    cap_ev = np.clip((ev_w - topo.server_other_max_w[ev_s]) / gpus,
                     topo.server_gpu_min_cap_w[ev_s], topo.server_gpu_max_w[ev_s])
    cap_ev = np.where(ev_w >= work_final[ev_s], cap_f[ev_s], cap_ev)
    ev_c_l: list[F64] = [past_c, cap_ev]
    down = np.flatnonzero(energized & (cap_f < caps_now - 1e-9))
    ev_t_l.append(np.full(down.shape[0], now))
    ev_s_l.append(down)
    ev_c_l.append(cap_f[down])
    cap_t = np.concatenate(ev_t_l)
    order = np.argsort(cap_t, kind="stable")
    sched = Schedule(
        "staged", psu_on, gpu_cap, cap_t[order],
        np.concatenate(ev_s_l)[order].astype(np.int32), np.concatenate(ev_c_l)[order],
    )
    t_l = time.perf_counter()
    servers = server_placed | energized
    lb = lower_bound(context, sched.final_cap_w(), servers, st)
    timings["lower_bound"] = time.perf_counter() - t_l
    return sched, cap_f, status, lb


def _horizon_estimate(
    context: PlannerContext, mode: npt.NDArray[np.int8], work_first: F64, work_final: F64,
    now: float,
) -> float:
    """A horizon (s after now) long enough for the scheduler in all but contrived halls."""
    topo = context.topo
    new = mode == MODE_PLAN
    rises = (topo.server_standby_w + np.maximum(topo.server_post_w - topo.server_standby_w, 0)
             + np.maximum(work_first - topo.server_boot_w, 0)
             + np.maximum(work_final - work_first, 0))
    rises = rises + np.where(mode == MODE_FIXED, np.maximum(work_final - work_first, 0), 0.0)
    rises = np.where(new | (mode == MODE_FIXED), rises, 0.0)
    n_total = np.maximum(np.bincount(topo.psu_server, minlength=topo.n_servers), 1)
    serial = 0.0
    n_ramp = context.ramp_nodes.shape[0]
    if n_ramp:
        share = (rises / n_total)[topo.psu_server]
        per = np.bincount(context.ramp_pair_id, weights=share[context.ramp_pair_psu],
                          minlength=n_ramp)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = per / context.ramp_budget_w * context.settings.window_s * 1.2
        serial = max(serial, float(np.nan_to_num(t, posinf=0.0).max(initial=0.0)))
    zone_rise = np.bincount(topo.server_zone, weights=rises, minlength=len(topo.zone_id))
    with np.errstate(divide="ignore", invalid="ignore"):
        tz = zone_rise * topo.zone_response_tau_s / context.zone_dmax_w
    serial = max(serial, float(np.nan_to_num(tz, nan=0.0, posinf=0.0).max(initial=0.0)))
    if new.any():
        off = new[topo.psu_server]
        sel = off[context.guard_pair_psu]
        count = np.bincount(context.guard_pair_node[sel], minlength=topo.n_nodes)
        serial = max(serial, float((count * topo.inrush_guard_s).max(initial=0.0)))
        serial += float(context.path_s[new].max())
    path_fixed = float(context.path_s.max(initial=0.0))
    return 1.5 * serial + path_fixed + 60.0
