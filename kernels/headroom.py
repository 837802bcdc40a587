"""Headroom against continuous limits, normally and after the loss of either feed.

``limit_a`` (n, 3) float64 A is the continuous limit per pole (e.g. 0.8 × rating); 0 marks a
pole the node does not have. Scenarios, in this order along the first axis of a
``scenario_i_a`` array (3, n, 3) A:

- :data:`SCENARIO_NORMAL` (0): every PSU as given;
- :data:`SCENARIO_FEED_A_LOST` (1): the PSUs on feed A (``psu_feed`` 0) are dead;
- :data:`SCENARIO_FEED_B_LOST` (2): the PSUs on feed B (``psu_feed`` 1) are dead.

A server's surviving PSUs carry all of its load. A node fed from feed A (``node_feed`` 0) is dead
in scenario 1 and is not judged there; a node on feed B is not judged in scenario 2.

A pole with limit 0 (absent) that carries no load has headroom +inf and utilization 0. Load on
a pole with limit 0 is a phase-mapping error upstream, and it is reported, not hidden: headroom
0 − load < 0 and utilization +inf.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from kernels import _checks
from kernels._jit import IN_F64_2, IN_F64_3, IN_I8_1, OUT_F64_1, OUT_F64_2, kernel
from kernels.aggregate import _feed_loss_current_into, _psu_inputs, _v_ln

__all__ = [
    "FEED_A",
    "FEED_B",
    "N_SCENARIOS",
    "SCENARIO_FEED_A_LOST",
    "SCENARIO_FEED_B_LOST",
    "SCENARIO_NORMAL",
    "feed_loss_current_a",
    "feed_loss_current_a_into",
    "headroom_a",
    "worst_case_headroom_a",
    "worst_case_utilization",
]

#: Feed codes (``psu_feed``, ``node_feed``).
FEED_A = 0
FEED_B = 1
#: Scenario indices along the first axis of scenario arrays.
SCENARIO_NORMAL = 0
SCENARIO_FEED_A_LOST = 1
SCENARIO_FEED_B_LOST = 2
N_SCENARIOS = 3

FloatArray = npt.NDArray[np.float64]


# --------------------------------------------------------------------------- kernels


@kernel(IN_F64_2, IN_F64_2, OUT_F64_2)
def _headroom_into(i_a, limit_a, out_headroom_a):
    """Headroom per pole: limit − load (A); +inf on an absent pole (limit 0) without load.

    Units: i_a (n, 3) A; limit_a (n, 3) A; out_headroom_a (n, 3) A.
    """
    n = i_a.shape[0]
    for i in range(n):
        for p in range(3):
            lim = limit_a[i, p]
            load = i_a[i, p]
            if lim == 0.0 and load == 0.0:
                out_headroom_a[i, p] = np.inf
            else:
                out_headroom_a[i, p] = lim - load


@kernel(IN_F64_3, IN_I8_1, IN_F64_2, OUT_F64_2)
def _worst_case_headroom_into(scenario_i_a, node_feed, limit_a, out_headroom_a):
    """Worst-case headroom per pole over the scenarios in which the node survives (A).

    load = max of scenario_i_a[s, i, p] over s in {0} ∪ {1 if node_feed[i] != 0}
    ∪ {2 if node_feed[i] != 1}; headroom = limit − load, +inf on an absent pole without load.
    Units: scenario_i_a (3, n, 3) A; node_feed (n,) code; limit_a (n, 3) A;
    out_headroom_a (n, 3) A.
    """
    n = limit_a.shape[0]
    for i in range(n):
        feed = node_feed[i]
        for p in range(3):
            load = scenario_i_a[0, i, p]
            if feed != 0 and scenario_i_a[1, i, p] > load:
                load = scenario_i_a[1, i, p]
            if feed != 1 and scenario_i_a[2, i, p] > load:
                load = scenario_i_a[2, i, p]
            lim = limit_a[i, p]
            if lim == 0.0 and load == 0.0:
                out_headroom_a[i, p] = np.inf
            else:
                out_headroom_a[i, p] = lim - load


@kernel(IN_F64_3, IN_I8_1, IN_F64_2, OUT_F64_1)
def _worst_case_utilization_into(scenario_i_a, node_feed, limit_a, out_utilization):
    """Worst-case utilization per node: max over present poles and surviving scenarios of
    load / limit (1 = at the continuous limit). A pole with limit 0 counts 0 without load and
    +inf with load. Units: scenario_i_a (3, n, 3) A; node_feed (n,) code; limit_a (n, 3) A;
    out_utilization (n,) 1.
    """
    n = limit_a.shape[0]
    for i in range(n):
        feed = node_feed[i]
        worst = 0.0
        for s in range(3):
            if (s == 1 and feed == 0) or (s == 2 and feed == 1):
                continue
            for p in range(3):
                load = scenario_i_a[s, i, p]
                lim = limit_a[i, p]
                if lim > 0.0:
                    u = load / lim
                elif load > 0.0:
                    u = np.inf
                else:
                    u = 0.0
                if u > worst:
                    worst = u
        out_utilization[i] = worst


# --------------------------------------------------------------------------- public API


def headroom_a(i_a: Any, limit_a: Any) -> FloatArray:
    """Headroom per pole, limit − load (A), shape (n, 3).

    A pole with limit 0 (absent) and no load gets +inf; load on a pole with limit 0 gives
    0 − load < 0, so a phase-mapping error shows as a violation. Units: i_a (n, 3) A, >= 0;
    limit_a (n, 3) A, >= 0.
    """
    arr = np.asarray(i_a)
    if arr.ndim != 2:
        raise _checks.KernelInputError(
            f"i_a must have shape (n, 3), got {arr.shape}", argument="i_a"
        )
    n = arr.shape[0]
    cur = _checks.float_array("i_a", arr, (n, 3), min_value=0.0)
    lim = _checks.float_array("limit_a", limit_a, (n, 3), min_value=0.0)
    out_headroom_a = np.empty((n, 3), dtype=np.float64)
    _headroom_into(cur, lim, out_headroom_a)
    _checks.output_not_nan("headroom_a", out_headroom_a)
    return out_headroom_a


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
    """Phase currents at every node in each scenario (A), shape (3, n, 3).

    Scenario 0 normal, 1 feed A lost (PSUs with psu_feed 0 dead), 2 feed B lost (psu_feed 1
    dead); a server's surviving PSUs share all of its load, a server with none draws nothing.
    Units as in :func:`kernels.aggregate.tree_current_a`; psu_feed (K,) int8, 0 (A) or 1 (B).
    """
    parent = _checks.parent_array(parent_idx)
    out_scenario_i_a = np.empty((N_SCENARIOS, parent.shape[0], 3), dtype=np.float64)
    feed_loss_current_a_into(
        server_p_w,
        server_pf,
        psu_server,
        psu_node,
        psu_phase,
        psu_feed,
        psu_alive,
        parent,
        v_ln_v,
        out_scenario_i_a,
    )
    return out_scenario_i_a


def feed_loss_current_a_into(
    server_p_w: Any,
    server_pf: Any,
    psu_server: Any,
    psu_node: Any,
    psu_phase: Any,
    psu_feed: Any,
    psu_alive: Any,
    parent_idx: Any,
    v_ln_v: Any,
    out_scenario_i_a: FloatArray,
) -> None:
    """In-place :func:`feed_loss_current_a`: fills ``out_scenario_i_a`` (3, n, 3) float64 A."""
    parent = _checks.parent_array(parent_idx)
    n = parent.shape[0]
    _checks.out_array("out_scenario_i_a", out_scenario_i_a, (N_SCENARIOS, n, 3), np.float64)
    p_w, pf, srv, node, phase, alive = _psu_inputs(
        server_p_w, server_pf, psu_server, psu_node, psu_phase, psu_alive, n
    )
    feed = _checks.int_array(
        "psu_feed", psu_feed, alive.shape, np.int8, 0, 2, "a feed code 0 (A) or 1 (B)"
    )
    v = _v_ln(v_ln_v, n)
    scratch_va = np.empty((n, 3), dtype=np.float64)
    scratch_alive = np.empty(alive.shape[0], dtype=np.bool_)
    _feed_loss_current_into(
        p_w,
        pf,
        srv,
        node,
        phase,
        feed,
        alive,
        parent,
        v,
        scratch_va,
        scratch_alive,
        out_scenario_i_a,
    )
    _checks.output_finite("scenario_i_a", out_scenario_i_a)


def _scenario_inputs(
    scenario_i_a: Any, node_feed: Any, limit_a: Any
) -> tuple[FloatArray, np.ndarray, FloatArray]:
    arr = np.asarray(scenario_i_a)
    if arr.ndim != 3 or arr.shape[0] != N_SCENARIOS:
        raise _checks.KernelInputError(
            f"scenario_i_a must have shape (3, n, 3), got {arr.shape}", argument="scenario_i_a"
        )
    n = arr.shape[1]
    cur = _checks.float_array("scenario_i_a", arr, (N_SCENARIOS, n, 3), min_value=0.0)
    feed = _checks.int_array(
        "node_feed", node_feed, (n,), np.int8, 0, 2, "a feed code 0 (A) or 1 (B)"
    )
    lim = _checks.float_array("limit_a", limit_a, (n, 3), min_value=0.0)
    return cur, feed, lim


def worst_case_headroom_a(scenario_i_a: Any, node_feed: Any, limit_a: Any) -> FloatArray:
    """Worst-case headroom per pole (A), shape (n, 3): limit minus the largest load over the
    scenarios in which the node survives (all but the loss of its own feed).

    Absent poles (limit 0) as in :func:`headroom_a`. Units: scenario_i_a (3, n, 3) A from
    :func:`feed_loss_current_a`; node_feed (n,) int8, 0 (A) or 1 (B); limit_a (n, 3) A.
    """
    cur, feed, lim = _scenario_inputs(scenario_i_a, node_feed, limit_a)
    out_headroom_a = np.empty(lim.shape, dtype=np.float64)
    _worst_case_headroom_into(cur, feed, lim, out_headroom_a)
    _checks.output_not_nan("headroom_a", out_headroom_a)
    return out_headroom_a


def worst_case_utilization(scenario_i_a: Any, node_feed: Any, limit_a: Any) -> FloatArray:
    """Worst-case utilization per node (1 = at the continuous limit), shape (n,).

    Max over present poles (limit > 0) and the scenarios in which the node survives of
    load / limit; a node without any load scores 0; load on a pole with limit 0 scores +inf.
    Units: scenario_i_a (3, n, 3) A; node_feed (n,) int8; limit_a (n, 3) A.
    """
    cur, feed, lim = _scenario_inputs(scenario_i_a, node_feed, limit_a)
    out_utilization = np.empty(lim.shape[0], dtype=np.float64)
    _worst_case_utilization_into(cur, feed, lim, out_utilization)
    _checks.output_not_nan("utilization", out_utilization)
    return out_utilization
