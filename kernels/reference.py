"""Plain-Python twins of the kernels, for the tests and the benchmark.

Pure Python loops over lists and scalars, no numba and no numpy vectorisation; numpy appears
only to turn the arguments into lists (``tolist``) and the results back into float64 arrays.
Where it is easy the algorithm differs from the kernel's (the tree sum walks each node's
ancestors instead of adding children to parents), so that a shared mistake is less likely.
These functions do not validate their inputs: call them with arrays that the public kernels
accept. Each has the same name, arguments, units and result as its kernel.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "advance_servers",
    "aggregate_tree",
    "alive_changed",
    "breaker_step",
    "commit_loads",
    "energize",
    "feed_loss_current_a",
    "gpu_temperature_step",
    "headroom_a",
    "inrush_x",
    "measured_at",
    "measured_load_a",
    "meter_sample",
    "neutral_current_a",
    "node_quality",
    "node_utilization",
    "phase_current_a",
    "psu_load_va",
    "refresh_nodes",
    "screen_readings",
    "server_power",
    "step_budget",
    "time_to_trip_s",
    "tree_current_a",
    "utilization_by_kind",
    "worst_case_current_a",
    "worst_case_current_va",
    "worst_case_headroom_a",
    "worst_case_utilization",
    "worst_server_power",
    "zone_step",
]

FloatArray = npt.NDArray[np.float64]

# Connection code -> (phase, fraction of the share as VA-equivalent on that phase).
_SQRT3 = math.sqrt(3.0)
_PHASE_SPLIT: dict[int, list[tuple[int, float]]] = {
    0: [(0, 1.0)],
    1: [(1, 1.0)],
    2: [(2, 1.0)],
    3: [(0, 1.0 / _SQRT3), (1, 1.0 / _SQRT3)],
    4: [(1, 1.0 / _SQRT3), (2, 1.0 / _SQRT3)],
    5: [(2, 1.0 / _SQRT3), (0, 1.0 / _SQRT3)],
    6: [(0, 1.0 / 3.0), (1, 1.0 / 3.0), (2, 1.0 / 3.0)],
}


def _lst(a: Any) -> list[Any]:
    return np.asarray(a).tolist()


def psu_load_va(
    server_p_w: Any,
    server_pf: Any,
    psu_server: Any,
    psu_node: Any,
    psu_phase: Any,
    psu_alive: Any,
    n_nodes: int,
) -> FloatArray:
    """Per-phase VA of the alive PSUs on their outlet nodes, (n_nodes, 3) VA."""
    p_w, pf = _lst(server_p_w), _lst(server_pf)
    servers, nodes, phases, alive = (
        _lst(psu_server),
        _lst(psu_node),
        _lst(psu_phase),
        _lst(psu_alive),
    )
    alive_psus: dict[int, list[int]] = {}
    for k, s in enumerate(servers):
        if alive[k]:
            alive_psus.setdefault(s, []).append(k)
    out = [[0.0, 0.0, 0.0] for _ in range(n_nodes)]
    for s, psus in alive_psus.items():
        share_va = p_w[s] / pf[s] / len(psus)
        for k in psus:
            for phase, fraction in _PHASE_SPLIT[phases[k]]:
                out[nodes[k]][phase] += share_va * fraction
    return np.array(out, dtype=np.float64).reshape(n_nodes, 3)


def aggregate_tree(parent_idx: Any, leaf_va: Any) -> FloatArray:
    """Load of each node's subtree, (n, 3) VA: each node's own load added to every ancestor."""
    parents = _lst(parent_idx)
    own = _lst(leaf_va)
    out = [list(row) for row in own]
    for i, row in enumerate(own):
        p = parents[i]
        while p >= 0:
            for phase in range(3):
                out[p][phase] += row[phase]
            p = parents[p]
    return np.array(out, dtype=np.float64).reshape(len(parents), 3)


def phase_current_a(node_va: Any, v_ln_v: Any) -> FloatArray:
    """Phase current VA / V_LN, (n, 3) A."""
    va, v = _lst(node_va), _lst(v_ln_v)
    out = [[va[i][p] / v[i] for p in range(3)] for i in range(len(v))]
    return np.array(out, dtype=np.float64).reshape(len(v), 3)


def neutral_current_a(i_a: Any) -> FloatArray:
    """Neutral current √(Ia² + Ib² + Ic² − IaIb − IbIc − IcIa), (n,) A."""
    out = []
    for a, b, c in _lst(i_a):
        r = a * a + b * b + c * c - a * b - b * c - c * a
        out.append(math.sqrt(max(r, 0.0)))
    return np.array(out, dtype=np.float64)


def tree_current_a(
    server_p_w: Any,
    server_pf: Any,
    psu_server: Any,
    psu_node: Any,
    psu_phase: Any,
    psu_alive: Any,
    parent_idx: Any,
    v_ln_v: Any,
) -> FloatArray:
    """Phase current at every node, (n, 3) A."""
    n = len(_lst(parent_idx))
    va = psu_load_va(server_p_w, server_pf, psu_server, psu_node, psu_phase, psu_alive, n)
    return phase_current_a(aggregate_tree(parent_idx, va), v_ln_v)


def breaker_step(
    i_a: Any,
    rating_a: Any,
    thermal_k: Any,
    thermal_tau_s: Any,
    magnetic_x: Any,
    short_pickup_x: Any,
    short_delay_s: Any,
    dt_s: float,
    theta: Any,
    short_timer_s: Any,
    tripped: Any,
    cause: Any,
) -> tuple[FloatArray, FloatArray, npt.NDArray[np.bool_], npt.NDArray[np.int8]]:
    """One breaker step; returns new (theta, short_timer_s, tripped, cause), inputs untouched."""
    cur, rating = _lst(i_a), _lst(rating_a)
    ks, taus, ms = _lst(thermal_k), _lst(thermal_tau_s), _lst(magnetic_x)
    pickups, delays = _lst(short_pickup_x), _lst(short_delay_s)
    th_in, timer_in = _lst(theta), _lst(short_timer_s)
    new_tripped, new_cause = _lst(tripped), _lst(cause)
    new_theta: list[list[float]] = []
    new_timer: list[list[float]] = []
    for i in range(len(cur)):
        thermal = short = magnetic = False
        th_row, timer_row = [], []
        for p in range(3):
            if rating[i][p] <= 0.0:
                th_row.append(0.0)
                timer_row.append(0.0)
                continue
            x = cur[i][p] / rating[i][p]
            th = x * x + (th_in[i][p] - x * x) * math.exp(-dt_s / taus[i])
            th_row.append(th)
            thermal = thermal or th >= ks[i] * ks[i]
            if x >= pickups[i]:
                timer = timer_in[i][p] + dt_s
                short = short or timer >= delays[i]
            else:
                timer = 0.0
            timer_row.append(timer)
            magnetic = magnetic or x >= ms[i]
        new_theta.append(th_row)
        new_timer.append(timer_row)
        if not new_tripped[i]:
            code = 3 if magnetic else 2 if short else 1 if thermal else 0
            if code:
                new_tripped[i] = True
                new_cause[i] = code
    n = len(cur)
    return (
        np.array(new_theta, dtype=np.float64).reshape(n, 3),
        np.array(new_timer, dtype=np.float64).reshape(n, 3),
        np.array(new_tripped, dtype=np.bool_),
        np.array(new_cause, dtype=np.int8),
    )


def time_to_trip_s(
    i_a: Any,
    rating_a: Any,
    thermal_k: Any,
    thermal_tau_s: Any,
    magnetic_x: Any,
    short_pickup_x: Any,
    short_delay_s: Any,
    theta: Any,
    short_timer_s: Any,
) -> FloatArray:
    """Earliest trip time at constant current, (n,) s; inf when never."""
    cur, rating = _lst(i_a), _lst(rating_a)
    ks, taus, ms = _lst(thermal_k), _lst(thermal_tau_s), _lst(magnetic_x)
    pickups, delays = _lst(short_pickup_x), _lst(short_delay_s)
    th, timers = _lst(theta), _lst(short_timer_s)
    out = []
    for i in range(len(cur)):
        times = [math.inf]
        for p in range(3):
            if rating[i][p] <= 0.0:
                continue
            x = cur[i][p] / rating[i][p]
            if x >= ms[i]:
                times.append(0.0)
            if x >= pickups[i]:
                times.append(max(delays[i] - timers[i][p], 0.0))
            k2 = ks[i] * ks[i]
            if th[i][p] >= k2:
                times.append(0.0)
            elif x > ks[i]:
                times.append(taus[i] * math.log((x * x - th[i][p]) / (x * x - k2)))
        out.append(min(times))
    return np.array(out, dtype=np.float64)


def _headroom(limit: float, load: float) -> float:
    if limit == 0.0 and load == 0.0:
        return math.inf
    return limit - load


def headroom_a(i_a: Any, limit_a: Any) -> FloatArray:
    """limit − load per pole, (n, 3) A; +inf on an absent pole (limit 0) without load."""
    cur, lim = _lst(i_a), _lst(limit_a)
    out = [[_headroom(lim[i][p], cur[i][p]) for p in range(3)] for i in range(len(cur))]
    return np.array(out, dtype=np.float64).reshape(len(cur), 3)


def feed_loss_current_a(
    server_p_w: Any,
    server_pf: Any,
    psu_server: Any,
    psu_node: Any,
    psu_phase: Any,
    psu_feed: Any,
    psu_alive: Any,
    parent_idx: Any,
    v_ln_v: Any,
) -> FloatArray:
    """Phase currents in the scenarios normal / feed A lost / feed B lost, (3, n, 3) A."""
    feeds, alive = _lst(psu_feed), _lst(psu_alive)
    scenarios = [
        alive,
        [a and f != 0 for a, f in zip(alive, feeds, strict=True)],
        [a and f != 1 for a, f in zip(alive, feeds, strict=True)],
    ]
    n = len(_lst(parent_idx))
    out = np.empty((3, n, 3), dtype=np.float64)
    for s, alive_s in enumerate(scenarios):
        out[s] = tree_current_a(
            server_p_w,
            server_pf,
            psu_server,
            psu_node,
            psu_phase,
            np.array(alive_s, dtype=np.bool_),
            parent_idx,
            v_ln_v,
        )
    return out


def worst_case_current_a(
    server_p_w: Any,
    server_contingency_p_w: Any,
    server_pf: Any,
    psu_server: Any,
    psu_node: Any,
    psu_phase: Any,
    psu_feed: Any,
    psu_alive: Any,
    parent_idx: Any,
    v_ln_v: Any,
) -> FloatArray:
    """Phase currents (3, n, 3) A: the normal scenario from ``server_p_w`` (every alive PSU),
    the feed-loss scenarios (feed A lost, feed B lost) from ``server_contingency_p_w``."""
    out = feed_loss_current_a(server_contingency_p_w, server_pf, psu_server, psu_node,
                              psu_phase, psu_feed, psu_alive, parent_idx, v_ln_v)
    out[0] = tree_current_a(server_p_w, server_pf, psu_server, psu_node, psu_phase, psu_alive,
                            parent_idx, v_ln_v)
    return out


def worst_case_current_va(
    server_p_w: Any,
    server_contingency_p_w: Any,
    server_pf: Any,
    psu_server: Any,
    psu_node: Any,
    psu_phase: Any,
    psu_feed: Any,
    psu_alive: Any,
    parent_idx: Any,
    v_ln_v: Any,
) -> tuple[FloatArray, FloatArray]:
    """(per-phase VA (3, n, 3), phase currents (3, n, 3) A) of the three scenarios of
    :func:`worst_case_current_a`: what the partial recomputation of the worst case keeps and
    gives, computed in full (the VA as the currents times V_LN)."""
    cur = worst_case_current_a(server_p_w, server_contingency_p_w, server_pf, psu_server,
                               psu_node, psu_phase, psu_feed, psu_alive, parent_idx, v_ln_v)
    v = np.asarray(v_ln_v, np.float64)
    return cur * v[None, :, None], cur


def measured_load_a(
    node_i_a: Any,
    trusted: Any,
    metered: Any,
    model_scenario_i_a: Any,
    parent_idx: Any,
    departure_a: Any,
    tolerance_x: float,
    tolerance_a: float,
) -> tuple[FloatArray, FloatArray, FloatArray, bool, bool]:
    """The measured load beyond a model, carried up the tree: (background (n, 3) A, worst case
    (3, n, 3) A, measured (n, 3) A, any excess, background above ``departure_a`` somewhere).

    Recursive instead of by levels: B[i] = max(excess[i], sum of B over the children of i),
    children before parents (parent_idx[i] < i); excess = max(m - M - (x·m + a), 0) of a
    trusted finite reading m against the model's normal scenario M. The worst case is
    model + (B, 2B, 2B); measured is m where trusted and finite, else the worst case's normal
    scenario at a metered node, else 0. The kernel it checks takes the tree's depth levels
    as well; for a tree whose levels are its depths this gives the same."""
    cur, ok, met = _lst(node_i_a), _lst(trusted), _lst(metered)
    model, parent, dep = _lst(model_scenario_i_a), _lst(parent_idx), _lst(departure_a)
    n = len(parent)
    excess = [[0.0, 0.0, 0.0] for _ in range(n)]
    for i in range(n):
        for c in range(3):
            m = cur[i][c]
            if ok[i] and math.isfinite(m):
                excess[i][c] = max(m - model[0][i][c] - (tolerance_x * m + tolerance_a), 0.0)
    children: list[list[int]] = [[] for _ in range(n)]
    for i in range(n):
        if parent[i] >= 0:
            children[parent[i]].append(i)
    b = [[0.0, 0.0, 0.0] for _ in range(n)]
    for i in range(n - 1, -1, -1):
        for c in range(3):
            b[i][c] = max(excess[i][c], sum(b[k][c] for k in children[i]))
    worst = [[[model[s][i][c] + (1.0 if s == 0 else 2.0) * b[i][c] for c in range(3)]
              for i in range(n)] for s in range(3)]
    meas = [[cur[i][c] if ok[i] and math.isfinite(cur[i][c])
             else (worst[0][i][c] if met[i] else 0.0) for c in range(3)] for i in range(n)]
    any_excess = any(e > 0.0 for row in excess for e in row)
    departed = any(b[i][c] > dep[i][c] for i in range(n) for c in range(3))
    return (np.array(b, dtype=np.float64).reshape(n, 3),
            np.array(worst, dtype=np.float64).reshape(3, n, 3),
            np.array(meas, dtype=np.float64).reshape(n, 3), any_excess, departed)


def _surviving(feed: int) -> list[int]:
    return [s for s in (0, 1, 2) if not (s == 1 and feed == 0) and not (s == 2 and feed == 1)]


def worst_case_headroom_a(scenario_i_a: Any, node_feed: Any, limit_a: Any) -> FloatArray:
    """limit − max load over surviving scenarios, (n, 3) A."""
    cur, feeds, lim = _lst(scenario_i_a), _lst(node_feed), _lst(limit_a)
    out = []
    for i, feed in enumerate(feeds):
        row = []
        for p in range(3):
            load = max(cur[s][i][p] for s in _surviving(feed))
            row.append(_headroom(lim[i][p], load))
        out.append(row)
    return np.array(out, dtype=np.float64).reshape(len(feeds), 3)


def worst_case_utilization(scenario_i_a: Any, node_feed: Any, limit_a: Any) -> FloatArray:
    """max load / limit over present poles and surviving scenarios, (n,) 1."""
    cur, feeds, lim = _lst(scenario_i_a), _lst(node_feed), _lst(limit_a)
    out = []
    for i, feed in enumerate(feeds):
        worst = 0.0
        for s in _surviving(feed):
            for p in range(3):
                load, limit = cur[s][i][p], lim[i][p]
                if limit > 0.0:
                    worst = max(worst, load / limit)
                elif load > 0.0:
                    worst = math.inf
        out.append(worst)
    return np.array(out, dtype=np.float64)


# ============================================================================ plant kernels
# Twins of kernels.plant and kernels.thermal. The kernels write in place; these take the
# in/out arrays as inputs, leave them untouched and return the new values.

_OFF, _BMC, _STANDBY, _POST, _BOOT, _IDLE, _LOADED, _HALTED = range(8)
_MASK64 = (1 << 64) - 1


def advance_servers(
    t_end_s: float,
    alive_count: Any,
    psus_to_boot: Any,
    bmc_ready_s: Any,
    post_s: Any,
    boot_s: Any,
    work: Any,
    state: Any,
    next_s: Any,
) -> tuple[npt.NDArray[np.int8], FloatArray, npt.NDArray[np.bool_], float]:
    """Timed server transitions due by t_end_s; returns (state, next_s, dirty, next_min_s)."""
    st, nxt = _lst(state), _lst(next_s)
    alive, need, post, boot, wk = (_lst(alive_count), _lst(psus_to_boot), _lst(post_s),
                                   _lst(boot_s), _lst(work))
    dirty = [False] * len(st)
    for s in range(len(st)):
        while nxt[s] <= t_end_s:
            dirty[s] = True
            if st[s] == _BMC:
                if alive[s] >= need[s]:
                    st[s], nxt[s] = _POST, nxt[s] + post[s]
                else:
                    st[s], nxt[s] = _STANDBY, math.inf
            elif st[s] == _POST:
                st[s], nxt[s] = _BOOT, nxt[s] + boot[s]
            elif st[s] == _BOOT:
                st[s], nxt[s] = (_LOADED if wk[s] else _IDLE), math.inf
            else:
                nxt[s] = math.inf
    return (np.array(st, dtype=np.int8), np.array(nxt, dtype=np.float64),
            np.array(dirty, dtype=np.bool_), min(nxt, default=math.inf))


def alive_changed(
    t_s: float,
    psus: Any,
    psu_alive: Any,
    psu_server: Any,
    psus_to_boot: Any,
    bmc_ready_s: Any,
    post_s: Any,
    alive_count: Any,
    state: Any,
    next_s: Any,
    next_min_s: float = math.inf,
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int8], FloatArray, npt.NDArray[np.bool_],
           float]:
    """PSUs flipped at t_s; returns (alive_count, state, next_s, dirty, next_min_s)."""
    count, st, nxt = _lst(alive_count), _lst(state), _lst(next_s)
    alive, server = _lst(psu_alive), _lst(psu_server)
    servers = sorted({server[k] for k in _lst(psus)})
    for k in _lst(psus):
        count[server[k]] += 1 if alive[k] else -1
    dirty = [False] * len(st)
    best = next_min_s
    for s in servers:
        if count[s] <= 0:
            st[s], nxt[s] = _OFF, math.inf
        elif st[s] == _OFF:
            st[s], nxt[s] = _BMC, t_s + _lst(bmc_ready_s)[s]
        elif st[s] == _STANDBY and count[s] >= _lst(psus_to_boot)[s]:
            st[s], nxt[s] = _POST, t_s + _lst(post_s)[s]
        dirty[s] = True
        best = min(best, nxt[s])
    return (np.array(count, dtype=np.int32), np.array(st, dtype=np.int8),
            np.array(nxt, dtype=np.float64), np.array(dirty, dtype=np.bool_), best)


def server_power(
    servers: Any,
    state: Any,
    alive_count: Any,
    cap_w: Any,
    ignore_caps: Any,
    slowed: Any,
    overdraw_x: Any,
    standby_w: Any,
    post_w: Any,
    boot_w: Any,
    idle_w: Any,
    gpus: Any,
    gpu_idle_w: Any,
    gpu_min_cap_w: Any,
    gpu_max_w: Any,
    other_max_w: Any,
    psus_to_carry: Any,
    psu_rating_w: Any,
    slowdown_x: float,
    p_w: Any,
    gpu_w: Any,
    braked: Any,
) -> tuple[FloatArray, FloatArray, npt.NDArray[np.bool_]]:
    """Power of the listed servers from their state; returns (p_w, gpu_w, braked)."""
    out_p, out_g, out_b = _lst(p_w), _lst(gpu_w), _lst(braked)
    for s in _lst(servers):
        st, alive = int(_lst(state)[s]), _lst(alive_count)[s]
        n_gpu, other = _lst(gpus)[s], _lst(other_max_w)[s]
        g = 0.0
        if alive <= 0 or st == _OFF:
            p = 0.0
        elif st in (_BMC, _STANDBY):
            p = _lst(standby_w)[s]
        elif st == _POST:
            p = _lst(post_w)[s] * _lst(overdraw_x)[s]
        elif st == _BOOT:
            p = _lst(boot_w)[s] * _lst(overdraw_x)[s]
        elif st == _IDLE:
            p, g = _lst(idle_w)[s], _lst(gpu_idle_w)[s]
        elif st == _LOADED:
            lo, hi = _lst(gpu_min_cap_w)[s], _lst(gpu_max_w)[s]
            g = hi if _lst(ignore_caps)[s] else min(max(_lst(cap_w)[s], lo), hi)
            if _lst(slowed)[s]:
                g *= slowdown_x
            p = other + n_gpu * g
        else:
            p = max(_lst(idle_w)[s] - n_gpu * _lst(gpu_idle_w)[s], 0.0)
        is_braked = False
        if 0 < alive < _lst(psus_to_carry)[s] and p > alive * _lst(psu_rating_w)[s]:
            limit = alive * _lst(psu_rating_w)[s]
            is_braked = True
            if st == _LOADED and n_gpu > 0:
                g = max((limit - other) / n_gpu, 0.0)
                p = other + n_gpu * g
            p = min(p, limit)
        out_p[s], out_g[s], out_b[s] = p, g, is_braked
    return (np.array(out_p, dtype=np.float64), np.array(out_g, dtype=np.float64),
            np.array(out_b, dtype=np.bool_))


def _loads(server_p_w: list[float], server_pf: list[float], psu_server: list[int],
           psu_node: list[int], psu_phase: list[int], alive: list[bool], parent: list[int],
           n: int) -> tuple[list[list[float]], list[list[float]]]:
    """Per-phase VA and W at every node, from scratch (ancestor walk per PSU)."""
    count: dict[int, int] = {}
    for k, s in enumerate(psu_server):
        if alive[k]:
            count[s] = count.get(s, 0) + 1
    va = [[0.0, 0.0, 0.0] for _ in range(n)]
    w = [[0.0, 0.0, 0.0] for _ in range(n)]
    for k, s in enumerate(psu_server):
        if not alive[k]:
            continue
        share_w = server_p_w[s] / count[s]
        node = psu_node[k]
        while node >= 0:
            for phase, fraction in _PHASE_SPLIT[psu_phase[k]]:
                va[node][phase] += share_w / server_pf[s] * fraction
                w[node][phase] += share_w * fraction
            node = parent[node]
    return va, w


def commit_loads(
    t_s: float,
    servers: Any,
    server_p_w: Any,
    server_pf: Any,
    server_zone: Any,
    psu_start: Any,
    psu_order: Any,
    psu_alive: Any,
    psu_node: Any,
    psu_phase: Any,
    parent_idx: Any,
    v_ln_v: Any,
    rating_a: Any,
    thermal_tau_s: Any,
    short_pickup_x: Any,
    server_p_applied_w: Any,
    psu_alive_applied: Any,
    node_va: Any,
    node_pw: Any,
    theta: Any,
    short_timer_s: Any,
    t_state_s: Any,
    energy_j: Any,
    zone_p_w: Any,
) -> dict[str, Any]:
    """The loads after the listed servers' change, by difference of two full computations
    (before: applied powers and PSU flags of those servers; after: the new ones); returns the
    new server_p_applied_w, psu_alive_applied, node_va, node_pw, theta, short_timer_s,
    t_state_s, energy_j, zone_p_w and the set of touched nodes."""
    listed = set(_lst(servers))
    p_new, p_old = _lst(server_p_w), _lst(server_p_applied_w)
    alive_new, alive_old = _lst(psu_alive), _lst(psu_alive_applied)
    psu_server, node_of, phase = _lst(psu_order), _lst(psu_node), _lst(psu_phase)
    start = _lst(psu_start)
    server_of = [0] * len(alive_new)
    for s in range(len(start) - 1):
        for q in range(start[s], start[s + 1]):
            server_of[psu_server[q]] = s
    parent, n = _lst(parent_idx), len(_lst(parent_idx))
    pf = _lst(server_pf)
    before_p = [p_old[s] if s in listed else 0.0 for s in range(len(p_new))]
    after_p = [p_new[s] if s in listed else 0.0 for s in range(len(p_new))]
    before_alive = [alive_old[k] and server_of[k] in listed for k in range(len(alive_new))]
    after_alive = [alive_new[k] and server_of[k] in listed for k in range(len(alive_new))]
    va0, w0 = _loads(before_p, pf, server_of, node_of, phase, before_alive, parent, n)
    va1, w1 = _loads(after_p, pf, server_of, node_of, phase, after_alive, parent, n)
    # touched: nodes on the path of a listed server's PSU whose share changed
    touched: set[int] = set()
    counts_old = {s: sum(1 for k in range(len(alive_new)) if server_of[k] == s and alive_old[k])
                  for s in listed}
    counts_new = {s: sum(1 for k in range(len(alive_new)) if server_of[k] == s and alive_new[k])
                  for s in listed}
    for k in range(len(alive_new)):
        s = server_of[k]
        if s not in listed:
            continue
        old = p_old[s] / counts_old[s] if alive_old[k] and counts_old[s] else 0.0
        new = p_new[s] / counts_new[s] if alive_new[k] and counts_new[s] else 0.0
        if new - old != 0.0:
            node = node_of[k]
            while node >= 0:
                touched.add(node)
                node = parent[node]
    va, pw = [list(r) for r in _lst(node_va)], [list(r) for r in _lst(node_pw)]
    th, timer = [list(r) for r in _lst(theta)], [list(r) for r in _lst(short_timer_s)]
    t_state, energy = _lst(t_state_s), _lst(energy_j)
    rating, tau, pickup, v = (_lst(rating_a), _lst(thermal_tau_s), _lst(short_pickup_x),
                              _lst(v_ln_v))
    for i in touched:
        dt = t_s - t_state[i]
        if dt > 0.0:
            for p in range(3):
                if rating[i][p] <= 0.0:
                    continue
                x = va[i][p] / v[i] / rating[i][p]
                th[i][p] = x * x + (th[i][p] - x * x) * math.exp(-dt / tau[i])
                timer[i][p] = timer[i][p] + dt if x >= pickup[i] else 0.0
            energy[i] += sum(pw[i]) * dt
        t_state[i] = t_s
    for i in range(n):
        for p in range(3):
            va[i][p] += va1[i][p] - va0[i][p]
            pw[i][p] += w1[i][p] - w0[i][p]
    zone = _lst(zone_p_w)
    applied_p = list(p_old)
    applied_alive = list(alive_old)
    for s in listed:
        drawn_new = p_new[s] if counts_new[s] else 0.0
        drawn_old = p_old[s] if counts_old[s] else 0.0
        zone[_lst(server_zone)[s]] += drawn_new - drawn_old
        applied_p[s] = p_new[s]
    for k in range(len(alive_new)):
        if server_of[k] in listed:
            applied_alive[k] = alive_new[k]
    return {
        "server_p_applied_w": np.array(applied_p, dtype=np.float64),
        "psu_alive_applied": np.array(applied_alive, dtype=np.bool_),
        "node_va": np.array(va, dtype=np.float64).reshape(n, 3),
        "node_pw": np.array(pw, dtype=np.float64).reshape(n, 3),
        "theta": np.array(th, dtype=np.float64).reshape(n, 3),
        "short_timer_s": np.array(timer, dtype=np.float64).reshape(n, 3),
        "t_state_s": np.array(t_state, dtype=np.float64),
        "energy_j": np.array(energy, dtype=np.float64),
        "zone_p_w": np.array(zone, dtype=np.float64),
        "touched": touched,
    }


def refresh_nodes(
    t_s: float,
    nodes: Any,
    node_va: Any,
    v_ln_v: Any,
    rating_a: Any,
    limit_a: Any,
    thermal_k: Any,
    thermal_tau_s: Any,
    magnetic_x: Any,
    short_pickup_x: Any,
    short_delay_s: Any,
    theta: Any,
    short_timer_s: Any,
    breaker_live: Any,
    t_trip_s: Any,
    peak_utilization: Any,
    over_since_s: Any,
    over_peak_x: Any,
) -> dict[str, Any]:
    """Predicted trips, peaks and overload events of the listed nodes; returns the new
    t_trip_s, peak_utilization, over_since_s, over_peak_x, the events as (node, kind,
    start_s, peak_x) and the earliest trip (t, node) over all nodes."""
    trip, peak = _lst(t_trip_s), _lst(peak_utilization)
    since, over_x = _lst(over_since_s), _lst(over_peak_x)
    va, v, rating, limit = _lst(node_va), _lst(v_ln_v), _lst(rating_a), _lst(limit_a)
    events = []
    cur = [[max(va[i][p], 0.0) / v[i] for p in range(3)] for i in range(len(v))]
    ttt = time_to_trip_s(np.array(cur).reshape(len(v), 3), rating_a, thermal_k, thermal_tau_s,
                         magnetic_x, short_pickup_x, short_delay_s, theta, short_timer_s)
    live = _lst(breaker_live)
    for i in _lst(nodes):
        trip[i] = t_s + float(ttt[i]) if live[i] else math.inf
        u = max([cur[i][p] / limit[i][p] for p in range(3) if limit[i][p] > 0.0
                 and rating[i][p] > 0.0], default=0.0)
        x = max([cur[i][p] / rating[i][p] for p in range(3) if rating[i][p] > 0.0], default=0.0)
        peak[i] = max(peak[i], u)
        if u > 1.0 + 1e-9:
            if since[i] == math.inf:
                since[i], over_x[i] = t_s, x
                events.append((i, 1, t_s, x))
            else:
                over_x[i] = max(over_x[i], x)
        elif since[i] != math.inf:
            events.append((i, 0, since[i], over_x[i]))
            since[i] = math.inf
    best = min(range(len(trip)), key=lambda i: (trip[i], i), default=-1)
    return {
        "t_trip_s": np.array(trip, dtype=np.float64),
        "peak_utilization": np.array(peak, dtype=np.float64),
        "over_since_s": np.array(since, dtype=np.float64),
        "over_peak_x": np.array(over_x, dtype=np.float64),
        "events": events,
        "trip_min": (trip[best] if best >= 0 else math.inf, best),
    }


def energize(parent_idx: Any, closed: Any) -> npt.NDArray[np.bool_]:
    """A node is energized when it and all its ancestors are closed (ancestor walk)."""
    parent, shut = _lst(parent_idx), _lst(closed)
    out = []
    for i in range(len(parent)):
        ok, node = True, i
        while node >= 0:
            ok = ok and bool(shut[node])
            node = parent[node]
        out.append(ok)
    return np.array(out, dtype=np.bool_)


_INRUSH_LINES = {0: [0], 1: [1], 2: [2], 3: [0, 1], 4: [1, 2], 5: [2, 0], 6: [0, 1, 2]}


def inrush_x(
    psus: Any,
    inrush_a: Any,
    psu_node: Any,
    psu_phase: Any,
    parent_idx: Any,
    v_ln_v: Any,
    node_va: Any,
    rating_a: Any,
) -> tuple[npt.NDArray[np.int32], FloatArray]:
    """Nodes above the PSUs and their largest (steady + inrush)/rating, sorted by node."""
    parent, v, va, rating = _lst(parent_idx), _lst(v_ln_v), _lst(node_va), _lst(rating_a)
    extra: dict[int, list[float]] = {}
    for k in _lst(psus):
        node = _lst(psu_node)[k]
        vae = _lst(inrush_a)[k] * v[node]
        while node >= 0:
            row = extra.setdefault(node, [0.0, 0.0, 0.0])
            for line in _INRUSH_LINES[_lst(psu_phase)[k]]:
                row[line] += vae
            node = parent[node]
    nodes = sorted(extra)
    xs = [max([(va[i][p] + extra[i][p]) / v[i] / rating[i][p] for p in range(3)
               if rating[i][p] > 0.0], default=0.0) for i in nodes]
    return np.array(nodes, dtype=np.int32), np.array(xs, dtype=np.float64)


def utilization_by_kind(node_va: Any, v_ln_v: Any, limit_a: Any, node_kind: Any,
                        n_kinds: int) -> FloatArray:
    """max load/limit per node kind over present poles, (n_kinds,)."""
    out = [0.0] * n_kinds
    va, v, limit, kind = _lst(node_va), _lst(v_ln_v), _lst(limit_a), _lst(node_kind)
    for i in range(len(v)):
        for p in range(3):
            if limit[i][p] > 0.0:
                out[kind[i]] = max(out[kind[i]], va[i][p] / v[i] / limit[i][p])
    return np.array(out, dtype=np.float64)


def _splitmix(state: int) -> tuple[int, float]:
    state = (state + 0x9E3779B97F4A7C15) & _MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z = z ^ (z >> 31)
    return state, (z >> 11) * (1.0 / 9007199254740992.0)


def _quantum(value: float, quantum: float) -> float:
    value = max(value, 0.0)
    return math.floor(value / quantum + 0.5) * quantum if quantum > 0.0 else value


def meter_sample(
    t_s: float,
    meters: Any,
    meter_node: Any,
    node_va: Any,
    node_pw: Any,
    v_ln_v: Any,
    energized: Any,
    energy_j: Any,
    t_state_s: Any,
    lie_x: Any,
    noise_x: float,
    voltage_noise_x: float,
    current_quantum_a: float,
    voltage_quantum_v: float,
    power_quantum_w: float,
    energy_quantum_wh: float,
    rng_state: int,
    i_a: Any,
    v_v: Any,
    p_w: Any,
    e_wh: Any,
    t_sample_s: Any,
) -> dict[str, Any]:
    """Meter readings with the same generator; returns new i_a, v_v, p_w, e_wh, t_sample_s
    and rng_state."""
    out_i, out_v, out_p = ([list(r) for r in _lst(a)] for a in (i_a, v_v, p_w))
    out_e, out_t = _lst(e_wh), _lst(t_sample_s)
    va, pw, v, on, lie = _lst(node_va), _lst(node_pw), _lst(v_ln_v), _lst(energized), _lst(lie_x)
    state = int(rng_state)
    for m in _lst(meters):
        i = _lst(meter_node)[m]
        for p in range(3):
            z = []
            for _ in range(3):
                state, u1 = _splitmix(state)
                state, u2 = _splitmix(state)
                z.append((u1 + u2 - 1.0) * math.sqrt(6.0))
            out_i[m][p] = _quantum(max(va[i][p], 0.0) / v[i] * (1.0 + noise_x * z[0]) * lie[m],
                                   current_quantum_a)
            out_p[m][p] = _quantum(max(pw[i][p], 0.0) * (1.0 + noise_x * z[1]) * lie[m],
                                   power_quantum_w)
            out_v[m][p] = _quantum(v[i] * (1.0 if on[i] else 0.0)
                                   * (1.0 + voltage_noise_x * z[2]), voltage_quantum_v)
        energy = (_lst(energy_j)[i] + sum(pw[i]) * (t_s - _lst(t_state_s)[i])) / 3600.0 * lie[m]
        out_e[m] = _quantum(energy, energy_quantum_wh)
        out_t[m] = t_s
    m_n = len(out_e)
    return {
        "i_a": np.array(out_i, dtype=np.float64).reshape(m_n, 3),
        "v_v": np.array(out_v, dtype=np.float64).reshape(m_n, 3),
        "p_w": np.array(out_p, dtype=np.float64).reshape(m_n, 3),
        "e_wh": np.array(out_e, dtype=np.float64),
        "t_sample_s": np.array(out_t, dtype=np.float64),
        "rng_state": state,
    }


def zone_step(
    dt_s: float,
    p_it_w: Any,
    capacity_w: Any,
    setpoint_c: Any,
    c_air_j_per_k: Any,
    c_mass_j_per_k: Any,
    g_w_per_k: Any,
    tau_cool_s: Any,
    t_air_c: Any,
    t_mass_c: Any,
    q_cool_w: Any,
    e_it_j: Any,
    e_cool_j: Any,
    max_substep_s: float = 1.0,
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:
    """Two-node zones advanced by dt_s; returns (t_air_c, t_mass_c, q_cool_w, e_it_j,
    e_cool_j)."""
    ta, tm, q = _lst(t_air_c), _lst(t_mass_c), _lst(q_cool_w)
    e_it, e_cool = _lst(e_it_j), _lst(e_cool_j)
    n_sub = math.ceil(dt_s / max_substep_s) if dt_s > 0.0 else 0
    for z in range(len(ta)):
        if n_sub < 1:
            break
        h = dt_s / n_sub
        tau, c_air, c_mass = _lst(tau_cool_s)[z], _lst(c_air_j_per_k)[z], _lst(c_mass_j_per_k)[z]
        p, g, cap, setp = (_lst(p_it_w)[z], _lst(g_w_per_k)[z], _lst(capacity_w)[z],
                           _lst(setpoint_c)[z])
        for _ in range(n_sub):
            target = min(max(p + c_air / tau * (ta[z] - setp), 0.0), cap)
            q[z] = target + (q[z] - target) * math.exp(-h / tau)
            flow = g * (ta[z] - tm[z])
            ta[z], tm[z] = ta[z] + h * (p - q[z] - flow) / c_air, tm[z] + h * flow / c_mass
            e_it[z] += p * h
            e_cool[z] += q[z] * h
    return tuple(np.array(a, dtype=np.float64) for a in (ta, tm, q, e_it, e_cool))  # type: ignore[return-value]


def gpu_temperature_step(
    dt_s: float,
    zone_t_air_c: Any,
    server_zone: Any,
    gpu_w: Any,
    gpu_max_w: Any,
    rise_k: float,
    tau_s: float,
    slowdown_c: float,
    shutdown_c: float,
    hysteresis_k: float,
    state: Any,
    gpu_temp_c: Any,
    slowed: Any,
) -> tuple[npt.NDArray[np.int8], FloatArray, npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """GPU temperatures and thresholds; returns (state, gpu_temp_c, slowed, changed)."""
    st, temp, slow = _lst(state), _lst(gpu_temp_c), _lst(slowed)
    changed = [False] * len(st)
    for s in range(len(st)):
        gmax = _lst(gpu_max_w)[s]
        target = _lst(zone_t_air_c)[_lst(server_zone)[s]]
        if gmax > 0.0:
            target += rise_k * _lst(gpu_w)[s] / gmax
        temp[s] = target + (temp[s] - target) * math.exp(-dt_s / tau_s)
        if st[s] == _LOADED and gmax > 0.0:
            if temp[s] >= shutdown_c:
                st[s], slow[s], changed[s] = _HALTED, False, True
            elif not slow[s] and temp[s] >= slowdown_c:
                slow[s], changed[s] = True, True
            elif slow[s] and temp[s] < slowdown_c - hysteresis_k:
                slow[s], changed[s] = False, True
        elif slow[s]:
            slow[s], changed[s] = False, True
    return (np.array(st, dtype=np.int8), np.array(temp, dtype=np.float64),
            np.array(slow, dtype=np.bool_), np.array(changed, dtype=np.bool_))


# ------------------------------------------------------------------ the core's per-tick passes
def _np_max(a: float, b: float) -> float:
    """numpy's maximum of two floats: ``a`` when it is NaN or above ``b``, else ``b``."""
    return a if (math.isnan(a) or a > b) else b


def node_utilization(
    nodes: Any, measured_a: Any, limit_a: Any, over_since_s: Any, now_s: float,
    over_x: float, capping_x: float,
) -> tuple[FloatArray, FloatArray, int]:
    """(utilization (n,) 1, over-since (n,) s, listed nodes above ``capping_x``): at each node
    listed, the largest measured / limit of its poles, and since when it is above ``over_x``
    (+inf: it is not); 0 and +inf at the others."""
    m, lim, since = _lst(measured_a), _lst(limit_a), _lst(over_since_s)
    util = [0.0] * len(m)
    out_since = [math.inf] * len(m)
    count = 0
    for i in _lst(nodes):
        ratios = [m[i][c] / lim[i][c] if lim[i][c] != 0 else math.copysign(math.inf, m[i][c])
                  if m[i][c] != 0 else math.nan for c in range(3)]
        u = _np_max(_np_max(ratios[0], ratios[1]), ratios[2])
        util[i] = u
        if u > over_x:
            t = since[i]
            out_since[i] = t if (math.isnan(t) or t < now_s) else now_s
        count += u > capping_x
    return np.asarray(util, np.float64), np.asarray(out_since, np.float64), count


def measured_at(
    nodes: Any, node_i_a: Any, node_quality: Any, model_scenario_i_a: Any,
    tolerance_x: float, tolerance_a: float,
) -> tuple[FloatArray, bool]:
    """(measured (n, 3) A, any excess): at each node listed, its reading where GOOD (quality
    0) and finite, else the model's normal scenario; 0 at the others; whether a GOOD finite
    reading m exceeds the model M by more than ``tolerance_x`` · m + ``tolerance_a``."""
    cur, quality, model = _lst(node_i_a), _lst(node_quality), _lst(model_scenario_i_a)
    out = [[0.0, 0.0, 0.0] for _ in cur]
    excess = False
    for i in _lst(nodes):
        for c in range(3):
            m, big_m = cur[i][c], model[0][i][c]
            if quality[i] == 0 and math.isfinite(m):
                out[i][c] = m
                excess = excess or m - big_m - (tolerance_x * m + tolerance_a) > 0.0
            else:
                out[i][c] = big_m
    return np.asarray(out, np.float64).reshape(-1, 3), excess


def node_quality(
    metered: Any, node_t_s: Any, rejected_now: Any, parent_idx: Any, child_count: Any,
    sum_check: Any, node_i_a: Any, rating_a: Any, now_s: float, stale_s: float,
    sum_tolerance_x: float, sum_tolerance_a: float,
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.bool_]]:
    """(quality code (n,), children's sum disagrees (n,)): per node GOOD 0, MISSING 1 (metered,
    never read), STALE 2 (metered, last reading older than ``stale_s``), the code of a refused
    latest input where there is one; a fresh node whose children are all fresh and whose
    reading differs from their sum by more than ``sum_tolerance_x`` × its largest rating +
    ``sum_tolerance_a`` on a pole is INCONSISTENT 4. Each node's children are gathered first
    and summed node by node."""
    met, t_s, rej = _lst(metered), _lst(node_t_s), _lst(rejected_now)
    parent, count, check = _lst(parent_idx), _lst(child_count), _lst(sum_check)
    cur, rating = _lst(node_i_a), _lst(rating_a)
    n = len(met)
    quality = []
    for i in range(n):
        q = 0
        if met[i]:
            if not math.isfinite(t_s[i]):
                q = 1
            elif now_s - t_s[i] > stale_s:
                q = 2
            if rej[i] != 0:
                q = rej[i]
        quality.append(q)
    fresh = [bool(met[i]) and quality[i] == 0 for i in range(n)]
    children: list[list[int]] = [[] for _ in range(n)]
    for i in range(n):
        if parent[i] >= 0:
            children[parent[i]].append(i)
    bad = [False] * n
    for i in range(n):
        kids = [k for k in children[i] if fresh[k]]
        if not (check[i] and fresh[i] and len(kids) == count[i]):
            continue
        tol = sum_tolerance_x * _np_max(_np_max(rating[i][0], rating[i][1]), rating[i][2]) + (
            sum_tolerance_a)
        diffs = []
        for c in range(3):
            total = 0.0
            for k in kids:
                total += cur[k][c]
            own = cur[i][c]
            own = 0.0 if math.isnan(own) else max(min(own, _F64_MAX), -_F64_MAX)
            diffs.append(abs(total - own))
        if _np_max(_np_max(diffs[0], diffs[1]), diffs[2]) > tol:
            bad[i] = True
            quality[i] = 4
    return np.asarray(quality, np.int8), np.asarray(bad, np.bool_)


_F64_MAX = float(np.finfo(np.float64).max)


def screen_readings(
    node: Any, reading_i_a: Any, reading_t_s: Any, rating_a: Any, rating_max_a: Any,
    jump_fraction: float, future_limit_s: float, range_x: float, absent_pole_a: float,
    confirm_x: float, node_i_a: Any, node_t_s: Any, pending_i_a: Any, rejected_now: Any,
) -> tuple[FloatArray, FloatArray, FloatArray, npt.NDArray[np.int8], npt.NDArray[np.int8]]:
    """(node_i_a, node_t_s, pending_i_a, rejected_now after the readings, code per reading):
    each reading of a node is refused for the first of not finite (1), negative (2), current
    on an absent pole (3), beyond ``range_x`` × rating (4), a time not finite or after
    ``future_limit_s`` (5), older than the node's last (6), a jump beyond
    ``jump_fraction`` × the largest rating that the pending reading does not confirm within
    ``confirm_x`` of it (7, it becomes pending), else taken (0)."""
    cur, t_node, pend = _lst(node_i_a), _lst(node_t_s), _lst(pending_i_a)
    rej, rating, rmax = _lst(rejected_now), _lst(rating_a), _lst(rating_max_a)
    codes = []
    for i, v, t in zip(_lst(node), _lst(reading_i_a), _lst(reading_t_s), strict=True):
        if not all(math.isfinite(x) for x in v):
            code = 1
        elif any(x < 0 for x in v):
            code = 2
        elif any(rating[i][c] == 0 and v[c] > absent_pole_a for c in range(3)):
            code = 3
        elif any(rating[i][c] > 0 and v[c] > range_x * rating[i][c] for c in range(3)):
            code = 4
        elif not math.isfinite(t) or t > future_limit_s:
            code = 5
        elif t < t_node[i]:
            code = 6
        else:
            code = 0
            jump_a = jump_fraction * rmax[i]
            prev = cur[i]
            if all(math.isfinite(x) for x in prev) and max(
                    abs(v[c] - prev[c]) for c in range(3)) > jump_a:
                q = pend[i]
                confirmed = all(math.isfinite(x) for x in q) and max(
                    abs(v[c] - q[c]) for c in range(3)) <= jump_a * confirm_x
                if not confirmed:
                    code = 7
        if code == 0:
            cur[i] = list(v)
            t_node[i] = t
            pend[i] = [math.nan] * 3
            rej[i] = 0
        elif code == 7:
            pend[i] = list(v)
        codes.append(code)
    return (np.asarray(cur, np.float64).reshape(-1, 3), np.asarray(t_node, np.float64),
            np.asarray(pend, np.float64).reshape(-1, 3), np.asarray(rej, np.int8),
            np.asarray(codes, np.int8))


def step_budget(
    servers: Any, old_cap_w: Any, new_cap_w: Any, draw_w: Any, gpu_min_cap_w: Any,
    gpu_max_w: Any, other_max_w: Any, gpus: Any, server_max_w: Any, pair_slot: Any,
    pair_server: Any, drop_budget_w: Any, rise_budget_w: Any,
) -> tuple[FloatArray, bool]:
    """(fraction (B,) 1, some fraction below 1): per node with a step budget, the share of a
    cap change (per GPU, ``old_cap_w`` → ``new_cap_w`` of the servers listed) that keeps the
    power it drops (at most what the server draws) and adds within the budgets; each server
    at min(other + GPUs × cap clipped to its range, its maximum). Per node, the servers below
    it are gathered first and summed."""
    lo, hi, other = _lst(gpu_min_cap_w), _lst(gpu_max_w), _lst(other_max_w)
    n_gpus, top = _lst(gpus), _lst(server_max_w)

    def power(s: int, cap: float) -> float:
        cap = min(max(cap, lo[s]), hi[s])
        return min(other[s] + n_gpus[s] * cap, top[s])

    drop = [0.0] * len(lo)
    rise = [0.0] * len(lo)
    for s, old, new, d in zip(_lst(servers), _lst(old_cap_w), _lst(new_cap_w), _lst(draw_w),
                              strict=True):
        drop[s] = max(min(d, power(s, old)) - power(s, new), 0.0)
        rise[s] = max(power(s, new) - power(s, old), 0.0)
    drop_b, rise_b = _lst(drop_budget_w), _lst(rise_budget_w)
    below: list[list[int]] = [[] for _ in drop_b]
    for b, s in zip(_lst(pair_slot), _lst(pair_server), strict=True):
        below[b].append(s)
    out = []
    for b, members in enumerate(below):
        d_sum = sum(drop[s] for s in members)
        r_sum = sum(rise[s] for s in members)
        f = min(drop_b[b] / d_sum if d_sum > 0 else 1.0, rise_b[b] / r_sum if r_sum > 0 else 1.0)
        out.append(min(max(f, 0.0), 1.0))
    return np.asarray(out, np.float64), any(not f >= 1.0 for f in out)


def worst_server_power(
    t_first_s: Any, work_s: Any, confirmed_cap_w: Any, commanded_cap_w: Any, now_s: float,
    floor_w: Any, gpu_min_cap_w: Any, gpu_max_w: Any, other_max_w: Any, gpus: Any,
    server_max_w: Any,
) -> tuple[FloatArray, FloatArray]:
    """(normal (S,) W, contingency (S,) W): 0 for a server never on; its floor while it cannot
    work yet; at a confirmed cap (at least the floor) in both; else at full power normally and
    at its commanded cap (between the floor and full power) in the contingency, or full."""
    lo, hi, other = _lst(gpu_min_cap_w), _lst(gpu_max_w), _lst(other_max_w)
    n_gpus, top, floor = _lst(gpus), _lst(server_max_w), _lst(floor_w)
    normal, contingency = [], []
    for s, (t0, t_work, conf, cmd) in enumerate(zip(_lst(t_first_s), _lst(work_s),
                                                    _lst(confirmed_cap_w),
                                                    _lst(commanded_cap_w), strict=True)):
        def at(cap: float, s: int = s) -> float:
            return max(min(other[s] + n_gpus[s] * min(max(cap, lo[s]), hi[s]), top[s]),
                       floor[s])

        if not math.isfinite(t0):
            pair = (0.0, 0.0)
        elif now_s < t_work:
            pair = (floor[s], floor[s])
        elif math.isfinite(conf):
            pair = (at(conf), at(conf))
        else:
            pair = (top[s], min(at(cmd), top[s]) if math.isfinite(cmd) else top[s])
        normal.append(pair[0])
        contingency.append(pair[1])
    return np.asarray(normal, np.float64), np.asarray(contingency, np.float64)


def psu_on(
    psu_outlet: Any, outlet_known: Any, outlet_on: Any, psu_on_s: Any, psu_commanded: Any,
    now_s: float, grace_s: float,
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """(switch-on times (K,) s, powered (K,) bool) after the read-backs: a PSU whose outlet
    reads on is on since now (or, never commanded and unknown so far, since before we knew);
    one whose outlet reads off is off, unless it was commanded less than ``grace_s`` ago; an
    outlet not read back changes nothing."""
    known, on_now = _lst(outlet_known), _lst(outlet_on)
    times, powered = [], []
    for o, t, commanded in zip(_lst(psu_outlet), _lst(psu_on_s), _lst(psu_commanded),
                               strict=True):
        if o >= 0 and known[o]:
            if on_now[o]:
                if t == math.inf and not commanded:
                    t = -math.inf
                else:
                    t = min(t, now_s)
            elif t <= now_s and not (commanded and math.isfinite(t) and now_s - t < grace_s):
                t = math.inf
        times.append(t)
        powered.append(t <= now_s)
    return np.asarray(times, np.float64), np.asarray(powered, np.bool_)


def unknown_since(
    unknown: Any, metered: Any, node_quality: Any, unknown_since_s: Any, now_s: float,
    stale_s: float, safe_s: float,
) -> tuple[FloatArray, npt.NDArray[np.bool_], npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """(since (n,) s, metered and untrusted, overdue, lost long) per node: an untrusted node
    keeps the time it became so (now at the latest), a trusted one +inf; a meter whose reading
    is not GOOD (0) is overdue unless it is MISSING (1) for less than ``stale_s``, and lost
    long after ``safe_s``."""
    since, bad, overdue, lost = [], [], [], []
    for u, m, q, t in zip(_lst(unknown), _lst(metered), _lst(node_quality),
                          _lst(unknown_since_s), strict=True):
        s = (t if (math.isnan(t) or t < now_s) else now_s) if u else math.inf
        b = bool(m) and q != 0
        since.append(s)
        bad.append(b)
        overdue.append(b and (q != 1 or now_s - s >= stale_s))
        lost.append(b and now_s - s >= safe_s)
    return (np.asarray(since, np.float64), np.asarray(bad, np.bool_),
            np.asarray(overdue, np.bool_), np.asarray(lost, np.bool_))


def guard_servers(
    shed_cap_w: Any, plan_cap_w: Any, server_power_w: Any, server_quality: Any, worst_w: Any,
    seen_w: Any, gpu_min_cap_w: Any, gpu_max_w: Any, other_max_w: Any, gpus: Any,
    server_max_w: Any,
) -> tuple[FloatArray, FloatArray, npt.NDArray[np.bool_], FloatArray, FloatArray]:
    """(cap (S,), base (S,) W per GPU, known (S,), fixed rise (S,) W, seen (S,) W) of the ramp
    guard: the plan's cap lowered by a shed cap, within the GPUs' range; a server's draw is
    known when its reading is GOOD (0) and finite and it is on; its base is its draw per GPU
    (else the cap) between the minimum cap and the cap; a known server's fixed rise is what it
    would add working at the base plus what it rose since ``seen_w`` (NaN: not seen)."""
    def clip(x: float, lo: float, hi: float) -> float:
        return x if math.isnan(x) else min(max(x, lo), hi)

    caps, bases, known, fixed, seen_out = [], [], [], [], []
    rows = zip(_lst(shed_cap_w), _lst(plan_cap_w), _lst(server_power_w), _lst(server_quality),
               _lst(worst_w), _lst(seen_w), _lst(gpu_min_cap_w), _lst(gpu_max_w),
               _lst(other_max_w), _lst(gpus), _lst(server_max_w), strict=True)
    for shed, plan, power, quality, worst, seen, lo, hi, other, n_gpus, top in rows:
        cap = clip(min(shed, plan) if math.isfinite(shed) else plan, lo, hi)
        draw = power / max(n_gpus, 1.0)
        ok = quality == 0 and math.isfinite(draw) and worst > 0.0
        base = clip(draw if ok else cap, lo, cap)
        rise = 0.0
        if ok:
            rise = max(min(other + n_gpus * clip(base, lo, hi), top) - power, 0.0)
            if math.isfinite(seen):
                rise += max(power - seen, 0.0)
        caps.append(cap)
        bases.append(base)
        known.append(ok)
        fixed.append(rise)
        seen_out.append(power if ok else math.nan)
    return (np.asarray(caps, np.float64), np.asarray(bases, np.float64),
            np.asarray(known, np.bool_), np.asarray(fixed, np.float64),
            np.asarray(seen_out, np.float64))


def screen_servers(
    server: Any, gpu_power_w: Any, enforced_cap_w: Any, t_s: float, future_limit_s: float,
    range_x: float, has_agent: Any, gpu_max_w: Any, gpus: Any, server_power_w: Any,
    server_cap_w: Any, server_t_s: Any,
) -> tuple[FloatArray, FloatArray, FloatArray, npt.NDArray[np.int8]]:
    """(server power (S,) W, cap (S,) W per GPU, time (S,) s, code (M,)) after node-agent
    readings of one value per GPU: 1 for a server that does not exist or has no agent, 2 for
    a value not finite, negative or above ``range_x`` times the GPU's rating (at least 1 W),
    or a time after ``future_limit_s``; else 0, and the server's power, cap (0 without GPUs)
    and latest time are written, a later reading of the same server over an earlier one."""
    power, caps, times = _lst(server_power_w), _lst(server_cap_w), _lst(server_t_s)
    agent, gmax, n_gpus = _lst(has_agent), _lst(gpu_max_w), _lst(gpus)
    codes = []
    for s, p, c in zip(_lst(server), _lst(gpu_power_w), _lst(enforced_cap_w), strict=True):
        if not (0 <= s < len(agent) and agent[s]):
            codes.append(1)
            continue
        rated = gmax[s] if (math.isnan(gmax[s]) or gmax[s] > 1.0) else 1.0
        if not (math.isfinite(p) and math.isfinite(c) and p >= 0 and c >= 0
                and p <= range_x * rated and t_s <= future_limit_s):
            codes.append(2)
            continue
        power[s] = p * n_gpus[s]
        caps[s] = c if n_gpus[s] > 0 else 0.0
        times[s] = times[s] if (math.isnan(times[s]) or times[s] > t_s) else t_s
        codes.append(0)
    return (np.asarray(power, np.float64), np.asarray(caps, np.float64),
            np.asarray(times, np.float64), np.asarray(codes, np.int8))
