"""Per-tick passes of the decision core and its telemetry store over the node arrays, fused.

Each kernel replaces a chain of numpy operations over all nodes (or all meter readings) with one
loop and gives bit for bit what that chain gave: the same IEEE operations on the same values in
the same order (sums in index order; maxima and minima by numpy's rule for two operands: the
first when it is NaN or strictly beyond the second, else the second, so that a tie of 0.0 and
-0.0 gives the second as ``np.maximum`` does). The callers (``controller.core``,
``controller.telemetry``) pass arrays they own; the tests compare each kernel with the numpy
code it replaced and with its plain-Python twin in :mod:`kernels.reference`
(``tests/kernels/test_tick_kernels.py``).

Quality codes (``out_quality``) are those of ``controller.telemetry.Quality``:
:data:`QUALITY_GOOD` 0, :data:`QUALITY_MISSING` 1, :data:`QUALITY_STALE` 2,
:data:`QUALITY_IMPLAUSIBLE` 3, :data:`QUALITY_INCONSISTENT` 4.
"""

from __future__ import annotations

import math

import numpy as np

from kernels._jit import (
    F64,
    IN_BOOL_1,
    IN_F64_1,
    IN_F64_2,
    IN_F64_3,
    IN_I8_1,
    IN_I64_1,
    OUT_BOOL_1,
    OUT_F64_1,
    OUT_F64_2,
    OUT_I8_1,
    OUT_I64_1,
    kernel,
)

__all__: list[str] = []

QUALITY_GOOD, QUALITY_MISSING, QUALITY_STALE, QUALITY_IMPLAUSIBLE, QUALITY_INCONSISTENT = (
    0, 1, 2, 3, 4)

#: Screening codes of :func:`_screen_readings_into`, one per reading: taken, or why not (the
#: implausibility reasons in the order ``TelemetryStore.ingest_node`` tests them).
READING_TAKEN = 0
READING_NOT_FINITE = 1
READING_NEGATIVE = 2
READING_ABSENT_POLE = 3
READING_OUT_OF_RANGE = 4
READING_FUTURE = 5
READING_OUT_OF_ORDER = 6
READING_JUMP = 7

_F64_MAX = float(np.finfo(np.float64).max)


@kernel(IN_I64_1, IN_F64_2, IN_F64_2, IN_F64_1, F64, F64, F64, OUT_F64_1, OUT_F64_1, OUT_I64_1)
def _node_utilization_into(
    nodes,
    measured_a,
    limit_a,
    over_since_s,
    now_s,
    over_x,
    capping_x,
    out_utilization,
    out_over_since_s,
    out_count,
):
    """Per node i of nodes: u = max over the three poles of measured / limit (numpy's maximum:
    NaN propagates), in out_utilization[i]; out_over_since_s[i] = min(over_since_s[i], now_s)
    where u > over_x, else +inf; out_count[0] = the number of those nodes with u > capping_x.
    Other nodes are not written.

    With nodes every index, what the core's shedding step computed with
    ``ratio = measured_a / limit_a``, ``np.maximum`` over the columns,
    ``np.where(u > over_x, np.minimum(...), inf)`` and ``u > capping_x``; the core lists its
    metered nodes only, the others' measured load being 0 (u = 0, never over).

    Units: nodes (m,) index; measured_a, limit_a (n, 3) A (limit +inf where a pole has none);
    over_since_s (n,) s; now_s s; over_x, capping_x 1 (× the limit); out_utilization (n,) 1;
    out_over_since_s (n,) s; out_count (1,) nodes.
    """
    count = 0
    for j in range(nodes.shape[0]):
        i = nodes[j]
        u = measured_a[i, 0] / limit_a[i, 0]
        r = measured_a[i, 1] / limit_a[i, 1]
        if not (u > r or u != u):
            u = r
        r = measured_a[i, 2] / limit_a[i, 2]
        if not (u > r or u != u):
            u = r
        out_utilization[i] = u
        if u > over_x:
            t = over_since_s[i]
            out_over_since_s[i] = t if (t < now_s or t != t) else now_s
        else:
            out_over_since_s[i] = math.inf
        if u > capping_x:
            count += 1
    out_count[0] = count


@kernel(IN_I64_1, IN_F64_2, IN_I8_1, IN_F64_3, F64, F64, OUT_F64_2, OUT_BOOL_1)
def _measured_at_into(
    nodes,
    node_i_a,
    node_quality,
    model_scenario_i_a,
    tolerance_x,
    tolerance_a,
    out_measured_a,
    out_any_excess,
):
    """The load taken as measured at the metered nodes, and whether any reading is beyond the
    model, without the background pass of kernels.aggregate._measured_load_into.

    Per node i of nodes (the metered ones) and phase c, with m = node_i_a[i, c] where the
    node's quality is GOOD and M = model_scenario_i_a[0, i, c]: out_measured_a[i, c] = m when
    finite, else M; out_any_excess[0]: some m - M - (tolerance_x·m + tolerance_a) > 0. Other
    nodes are not written (the core's are 0: no meter). Without any excess this is what
    _measured_load_into gives for out_measured_a; with one, the caller runs that kernel.

    Units: nodes (m,) index; node_i_a (n, 3) A; node_quality (n,) quality code;
    model_scenario_i_a (3, n, 3) A; tolerance_x 1; tolerance_a A; out_measured_a (n, 3) A;
    out_any_excess (1,) bool.
    """
    excess = False
    for j in range(nodes.shape[0]):
        i = nodes[j]
        good = node_quality[i] == QUALITY_GOOD
        for c in range(3):
            m = node_i_a[i, c]
            if good and math.isfinite(m):
                out_measured_a[i, c] = m
                if m - model_scenario_i_a[0, i, c] - (tolerance_x * m + tolerance_a) > 0.0:
                    excess = True
            else:
                out_measured_a[i, c] = model_scenario_i_a[0, i, c]
    out_any_excess[0] = excess


@kernel(
    IN_I64_1, IN_F64_1, IN_I8_1, IN_I64_1, IN_I64_1, IN_I64_1, IN_F64_2, IN_F64_2, F64, F64, F64,
    F64, OUT_I8_1, OUT_BOOL_1,
)  # fmt: skip
def _node_quality_into(
    metered_nodes,
    node_t_s,
    rejected_now,
    sum_nodes,
    child_start,
    child_order,
    node_i_a,
    rating_a,
    now_s,
    stale_s,
    sum_tolerance_x,
    sum_tolerance_a,
    out_quality,
    out_disagrees,
):
    """The quality of every metered node's reading at now_s, and the children-sum check.

    Per node i of metered_nodes, in this order of precedence (last wins): GOOD; STALE where the
    last reading's time t is finite and now_s - t > stale_s; MISSING where t is not finite;
    rejected_now[i] where that is not GOOD (the latest input was refused). Other nodes are not
    written (they are GOOD: no meter). A node is fresh when metered and GOOD then. Each node
    of sum_nodes (metered, with children, all metered; in increasing order) that is fresh and
    whose children (child_order, split by child_start, in increasing order) are all fresh has
    its children's readings summed per pole (in that order, from 0.0) and compared with its own
    (NaN taken as 0, ±inf as the largest finite magnitude, as ``np.nan_to_num``): when the
    largest |sum - own| over the poles (numpy's maximum) is above sum_tolerance_x × its largest
    pole rating + sum_tolerance_a, out_disagrees[i] is set and i becomes INCONSISTENT (which
    does not change whether it counts as fresh for its parent). out_disagrees is not written
    elsewhere.

    Units: metered_nodes (m,) index; node_t_s (n,) s; rejected_now (n,) quality code;
    sum_nodes (c,) index; child_start (n+1,), child_order (n,) indices; node_i_a (n, 3) A;
    rating_a (n, 3) A; now_s, stale_s s; sum_tolerance_x 1; sum_tolerance_a A; out_quality
    (n,) quality code; out_disagrees (n,) bool.
    """
    for j in range(metered_nodes.shape[0]):
        i = metered_nodes[j]
        q = QUALITY_GOOD
        t = node_t_s[i]
        if not math.isfinite(t):
            q = QUALITY_MISSING
        elif now_s - t > stale_s:
            q = QUALITY_STALE
        if rejected_now[i] != QUALITY_GOOD:
            q = rejected_now[i]
        out_quality[i] = q
    # sum_nodes increase and children have larger indices than their parent: a node's
    # children are not yet marked INCONSISTENT when it is checked
    for j in range(sum_nodes.shape[0]):
        i = sum_nodes[j]
        if out_quality[i] != QUALITY_GOOD:
            continue
        all_fresh = True
        for q_idx in range(child_start[i], child_start[i + 1]):
            if out_quality[child_order[q_idx]] != QUALITY_GOOD:
                all_fresh = False
                break
        if not all_fresh:
            continue
        r = rating_a[i, 0]
        if not (r > rating_a[i, 1] or r != r):
            r = rating_a[i, 1]
        if not (r > rating_a[i, 2] or r != r):
            r = rating_a[i, 2]
        tol_a = sum_tolerance_x * r + sum_tolerance_a
        d_max = 0.0
        for c in range(3):
            total = 0.0
            for q_idx in range(child_start[i], child_start[i + 1]):
                total += node_i_a[child_order[q_idx], c]
            own = node_i_a[i, c]
            if own != own:
                own = 0.0
            elif own == math.inf:
                own = _F64_MAX
            elif own == -math.inf:
                own = -_F64_MAX
            d = abs(total - own)
            if c == 0 or not (d_max > d or d_max != d_max):
                d_max = d
        if d_max > tol_a:
            out_disagrees[i] = True
            out_quality[i] = QUALITY_INCONSISTENT


@kernel(
    IN_I64_1, IN_F64_2, IN_F64_1, IN_F64_2, IN_F64_1, F64, F64, F64, F64, F64, OUT_F64_2,
    OUT_F64_1, OUT_F64_2, OUT_I8_1, OUT_I8_1,
)  # fmt: skip
def _screen_readings_into(
    node,
    reading_i_a,
    reading_t_s,
    rating_a,
    rating_max_a,
    jump_fraction,
    future_limit_s,
    range_x,
    absent_pole_a,
    confirm_x,
    out_node_i_a,
    out_node_t_s,
    out_pending_i_a,
    out_rejected_now,
    out_code,
):
    """Screen M meter readings of distinct nodes and take the good ones, as the telemetry
    store's ``ingest_nodes`` does with numpy.

    Per reading j of node i = node[j], values v = reading_i_a[j], time t = reading_t_s[j]:
    out_code[j] is the first that holds of READING_NOT_FINITE (a value not finite),
    READING_NEGATIVE (v < 0), READING_ABSENT_POLE (v > absent_pole_a on a pole of rating 0),
    READING_OUT_OF_RANGE (v > range_x × rating on a pole of rating > 0), READING_FUTURE (t not
    finite or t > future_limit_s), READING_OUT_OF_ORDER (t < out_node_t_s[i]), READING_JUMP
    (the last reading p = out_node_i_a[i] is finite and max |v - p| > J, with
    J = jump_fraction × rating_max_a[i], unless the pending reading q = out_pending_i_a[i] is
    finite and max |v - q| <= J × confirm_x: the jump is then confirmed), else READING_TAKEN.
    A taken reading is written (out_node_i_a[i] = v, out_node_t_s[i] = t, out_pending_i_a[i] = NaN,
    out_rejected_now[i] = 0); a jump becomes the pending reading (out_pending_i_a[i] = v);
    the others write nothing.

    Units: node (M,) index; reading_i_a (M, 3) A; reading_t_s (M,) s; rating_a (n, 3) A;
    rating_max_a (n,) A (each node's largest pole rating); jump_fraction 1; future_limit_s s;
    range_x 1; absent_pole_a A; confirm_x 1; out_node_i_a, out_pending_i_a (n, 3) A; out_node_t_s
    (n,) s; out_rejected_now (n,) quality code; out_code (M,) code.
    """

    def _finite_and_distance(rows_a, i, readings_a, j):
        """Whether rows_a[i] is finite on every pole, and max |readings_a[j] - rows_a[i]|."""
        finite = True
        d_max = 0.0
        for c in range(3):
            x = rows_a[i, c]
            if not math.isfinite(x):
                finite = False
            d_max = max(d_max, abs(readings_a[j, c] - x))
        return finite, d_max

    m_count = node.shape[0]
    for j in range(m_count):
        i = node[j]
        t = reading_t_s[j]
        code = READING_TAKEN
        if not math.isfinite(t) or t > future_limit_s:
            code = READING_FUTURE
        out_of_range = False
        absent = False
        negative = False
        not_finite = False
        for c in range(3):
            v = reading_i_a[j, c]
            r = rating_a[i, c]
            if r > 0.0 and v > range_x * r:
                out_of_range = True
            if r == 0.0 and v > absent_pole_a:
                absent = True
            if v < 0.0:
                negative = True
            if not math.isfinite(v):
                not_finite = True
        if out_of_range:
            code = READING_OUT_OF_RANGE
        if absent:
            code = READING_ABSENT_POLE
        if negative:
            code = READING_NEGATIVE
        if not_finite:
            code = READING_NOT_FINITE
        if code == READING_TAKEN and t < out_node_t_s[i]:
            code = READING_OUT_OF_ORDER
        if code == READING_TAKEN:
            # v is finite here; a jump is judged only against finite readings, so no NaN
            # enters the maxima
            jump_a = jump_fraction * rating_max_a[i]
            prev_finite, d_prev = _finite_and_distance(out_node_i_a, i, reading_i_a, j)
            if prev_finite and d_prev > jump_a:
                confirmed, d_pend = _finite_and_distance(out_pending_i_a, i, reading_i_a, j)
                if not (confirmed and d_pend <= jump_a * confirm_x):
                    code = READING_JUMP
        out_code[j] = code
        if code == READING_TAKEN:
            for c in range(3):
                out_node_i_a[i, c] = reading_i_a[j, c]
                out_pending_i_a[i, c] = math.nan
            out_node_t_s[i] = t
            out_rejected_now[i] = QUALITY_GOOD
        elif code == READING_JUMP:
            for c in range(3):
                out_pending_i_a[i, c] = reading_i_a[j, c]


@kernel(
    IN_I64_1, IN_F64_1, IN_F64_1, IN_F64_1, IN_F64_1, IN_F64_1, IN_F64_1, IN_F64_1, IN_F64_1,
    IN_I64_1, IN_I64_1, IN_F64_1, IN_F64_1, OUT_F64_1, OUT_F64_1, OUT_F64_1, OUT_BOOL_1,
)  # fmt: skip
def _step_budget_into(
    servers,
    old_cap_w,
    new_cap_w,
    draw_w,
    gpu_min_cap_w,
    gpu_max_w,
    other_max_w,
    gpus,
    server_max_w,
    pair_slot,
    pair_server,
    drop_budget_w,
    rise_budget_w,
    scratch_drop_w,
    scratch_rise_w,
    out_fraction,
    out_limited,
):
    """The fraction of a cap change that each node with a step budget lets through in one tick.

    For the servers listed (distinct), with per-GPU caps going from old_cap_w[j] to
    new_cap_w[j] (both clipped to [gpu_min_cap_w, gpu_max_w] of the server, numpy's clip: NaN
    stays), the server power at a cap is W(cap) = min(other_max_w + gpus × cap, server_max_w);
    the change drops max(min(draw_w[j], W(old)) - W(new), 0) and adds max(W(new) - W(old), 0).
    Per slot (a node with a budget), the drops and rises of the servers below it (pairs
    pair_slot[q], pair_server[q], summed in pair order from 0.0, other servers adding 0.0) give
    out_fraction[slot] = clip(min(drop_budget_w / drop if drop > 0 else 1,
    rise_budget_w / rise if rise > 0 else 1), 0, 1) (numpy's minimum and clip);
    out_limited[0]: some fraction is below 1 (or NaN).

    What controller.core._limit_cap_change computed with ``work_w``, ``np.bincount`` and
    ``np.where``. Units: servers (m,) index; old_cap_w, new_cap_w (m,) W per GPU; draw_w (m,)
    W; gpu_min_cap_w, gpu_max_w (S,) W per GPU; other_max_w, server_max_w (S,) W; gpus (S,)
    GPUs; pair_slot, pair_server (P,) indices; drop_budget_w, rise_budget_w (B,) W;
    scratch_drop_w, scratch_rise_w (S,) W; out_fraction (B,) 1; out_limited (1,) bool.
    """

    def _server_w(cap, lo, hi, other_w, n_gpus, max_w):
        if cap == cap:   # numpy's clip: NaN stays NaN
            cap = cap if cap > lo else lo
            cap = cap if cap < hi else hi
        p = other_w + n_gpus * cap
        return p if (p < max_w or p != p) else max_w

    n_servers = gpus.shape[0]
    for s in range(n_servers):
        scratch_drop_w[s] = 0.0
        scratch_rise_w[s] = 0.0
    for j in range(servers.shape[0]):
        s = servers[j]
        new_w = _server_w(new_cap_w[j], gpu_min_cap_w[s], gpu_max_w[s], other_max_w[s],
                          gpus[s], server_max_w[s])
        old_w = _server_w(old_cap_w[j], gpu_min_cap_w[s], gpu_max_w[s], other_max_w[s],
                          gpus[s], server_max_w[s])
        d = draw_w[j]
        lower = d if (d < old_w or d != d) else old_w
        drop = lower - new_w
        scratch_drop_w[s] = drop if (drop > 0.0 or drop != drop) else 0.0
        rise = new_w - old_w
        scratch_rise_w[s] = rise if (rise > 0.0 or rise != rise) else 0.0
    n_slots = out_fraction.shape[0]
    for b in range(n_slots):
        out_fraction[b] = 0.0
    drop_sum = np.zeros(n_slots)
    for q in range(pair_slot.shape[0]):
        drop_sum[pair_slot[q]] += scratch_drop_w[pair_server[q]]
        out_fraction[pair_slot[q]] += scratch_rise_w[pair_server[q]]
    limited = False
    for b in range(n_slots):
        rise_sum = out_fraction[b]
        a = drop_budget_w[b] / drop_sum[b] if drop_sum[b] > 0.0 else 1.0
        r = rise_budget_w[b] / rise_sum if rise_sum > 0.0 else 1.0
        f = a if (a < r or a != a) else r
        if f == f:
            f = f if f > 0.0 else 0.0
            f = f if f < 1.0 else 1.0
        out_fraction[b] = f
        if not f >= 1.0:
            limited = True
    out_limited[0] = limited


@kernel(
    IN_F64_1, IN_F64_1, IN_F64_1, IN_F64_1, F64, IN_F64_1, IN_F64_1, IN_F64_1, IN_F64_1,
    IN_F64_1, IN_F64_1, OUT_F64_1, OUT_F64_1,
)  # fmt: skip
def _worst_server_power_into(
    t_first_s,
    work_s,
    confirmed_cap_w,
    commanded_cap_w,
    now_s,
    floor_w,
    gpu_min_cap_w,
    gpu_max_w,
    other_max_w,
    gpus,
    server_max_w,
    out_normal_w,
    out_contingency_w,
):
    """The most each server can draw now, normally and in the feed-loss contingency.

    Per server, with W(cap) = min(other_max_w + gpus × clip(cap, gpu_min_cap_w, gpu_max_w),
    server_max_w) (numpy's clip and minimum) and full = server_max_w: not energized
    (t_first_s not finite): 0 and 0. Else booting (now_s < work_s, the earliest time it can
    work): floor_w and floor_w. Else normally max(W(confirmed), floor_w) with a confirmed cap
    (finite confirmed_cap_w), full without; in the contingency the same with a confirmed cap,
    else min(max(W(commanded), floor_w), full) with a commanded cap (finite), full without.
    (numpy's maximum and minimum: a NaN operand wins, a tie gives the second.)

    What controller.core._worst_server_w computed with ``np.where``, ``work_w`` and
    ``np.maximum``. Units: t_first_s, work_s (S,) s; confirmed_cap_w, commanded_cap_w (S,) W
    per GPU (NaN: none); now_s s; floor_w (S,) W; gpu_min_cap_w, gpu_max_w (S,) W per GPU;
    other_max_w, server_max_w (S,) W; gpus (S,) GPUs; out_normal_w, out_contingency_w (S,) W.
    """

    def _work_w(cap, lo, hi, other_w, n_gpus, max_w):
        if cap == cap:   # numpy's clip: NaN stays NaN
            cap = cap if cap > lo else lo
            cap = cap if cap < hi else hi
        p = other_w + n_gpus * cap
        return p if (p < max_w or p != p) else max_w

    for s in range(t_first_s.shape[0]):
        if not math.isfinite(t_first_s[s]):
            out_normal_w[s] = 0.0
            out_contingency_w[s] = 0.0
            continue
        floor = floor_w[s]
        full = server_max_w[s]
        if now_s < work_s[s]:
            out_normal_w[s] = floor
            out_contingency_w[s] = floor
            continue
        conf = confirmed_cap_w[s]
        if math.isfinite(conf):
            w = _work_w(conf, gpu_min_cap_w[s], gpu_max_w[s], other_max_w[s], gpus[s], full)
            w = w if (w > floor or w != w) else floor
            out_normal_w[s] = w
            out_contingency_w[s] = w
            continue
        out_normal_w[s] = full
        cmd = commanded_cap_w[s]
        if math.isfinite(cmd):
            w = _work_w(cmd, gpu_min_cap_w[s], gpu_max_w[s], other_max_w[s], gpus[s], full)
            w = w if (w > floor or w != w) else floor
            out_contingency_w[s] = w if (w < full or w != w) else full
        else:
            out_contingency_w[s] = full


@kernel(IN_I64_1, IN_BOOL_1, IN_BOOL_1, IN_F64_1, IN_BOOL_1, F64, F64, OUT_F64_1, OUT_BOOL_1)
def _psu_on_into(
    psu_outlet,
    outlet_known,
    outlet_on,
    psu_on_s,
    psu_commanded,
    now_s,
    grace_s,
    out_psu_on_s,
    out_powered,
):
    """Each PSU's switch-on time after the outlet read-backs, and whether it is powered now.

    Per PSU k with o = psu_outlet[k] (-1: no switchable outlet) and t = psu_on_s[k]: where the
    outlet's state is read back (o >= 0 and outlet_known[o]) and on, t becomes -inf when it was
    +inf and never commanded (on since before the controller knew), else now_s when t > now_s;
    read back off, t becomes +inf when t <= now_s unless the PSU is in its grace (commanded,
    t finite and now_s - t < grace_s: a read-back older than the command). Elsewhere t stays.
    out_psu_on_s[k] = t; out_powered[k] = t <= now_s.

    What step 1 of controller.core.decide computed with boolean masks over the PSUs. Units:
    psu_outlet (K,) outlet index; outlet_known, outlet_on (O,) bool; psu_on_s (K,) s (+inf:
    off, -inf: on since before we knew); psu_commanded (K,) bool; now_s, grace_s s;
    out_psu_on_s (K,) s; out_powered (K,) bool.
    """
    for k in range(psu_on_s.shape[0]):
        t = psu_on_s[k]
        o = psu_outlet[k]
        if o >= 0 and outlet_known[o]:
            if outlet_on[o]:
                if t == math.inf and not psu_commanded[k]:
                    t = -math.inf
                elif t > now_s:
                    t = now_s
            elif t <= now_s and not (psu_commanded[k] and math.isfinite(t)
                                     and now_s - t < grace_s):
                t = math.inf
        out_psu_on_s[k] = t
        out_powered[k] = t <= now_s


@kernel(
    IN_BOOL_1, IN_BOOL_1, IN_I8_1, IN_F64_1, F64, F64, F64, OUT_F64_1, OUT_BOOL_1, OUT_BOOL_1,
    OUT_BOOL_1,
)  # fmt: skip
def _unknown_since_into(
    unknown,
    metered,
    node_quality,
    unknown_since_s,
    now_s,
    stale_s,
    safe_s,
    out_unknown_since_s,
    out_metered_unknown,
    out_overdue,
    out_lost_long,
):
    """Since when each node's telemetry is untrusted, and which meters are to be alarmed.

    Per node i: out_unknown_since_s[i] = min(unknown_since_s[i], now_s) (numpy's minimum) where
    unknown[i], else +inf; out_metered_unknown[i] = metered[i] and node_quality[i] is not GOOD;
    with d = now_s - out_unknown_since_s[i], out_overdue[i] = that and (the quality is not
    MISSING or d >= stale_s) (a meter that never answered is alarmed once its first reading is
    overdue), out_lost_long[i] = that and d >= safe_s.

    What step 2 of controller.core.decide computed with ``np.where`` and boolean masks over
    the nodes. Units: unknown, metered (n,) bool; node_quality (n,) quality code;
    unknown_since_s (n,) s (+inf: trusted); now_s, stale_s, safe_s s; out_unknown_since_s
    (n,) s; out_metered_unknown, out_overdue, out_lost_long (n,) bool.
    """
    for i in range(unknown.shape[0]):
        since = math.inf
        if unknown[i]:
            t = unknown_since_s[i]
            since = t if (t < now_s or t != t) else now_s
        out_unknown_since_s[i] = since
        bad = metered[i] and node_quality[i] != QUALITY_GOOD
        out_metered_unknown[i] = bad
        d = now_s - since
        out_overdue[i] = bad and (node_quality[i] != QUALITY_MISSING or d >= stale_s)
        out_lost_long[i] = bad and d >= safe_s


@kernel(
    IN_F64_1, IN_F64_1, IN_F64_1, IN_I8_1, IN_F64_1, IN_F64_1, IN_F64_1, IN_F64_1, IN_F64_1,
    IN_F64_1, IN_F64_1, OUT_F64_1, OUT_F64_1, OUT_BOOL_1, OUT_F64_1, OUT_F64_1,
)  # fmt: skip
def _guard_servers_into(
    shed_cap_w,
    plan_cap_w,
    server_power_w,
    server_quality,
    worst_w,
    seen_w,
    gpu_min_cap_w,
    gpu_max_w,
    other_max_w,
    gpus,
    server_max_w,
    out_cap_w,
    out_base_w,
    out_known,
    out_fixed_rise_w,
    out_seen_w,
):
    """The ramp guard's per-server inputs.

    Per server s, with numpy's clip, minimum and maximum (a NaN operand wins; a tie gives the
    second) and g = max(gpus[s], 1): the cap in force out_cap_w = clip(min(shed, plan) where
    the shed cap is finite else plan, gpu_min_cap_w, gpu_max_w); the draw per GPU d =
    server_power_w / g; known (out_known) = quality GOOD, d finite and worst_w > 0; the base
    out_base_w = clip(d if known else the cap, gpu_min_cap_w, the cap); for a known server the
    rise no cap controls out_fixed_rise_w = max(W(base) - power, 0) with W(cap) =
    min(other_max_w + gpus × clip(cap, gpu_min_cap_w, gpu_max_w), server_max_w), plus max(power
    - seen_w, 0) where seen_w is finite (seen_w all NaN: no pass before), 0 for the others;
    out_seen_w = power where known, else NaN.

    What controller.core._ramp_guard computed with ``np.where``, ``np.clip`` and ``work_w``
    over the servers. Units: shed_cap_w, plan_cap_w, gpu_min_cap_w, gpu_max_w (S,) W per GPU
    (shed NaN: none); server_power_w, worst_w, seen_w, other_max_w, server_max_w (S,) W;
    server_quality (S,) quality code; gpus (S,) GPUs; out_cap_w, out_base_w (S,) W per GPU;
    out_known (S,) bool; out_fixed_rise_w, out_seen_w (S,) W.
    """

    def _clip(x, lo, hi):
        if x == x:
            x = x if x > lo else lo
            x = x if (x < hi or x != x) else hi
        return x

    for s in range(plan_cap_w.shape[0]):
        lo = gpu_min_cap_w[s]
        plan = plan_cap_w[s]
        shed = shed_cap_w[s]
        if math.isfinite(shed):
            plan = shed if (shed < plan or shed != shed) else plan
        cap = _clip(plan, lo, gpu_max_w[s])
        out_cap_w[s] = cap
        n_gpus = gpus[s] if gpus[s] > 1.0 else 1.0
        power = server_power_w[s]
        draw = power / n_gpus
        known = (server_quality[s] == QUALITY_GOOD and math.isfinite(draw)
                 and worst_w[s] > 0.0)
        out_known[s] = known
        base = _clip(draw if known else cap, lo, cap)
        out_base_w[s] = base
        if known:
            w = other_max_w[s] + gpus[s] * _clip(base, lo, gpu_max_w[s])
            w = w if (w < server_max_w[s] or w != w) else server_max_w[s]
            rise = w - power
            fixed = rise if (rise > 0.0 or rise != rise) else 0.0
            seen = seen_w[s]
            if math.isfinite(seen):
                up = power - seen
                fixed = fixed + (up if (up > 0.0 or up != up) else 0.0)
            else:
                fixed = fixed + 0.0
            out_fixed_rise_w[s] = fixed
            out_seen_w[s] = power
        else:
            out_fixed_rise_w[s] = 0.0
            out_seen_w[s] = math.nan


#: Screening codes of :func:`_screen_servers_into`, one per agent reading.
SERVER_TAKEN = 0
SERVER_UNBOUND = 1
SERVER_IMPLAUSIBLE = 2


@kernel(
    IN_I64_1, IN_F64_1, IN_F64_1, F64, F64, F64, IN_BOOL_1, IN_F64_1, IN_F64_1, OUT_F64_1,
    OUT_F64_1, OUT_F64_1, OUT_I8_1,
)  # fmt: skip
def _screen_servers_into(
    server,
    gpu_power_w,
    enforced_cap_w,
    t_s,
    future_limit_s,
    range_x,
    has_agent,
    gpu_max_w,
    gpus,
    out_server_power_w,
    out_server_cap_w,
    out_server_t_s,
    out_code,
):
    """Screen M node-agent readings of one value per server (every GPU alike) and take the
    good ones, as the telemetry store's ``ingest_servers`` did with numpy.

    Per reading j of server s = server[j], p = gpu_power_w[j], c = enforced_cap_w[j]:
    out_code[j] = SERVER_UNBOUND when s is not a server index or has no agent; else
    SERVER_IMPLAUSIBLE unless p and c are finite and >= 0, p <= range_x × max(gpu_max_w[s], 1)
    (numpy's maximum) and t_s <= future_limit_s; else SERVER_TAKEN, and then
    out_server_power_w[s] = p × gpus[s], out_server_cap_w[s] = c where gpus[s] > 0 else 0,
    out_server_t_s[s] = max(out_server_t_s[s], t_s) (numpy's maximum). A server listed twice
    keeps its last good reading, as numpy's fancy assignment does.

    Units: server (M,) index; gpu_power_w, enforced_cap_w (M,) W per GPU; t_s, future_limit_s
    s; range_x 1; has_agent (S,) bool; gpu_max_w (S,) W per GPU; gpus (S,) GPUs;
    out_server_power_w (S,) W; out_server_cap_w (S,) W per GPU; out_server_t_s (S,) s;
    out_code (M,) code.
    """
    n = has_agent.shape[0]
    for j in range(server.shape[0]):
        s = server[j]
        if s < 0 or s >= n or not has_agent[s]:
            out_code[j] = SERVER_UNBOUND
            continue
        p = gpu_power_w[j]
        c = enforced_cap_w[j]
        gmax = gpu_max_w[s]
        gmax = gmax if (gmax > 1.0 or gmax != gmax) else 1.0
        if not (math.isfinite(p) and math.isfinite(c) and p >= 0.0 and c >= 0.0
                and p <= range_x * gmax and t_s <= future_limit_s):
            out_code[j] = SERVER_IMPLAUSIBLE
            continue
        g = gpus[s]
        out_server_power_w[s] = p * g
        out_server_cap_w[s] = c if g > 0.0 else 0.0
        prev = out_server_t_s[s]
        out_server_t_s[s] = prev if (prev > t_s or prev != prev) else t_s
        out_code[j] = SERVER_TAKEN
