"""Tree load aggregation: PSU loads onto outlets, outlets up the tree, VA to amperes.

Array conventions (produced by the topology compiler):

- ``n`` nodes sorted parents first: ``parent_idx[i] < i``, ``-1`` for a root (int32).
- per-phase arrays have shape (n, 3), columns L1, L2, L3.
- ``K`` PSUs: ``psu_server`` (int32), ``psu_node`` (int32, the outlet node), ``psu_phase``
  (int8 connection code, see :data:`PHASE_L1` ... :data:`PHASE_3PH`), ``psu_alive`` (bool).
- ``S`` servers: ``server_p_w`` (W, >= 0), ``server_pf`` (power factor, 0 < pf <= 1).

"Per-phase VA" is V_LN × I of that phase (VA): the apparent power a phase would carry if the
line current flowed from line to neutral. For line-to-neutral and balanced three-phase loads the
per-phase VA of a node sums to its apparent power; a line-to-line load of S VA puts S/√3 on each
of its two lines (2S/√3 in total), because its line current is S/V_LL = (S/√3)/V_LN.

The jitted kernels are private (``_..._into``); the public functions validate their inputs,
call them, and check that the outputs are finite.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from kernels import _checks
from kernels._jit import (
    F64,
    IN_BOOL_1,
    IN_F64_1,
    IN_F64_2,
    IN_F64_3,
    IN_I8_1,
    IN_I32_1,
    IN_I64_1,
    OUT_BOOL_1,
    OUT_F64_1,
    OUT_F64_2,
    OUT_F64_3,
    OUT_I64_1,
    kernel,
)

__all__ = [
    "PHASE_3PH",
    "PHASE_L1",
    "PHASE_L1_L2",
    "PHASE_L2",
    "PHASE_L2_L3",
    "PHASE_L3",
    "PHASE_L3_L1",
    "aggregate_tree",
    "aggregate_tree_into",
    "neutral_current_a",
    "phase_current_a",
    "psu_load_va",
    "psu_load_va_into",
    "tree_current_a",
    "tree_current_a_into",
]

#: PSU connection codes (``psu_phase``): line-to-neutral on one phase.
PHASE_L1, PHASE_L2, PHASE_L3 = 0, 1, 2
#: Line-to-line connections: across (L1, L2), (L2, L3), (L3, L1).
PHASE_L1_L2, PHASE_L2_L3, PHASE_L3_L1 = 3, 4, 5
#: Balanced three-phase connection.
PHASE_3PH = 6
#: Number of connection codes (valid codes are 0 .. N_PHASE_CODES - 1).
N_PHASE_CODES = 7

_INV_SQRT3 = 1.0 / math.sqrt(3.0)
_THIRD = 1.0 / 3.0

FloatArray = npt.NDArray[np.float64]


# --------------------------------------------------------------------------- kernels


@kernel(IN_F64_1, IN_F64_1, IN_I32_1, IN_I32_1, IN_I8_1, IN_BOOL_1, OUT_F64_2)
def _psu_load_va_into(
    server_p_w, server_pf, psu_server, psu_node, psu_phase, psu_alive, out_node_va
):
    """Per-phase VA that the alive PSUs put on their outlet nodes (zeroes, then fills).

    Server s draws apparent power S_s = P_s / pf_s (VA), shared equally among its c_s alive PSUs
    (a server with c_s = 0 draws nothing). PSU k of server s adds its share s_k = S_s / c_s to
    row psu_node[k] of out_node_va:

        code 0, 1, 2 (L-N on L1, L2, L3):        s_k on that phase
        code 3, 4, 5 (L-L across L1L2, L2L3, L3L1): s_k/√3 on each of the two phases
        code 6 (balanced 3φ):                    s_k/3 on each phase

    Units: server_p_w (S,) W; server_pf (S,) 1; psu_* (K,) indices/codes/flags;
    out_node_va (n, 3) VA (V_LN × I per phase), written in place.
    """
    out_node_va[:, :] = 0.0
    n_servers = server_p_w.shape[0]
    n_psus = psu_server.shape[0]
    alive_count = np.zeros(n_servers, np.int64)
    for k in range(n_psus):
        if psu_alive[k]:
            alive_count[psu_server[k]] += 1
    for k in range(n_psus):
        if not psu_alive[k]:
            continue
        s = psu_server[k]
        share_va = server_p_w[s] / server_pf[s] / alive_count[s]
        node = psu_node[k]
        code = psu_phase[k]
        if code <= 2:
            out_node_va[node, code] += share_va
        elif code <= 5:
            a = code - 3
            b = (a + 1) % 3
            line_va = share_va * _INV_SQRT3
            out_node_va[node, a] += line_va
            out_node_va[node, b] += line_va
        else:
            third_va = share_va * _THIRD
            out_node_va[node, 0] += third_va
            out_node_va[node, 1] += third_va
            out_node_va[node, 2] += third_va


@kernel(IN_I32_1, OUT_F64_2)
def _aggregate_tree_into(parent_idx, out_node_va):
    """Replace each node's own load by its own plus all its descendants' load, in place.

    For i = n-1 down to 0: if parent_idx[i] >= 0, out[parent_idx[i], :] += out[i, :].
    Requires parent_idx[i] < i, so every child is complete before it is added to its parent.

    Units: parent_idx (n,) index; out_node_va (n, 3) VA per phase (any additive per-phase
    quantity works the same way).
    """
    n = parent_idx.shape[0]
    for i in range(n - 1, -1, -1):
        p = parent_idx[i]
        if p >= 0:
            out_node_va[p, 0] += out_node_va[i, 0]
            out_node_va[p, 1] += out_node_va[i, 1]
            out_node_va[p, 2] += out_node_va[i, 2]


@kernel(IN_F64_2, IN_F64_1, OUT_F64_2)
def _phase_current_into(node_va, v_ln_v, out_i_a):
    """Phase current from per-phase VA: I[i, p] = VA[i, p] / V_LN[i].

    Units: node_va (n, 3) VA; v_ln_v (n,) V (line to neutral); out_i_a (n, 3) A.
    """
    n = node_va.shape[0]
    for i in range(n):
        inv_v = 1.0 / v_ln_v[i]
        out_i_a[i, 0] = node_va[i, 0] * inv_v
        out_i_a[i, 1] = node_va[i, 1] * inv_v
        out_i_a[i, 2] = node_va[i, 2] * inv_v


@kernel(IN_F64_2, OUT_F64_1)
def _neutral_current_into(i_a, out_i_n_a):
    """Neutral current of a wye node: I_N = √(Ia² + Ib² + Ic² − Ia·Ib − Ib·Ic − Ic·Ia).

    Exact for line-to-neutral loads of one common power factor (phasors 120° apart); a radicand
    below zero from rounding is clamped to 0.
    Units: i_a (n, 3) A; out_i_n_a (n,) A.
    """
    n = i_a.shape[0]
    for i in range(n):
        a = i_a[i, 0]
        b = i_a[i, 1]
        c = i_a[i, 2]
        r = a * a + b * b + c * c - a * b - b * c - c * a
        out_i_n_a[i] = math.sqrt(r) if r > 0.0 else 0.0


@kernel(
    IN_F64_1, IN_F64_1, IN_I32_1, IN_I32_1, IN_I8_1, IN_BOOL_1, IN_I32_1, IN_F64_1,
    OUT_F64_2, OUT_F64_2,
)  # fmt: skip
def _tree_current_into(
    server_p_w,
    server_pf,
    psu_server,
    psu_node,
    psu_phase,
    psu_alive,
    parent_idx,
    v_ln_v,
    scratch_va,
    out_i_a,
):
    """Phase current at every node from server powers: PSU loads, aggregation, VA → A.

    scratch_va (n, 3) VA receives the aggregated per-phase VA; out_i_a (n, 3) A the currents
    I = VA / V_LN. Other units as in _psu_load_va_into.
    """
    _psu_load_va_into(server_p_w, server_pf, psu_server, psu_node, psu_phase, psu_alive, scratch_va)
    _aggregate_tree_into(parent_idx, scratch_va)
    _phase_current_into(scratch_va, v_ln_v, out_i_a)


@kernel(
    IN_F64_1, IN_F64_1, IN_I32_1, IN_I32_1, IN_I8_1, IN_I8_1, IN_BOOL_1, IN_I32_1, IN_F64_1,
    OUT_F64_2, OUT_BOOL_1, OUT_F64_3,
)  # fmt: skip
def _feed_loss_current_into(
    server_p_w,
    server_pf,
    psu_server,
    psu_node,
    psu_phase,
    psu_feed,
    psu_alive,
    parent_idx,
    v_ln_v,
    scratch_va,
    scratch_alive,
    out_scenario_i_a,
):
    """Phase currents at every node in the three scenarios: normal, feed A lost, feed B lost.

    Lives here, beside _tree_current_into, because numba's cache does not notice when a kernel
    that another kernel calls changes in a different file: kernels call kernels of their own
    module only. The public wrapper is kernels.headroom.feed_loss_current_a.

    Scenario 0 uses psu_alive; scenario 1 psu_alive & (psu_feed != 0); scenario 2
    psu_alive & (psu_feed != 1). Each is a full tree current computation (PSU shares over the
    surviving PSUs, aggregation, VA / V_LN). Units: server_p_w (S,) W; server_pf (S,) 1;
    v_ln_v (n,) V; scratch_va (n, 3) VA; scratch_alive (K,) bool; out_scenario_i_a (3, n, 3) A.
    """
    n_psus = psu_alive.shape[0]
    for scenario in range(3):
        for k in range(n_psus):
            if scenario == 0:
                scratch_alive[k] = psu_alive[k]
            else:
                scratch_alive[k] = psu_alive[k] and psu_feed[k] != scenario - 1
        _tree_current_into(
            server_p_w,
            server_pf,
            psu_server,
            psu_node,
            psu_phase,
            scratch_alive,
            parent_idx,
            v_ln_v,
            scratch_va,
            out_scenario_i_a[scenario],
        )


@kernel(
    IN_F64_1, IN_F64_1, IN_F64_1, IN_I32_1, IN_I32_1, IN_I8_1, IN_I8_1, IN_BOOL_1, IN_I32_1,
    IN_F64_1, OUT_F64_3, OUT_BOOL_1,
)  # fmt: skip
def _worst_case_current_into(
    server_p_w,
    server_contingency_p_w,
    server_pf,
    psu_server,
    psu_node,
    psu_phase,
    psu_feed,
    psu_alive,
    parent_idx,
    v_ln_v,
    out_scenario_i_a,
    out_finite,
):
    """Phase currents at every node in the three scenarios of _feed_loss_current_into, in one
    pass: scenario 0 (normal) from server_p_w, scenarios 1 and 2 (feed A, feed B lost) from
    server_contingency_p_w.

    Gives bit for bit what _tree_current_into (scenario 0, server_p_w) and
    _feed_loss_current_into (scenarios 1, 2, server_contingency_p_w) give: the same PSU shares
    S_s / c_s (c_s the alive PSUs of server s in that scenario), added to their outlet nodes in
    PSU order, children added to parents from the last node to the first, and I = VA / V_LN;
    only the three scenarios share each loop, and the VA are summed in out_scenario_i_a itself:
    a node's VA become its current once its subtree is complete (every child has a larger
    index), just after they were added to its parent (whose VA are still VA then).
    out_finite[0] is False when any current is not finite.

    Units: server_p_w, server_contingency_p_w (S,) W; server_pf (S,) 1; psu_* (K,) indices,
    codes, feeds (0: A, 1: B), flags; parent_idx (n,) index; v_ln_v (n,) V;
    out_scenario_i_a (3, n, 3) A (VA per phase while summed); out_finite (1,) bool.
    """
    n_servers = server_p_w.shape[0]
    n_psus = psu_server.shape[0]
    n = parent_idx.shape[0]
    count = np.zeros((3, n_servers), np.int64)
    for k in range(n_psus):
        if psu_alive[k]:
            s = psu_server[k]
            count[0, s] += 1
            if psu_feed[k] != 0:
                count[1, s] += 1
            if psu_feed[k] != 1:
                count[2, s] += 1
    out_scenario_i_a[:, :, :] = 0.0
    for k in range(n_psus):
        if not psu_alive[k]:
            continue
        s = psu_server[k]
        node = psu_node[k]
        code = psu_phase[k]
        for scenario in range(3):
            if scenario == 1 and psu_feed[k] == 0:
                continue
            if scenario == 2 and psu_feed[k] == 1:
                continue
            p_w = server_p_w[s] if scenario == 0 else server_contingency_p_w[s]
            share_va = p_w / server_pf[s] / count[scenario, s]
            if code <= 2:
                out_scenario_i_a[scenario, node, code] += share_va
            elif code <= 5:
                a = code - 3
                b = (a + 1) % 3
                line_va = share_va * _INV_SQRT3
                out_scenario_i_a[scenario, node, a] += line_va
                out_scenario_i_a[scenario, node, b] += line_va
            else:
                third_va = share_va * _THIRD
                out_scenario_i_a[scenario, node, 0] += third_va
                out_scenario_i_a[scenario, node, 1] += third_va
                out_scenario_i_a[scenario, node, 2] += third_va
    finite = True
    for i in range(n - 1, -1, -1):
        p = parent_idx[i]
        inv_v = 1.0 / v_ln_v[i]
        for scenario in range(3):
            for c in range(3):
                va = out_scenario_i_a[scenario, i, c]
                if p >= 0:
                    out_scenario_i_a[scenario, p, c] += va
                i_a = va * inv_v
                out_scenario_i_a[scenario, i, c] = i_a
                if not math.isfinite(i_a):
                    finite = False
    out_finite[0] = finite


@kernel(
    IN_F64_1, IN_F64_1, IN_F64_1, IN_I32_1, IN_I32_1, IN_I8_1, IN_I8_1, IN_BOOL_1, IN_I32_1,
    IN_F64_1, IN_I64_1, IN_I64_1, IN_I64_1, IN_I64_1, IN_I64_1, IN_I64_1, IN_I64_1, IN_F64_3,
    IN_I64_1, OUT_BOOL_1, OUT_I64_1, OUT_I64_1, OUT_F64_3, OUT_F64_3, OUT_BOOL_1,
)  # fmt: skip
def _worst_case_current_update_into(
    server_p_w,
    server_contingency_p_w,
    server_pf,
    psu_server,
    psu_node,
    psu_phase,
    psu_feed,
    psu_alive,
    parent_idx,
    v_ln_v,
    node_psu_start,
    node_psu_order,
    child_start,
    child_order,
    server_psu_start,
    server_psu_order,
    changed_servers,
    prev_scenario_i_a,
    stale_rows,
    scratch_affected,
    out_affected_nodes,
    out_n_affected,
    out_scenario_va,
    out_scenario_i_a,
    out_finite,
):
    """The currents of _worst_case_current_into, recomputed only where servers changed.

    out_scenario_va holds the per-phase VA of every node and scenario of the last computation (the
    sums _worst_case_current_into forms before it divides by V_LN), prev_scenario_i_a its currents.
    out_scenario_i_a holds on entry the currents of an earlier computation, which differ from
    prev_scenario_i_a at most at the nodes listed in stale_rows (repeats allowed): those are copied
    from prev_scenario_i_a first. changed_servers lists, without repeats, the servers whose powers
    or the alive flags of whose PSUs differ from the last computation's; the nodes above any of
    their PSUs (server_psu_order, split by server_psu_start) are affected, and every other node
    keeps its VA and its current. Each affected node, from the last to the first, has its VA
    summed again in the order _worst_case_current_into sums them: from 0.0, the shares of its
    alive PSUs in PSU order (node_psu_order, split by node_psu_start), then the VA of its children
    from the highest index down (child_order, split by child_start), so that the result is bit for
    bit the full computation's. The work is in the number of affected nodes, not the hall's.
    When changed_servers lists every server, every node is recomputed and no array is read on
    entry (the first computation). scratch_affected must be all False on entry and is so again on
    return. out_affected_nodes[:out_n_affected[0]] are the recomputed nodes, from the highest
    index down. out_finite[0] is False when a recomputed current is not finite.

    Units: server_p_w, server_contingency_p_w (S,) W; server_pf (S,) 1; psu_* (K,) indices,
    codes, feeds, flags; parent_idx (n,) index; v_ln_v (n,) V; node_psu_start (n+1,),
    node_psu_order (K,), child_start (n+1,), child_order (n,), server_psu_start (S+1,),
    server_psu_order (K,), changed_servers (M,) indices; prev_scenario_i_a (3, n, 3) A;
    stale_rows (R,) indices; scratch_affected (n,) bool; out_affected_nodes (n,) indices;
    out_n_affected (1,) count; out_scenario_va (3, n, 3) VA and out_scenario_i_a (3, n, 3) A,
    updated; out_finite (1,) bool.
    """
    n_servers = server_p_w.shape[0]
    n = parent_idx.shape[0]
    every = changed_servers.shape[0] >= n_servers
    n_aff = 0
    if every:
        for i in range(n):
            out_affected_nodes[i] = n - 1 - i
        n_aff = n
    else:
        for j in range(changed_servers.shape[0]):
            s = changed_servers[j]
            for q in range(server_psu_start[s], server_psu_start[s + 1]):
                node = psu_node[server_psu_order[q]]
                while node >= 0 and not scratch_affected[node]:
                    scratch_affected[node] = True
                    out_affected_nodes[n_aff] = node
                    n_aff += 1
                    node = parent_idx[node]
        order = np.sort(out_affected_nodes[:n_aff])
        for j in range(n_aff):
            node = order[n_aff - 1 - j]
            out_affected_nodes[j] = node
            scratch_affected[node] = False
        for j in range(stale_rows.shape[0]):
            r = stale_rows[j]
            for scenario in range(3):
                for c in range(3):
                    out_scenario_i_a[scenario, r, c] = prev_scenario_i_a[scenario, r, c]
    out_n_affected[0] = n_aff
    finite = True
    for j in range(n_aff):
        i = out_affected_nodes[j]
        for scenario in range(3):
            for c in range(3):
                out_scenario_va[scenario, i, c] = 0.0
        for jp in range(node_psu_start[i], node_psu_start[i + 1]):
            k = node_psu_order[jp]
            if not psu_alive[k]:
                continue
            s = psu_server[k]
            # the server's alive PSUs: all, those off feed A (scenario 1), off feed B (2)
            count0 = 0
            count1 = 0
            count2 = 0
            for q in range(server_psu_start[s], server_psu_start[s + 1]):
                other = server_psu_order[q]
                if psu_alive[other]:
                    count0 += 1
                    if psu_feed[other] != 0:
                        count1 += 1
                    if psu_feed[other] != 1:
                        count2 += 1
            code = psu_phase[k]
            for scenario in range(3):
                if scenario == 1 and psu_feed[k] == 0:
                    continue
                if scenario == 2 and psu_feed[k] == 1:
                    continue
                p_w = server_p_w[s] if scenario == 0 else server_contingency_p_w[s]
                count = count0 if scenario == 0 else (count1 if scenario == 1 else count2)
                share_va = p_w / server_pf[s] / count
                if code <= 2:
                    out_scenario_va[scenario, i, code] += share_va
                elif code <= 5:
                    a = code - 3
                    b = (a + 1) % 3
                    line_va = share_va * _INV_SQRT3
                    out_scenario_va[scenario, i, a] += line_va
                    out_scenario_va[scenario, i, b] += line_va
                else:
                    third_va = share_va * _THIRD
                    out_scenario_va[scenario, i, 0] += third_va
                    out_scenario_va[scenario, i, 1] += third_va
                    out_scenario_va[scenario, i, 2] += third_va
        for jc in range(child_start[i], child_start[i + 1]):
            ch = child_order[jc]
            for scenario in range(3):
                for c in range(3):
                    out_scenario_va[scenario, i, c] += out_scenario_va[scenario, ch, c]
        inv_v = 1.0 / v_ln_v[i]
        for scenario in range(3):
            for c in range(3):
                i_a = out_scenario_va[scenario, i, c] * inv_v
                out_scenario_i_a[scenario, i, c] = i_a
                if not math.isfinite(i_a):
                    finite = False
    out_finite[0] = finite


@kernel(
    IN_F64_2, IN_BOOL_1, IN_BOOL_1, IN_F64_3, IN_I32_1, IN_I64_1, IN_I64_1, IN_F64_2, F64, F64,
    OUT_F64_2, OUT_F64_2, OUT_F64_3, OUT_F64_2, OUT_BOOL_1,
)  # fmt: skip
def _measured_load_into(
    node_i_a,
    trusted,
    metered,
    model_scenario_i_a,
    parent_idx,
    level_order,
    level_start,
    departure_a,
    tolerance_x,
    tolerance_a,
    scratch_sum_a,
    out_background_a,
    out_worst_a,
    out_measured_a,
    out_flags,
):
    """The measured load beyond a model, carried up the tree, and what follows from it.

    Per node i and phase c, with m = node_i_a[i, c] where trusted[i] (else no reading) and
    M = model_scenario_i_a[0, i, c]:

        excess = max(m - M - (tolerance_x·m + tolerance_a), 0)   (0 without a finite m)
        B[i] = max(excess[i], Σ B[children])                      (out_background_a)

    B is built level by level in the order of level_order, split by level_start (the levels
    deepest first, each level in index order; a level's nodes take max(excess, B) first, then
    their sums are added into their parents), then every root (parent_idx < 0) takes
    max(excess, B). Then:

        out_worst_a[0] = model[0] + B;  out_worst_a[1, 2] = model[1, 2] + 2·B
        out_measured_a = m where finite, else the worst case [0] at a metered node, else 0
        out_flags[0]: some excess > 0;  out_flags[1]: some B[i, c] > departure_a[i, c]

    Without any excess (out_flags[0] False) B is 0 and the worst case is the model itself:
    out_background_a and out_worst_a are then left as they are (not written), and
    out_measured_a takes the model where it takes the worst case.

    Units: node_i_a (n, 3) A; trusted, metered (n,) bool; model_scenario_i_a (3, n, 3) A;
    parent_idx (n,) index; level_order, level_start index arrays; departure_a (n, 3) A;
    tolerance_x 1; tolerance_a A; scratch_sum_a, out_background_a (n, 3) A; out_worst_a
    (3, n, 3) A; out_measured_a (n, 3) A; out_flags (2,) bool.
    """
    n = parent_idx.shape[0]
    any_excess = False
    for i in range(n):
        for c in range(3):
            m = node_i_a[i, c]
            if trusted[i] and math.isfinite(m):
                out_measured_a[i, c] = m
                if m - model_scenario_i_a[0, i, c] - (tolerance_x * m + tolerance_a) > 0.0:
                    any_excess = True
            elif metered[i]:
                out_measured_a[i, c] = model_scenario_i_a[0, i, c]
            else:
                out_measured_a[i, c] = 0.0
    out_flags[0] = any_excess
    out_flags[1] = False
    if not any_excess:
        return
    for i in range(n):
        for c in range(3):
            out_background_a[i, c] = 0.0
            scratch_sum_a[i, c] = 0.0
    for lv in range(level_start.shape[0] - 1):
        lo = level_start[lv]
        hi = level_start[lv + 1]
        for j in range(lo, hi):
            i = level_order[j]
            for c in range(3):
                e = 0.0
                m = node_i_a[i, c]
                if trusted[i] and math.isfinite(m):
                    d = m - model_scenario_i_a[0, i, c] - (tolerance_x * m + tolerance_a)
                    if d > 0.0:
                        e = d
                if e > out_background_a[i, c]:
                    out_background_a[i, c] = e
        for j in range(lo, hi):
            i = level_order[j]
            p = parent_idx[i]
            if p >= 0:
                for c in range(3):
                    scratch_sum_a[p, c] += out_background_a[i, c]
        for j in range(lo, hi):
            p = parent_idx[level_order[j]]
            if p >= 0:
                for c in range(3):
                    out_background_a[p, c] += scratch_sum_a[p, c]
                    scratch_sum_a[p, c] = 0.0
    departed = False
    for i in range(n):
        root = parent_idx[i] < 0
        for c in range(3):
            if root:
                e = 0.0
                m = node_i_a[i, c]
                if trusted[i] and math.isfinite(m):
                    d = m - model_scenario_i_a[0, i, c] - (tolerance_x * m + tolerance_a)
                    if d > 0.0:
                        e = d
                if e > out_background_a[i, c]:
                    out_background_a[i, c] = e
            b = out_background_a[i, c]
            if b > departure_a[i, c]:
                departed = True
            w0 = model_scenario_i_a[0, i, c] + b
            out_worst_a[0, i, c] = w0
            out_worst_a[1, i, c] = model_scenario_i_a[1, i, c] + 2.0 * b
            out_worst_a[2, i, c] = model_scenario_i_a[2, i, c] + 2.0 * b
            if not (trusted[i] and math.isfinite(node_i_a[i, c])) and metered[i]:
                out_measured_a[i, c] = w0
    out_flags[1] = departed


# --------------------------------------------------------------------------- validation


def _psu_inputs(
    server_p_w: Any,
    server_pf: Any,
    psu_server: Any,
    psu_node: Any,
    psu_phase: Any,
    psu_alive: Any,
    n_nodes: int,
) -> tuple[FloatArray, FloatArray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    p_w = np.asarray(server_p_w)
    if p_w.ndim != 1:
        raise _checks.KernelInputError(
            f"server_p_w must be 1-D (one power per server), got shape {p_w.shape}",
            argument="server_p_w",
        )
    n_servers = p_w.shape[0]
    p_w = _checks.float_array("server_p_w", p_w, (n_servers,), min_value=0.0)
    pf = _checks.float_array(
        "server_pf", server_pf, (n_servers,), min_value=0.0, min_exclusive=True, max_value=1.0
    )
    srv = np.asarray(psu_server)
    if srv.ndim != 1:
        raise _checks.KernelInputError(
            f"psu_server must be 1-D (one server per PSU), got shape {srv.shape}",
            argument="psu_server",
        )
    n_psus = srv.shape[0]
    srv = _checks.int_array(
        "psu_server", srv, (n_psus,), np.int32, 0, n_servers, f"a server index in [0, {n_servers})"
    )
    node = _checks.int_array(
        "psu_node", psu_node, (n_psus,), np.int32, 0, n_nodes, f"a node index in [0, {n_nodes})"
    )
    phase = _checks.int_array(
        "psu_phase",
        psu_phase,
        (n_psus,),
        np.int8,
        0,
        N_PHASE_CODES,
        "a connection code 0..6 (L1, L2, L3, L1-L2, L2-L3, L3-L1, 3-phase)",
    )
    alive = _checks.bool_array("psu_alive", psu_alive, (n_psus,))
    return p_w, pf, srv, node, phase, alive


def _n_nodes(n_nodes: Any) -> int:
    if isinstance(n_nodes, bool) or not isinstance(n_nodes, int | np.integer) or n_nodes < 0:
        raise _checks.KernelInputError(
            f"n_nodes must be a non-negative integer, got {n_nodes!r}", argument="n_nodes"
        )
    return int(n_nodes)


def _v_ln(v_ln_v: Any, n: int) -> FloatArray:
    return _checks.float_array("v_ln_v", v_ln_v, (n,), min_value=0.0, min_exclusive=True)


# --------------------------------------------------------------------------- public API


def psu_load_va(
    server_p_w: Any,
    server_pf: Any,
    psu_server: Any,
    psu_node: Any,
    psu_phase: Any,
    psu_alive: Any,
    n_nodes: int,
) -> FloatArray:
    """Per-phase VA that the alive PSUs put on their outlet nodes, shape (n_nodes, 3).

    Server s draws S_s = P_s / pf_s (VA), shared equally among its alive PSUs (none alive: it
    draws nothing). A PSU's share s goes on its outlet node: the whole of s on its phase for an
    L-N connection (codes 0-2); s/√3 on each of the two lines for L-L (codes 3-5: L1L2, L2L3,
    L3L1); s/3 on each phase for balanced three-phase (code 6).

    Units: server_p_w (S,) W; server_pf (S,) 1 in (0, 1]; psu_server, psu_node (K,) int32
    indices; psu_phase (K,) int8 code; psu_alive (K,) bool. Returns float64 VA (V_LN × I).
    Raises KernelInputError (a ValueError) on a bad argument.
    """
    n = _n_nodes(n_nodes)
    args = _psu_inputs(server_p_w, server_pf, psu_server, psu_node, psu_phase, psu_alive, n)
    out_node_va = np.empty((n, 3), dtype=np.float64)
    _psu_load_va_into(*args, out_node_va)
    _checks.output_finite("node_va", out_node_va)
    return out_node_va


def psu_load_va_into(
    server_p_w: Any,
    server_pf: Any,
    psu_server: Any,
    psu_node: Any,
    psu_phase: Any,
    psu_alive: Any,
    out_node_va: FloatArray,
) -> None:
    """In-place :func:`psu_load_va`: zeroes ``out_node_va`` (n, 3) float64 VA and fills it."""
    if not isinstance(out_node_va, np.ndarray) or out_node_va.ndim != 2:
        raise _checks.KernelInputError(
            "out_node_va must be a preallocated numpy array, float64, shape (n, 3)",
            argument="out_node_va",
        )
    n = out_node_va.shape[0]
    _checks.out_array("out_node_va", out_node_va, (n, 3), np.float64)
    args = _psu_inputs(server_p_w, server_pf, psu_server, psu_node, psu_phase, psu_alive, n)
    _psu_load_va_into(*args, out_node_va)
    _checks.output_finite("out_node_va", out_node_va)


def aggregate_tree(parent_idx: Any, leaf_va: Any) -> FloatArray:
    """Load at every node: its own plus all its descendants', shape (n, 3).

    node_va[i] = leaf_va[i] + Σ node_va[c] over the children c of i, computed for
    i = n-1 down to 0 (parents first order: parent_idx[i] < i, -1 for a root).
    Units: parent_idx (n,) int32; leaf_va (n, 3) VA per phase of each node's own load, finite
    and >= 0. Returns float64 VA. ``leaf_va`` is not modified.
    """
    parent = _checks.parent_array(parent_idx)
    n = parent.shape[0]
    node_va = _checks.float_array("leaf_va", leaf_va, (n, 3), min_value=0.0).copy()
    _aggregate_tree_into(parent, node_va)
    _checks.output_finite("node_va", node_va)
    return node_va


def aggregate_tree_into(parent_idx: Any, out_node_va: FloatArray) -> None:
    """In-place :func:`aggregate_tree`: ``out_node_va`` (n, 3) float64 VA holds each node's own
    load on entry and its subtree's load on return."""
    parent = _checks.parent_array(parent_idx)
    n = parent.shape[0]
    _checks.out_array("out_node_va", out_node_va, (n, 3), np.float64)
    _checks.finite_state("out_node_va", out_node_va)
    _aggregate_tree_into(parent, out_node_va)
    _checks.output_finite("out_node_va", out_node_va)


def phase_current_a(node_va: Any, v_ln_v: Any) -> FloatArray:
    """Phase current I[i, p] = VA[i, p] / V_LN[i] (A), shape (n, 3).

    Units: node_va (n, 3) VA, finite, >= 0; v_ln_v (n,) V line to neutral, > 0.
    """
    va = np.asarray(node_va)
    if va.ndim != 2:
        raise _checks.KernelInputError(
            f"node_va must have shape (n, 3), got {va.shape}", argument="node_va"
        )
    n = va.shape[0]
    va = _checks.float_array("node_va", va, (n, 3), min_value=0.0)
    v = _v_ln(v_ln_v, n)
    out_i_a = np.empty((n, 3), dtype=np.float64)
    _phase_current_into(va, v, out_i_a)
    _checks.output_finite("i_a", out_i_a)
    return out_i_a


def neutral_current_a(i_a: Any) -> FloatArray:
    """Neutral current I_N = √(Ia² + Ib² + Ic² − Ia·Ib − Ib·Ic − Ic·Ia) (A), shape (n,).

    Exact for line-to-neutral loads sharing one power factor. Line-to-line loads carry no
    neutral current, but their per-phase VA-equivalent currents enter the formula like L-N
    ones: with L-L loads present the result is an approximation (it may be above or below the
    true neutral current). Units: i_a (n, 3) A, finite, >= 0.
    """
    arr = np.asarray(i_a)
    if arr.ndim != 2:
        raise _checks.KernelInputError(
            f"i_a must have shape (n, 3), got {arr.shape}", argument="i_a"
        )
    n = arr.shape[0]
    arr = _checks.float_array("i_a", arr, (n, 3), min_value=0.0)
    out_i_n_a = np.empty(n, dtype=np.float64)
    _neutral_current_into(arr, out_i_n_a)
    _checks.output_finite("i_n_a", out_i_n_a)
    return out_i_n_a


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
    """Phase current at every node (A), shape (n, 3): :func:`psu_load_va`, then
    :func:`aggregate_tree`, then :func:`phase_current_a` with each node's own V_LN.

    Units: as in :func:`psu_load_va`; parent_idx (n,) int32; v_ln_v (n,) V, > 0.
    """
    parent = _checks.parent_array(parent_idx)
    out_i_a = np.empty((parent.shape[0], 3), dtype=np.float64)
    tree_current_a_into(
        server_p_w, server_pf, psu_server, psu_node, psu_phase, psu_alive, parent, v_ln_v, out_i_a
    )
    return out_i_a


def tree_current_a_into(
    server_p_w: Any,
    server_pf: Any,
    psu_server: Any,
    psu_node: Any,
    psu_phase: Any,
    psu_alive: Any,
    parent_idx: Any,
    v_ln_v: Any,
    out_i_a: FloatArray,
) -> None:
    """In-place :func:`tree_current_a`: fills ``out_i_a`` (n, 3) float64 A."""
    parent = _checks.parent_array(parent_idx)
    n = parent.shape[0]
    _checks.out_array("out_i_a", out_i_a, (n, 3), np.float64)
    args = _psu_inputs(server_p_w, server_pf, psu_server, psu_node, psu_phase, psu_alive, n)
    v = _v_ln(v_ln_v, n)
    scratch_va = np.empty((n, 3), dtype=np.float64)
    _tree_current_into(*args, parent, v, scratch_va, out_i_a)
    _checks.output_finite("i_a", out_i_a)
