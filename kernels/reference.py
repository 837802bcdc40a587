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
    "aggregate_tree",
    "breaker_step",
    "feed_loss_current_a",
    "headroom_a",
    "neutral_current_a",
    "phase_current_a",
    "psu_load_va",
    "time_to_trip_s",
    "tree_current_a",
    "worst_case_headroom_a",
    "worst_case_utilization",
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
