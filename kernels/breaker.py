"""Breaker trip model: thermal image, short-time element and magnetic element per pole.

Per pole of node i with rated current rating_a[i, p] > 0 (poles with rating 0 do not exist and
are ignored), x = I / rating is the current as a multiple of the rating and θ the heating state
(θ = 1 is steady state at rated current). PHYSICS.md §1.3:

- thermal image (IEC 60255-8): dθ/dt = (x² − θ)/τ, stepped exactly for a constant current over
  dt: θ ← x² + (θ − x²)·exp(−dt/τ); the pole trips when θ ≥ k². From θ0 at constant x it trips
  after t = τ·ln((x² − θ0)/(x² − k²)), never when x ≤ k.
- short-time element (electronic trip units): while x ≥ pickup a timer accumulates dt and the
  pole trips when the timer reaches the delay; below pickup the timer resets to 0.
- magnetic / instantaneous element: x ≥ m trips at once.

A three-pole breaker trips when any pole trips. Trip parameters are per node: ``thermal_k``
(×rating, +inf: no thermal element), ``thermal_tau_s`` (s), ``magnetic_x`` (×rating, +inf: none),
``short_pickup_x`` (×rating, +inf: none), ``short_delay_s`` (s). :func:`mcb_params` and
:func:`electronic_params` build them from breaker descriptions.

For an electronic trip unit the rating that x refers to is the long-time setting Ir: the
compiler must put Ir (not the frame rating In) in ``rating_a`` for such a node.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from kernels import _checks
from kernels._jit import F64, IN_F64_1, IN_F64_2, OUT_BOOL_1, OUT_F64_1, OUT_F64_2, OUT_I8_1, kernel

__all__ = [
    "CAUSE_MAGNETIC",
    "CAUSE_NAMES",
    "CAUSE_NONE",
    "CAUSE_SHORT_TIME",
    "CAUSE_THERMAL",
    "NO_TRIP",
    "TripParams",
    "breaker_step",
    "electronic_params",
    "mcb_params",
    "time_to_trip_s",
    "trip_param_arrays",
]

#: Trip cause codes (``out_cause``, int8). A larger code is a faster element: when several
#: elements trip on one step the largest code is recorded.
CAUSE_NONE = 0
CAUSE_THERMAL = 1
CAUSE_SHORT_TIME = 2
CAUSE_MAGNETIC = 3
#: Names of the cause codes, by code.
CAUSE_NAMES = ("none", "thermal", "short-time", "magnetic")

FloatArray = npt.NDArray[np.float64]


# --------------------------------------------------------------------------- kernels


@kernel(
    IN_F64_2, IN_F64_2, IN_F64_1, IN_F64_1, IN_F64_1, IN_F64_1, IN_F64_1, F64,
    OUT_F64_2, OUT_F64_2, OUT_BOOL_1, OUT_I8_1,
)  # fmt: skip
def _breaker_step(
    i_a,
    rating_a,
    thermal_k,
    thermal_tau_s,
    magnetic_x,
    short_pickup_x,
    short_delay_s,
    dt_s,
    out_theta,
    out_short_timer_s,
    out_tripped,
    out_cause,
):
    """Advance every breaker by dt_s at the constant currents i_a, in place.

    Per present pole (rating > 0), x = I/rating:
        θ ← x² + (θ − x²)·exp(−dt/τ)                  thermal trip when θ ≥ k²
        timer ← timer + dt if x ≥ pickup else 0         short-time trip when timer ≥ delay
        magnetic trip when x ≥ m
    Absent poles keep θ = 0 and timer = 0. A node trips when any pole trips; the cause is the
    fastest element that tripped on this step (magnetic 3 > short-time 2 > thermal 1). A node
    already tripped stays tripped with its first cause; θ and timers keep following i_a.

    Units: i_a, rating_a (n, 3) A; thermal_k, magnetic_x, short_pickup_x (n,) ×rating;
    thermal_tau_s, short_delay_s (n,) s; dt_s s; out_theta (n, 3) (×rating)²;
    out_short_timer_s (n, 3) s; out_tripped (n,) bool; out_cause (n,) int8 code.
    """
    n = i_a.shape[0]
    # exp(−dt/τ) is the costly part; neighbouring nodes mostly share τ (all outlets, all banks),
    # so it is computed again only when τ changes: the same value, far fewer calls.
    last_tau = -1.0
    decay = 1.0
    for i in range(n):
        k2 = thermal_k[i] * thermal_k[i]
        tau = thermal_tau_s[i]
        if tau != last_tau:
            decay = math.exp(-dt_s / tau)
            last_tau = tau
        pickup = short_pickup_x[i]
        delay = short_delay_s[i]
        m = magnetic_x[i]
        cause = CAUSE_NONE
        for p in range(3):
            rating = rating_a[i, p]
            if rating <= 0.0:
                out_theta[i, p] = 0.0
                out_short_timer_s[i, p] = 0.0
                continue
            x = i_a[i, p] / rating
            x2 = x * x
            theta = x2 + (out_theta[i, p] - x2) * decay
            out_theta[i, p] = theta
            if theta >= k2 and cause < CAUSE_THERMAL:
                cause = CAUSE_THERMAL
            if x >= pickup:
                timer = out_short_timer_s[i, p] + dt_s
                if timer >= delay and cause < CAUSE_SHORT_TIME:
                    cause = CAUSE_SHORT_TIME
            else:
                timer = 0.0
            out_short_timer_s[i, p] = timer
            if x >= m:
                cause = CAUSE_MAGNETIC
        if cause != CAUSE_NONE and not out_tripped[i]:
            out_tripped[i] = True
            out_cause[i] = cause


@kernel(
    IN_F64_2, IN_F64_2, IN_F64_1, IN_F64_1, IN_F64_1, IN_F64_1, IN_F64_1, IN_F64_2, IN_F64_2,
    OUT_F64_1,
)  # fmt: skip
def _time_to_trip_s(
    i_a,
    rating_a,
    thermal_k,
    thermal_tau_s,
    magnetic_x,
    short_pickup_x,
    short_delay_s,
    theta,
    short_timer_s,
    out_t_s,
):
    """Earliest trip time at constant present currents, per node (s; +inf: never).

    Minimum over present poles (rating > 0, x = I/rating) and elements of
        magnetic:   0                                  if x ≥ m
        short-time: max(delay − timer, 0)              if x ≥ pickup
        thermal:    0 if θ ≥ k²; τ·ln((x² − θ)/(x² − k²)) if x > k; else never
    Units: i_a, rating_a (n, 3) A; thermal_k, magnetic_x, short_pickup_x (n,) ×rating;
    thermal_tau_s, short_delay_s (n,) s; theta (n, 3) (×rating)²; short_timer_s (n, 3) s;
    out_t_s (n,) s.
    """
    n = i_a.shape[0]
    for i in range(n):
        k = thermal_k[i]
        k2 = k * k
        tau = thermal_tau_s[i]
        best = np.inf
        for p in range(3):
            rating = rating_a[i, p]
            if rating <= 0.0:
                continue
            x = i_a[i, p] / rating
            if x >= magnetic_x[i]:
                best = 0.0
                break
            if x >= short_pickup_x[i]:
                t = short_delay_s[i] - short_timer_s[i, p]
                if t < 0.0:
                    t = 0.0
                if t < best:
                    best = t
            th = theta[i, p]
            if th >= k2:
                best = 0.0
                break
            if x > k:
                x2 = x * x
                t = tau * math.log((x2 - th) / (x2 - k2))
                if t < best:
                    best = t
        out_t_s[i] = best


# --------------------------------------------------------------------------- validation


class _Params(NamedTuple):
    thermal_k: FloatArray
    thermal_tau_s: FloatArray
    magnetic_x: FloatArray
    short_pickup_x: FloatArray
    short_delay_s: FloatArray


def _trip_inputs(
    n: int,
    thermal_k: Any,
    thermal_tau_s: Any,
    magnetic_x: Any,
    short_pickup_x: Any,
    short_delay_s: Any,
) -> _Params:
    k = _checks.float_array(
        "thermal_k", thermal_k, (n,), allow_inf=True, min_value=0.0, min_exclusive=True
    )
    tau = _checks.float_array(
        "thermal_tau_s", thermal_tau_s, (n,), allow_inf=True, min_value=0.0, min_exclusive=True
    )
    bad = np.isfinite(k) & ~np.isfinite(tau)
    if bad.any():
        i = int(np.argmax(bad))
        raise _checks.KernelInputError(
            f"thermal_tau_s[{i}] is infinite but thermal_k[{i}] = {k[i]!r} is finite: "
            f"a thermal element needs a finite time constant",
            argument="thermal_tau_s",
            index=(i,),
        )
    m = _checks.float_array(
        "magnetic_x", magnetic_x, (n,), allow_inf=True, min_value=0.0, min_exclusive=True
    )
    pickup = _checks.float_array(
        "short_pickup_x", short_pickup_x, (n,), allow_inf=True, min_value=0.0, min_exclusive=True
    )
    delay = _checks.float_array("short_delay_s", short_delay_s, (n,), min_value=0.0)
    return _Params(k, tau, m, pickup, delay)


def _node_count(i_a: Any) -> int:
    arr = np.asarray(i_a)
    if arr.ndim != 2:
        raise _checks.KernelInputError(
            f"i_a must have shape (n, 3), got {arr.shape}", argument="i_a"
        )
    return int(arr.shape[0])


# --------------------------------------------------------------------------- public API


def breaker_step(
    i_a: Any,
    rating_a: Any,
    thermal_k: Any,
    thermal_tau_s: Any,
    magnetic_x: Any,
    short_pickup_x: Any,
    short_delay_s: Any,
    dt_s: float,
    out_theta: FloatArray,
    out_short_timer_s: FloatArray,
    out_tripped: npt.NDArray[np.bool_],
    out_cause: npt.NDArray[np.int8],
) -> None:
    """Advance every breaker's state by ``dt_s`` seconds at the constant currents ``i_a``.

    Per present pole (rating > 0), with x = I/rating:

    - thermal: θ ← x² + (θ − x²)·exp(−dt/τ); trips when θ ≥ k²;
    - short-time: while x ≥ pickup the timer grows by dt and trips when it reaches the delay;
      otherwise it resets to 0;
    - magnetic: trips when x ≥ m.

    A node trips when any of its poles trips. ``out_tripped`` latches: a tripped node stays
    tripped and keeps its first ``out_cause`` (CAUSE_MAGNETIC > CAUSE_SHORT_TIME >
    CAUSE_THERMAL when several elements trip on the same step). θ and timers keep following the
    current given, so the caller passes 0 A for an open breaker and θ cools.

    Units: i_a (n, 3) A, >= 0; rating_a (n, 3) A (0: no such pole); thermal_k, magnetic_x,
    short_pickup_x (n,) ×rating, > 0, +inf for none; thermal_tau_s (n,) s, > 0; short_delay_s
    (n,) s, >= 0; dt_s s, >= 0. Written in place: out_theta (n, 3) float64 (×rating)²;
    out_short_timer_s (n, 3) float64 s; out_tripped (n,) bool; out_cause (n,) int8.
    """
    n = _node_count(i_a)
    cur = _checks.float_array("i_a", i_a, (n, 3), min_value=0.0)
    rating = _checks.float_array("rating_a", rating_a, (n, 3), min_value=0.0)
    params = _trip_inputs(n, thermal_k, thermal_tau_s, magnetic_x, short_pickup_x, short_delay_s)
    dt = _checks.float_scalar("dt_s", dt_s)
    _checks.out_array("out_theta", out_theta, (n, 3), np.float64)
    _checks.out_array("out_short_timer_s", out_short_timer_s, (n, 3), np.float64)
    _checks.out_array("out_tripped", out_tripped, (n,), np.bool_)
    _checks.out_array("out_cause", out_cause, (n,), np.int8)
    _checks.finite_state("out_theta", out_theta)
    _checks.finite_state("out_short_timer_s", out_short_timer_s)
    if out_cause.size and (
        int(out_cause.min()) < CAUSE_NONE or int(out_cause.max()) > CAUSE_MAGNETIC
    ):
        raise _checks.KernelInputError(
            f"out_cause holds codes outside {CAUSE_NONE}..{CAUSE_MAGNETIC}", argument="out_cause"
        )
    _breaker_step(cur, rating, *params, dt, out_theta, out_short_timer_s, out_tripped, out_cause)
    _checks.output_finite("out_theta", out_theta)
    _checks.output_finite("out_short_timer_s", out_short_timer_s)


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
    """Earliest trip time of every node if the present currents stay constant, shape (n,) s.

    Minimum over present poles and elements of: 0 when x ≥ m; the remaining short-time delay
    max(delay − timer, 0) when x ≥ pickup; for the thermal element 0 when θ ≥ k² already, else
    τ·ln((x² − θ)/(x² − k²)) when x > k. +inf when nothing would ever trip. The latch is not
    consulted: for a node already tripped the answer is that of the breaker reclosed with the
    same θ. Units as in :func:`breaker_step`; theta (n, 3) (×rating)², short_timer_s (n, 3) s.
    """
    n = _node_count(i_a)
    cur = _checks.float_array("i_a", i_a, (n, 3), min_value=0.0)
    rating = _checks.float_array("rating_a", rating_a, (n, 3), min_value=0.0)
    params = _trip_inputs(n, thermal_k, thermal_tau_s, magnetic_x, short_pickup_x, short_delay_s)
    th = _checks.float_array("theta", theta, (n, 3), min_value=0.0)
    timer = _checks.float_array("short_timer_s", short_timer_s, (n, 3), min_value=0.0)
    out_t_s = np.empty(n, dtype=np.float64)
    _time_to_trip_s(cur, rating, *params, th, timer, out_t_s)
    _checks.output_not_nan("t_s", out_t_s)
    return out_t_s


# --------------------------------------------------------------------------- parameters


class TripParams(NamedTuple):
    """Trip parameters of one breaker (floats) or of every node (arrays of shape (n,)).

    thermal_k ×rating (+inf: no thermal element); thermal_tau_s s; magnetic_x ×rating (+inf:
    none); short_pickup_x ×rating (+inf: none); short_delay_s s.
    """

    thermal_k: Any
    thermal_tau_s: Any
    magnetic_x: Any
    short_pickup_x: Any
    short_delay_s: Any


#: Parameters of a node that has no breaker (a source, a bus, an outlet): it never trips and
#: its θ stays 0.
NO_TRIP = TripParams(math.inf, math.inf, math.inf, math.inf, 0.0)

#: Magnetic band of IEC 60898-1 curves, ×In: (conservative end, band middle, upper end).
_MCB_MAGNETIC = {"B": (3.0, 4.0, 5.0), "C": (5.0, 7.5, 10.0), "D": (10.0, 15.0, 20.0)}


def mcb_params(curve: str, in_a: float, magnetic: str = "middle") -> TripParams:
    """Trip parameters of an IEC 60898-1 miniature breaker (PHYSICS.md §1.3).

    Thermal image k = 1.30, τ = 60 s for In <= 32 A and 120 s above; magnetic trip at the band
    middle (B 4, C 7.5, D 15 ×In) with ``magnetic="middle"``, or at the conservative lower end
    (B 3, C 5, D 10 ×In) with ``magnetic="conservative"``. No short-time element. ``rating_a``
    of the node must be In.
    """
    if not isinstance(curve, str) or curve.upper() not in _MCB_MAGNETIC:
        raise ValueError(f"curve must be 'B', 'C' or 'D', got {curve!r}")
    if isinstance(in_a, bool) or not isinstance(in_a, int | float) or not math.isfinite(in_a):
        raise ValueError(f"in_a must be a finite number of amperes, got {in_a!r}")
    if not 0.0 < in_a <= 125.0:
        raise ValueError(
            f"in_a = {in_a!r} A is outside IEC 60898-1 (0 < In <= 125 A): "
            f"describe larger breakers with electronic_params"
        )
    low, middle, _ = _MCB_MAGNETIC[curve.upper()]
    if magnetic == "middle":
        m = middle
    elif magnetic == "conservative":
        m = low
    else:
        raise ValueError(f"magnetic must be 'middle' or 'conservative', got {magnetic!r}")
    tau_s = 60.0 if in_a <= 32.0 else 120.0
    return TripParams(1.30, tau_s, m, math.inf, 0.0)


def electronic_params(
    tr_s: float,
    tolerance: str = "earliest",
    isd_x: float = math.inf,
    tsd_s: float = 0.0,
    ii_x: float = math.inf,
) -> TripParams:
    """Trip parameters of an electronic (LSI) trip unit (PHYSICS.md §1.2, §1.3).

    Long-time band ``tr_s`` (s, labelled at 6·Ir): earliest tolerance k = 1.05, τ = 25.72·tr;
    latest k = 1.20, τ = 24.50·tr (Schneider MicroLogic). Short-time pickup ``isd_x`` ×Ir with
    delay ``tsd_s`` s (+inf: no short-time element); instantaneous ``ii_x`` ×Ir (+inf: none).
    All multiples are of Ir, the long-time setting, which must be the node's ``rating_a``: an
    instantaneous setting given as a multiple of the frame rating In converts as ii × In / Ir.
    The controller should use ``tolerance="earliest"`` (it trips first).
    """
    for name, value, lo in (("tr_s", tr_s, 0.0), ("isd_x", isd_x, 1.0), ("ii_x", ii_x, 1.0)):
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise ValueError(f"{name} must be a number, got {value!r}")
        if not value > lo:
            raise ValueError(f"{name} = {value!r} must be > {lo}")
    if not math.isfinite(tr_s):
        raise ValueError(f"tr_s must be finite, got {tr_s!r}")
    if isinstance(tsd_s, bool) or not isinstance(tsd_s, int | float) or not math.isfinite(tsd_s):
        raise ValueError(f"tsd_s must be a finite number of seconds, got {tsd_s!r}")
    if tsd_s < 0.0:
        raise ValueError(f"tsd_s = {tsd_s!r} must be >= 0")
    if tolerance == "earliest":
        k, tau_s = 1.05, 25.72 * tr_s
    elif tolerance == "latest":
        k, tau_s = 1.20, 24.50 * tr_s
    else:
        raise ValueError(f"tolerance must be 'earliest' or 'latest', got {tolerance!r}")
    return TripParams(k, tau_s, float(ii_x), float(isd_x), float(tsd_s))


def trip_param_arrays(params: Sequence[TripParams]) -> TripParams:
    """Stack per-node :class:`TripParams` into one TripParams of float64 arrays, shape (n,)."""
    n = len(params)
    fields = [np.empty(n, dtype=np.float64) for _ in TripParams._fields]
    for i, p in enumerate(params):
        for f, value in zip(fields, p, strict=True):
            f[i] = value
    return TripParams(*fields)
