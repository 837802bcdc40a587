"""Plain-Python twins of the planner kernels (:mod:`kernels.caps`, :mod:`kernels.planner`).

Pure Python over lists and scalars; numpy only converts arguments (``tolist``) and results.
The cap allocation and the staged planner follow their kernels step by step, in the same order
of floating-point operations, so that the tests can ask for *identical* results (a greedy
scheduler that flips one decision on a rounding difference would diverge wholesale). The
prediction takes another road than its kernel: instead of adding each server's change to its
ancestors, it recomputes every node's load from scratch at every event time and scans the
ramp windows pairwise, so that a shared mistake is unlikely. These functions do not validate
their inputs: call them with arrays that the public kernels accept.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "allocate_caps",
    "envelope_w",
    "plan_staged",
    "predict_plan",
    "zone_suffix_add",
    "zone_suffix_min",
]

_INV_SQRT3 = 1.0 / math.sqrt(3.0)
_THIRD = 1.0 / 3.0
_BIND_RTOL = 1e-9
_TOL = 1e-9
_INF = math.inf

FloatArray = npt.NDArray[np.float64]


def _lst(a: Any) -> list[Any]:
    return np.asarray(a).tolist()


def _on_pole(code: int, p: int) -> bool:
    if code <= 2:
        return p == code
    if code <= 5:
        return p == code - 3 or p == (code - 2) % 3
    return True


def _split(code: int) -> list[tuple[int, float]]:
    if code <= 2:
        return [(code, 1.0)]
    if code <= 5:
        a = code - 3
        return [(a, _INV_SQRT3), ((a + 1) % 3, _INV_SQRT3)]
    return [(0, _THIRD), (1, _THIRD), (2, _THIRD)]


# --------------------------------------------------------------------------- envelope
def envelope_w(
    t_s: float, t_first_s: float, t_post_s: float, e2_s: float, e3_s: float, e4_s: float,
    e5_s: float, standby_w: float, post_w: float, boot_w: float, work_w: float,
) -> tuple[float, float]:
    """Upper and lower power envelope of one server at t_s, W (see kernels.planner)."""
    if not t_s >= t_first_s:
        return 0.0, 0.0
    if t_s < t_post_s:
        return standby_w, standby_w
    states = []
    if t_s < e3_s:
        states.append(post_w)
    if e2_s <= t_s < e5_s:
        states.append(boot_w)
    if t_s >= e4_s:
        states.append(work_w)
    if not states:
        return 0.0, 0.0
    return max(states), min(states)


# --------------------------------------------------------------------------- zone budgets
def zone_suffix_add(g: list[list[float]], block_add: list[list[float]],
                    block_min: list[list[float]], zone: int, k: int, c: float) -> None:
    """Add c to the zone's budget values G[u] for u >= k, in place (layout as the kernel's)."""
    h = len(g[zone])
    nb = len(block_add[zone])
    size = (h + nb - 1) // nb
    b = k // size
    end = min((b + 1) * size, h)
    row = g[zone]
    for u in range(k, end):
        row[u] += c
    mn = _INF
    for u in range(b * size, end):
        if row[u] < mn:
            mn = row[u]
    block_min[zone][b] = mn + block_add[zone][b]
    for bb in range(b + 1, nb):
        block_add[zone][bb] += c
        block_min[zone][bb] += c


def zone_suffix_min(g: list[list[float]], block_add: list[list[float]],
                    block_min: list[list[float]], zone: int, k: int) -> float:
    """Minimum of the zone's budget values G[u] over u >= k."""
    h = len(g[zone])
    nb = len(block_add[zone])
    size = (h + nb - 1) // nb
    b = k // size
    end = min((b + 1) * size, h)
    mn = _INF
    row = g[zone]
    for u in range(k, end):
        if row[u] < mn:
            mn = row[u]
    mn += block_add[zone][b]
    for bb in range(b + 1, nb):
        if block_min[zone][bb] < mn:
            mn = block_min[zone][bb]
    return mn


# --------------------------------------------------------------------------- cap allocation
def allocate_caps(
    parent_idx: Any, v_ln_v: Any, limit_a: Any, psu_node: Any, psu_phase: Any, psu_feed: Any,
    psu_on: Any, server_psu_start: Any, server_psu: Any, order: Any, priority: Any, forced: Any,
    eligible: Any, server_pf: Any, server_zone: Any, floor_w: Any, standby_w: Any,
    other_max_w: Any, gpus: Any, min_cap_w: Any, max_cap_w: Any, max_w: Any, zone_limit_w: Any,
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """Same arguments and results as :func:`kernels.caps.allocate_caps`. Loads live in dicts
    keyed by (scenario, node, pole), filled in the kernel's order."""
    parent = _lst(parent_idx)
    v = _lst(v_ln_v)
    lim = np.asarray(limit_a).tolist()
    node_of, code_of, feed_of, on_of = (_lst(psu_node), _lst(psu_phase), _lst(psu_feed),
                                        _lst(psu_on))
    start, members = _lst(server_psu_start), _lst(server_psu)
    order_l, prio = _lst(order), _lst(priority)
    forced_l, elig = _lst(forced), _lst(eligible)
    pf, zone = _lst(server_pf), _lst(server_zone)
    floor, standby, other, n_gpu = _lst(floor_w), _lst(standby_w), _lst(other_max_w), _lst(gpus)
    cmin, cmax, top, zlim_l = _lst(min_cap_w), _lst(max_cap_w), _lst(max_w), _lst(zone_limit_w)
    n_servers = len(order_l)
    load: dict[tuple[int, int, int], float] = {}
    zone_load = [0.0] * len(zlim_l)
    admitted = [False] * n_servers
    caps = list(cmin)
    div = [[0, 0, 0] for _ in range(n_servers)]

    def psus(s: int) -> list[int]:
        return members[start[s]:start[s + 1]]

    # 1. admission
    for jj in range(2 * n_servers):
        s = order_l[jj % n_servers]
        if (jj < n_servers) != forced_l[s]:
            continue
        if not elig[s] and not forced_l[s]:
            continue
        w = min(other[s] + n_gpu[s] * cmin[s], top[s])
        p_w = w if w > floor[s] else floor[s]
        add: dict[int, list[list[float]]] = {}
        for scen in range(3):
            mine = psus(s)
            alive = sum(1 for k in mine if feed_of[k] != scen - 1)
            alive_on = sum(1 for k in mine if feed_of[k] != scen - 1 and on_of[k])
            some_on = any(on_of[k] for k in mine)
            all_on = all(on_of[k] for k in mine)
            if alive == 0:
                continue
            if some_on and not all_on:
                alive = max(alive_on, 1)
            div[s][scen] = alive
            share_va = max(p_w / alive, standby[s]) / pf[s]
            for k in mine:
                if feed_of[k] == scen - 1:
                    continue
                node = node_of[k]
                while node >= 0:
                    row = add.setdefault(node, [[0.0] * 3 for _ in range(3)])
                    inv_v = share_va / v[node]
                    code = code_of[k]
                    if code <= 2:
                        row[scen][code] += inv_v
                    elif code <= 5:
                        a = code - 3
                        row[scen][a] += inv_v * _INV_SQRT3
                        row[scen][(a + 1) % 3] += inv_v * _INV_SQRT3
                    else:
                        for p in range(3):
                            row[scen][p] += inv_v * _THIRD
                    node = parent[node]
        fits = True
        if not forced_l[s]:
            if zone_load[zone[s]] + p_w > zlim_l[zone[s]]:
                fits = False
            for node, row in add.items():
                for scen in range(3):
                    for p in range(3):
                        extra = row[scen][p]
                        if extra > 0.0 and (load.get((scen, node, p), 0.0) + extra
                                            > lim[scen][node][p]):
                            fits = False
        if not fits:
            continue
        admitted[s] = True
        zone_load[zone[s]] += p_w
        for node, row in add.items():
            for scen in range(3):
                for p in range(3):
                    load[(scen, node, p)] = load.get((scen, node, p), 0.0) + row[scen][p]

    # 2. progressive filling
    theta = [0.0] * n_servers
    frozen = [True] * n_servers
    slope_s = [0.0] * n_servers
    j0 = 0
    while j0 < n_servers:
        level = prio[order_l[j0]]
        j1 = j0
        while j1 < n_servers and prio[order_l[j1]] == level:
            j1 += 1
        active = 0
        for j in range(j0, j1):
            s = order_l[j]
            if admitted[s] and n_gpu[s] > 0 and cmax[s] > cmin[s]:
                frozen[s] = False
                active += 1
        th = 0.0
        while active > 0:
            slope: dict[tuple[int, int, int], float] = {}
            zone_slope = [0.0] * len(zlim_l)
            step = 1.0 - th
            for j in range(j0, j1):
                s = order_l[j]
                slope_s[s] = 0.0
                if frozen[s]:
                    continue
                rng_w = cmax[s] - cmin[s]
                w = other[s] + n_gpu[s] * (cmin[s] + th * rng_w)
                if w >= top[s]:
                    continue
                if w < floor[s]:
                    kink = ((floor[s] - other[s]) / n_gpu[s] - cmin[s]) / rng_w
                    if kink > th + 1e-12:
                        step = min(step, kink - th)
                        continue
                kink = ((top[s] - other[s]) / n_gpu[s] - cmin[s]) / rng_w
                step = min(step, kink - th)
                slope_s[s] = n_gpu[s] * rng_w
                zone_slope[zone[s]] += slope_s[s]
                for scen in range(3):
                    alive = div[s][scen]
                    if alive == 0:
                        continue
                    share_va = slope_s[s] / pf[s] / alive
                    for k in psus(s):
                        if feed_of[k] == scen - 1:
                            continue
                        node = node_of[k]
                        while node >= 0:
                            inv_v = share_va / v[node]
                            code = code_of[k]
                            if code <= 2:
                                keys = [((scen, node, code), inv_v)]
                            elif code <= 5:
                                a = code - 3
                                keys = [((scen, node, a), inv_v * _INV_SQRT3),
                                        ((scen, node, (a + 1) % 3), inv_v * _INV_SQRT3)]
                            else:
                                keys = [((scen, node, p), inv_v * _THIRD) for p in range(3)]
                            for key, val in keys:
                                slope[key] = slope.get(key, 0.0) + val
                            node = parent[node]
            for key, sl in slope.items():
                if sl > 0.0:
                    scen, i, p = key
                    step = min(step, (lim[scen][i][p] - load.get(key, 0.0)) / sl)
            for z, zs in enumerate(zone_slope):
                if zs > 0.0:
                    step = min(step, (zlim_l[z] - zone_load[z]) / zs)
            step = max(step, 0.0)
            th += step
            for key, sl in slope.items():
                if sl > 0.0:
                    load[key] = load.get(key, 0.0) + sl * step
            for z, zs in enumerate(zone_slope):
                zone_load[z] += zs * step
            n_frozen = 0
            for j in range(j0, j1):
                s = order_l[j]
                if frozen[s]:
                    continue
                theta[s] = th
                rng_w = cmax[s] - cmin[s]
                w = other[s] + n_gpu[s] * (cmin[s] + th * rng_w)
                stop = th >= 1.0 or w >= top[s] * (1.0 - 1e-12)
                if not stop and slope_s[s] > 0.0:
                    zl = zlim_l[zone[s]]
                    if zl < _INF and zl - zone_load[zone[s]] <= _BIND_RTOL * abs(zl) + 1e-9:
                        stop = True
                    for k in psus(s):
                        node = node_of[k]
                        while node >= 0 and not stop:
                            for scen in range(3):
                                if feed_of[k] == scen - 1:
                                    continue
                                for p in range(3):
                                    if not _on_pole(code_of[k], p):
                                        continue
                                    if slope.get((scen, node, p), 0.0) <= 0.0:
                                        continue
                                    li = lim[scen][node][p]
                                    if li < _INF and li - load.get((scen, node, p), 0.0) <= (
                                            _BIND_RTOL * abs(li) + 1e-9):
                                        stop = True
                            node = parent[node]
                        if stop:
                            break
                if stop:
                    frozen[s] = True
                    n_frozen += 1
            active -= n_frozen
            if n_frozen == 0 and step == 0.0:
                for j in range(j0, j1):
                    frozen[order_l[j]] = True
                active = 0
        j0 = j1
    for s in range(n_servers):
        if admitted[s] and n_gpu[s] > 0:
            c = cmin[s] + theta[s] * (cmax[s] - cmin[s])
            c = float(math.floor(c + 1e-6))
            caps[s] = min(max(c, cmin[s]), cmax[s])
    return np.array(caps, dtype=np.float64), np.array(admitted, dtype=np.bool_)


# --------------------------------------------------------------------------- staged planner
def plan_staged(**kw: Any) -> tuple[
    FloatArray, FloatArray, npt.NDArray[np.int32], FloatArray, npt.NDArray[np.int8]
]:
    """Same keyword arguments and results as :func:`kernels.planner.plan_staged`."""
    parent = _lst(kw["parent_idx"])
    guard = _lst(kw["guard_s"])
    thr = np.asarray(kw["mag_thr_a"], dtype=np.float64).tolist()
    alone = np.asarray(kw["mag_alone_a"], dtype=np.float64).tolist()
    ramp_of = _lst(kw["ramp_of_node"])
    budget = _lst(kw["ramp_budget_w"])
    node_of, code_of = _lst(kw["psu_node"]), _lst(kw["psu_phase"])
    inrush_a, inrush_s, known = (_lst(kw["psu_inrush_a"]), _lst(kw["psu_inrush_s"]),
                                 _lst(kw["psu_known_s"]))
    start, members = _lst(kw["server_psu_start"]), _lst(kw["server_psu"])
    order, prio, mode, zone_of = (_lst(kw["order"]), _lst(kw["priority"]), _lst(kw["mode"]),
                                  _lst(kw["server_zone"]))
    ptb_l, bmc = _lst(kw["psus_to_boot"]), _lst(kw["bmc_s"])
    post_r, boot_r = _lst(kw["post_s"]), _lst(kw["boot_s"])
    standby, post_w, boot_w = _lst(kw["standby_w"]), _lst(kw["post_w"]), _lst(kw["boot_w"])
    w_first, w_now, w_final = (_lst(kw["work_first_w"]), _lst(kw["work_now_w"]),
                               _lst(kw["work_final_w"]))
    h_start, h_t, h_w = _lst(kw["hist_start"]), _lst(kw["hist_t_s"]), _lst(kw["hist_work_w"])
    dmax, tau, hold = _lst(kw["zone_dmax_w"]), _lst(kw["zone_tau_s"]), _lst(kw["zone_hold"])
    now = float(kw["now_s"])
    t_base = float(kw["t_base_s"])
    dt_r = float(kw["ramp_slot_s"])
    dt_z = float(kw["zone_slot_s"])
    micro = float(kw["micro_s"])
    window = float(kw["window_s"])
    horizon = float(kw["horizon_s"])
    h_ramp = math.ceil(horizon / dt_r)
    h_zone = math.ceil(horizon / dt_z)
    nb = max(1, min(h_zone, int(kw.get("zone_blocks", 0)) or int(math.sqrt(h_zone)) + 1))
    max_events = int(kw.get("max_events", 0)) or 4 * len(order) + 64
    n_nodes, n_psus, n_servers = len(parent), len(node_of), len(order)
    n_ramp, n_zones = len(budget), len(dmax)
    nw = round(window / dt_r) + 1

    ramp = [[0.0] * h_ramp for _ in range(n_ramp)]
    tau_eff = [max(tau[z], h_zone * dt_z / 600.0) for z in range(n_zones)]
    d_eff = [dmax[z] * math.exp(-dt_z / tau_eff[z]) for z in range(n_zones)]
    g = [[d_eff[z] * math.exp(u * dt_z / tau_eff[z]) for u in range(h_zone)]
         for z in range(n_zones)]
    size = (h_zone + nb - 1) // nb
    g_add = [[0.0] * nb for _ in range(n_zones)]
    g_min = [[min(g[z][b * size:min((b + 1) * size, h_zone)], default=_INF) for b in range(nb)]
             for z in range(n_zones)]

    last_on = [-_INF] * n_nodes
    mag_slot = [-(2**62)] * n_nodes
    mag_sum = [[0.0, 0.0, 0.0] for _ in range(n_nodes)]
    psu_out = list(known)
    d_max = max(inrush_s, default=0.0)
    d_max = max(d_max, 0.0)
    for k in range(n_psus):
        t_k = known[k]
        if t_k < _INF:
            free = math.ceil((t_k + d_max) / micro - 1e-9)
            a = node_of[k]
            while a >= 0:
                last_on[a] = max(last_on[a], t_k)
                if free > mag_slot[a]:
                    mag_slot[a] = free
                    mag_sum[a] = [0.0, 0.0, 0.0]
                a = parent[a]

    status = [0] * n_servers
    events: list[tuple[float, int, float]] = []
    guard_max = max(guard, default=0.0)
    guard_max = max(guard_max, 0.0)
    tau_max = max(tau_eff, default=0.0)
    settle = 10.0 * tau_max + 2.0 * window + 1.0
    quiet = now
    hint_r = [-_INF] * max(n_ramp, 1)
    hint_z = [-_INF] * n_zones
    rhint_r = [-_INF] * max(n_ramp, 1)
    rhint_z = [-_INF] * n_zones
    class_lb = -_INF
    class_next = -_INF
    cur_prio = 0
    first_plan = True
    srv_t: list[tuple[float, ...]] = [()] * n_servers
    t_limit = t_base + h_ramp * dt_r

    def env(t: float, times: tuple[float, ...], s: int, w: float) -> float:
        t_first, t_post, e2, e3, e4, e5 = times
        return envelope_w(t, t_first, t_post, e2, e3, e4, e5, standby[s], post_w[s], boot_w[s],
                          w)[0]

    def try_commit(rises: list[tuple[float, int, float]], checked: bool
                   ) -> tuple[int, float, int, list[tuple[int, int, int, float]]]:
        """Commit the zone falls, then check and commit the rises in order;
        (fail, fail_t, fail_k, undo log)."""
        undo: list[tuple[int, int, int, float]] = []
        for t, tgt, x in rises:
            if x >= 0.0:
                continue
            zz = -1 - tgt
            kk = math.floor((t - t_base) / dt_z)
            if kk < 0 or kk + 1 >= h_zone or tau_eff[zz] != tau[zz]:
                continue
            c = -x * math.exp(-2.0 * dt_z / tau_eff[zz]) * math.exp(kk * dt_z / tau_eff[zz])
            zone_suffix_add(g, g_add, g_min, zz, kk + 1, c)
            undo.append((1, zz, kk + 1, -c))
        for t, tgt, x in rises:
            if x < 0.0:
                continue
            check = checked and t >= now
            if tgt >= 0:
                sig = math.floor((t - t_base) / dt_r + 1e-9)
                if sig < 0:
                    continue
                if sig >= h_ramp:
                    return 3, 0.0, 0, undo
                lo = max(0, sig - nw + 1)
                if check:
                    if x > budget[tgt] * (1.0 + _TOL) + 1e-9:
                        return 4, 0.0, 0, undo
                    worst = max(0.0, max(ramp[tgt][lo:sig + 1]))
                    if worst + x > budget[tgt] * (1.0 + _TOL) + 1e-9:
                        return 1, t, 0, undo
                for w in range(lo, sig + 1):
                    ramp[tgt][w] += x
                undo.append((0, tgt, sig, x))
            else:
                zz = -1 - tgt
                kk = math.floor((t - t_base) / dt_z)
                if kk >= h_zone:
                    return 3, 0.0, 0, undo
                if kk < 0:
                    c0 = x * math.exp(-(t_base - t) / tau_eff[zz]) * math.exp(
                        -dt_z / tau_eff[zz])
                    zone_suffix_add(g, g_add, g_min, zz, 0, -c0)
                    undo.append((1, zz, 0, c0))
                    continue
                need = x * math.exp(kk * dt_z / tau_eff[zz])
                if check:
                    if x > d_eff[zz] * (1.0 + _TOL) + 1e-9:
                        return 4, 0.0, 0, undo
                    have = zone_suffix_min(g, g_add, g_min, zz, kk)
                    scale = d_eff[zz] * math.exp(kk * dt_z / tau_eff[zz])
                    if need > have + _TOL * scale + 1e-9:
                        return 2, t, kk, undo
                zone_suffix_add(g, g_add, g_min, zz, kk, -need)
                undo.append((1, zz, kk, need))
        return 0, 0.0, 0, undo

    def rollback(undo: list[tuple[int, int, int, float]]) -> None:
        for kind, a, b, x in reversed(undo):
            if kind == 0:
                for w in range(max(0, b - nw + 1), b + 1):
                    ramp[a][w] -= x
            else:
                zone_suffix_add(g, g_add, g_min, a, b, x)

    for phase in range(3):
        for s in order:
            # phase 0 also: partly-on servers whose POST is certain, completed (in a zone on
            # hold too), and the other partly-on servers of a zone on hold, as they are
            complete = False
            if phase == 0 and mode[s] != 1:
                n_known = sum(1 for k in members[start[s]:start[s + 1]] if known[k] < _INF)
                complete = n_known >= min(max(ptb_l[s], 1), start[s + 1] - start[s]) \
                    and mode[s] == 0
                if n_known == 0 or not (complete or hold[zone_of[s]]):
                    continue
            if phase == 1 and (mode[s] != 0 or status[s] != 0):
                continue
            if phase == 2 and not (status[s] in (1, 2) and w_final[s] > w_now[s]
                                   and not hold[zone_of[s]]):
                continue
            z = zone_of[s]
            if phase == 1:
                if first_plan or prio[s] != cur_prio:
                    if not first_plan:
                        class_lb = max(class_lb, class_next)
                    cur_prio = prio[s]
                    first_plan = False
                if hold[z]:
                    status[s] = 5
                    continue
            mine = members[start[s]:start[s + 1]]
            m = len(mine)
            if m == 0 or m > 64:
                status[s] = 3
                continue
            rid: list[int] = []
            member: list[set[int]] = []
            for k in mine:
                under: set[int] = set()
                a = node_of[k]
                while a >= 0:
                    r = ramp_of[a]
                    if r >= 0:
                        if r not in rid:
                            rid.append(r)
                        under.add(rid.index(r))
                    a = parent[a]
                member.append(under)
            nr = len(rid)
            if nr > 32:
                status[s] = 3
                continue
            if phase == 2:
                times = srv_t[s]
                e4 = times[4]
                t_psu = [psu_out[k] for k in mine]
                n_on_r = [sum(1 for jj in range(m) if x in member[jj]) for x in range(nr)]
                step_w = d_eff[z]
                for x in range(nr):
                    if n_on_r[x] > 0:
                        step_w = min(step_w, budget[rid[x]] * m / n_on_r[x])
                step_w *= 1.0 - 1e-6
                w_cur = w_now[s]
                tr = max(now, e4)
                for x in range(nr):
                    tr = max(tr, rhint_r[rid[x]])
                tr = max(tr, rhint_z[z])
                while w_cur < w_final[s] and step_w > 0.0:
                    w_next = min(w_final[s], w_cur + step_w)
                    raised = False
                    undo: list[tuple[int, int, int, float]] = []
                    while tr <= t_limit:
                        du = env(tr, times, s, w_next) - env(tr, times, s, w_cur)
                        rises: list[tuple[float, int, float]] = []
                        if du > 0.0:
                            rises.append((tr, -1 - z, du))
                            for x in range(nr):
                                c = du * n_on_r[x] / m
                                if c > 0.0:
                                    rises.append((tr, rid[x], c))
                        fail, _, fail_k, undo = try_commit(rises, True)
                        if fail == 0:
                            raised = True
                            break
                        rollback(undo)
                        if fail == 3:
                            break
                        step = dt_r
                        if fail == 2:
                            step = max(step, t_base + (fail_k + 1) * dt_z - tr)
                        tr += step
                    if not raised or len(events) >= max_events:
                        if raised:
                            rollback(undo)
                        status[s] = 4
                        break
                    quiet = max(quiet, tr)
                    events.append((tr, s, w_next))
                    w_cur = w_next
                    for x in range(nr):
                        rhint_r[rid[x]] = max(rhint_r[rid[x]], tr)
                    rhint_z[z] = max(rhint_z[z], tr)
                continue

            impossible = False
            for k in mine:
                if known[k] < _INF:
                    continue
                a = node_of[k]
                while a >= 0:
                    for p in range(3):
                        if _on_pole(code_of[k], p) and inrush_a[k] > alone[a][p]:
                            impossible = True
                    a = parent[a]
            if impossible and phase == 0:
                complete = False  # kept as it is
            elif impossible:
                status[s] = 3
                continue
            partial = any(known[k] < _INF for k in mine)
            t0 = now
            if phase == 1:
                t0 = max(t0, class_lb)
                for x in range(nr):
                    t0 = max(t0, hint_r[rid[x]])
                t0 = max(t0, hint_z[z])
            placed = False
            result = 4
            while True:
                if t0 > t_limit:
                    break
                if phase == 1 and t0 > quiet + settle:
                    result = 3
                    break
                cursors: list[tuple[int, float, int, list[float]]] = []
                t_psu = []
                for k in mine:
                    if known[k] < _INF or (phase == 0 and not complete):
                        t_psu.append(known[k])  # inf: stays off
                        continue
                    code = code_of[k]
                    slot = math.ceil(t0 / micro - 1e-9)
                    while slot * micro < now:
                        slot += 1
                    changed = True
                    while changed:
                        changed = False
                        a = node_of[k]
                        while a >= 0:
                            if guard[a] > 0.0 and last_on[a] > -_INF:
                                need = math.ceil((last_on[a] + guard[a]) / micro - 1e-9)
                                if need > slot:
                                    slot = need
                                    changed = True
                            if any(thr[a][p] < _INF for p in range(3)):
                                if slot < mag_slot[a]:
                                    slot = mag_slot[a]
                                    changed = True
                                if slot == mag_slot[a]:
                                    over = any(_on_pole(code, p) and (
                                        (mag_sum[a][p] > 0.0
                                         and mag_sum[a][p] + inrush_a[k] > thr[a][p])
                                        or inrush_a[k] > alone[a][p]) for p in range(3))
                                    if over:
                                        slot += 1
                                        changed = True
                            a = parent[a]
                    t_k = slot * micro
                    t_psu.append(t_k)
                    a = node_of[k]
                    while a >= 0:
                        cursors.append((a, last_on[a], mag_slot[a], list(mag_sum[a])))
                        if guard[a] > 0.0 and t_k > last_on[a]:
                            last_on[a] = t_k
                        if slot > mag_slot[a]:
                            mag_slot[a] = slot
                            mag_sum[a] = [0.0, 0.0, 0.0]
                        if slot == mag_slot[a]:
                            for p in range(3):
                                if _on_pole(code, p):
                                    mag_sum[a][p] += inrush_a[k]
                        a = parent[a]
                t_first = min(t_psu)
                srt = sorted(t_psu)
                ptb = min(max(ptb_l[s], 1), m)
                t_on = srt[ptb - 1]
                t_post = max(t_first + bmc[s], t_on)
                e2 = t_post + post_r[s][0]
                e3 = t_post + post_r[s][1]
                e4 = t_post + (post_r[s][0] + boot_r[s][0])
                e5 = t_post + (post_r[s][1] + boot_r[s][1])
                times = (t_first, t_post, e2, e3, e4, e5)
                t_last = max((t for t in t_psu if t < _INF), default=-_INF)
                spread_fail = phase == 1 and t_last > t_post and not partial
                rises = []
                if not spread_fail:
                    bps = sorted({*t_psu, t_post, e2, e3, e4, e5} - {_INF})
                    hist = list(zip(h_t[h_start[s]:h_start[s + 1]],
                                    h_w[h_start[s]:h_start[s + 1]], strict=True))
                    last_t = -_INF
                    n_prev = 0
                    n_prev_r = [0] * nr
                    for t in bps:
                        w_t = w_first[s]
                        for ht, hw in hist:
                            if ht <= t:
                                w_t = hw
                        on = [jj for jj in range(m) if t_psu[jj] <= t]
                        n_on = len(on)
                        n_on_r = [sum(1 for jj in on if x in member[jj]) for x in range(nr)]
                        u = env(t, times, s, w_t)
                        prev_u = env(last_t, times, s, w_t) if last_t > -_INF else 0.0
                        if u > prev_u or (u < prev_u and not (t > e4
                                                              and w_final[s] > w_now[s])):
                            rises.append((t, -1 - z, u - prev_u))
                        for x in range(nr):
                            c = u * n_on_r[x] / n_on if n_on > 0 else 0.0
                            c_prev = prev_u * n_prev_r[x] / n_prev if n_prev > 0 else 0.0
                            if c > c_prev:
                                rises.append((t, rid[x], c - c_prev))
                        n_prev_r = n_on_r
                        n_prev = n_on
                        last_t = t
                    w_before = w_first[s]
                    for ht, hw in hist:
                        du = env(ht, times, s, hw) - env(ht, times, s, w_before)
                        w_before = hw
                        if du <= 0.0:
                            continue
                        on = [jj for jj in range(m) if t_psu[jj] <= ht]
                        n_on = len(on)
                        rises.append((ht, -1 - z, du))
                        for x in range(nr):
                            cnt = sum(1 for jj in on if x in member[jj])
                            c = du * cnt / n_on if n_on > 0 else 0.0
                            if c > 0.0:
                                rises.append((ht, rid[x], c))
                if spread_fail:
                    fail, fail_t, fail_k, undo = 1, 0.0, 0, []
                else:
                    fail, fail_t, fail_k, undo = try_commit(rises, phase == 1)
                if fail == 0:
                    placed = True
                    for t, _, _ in rises:
                        quiet = max(quiet, t)
                    quiet = max(quiet, t_last + guard_max + micro)
                    for jj, k in enumerate(mine):
                        psu_out[k] = t_psu[jj]
                    if phase == 1:
                        for x in range(nr):
                            hint_r[rid[x]] = max(hint_r[rid[x]], t0)
                        hint_z[z] = max(hint_z[z], t0)
                        class_next = max(class_next, t_first)
                    break
                rollback(undo)
                for a, last, slot_a, sums in reversed(cursors):
                    last_on[a] = last
                    mag_slot[a] = slot_a
                    mag_sum[a] = sums
                if fail == 3 or phase == 0:
                    break
                if fail == 4:
                    result = 3
                    break
                step = dt_r
                if fail == 2:
                    step = max(step, t_base + (fail_k + 1) * dt_z - fail_t)
                if t0 > quiet and 0.05 * (t0 - quiet) > step:
                    step = 0.05 * (t0 - quiet)
                t0 += step
            if not placed:
                status[s] = result
                continue
            status[s] = 2 if mode[s] == 1 else 5 if hold[z] else 1
            srv_t[s] = times

    events.sort(key=lambda e: e[0])
    return (np.array(psu_out, dtype=np.float64),
            np.array([e[0] for e in events], dtype=np.float64),
            np.array([e[1] for e in events], dtype=np.int32),
            np.array([e[2] for e in events], dtype=np.float64),
            np.array(status, dtype=np.int8))


# --------------------------------------------------------------------------- prediction
def predict_plan(**kw: Any) -> dict[str, Any]:
    """Same keyword arguments and results as :func:`kernels.planner.predict_plan`, computed by
    brute force: at every event time, every server's envelope and every node's load from
    scratch; ramp rises by scanning all pairs of changes less than a window apart."""
    parent = _lst(kw["parent_idx"])
    v = _lst(kw["v_ln_v"])
    node_feed = _lst(kw["node_feed"])
    limit = np.asarray(kw["limit_a"], dtype=np.float64).tolist()
    ramp_of = _lst(kw["ramp_of_node"])
    n_ramp = int(kw["n_ramp"])
    node_of, code_of, feed_of, on_s = (_lst(kw["psu_node"]), _lst(kw["psu_phase"]),
                                       _lst(kw["psu_feed"]), _lst(kw["psu_on_s"]))
    start, members = _lst(kw["server_psu_start"]), _lst(kw["server_psu"])
    pf, zone_of = _lst(kw["server_pf"]), _lst(kw["server_zone"])
    times = np.asarray(kw["server_times_s"], dtype=np.float64).tolist()
    standby, post_w, boot_w = _lst(kw["standby_w"]), _lst(kw["post_w"]), _lst(kw["boot_w"])
    work_first = _lst(kw["work_first_w"])
    cap_work, cap_server = _lst(kw["cap_work_w"]), _lst(kw["cap_server"])
    ev_t, ev_cap = _lst(kw["ev_t_s"]), _lst(kw["ev_cap"])
    tau = _lst(kw["zone_tau_s"])
    background = np.asarray(kw["background_a"], dtype=np.float64).tolist()
    window = float(kw["window_s"])
    n_nodes, n_servers, n_zones = len(parent), len(pf), len(tau)

    peak = [[list(background[sc][i]) for i in range(n_nodes)] for sc in range(3)]

    def util(loads: list[list[list[float]]], i: int) -> float:
        worst = 0.0
        for sc in range(3):
            if (sc == 1 and node_feed[i] == 0) or (sc == 2 and node_feed[i] == 1):
                continue
            for p in range(3):
                lim = limit[i][p]
                ld = loads[sc][i][p]
                u = ld / lim if lim > 0.0 else (_INF if ld > 1e-9 else 0.0)
                worst = max(worst, u)
        return worst

    peak_u = [util(peak, i) for i in range(n_nodes)]
    peak_t = [-_INF] * n_nodes
    work = list(work_first)
    ramp_series: list[list[tuple[float, float]]] = [[] for _ in range(n_ramp)]
    zone_peak = [0.0] * n_zones
    zone_peak_t = [-_INF] * n_zones
    zone_def = [0.0] * n_zones
    zone_def_t = [-_INF] * n_zones
    deficit = [0.0] * n_zones
    heat_prev = [0.0] * n_zones
    t_prev = [-_INF] * n_zones
    seen_cap = 0
    cap_order = sorted(range(len(ev_cap)), key=lambda i: ev_t[i])
    distinct = sorted(set(ev_t))
    for t in distinct:
        for i in cap_order:
            if ev_t[i] == t and ev_cap[i] >= 0:
                work[cap_server[ev_cap[i]]] = cap_work[ev_cap[i]]
                seen_cap += 1
        loads = [[list(background[sc][i]) for i in range(n_nodes)] for sc in range(3)]
        ramp_w = [0.0] * n_ramp
        heat = [0.0] * n_zones
        for s in range(n_servers):
            tf, tp, e2, e3, e4, e5 = times[s]
            u = envelope_w(t, tf, tp, e2, e3, e4, e5, standby[s], post_w[s], boot_w[s],
                           work[s])[0]
            heat[zone_of[s]] += u
            mine = members[start[s]:start[s + 1]]
            for sc in range(3):
                alive = [k for k in mine if on_s[k] <= t and feed_of[k] != sc - 1]
                for k in alive:
                    share = u / pf[s] / len(alive)
                    real = u / len(alive)
                    a = node_of[k]
                    while a >= 0:
                        for p, frac in _split(code_of[k]):
                            loads[sc][a][p] += share * frac / v[a]
                        if sc == 0 and ramp_of[a] >= 0:
                            ramp_w[ramp_of[a]] += real
                        a = parent[a]
        for sc in range(3):
            for i in range(n_nodes):
                for p in range(3):
                    peak[sc][i][p] = max(peak[sc][i][p], loads[sc][i][p])
        for i in range(n_nodes):
            u_i = util(loads, i)
            if u_i > peak_u[i]:
                peak_u[i] = u_i
                peak_t[i] = t
        for r in range(n_ramp):
            if not ramp_series[r] or ramp_series[r][-1][1] != ramp_w[r]:
                ramp_series[r].append((t, ramp_w[r]))
        for z in range(n_zones):
            if heat[z] != heat_prev[z]:
                if t_prev[z] > -_INF:
                    deficit[z] *= math.exp(-(t - t_prev[z]) / tau[z])
                deficit[z] += heat[z] - heat_prev[z]
                heat_prev[z] = heat[z]
                t_prev[z] = t
                if heat[z] > zone_peak[z]:
                    zone_peak[z] = heat[z]
                    zone_peak_t[z] = t
                if deficit[z] > zone_def[z]:
                    zone_def[z] = deficit[z]
                    zone_def_t[z] = t
    rise_w = [0.0] * n_ramp
    rise_t = [-_INF] * n_ramp
    for r in range(n_ramp):
        series = ramp_series[r]
        for j, (t_j, v_j) in enumerate(series):
            for a in range(j, -1, -1):
                t_a = series[a][0]
                if not t_a > t_j - window:
                    break
                before = series[a - 1][1] if a > 0 else 0.0
                if v_j - before > rise_w[r]:
                    rise_w[r] = v_j - before
                    rise_t[r] = t_j
    return {
        "peak_a": np.array(peak, dtype=np.float64).reshape(3, n_nodes, 3),
        "peak_u": np.array(peak_u, dtype=np.float64),
        "peak_t_s": np.array(peak_t, dtype=np.float64),
        "ramp_rise_w": np.array(rise_w, dtype=np.float64),
        "ramp_rise_t_s": np.array(rise_t, dtype=np.float64),
        "zone_peak_w": np.array(zone_peak, dtype=np.float64),
        "zone_peak_t_s": np.array(zone_peak_t, dtype=np.float64),
        "zone_deficit_w": np.array(zone_def, dtype=np.float64),
        "zone_deficit_t_s": np.array(zone_def_t, dtype=np.float64),
    }
