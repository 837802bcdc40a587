"""Per-step kernels of the simulated plant: server state machine, incremental tree loads,
breaker state advanced exactly between changes, energizing the tree, and inrush.

The simulator (``sim.plant``) is event driven: loads change only when something happens (a
server changes state, an outlet is switched, a breaker opens, a cap is set), and these kernels
update only what such a change touches. Between changes every current is constant, so the
thermal image of a breaker is advanced exactly over the whole interval,
θ ← x² + (θ − x²)·exp(−Δt/τ), and its next trip is predicted with the closed form of
:func:`kernels.breaker.time_to_trip_s` instead of being stepped.

Array conventions are those of :mod:`kernels.aggregate` (nodes parents first, per-phase arrays
(n, 3), PSU connection codes 0-6). In addition:

- servers ``S``: ``state`` (int8, :data:`SERVER_OFF` ... :data:`SERVER_HALTED`), ``next_s``
  (s, absolute time of the next timed transition, +inf for none), ``alive_count`` (int32, PSUs
  powered);
- PSUs grouped by server: PSU ``psu_order[j]`` for ``psu_start[s] <= j < psu_start[s + 1]``
  belongs to server ``s`` (int32, CSR layout);
- ``t_state_s`` (n,) s: the time up to which a node's breaker state (θ, short-time timer) and
  energy counter are advanced; the present loads hold from then on.

Every kernel writes only into ``out_*`` / ``scratch_*`` arguments and returns nothing. Each
has a plain-Python twin in :mod:`kernels.reference`; docs/simulator.md describes the model.
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
    IN_I8_1,
    IN_I32_1,
    OUT_BOOL_1,
    OUT_F64_1,
    OUT_F64_2,
    OUT_I8_1,
    OUT_I32_1,
    OUT_I64_1,
    OUT_U64_1,
    kernel,
)

__all__ = [
    "EVENT_OVERLOAD_END",
    "EVENT_OVERLOAD_START",
    "N_SERVER_STATES",
    "SERVER_BMC",
    "SERVER_BOOT",
    "SERVER_HALTED",
    "SERVER_IDLE",
    "SERVER_LOADED",
    "SERVER_OFF",
    "SERVER_POST",
    "SERVER_STANDBY",
    "SERVER_STATE_NAMES",
    "advance_servers",
    "alive_changed",
    "commit_loads",
    "energize",
    "inrush_x",
    "meter_sample",
    "refresh_nodes",
    "server_power",
    "utilization_by_kind",
]

#: Server states (int8). OFF: no PSU powered. BMC: powered, BMC starting (standby power).
#: STANDBY: BMC ready, waiting for enough powered PSUs to boot. POST, BOOT: power-on self test
#: and OS boot. IDLE: booted, no work. LOADED: working at the GPU cap in force. HALTED: GPUs
#: shut down on overtemperature; stays so until power-cycled.
SERVER_OFF = 0
SERVER_BMC = 1
SERVER_STANDBY = 2
SERVER_POST = 3
SERVER_BOOT = 4
SERVER_IDLE = 5
SERVER_LOADED = 6
SERVER_HALTED = 7
N_SERVER_STATES = 8
SERVER_STATE_NAMES = ("off", "bmc", "standby", "post", "boot", "idle", "loaded", "halted")

#: Overload event kinds written by :func:`refresh_nodes`.
EVENT_OVERLOAD_END = 0
EVENT_OVERLOAD_START = 1

_INV_SQRT3 = 1.0 / math.sqrt(3.0)
_THIRD = 1.0 / 3.0
#: A node counts as over its continuous limit above this utilization (rounding guard).
_OVER = 1.0 + 1e-9

FloatArray = npt.NDArray[np.float64]


# --------------------------------------------------------------------------- kernels


@kernel(
    F64, IN_I32_1, IN_I32_1, IN_F64_1, IN_F64_1, IN_F64_1, IN_BOOL_1,
    OUT_I8_1, OUT_F64_1, OUT_BOOL_1, OUT_F64_1,
)  # fmt: skip
def _advance_servers(
    t_end_s,
    alive_count,
    psus_to_boot,
    bmc_ready_s,
    post_s,
    boot_s,
    work,
    out_state,
    out_next_s,
    out_dirty,
    out_next_min_s,
):
    """Run every timed server transition due at or before t_end_s, in place.

    A server in BMC goes to POST when at least psus_to_boot PSUs are powered, else to STANDBY
    (no timer); POST lasts post_s, BOOT boot_s; a booted server becomes LOADED when its work
    flag is set, else IDLE. Each transition starts at the previous one's scheduled time, so
    several may run in one call. Servers that changed get out_dirty = True; out_next_min_s[0]
    receives the earliest pending transition of all servers (+inf for none).

    Units: t_end_s s; bmc_ready_s, post_s, boot_s (S,) s; out_next_s (S,) s absolute;
    alive_count, psus_to_boot (S,) counts; work (S,) bool; out_state (S,) int8 state code.
    """
    n = out_state.shape[0]
    best = np.inf
    for s in range(n):
        nt = out_next_s[s]
        while nt <= t_end_s:
            st = out_state[s]
            if st == SERVER_BMC:
                if alive_count[s] >= psus_to_boot[s]:
                    st = SERVER_POST
                    nt = nt + post_s[s]
                else:
                    st = SERVER_STANDBY
                    nt = np.inf
            elif st == SERVER_POST:
                st = SERVER_BOOT
                nt = nt + boot_s[s]
            elif st == SERVER_BOOT:
                st = SERVER_LOADED if work[s] else SERVER_IDLE
                nt = np.inf
            else:
                nt = np.inf
            out_state[s] = st
            out_dirty[s] = True
        out_next_s[s] = nt
        if nt < best:
            best = nt
    out_next_min_s[0] = best


@kernel(
    F64, IN_I32_1, IN_BOOL_1, IN_I32_1, IN_I32_1, IN_F64_1, IN_F64_1,
    OUT_I32_1, OUT_I8_1, OUT_F64_1, OUT_BOOL_1, OUT_F64_1,
)  # fmt: skip
def _alive_changed(
    t_s,
    psus,
    psu_alive,
    psu_server,
    psus_to_boot,
    bmc_ready_s,
    post_s,
    out_alive_count,
    out_state,
    out_next_s,
    out_dirty,
    out_next_min_s,
):
    """Account for PSUs whose power just flipped at t_s (psu_alive holds the new value).

    Each listed PSU moves its server's out_alive_count by +1 (now powered) or −1. Then, per
    affected server: no PSU powered → OFF (timers cleared); OFF with power → BMC, ready at
    t_s + bmc_ready_s; STANDBY with at least psus_to_boot powered → POST until t_s + post_s.
    A running server keeps running on fewer PSUs (A/B redundancy: the survivors carry all of
    its load within the PSU hold-up time). Affected servers get out_dirty = True and
    out_next_min_s[0] is lowered to the earliest new transition.

    Units: t_s s; bmc_ready_s, post_s (S,) s; out_next_s (S,) s absolute; psus (J,) PSU
    indices, each listed once; counts and codes as in _advance_servers.
    """
    m = psus.shape[0]
    for j in range(m):
        k = psus[j]
        s = psu_server[k]
        if psu_alive[k]:
            out_alive_count[s] += 1
        else:
            out_alive_count[s] -= 1
    best = out_next_min_s[0]
    for j in range(m):
        s = psu_server[psus[j]]
        count = out_alive_count[s]
        st = out_state[s]
        if count <= 0:
            out_state[s] = SERVER_OFF
            out_next_s[s] = np.inf
        elif st == SERVER_OFF:
            out_state[s] = SERVER_BMC
            out_next_s[s] = t_s + bmc_ready_s[s]
        elif st == SERVER_STANDBY and count >= psus_to_boot[s]:
            out_state[s] = SERVER_POST
            out_next_s[s] = t_s + post_s[s]
        out_dirty[s] = True
        if out_next_s[s] < best:
            best = out_next_s[s]
    out_next_min_s[0] = best


@kernel(
    IN_I32_1, IN_I8_1, IN_I32_1, IN_F64_1, IN_BOOL_1, IN_BOOL_1, IN_F64_1,
    IN_F64_1, IN_F64_1, IN_F64_1, IN_F64_1, IN_I32_1, IN_F64_1, IN_F64_1, IN_F64_1,
    IN_F64_1, IN_I32_1, IN_F64_1, F64,
    OUT_F64_1, OUT_F64_1, OUT_BOOL_1,
)  # fmt: skip
def _server_power(
    servers,
    state,
    alive_count,
    cap_w,
    ignore_caps,
    slowed,
    overdraw_x,
    standby_w,
    post_w,
    boot_w,
    idle_w,
    gpus,
    gpu_idle_w,
    gpu_min_cap_w,
    gpu_max_w,
    other_max_w,
    psus_to_carry,
    psu_rating_w,
    slowdown_x,
    out_p_w,
    out_gpu_w,
    out_braked,
):
    """Input power and per-GPU power of the listed servers from their state.

        OFF or no PSU powered   P = 0
        BMC, STANDBY            P = standby_w
        POST, BOOT              P = post_w·overdraw_x, boot_w·overdraw_x
        IDLE                    P = idle_w, GPUs at gpu_idle_w
        LOADED                  g = clamp(cap_w, gpu_min_cap_w, gpu_max_w) (gpu_max_w if the
                                agent ignores caps), × slowdown_x while thermally slowed;
                                P = other_max_w + gpus·g
        HALTED                  P = idle_w − gpus·gpu_idle_w (GPUs shut down), g = 0
    Power brake: with fewer than psus_to_carry PSUs powered, P is held to
    alive_count·psu_rating_w, by lowering g for a LOADED server (out_braked = True).

    Units: cap_w, gpu_*_w (S,) W per GPU; standby_w, post_w, boot_w, idle_w, other_max_w,
    psu_rating_w (S,) W; overdraw_x (S,) ×model; slowdown_x ×g; out_p_w (S,) W;
    out_gpu_w (S,) W per GPU; out_braked (S,) bool.
    """
    m = servers.shape[0]
    for j in range(m):
        s = servers[j]
        st = state[s]
        alive = alive_count[s]
        g = 0.0
        if alive <= 0 or st == SERVER_OFF:
            p = 0.0
        elif st == SERVER_BMC or st == SERVER_STANDBY:
            p = standby_w[s]
        elif st == SERVER_POST:
            p = post_w[s] * overdraw_x[s]
        elif st == SERVER_BOOT:
            p = boot_w[s] * overdraw_x[s]
        elif st == SERVER_IDLE:
            p = idle_w[s]
            g = gpu_idle_w[s]
        elif st == SERVER_LOADED:
            if ignore_caps[s]:
                g = gpu_max_w[s]
            else:
                g = cap_w[s]
                if g < gpu_min_cap_w[s]:
                    g = gpu_min_cap_w[s]
                if g > gpu_max_w[s]:
                    g = gpu_max_w[s]
            if slowed[s]:
                g = g * slowdown_x
            p = other_max_w[s] + gpus[s] * g
        else:  # HALTED
            p = idle_w[s] - gpus[s] * gpu_idle_w[s]
            if p < 0.0:
                p = 0.0
        braked = False
        if alive > 0 and alive < psus_to_carry[s]:
            limit = alive * psu_rating_w[s]
            if p > limit:
                braked = True
                if st == SERVER_LOADED and gpus[s] > 0:
                    g = (limit - other_max_w[s]) / gpus[s]
                    if g < 0.0:
                        g = 0.0
                    p = other_max_w[s] + gpus[s] * g
                if p > limit:
                    p = limit
        out_p_w[s] = p
        out_gpu_w[s] = g
        out_braked[s] = braked


@kernel(
    F64, IN_I32_1, IN_F64_1, IN_F64_1, IN_I32_1, IN_I32_1, IN_I32_1, IN_BOOL_1, IN_I32_1,
    IN_I8_1, IN_I32_1, IN_F64_1, IN_F64_2, IN_F64_1, IN_F64_1,
    OUT_F64_1, OUT_BOOL_1, OUT_F64_2, OUT_F64_2, OUT_F64_2, OUT_F64_2, OUT_F64_1, OUT_F64_1,
    OUT_F64_1, OUT_BOOL_1, OUT_I32_1, OUT_I64_1,
)  # fmt: skip
def _commit_loads(
    t_s,
    servers,
    server_p_w,
    server_pf,
    server_zone,
    psu_start,
    psu_order,
    psu_alive,
    psu_node,
    psu_phase,
    parent_idx,
    v_ln_v,
    rating_a,
    thermal_tau_s,
    short_pickup_x,
    out_server_p_applied_w,
    out_psu_alive_applied,
    out_node_va,
    out_node_pw,
    out_theta,
    out_short_timer_s,
    out_t_state_s,
    out_energy_j,
    out_zone_p_w,
    scratch_mark,
    out_touched,
    out_n_touched,
):
    """Move the listed servers' loads in the tree from what was applied to what holds now.

    Server s draws S = P/pf shared equally by its powered PSUs. For each of its PSUs the
    change of its share, (new share if psu_alive) − (applied share if out_psu_alive_applied),
    in VA and in W, is added to its outlet and every ancestor with the phase split of
    kernels.aggregate (L-N whole, L-L 1/√3 on each line, 3φ 1/3 each). Before a node's first
    change in this call its breaker state and energy are advanced from out_t_state_s to t_s at
    the old current (x = VA/V_LN/rating per present pole):
        θ ← x² + (θ − x²)·exp(−Δt/τ);  timer ← timer + Δt if x ≥ pickup else 0;
        energy ← energy + Σ_p W_p·Δt
    Changed nodes are listed in out_touched[:out_n_touched[0]] (appended after what is there)
    and flagged in scratch_mark (refresh_nodes clears it). The zone load of each server's
    zone moves by the change of its drawn power; the applied power and PSU flags become the
    new ones.

    Units: t_s s; server_p_w (S,) W; server_pf (S,) 1; v_ln_v (n,) V; rating_a (n, 3) A;
    thermal_tau_s (n,) s; short_pickup_x (n,) ×rating; out_node_va (n, 3) VA;
    out_node_pw (n, 3) W; out_theta (n, 3) (×rating)²; out_short_timer_s (n, 3) s;
    out_t_state_s (n,) s; out_energy_j (n,) J; out_zone_p_w (Z,) W.
    """
    nt = out_n_touched[0]
    for j in range(servers.shape[0]):
        s = servers[j]
        lo = psu_start[s]
        hi = psu_start[s + 1]
        old_count = 0
        new_count = 0
        for q in range(lo, hi):
            k = psu_order[q]
            if out_psu_alive_applied[k]:
                old_count += 1
            if psu_alive[k]:
                new_count += 1
        old_w = out_server_p_applied_w[s] / old_count if old_count > 0 else 0.0
        new_w = server_p_w[s] / new_count if new_count > 0 else 0.0
        pf = server_pf[s]
        drawn = server_p_w[s] if new_count > 0 else 0.0
        old_drawn = out_server_p_applied_w[s] if old_count > 0 else 0.0
        out_zone_p_w[server_zone[s]] += drawn - old_drawn
        for q in range(lo, hi):
            k = psu_order[q]
            dw = (new_w if psu_alive[k] else 0.0) - (old_w if out_psu_alive_applied[k] else 0.0)
            out_psu_alive_applied[k] = psu_alive[k]
            if dw == 0.0:
                continue
            dva = dw / pf
            code = psu_phase[k]
            node = psu_node[k]
            while node >= 0:
                if not scratch_mark[node]:
                    scratch_mark[node] = True
                    out_touched[nt] = node
                    nt += 1
                    dt = t_s - out_t_state_s[node]
                    if dt > 0.0:
                        decay = math.exp(-dt / thermal_tau_s[node])
                        inv_v = 1.0 / v_ln_v[node]
                        for p in range(3):
                            rating = rating_a[node, p]
                            if rating <= 0.0:
                                continue
                            x = out_node_va[node, p] * inv_v / rating
                            x2 = x * x
                            out_theta[node, p] = x2 + (out_theta[node, p] - x2) * decay
                            if x >= short_pickup_x[node]:
                                out_short_timer_s[node, p] += dt
                            else:
                                out_short_timer_s[node, p] = 0.0
                        out_energy_j[node] += (
                            out_node_pw[node, 0] + out_node_pw[node, 1] + out_node_pw[node, 2]
                        ) * dt
                    out_t_state_s[node] = t_s
                if code <= 2:
                    out_node_va[node, code] += dva
                    out_node_pw[node, code] += dw
                elif code <= 5:
                    a = code - 3
                    b = (a + 1) % 3
                    out_node_va[node, a] += dva * _INV_SQRT3
                    out_node_va[node, b] += dva * _INV_SQRT3
                    out_node_pw[node, a] += dw * _INV_SQRT3
                    out_node_pw[node, b] += dw * _INV_SQRT3
                else:
                    for p in range(3):
                        out_node_va[node, p] += dva * _THIRD
                        out_node_pw[node, p] += dw * _THIRD
                node = parent_idx[node]
        out_server_p_applied_w[s] = server_p_w[s]
    out_n_touched[0] = nt


@kernel(
    F64, IN_I32_1, IN_F64_2, IN_F64_1, IN_F64_2, IN_F64_2, IN_F64_1, IN_F64_1, IN_F64_1,
    IN_F64_1, IN_F64_1, IN_F64_2, IN_F64_2, IN_BOOL_1,
    OUT_F64_1, OUT_F64_1, OUT_F64_1, OUT_F64_1, OUT_BOOL_1, OUT_I32_1, OUT_I8_1, OUT_F64_1,
    OUT_F64_1, OUT_I64_1, OUT_F64_1,
)  # fmt: skip
def _refresh_nodes(
    t_s,
    nodes,
    node_va,
    v_ln_v,
    rating_a,
    limit_a,
    thermal_k,
    thermal_tau_s,
    magnetic_x,
    short_pickup_x,
    short_delay_s,
    theta,
    short_timer_s,
    breaker_live,
    out_t_trip_s,
    out_peak_utilization,
    out_over_since_s,
    out_over_peak_x,
    scratch_mark,
    out_ev_node,
    out_ev_kind,
    out_ev_start_s,
    out_ev_peak_x,
    out_n_ev,
    out_trip_min,
):
    """After loads changed at t_s: per listed node, its predicted trip, peak and overload.

    With x = VA/V_LN/rating and u = VA/V_LN/limit per present pole (states advanced to t_s):
        out_t_trip_s = t_s + min over poles of 0 (x ≥ m), max(delay − timer, 0)
                       (x ≥ pickup), 0 (θ ≥ k²), τ·ln((x² − θ)/(x² − k²)) (x > k);
                       +inf when never or when the breaker is not live (none, or open)
        out_peak_utilization = max(itself, max_p u)
        overload: max_p u > 1 opens one (out_over_since_s = t_s, event START), while it lasts
                  out_over_peak_x keeps the largest x; max_p u <= 1 closes it (event END,
                  with its start and peak)
    Events go to out_ev_*[out_n_ev[0]...]. out_trip_min holds [earliest t_trip, its node]
    over all nodes and is kept up to date (a full scan only when the earliest one moved
    later). scratch_mark of the listed nodes is cleared.

    Units: t_s s; node_va (n, 3) VA; v_ln_v (n,) V; rating_a, limit_a (n, 3) A;
    thermal_k, magnetic_x, short_pickup_x (n,) ×rating; thermal_tau_s, short_delay_s (n,) s;
    theta (n, 3) (×rating)²; short_timer_s (n, 3) s; out_t_trip_s, out_over_since_s,
    out_ev_start_s (s absolute); out_peak_utilization (n,) ×limit; out_over_peak_x,
    out_ev_peak_x ×rating.
    """
    n_ev = out_n_ev[0]
    best_t = out_trip_min[0]
    best_node = int(out_trip_min[1])
    rescan = False
    for j in range(nodes.shape[0]):
        i = nodes[j]
        scratch_mark[i] = False
        inv_v = 1.0 / v_ln_v[i]
        k = thermal_k[i]
        k2 = k * k
        ttt = np.inf
        u_max = 0.0
        x_max = 0.0
        for p in range(3):
            rating = rating_a[i, p]
            if rating <= 0.0:
                continue
            cur = node_va[i, p] * inv_v
            if cur < 0.0:
                cur = 0.0
            x = cur / rating
            if x > x_max:
                x_max = x
            lim = limit_a[i, p]
            if lim > 0.0:
                u = cur / lim
                if u > u_max:
                    u_max = u
            if x >= magnetic_x[i]:
                ttt = 0.0
            if x >= short_pickup_x[i]:
                t = short_delay_s[i] - short_timer_s[i, p]
                if t < 0.0:
                    t = 0.0
                if t < ttt:
                    ttt = t
            th = theta[i, p]
            if th >= k2:
                ttt = 0.0
            elif x > k:
                x2 = x * x
                t = thermal_tau_s[i] * math.log((x2 - th) / (x2 - k2))
                if t < ttt:
                    ttt = t
        new_trip = t_s + ttt if breaker_live[i] else np.inf
        old_trip = out_t_trip_s[i]
        out_t_trip_s[i] = new_trip
        if i == best_node and new_trip > old_trip:
            rescan = True
        if new_trip < best_t:
            best_t = new_trip
            best_node = i
        if u_max > out_peak_utilization[i]:
            out_peak_utilization[i] = u_max
        over = u_max > _OVER
        since = out_over_since_s[i]
        if over:
            if since == np.inf:
                out_over_since_s[i] = t_s
                out_over_peak_x[i] = x_max
                out_ev_node[n_ev] = i
                out_ev_kind[n_ev] = EVENT_OVERLOAD_START
                out_ev_start_s[n_ev] = t_s
                out_ev_peak_x[n_ev] = x_max
                n_ev += 1
            elif x_max > out_over_peak_x[i]:
                out_over_peak_x[i] = x_max
        elif since != np.inf:
            out_ev_node[n_ev] = i
            out_ev_kind[n_ev] = EVENT_OVERLOAD_END
            out_ev_start_s[n_ev] = since
            out_ev_peak_x[n_ev] = out_over_peak_x[i]
            n_ev += 1
            out_over_since_s[i] = np.inf
    if rescan:
        best_t = np.inf
        best_node = -1
        for i in range(out_t_trip_s.shape[0]):
            if out_t_trip_s[i] < best_t:
                best_t = out_t_trip_s[i]
                best_node = i
    out_trip_min[0] = best_t
    out_trip_min[1] = best_node
    out_n_ev[0] = n_ev


@kernel(IN_I32_1, IN_BOOL_1, OUT_BOOL_1)
def _energize(parent_idx, closed, out_energized):
    """Which nodes carry voltage: energized[i] = closed[i] and (i is a root or its parent is
    energized). A node is closed unless its breaker is open (tripped), it is an outlet
    switched off, or it is a source that is lost.

    Units: parent_idx (n,) index; closed, out_energized (n,) bool.
    """
    n = parent_idx.shape[0]
    for i in range(n):
        p = parent_idx[i]
        out_energized[i] = closed[i] and (p < 0 or out_energized[p])


@kernel(
    IN_I32_1, IN_F64_1, IN_I32_1, IN_I8_1, IN_I32_1, IN_F64_1, IN_F64_2, IN_F64_2,
    OUT_F64_2, OUT_BOOL_1, OUT_I32_1, OUT_F64_1, OUT_I64_1,
)  # fmt: skip
def _inrush_x(
    psus,
    inrush_a,
    psu_node,
    psu_phase,
    parent_idx,
    v_ln_v,
    node_va,
    rating_a,
    scratch_va,
    scratch_mark,
    out_nodes,
    out_x,
    out_n,
):
    """Peak current, ×rating, at every node above PSUs whose inrush overlaps in one instant.

    PSU k draws inrush_a[k] (the rms equivalent of its peak, I_peak/√2) on each line it uses
    (one for L-N, two for L-L, three for 3φ), as VA-equivalent I·V_LN(outlet) so that it
    carries across voltage levels. At each node above, the inrush of all listed PSUs is added
    to the steady current on every present pole:
        x = (VA_steady + VA_inrush)/V_LN/rating,   out_x = max over poles of x
    The nodes reached are listed in out_nodes[:out_n[0]] with their out_x; scratch_va and
    scratch_mark must be zero/False on entry and are left so.

    Units: inrush_a (K,) A rms; v_ln_v (n,) V; node_va (n, 3) VA steady; rating_a (n, 3) A;
    scratch_va (n, 3) VA; out_x (n,) ×rating.
    """
    m = 0
    for j in range(psus.shape[0]):
        k = psus[j]
        node = psu_node[k]
        va = inrush_a[k] * v_ln_v[node]
        code = psu_phase[k]
        while node >= 0:
            if not scratch_mark[node]:
                scratch_mark[node] = True
                out_nodes[m] = node
                m += 1
            if code <= 2:
                scratch_va[node, code] += va
            elif code <= 5:
                a = code - 3
                scratch_va[node, a] += va
                scratch_va[node, (a + 1) % 3] += va
            else:
                scratch_va[node, 0] += va
                scratch_va[node, 1] += va
                scratch_va[node, 2] += va
            node = parent_idx[node]
    for j in range(m):
        i = out_nodes[j]
        inv_v = 1.0 / v_ln_v[i]
        best = 0.0
        for p in range(3):
            rating = rating_a[i, p]
            if rating > 0.0:
                x = (node_va[i, p] + scratch_va[i, p]) * inv_v / rating
                if x > best:
                    best = x
            scratch_va[i, p] = 0.0
        out_x[j] = best
        scratch_mark[i] = False
    out_n[0] = m


@kernel(IN_F64_2, IN_F64_1, IN_F64_2, IN_I8_1, OUT_F64_1)
def _utilization_by_kind(node_va, v_ln_v, limit_a, node_kind, out_utilization):
    """Largest utilization of each node kind: max over nodes of that kind and their present
    poles (limit > 0) of I/limit, with I = VA/V_LN; 0 for a kind without load.

    Units: node_va (n, 3) VA; v_ln_v (n,) V; limit_a (n, 3) A; node_kind (n,) int8 code in
    [0, len(out_utilization)); out_utilization (kinds,) ×limit.
    """
    out_utilization[:] = 0.0
    for i in range(node_va.shape[0]):
        inv_v = 1.0 / v_ln_v[i]
        kind = node_kind[i]
        for p in range(3):
            lim = limit_a[i, p]
            if lim > 0.0:
                u = node_va[i, p] * inv_v / lim
                if u > out_utilization[kind]:
                    out_utilization[kind] = u


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_SQRT6 = math.sqrt(6.0)
_INV_2_53 = 1.0 / 9007199254740992.0


@kernel(
    F64, IN_I32_1, IN_I32_1, IN_F64_2, IN_F64_2, IN_F64_1, IN_BOOL_1, IN_F64_1, IN_F64_1,
    IN_F64_1, F64, F64, F64, F64, F64, F64,
    OUT_U64_1, OUT_F64_2, OUT_F64_2, OUT_F64_2, OUT_F64_1, OUT_F64_1,
)  # fmt: skip
def _meter_sample(
    t_s,
    meters,
    meter_node,
    node_va,
    node_pw,
    v_ln_v,
    energized,
    energy_j,
    t_state_s,
    lie_x,
    noise_x,
    voltage_noise_x,
    current_quantum_a,
    voltage_quantum_v,
    power_quantum_w,
    energy_quantum_wh,
    out_rng_state,
    out_i_a,
    out_v_v,
    out_p_w,
    out_e_wh,
    out_t_sample_s,
):
    """Take a reading of each listed meter at t_s from the true node state, in place.

    Per meter m on node i and phase p, with zero-mean unit-variance draws
    z = (u1 + u2 − 1)·√6 (triangular; u uniform in [0, 1) from the splitmix64 generator whose
    state is out_rng_state[0]):
        I = max(VA, 0)/V_LN·(1 + noise_x·z)·lie_x[m]     quantized to current_quantum_a
        P = max(W, 0)·(1 + noise_x·z)·lie_x[m]            quantized to power_quantum_w
        V = V_LN·energized·(1 + voltage_noise_x·z)         quantized to voltage_quantum_v
        E = (energy_j + ΣW·(t_s − t_state_s))/3600·lie_x[m] quantized to energy_quantum_wh
    negative results are clamped to 0 and quantizing rounds half up (floor(x/q + 0.5)·q);
    out_t_sample_s[m] = t_s. A quantum of 0 means none.

    Units: t_s s; node_va (n, 3) VA; node_pw (n, 3) W; v_ln_v (n,) V; energy_j (n,) J;
    t_state_s (n,) s; lie_x (M,) ×true; noise_x, voltage_noise_x relative; quanta A, V, W, Wh;
    out_i_a (M, 3) A; out_v_v (M, 3) V; out_p_w (M, 3) W; out_e_wh (M,) Wh.
    """
    state = out_rng_state[0]
    z3 = np.empty(3)
    q3 = np.empty(3)
    for j in range(meters.shape[0]):
        m = meters[j]
        i = meter_node[m]
        lie = lie_x[m]
        v = v_ln_v[i]
        on = 1.0 if energized[i] else 0.0
        for p in range(3):
            for r in range(3):
                state = state + _GOLDEN
                z = state
                z = (z ^ (z >> np.uint64(30))) * _MIX1
                z = (z ^ (z >> np.uint64(27))) * _MIX2
                z = z ^ (z >> np.uint64(31))
                u1 = (z >> np.uint64(11)) * _INV_2_53
                state = state + _GOLDEN
                w = state
                w = (w ^ (w >> np.uint64(30))) * _MIX1
                w = (w ^ (w >> np.uint64(27))) * _MIX2
                w = w ^ (w >> np.uint64(31))
                u2 = (w >> np.uint64(11)) * _INV_2_53
                z3[r] = (u1 + u2 - 1.0) * _SQRT6
            va = node_va[i, p]
            pw = node_pw[i, p]
            q3[0] = max(va, 0.0) / v * (1.0 + noise_x * z3[0]) * lie
            q3[1] = max(pw, 0.0) * (1.0 + noise_x * z3[1]) * lie
            q3[2] = v * on * (1.0 + voltage_noise_x * z3[2])
            for r in range(3):
                quantum = current_quantum_a if r == 0 else (
                    power_quantum_w if r == 1 else voltage_quantum_v)
                x = q3[r] if q3[r] > 0.0 else 0.0
                if quantum > 0.0:
                    x = math.floor(x / quantum + 0.5) * quantum
                q3[r] = x
            out_i_a[m, p] = q3[0]
            out_p_w[m, p] = q3[1]
            out_v_v[m, p] = q3[2]
        e = (energy_j[i] + (node_pw[i, 0] + node_pw[i, 1] + node_pw[i, 2])
             * (t_s - t_state_s[i])) / 3600.0 * lie
        if e < 0.0:
            e = 0.0
        if energy_quantum_wh > 0.0:
            e = math.floor(e / energy_quantum_wh + 0.5) * energy_quantum_wh
        out_e_wh[m] = e
        out_t_sample_s[m] = t_s
    out_rng_state[0] = state


# --------------------------------------------------------------------------- public API


def _i32(name: str, value: Any, high: int, what: str) -> npt.NDArray[np.int32]:
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise _checks.KernelInputError(f"{name} must be 1-D", argument=name)
    return _checks.int_array(name, arr, arr.shape, np.int32, 0, max(high, 0), what)  # type: ignore[return-value]


def _f64(name: str, value: Any, shape: tuple[int, ...], **kw: Any) -> FloatArray:
    return _checks.float_array(name, value, shape, **kw)


def _b(name: str, value: Any, shape: tuple[int, ...]) -> npt.NDArray[np.bool_]:
    return _checks.bool_array(name, value, shape)


def advance_servers(
    t_end_s: float,
    alive_count: Any,
    psus_to_boot: Any,
    bmc_ready_s: Any,
    post_s: Any,
    boot_s: Any,
    work: Any,
    out_state: npt.NDArray[np.int8],
    out_next_s: FloatArray,
    out_dirty: npt.NDArray[np.bool_],
) -> float:
    """Run the timed server transitions due by ``t_end_s`` (s) in place; return the earliest
    pending transition time (s, +inf for none).

    BMC → POST (enough PSUs powered) or STANDBY; POST → BOOT after ``post_s``; BOOT → LOADED
    (``work`` set) or IDLE after ``boot_s``. Units: ``bmc_ready_s``, ``post_s``, ``boot_s``
    (S,) s; ``out_next_s`` (S,) s absolute; ``out_state`` (S,) int8; ``out_dirty`` (S,) bool
    set for servers that changed.
    """
    n = np.asarray(out_state).shape[0] if isinstance(out_state, np.ndarray) else -1
    _checks.out_array("out_state", out_state, (n,), np.int8)
    _checks.out_array("out_next_s", out_next_s, (n,), np.float64)
    _checks.out_array("out_dirty", out_dirty, (n,), np.bool_)
    t_end = _checks.float_scalar("t_end_s", t_end_s)
    alive = _checks.int_array("alive_count", alive_count, (n,), np.int32, 0, 1 << 30, "a count")
    boot_n = _checks.int_array("psus_to_boot", psus_to_boot, (n,), np.int32, 0, 1 << 30,
                               "a count")
    bmc = _f64("bmc_ready_s", bmc_ready_s, (n,), min_value=0.0)
    post = _f64("post_s", post_s, (n,), min_value=0.0)
    boot = _f64("boot_s", boot_s, (n,), min_value=0.0)
    work_b = _b("work", work, (n,))
    out_min = np.empty(1, np.float64)
    _advance_servers(t_end, alive, boot_n, bmc, post, boot, work_b, out_state, out_next_s,
                     out_dirty, out_min)
    return float(out_min[0])


def alive_changed(
    t_s: float,
    psus: Any,
    psu_alive: Any,
    psu_server: Any,
    psus_to_boot: Any,
    bmc_ready_s: Any,
    post_s: Any,
    out_alive_count: npt.NDArray[np.int32],
    out_state: npt.NDArray[np.int8],
    out_next_s: FloatArray,
    out_dirty: npt.NDArray[np.bool_],
    next_min_s: float = math.inf,
) -> float:
    """Account for the PSUs ``psus`` whose power flipped at ``t_s`` (``psu_alive`` holds the
    new values); return the earliest pending transition (s), starting from ``next_min_s``.

    Counts move by ±1; a server left without power goes OFF, one newly powered starts its BMC
    (ready after ``bmc_ready_s``), one in STANDBY that now has ``psus_to_boot`` PSUs starts
    POST. Units as in :func:`advance_servers`; ``psus`` (J,) distinct PSU indices.
    """
    n = out_state.shape[0] if isinstance(out_state, np.ndarray) else -1
    _checks.out_array("out_alive_count", out_alive_count, (n,), np.int32)
    _checks.out_array("out_state", out_state, (n,), np.int8)
    _checks.out_array("out_next_s", out_next_s, (n,), np.float64)
    _checks.out_array("out_dirty", out_dirty, (n,), np.bool_)
    alive = np.asarray(psu_alive)
    k = alive.shape[0] if alive.ndim == 1 else -1
    alive_b = _b("psu_alive", alive, (k,))
    server = _checks.int_array("psu_server", psu_server, (k,), np.int32, 0, n, "a server index")
    idx = _i32("psus", psus, k, "a PSU index")
    if np.unique(idx).shape[0] != idx.shape[0]:
        raise _checks.KernelInputError("psus lists a PSU twice", argument="psus")
    boot_n = _checks.int_array("psus_to_boot", psus_to_boot, (n,), np.int32, 0, 1 << 30,
                               "a count")
    bmc = _f64("bmc_ready_s", bmc_ready_s, (n,), min_value=0.0)
    post = _f64("post_s", post_s, (n,), min_value=0.0)
    out_min = np.array([next_min_s], np.float64)
    _alive_changed(_checks.float_scalar("t_s", t_s), idx, alive_b, server, boot_n, bmc, post,
                   out_alive_count, out_state, out_next_s, out_dirty, out_min)
    return float(out_min[0])


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
    out_p_w: FloatArray,
    out_gpu_w: FloatArray,
    out_braked: npt.NDArray[np.bool_],
) -> None:
    """Input power (W) and per-GPU power (W) of the listed servers from their state, in place.

    See the kernel ``_server_power`` for the table of states; caps are clamped to
    [gpu_min_cap_w, gpu_max_w] (a cap outside the range is never applied as asked); with fewer
    than ``psus_to_carry`` PSUs powered the power is held to ``alive_count × psu_rating_w``
    (power brake, ``out_braked``). Units: W and W per GPU, (S,); ``overdraw_x`` ×model;
    ``slowdown_x`` the GPU power factor while thermally slowed.
    """
    st = np.asarray(state)
    n = st.shape[0] if st.ndim == 1 else -1
    idx = _i32("servers", servers, n, "a server index")

    def watts(name: str, value: Any) -> FloatArray:
        return _f64(name, value, (n,), min_value=0.0)

    def count(name: str, value: Any) -> np.ndarray:
        return _checks.int_array(name, value, (n,), np.int32, 0, 1 << 30, "a count")

    for name, arr, dtype in (("out_p_w", out_p_w, np.float64), ("out_gpu_w", out_gpu_w,
                             np.float64), ("out_braked", out_braked, np.bool_)):
        _checks.out_array(name, arr, (n,), dtype)
    _server_power(
        idx,
        _checks.int_array("state", st, (n,), np.int8, 0, N_SERVER_STATES, "a server state"),
        count("alive_count", alive_count), watts("cap_w", cap_w),
        _b("ignore_caps", ignore_caps, (n,)), _b("slowed", slowed, (n,)),
        watts("overdraw_x", overdraw_x), watts("standby_w", standby_w),
        watts("post_w", post_w), watts("boot_w", boot_w), watts("idle_w", idle_w),
        count("gpus", gpus), watts("gpu_idle_w", gpu_idle_w),
        watts("gpu_min_cap_w", gpu_min_cap_w), watts("gpu_max_w", gpu_max_w),
        watts("other_max_w", other_max_w), count("psus_to_carry", psus_to_carry),
        watts("psu_rating_w", psu_rating_w), _checks.float_scalar("slowdown_x", slowdown_x),
        out_p_w, out_gpu_w, out_braked,
    )
    _checks.output_finite("out_p_w", out_p_w)


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
    out_server_p_applied_w: FloatArray,
    out_psu_alive_applied: npt.NDArray[np.bool_],
    out_node_va: FloatArray,
    out_node_pw: FloatArray,
    out_theta: FloatArray,
    out_short_timer_s: FloatArray,
    out_t_state_s: FloatArray,
    out_energy_j: FloatArray,
    out_zone_p_w: FloatArray,
    scratch_mark: npt.NDArray[np.bool_],
    out_touched: npt.NDArray[np.int32],
    out_n_touched: npt.NDArray[np.int64],
) -> None:
    """Apply the listed servers' new power and powered PSUs to the tree loads at ``t_s``.

    Incremental: only the paths from the servers' outlets to their roots change; each node's
    breaker state (θ, short-time timer) and energy are first advanced exactly from
    ``out_t_state_s`` to ``t_s`` at its old current. Per-phase VA and W move with the phase
    split of :func:`kernels.aggregate.psu_load_va`. Touched nodes are appended to
    ``out_touched`` (count in ``out_n_touched[0]``) and flagged in ``scratch_mark``; call
    :func:`refresh_nodes` with them next. Units: see the kernel ``_commit_loads``.
    """
    va = out_node_va
    n = va.shape[0] if isinstance(va, np.ndarray) and va.ndim == 2 else -1
    parent = _checks.parent_array(parent_idx)
    if parent.shape[0] != n:
        raise _checks.KernelInputError("parent_idx and out_node_va disagree on n",
                                       argument="parent_idx")
    p_w = np.asarray(server_p_w)
    s_n = p_w.shape[0] if p_w.ndim == 1 else -1
    p_w = _f64("server_p_w", p_w, (s_n,), min_value=0.0)
    pf = _f64("server_pf", server_pf, (s_n,), min_value=0.0, min_exclusive=True, max_value=1.0)
    idx = _i32("servers", servers, s_n, "a server index")
    start = _checks.int_array("psu_start", psu_start, (s_n + 1,), np.int32, 0, 1 << 30,
                              "a PSU offset")
    alive = np.asarray(psu_alive)
    k = alive.shape[0] if alive.ndim == 1 else -1
    alive_b = _b("psu_alive", alive, (k,))
    order = _checks.int_array("psu_order", psu_order, (k,), np.int32, 0, k, "a PSU index")
    if int(start[-1]) != k or bool((np.diff(start) < 0).any()):
        raise _checks.KernelInputError("psu_start must rise from 0 to the PSU count",
                                       argument="psu_start")
    node = _checks.int_array("psu_node", psu_node, (k,), np.int32, 0, n, "a node index")
    phase = _checks.int_array("psu_phase", psu_phase, (k,), np.int8, 0, 7, "a connection code")
    z = out_zone_p_w.shape[0] if isinstance(out_zone_p_w, np.ndarray) else 0
    zone = _checks.int_array("server_zone", server_zone, (s_n,), np.int32, 0, z, "a zone index")
    v = _f64("v_ln_v", v_ln_v, (n,), min_value=0.0, min_exclusive=True)
    rating = _f64("rating_a", rating_a, (n, 3), min_value=0.0)
    tau = _f64("thermal_tau_s", thermal_tau_s, (n,), min_value=0.0, min_exclusive=True)
    pickup = _f64("short_pickup_x", short_pickup_x, (n,), allow_inf=True, min_value=0.0)
    for name, arr, shape, dtype in (
        ("out_server_p_applied_w", out_server_p_applied_w, (s_n,), np.float64),
        ("out_psu_alive_applied", out_psu_alive_applied, (k,), np.bool_),
        ("out_node_va", out_node_va, (n, 3), np.float64),
        ("out_node_pw", out_node_pw, (n, 3), np.float64),
        ("out_theta", out_theta, (n, 3), np.float64),
        ("out_short_timer_s", out_short_timer_s, (n, 3), np.float64),
        ("out_t_state_s", out_t_state_s, (n,), np.float64),
        ("out_energy_j", out_energy_j, (n,), np.float64),
        ("out_zone_p_w", out_zone_p_w, (z,), np.float64),
        ("scratch_mark", scratch_mark, (n,), np.bool_),
        ("out_touched", out_touched, (n,), np.int32),
        ("out_n_touched", out_n_touched, (1,), np.int64),
    ):
        _checks.out_array(name, arr, shape, dtype)
    if not 0 <= int(out_n_touched[0]) <= n:
        raise _checks.KernelInputError("out_n_touched[0] out of range", argument="out_n_touched")
    if idx.size and (out_t_state_s.max() > t_s):
        raise _checks.KernelInputError("t_s is earlier than a node's state time",
                                       argument="t_s")
    _commit_loads(float(t_s), idx, p_w, pf, zone, start, order, alive_b, node, phase, parent,
                  v, rating, tau, pickup, out_server_p_applied_w, out_psu_alive_applied,
                  out_node_va, out_node_pw, out_theta, out_short_timer_s, out_t_state_s,
                  out_energy_j, out_zone_p_w, scratch_mark, out_touched, out_n_touched)
    _checks.output_finite("out_node_va", out_node_va)
    _checks.output_finite("out_theta", out_theta)


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
    out_t_trip_s: FloatArray,
    out_peak_utilization: FloatArray,
    out_over_since_s: FloatArray,
    out_over_peak_x: FloatArray,
    scratch_mark: npt.NDArray[np.bool_],
    out_ev_node: npt.NDArray[np.int32],
    out_ev_kind: npt.NDArray[np.int8],
    out_ev_start_s: FloatArray,
    out_ev_peak_x: FloatArray,
    out_n_ev: npt.NDArray[np.int64],
    out_trip_min: FloatArray,
) -> None:
    """Recompute the predicted trip time, peak utilization and overload state of ``nodes``
    whose state is advanced to ``t_s`` (s) and whose loads just changed.

    ``out_t_trip_s`` = t_s + :func:`kernels.breaker.time_to_trip_s` (+inf where
    ``breaker_live`` is False); an overload (utilization above 1 on any pole) opening or
    closing is written as an event (node, kind, start s, peak ×rating) after
    ``out_n_ev[0]``; ``out_trip_min`` = [earliest trip s, node] is maintained.
    Units: see the kernel ``_refresh_nodes``.
    """
    va = np.asarray(node_va)
    n = va.shape[0] if va.ndim == 2 else -1
    idx = _i32("nodes", nodes, n, "a node index")
    args = (
        _f64("node_va", va, (n, 3)),
        _f64("v_ln_v", v_ln_v, (n,), min_value=0.0, min_exclusive=True),
        _f64("rating_a", rating_a, (n, 3), min_value=0.0),
        _f64("limit_a", limit_a, (n, 3), min_value=0.0),
        _f64("thermal_k", thermal_k, (n,), allow_inf=True, min_value=0.0, min_exclusive=True),
        _f64("thermal_tau_s", thermal_tau_s, (n,), allow_inf=True, min_value=0.0,
             min_exclusive=True),
        _f64("magnetic_x", magnetic_x, (n,), allow_inf=True, min_value=0.0, min_exclusive=True),
        _f64("short_pickup_x", short_pickup_x, (n,), allow_inf=True, min_value=0.0,
             min_exclusive=True),
        _f64("short_delay_s", short_delay_s, (n,), min_value=0.0),
        _f64("theta", theta, (n, 3), min_value=0.0),
        _f64("short_timer_s", short_timer_s, (n, 3), min_value=0.0),
        _b("breaker_live", breaker_live, (n,)),
    )
    for name, arr, shape, dtype in (
        ("out_t_trip_s", out_t_trip_s, (n,), np.float64),
        ("out_peak_utilization", out_peak_utilization, (n,), np.float64),
        ("out_over_since_s", out_over_since_s, (n,), np.float64),
        ("out_over_peak_x", out_over_peak_x, (n,), np.float64),
        ("scratch_mark", scratch_mark, (n,), np.bool_),
        ("out_ev_node", out_ev_node, (n,), np.int32),
        ("out_ev_kind", out_ev_kind, (n,), np.int8),
        ("out_ev_start_s", out_ev_start_s, (n,), np.float64),
        ("out_ev_peak_x", out_ev_peak_x, (n,), np.float64),
        ("out_n_ev", out_n_ev, (1,), np.int64),
        ("out_trip_min", out_trip_min, (2,), np.float64),
    ):
        _checks.out_array(name, arr, shape, dtype)
    if int(out_n_ev[0]) + idx.shape[0] > n:
        raise _checks.KernelInputError("the event buffer could overflow: drain it first",
                                       argument="out_n_ev")
    _refresh_nodes(_checks.float_scalar("t_s", t_s), idx, *args, out_t_trip_s,
                   out_peak_utilization, out_over_since_s, out_over_peak_x, scratch_mark,
                   out_ev_node, out_ev_kind, out_ev_start_s, out_ev_peak_x, out_n_ev,
                   out_trip_min)
    _checks.output_not_nan("out_t_trip_s", out_t_trip_s)


def energize(parent_idx: Any, closed: Any) -> npt.NDArray[np.bool_]:
    """Which nodes carry voltage, shape (n,) bool: a node is energized when it and every
    ancestor are closed (``closed`` (n,) bool: breaker not open, outlet switched on, source
    present)."""
    parent = _checks.parent_array(parent_idx)
    n = parent.shape[0]
    out = np.empty(n, dtype=np.bool_)
    _energize(parent, _b("closed", closed, (n,)), out)
    return out


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
    """Nodes above the PSUs ``psus`` switched on together, and at each the largest pole
    current during their inrush, as a multiple of its rating: (steady + Σ inrush)/rating.

    ``inrush_a`` (K,) A is each PSU's rms-equivalent inrush (I_peak/√2), drawn on every line
    the PSU uses; ``node_va`` (n, 3) VA the steady loads. Returns (nodes (m,) int32,
    x (m,) ×rating) to compare with the magnetic threshold of each node's breaker.
    """
    parent = _checks.parent_array(parent_idx)
    n = parent.shape[0]
    node = np.asarray(psu_node)
    k = node.shape[0] if node.ndim == 1 else -1
    node_i = _checks.int_array("psu_node", node, (k,), np.int32, 0, n, "a node index")
    phase = _checks.int_array("psu_phase", psu_phase, (k,), np.int8, 0, 7, "a connection code")
    idx = _i32("psus", psus, k, "a PSU index")
    cur = _f64("inrush_a", inrush_a, (k,), min_value=0.0)
    v = _f64("v_ln_v", v_ln_v, (n,), min_value=0.0, min_exclusive=True)
    va = _f64("node_va", node_va, (n, 3))
    rating = _f64("rating_a", rating_a, (n, 3), min_value=0.0)
    scratch_va = np.zeros((n, 3), np.float64)
    scratch_mark = np.zeros(n, np.bool_)
    out_nodes = np.empty(n, np.int32)
    out_x = np.empty(n, np.float64)
    out_n = np.zeros(1, np.int64)
    _inrush_x(idx, cur, node_i, phase, parent, v, va, rating, scratch_va, scratch_mark,
              out_nodes, out_x, out_n)
    m = int(out_n[0])
    return out_nodes[:m].copy(), out_x[:m].copy()


def utilization_by_kind(node_va: Any, v_ln_v: Any, limit_a: Any, node_kind: Any,
                        n_kinds: int) -> FloatArray:
    """Largest load/limit over the present poles of the nodes of each kind, shape (n_kinds,)
    ×limit; 0 for a kind without load. Units: node_va (n, 3) VA; v_ln_v (n,) V; limit_a (n, 3)
    A; node_kind (n,) int8 code."""
    va = np.asarray(node_va)
    n = va.shape[0] if va.ndim == 2 else -1
    va = _f64("node_va", va, (n, 3))
    v = _f64("v_ln_v", v_ln_v, (n,), min_value=0.0, min_exclusive=True)
    lim = _f64("limit_a", limit_a, (n, 3), min_value=0.0)
    kind = _checks.int_array("node_kind", node_kind, (n,), np.int8, 0, n_kinds, "a kind code")
    out = np.empty(int(n_kinds), np.float64)
    _utilization_by_kind(va, v, lim, kind, out)
    return out


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
    out_rng_state: npt.NDArray[np.uint64],
    out_i_a: FloatArray,
    out_v_v: FloatArray,
    out_p_w: FloatArray,
    out_e_wh: FloatArray,
    out_t_sample_s: FloatArray,
) -> None:
    """Readings of the listed meters at ``t_s`` (s) with noise and quantization, in place.

    Current (A), voltage (V, line to neutral) and real power (W) per phase and energy (Wh)
    of each meter's node, from the true state; Gaussian relative noise ``noise_x`` (current,
    power) and ``voltage_noise_x`` (zero-mean triangular draws of unit variance from a
    deterministic splitmix64 generator whose state is
    ``out_rng_state[0]`` (uint64), readings scaled by ``lie_x`` (M,), quantized to the quanta.
    """
    va = np.asarray(node_va)
    n = va.shape[0] if va.ndim == 2 else -1
    mn = np.asarray(meter_node)
    m_n = mn.shape[0] if mn.ndim == 1 else -1
    node_i = _checks.int_array("meter_node", mn, (m_n,), np.int32, 0, n, "a node index")
    idx = _i32("meters", meters, m_n, "a meter index")
    args = (
        _f64("node_va", va, (n, 3)),
        _f64("node_pw", node_pw, (n, 3)),
        _f64("v_ln_v", v_ln_v, (n,), min_value=0.0, min_exclusive=True),
        _b("energized", energized, (n,)),
        _f64("energy_j", energy_j, (n,)),
        _f64("t_state_s", t_state_s, (n,)),
        _f64("lie_x", lie_x, (m_n,), min_value=0.0),
    )
    scalars = (
        _checks.float_scalar("noise_x", noise_x),
        _checks.float_scalar("voltage_noise_x", voltage_noise_x),
        _checks.float_scalar("current_quantum_a", current_quantum_a),
        _checks.float_scalar("voltage_quantum_v", voltage_quantum_v),
        _checks.float_scalar("power_quantum_w", power_quantum_w),
        _checks.float_scalar("energy_quantum_wh", energy_quantum_wh),
    )
    _checks.out_array("out_rng_state", out_rng_state, (1,), np.uint64)
    for name, arr, shape in (("out_i_a", out_i_a, (m_n, 3)), ("out_v_v", out_v_v, (m_n, 3)),
                             ("out_p_w", out_p_w, (m_n, 3)), ("out_e_wh", out_e_wh, (m_n,)),
                             ("out_t_sample_s", out_t_sample_s, (m_n,))):
        _checks.out_array(name, arr, shape, np.float64)
    _meter_sample(_checks.float_scalar("t_s", t_s), idx, node_i, *args, *scalars,
                  out_rng_state, out_i_a, out_v_v, out_p_w, out_e_wh, out_t_sample_s)
    _checks.output_finite("out_i_a", out_i_a)
