"""Thermal kernels of the simulated plant: the two-node cooling zone and GPU temperatures.

Cooling zone (PHYSICS.md §5), per zone, air node T_a (the inlet temperature) and equipment
mass T_m:

    C_air·dT_a/dt  = P_it − Q_cool − G·(T_a − T_m)
    C_mass·dT_m/dt = G·(T_a − T_m)
    Q_cool → clamp(P_it + (C_air/τ_cool)·(T_a − T_set), 0, capacity available), first-order
             lag τ_cool, in both directions

The demand P_it + (C_air/τ_cool)·(T_a − T_set) makes the closed loop return the inlet to the
setpoint with damping ratio 0.5 (without the mass node). A failed unit lowers the capacity at
once, and the cooling delivered falls with the lag τ_cool (the chilled water and coils still
hold cold): with PHYSICS's 1 MW, 1,000 m² hall this takes the inlet from 24 °C past 32 °C in
about 2.2 minutes (§8 check 13).

GPU temperature (an estimate, see docs/simulator.md): each server's GPUs share one
temperature that follows T_inlet + rise·g/g_max with a first-order lag, where g is the power per
GPU. Crossing the slowdown temperature slows the GPUs (their power drops by a factor until they
cool below slowdown − hysteresis); crossing the shutdown temperature halts the server's GPUs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from kernels import _checks
from kernels._jit import F64, IN_F64_1, IN_I32_1, OUT_BOOL_1, OUT_F64_1, OUT_I8_1, kernel

__all__ = ["gpu_temperature_step", "zone_step"]

FloatArray = npt.NDArray[np.float64]

_LOADED = 6  # kernels.plant.SERVER_LOADED (kernels import no sibling module's kernels)
_HALTED = 7  # kernels.plant.SERVER_HALTED


@kernel(
    F64, F64, IN_F64_1, IN_F64_1, IN_F64_1, IN_F64_1, IN_F64_1, IN_F64_1, IN_F64_1,
    OUT_F64_1, OUT_F64_1, OUT_F64_1, OUT_F64_1, OUT_F64_1,
)  # fmt: skip
def _zone_step(
    dt_s,
    max_substep_s,
    p_it_w,
    capacity_w,
    setpoint_c,
    c_air_j_per_k,
    c_mass_j_per_k,
    g_w_per_k,
    tau_cool_s,
    out_t_air_c,
    out_t_mass_c,
    out_q_cool_w,
    out_e_it_j,
    out_e_cool_j,
):
    """Advance every zone by dt_s in sub-steps of at most max_substep_s.

    Per sub-step h: target = clamp(P_it + (C_air/τ)(T_a − T_set), 0, capacity);
    Q ← target + (Q − target)·exp(−h/τ); then explicitly
        T_a ← T_a + h·(P_it − Q − G·(T_a − T_m))/C_air,  T_m ← T_m + h·G·(T_a − T_m)/C_mass
    (both from the old temperatures), and the energy counters grow by P_it·h and Q·h, so that
    C_air·ΔT_a + C_mass·ΔT_m = ΔE_it − ΔE_cool holds to rounding.

    Units: dt_s, max_substep_s, tau_cool_s s; p_it_w, capacity_w, out_q_cool_w (Z,) W;
    setpoint_c, out_t_air_c, out_t_mass_c (Z,) °C; c_air_j_per_k, c_mass_j_per_k (Z,) J/K;
    g_w_per_k (Z,) W/K; out_e_it_j, out_e_cool_j (Z,) J.
    """
    n_sub = math.ceil(dt_s / max_substep_s) if dt_s > 0.0 else 0
    if n_sub < 1:
        return
    h = dt_s / n_sub
    for z in range(p_it_w.shape[0]):
        tau = tau_cool_s[z]
        decay = math.exp(-h / tau)
        gain = c_air_j_per_k[z] / tau
        ta = out_t_air_c[z]
        tm = out_t_mass_c[z]
        q = out_q_cool_w[z]
        p = p_it_w[z]
        g = g_w_per_k[z]
        for _ in range(n_sub):
            target = p + gain * (ta - setpoint_c[z])
            if target < 0.0:
                target = 0.0
            if target > capacity_w[z]:
                target = capacity_w[z]
            q = target + (q - target) * decay
            flow = g * (ta - tm)
            ta_new = ta + h * (p - q - flow) / c_air_j_per_k[z]
            tm = tm + h * flow / c_mass_j_per_k[z]
            ta = ta_new
            out_e_it_j[z] += p * h
            out_e_cool_j[z] += q * h
        out_t_air_c[z] = ta
        out_t_mass_c[z] = tm
        out_q_cool_w[z] = q


@kernel(
    F64, IN_F64_1, IN_I32_1, IN_F64_1, IN_F64_1, F64, F64, F64, F64, F64,
    OUT_I8_1, OUT_F64_1, OUT_BOOL_1, OUT_BOOL_1,
)  # fmt: skip
def _gpu_temperature_step(
    dt_s,
    zone_t_air_c,
    server_zone,
    gpu_w,
    gpu_max_w,
    rise_k,
    tau_s,
    slowdown_c,
    shutdown_c,
    hysteresis_k,
    out_state,
    out_gpu_temp_c,
    out_slowed,
    out_changed,
):
    """Advance GPU temperatures by dt_s and apply the slowdown and shutdown thresholds.

        target = T_inlet(zone) + rise_k·gpu_w/gpu_max_w;  T ← target + (T − target)·exp(−dt/τ)
        LOADED and T ≥ shutdown_c          → state HALTED, not slowed
        LOADED, not slowed, T ≥ slowdown_c → slowed
        slowed and T < slowdown_c − hysteresis_k (or not LOADED) → not slowed
    Servers whose state or slowdown changed get out_changed = True. Servers without GPUs
    (gpu_max_w = 0) keep the inlet temperature.

    Units: dt_s, tau_s s; zone_t_air_c (Z,) °C; gpu_w, gpu_max_w (S,) W per GPU; rise_k,
    hysteresis_k K; slowdown_c, shutdown_c, out_gpu_temp_c (S,) °C; out_state (S,) int8 code.
    """
    decay = math.exp(-dt_s / tau_s)
    for s in range(out_state.shape[0]):
        target = zone_t_air_c[server_zone[s]]
        if gpu_max_w[s] > 0.0:
            target += rise_k * gpu_w[s] / gpu_max_w[s]
        temp = target + (out_gpu_temp_c[s] - target) * decay
        out_gpu_temp_c[s] = temp
        st = out_state[s]
        if st == _LOADED and gpu_max_w[s] > 0.0:
            if temp >= shutdown_c:
                out_state[s] = _HALTED
                out_slowed[s] = False
                out_changed[s] = True
            elif not out_slowed[s] and temp >= slowdown_c:
                out_slowed[s] = True
                out_changed[s] = True
            elif out_slowed[s] and temp < slowdown_c - hysteresis_k:
                out_slowed[s] = False
                out_changed[s] = True
        elif out_slowed[s]:
            out_slowed[s] = False
            out_changed[s] = True


def zone_step(
    dt_s: float,
    p_it_w: Any,
    capacity_w: Any,
    setpoint_c: Any,
    c_air_j_per_k: Any,
    c_mass_j_per_k: Any,
    g_w_per_k: Any,
    tau_cool_s: Any,
    out_t_air_c: FloatArray,
    out_t_mass_c: FloatArray,
    out_q_cool_w: FloatArray,
    out_e_it_j: FloatArray,
    out_e_cool_j: FloatArray,
    max_substep_s: float = 1.0,
) -> None:
    """Advance the two-node zones by ``dt_s`` (s) in place (sub-steps of at most
    ``max_substep_s``). Units: W, °C, J/K, W/K, s, J as named; see the module docstring."""
    p = np.asarray(p_it_w)
    z = p.shape[0] if p.ndim == 1 else -1
    args = (
        _checks.float_array("p_it_w", p, (z,), min_value=0.0),
        _checks.float_array("capacity_w", capacity_w, (z,), min_value=0.0),
        _checks.float_array("setpoint_c", setpoint_c, (z,), min_value=-100.0),
        _checks.float_array("c_air_j_per_k", c_air_j_per_k, (z,), min_value=0.0,
                            min_exclusive=True),
        _checks.float_array("c_mass_j_per_k", c_mass_j_per_k, (z,), min_value=0.0,
                            min_exclusive=True),
        _checks.float_array("g_w_per_k", g_w_per_k, (z,), min_value=0.0),
        _checks.float_array("tau_cool_s", tau_cool_s, (z,), min_value=0.0, min_exclusive=True),
    )
    for name, arr in (("out_t_air_c", out_t_air_c), ("out_t_mass_c", out_t_mass_c),
                      ("out_q_cool_w", out_q_cool_w), ("out_e_it_j", out_e_it_j),
                      ("out_e_cool_j", out_e_cool_j)):
        _checks.out_array(name, arr, (z,), np.float64)
    dt = _checks.float_scalar("dt_s", dt_s)
    sub = _checks.float_scalar("max_substep_s", max_substep_s)
    if sub <= 0.0:
        raise _checks.KernelInputError("max_substep_s must be > 0", argument="max_substep_s")
    _zone_step(dt, sub, *args, out_t_air_c, out_t_mass_c, out_q_cool_w, out_e_it_j,
               out_e_cool_j)
    _checks.output_finite("out_t_air_c", out_t_air_c)
    _checks.output_finite("out_t_mass_c", out_t_mass_c)


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
    out_state: npt.NDArray[np.int8],
    out_gpu_temp_c: FloatArray,
    out_slowed: npt.NDArray[np.bool_],
    out_changed: npt.NDArray[np.bool_],
) -> None:
    """Advance GPU temperatures (°C) by ``dt_s`` (s); slow down or halt GPUs that cross
    ``slowdown_c`` / ``shutdown_c``; flag changed servers in ``out_changed``. See the module
    docstring for the model; units W per GPU, K, s, °C as named."""
    st = out_state
    n = st.shape[0] if isinstance(st, np.ndarray) else -1
    zt = np.asarray(zone_t_air_c)
    z = zt.shape[0] if zt.ndim == 1 else -1
    zt = _checks.float_array("zone_t_air_c", zt, (z,), min_value=-100.0)
    zone = _checks.int_array("server_zone", server_zone, (n,), np.int32, 0, z, "a zone index")
    g = _checks.float_array("gpu_w", gpu_w, (n,), min_value=0.0)
    gmax = _checks.float_array("gpu_max_w", gpu_max_w, (n,), min_value=0.0)
    for name, arr, dtype in (("out_state", out_state, np.int8),
                             ("out_gpu_temp_c", out_gpu_temp_c, np.float64),
                             ("out_slowed", out_slowed, np.bool_),
                             ("out_changed", out_changed, np.bool_)):
        _checks.out_array(name, arr, (n,), dtype)
    tau = _checks.float_scalar("tau_s", tau_s)
    if tau <= 0.0:
        raise _checks.KernelInputError("tau_s must be > 0", argument="tau_s")
    _gpu_temperature_step(
        _checks.float_scalar("dt_s", dt_s), zt, zone, g, gmax,
        _checks.float_scalar("rise_k", rise_k), tau,
        _checks.float_scalar("slowdown_c", slowdown_c, min_value=-100.0),
        _checks.float_scalar("shutdown_c", shutdown_c, min_value=-100.0),
        _checks.float_scalar("hysteresis_k", hysteresis_k),
        out_state, out_gpu_temp_c, out_slowed, out_changed,
    )
    _checks.output_finite("out_gpu_temp_c", out_gpu_temp_c)
