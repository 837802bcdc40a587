"""What a plan predicts: the worst-case load timeline of a :class:`~controller.schedule.Schedule`.

Every server follows the power profile of DESIGN.md once its outlets are on: standby from its
first powered PSU, POST once its BMC is ready and ``psus_to_boot`` PSUs are powered, then boot,
then work at the cap in force (a dry run starts work as soon as a server has booted). POST and
boot durations are ranges, so the prediction carries two envelopes per server: the *upper* one
(the largest power any realisation of the durations can draw at that moment) and the *lower*
one (the smallest). Every rule is judged on the upper envelope:

* continuous limits per node, pole and scenario (normal, feed A lost, feed B lost), against the
  continuous limit × (1 − admission margin);
* inrush: spacing under every node with an inrush guard, and the inrush currents switched at
  once per breaker pole against the magnetic threshold × magnetic margin;
* ramp and step at every node with a ramp limit or largest step: the largest rise of its real
  power within less than one window (1 s);
* cooling: zone heat against the capacity left after losing one unit (× (1 − margin)), and the
  cooling lag: the deficit D = P − Q (Q following P with the zone's response time) against
  :func:`zone_deficit_limit_w`.

:func:`predict` returns all of it (peaks, when they happen, violations); :func:`envelope_at` and
:func:`predicted_currents_a` give the band at one moment, which the controller compares with the
meters to notice that reality departs from the plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from controller.schedule import Schedule
from controller.topology import KIND_NAMES, Topology
from kernels import feed_loss_current_a
from kernels.planner import predict_plan

F64 = npt.NDArray[np.float64]
I32 = npt.NDArray[np.int32]

#: Relative slack of the violation checks (rounding, not engineering margin).
CHECK_RTOL = 1e-6

RULES = (
    "admission-margin",  # above continuous limit × (1 − admission margin)
    "continuous",        # above the continuous limit itself
    "ramp",
    "step",
    "inrush-spacing",
    "inrush-magnetic",
    "cooling-capacity",
    "cooling-lag",
)


@dataclass(frozen=True, slots=True)
class Violation:
    """One predicted breach of a rule at one node (or zone)."""

    node: str
    kind: str      # node kind, or "zone"
    rule: str      # one of RULES
    t_s: float     # when the peak happens (s from the start of the bring-up)
    peak: float    # the predicted value, in ``unit``
    limit: float   # the limit it is judged against, in ``unit``
    unit: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node, "kind": self.kind, "rule": self.rule,
            "t_s": _finite(self.t_s), "peak": _finite(self.peak), "limit": _finite(self.limit),
            "unit": self.unit,
        }


@dataclass(frozen=True)
class Prediction:
    """The worst-case timeline of one schedule, condensed to peaks and violations."""

    strategy: str
    peak_utilization: F64           # (n,) peak load / continuous limit, surviving scenarios
    peak_t_s: F64                   # (n,) when it was first reached
    peak_a: F64                     # (3, n, 3) A, highest load per row
    ramp_nodes: I32                 # (R,) node indices with a ramp limit or largest step
    ramp_rise_w: F64                # (R,) largest rise within one window, W
    ramp_rise_t_s: F64
    zone_peak_w: F64                # (Z,) highest heat incl. background, W
    zone_peak_t_s: F64
    zone_deficit_w: F64             # (Z,) highest cooling deficit, W
    zone_deficit_t_s: F64
    #: (n,) highest inrush sum of overlapping switch-ons / (magnetic threshold × margin), or of
    #: one alone / magnetic_alone_a
    inrush_x: F64
    inrush_spacing_s: F64           # (n,) smallest spacing under guarded nodes (inf: none)
    makespan_s: float               # time to full power at worst-case durations (inf: never)
    servers_on: int
    violations: list[Violation] = field(default_factory=list)

    def utilization_by_kind(self, topo: Topology) -> dict[str, float]:
        """Peak predicted utilization (load / continuous limit) of each node kind present."""
        out: dict[str, float] = {}
        for code, kind in enumerate(KIND_NAMES):
            nodes = topo.node_kind == code
            if nodes.any():
                out[kind] = float(self.peak_utilization[nodes].max())
        return out

    def violation_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for v in self.violations:
            counts[v.rule] = counts.get(v.rule, 0) + 1
        return counts


# --------------------------------------------------------------------------------------------
# Server timing and power
# --------------------------------------------------------------------------------------------
def work_power_w(topo: Topology, cap_w: F64, servers: Any = None) -> F64:
    """Working power W = min(other_max_w + gpus·cap, max_w) of each server (or of ``servers``)."""
    idx = slice(None) if servers is None else servers
    return np.minimum(topo.server_other_max_w[idx] + topo.server_gpus[idx] * cap_w,
                      topo.server_max_w[idx])


def server_times_s(topo: Topology, psu_on_s: F64) -> F64:
    """Per server (S, 6): [t_first, t_post, e2, e3, e4, e5] (s; +inf when never on).

    t_first is the first powered PSU, t_on the psus_to_boot-th; POST starts at
    t_post = max(t_first + bmc_ready_s, t_on); e2 = t_post + post_min (boot possible),
    e3 = t_post + post_max (POST over), e4 = t_post + (post_min + boot_min) (work possible),
    e5 = t_post + (post_max + boot_max) (work certain). The same float operations as the
    planner kernel, so that the planner's and the prediction's breakpoints are identical.
    """
    n_servers = topo.n_servers
    order = np.lexsort((psu_on_s, topo.psu_server))
    sorted_on = psu_on_s[order]
    first = np.searchsorted(topo.psu_server[order], np.arange(n_servers))
    t_first = np.full(n_servers, math.inf)
    has = topo.server_psus > 0
    t_first[has] = sorted_on[first[has]]
    need = np.clip(topo.server_psus_to_boot, 1, np.maximum(topo.server_psus, 1))
    t_on = np.full(n_servers, math.inf)
    t_on[has] = sorted_on[(first + need - 1)[has]]
    t_post = np.maximum(t_first + topo.server_bmc_ready_s, t_on)
    post = topo.server_post_s
    boot = topo.server_boot_s
    out = np.empty((n_servers, 6))
    out[:, 0] = t_first
    out[:, 1] = t_post
    out[:, 2] = t_post + post[:, 0]
    out[:, 3] = t_post + post[:, 1]
    out[:, 4] = t_post + (post[:, 0] + boot[:, 0])
    out[:, 5] = t_post + (post[:, 1] + boot[:, 1])
    return out


def cap_in_force_w(schedule: Schedule, t_s: float) -> F64:
    """The per-GPU cap each server works at, at time ``t_s`` (events at t_s included)."""
    caps = schedule.gpu_cap_w.copy()
    upto = np.searchsorted(schedule.cap_t_s, t_s, side="right")
    caps[schedule.cap_server[:upto]] = schedule.cap_w[:upto]
    return caps


def envelope_at(topo: Topology, schedule: Schedule, t_s: float) -> tuple[F64, F64]:
    """Upper and lower power envelope of every server at time ``t_s``: two (S,) arrays, W."""
    times = server_times_s(topo, schedule.psu_on_s)
    work = work_power_w(topo, cap_in_force_w(schedule, t_s))
    t_first, t_post, e2, e3, e4, e5 = times.T
    upper = np.zeros(topo.n_servers)
    lower = np.zeros(topo.n_servers)
    on = t_s >= t_first
    standby = on & (t_s < t_post)
    upper[standby] = lower[standby] = topo.server_standby_w[standby]
    running = on & ~standby
    post_ok = running & (t_s < e3)
    boot_ok = running & (t_s >= e2) & (t_s < e5)
    work_ok = running & (t_s >= e4)
    hi = np.full(topo.n_servers, -np.inf)
    lo = np.full(topo.n_servers, np.inf)
    for ok, p in ((post_ok, topo.server_post_w), (boot_ok, topo.server_boot_w), (work_ok, work)):
        hi = np.where(ok, np.maximum(hi, p), hi)
        lo = np.where(ok, np.minimum(lo, p), lo)
    upper[running] = np.maximum(hi[running], 0.0)
    lower[running] = np.where(np.isfinite(lo[running]), lo[running], 0.0)
    return upper, lower


def predicted_currents_a(
    topo: Topology, schedule: Schedule, t_s: float, background_a: F64 | None = None
) -> tuple[F64, F64]:
    """The band the meters should read at ``t_s``: (upper, lower) per-phase currents, (3, n, 3) A.

    Scenario 0 is what the meters see; 1 and 2 are the loads after the loss of feed A / B.
    A reading above ``upper[0]`` (or below ``lower[0]``) beyond the meters' accuracy means
    reality departs from the plan: re-plan from the measured state.
    """
    upper_w, lower_w = envelope_at(topo, schedule, t_s)
    alive = schedule.psu_on_s <= t_s
    args = (topo.server_pf, topo.psu_server, topo.psu_node, topo.psu_phase, topo.psu_feed,
            alive, topo.parent_idx, topo.v_ln_v)
    hi = feed_loss_current_a(upper_w, *args)
    lo = feed_loss_current_a(lower_w, *args)
    if background_a is not None:
        hi = hi + background_a
        lo = lo + background_a
    return hi, lo


def predicted_timeline(
    topo: Topology,
    schedule: Schedule,
    times_s: Any,
    nodes: Any = None,
    background_a: F64 | None = None,
) -> dict[str, F64]:
    """The predicted load of ``nodes`` (indices; default all) sampled at ``times_s`` (s):
    ``upper_a`` (T, 3, m, 3) A per scenario (normal, feed A lost, feed B lost), ``lower_a``
    (T, m, 3) A (normal), and ``utilization`` (T, m): the worst of upper load / continuous limit
    over present poles and the scenarios each node survives. For plots and for comparing a
    history of meter readings with the plan; :func:`predict` gives the exact peaks."""
    t = np.asarray(times_s, dtype=np.float64).reshape(-1)
    idx = np.arange(topo.n_nodes) if nodes is None else np.asarray(nodes, dtype=np.int64)
    upper = np.empty((t.shape[0], 3, idx.shape[0], 3))
    lower = np.empty((t.shape[0], idx.shape[0], 3))
    for j, tj in enumerate(t):
        hi, lo = predicted_currents_a(topo, schedule, float(tj), background_a)
        upper[j] = hi[:, idx]
        lower[j] = lo[0, idx]
    limit = topo.limit_a[idx]
    present = limit > 0
    ratio = np.where(present, upper / np.where(present, limit, 1.0), 0.0)
    feed = topo.node_feed[idx]
    ratio[:, 1, feed == 0] = 0.0  # a node is not judged when its own feed is lost
    ratio[:, 2, feed == 1] = 0.0
    return {"upper_a": upper, "lower_a": lower, "utilization": ratio.max(axis=(1, 3))}


def schedule_makespan_s(topo: Topology, schedule: Schedule) -> float:
    """Time to full power at worst-case durations: the first moment by which every server that the
    schedule switches on has all its PSUs on, is certainly working (e5) and has its last cap
    event behind it. +inf when a server never boots; 0 for an empty schedule."""
    times = server_times_s(topo, schedule.psu_on_s)
    on = np.isfinite(times[:, 0])
    if not on.any():
        return 0.0
    worst = float(times[on, 5].max())
    finite = schedule.psu_on_s[np.isfinite(schedule.psu_on_s)]
    worst = max(worst, float(finite.max()))
    if schedule.cap_t_s.size:
        worst = max(worst, float(schedule.cap_t_s[on[schedule.cap_server]].max(initial=0.0)))
    return worst


def magnetic_threshold_a(topo: Topology, magnetic_margin: float) -> F64:
    """(n, 3) A: the inrush current a breaker pole may see at once, magnetic_x (the controller's
    conservative trip assumption, ``trip_guard``) × rating × margin; +inf where there is no
    breaker or no such pole."""
    present = topo.rating_a > 0
    thr = topo.trip_guard.magnetic_x[:, None] * np.where(present, topo.rating_a, 1.0)
    return np.where(present, thr * magnetic_margin, np.inf)


def magnetic_alone_a(topo: Topology) -> F64:
    """(n, 3) A: the inrush current one PSU switched on alone may draw on a breaker pole:
    magnetic_x (``trip_guard``) × rating less the pole's continuous limit (the steady load it
    may already carry); +inf where there is no breaker or no such pole. The magnetic margin is
    for switch-ons that overlap, not for one alone (:func:`magnetic_threshold_a`)."""
    present = topo.rating_a > 0
    thr = topo.trip_guard.magnetic_x[:, None] * np.where(present, topo.rating_a, 1.0)
    return np.where(present, np.maximum(thr - topo.limit_a, 0.0), np.inf)


def zone_deficit_limit_w(topo: Topology) -> F64:
    """The cooling-lag limit of each zone, W: the heat the zone can take in during one cooling
    response time before its inlet would reach the hold threshold,

        D_max = C_eff · (T_hold − T_supply) / τ_cool,
        C_eff = C_air + C_mass · τ_cool / (τ_cool + τ_mass),

    C_mass being the equipment mass of the zone's installed IT (kJ/K per kW × Σ max power). The
    second term is the share of the equipment mass that couples to the air within τ_cool.
    """
    max_it_w = np.bincount(topo.server_zone, weights=topo.server_max_w,
                           minlength=len(topo.zone_id))
    tau = topo.zone_response_tau_s
    c_mass = topo.zone_mass_heat_capacity_j_per_k_per_w * max_it_w
    c_eff = (topo.zone_air_heat_capacity_j_per_k
             + c_mass * tau / (tau + topo.zone_mass_time_constant_s))
    dt_k = np.maximum(topo.zone_inlet_hold_c - topo.zone_supply_setpoint_c, 0.0)
    return c_eff * dt_k / tau


# --------------------------------------------------------------------------------------------
# The whole timeline
# --------------------------------------------------------------------------------------------
def ancestor_table(topo: Topology) -> npt.NDArray[np.int64]:
    """(K, D) the outlet of every PSU and its ancestors up to the root, padded with -1."""
    chain = [topo.psu_node.astype(np.int64)]
    parent = topo.parent_idx.astype(np.int64)
    while True:
        last = chain[-1]
        nxt = np.where(last >= 0, parent[np.maximum(last, 0)], -1)
        if (nxt < 0).all():
            break
        chain.append(nxt)
    return np.stack(chain, axis=1)


def ramp_nodes(topo: Topology) -> I32:
    """Nodes with a ramp limit or a largest load step."""
    return np.flatnonzero(np.isfinite(topo.ramp_limit_w_per_s)
                          | np.isfinite(topo.max_step_w)).astype(np.int32)


def prediction_arguments(
    topo: Topology,
    schedule: Schedule,
    *,
    window_s: float = 1.0,
    background_a: F64 | None = None,
    anc: npt.NDArray[np.int64] | None = None,
) -> dict[str, Any]:
    """The keyword arguments of :func:`kernels.planner.predict_plan` for ``schedule``: every PSU
    switch-on, every envelope breakpoint and every cap event, sorted by time."""
    n = topo.n_nodes
    n_servers = topo.n_servers
    times = server_times_s(topo, schedule.psu_on_s)
    first_work = work_power_w(topo, schedule.gpu_cap_w)
    cap_work = work_power_w(topo, schedule.cap_w, schedule.cap_server)
    on = np.isfinite(schedule.psu_on_s)
    ev_t: list[F64] = [schedule.psu_on_s[on], *(times[:, c] for c in range(1, 6)),
                       schedule.cap_t_s]
    ev_s: list[npt.NDArray[Any]] = [topo.psu_server[on],
                                    *(np.arange(n_servers) for _ in range(5)),
                                    schedule.cap_server]
    ev_c: list[npt.NDArray[Any]] = [np.full(int(on.sum()), -1),
                                    *(np.full(n_servers, -1) for _ in range(5)),
                                    np.arange(schedule.cap_t_s.shape[0])]
    t_all = np.concatenate(ev_t)
    s_all = np.concatenate(ev_s).astype(np.int32)
    c_all = np.concatenate(ev_c).astype(np.int32)
    keep = np.isfinite(t_all)
    t_all, s_all, c_all = t_all[keep], s_all[keep], c_all[keep]
    order = np.argsort(t_all, kind="stable")
    t_all, s_all, c_all = t_all[order], s_all[order], c_all[order]

    rn = ramp_nodes(topo)
    ramp_of_node = np.full(n, -1, np.int32)
    ramp_of_node[rn] = np.arange(rn.shape[0], dtype=np.int32)
    if anc is None:
        anc = ancestor_table(topo)
    ramp_anc = np.where(anc >= 0, ramp_of_node[np.maximum(anc, 0)], -1)
    per_psu = (ramp_anc >= 0).sum(axis=1)
    per_server = np.bincount(topo.psu_server, weights=per_psu, minlength=n_servers)
    log_capacity = int(per_server[s_all].sum()) + 1

    csr_order = np.argsort(topo.psu_server, kind="stable").astype(np.int32)
    start = np.zeros(n_servers + 1, np.int32)
    start[1:] = np.cumsum(np.bincount(topo.psu_server, minlength=n_servers))
    bg = np.zeros((3, n, 3)) if background_a is None else background_a
    return dict(
        parent_idx=topo.parent_idx, v_ln_v=topo.v_ln_v, node_feed=topo.node_feed,
        limit_a=topo.limit_a, ramp_of_node=ramp_of_node, n_ramp=rn.shape[0],
        psu_node=topo.psu_node, psu_phase=topo.psu_phase, psu_feed=topo.psu_feed,
        psu_on_s=schedule.psu_on_s, server_psu_start=start, server_psu=csr_order,
        server_pf=topo.server_pf, server_zone=topo.server_zone, server_times_s=times,
        standby_w=topo.server_standby_w, post_w=topo.server_post_w,
        boot_w=topo.server_boot_w, work_first_w=first_work, cap_work_w=cap_work,
        cap_server=schedule.cap_server, ev_t_s=t_all, ev_server=s_all, ev_cap=c_all,
        zone_tau_s=topo.zone_response_tau_s, background_a=bg, window_s=window_s,
        log_capacity=log_capacity,
    )


def predict(
    topo: Topology,
    schedule: Schedule,
    *,
    admission_margin: float = 0.02,
    magnetic_margin: float = 0.5,
    window_s: float = 1.0,
    background_a: F64 | None = None,
    zone_background_w: F64 | None = None,
    anc: npt.NDArray[np.int64] | None = None,
) -> Prediction:
    """Predict the worst-case timeline of ``schedule`` and list every rule it would break."""
    if anc is None:
        anc = ancestor_table(topo)
    args = prediction_arguments(topo, schedule, window_s=window_s, background_a=background_a,
                                anc=anc)
    out = predict_plan(**args)
    times = args["server_times_s"]
    zone_bg = np.zeros(len(topo.zone_id)) if zone_background_w is None else zone_background_w
    zone_peak = out["zone_peak_w"] + zone_bg
    inrush_x, spacing = _inrush(topo, schedule.psu_on_s, magnetic_margin, anc)
    pred = Prediction(
        strategy=schedule.strategy,
        peak_utilization=out["peak_u"], peak_t_s=out["peak_t_s"], peak_a=out["peak_a"],
        ramp_nodes=ramp_nodes(topo), ramp_rise_w=out["ramp_rise_w"],
        ramp_rise_t_s=out["ramp_rise_t_s"],
        zone_peak_w=zone_peak, zone_peak_t_s=out["zone_peak_t_s"],
        zone_deficit_w=out["zone_deficit_w"], zone_deficit_t_s=out["zone_deficit_t_s"],
        inrush_x=inrush_x, inrush_spacing_s=spacing,
        makespan_s=schedule_makespan_s(topo, schedule),
        servers_on=int(np.isfinite(times[:, 0]).sum()),
    )
    pred.violations.extend(_violations(topo, pred, admission_margin, window_s))
    return pred


def _inrush(
    topo: Topology, psu_on_s: F64, magnetic_margin: float, anc: npt.NDArray[np.int64]
) -> tuple[F64, F64]:
    """Per node: the highest inrush sum over (magnetic threshold × margin) on any pole, and the
    smallest spacing between two switch-ons below it where it has an inrush guard."""
    n = topo.n_nodes
    inrush_x = np.zeros(n)
    spacing = np.full(n, np.inf)
    on = np.isfinite(psu_on_s)
    if not on.any():
        return inrush_x, spacing
    k_idx = np.flatnonzero(on)
    a = anc[k_idx]
    t = np.broadcast_to(psu_on_s[k_idx, None], a.shape)
    valid = a >= 0
    nodes = a[valid]
    times = t[valid]
    # spacing under guarded nodes
    g = topo.inrush_guard_s[nodes] > 0
    if g.any():
        gn, gt = nodes[g], times[g]
        o = np.lexsort((gt, gn))
        gn, gt = gn[o], gt[o]
        same = gn[1:] == gn[:-1]
        diffs = np.diff(gt)[same]
        np.minimum.at(spacing, gn[1:][same], diffs)
    # magnetic: inrush currents starting within one inrush duration, per breaker pole
    current = topo.server_inrush_peak_a[topo.psu_server[k_idx]] / math.sqrt(2.0)
    dur = float(topo.server_inrush_duration_s.max()) if topo.n_servers else 0.0
    thr = magnetic_threshold_a(topo, magnetic_margin)
    alone = magnetic_alone_a(topo)
    codes = topo.psu_phase[k_idx]
    for pole in range(3):
        on_pole = ((codes == pole) | ((codes >= 3) & (codes <= 5)
                                      & (((codes - 3) == pole) | (((codes - 2) % 3) == pole)))
                   | (codes == 6))
        rows = np.broadcast_to(on_pole[:, None], a.shape) & valid
        pn = a[rows]
        pt = t[rows]
        pc = np.broadcast_to(current[:, None], a.shape)[rows]
        fin = np.isfinite(thr[pn, pole])
        pn, pt, pc = pn[fin], pt[fin], pc[fin]
        if pn.size == 0:
            continue
        # overlapping switch-ons against threshold × margin, one alone against its own limit
        together = _window_sums(pn, pt, np.ones_like(pc), dur) > 1.5
        ratio = np.where(together, _window_sums(pn, pt, pc, dur) / thr[pn, pole], 0.0)
        ratio = np.maximum(ratio, pc / alone[pn, pole])
        np.maximum.at(inrush_x, pn, ratio)
    return inrush_x, spacing


def _window_sums(group: npt.NDArray[Any], t: F64, c: F64, dur_s: float) -> F64:
    """For each entry i: Σ c_j over the entries j of its group with t_i − dur_s < t_j <= t_i
    (switch-ons whose inrush overlaps the start of i's; exactly dur_s apart do not overlap)."""
    _, dense = np.unique(group, return_inverse=True)
    dense = dense.reshape(-1)
    o = np.lexsort((t, dense))
    g, ts, cs = dense[o].astype(np.float64), t[o], c[o]
    band = float(ts.max() - ts.min()) + 2.0 * dur_s + 1.0
    lifted = (ts - ts.min()) + g * band
    tol = max(dur_s * 1e-3, 1e-9)
    lo = np.searchsorted(lifted, lifted - dur_s + tol, side="left")
    hi = np.searchsorted(lifted, lifted, side="right")
    csum = np.concatenate(([0.0], np.cumsum(cs)))
    sums = np.empty_like(cs)
    sums[o] = csum[hi] - csum[lo]
    return sums


def _violations(
    topo: Topology, pred: Prediction, admission_margin: float, window_s: float
) -> list[Violation]:
    out: list[Violation] = []
    u = pred.peak_utilization
    level = 1.0 - admission_margin
    for i in np.flatnonzero(u > level * (1 + CHECK_RTOL)):
        rule = "continuous" if u[i] > 1.0 + CHECK_RTOL else "admission-margin"
        out.append(Violation(topo.node_id[i], KIND_NAMES[topo.node_kind[i]], rule,
                             float(pred.peak_t_s[i]), float(u[i]), level, "utilization"))
    for j, i in enumerate(pred.ramp_nodes):
        rise = float(pred.ramp_rise_w[j])
        ramp = float(topo.ramp_limit_w_per_s[i]) * window_s
        step = float(topo.max_step_w[i])
        kind = KIND_NAMES[topo.node_kind[i]]
        if rise > ramp * (1 + CHECK_RTOL) + 1e-6:
            out.append(Violation(topo.node_id[i], kind, "ramp", float(pred.ramp_rise_t_s[j]),
                                 rise, ramp, "W per window"))
        if rise > step * (1 + CHECK_RTOL) + 1e-6:
            out.append(Violation(topo.node_id[i], kind, "step", float(pred.ramp_rise_t_s[j]),
                                 rise, step, "W"))
    for i in np.flatnonzero(pred.inrush_x > 1.0 + CHECK_RTOL):
        out.append(Violation(topo.node_id[i], KIND_NAMES[topo.node_kind[i]], "inrush-magnetic",
                             math.nan, float(pred.inrush_x[i]), 1.0, "x threshold"))
    guard = topo.inrush_guard_s
    for i in np.flatnonzero(pred.inrush_spacing_s < guard - 1e-9):
        out.append(Violation(topo.node_id[i], KIND_NAMES[topo.node_kind[i]], "inrush-spacing",
                             math.nan, float(pred.inrush_spacing_s[i]), float(guard[i]), "s"))
    cap = topo.zone_capacity_n1_w * (1.0 - admission_margin)
    dmax = zone_deficit_limit_w(topo)
    for z, zone in enumerate(topo.zone_id):
        if pred.zone_peak_w[z] > cap[z] * (1 + CHECK_RTOL) + 1e-6:
            out.append(Violation(zone, "zone", "cooling-capacity", float(pred.zone_peak_t_s[z]),
                                 float(pred.zone_peak_w[z]), float(cap[z]), "W"))
        if pred.zone_deficit_w[z] > dmax[z] * (1 + CHECK_RTOL) + 1e-6:
            out.append(Violation(zone, "zone", "cooling-lag", float(pred.zone_deficit_t_s[z]),
                                 float(pred.zone_deficit_w[z]), float(dmax[z]), "W"))
    return out


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
