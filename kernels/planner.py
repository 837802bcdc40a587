"""The ramp planner and the prediction of a plan: staged switch-on times and cap raises that keep
every source, UPS, breaker and cooling zone within its limits, and the worst-case load timeline a
plan predicts.

**Server power envelope.** A server's power after its outlets are switched is uncertain because
the POST and boot durations are ranges. With absolute times (computed once, the same way by the
planner and the prediction, so that comparisons are exact)

    t_first  first PSU powered             t_post = max(t_first + bmc_ready, t_on)
    t_on     psus_to_boot-th PSU powered   e2 = t_post + post_min    e3 = t_post + post_max
                                           e4 = t_post + (post_min + boot_min)
                                           e5 = t_post + (post_max + boot_max)

the server may be: in POST for t_post <= t < e3, booting for e2 <= t < e5, working for t >= e4
(it starts its work at the cap in force as soon as it has booted). Before t_post it draws its
standby power (from t_first). The *upper envelope* is the largest power of the states possible
at t, the *lower envelope* the smallest: every realisation of the durations lies between them.
Working power is W = min(other_max_w + gpus·cap, max_w), the cap being the one in force at t.

**Rules checked on the upper envelope** (docs/planner.md): the continuous limits (guaranteed by
:mod:`kernels.caps`); inrush (PSU switch-ons on a grid of ``micro_s``, the longest inrush
duration, so that two PSUs overlap only on the same grid point; spacing under every node with an
inrush guard; per pole and breaker the inrush currents switched at one grid point at most the
magnetic threshold × margin); ramp (the rises of a source's or UPS's real power within any
window shorter than ``window_s`` at most min(ramp limit × window, largest step)); cooling lag
(the deficit D = P − Q of a zone, Q following the zone heat P with a first-order lag τ, at most
``zone_dmax_w``).

The planner counts rises only (a fall never pays for a rise), puts each rise into a ramp
sub-slot of ``ramp_slot_s`` and checks every run of round(window/slot) + 1 consecutive
sub-slots, and for the zones moves each rise to the end of its ``zone_slot_s`` slot and keeps
the deficit at slot ends below zone_dmax·exp(−slot/τ): every shortcut errs on the safe side of
the exact check that :func:`predict_plan` makes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from kernels import _checks
from kernels._jit import (
    F64,
    I64,
    IN_BOOL_1,
    IN_F64_1,
    IN_F64_2,
    IN_F64_3,
    IN_I8_1,
    IN_I32_1,
    OUT_F64_1,
    OUT_F64_2,
    OUT_F64_3,
    OUT_I8_1,
    OUT_I32_1,
    kernel,
)
from kernels.caps import _server_psus

__all__ = [
    "MODE_EXCLUDED",
    "MODE_FIXED",
    "MODE_PLAN",
    "STATUS_FIXED",
    "STATUS_HELD",
    "STATUS_NAMES",
    "STATUS_OFF",
    "STATUS_OVERFLOW",
    "STATUS_PLACED",
    "STATUS_UNPLACEABLE",
    "envelope_w",
    "plan_staged",
    "predict_plan",
]

#: Server modes given to the planner: plan its switch-on; keep it (all PSUs already on); leave
#: it off (the cap allocation did not admit it).
MODE_PLAN, MODE_FIXED, MODE_EXCLUDED = 0, 1, 2
#: Server outcomes of the planner.
STATUS_OFF = 0          # left off (excluded)
STATUS_PLACED = 1       # switch-on planned
STATUS_FIXED = 2        # already on; only its cap is planned
STATUS_UNPLACEABLE = 3  # one of its own steps exceeds a limit by itself: never safe
STATUS_OVERFLOW = 4     # did not fit within the planning horizon
STATUS_HELD = 5         # its cooling zone is on hold (rule 4): no new heat
STATUS_NAMES = ("off", "placed", "fixed", "unplaceable", "overflow", "held")

#: Most ramp-limited ancestors of one server, most PSUs of one server.
_MAX_RAMP = 32
_MAX_PSUS = 64
#: Relative tolerance of the planner's budget checks.
_TOL = 1e-9

_INV_SQRT3 = 1.0 / math.sqrt(3.0)
_THIRD = 1.0 / 3.0

FloatArray = npt.NDArray[np.float64]


# --------------------------------------------------------------------------- kernels


@kernel(F64, F64, F64, F64, F64, F64, F64, F64, F64, F64, F64, OUT_F64_1)
def _envelope_into(
    t_s, t_first_s, t_post_s, e2_s, e3_s, e4_s, e5_s, standby_w, post_w, boot_w, work_w, out_w
):
    """Upper and lower power envelope of one server at time t_s (right-continuous).

    0 before t_first_s; standby_w for t_first_s <= t < t_post_s; then the largest (out_w[0])
    and smallest (out_w[1]) power among the states possible at t: POST (post_w) while
    t < e3_s, boot (boot_w) while e2_s <= t < e5_s, work (work_w) from e4_s on.

    Units: t_s, t_first_s, t_post_s, e2_s ... e5_s s (absolute); standby_w, post_w, boot_w,
    work_w W; out_w (2,) W, written in place.
    """
    if not t_s >= t_first_s:
        out_w[0] = 0.0
        out_w[1] = 0.0
        return
    if t_s < t_post_s:
        out_w[0] = standby_w
        out_w[1] = standby_w
        return
    hi = -1.0
    lo = np.inf
    if t_s < e3_s:
        hi = max(hi, post_w)
        lo = min(lo, post_w)
    if e2_s <= t_s < e5_s:
        hi = max(hi, boot_w)
        lo = min(lo, boot_w)
    if t_s >= e4_s:
        hi = max(hi, work_w)
        lo = min(lo, work_w)
    if hi < 0.0:  # no state possible: cannot happen with e2 <= e3, e4 <= e5, e2 <= e4
        hi = 0.0
        lo = 0.0
    out_w[0] = hi
    out_w[1] = lo


@kernel(OUT_F64_2, OUT_F64_2, OUT_F64_2, I64, I64, F64)
def _zone_suffix_add(out_g, out_block_add, out_block_min, zone, k, c):
    """Add c to the zone's budget values G[zone, u] for every slot u >= k (sqrt decomposition).

    G is stored as out_g[zone, u] + out_block_add[zone, b] for slot u of block b (blocks of
    ceil(H / nb) slots); out_block_min[zone, b] holds the block's minimum. Units: G and c in
    W·exp(slot·dt/τ) (see _plan_staged_into).
    """
    h = out_g.shape[1]
    nb = out_block_add.shape[1]
    size = (h + nb - 1) // nb
    b = k // size
    end = min((b + 1) * size, h)
    for u in range(k, end):
        out_g[zone, u] += c
    mn = np.inf
    for u in range(b * size, end):
        if out_g[zone, u] < mn:
            mn = out_g[zone, u]
    out_block_min[zone, b] = mn + out_block_add[zone, b]
    for bb in range(b + 1, nb):
        out_block_add[zone, bb] += c
        out_block_min[zone, bb] += c


@kernel(OUT_F64_2, OUT_F64_2, OUT_F64_2, I64, I64, OUT_F64_1)
def _zone_suffix_min(out_g, out_block_add, out_block_min, zone, k, out_min):
    """Minimum of the zone's budget values G[zone, u] over u >= k into out_min[0].

    Layout as in _zone_suffix_add (nothing is written but out_min). Units: W·exp(slot·dt/τ).
    """
    h = out_g.shape[1]
    nb = out_block_add.shape[1]
    size = (h + nb - 1) // nb
    b = k // size
    end = min((b + 1) * size, h)
    mn = np.inf
    for u in range(k, end):
        if out_g[zone, u] < mn:
            mn = out_g[zone, u]
    mn += out_block_add[zone, b]
    for bb in range(b + 1, nb):
        if out_block_min[zone, bb] < mn:
            mn = out_block_min[zone, bb]
    out_min[0] = mn


@kernel(
    IN_I32_1, IN_F64_1, IN_F64_2, IN_F64_2, IN_I32_1, IN_F64_1,
    IN_I32_1, IN_I8_1, IN_F64_1, IN_F64_1, IN_F64_1, IN_I32_1, IN_I32_1,
    IN_I32_1, IN_I32_1, IN_I8_1, IN_I32_1, IN_I32_1, IN_F64_1, IN_F64_2, IN_F64_2,
    IN_F64_1, IN_F64_1, IN_F64_1, IN_F64_1, IN_F64_1, IN_F64_1,
    IN_I32_1, IN_F64_1, IN_F64_1,
    IN_F64_1, IN_F64_1, IN_BOOL_1,
    F64, F64, F64, F64, F64, F64,
    OUT_F64_2, OUT_F64_2, OUT_F64_2, OUT_F64_2,
    OUT_F64_1, OUT_F64_1, OUT_I32_1, OUT_F64_1, OUT_I32_1, OUT_I8_1,
)  # fmt: skip
def _plan_staged_into(
    parent_idx,
    guard_s,
    mag_thr_a,
    mag_alone_a,
    ramp_of_node,
    ramp_budget_w,
    psu_node,
    psu_phase,
    psu_inrush_a,
    psu_inrush_s,
    psu_known_s,
    server_psu_start,
    server_psu,
    order,
    priority,
    mode,
    server_zone,
    psus_to_boot,
    bmc_s,
    post_s,
    boot_s,
    standby_w,
    post_w,
    boot_w,
    work_first_w,
    work_now_w,
    work_final_w,
    hist_start,
    hist_t_s,
    hist_work_w,
    zone_dmax_w,
    zone_tau_s,
    zone_hold,
    now_s,
    t_base_s,
    ramp_slot_s,
    zone_slot_s,
    micro_s,
    window_s,
    scratch_ramp_w,
    scratch_zone_g,
    scratch_zone_add,
    scratch_zone_min,
    out_psu_on_s,
    out_ev_t_s,
    out_ev_server,
    out_ev_work_w,
    out_ev_count,
    out_status,
):
    """Greedy list scheduling of switch-ons (priority order) and cap raises on budgets.

    Servers of mode MODE_FIXED (every PSU on at psu_known_s) are committed first: their envelope
    rises enter the budgets, working at work_first_w and then at the work powers of their cap
    history (hist_t_s, hist_work_w for hist_start[s] <= h < hist_start[s + 1], sorted, before
    now_s; servers partly on use theirs too). Then
    the MODE_PLAN servers in ``order``: each starts at t0 = max(now_s, the latest start of a
    higher priority, the latest start under its ramp nodes and zone) and is shifted by
    ramp_slot_s until every rise of its upper envelope fits:

    - every PSU on by t_post (POST start), unless some were on already (a partly energized
      server is completed as soon as the inrush rules allow);
    - PSU switch times on the grid m·micro_s: at least last + guard_s after the previous
      switch-on under every node with a guard; under a breaker (mag_thr_a finite) only on the
      breaker's latest grid point or later, with Σ psu_inrush_a per pole at one grid point
      <= mag_thr_a when two or more PSUs share the grid point, and each psu_inrush_a <=
      mag_alone_a (a PSU alone may exceed mag_thr_a, the margined threshold);
    - ramp: a rise x (W, real power share n_r/n of the envelope jump) at sub-slot
      σ = floor((t − t_base_s)/ramp_slot_s + 1e-9) fits when every run of nw = round(window_s /
      ramp_slot_s) + 1 consecutive sub-slots containing σ keeps Σ x <= ramp_budget_w;
    - cooling: a rise x in zone slot k = floor((t − t_base_s)/zone_slot_s), counted at the
      slot's end, fits when D(k') = Σ x_j·exp(−(k' − k_j)·slot/τ') <= D' for all k' >= k,
      D' = zone_dmax_w·exp(−slot/τ'), τ' = max(τ, H·slot/600). Kept as
      G(k') = (D' − D(k'))·exp(k'·slot/τ') with suffix adds and suffix minima. The certain
      falls of the envelope (POST over, boot over) count too (only where τ' = τ): a fall in
      slot k from slot k + 1 on, as if at the end of slot k and reduced by exp(−2·slot/τ),
      so that the model never falls further than the real deficit.

    Rises before now_s are committed without checks; rises before t_base_s do not enter the ramp
    sub-slots and enter the zones as an initial deficit. Once every switch-on is placed, the work
    power of each server is raised from work_now_w to work_final_w by cap events, each at the
    earliest time >= e4 (and >= now_s, and >= the previous raise under the same ramp nodes and
    zone) where its rise fits, in steps no larger than one window's budget. A server whose zone
    is on hold is neither placed nor raised.

    Units: guard_s (n,) s; mag_thr_a, mag_alone_a (n, 3) A (+inf: none); ramp_budget_w (R,)
    W per window;
    psu_inrush_a (K,) A (peak/√2); psu_inrush_s (K,) s; psu_known_s (K,) s (+inf: off);
    bmc_s (S,) s; post_s, boot_s (S, 2) s [min, max]; *_w (S,) W; hist_t_s (H,) s;
    hist_work_w (H,) W; zone_dmax_w (Z,) W;
    zone_tau_s (Z,) s; scalars in s. scratch_ramp_w (R, Hr) W; scratch_zone_g (Z, Hz),
    scratch_zone_add, scratch_zone_min (Z, nb) W·exp(k·slot/τ'). out_psu_on_s (K,) s (+inf:
    stays off); out_ev_t_s (E,) s, out_ev_server (E,), out_ev_work_w (E,) W: the raises
    (work power from then on), out_ev_count[0] of them; out_status (S,) int8 STATUS_*.
    """
    n_nodes = parent_idx.shape[0]
    n_psus = psu_node.shape[0]
    n_servers = order.shape[0]
    n_ramp = ramp_budget_w.shape[0]
    n_zones = zone_dmax_w.shape[0]
    h_ramp = scratch_ramp_w.shape[1]
    h_zone = scratch_zone_g.shape[1]
    nb = scratch_zone_add.shape[1]
    nw = round(window_s / ramp_slot_s) + 1

    # ---- budgets --------------------------------------------------------------------------
    scratch_ramp_w[:, :] = 0.0
    tau_eff = np.empty(n_zones)
    d_eff = np.empty(n_zones)
    for z in range(n_zones):
        tau_eff[z] = max(zone_tau_s[z], h_zone * zone_slot_s / 600.0)
        d_eff[z] = zone_dmax_w[z] * math.exp(-zone_slot_s / tau_eff[z])
        for u in range(h_zone):
            scratch_zone_g[z, u] = d_eff[z] * math.exp(u * zone_slot_s / tau_eff[z])
        size = (h_zone + nb - 1) // nb
        for b in range(nb):
            scratch_zone_add[z, b] = 0.0
            mn = np.inf
            for u in range(b * size, min((b + 1) * size, h_zone)):
                if scratch_zone_g[z, u] < mn:
                    mn = scratch_zone_g[z, u]
            scratch_zone_min[z, b] = mn

    # ---- inrush cursors from the PSUs already on -------------------------------------------
    last_on = np.full(n_nodes, -np.inf)
    mag_slot = np.full(n_nodes, -(2**62), np.int64)
    mag_sum = np.zeros((n_nodes, 3))
    d_max = 0.0
    for k in range(n_psus):
        out_psu_on_s[k] = psu_known_s[k]
        if psu_inrush_s[k] > d_max:
            d_max = psu_inrush_s[k]
    for k in range(n_psus):
        t_k = psu_known_s[k]
        if t_k < np.inf:
            free = math.ceil((t_k + d_max) / micro_s - 1e-9)
            a = psu_node[k]
            while a >= 0:
                if t_k > last_on[a]:
                    last_on[a] = t_k
                if free > mag_slot[a]:
                    mag_slot[a] = free
                    mag_sum[a, 0] = 0.0
                    mag_sum[a, 1] = 0.0
                    mag_sum[a, 2] = 0.0
                a = parent_idx[a]

    # ---- per-server scratch ---------------------------------------------------------------
    t_psu = np.empty(_MAX_PSUS)
    k_psu = np.empty(_MAX_PSUS, np.int64)
    member = np.zeros((_MAX_PSUS, _MAX_RAMP), np.bool_)
    rid = np.empty(_MAX_RAMP, np.int64)
    n_on_r = np.empty(_MAX_RAMP, np.int64)
    n_prev_r = np.empty(_MAX_RAMP, np.int64)
    max_hist = 0
    for s in range(n_servers):
        if hist_start[s + 1] - hist_start[s] > max_hist:
            max_hist = hist_start[s + 1] - hist_start[s]
    max_rise = (_MAX_PSUS + 8 + max_hist) * (_MAX_RAMP + 1) + 8
    rise_t = np.empty(max_rise)
    rise_tgt = np.empty(max_rise, np.int64)  # ramp index r, or -1 - zone
    rise_x = np.empty(max_rise)
    undo_kind = np.empty(max_rise, np.int64)
    undo_a = np.empty(max_rise, np.int64)
    undo_b = np.empty(max_rise, np.int64)
    undo_x = np.empty(max_rise)
    cur_a = np.empty(_MAX_PSUS * 64, np.int64)
    cur_last = np.empty(_MAX_PSUS * 64)
    cur_slot = np.empty(_MAX_PSUS * 64, np.int64)
    cur_sum = np.empty((_MAX_PSUS * 64, 3))
    bps = np.empty(_MAX_PSUS + 8)
    env = np.empty(2)
    smin = np.empty(1)
    hint_r = np.full(max(n_ramp, 1), -np.inf)
    hint_z = np.full(n_zones, -np.inf)
    rhint_r = np.full(max(n_ramp, 1), -np.inf)
    rhint_z = np.full(n_zones, -np.inf)
    for s in range(n_servers):
        out_status[s] = STATUS_OFF
    n_ev = 0
    # after ``quiet`` nothing placed so far constrains a new server any more: a server that still
    # does not fit some time after it conflicts with itself and never will
    guard_max = 0.0
    for i in range(n_nodes):
        if guard_s[i] > guard_max:
            guard_max = guard_s[i]
    tau_max = 0.0
    for z in range(n_zones):
        if tau_eff[z] > tau_max:
            tau_max = tau_eff[z]
    settle = 10.0 * tau_max + 2.0 * window_s + 1.0
    quiet = now_s

    class_lb = -np.inf
    class_next = -np.inf
    cur_prio = 0
    first_plan = True
    srv_t = np.full((n_servers, 6), np.inf)
    for phase in range(3):
        # 0: servers already on; 1: switch-ons in priority order; 2: cap raises
        for j in range(n_servers):
            s = order[j]
            # phase 0 also commits the partly-on servers whose POST is certain (psus_to_boot
            # PSUs on): they are completed as soon as the inrush rules allow, in a zone on hold
            # too (no heat added); and, as they are, the partly-on servers of a zone on hold
            complete = False
            if phase == 0 and mode[s] != MODE_FIXED:
                n_known = 0
                for q in range(server_psu_start[s], server_psu_start[s + 1]):
                    if psu_known_s[server_psu[q]] < np.inf:
                        n_known += 1
                ptb = min(max(psus_to_boot[s], 1), server_psu_start[s + 1] - server_psu_start[s])
                complete = n_known >= ptb and mode[s] == MODE_PLAN
                if n_known == 0 or not (complete or zone_hold[server_zone[s]]):
                    continue
            if phase == 1 and (mode[s] != MODE_PLAN or out_status[s] != STATUS_OFF):
                continue
            if phase == 2 and not (
                (out_status[s] == STATUS_PLACED or out_status[s] == STATUS_FIXED)
                and work_final_w[s] > work_now_w[s] and not zone_hold[server_zone[s]]
            ):
                continue
            z = server_zone[s]
            if phase == 1:
                if first_plan or priority[s] != cur_prio:
                    if not first_plan:
                        class_lb = max(class_lb, class_next)
                    cur_prio = priority[s]
                    first_plan = False
                if zone_hold[z]:
                    out_status[s] = STATUS_HELD
                    continue
            q0 = server_psu_start[s]
            m = server_psu_start[s + 1] - q0
            if m == 0 or m > _MAX_PSUS:
                out_status[s] = STATUS_UNPLACEABLE
                continue
            # ramp ancestors of the server and which PSUs hang below each
            nr = 0
            too_many = False
            for jj in range(m):
                k = server_psu[q0 + jj]
                k_psu[jj] = k
                for r_local in range(_MAX_RAMP):
                    member[jj, r_local] = False
                a = psu_node[k]
                while a >= 0:
                    r = ramp_of_node[a]
                    if r >= 0:
                        found = -1
                        for x in range(nr):
                            if rid[x] == r:
                                found = x
                        if found < 0:
                            if nr == _MAX_RAMP:
                                too_many = True
                                break
                            rid[nr] = r
                            found = nr
                            nr += 1
                        member[jj, found] = True
                    a = parent_idx[a]
            if too_many:
                out_status[s] = STATUS_UNPLACEABLE
                continue
            if phase == 2:
                # -- the cap raise, once every switch-on is placed -------------------
                t_first = srv_t[s, 0]
                t_post = srv_t[s, 1]
                e2 = srv_t[s, 2]
                e3 = srv_t[s, 3]
                e4 = srv_t[s, 4]
                e5 = srv_t[s, 5]
                for jj in range(m):
                    t_psu[jj] = out_psu_on_s[k_psu[jj]]
                t_limit = t_base_s + h_ramp * ramp_slot_s
                # every PSU is on by e4 (>= t_post >= the last PSU): shares are the final ones
                for x in range(nr):
                    n_on_r[x] = 0
                    for jj in range(m):
                        if member[jj, x]:
                            n_on_r[x] += 1
                # the largest raise one cap event may carry on its own
                step_w = d_eff[z]
                for x in range(nr):
                    if n_on_r[x] > 0:
                        lim = ramp_budget_w[rid[x]] * m / n_on_r[x]
                        if lim < step_w:
                            step_w = lim
                step_w *= 1.0 - 1e-6
                w_cur = work_now_w[s]
                tr = max(now_s, e4)
                for x in range(nr):
                    tr = max(tr, rhint_r[rid[x]])
                tr = max(tr, rhint_z[z])
                while w_cur < work_final_w[s] and step_w > 0.0:
                    w_next = min(work_final_w[s], w_cur + step_w)
                    raised = False
                    while tr <= t_limit:
                        _envelope_into(tr, t_first, t_post, e2, e3, e4, e5, standby_w[s],
                                       post_w[s], boot_w[s], w_cur, env)
                        u_old = env[0]
                        _envelope_into(tr, t_first, t_post, e2, e3, e4, e5, standby_w[s],
                                       post_w[s], boot_w[s], w_next, env)
                        du = env[0] - u_old
                        n_rise = 0
                        if du > 0.0:
                            rise_t[n_rise] = tr
                            rise_tgt[n_rise] = -1 - z
                            rise_x[n_rise] = du
                            n_rise += 1
                            for x in range(nr):
                                c = du * n_on_r[x] / m
                                if c > 0.0:
                                    rise_t[n_rise] = tr
                                    rise_tgt[n_rise] = rid[x]
                                    rise_x[n_rise] = c
                                    n_rise += 1
                        n_undo = 0
                        fail = 0
                        fail_k = 0
                        for i in range(n_rise):
                            tgt = rise_tgt[i]
                            x = rise_x[i]
                            if tgt >= 0:
                                sig = math.floor((tr - t_base_s) / ramp_slot_s + 1e-9)
                                if sig >= h_ramp:
                                    fail = 3
                                    break
                                w_lo = max(0, sig - nw + 1)
                                worst = 0.0
                                for w in range(w_lo, sig + 1):
                                    if scratch_ramp_w[tgt, w] > worst:
                                        worst = scratch_ramp_w[tgt, w]
                                if worst + x > ramp_budget_w[tgt] * (1.0 + _TOL) + 1e-9:
                                    fail = 1
                                    break
                                for w in range(w_lo, sig + 1):
                                    scratch_ramp_w[tgt, w] += x
                                undo_kind[n_undo] = 0
                                undo_a[n_undo] = tgt
                                undo_b[n_undo] = sig
                                undo_x[n_undo] = x
                                n_undo += 1
                            else:
                                zz = -1 - tgt
                                kk = math.floor((tr - t_base_s) / zone_slot_s)
                                if kk >= h_zone:
                                    fail = 3
                                    break
                                need = x * math.exp(kk * zone_slot_s / tau_eff[zz])
                                _zone_suffix_min(scratch_zone_g, scratch_zone_add,
                                                 scratch_zone_min, zz, kk, smin)
                                scale = d_eff[zz] * math.exp(kk * zone_slot_s / tau_eff[zz])
                                if need > smin[0] + _TOL * scale + 1e-9:
                                    fail = 2
                                    fail_k = kk
                                    break
                                _zone_suffix_add(scratch_zone_g, scratch_zone_add,
                                                 scratch_zone_min, zz, kk, -need)
                                undo_kind[n_undo] = 1
                                undo_a[n_undo] = zz
                                undo_b[n_undo] = kk
                                undo_x[n_undo] = need
                                n_undo += 1
                        if fail == 0:
                            raised = True
                            break
                        for i in range(n_undo - 1, -1, -1):
                            if undo_kind[i] == 0:
                                sig = undo_b[i]
                                for w in range(max(0, sig - nw + 1), sig + 1):
                                    scratch_ramp_w[undo_a[i], w] -= undo_x[i]
                            else:
                                _zone_suffix_add(scratch_zone_g, scratch_zone_add,
                                                 scratch_zone_min, undo_a[i], undo_b[i],
                                                 undo_x[i])
                        if fail == 3:
                            break
                        step = ramp_slot_s
                        if fail == 2:
                            to_next = t_base_s + (fail_k + 1) * zone_slot_s - tr
                            if to_next > step:
                                step = to_next
                        tr += step
                    if not raised or n_ev >= out_ev_t_s.shape[0]:
                        if raised:  # no room to record it: take it back
                            for i in range(n_undo - 1, -1, -1):
                                if undo_kind[i] == 0:
                                    sig = undo_b[i]
                                    for w in range(max(0, sig - nw + 1), sig + 1):
                                        scratch_ramp_w[undo_a[i], w] -= undo_x[i]
                                else:
                                    _zone_suffix_add(scratch_zone_g, scratch_zone_add,
                                                     scratch_zone_min, undo_a[i], undo_b[i],
                                                     undo_x[i])
                        out_status[s] = STATUS_OVERFLOW
                        break
                    if tr > quiet:
                        quiet = tr
                    out_ev_t_s[n_ev] = tr
                    out_ev_server[n_ev] = s
                    out_ev_work_w[n_ev] = w_next
                    n_ev += 1
                    w_cur = w_next
                    for x in range(nr):
                        if tr > rhint_r[rid[x]]:
                            rhint_r[rid[x]] = tr
                    if tr > rhint_z[z]:
                        rhint_z[z] = tr
                continue
            # a PSU whose inrush alone trips a breaker can never be switched on
            impossible = False
            for jj in range(m):
                k = k_psu[jj]
                if psu_known_s[k] < np.inf:
                    continue
                code = psu_phase[k]
                a = psu_node[k]
                while a >= 0:
                    for p in range(3):
                        on_pole = p == code if code <= 2 else (
                            (p == code - 3 or p == (code - 2) % 3) if code <= 5 else True)
                        if on_pole and psu_inrush_a[k] > mag_alone_a[a, p]:
                            impossible = True
                    a = parent_idx[a]
            if impossible and phase == 0:
                complete = False  # kept as it is
            elif impossible:
                out_status[s] = STATUS_UNPLACEABLE
                continue

            partial = False
            for jj in range(m):
                if psu_known_s[k_psu[jj]] < np.inf:
                    partial = True
            t0 = now_s
            if phase == 1:
                t0 = max(t0, class_lb)
                for x in range(nr):
                    t0 = max(t0, hint_r[rid[x]])
                t0 = max(t0, hint_z[z])
            t_limit = t_base_s + h_ramp * ramp_slot_s
            placed = False
            status = STATUS_OVERFLOW
            while True:
                if t0 > t_limit:
                    break
                if phase == 1 and t0 > quiet + settle:
                    status = STATUS_UNPLACEABLE
                    break
                # -- tentative PSU times (cursor changes logged for a rollback) --------------
                n_cur = 0
                for jj in range(m):
                    k = k_psu[jj]
                    if psu_known_s[k] < np.inf or (phase == 0 and not complete):
                        t_psu[jj] = psu_known_s[k]  # +inf: stays off
                        continue
                    code = psu_phase[k]
                    slot = math.ceil(t0 / micro_s - 1e-9)
                    while slot * micro_s < now_s:  # never before now
                        slot += 1
                    changed = True
                    while changed:
                        changed = False
                        a = psu_node[k]
                        while a >= 0:
                            if guard_s[a] > 0.0 and last_on[a] > -np.inf:
                                need = math.ceil((last_on[a] + guard_s[a]) / micro_s - 1e-9)
                                if need > slot:
                                    slot = need
                                    changed = True
                            has_mag = False
                            for p in range(3):
                                if mag_thr_a[a, p] < np.inf:
                                    has_mag = True
                            if has_mag:
                                if slot < mag_slot[a]:
                                    slot = mag_slot[a]
                                    changed = True
                                if slot == mag_slot[a]:
                                    over = False
                                    for p in range(3):
                                        on_pole = p == code if code <= 2 else (
                                            (p == code - 3 or p == (code - 2) % 3)
                                            if code <= 5 else True)
                                        # the margin is for overlapping
                                        # switch-ons; one alone up to mag_alone_a
                                        if on_pole and (
                                                (mag_sum[a, p] > 0.0 and mag_sum[a, p]
                                                 + psu_inrush_a[k] > mag_thr_a[a, p])
                                                or psu_inrush_a[k] > mag_alone_a[a, p]):
                                            over = True
                                    if over:
                                        slot += 1
                                        changed = True
                            a = parent_idx[a]
                    t_k = slot * micro_s
                    t_psu[jj] = t_k
                    a = psu_node[k]
                    while a >= 0:
                        cur_a[n_cur] = a
                        cur_last[n_cur] = last_on[a]
                        cur_slot[n_cur] = mag_slot[a]
                        cur_sum[n_cur, 0] = mag_sum[a, 0]
                        cur_sum[n_cur, 1] = mag_sum[a, 1]
                        cur_sum[n_cur, 2] = mag_sum[a, 2]
                        n_cur += 1
                        if guard_s[a] > 0.0 and t_k > last_on[a]:
                            last_on[a] = t_k
                        if slot > mag_slot[a]:
                            mag_slot[a] = slot
                            mag_sum[a, 0] = 0.0
                            mag_sum[a, 1] = 0.0
                            mag_sum[a, 2] = 0.0
                        if slot == mag_slot[a]:
                            for p in range(3):
                                on_pole = p == code if code <= 2 else (
                                    (p == code - 3 or p == (code - 2) % 3) if code <= 5 else True)
                                if on_pole:
                                    mag_sum[a, p] += psu_inrush_a[k]
                        a = parent_idx[a]
                # -- envelope breakpoints ----------------------------------------------------
                t_first = np.inf
                for jj in range(m):
                    if t_psu[jj] < t_first:
                        t_first = t_psu[jj]
                # psus_to_boot-th smallest PSU time
                for jj in range(m):
                    bps[jj] = t_psu[jj]
                for a1 in range(1, m):
                    v = bps[a1]
                    b1 = a1 - 1
                    while b1 >= 0 and bps[b1] > v:
                        bps[b1 + 1] = bps[b1]
                        b1 -= 1
                    bps[b1 + 1] = v
                ptb = psus_to_boot[s]
                if ptb > m:
                    ptb = m
                if ptb < 1:
                    ptb = 1
                t_on = bps[ptb - 1]
                t_post = max(t_first + bmc_s[s], t_on)
                e2 = t_post + post_s[s, 0]
                e3 = t_post + post_s[s, 1]
                e4 = t_post + (post_s[s, 0] + boot_s[s, 0])
                e5 = t_post + (post_s[s, 1] + boot_s[s, 1])
                nbp = m
                bps[nbp] = t_post
                bps[nbp + 1] = e2
                bps[nbp + 2] = e3
                bps[nbp + 3] = e4
                bps[nbp + 4] = e5
                nbp += 5
                for a1 in range(1, nbp):
                    v = bps[a1]
                    b1 = a1 - 1
                    while b1 >= 0 and bps[b1] > v:
                        bps[b1 + 1] = bps[b1]
                        b1 -= 1
                    bps[b1 + 1] = v
                # every PSU must be on before POST starts, so that only the standby power is
                # ever carried by fewer PSUs than the server has (kernels.caps counts it)
                t_last = -np.inf
                for jj in range(m):
                    if t_last < t_psu[jj] < np.inf:
                        t_last = t_psu[jj]
                spread_fail = phase == 1 and t_last > t_post and not partial
                # -- rises of the upper envelope at the zone and at each ramp node -----------
                # At each breakpoint the jump is taken with the work power in force then (a
                # server already on may have cap changes in hist_*); each cap change of the
                # history adds its own jump below. A jump is split only where a breakpoint and
                # a cap change coincide, and falls are never counted: both err on the safe side.
                h0 = hist_start[s]
                h1 = hist_start[s + 1]
                n_rise = 0
                last_t = -np.inf
                n_prev = 0
                for x in range(nr):
                    n_prev_r[x] = 0
                for ib in range(nbp):
                    t = bps[ib]
                    if t == last_t or spread_fail or t == np.inf:  # inf: a PSU that stays off
                        continue
                    w_t = work_first_w[s]
                    for h in range(h0, h1):
                        if hist_t_s[h] <= t:
                            w_t = hist_work_w[h]
                    n_on = 0
                    for x in range(nr):
                        n_on_r[x] = 0
                    for jj in range(m):
                        if t_psu[jj] <= t:
                            n_on += 1
                            for x in range(nr):
                                if member[jj, x]:
                                    n_on_r[x] += 1
                    _envelope_into(t, t_first, t_post, e2, e3, e4, e5, standby_w[s],
                                   post_w[s], boot_w[s], w_t, env)
                    u = env[0]
                    prev_u = 0.0
                    if last_t > -np.inf:
                        _envelope_into(last_t, t_first, t_post, e2, e3, e4, e5, standby_w[s],
                                       post_w[s], boot_w[s], w_t, env)
                        prev_u = env[0]
                    # the zone also counts the envelope's certain falls: not those after e4
                    # when a cap raise is to come (it may take them away)
                    if u > prev_u or (u < prev_u and not (
                            t > e4 and work_final_w[s] > work_now_w[s])):
                        rise_t[n_rise] = t
                        rise_tgt[n_rise] = -1 - z
                        rise_x[n_rise] = u - prev_u
                        n_rise += 1
                    for x in range(nr):
                        c = u * n_on_r[x] / n_on if n_on > 0 else 0.0
                        c_prev = prev_u * n_prev_r[x] / n_prev if n_prev > 0 else 0.0
                        if c > c_prev:
                            rise_t[n_rise] = t
                            rise_tgt[n_rise] = rid[x]
                            rise_x[n_rise] = c - c_prev
                            n_rise += 1
                        n_prev_r[x] = n_on_r[x]
                    n_prev = n_on
                    last_t = t
                w_before = work_first_w[s]
                for h in range(h0, h1):
                    if spread_fail:
                        break
                    t = hist_t_s[h]
                    _envelope_into(t, t_first, t_post, e2, e3, e4, e5, standby_w[s],
                                   post_w[s], boot_w[s], hist_work_w[h], env)
                    du = env[0]
                    _envelope_into(t, t_first, t_post, e2, e3, e4, e5, standby_w[s],
                                   post_w[s], boot_w[s], w_before, env)
                    du -= env[0]
                    w_before = hist_work_w[h]
                    if du <= 0.0:
                        continue
                    n_on = 0
                    for x in range(nr):
                        n_on_r[x] = 0
                    for jj in range(m):
                        if t_psu[jj] <= t:
                            n_on += 1
                            for x in range(nr):
                                if member[jj, x]:
                                    n_on_r[x] += 1
                    rise_t[n_rise] = t
                    rise_tgt[n_rise] = -1 - z
                    rise_x[n_rise] = du
                    n_rise += 1
                    for x in range(nr):
                        c = du * n_on_r[x] / n_on if n_on > 0 else 0.0
                        if c > 0.0:
                            rise_t[n_rise] = t
                            rise_tgt[n_rise] = rid[x]
                            rise_x[n_rise] = c
                            n_rise += 1
                # -- check and commit the rises one by one -----------------------------------
                n_undo = 0
                fail = 1 if spread_fail else 0  # 0 ok, 1 ramp/spread, 2 zone, 3 horizon, 4 never
                fail_t = 0.0
                fail_k = 0
                # falls of the zone heat first (they only make room), then the rises in order.
                # A fall at t in slot k counts from slot k + 1 on, as if at the end of slot k
                # and reduced by exp(−2·slot/τ): never more than the real fall (docs/planner.md)
                for i in range(n_rise):
                    if rise_x[i] >= 0.0 or fail != 0:
                        continue
                    zz = -1 - rise_tgt[i]
                    kk = math.floor((rise_t[i] - t_base_s) / zone_slot_s)
                    if kk < 0 or kk + 1 >= h_zone or tau_eff[zz] != zone_tau_s[zz]:
                        continue
                    c = -rise_x[i] * math.exp(-2.0 * zone_slot_s / tau_eff[zz]) * math.exp(
                        kk * zone_slot_s / tau_eff[zz])
                    kk += 1
                    _zone_suffix_add(scratch_zone_g, scratch_zone_add, scratch_zone_min,
                                     zz, kk, c)
                    undo_kind[n_undo] = 1
                    undo_a[n_undo] = zz
                    undo_b[n_undo] = kk
                    undo_x[n_undo] = -c
                    n_undo += 1
                for i in range(n_rise):
                    t = rise_t[i]
                    tgt = rise_tgt[i]
                    x = rise_x[i]
                    if x < 0.0:
                        continue
                    check = t >= now_s and phase == 1
                    if tgt >= 0:
                        sig = math.floor((t - t_base_s) / ramp_slot_s + 1e-9)
                        if sig < 0:
                            continue
                        if sig >= h_ramp:
                            fail = 3
                            break
                        w_lo = max(0, sig - nw + 1)
                        if check:
                            if x > ramp_budget_w[tgt] * (1.0 + _TOL) + 1e-9:
                                fail = 4
                                break
                            worst = 0.0
                            for w in range(w_lo, sig + 1):
                                if scratch_ramp_w[tgt, w] > worst:
                                    worst = scratch_ramp_w[tgt, w]
                            if worst + x > ramp_budget_w[tgt] * (1.0 + _TOL) + 1e-9:
                                fail = 1
                                fail_t = t
                                break
                        for w in range(w_lo, sig + 1):
                            scratch_ramp_w[tgt, w] += x
                        undo_kind[n_undo] = 0
                        undo_a[n_undo] = tgt
                        undo_b[n_undo] = sig
                        undo_x[n_undo] = x
                        n_undo += 1
                    else:
                        zz = -1 - tgt
                        kk = math.floor((t - t_base_s) / zone_slot_s)
                        if kk >= h_zone:
                            fail = 3
                            break
                        if kk < 0:
                            c0 = x * math.exp(-(t_base_s - t) / tau_eff[zz]) * math.exp(
                                -zone_slot_s / tau_eff[zz])
                            _zone_suffix_add(scratch_zone_g, scratch_zone_add, scratch_zone_min,
                                             zz, 0, -c0)
                            undo_kind[n_undo] = 1
                            undo_a[n_undo] = zz
                            undo_b[n_undo] = 0
                            undo_x[n_undo] = c0
                            n_undo += 1
                            continue
                        need = x * math.exp(kk * zone_slot_s / tau_eff[zz])
                        if check:
                            if x > d_eff[zz] * (1.0 + _TOL) + 1e-9:
                                fail = 4
                                break
                            _zone_suffix_min(scratch_zone_g, scratch_zone_add, scratch_zone_min,
                                             zz, kk, smin)
                            scale = d_eff[zz] * math.exp(kk * zone_slot_s / tau_eff[zz])
                            if need > smin[0] + _TOL * scale + 1e-9:
                                fail = 2
                                fail_t = t
                                fail_k = kk
                                break
                        _zone_suffix_add(scratch_zone_g, scratch_zone_add, scratch_zone_min,
                                         zz, kk, -need)
                        undo_kind[n_undo] = 1
                        undo_a[n_undo] = zz
                        undo_b[n_undo] = kk
                        undo_x[n_undo] = need
                        n_undo += 1
                if fail == 0:
                    placed = True
                    for i in range(n_rise):
                        if rise_t[i] > quiet:
                            quiet = rise_t[i]
                    if t_last + guard_max + micro_s > quiet:
                        quiet = t_last + guard_max + micro_s
                    for jj in range(m):
                        out_psu_on_s[k_psu[jj]] = t_psu[jj]
                    if phase == 1:
                        for x in range(nr):
                            if t0 > hint_r[rid[x]]:
                                hint_r[rid[x]] = t0
                        if t0 > hint_z[z]:
                            hint_z[z] = t0
                        if t_first > class_next:
                            class_next = t_first
                    break
                # roll back the rises and the cursors
                for i in range(n_undo - 1, -1, -1):
                    if undo_kind[i] == 0:
                        sig = undo_b[i]
                        for w in range(max(0, sig - nw + 1), sig + 1):
                            scratch_ramp_w[undo_a[i], w] -= undo_x[i]
                    else:
                        _zone_suffix_add(scratch_zone_g, scratch_zone_add, scratch_zone_min,
                                         undo_a[i], undo_b[i], undo_x[i])
                for i in range(n_cur - 1, -1, -1):
                    a = cur_a[i]
                    last_on[a] = cur_last[i]
                    mag_slot[a] = cur_slot[i]
                    mag_sum[a, 0] = cur_sum[i, 0]
                    mag_sum[a, 1] = cur_sum[i, 1]
                    mag_sum[a, 2] = cur_sum[i, 2]
                if fail == 3 or phase == 0:
                    break
                if fail == 4:
                    status = STATUS_UNPLACEABLE
                    break
                step = ramp_slot_s
                if fail == 2:
                    to_next = t_base_s + (fail_k + 1) * zone_slot_s - fail_t
                    if to_next > step:
                        step = to_next
                if t0 > quiet and 0.05 * (t0 - quiet) > step:
                    # nothing placed constrains it any more: only decay and its own steps
                    step = 0.05 * (t0 - quiet)
                t0 += step
            if not placed:
                out_status[s] = status
                continue
            if mode[s] == MODE_FIXED:
                out_status[s] = STATUS_FIXED
            elif zone_hold[z]:
                out_status[s] = STATUS_HELD  # partly on, as it is or completed
            else:
                out_status[s] = STATUS_PLACED
            srv_t[s, 0] = t_first
            srv_t[s, 1] = t_post
            srv_t[s, 2] = e2
            srv_t[s, 3] = e3
            srv_t[s, 4] = e4
            srv_t[s, 5] = e5
    out_ev_count[0] = n_ev


@kernel(
    IN_I32_1, IN_F64_1, IN_I8_1, IN_F64_2, IN_I32_1,
    IN_I32_1, IN_I8_1, IN_I8_1, IN_F64_1, IN_I32_1, IN_I32_1,
    IN_F64_1, IN_I32_1, IN_F64_2, IN_F64_1, IN_F64_1, IN_F64_1, IN_F64_1,
    IN_F64_1, IN_I32_1, IN_F64_1, IN_I32_1, IN_I32_1,
    IN_F64_1, IN_F64_3, F64,
    OUT_F64_3, OUT_F64_1, OUT_I32_1, OUT_F64_1,
    OUT_F64_3, OUT_F64_1, OUT_F64_1, OUT_F64_1, OUT_F64_1,
    OUT_F64_1, OUT_F64_1, OUT_F64_1, OUT_F64_1,
)  # fmt: skip
def _predict_into(
    parent_idx,
    v_ln_v,
    node_feed,
    limit_a,
    ramp_of_node,
    psu_node,
    psu_phase,
    psu_feed,
    psu_on_s,
    server_psu_start,
    server_psu,
    server_pf,
    server_zone,
    server_times_s,
    standby_w,
    post_w,
    boot_w,
    work_first_w,
    cap_work_w,
    cap_server,
    ev_t_s,
    ev_server,
    ev_cap,
    zone_tau_s,
    background_a,
    window_s,
    scratch_load_a,
    scratch_log_t_s,
    scratch_log_ramp,
    scratch_log_w,
    out_peak_a,
    out_peak_u,
    out_peak_t_s,
    out_ramp_rise_w,
    out_ramp_rise_t_s,
    out_zone_peak_w,
    out_zone_peak_t_s,
    out_zone_deficit_w,
    out_zone_deficit_t_s,
):
    """Worst-case (upper envelope) load timeline of a plan, event by event.

    Events (ev_t_s sorted, ev_server, ev_cap: index of a cap event or -1) are processed in
    groups of equal time: cap events first set the server's work power (cap_work_w), then each
    server of the group is evaluated at t: its upper envelope u (server_times_s rows are
    [t_first, t_post, e2, e3, e4, e5]) shared by its PSUs with psu_on_s <= t, per scenario by
    the survivors (as in kernels.headroom); the change of its per-pole current is added to
    every ancestor of each PSU's outlet, starting from background_a. After each group:

    - out_peak_a (3, n, 3) A: the highest load of every row; out_peak_u (n,) 1 and
      out_peak_t_s (n,) s: the highest load / limit_a over present poles and the scenarios the
      node survives (load on a pole with limit 0: +inf), and when it was first reached;
    - the real power (W, normal scenario) of every ramp node (ramp_of_node >= 0) is logged;
      out_ramp_rise_w (R,) W is the largest increase within less than window_s
      (value after a group minus the smallest value just before a group inside the window),
      out_ramp_rise_t_s when it ended;
    - zone heat (W, every server's u) and its cooling deficit D, D(t) = D(t')·exp(−(t − t')/τ)
      + jump: out_zone_peak_w / out_zone_deficit_w (Z,) W the highest values, *_t_s when.

    Units: v_ln_v (n,) V; limit_a (n, 3) A; psu_on_s (K,) s; server_times_s (S, 6) s;
    *_w (S,) W; cap_work_w (E,) W; zone_tau_s (Z,) s; background_a (3, n, 3) A; window_s s.
    scratch_load_a (3, n, 3) A; scratch_log_* (L,) (time s, ramp index, power W), L at least
    the number of ramp-node updates.
    """
    n_nodes = parent_idx.shape[0]
    n_servers = server_pf.shape[0]
    n_psus = psu_node.shape[0]
    n_ramp = out_ramp_rise_w.shape[0]
    n_zones = zone_tau_s.shape[0]
    n_ev = ev_t_s.shape[0]
    scratch_load_a[:, :, :] = background_a
    out_peak_a[:, :, :] = background_a
    for i in range(n_nodes):
        out_peak_u[i] = 0.0
        out_peak_t_s[i] = -np.inf
        feed = node_feed[i]
        for sc in range(3):
            if (sc == 1 and feed == 0) or (sc == 2 and feed == 1):
                continue
            for p in range(3):
                lim = limit_a[i, p]
                load = background_a[sc, i, p]
                uu = load / lim if lim > 0.0 else (np.inf if load > 1e-9 else 0.0)
                if uu > out_peak_u[i]:
                    out_peak_u[i] = uu
    p_cur = np.zeros(n_servers)
    work_cur = np.empty(n_servers)
    for s in range(n_servers):
        work_cur[s] = work_first_w[s]
    alive_cur = np.zeros(n_psus, np.bool_)
    ramp_val = np.zeros(max(n_ramp, 1))
    ramp_stamp = np.full(max(n_ramp, 1), -1, np.int64)
    zone_heat = np.zeros(n_zones)
    zone_def = np.zeros(n_zones)
    zone_t = np.full(n_zones, -np.inf)
    zone_jump = np.zeros(n_zones)
    zone_stamp = np.full(n_zones, -1, np.int64)
    for z in range(n_zones):
        out_zone_peak_w[z] = 0.0
        out_zone_peak_t_s[z] = -np.inf
        out_zone_deficit_w[z] = 0.0
        out_zone_deficit_t_s[z] = -np.inf
    node_stamp = np.full(n_nodes, -1, np.int64)
    touched = np.empty(n_nodes, np.int64)
    ramp_touched = np.empty(max(n_ramp, 1), np.int64)
    zone_touched = np.empty(n_zones, np.int64)
    server_stamp = np.full(n_servers, -1, np.int64)
    env = np.empty(2)
    n_old = np.zeros(3, np.int64)
    n_new = np.zeros(3, np.int64)
    n_log = 0
    gid = 0
    g = 0
    while g < n_ev:
        t = ev_t_s[g]
        g_end = g
        while g_end < n_ev and ev_t_s[g_end] == t:
            g_end += 1
        n_touched = 0
        n_rt = 0
        n_zt = 0
        for i in range(g, g_end):
            e = ev_cap[i]
            if e >= 0:
                work_cur[cap_server[e]] = cap_work_w[e]
        for i in range(g, g_end):
            s = ev_server[i]
            if server_stamp[s] == gid:
                continue
            server_stamp[s] = gid
            _envelope_into(t, server_times_s[s, 0], server_times_s[s, 1], server_times_s[s, 2],
                           server_times_s[s, 3], server_times_s[s, 4], server_times_s[s, 5],
                           standby_w[s], post_w[s], boot_w[s], work_cur[s], env)
            u = env[0]
            for sc in range(3):
                n_old[sc] = 0
                n_new[sc] = 0
            for q in range(server_psu_start[s], server_psu_start[s + 1]):
                k = server_psu[q]
                new_alive = psu_on_s[k] <= t
                for sc in range(3):
                    if psu_feed[k] == sc - 1:
                        continue
                    if alive_cur[k]:
                        n_old[sc] += 1
                    if new_alive:
                        n_new[sc] += 1
            for q in range(server_psu_start[s], server_psu_start[s + 1]):
                k = server_psu[q]
                new_alive = psu_on_s[k] <= t
                code = psu_phase[k]
                for sc in range(3):
                    if psu_feed[k] == sc - 1:
                        continue
                    old_va = p_cur[s] / server_pf[s] / n_old[sc] if alive_cur[k] else 0.0
                    new_va = u / server_pf[s] / n_new[sc] if new_alive else 0.0
                    d_va = new_va - old_va
                    d_w = 0.0
                    if sc == 0:
                        old_w = p_cur[s] / n_old[0] if alive_cur[k] else 0.0
                        new_w = u / n_new[0] if new_alive else 0.0
                        d_w = new_w - old_w
                    if d_va == 0.0 and d_w == 0.0:
                        continue
                    a = psu_node[k]
                    while a >= 0:
                        inv = d_va / v_ln_v[a]
                        if code <= 2:
                            scratch_load_a[sc, a, code] += inv
                        elif code <= 5:
                            c3 = code - 3
                            scratch_load_a[sc, a, c3] += inv * _INV_SQRT3
                            scratch_load_a[sc, a, (c3 + 1) % 3] += inv * _INV_SQRT3
                        else:
                            for p in range(3):
                                scratch_load_a[sc, a, p] += inv * _THIRD
                        if node_stamp[a] != gid:
                            node_stamp[a] = gid
                            touched[n_touched] = a
                            n_touched += 1
                        if sc == 0:
                            r = ramp_of_node[a]
                            if r >= 0:
                                ramp_val[r] += d_w
                                if ramp_stamp[r] != gid:
                                    ramp_stamp[r] = gid
                                    ramp_touched[n_rt] = r
                                    n_rt += 1
                        a = parent_idx[a]
            for q in range(server_psu_start[s], server_psu_start[s + 1]):
                k = server_psu[q]
                alive_cur[k] = psu_on_s[k] <= t
            dz = u - p_cur[s]
            p_cur[s] = u
            if dz != 0.0:
                z = server_zone[s]
                zone_jump[z] += dz
                if zone_stamp[z] != gid:
                    zone_stamp[z] = gid
                    zone_touched[n_zt] = z
                    n_zt += 1
        for j in range(n_touched):
            a = touched[j]
            feed = node_feed[a]
            worst = 0.0
            for sc in range(3):
                for p in range(3):
                    load = scratch_load_a[sc, a, p]
                    if load > out_peak_a[sc, a, p]:
                        out_peak_a[sc, a, p] = load
                    if (sc == 1 and feed == 0) or (sc == 2 and feed == 1):
                        continue
                    lim = limit_a[a, p]
                    uu = load / lim if lim > 0.0 else (np.inf if load > 1e-9 else 0.0)
                    if uu > worst:
                        worst = uu
            if worst > out_peak_u[a]:
                out_peak_u[a] = worst
                out_peak_t_s[a] = t
        for j in range(n_rt):
            r = ramp_touched[j]
            scratch_log_t_s[n_log] = t
            scratch_log_ramp[n_log] = r
            scratch_log_w[n_log] = ramp_val[r]
            n_log += 1
        for j in range(n_zt):
            z = zone_touched[j]
            if zone_t[z] > -np.inf:
                zone_def[z] = zone_def[z] * math.exp(-(t - zone_t[z]) / zone_tau_s[z])
            zone_def[z] += zone_jump[z]
            zone_heat[z] += zone_jump[z]
            zone_jump[z] = 0.0
            zone_t[z] = t
            if zone_heat[z] > out_zone_peak_w[z]:
                out_zone_peak_w[z] = zone_heat[z]
                out_zone_peak_t_s[z] = t
            if zone_def[z] > out_zone_deficit_w[z]:
                out_zone_deficit_w[z] = zone_def[z]
                out_zone_deficit_t_s[z] = t
        gid += 1
        g = g_end

    # largest rise within less than window_s at each ramp node (stable bucket by ramp node)
    count = np.zeros(n_ramp + 1, np.int64)
    for i in range(n_log):
        count[scratch_log_ramp[i] + 1] += 1
    for r in range(n_ramp):
        count[r + 1] += count[r]
    pos = count[:n_ramp].copy()
    idx = np.empty(n_log, np.int64)
    for i in range(n_log):
        r = scratch_log_ramp[i]
        idx[pos[r]] = i
        pos[r] += 1
    deque = np.empty(max(n_log, 1), np.int64)
    for r in range(n_ramp):
        out_ramp_rise_w[r] = 0.0
        out_ramp_rise_t_s[r] = -np.inf
        lo = count[r]
        hi = count[r + 1]
        head = 0
        tail = 0
        # entries j of this node; the value just before entry j is that of entry j - 1 (or 0)
        for j in range(lo, hi):
            t_j = scratch_log_t_s[idx[j]]
            # push "value before j" keyed by j (increasing values kept in the deque)
            before = scratch_log_w[idx[j - 1]] if j > lo else 0.0
            while tail > head:
                jl = deque[tail - 1]
                v_last = scratch_log_w[idx[jl - 1]] if jl > lo else 0.0
                if v_last >= before:
                    tail -= 1
                else:
                    break
            deque[tail] = j
            tail += 1
            while head < tail and not (scratch_log_t_s[idx[deque[head]]] > t_j - window_s):
                head += 1
            jm = deque[head]
            v_min = scratch_log_w[idx[jm - 1]] if jm > lo else 0.0
            rise = scratch_log_w[idx[j]] - v_min
            if rise > out_ramp_rise_w[r]:
                out_ramp_rise_w[r] = rise
                out_ramp_rise_t_s[r] = t_j


# --------------------------------------------------------------------------- public API


def envelope_w(
    t_s: Any,
    t_first_s: float,
    t_post_s: float,
    e2_s: float,
    e3_s: float,
    e4_s: float,
    e5_s: float,
    standby_w: float,
    post_w: float,
    boot_w: float,
    work_w: float,
) -> tuple[float, float]:
    """Upper and lower power envelope (W) of one server at time ``t_s`` (s).

    Breakpoints are absolute times (s): first PSU on, POST start, boot possible (e2), POST over
    (e3), work possible (e4), work certain (e5). See the module docstring.
    """
    out_w = np.empty(2)
    args = [float(v) for v in (t_s, t_first_s, t_post_s, e2_s, e3_s, e4_s, e5_s)]
    powers = [_checks.float_scalar(name, v) for name, v in (
        ("standby_w", standby_w), ("post_w", post_w), ("boot_w", boot_w), ("work_w", work_w))]
    if any(math.isnan(v) for v in args):
        raise _checks.KernelInputError("times must not be NaN", argument="t_s")
    envelope: Any = _envelope_into  # typed by its numba signature, not by mypy
    envelope(*args, *powers, out_w)
    return float(out_w[0]), float(out_w[1])


def plan_staged(**arrays: Any) -> tuple[
    FloatArray, FloatArray, npt.NDArray[np.int32], FloatArray, npt.NDArray[np.int8]
]:
    """Run the staged planner kernel.

    Returns (psu_on_s (K,) s, raise_t_s (E,) s, raise_server (E,), raise_work_w (E,) W,
    status (S,) int8): the PSU switch-on times, the cap raises as work power from their time
    on (sorted by time), and every server's STATUS_*.

    Keyword arguments are those of the kernel ``_plan_staged_into`` without the scratch and
    output arrays, plus ``horizon_s`` (s after ``t_base_s`` covered by the budgets),
    ``max_events`` (room for raises, default 4 per server + 64) and ``zone_blocks`` (blocks of
    the zone budget structure). Inputs are validated (shapes, dtypes, finiteness where needed);
    units as in the kernel's docstring.
    """
    a = _plan_inputs(arrays)
    horizon_s = _checks.float_scalar("horizon_s", arrays["horizon_s"], min_value=1.0)
    h_ramp = math.ceil(horizon_s / a["ramp_slot_s"])
    h_zone = math.ceil(horizon_s / a["zone_slot_s"])
    nb = max(1, min(h_zone, int(arrays.get("zone_blocks", 0)) or int(math.sqrt(h_zone)) + 1))
    n_ramp = a["ramp_budget_w"].shape[0]
    n_zones = a["zone_dmax_w"].shape[0]
    n_psus = a["psu_node"].shape[0]
    n_servers = a["order"].shape[0]
    max_events = int(arrays.get("max_events", 0)) or 4 * n_servers + 64
    out_psu_on_s = np.empty(n_psus)
    out_ev_t_s = np.empty(max_events)
    out_ev_server = np.empty(max_events, np.int32)
    out_ev_work_w = np.empty(max_events)
    out_ev_count = np.zeros(1, np.int32)
    out_status = np.empty(n_servers, np.int8)
    staged: Any = _plan_staged_into  # typed by its numba signature, not by mypy
    staged(
        *(a[name] for name in _PLAN_ARGS),
        np.empty((n_ramp, h_ramp)), np.empty((n_zones, h_zone)), np.empty((n_zones, nb)),
        np.empty((n_zones, nb)), out_psu_on_s, out_ev_t_s, out_ev_server, out_ev_work_w,
        out_ev_count, out_status,
    )
    n_ev = int(out_ev_count[0])
    t_ev, s_ev, w_ev = out_ev_t_s[:n_ev], out_ev_server[:n_ev], out_ev_work_w[:n_ev]
    if np.isnan(out_psu_on_s).any() or not np.isfinite(t_ev).all():
        raise _checks.KernelOutputError("planner produced NaN times", argument="psu_on_s")
    order = np.argsort(t_ev, kind="stable")
    return out_psu_on_s, t_ev[order], s_ev[order], w_ev[order], out_status


_PLAN_ARGS = (
    "parent_idx", "guard_s", "mag_thr_a", "mag_alone_a", "ramp_of_node", "ramp_budget_w",
    "psu_node", "psu_phase", "psu_inrush_a", "psu_inrush_s", "psu_known_s",
    "server_psu_start", "server_psu",
    "order", "priority", "mode", "server_zone", "psus_to_boot", "bmc_s", "post_s", "boot_s",
    "standby_w", "post_w", "boot_w", "work_first_w", "work_now_w", "work_final_w",
    "hist_start", "hist_t_s", "hist_work_w", "zone_dmax_w", "zone_tau_s", "zone_hold",
    "now_s", "t_base_s", "ramp_slot_s", "zone_slot_s", "micro_s", "window_s",
)


def _plan_inputs(arrays: dict[str, Any]) -> dict[str, Any]:
    missing = [name for name in _PLAN_ARGS if name not in arrays]
    if missing:
        raise _checks.KernelInputError(f"missing arguments: {', '.join(missing)}",
                                       argument=missing[0])
    parent = _checks.parent_array(arrays["parent_idx"])
    n = parent.shape[0]
    out: dict[str, Any] = {"parent_idx": parent}
    out["guard_s"] = _checks.float_array("guard_s", arrays["guard_s"], (n,), min_value=0.0)
    for name in ("mag_thr_a", "mag_alone_a"):
        out[name] = _checks.float_array(name, arrays[name], (n, 3), allow_inf=True,
                                        min_value=0.0)
    budget = np.asarray(arrays["ramp_budget_w"])
    n_ramp = budget.shape[0] if budget.ndim == 1 else -1
    if n_ramp < 0:
        raise _checks.KernelInputError("ramp_budget_w must be 1-D", argument="ramp_budget_w")
    out["ramp_budget_w"] = _checks.float_array("ramp_budget_w", budget, (n_ramp,),
                                               min_value=0.0)
    out["ramp_of_node"] = _checks.int_array("ramp_of_node", arrays["ramp_of_node"], (n,),
                                            np.int32, -1, n_ramp, "-1 or a ramp node index")
    node = np.asarray(arrays["psu_node"])
    n_psus = node.shape[0] if node.ndim == 1 else -1
    if n_psus < 0:
        raise _checks.KernelInputError("psu_node must be 1-D", argument="psu_node")
    out["psu_node"] = _checks.int_array("psu_node", node, (n_psus,), np.int32, 0, max(n, 1),
                                        "a node index")
    out["psu_phase"] = _checks.int_array("psu_phase", arrays["psu_phase"], (n_psus,), np.int8,
                                         0, 7, "a connection code 0..6")
    out["psu_inrush_a"] = _checks.float_array("psu_inrush_a", arrays["psu_inrush_a"],
                                              (n_psus,), min_value=0.0)
    out["psu_inrush_s"] = _checks.float_array("psu_inrush_s", arrays["psu_inrush_s"],
                                              (n_psus,), min_value=0.0)
    known = _checks.float_array("psu_known_s", arrays["psu_known_s"], (n_psus,),
                                allow_inf=True)
    if (known == -np.inf).any():
        raise _checks.KernelInputError("psu_known_s must not be -inf", argument="psu_known_s")
    out["psu_known_s"] = known
    zone_d = np.asarray(arrays["zone_dmax_w"])
    n_zones = zone_d.shape[0] if zone_d.ndim == 1 else -1
    if n_zones < 1:
        raise _checks.KernelInputError("zone_dmax_w must be 1-D, at least one zone",
                                       argument="zone_dmax_w")
    out["zone_dmax_w"] = _checks.float_array("zone_dmax_w", zone_d, (n_zones,), min_value=0.0,
                                             allow_inf=True)
    out["zone_tau_s"] = _checks.float_array("zone_tau_s", arrays["zone_tau_s"], (n_zones,),
                                            min_value=0.0, min_exclusive=True)
    out["zone_hold"] = _checks.bool_array("zone_hold", arrays["zone_hold"], (n_zones,))
    order = np.asarray(arrays["order"])
    n_servers = order.shape[0] if order.ndim == 1 else -1
    if n_servers < 0:
        raise _checks.KernelInputError("order must be 1-D", argument="order")
    out["server_psu_start"], out["server_psu"] = _server_psus(
        arrays["server_psu_start"], arrays["server_psu"], n_servers, n_psus)
    out["order"] = _checks.int_array("order", order, (n_servers,), np.int32, 0,
                                     max(n_servers, 1), "a server index")
    if n_servers and np.bincount(out["order"], minlength=n_servers).max() != 1:
        raise _checks.KernelInputError("order must list every server once", argument="order")
    out["priority"] = _checks.int_array("priority", arrays["priority"], (n_servers,), np.int32,
                                        -2**31, 2**31 - 1, "an int32")
    out["mode"] = _checks.int_array("mode", arrays["mode"], (n_servers,), np.int8, 0, 3,
                                    "MODE_PLAN, MODE_FIXED or MODE_EXCLUDED")
    fixed = out["mode"] == MODE_FIXED
    psu_server = np.repeat(np.arange(n_servers), np.diff(out["server_psu_start"]))
    k_of = out["server_psu"]
    if fixed.any() and not np.isfinite(known[k_of][fixed[psu_server]]).all():
        raise _checks.KernelInputError("a MODE_FIXED server needs every PSU in psu_known_s",
                                       argument="mode")
    out["server_zone"] = _checks.int_array("server_zone", arrays["server_zone"], (n_servers,),
                                           np.int32, 0, n_zones, "a zone index")
    out["psus_to_boot"] = _checks.int_array("psus_to_boot", arrays["psus_to_boot"],
                                            (n_servers,), np.int32, 1, 65, "1..64")
    out["bmc_s"] = _checks.float_array("bmc_s", arrays["bmc_s"], (n_servers,), min_value=0.0)
    for name in ("post_s", "boot_s"):
        rng = _checks.float_array(name, arrays[name], (n_servers, 2), min_value=0.0)
        if (rng[:, 1] < rng[:, 0]).any():
            raise _checks.KernelInputError(f"{name} must be [min, max] ranges", argument=name)
        out[name] = rng
    for name in ("standby_w", "post_w", "boot_w", "work_first_w", "work_now_w", "work_final_w"):
        out[name] = _checks.float_array(name, arrays[name], (n_servers,), min_value=0.0)
    hist_t = np.asarray(arrays["hist_t_s"])
    n_hist = hist_t.shape[0] if hist_t.ndim == 1 else -1
    if n_hist < 0:
        raise _checks.KernelInputError("hist_t_s must be 1-D", argument="hist_t_s")
    start = _checks.int_array("hist_start", arrays["hist_start"], (n_servers + 1,), np.int32, 0,
                              n_hist + 1, f"an offset in [0, {n_hist}]")
    if start[0] != 0 or start[-1] != n_hist or (np.diff(start) < 0).any():
        raise _checks.KernelInputError("hist_start must rise from 0 to the history length",
                                       argument="hist_start")
    out["hist_start"] = start
    out["hist_t_s"] = _checks.float_array("hist_t_s", hist_t, (n_hist,))
    out["hist_work_w"] = _checks.float_array("hist_work_w", arrays["hist_work_w"], (n_hist,),
                                             min_value=0.0)
    for name in ("now_s", "t_base_s"):
        value = arrays[name]
        if not isinstance(value, int | float | np.number) or not math.isfinite(float(value)):
            raise _checks.KernelInputError(f"{name} must be a finite number", argument=name)
        out[name] = float(value)
    if out["t_base_s"] > out["now_s"]:
        raise _checks.KernelInputError("t_base_s must not be after now_s", argument="t_base_s")
    hist_t = out["hist_t_s"]
    if hist_t.size:
        if (hist_t > out["now_s"] + 1e-9).any():
            raise _checks.KernelInputError("hist_t_s must be before now_s", argument="hist_t_s")
        same = np.repeat(np.arange(n_servers), np.diff(out["hist_start"]))
        if ((np.diff(hist_t) < 0) & (same[1:] == same[:-1])).any():
            raise _checks.KernelInputError("hist_t_s must be sorted per server",
                                           argument="hist_t_s")
    for name in ("ramp_slot_s", "zone_slot_s", "micro_s", "window_s"):
        out[name] = _checks.float_scalar(name, arrays[name], min_value=1e-6)
    if (out["psu_inrush_s"] > out["micro_s"] * (1 + 1e-9)).any():
        raise _checks.KernelInputError("micro_s must be at least every PSU's inrush duration",
                                       argument="micro_s")
    return out


def predict_plan(**arrays: Any) -> dict[str, Any]:
    """Run the prediction kernel; returns a dict of its outputs (see ``_predict_into``).

    Keyword arguments are the kernel's inputs (without scratch and outputs) plus
    ``log_capacity`` (an upper bound of ramp-node updates). Keys of the result: ``peak_a``
    (3, n, 3) A, ``peak_u`` (n,) 1, ``peak_t_s`` (n,) s, ``ramp_rise_w`` (R,) W,
    ``ramp_rise_t_s`` (R,) s, ``zone_peak_w``, ``zone_peak_t_s``, ``zone_deficit_w``,
    ``zone_deficit_t_s`` (Z,).
    """
    parent = _checks.parent_array(arrays["parent_idx"])
    n = parent.shape[0]
    n_ramp = int(arrays["n_ramp"])
    zone_tau = np.ascontiguousarray(arrays["zone_tau_s"], dtype=np.float64)
    n_zones = zone_tau.shape[0]
    ev_t = _checks.float_array("ev_t_s", arrays["ev_t_s"], (np.asarray(arrays["ev_t_s"]).size,))
    if ev_t.size and (np.diff(ev_t) < 0).any():
        raise _checks.KernelInputError("ev_t_s must be sorted", argument="ev_t_s")
    cap = int(arrays["log_capacity"])
    out = {
        "peak_a": np.empty((3, n, 3)),
        "peak_u": np.empty(n),
        "peak_t_s": np.empty(n),
        "ramp_rise_w": np.empty(n_ramp),
        "ramp_rise_t_s": np.empty(n_ramp),
        "zone_peak_w": np.empty(n_zones),
        "zone_peak_t_s": np.empty(n_zones),
        "zone_deficit_w": np.empty(n_zones),
        "zone_deficit_t_s": np.empty(n_zones),
    }

    def f64(name: str) -> FloatArray:
        return np.ascontiguousarray(arrays[name], dtype=np.float64)

    def i32(name: str) -> npt.NDArray[np.int32]:
        return np.ascontiguousarray(arrays[name], dtype=np.int32)

    def i8(name: str) -> npt.NDArray[np.int8]:
        return np.ascontiguousarray(arrays[name], dtype=np.int8)

    _predict_into(
        parent, f64("v_ln_v"), i8("node_feed"), f64("limit_a"), i32("ramp_of_node"),
        i32("psu_node"), i8("psu_phase"), i8("psu_feed"), f64("psu_on_s"),
        i32("server_psu_start"), i32("server_psu"),
        f64("server_pf"), i32("server_zone"), f64("server_times_s"), f64("standby_w"),
        f64("post_w"), f64("boot_w"), f64("work_first_w"),
        f64("cap_work_w"), i32("cap_server"), ev_t, i32("ev_server"), i32("ev_cap"),
        zone_tau, f64("background_a"), float(arrays["window_s"]),
        np.empty((3, n, 3)), np.empty(cap), np.empty(cap, np.int32), np.empty(cap),
        out["peak_a"], out["peak_u"], out["peak_t_s"], out["ramp_rise_w"], out["ramp_rise_t_s"],
        out["zone_peak_w"], out["zone_peak_t_s"], out["zone_deficit_w"],
        out["zone_deficit_t_s"],
    )
    _checks.output_not_nan("peak_a", out["peak_a"])
    return out
