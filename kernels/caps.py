"""GPU cap allocation: the caps at which every server can work at once within every limit.

A server ``s`` working at a per-GPU cap ``c`` (W) draws

    W_s(c) = min(other_max_w + gpus·c, max_w)

and, over the rest of its bring-up, never more than its *allocation power*

    P_s(c) = max(floor_w, W_s(c))

where ``floor_w`` is the highest power of the states it may still pass through before it works
(standby, POST, boot). Allocating with P_s instead of W_s makes the sum of the allocation powers
an upper bound of the load at any moment of the bring-up, so a plan built on these caps never
has to check continuous limits over time (docs/planner.md).

Rows are the per-pole currents of every node in the three scenarios of
:mod:`kernels.headroom` (normal, feed A lost, feed B lost): the survivors of a server share all
of its load. ``limit_a`` (3, n, 3) A is the current each row may carry (continuous limit ×
(1 − admission margin) − background load); +inf marks a row that is not judged (a node that
is dead in that scenario, an absent pole). Zones add one row each: the zone's heat (W) against
``zone_limit_w``.

The allocation:

1. **Admission** at the minimum cap, in ``order`` (priority first): a server is admitted when
   P_s(gpu_min_cap_w) fits every row it loads; ``forced`` servers (already energized) are
   admitted whatever the rows say. A server that does not fit stays off.
2. **Progressive filling**, one priority level at a time from the highest, the lower levels held
   at their minimum: every unfrozen server of the level works at the same fraction θ of its cap
   range, c = gpu_min_cap_w + θ·(gpu_max_w − gpu_min_cap_w); θ rises until a row binds (its
   servers freeze) or a server reaches its maximum. This is max-min fair within a level, and the
   lowest priority is capped first.

Caps are rounded down to whole watts (never below the minimum).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from kernels import _checks
from kernels._jit import (
    IN_BOOL_1,
    IN_F64_1,
    IN_F64_3,
    IN_I8_1,
    IN_I32_1,
    OUT_BOOL_1,
    OUT_F64_1,
    OUT_F64_3,
    kernel,
)

__all__ = ["allocate_caps"]

_INV_SQRT3 = 1.0 / math.sqrt(3.0)
_THIRD = 1.0 / 3.0
#: A row binds when its headroom is below this fraction of its limit (plus 1e-9 A).
_BIND_RTOL = 1e-9

FloatArray = npt.NDArray[np.float64]


@kernel(
    IN_I32_1, IN_F64_1, IN_F64_3, IN_I32_1, IN_I8_1, IN_I8_1, IN_BOOL_1, IN_I32_1, IN_I32_1,
    IN_I32_1, IN_I32_1, IN_BOOL_1, IN_BOOL_1, IN_F64_1, IN_I32_1, IN_F64_1, IN_F64_1,
    IN_F64_1, IN_I32_1, IN_F64_1, IN_F64_1, IN_F64_1, IN_F64_1,
    OUT_F64_3, OUT_F64_3, OUT_F64_1, OUT_BOOL_1,
)  # fmt: skip
def _allocate_caps_into(
    parent_idx,
    v_ln_v,
    limit_a,
    psu_node,
    psu_phase,
    psu_feed,
    psu_on,
    server_psu_start,
    server_psu,
    order,
    priority,
    forced,
    eligible,
    server_pf,
    server_zone,
    floor_w,
    standby_w,
    other_max_w,
    gpus,
    min_cap_w,
    max_cap_w,
    max_w,
    zone_limit_w,
    scratch_load_a,
    scratch_slope_a,
    out_cap_w,
    out_admitted,
):
    """Admission at minimum caps in ``order``, then progressive filling per priority level.

    Server s at cap c draws W = min(other_max_w + gpus·c, max_w) and is allocated
    P = max(floor_w, W). In scenario k (0 normal, 1 feed A lost, 2 feed B lost) its a PSUs
    that survive (psu_feed != k − 1) carry s = ((P(c) − P(min))/a + max(P(min)/a, standby_w))/pf
    each (a PSU may carry the whole standby power before the others are on; for a server partly
    on (psu_on), a is the number of its surviving PSUs on now, at least 1); a share s on code
    0-2 puts s/V_LN on that pole of every ancestor of the outlet, codes 3-5 s/(√3·V_LN) on
    each of the two poles, code 6 s/(3·V_LN) on each pole. A row (k, i, p) holds when its
    load <= limit_a[k, i, p]; a zone holds when Σ P over its servers <= zone_limit_w.

    Admission: the ``forced`` servers join first at P(gpu_min_cap_w), whatever the rows say;
    then the others in ``order``, each if every row and its zone still hold; ``eligible``
    False keeps a server out. Filling: for each
    priority (descending along ``order``), θ ∈ [0, 1] rises for the level's unfrozen admitted
    servers with GPUs (c = min + θ·(max − min)); at each step θ goes up to the first row or
    zone that binds, the first kink of W (reaching floor_w or max_w) or 1; servers loading a
    binding row or zone with a positive slope freeze. Caps are rounded down to whole watts.

    Units: v_ln_v (n,) V; limit_a (3, n, 3) A (+inf: not judged); server_pf (S,) 1;
    floor_w, standby_w, other_max_w, max_w (S,) W; gpus (S,) count; min_cap_w, max_cap_w (S,)
    W per GPU; zone_limit_w (Z,) W; scratch_load_a, scratch_slope_a (3, n, 3) A and A per unit θ;
    out_cap_w (S,) W per GPU; out_admitted (S,) bool.
    """
    n_servers = order.shape[0]
    n_zones = zone_limit_w.shape[0]
    scratch_load_a[:, :, :] = 0.0
    zone_load = np.zeros(n_zones)
    zone_slope = np.zeros(n_zones)
    # per-server scratch: contributions to the rows along the PSUs' ancestor paths
    n_nodes = parent_idx.shape[0]
    stamp = np.full(n_nodes, -1, np.int64)
    touched = np.zeros(n_nodes, np.int64)
    add_a = np.zeros((3, n_nodes, 3))
    div = np.zeros((n_servers, 3), np.int64)  # PSUs sharing a server's load, per scenario
    for s in range(n_servers):
        out_admitted[s] = False
        out_cap_w[s] = min_cap_w[s]

    # ---- 1. admission at the minimum cap: the forced servers first, then in order ----------
    for jj in range(2 * n_servers):
        s = order[jj % n_servers]
        if (jj < n_servers) != forced[s]:
            continue
        if not eligible[s] and not forced[s]:
            continue
        w = other_max_w[s] + gpus[s] * min_cap_w[s]
        if w > max_w[s]:
            w = max_w[s]
        p_w = w if w > floor_w[s] else floor_w[s]
        n_touched = 0
        for scen in range(3):
            alive = 0
            alive_on = 0
            some_on = False
            all_on = True
            for q in range(server_psu_start[s], server_psu_start[s + 1]):
                k = server_psu[q]
                if psu_on[k]:
                    some_on = True
                else:
                    all_on = False
                if psu_feed[k] != scen - 1:
                    alive += 1
                    if psu_on[k]:
                        alive_on += 1
            if alive == 0:
                continue
            if some_on and not all_on:
                # partly on: each PSU may carry the load of the ones on now (at least one)
                alive = max(alive_on, 1)
            div[s, scen] = alive
            # a PSU carries its share, or the whole standby power while it is the only one on
            share_va = max(p_w / alive, standby_w[s]) / server_pf[s]
            for q in range(server_psu_start[s], server_psu_start[s + 1]):
                k = server_psu[q]
                if psu_feed[k] == scen - 1:
                    continue
                code = psu_phase[k]
                node = psu_node[k]
                while node >= 0:
                    if stamp[node] != s:
                        stamp[node] = s
                        touched[n_touched] = node
                        n_touched += 1
                        for sc2 in range(3):
                            for p in range(3):
                                add_a[sc2, node, p] = 0.0
                    inv_v = share_va / v_ln_v[node]
                    if code <= 2:
                        add_a[scen, node, code] += inv_v
                    elif code <= 5:
                        a = code - 3
                        add_a[scen, node, a] += inv_v * _INV_SQRT3
                        add_a[scen, node, (a + 1) % 3] += inv_v * _INV_SQRT3
                    else:
                        for p in range(3):
                            add_a[scen, node, p] += inv_v * _THIRD
                    node = parent_idx[node]
        fits = True
        if not forced[s]:
            z = server_zone[s]
            if zone_load[z] + p_w > zone_limit_w[z]:
                fits = False
            for t in range(n_touched):
                if not fits:
                    break
                node = touched[t]
                for scen in range(3):
                    for p in range(3):
                        extra = add_a[scen, node, p]
                        if extra > 0.0 and (
                            scratch_load_a[scen, node, p] + extra > limit_a[scen, node, p]
                        ):
                            fits = False
        if not fits:
            continue
        out_admitted[s] = True
        zone_load[server_zone[s]] += p_w
        for t in range(n_touched):
            node = touched[t]
            for scen in range(3):
                for p in range(3):
                    scratch_load_a[scen, node, p] += add_a[scen, node, p]

    # ---- 2. progressive filling, one priority level at a time --------------------------
    theta = np.zeros(n_servers)
    frozen = np.ones(n_servers, np.bool_)
    slope_s = np.zeros(n_servers)
    j0 = 0
    while j0 < n_servers:
        level = priority[order[j0]]
        j1 = j0
        while j1 < n_servers and priority[order[j1]] == level:
            j1 += 1
        n_active = 0
        for j in range(j0, j1):
            s = order[j]
            if out_admitted[s] and gpus[s] > 0 and max_cap_w[s] > min_cap_w[s]:
                frozen[s] = False
                n_active += 1
        th = 0.0
        while n_active > 0:
            # slopes (W per unit θ) and the next kink of each active server
            scratch_slope_a[:, :, :] = 0.0
            for z in range(n_zones):
                zone_slope[z] = 0.0
            step = 1.0 - th
            for j in range(j0, j1):
                s = order[j]
                slope_s[s] = 0.0
                if frozen[s]:
                    continue
                rng_w = max_cap_w[s] - min_cap_w[s]
                c = min_cap_w[s] + th * rng_w
                w = other_max_w[s] + gpus[s] * c
                if w >= max_w[s]:
                    continue  # at its maximum: frozen below
                if w < floor_w[s]:
                    kink = ((floor_w[s] - other_max_w[s]) / gpus[s] - min_cap_w[s]) / rng_w
                    if kink > th + 1e-12:
                        # flat (the floor dominates) until W reaches the floor
                        if kink - th < step:
                            step = kink - th
                        continue
                kink = ((max_w[s] - other_max_w[s]) / gpus[s] - min_cap_w[s]) / rng_w
                if kink - th < step:
                    step = kink - th
                slope_s[s] = gpus[s] * rng_w
                zone_slope[server_zone[s]] += slope_s[s]
                for scen in range(3):
                    alive = div[s, scen]
                    if alive == 0:
                        continue
                    share_va = slope_s[s] / server_pf[s] / alive
                    for q in range(server_psu_start[s], server_psu_start[s + 1]):
                        k = server_psu[q]
                        if psu_feed[k] == scen - 1:
                            continue
                        code = psu_phase[k]
                        node = psu_node[k]
                        while node >= 0:
                            inv_v = share_va / v_ln_v[node]
                            if code <= 2:
                                scratch_slope_a[scen, node, code] += inv_v
                            elif code <= 5:
                                a = code - 3
                                scratch_slope_a[scen, node, a] += inv_v * _INV_SQRT3
                                scratch_slope_a[scen, node, (a + 1) % 3] += inv_v * _INV_SQRT3
                            else:
                                for p in range(3):
                                    scratch_slope_a[scen, node, p] += inv_v * _THIRD
                            node = parent_idx[node]
            for scen in range(3):
                for i in range(n_nodes):
                    for p in range(3):
                        sl = scratch_slope_a[scen, i, p]
                        if sl > 0.0:
                            room = (limit_a[scen, i, p] - scratch_load_a[scen, i, p]) / sl
                            if room < step:
                                step = room
            for z in range(n_zones):
                if zone_slope[z] > 0.0:
                    room = (zone_limit_w[z] - zone_load[z]) / zone_slope[z]
                    if room < step:
                        step = room
            if step < 0.0:
                step = 0.0
            th += step
            for scen in range(3):
                for i in range(n_nodes):
                    for p in range(3):
                        sl = scratch_slope_a[scen, i, p]
                        if sl > 0.0:
                            scratch_load_a[scen, i, p] += sl * step
            for z in range(n_zones):
                zone_load[z] += zone_slope[z] * step
            # freeze: at the top of the range, or loading a binding row or zone
            n_frozen = 0
            for j in range(j0, j1):
                s = order[j]
                if frozen[s]:
                    continue
                theta[s] = th
                rng_w = max_cap_w[s] - min_cap_w[s]
                w = other_max_w[s] + gpus[s] * (min_cap_w[s] + th * rng_w)
                stop = th >= 1.0 or w >= max_w[s] * (1.0 - 1e-12)
                if not stop and slope_s[s] > 0.0:
                    z = server_zone[s]
                    zlim = zone_limit_w[z]
                    if zlim < np.inf and zlim - zone_load[z] <= _BIND_RTOL * abs(zlim) + 1e-9:
                        stop = True
                    for q in range(server_psu_start[s], server_psu_start[s + 1]):
                        if stop:
                            break
                        k = server_psu[q]
                        code = psu_phase[k]
                        node = psu_node[k]
                        while node >= 0 and not stop:
                            for scen in range(3):
                                if psu_feed[k] == scen - 1:
                                    continue
                                for p in range(3):
                                    if code <= 2:
                                        on_pole = p == code
                                    elif code <= 5:
                                        on_pole = p == code - 3 or p == (code - 2) % 3
                                    else:
                                        on_pole = True
                                    if not on_pole or scratch_slope_a[scen, node, p] <= 0.0:
                                        continue
                                    lim = limit_a[scen, node, p]
                                    if lim < np.inf and lim - scratch_load_a[scen, node, p] <= (
                                        _BIND_RTOL * abs(lim) + 1e-9
                                    ):
                                        stop = True
                            node = parent_idx[node]
                if stop:
                    frozen[s] = True
                    n_frozen += 1
            n_active -= n_frozen
            if n_frozen == 0 and step == 0.0:
                # no progress possible (cannot happen with consistent inputs): stop here
                for j in range(j0, j1):
                    frozen[order[j]] = True
                n_active = 0
        j0 = j1

    for s in range(n_servers):
        if out_admitted[s] and gpus[s] > 0:
            c = min_cap_w[s] + theta[s] * (max_cap_w[s] - min_cap_w[s])
            c = math.floor(c + 1e-6)
            if c < min_cap_w[s]:
                c = min_cap_w[s]
            if c > max_cap_w[s]:
                c = max_cap_w[s]
            out_cap_w[s] = c


# --------------------------------------------------------------------------- public API


def allocate_caps(
    parent_idx: Any,
    v_ln_v: Any,
    limit_a: Any,
    psu_node: Any,
    psu_phase: Any,
    psu_feed: Any,
    psu_on: Any,
    server_psu_start: Any,
    server_psu: Any,
    order: Any,
    priority: Any,
    forced: Any,
    eligible: Any,
    server_pf: Any,
    server_zone: Any,
    floor_w: Any,
    standby_w: Any,
    other_max_w: Any,
    gpus: Any,
    min_cap_w: Any,
    max_cap_w: Any,
    max_w: Any,
    zone_limit_w: Any,
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """Caps (W per GPU, (S,)) and admission (bool, (S,)) for steady full load within limits.

    See the module docstring for the maths. ``limit_a`` (3, n, 3) A is what each row may carry
    (+inf: not judged); ``order`` (S,) lists every server once, priorities descending
    (``priority[order]`` non-increasing); ``server_psu_start`` (S + 1,) and ``server_psu`` (K,)
    list each server's PSUs; ``psu_on`` (K,) bool marks the PSUs already on.
    Units: v_ln_v (n,) V; floor_w, standby_w, other_max_w, max_w (S,) W;
    min_cap_w <= max_cap_w (S,) W per GPU; zone_limit_w (Z,) W (+inf: none).
    Raises KernelInputError (a ValueError) on a bad argument.
    """
    parent = _checks.parent_array(parent_idx)
    n = parent.shape[0]
    v = _checks.float_array("v_ln_v", v_ln_v, (n,), min_value=0.0, min_exclusive=True)
    lim = _checks.float_array("limit_a", limit_a, (3, n, 3), allow_inf=True)
    node = np.asarray(psu_node)
    n_psus = node.shape[0] if node.ndim == 1 else -1
    if n_psus < 0:
        raise _checks.KernelInputError("psu_node must be 1-D", argument="psu_node")
    node = _checks.int_array("psu_node", node, (n_psus,), np.int32, 0, max(n, 1), "a node index")
    phase = _checks.int_array("psu_phase", psu_phase, (n_psus,), np.int8, 0, 7, "a code 0..6")
    feed = _checks.int_array("psu_feed", psu_feed, (n_psus,), np.int8, 0, 2, "0 (A) or 1 (B)")
    on = _checks.bool_array("psu_on", psu_on, (n_psus,))
    pf = np.asarray(server_pf)
    n_servers = pf.shape[0] if pf.ndim == 1 else -1
    if n_servers < 0:
        raise _checks.KernelInputError("server_pf must be 1-D", argument="server_pf")
    pf = _checks.float_array("server_pf", pf, (n_servers,), min_value=0.0, min_exclusive=True,
                             max_value=1.0)
    start, members = _server_psus(server_psu_start, server_psu, n_servers, n_psus)
    order_a = _checks.int_array("order", order, (n_servers,), np.int32, 0, max(n_servers, 1),
                                "a server index")
    if n_servers and np.bincount(order_a, minlength=n_servers).max() != 1:
        raise _checks.KernelInputError("order must list every server once", argument="order")
    prio = _checks.int_array("priority", priority, (n_servers,), np.int32, -2**31, 2**31 - 1,
                             "an int32")
    if n_servers and (np.diff(prio[order_a]) > 0).any():
        raise _checks.KernelInputError("order must sort servers by priority, highest first",
                                       argument="order")
    forced_a = _checks.bool_array("forced", forced, (n_servers,))
    eligible_a = _checks.bool_array("eligible", eligible, (n_servers,))
    zone_lim = np.asarray(zone_limit_w)
    n_zones = zone_lim.shape[0] if zone_lim.ndim == 1 else -1
    if n_zones < 0:
        raise _checks.KernelInputError("zone_limit_w must be 1-D", argument="zone_limit_w")
    zone_lim = _checks.float_array("zone_limit_w", zone_lim, (n_zones,), allow_inf=True)
    zone = _checks.int_array("server_zone", server_zone, (n_servers,), np.int32, 0,
                             max(n_zones, 1), "a zone index")
    floor = _checks.float_array("floor_w", floor_w, (n_servers,), min_value=0.0)
    standby = _checks.float_array("standby_w", standby_w, (n_servers,), min_value=0.0)
    other = _checks.float_array("other_max_w", other_max_w, (n_servers,), min_value=0.0)
    n_gpus = _checks.int_array("gpus", gpus, (n_servers,), np.int32, 0, 2**31 - 1, ">= 0")
    cmin = _checks.float_array("min_cap_w", min_cap_w, (n_servers,), min_value=0.0)
    cmax = _checks.float_array("max_cap_w", max_cap_w, (n_servers,), min_value=0.0)
    if (cmax < cmin).any():
        i = int(np.argmax(cmax < cmin))
        raise _checks.KernelInputError(f"max_cap_w[{i}] < min_cap_w[{i}]", argument="max_cap_w",
                                       index=(i,))
    top = _checks.float_array("max_w", max_w, (n_servers,), min_value=0.0)
    out_cap_w = np.empty(n_servers)
    out_admitted = np.empty(n_servers, dtype=np.bool_)
    _allocate_caps_into(
        parent, v, lim, node, phase, feed, on, start, members, order_a, prio, forced_a, eligible_a,
        pf, zone, floor, standby, other, n_gpus, cmin, cmax, top, zone_lim,
        np.empty((3, n, 3)), np.empty((3, n, 3)), out_cap_w, out_admitted,
    )
    _checks.output_finite("cap_w", out_cap_w)
    return out_cap_w, out_admitted


def _server_psus(
    server_psu_start: Any, server_psu: Any, n_servers: int, n_psus: int
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]]:
    """Check the CSR layout of PSUs by server: starts non-decreasing, every PSU listed once."""
    start = _checks.int_array("server_psu_start", server_psu_start, (n_servers + 1,), np.int32,
                              0, n_psus + 1, f"an offset in [0, {n_psus}]")
    if start[0] != 0 or start[-1] != n_psus or (np.diff(start) < 0).any():
        raise _checks.KernelInputError(
            "server_psu_start must rise from 0 to the PSU count", argument="server_psu_start")
    members = _checks.int_array("server_psu", server_psu, (n_psus,), np.int32, 0,
                                max(n_psus, 1), "a PSU index")
    if n_psus and np.bincount(members, minlength=n_psus).max() != 1:
        raise _checks.KernelInputError("server_psu must list every PSU once",
                                       argument="server_psu")
    return start, members
