"""numba kernels over the flat arrays of a compiled hall: load aggregation, breaker state,
headroom.

Array in, array out: the kernels see only numpy arrays (parents-first node order, per-phase
arrays of shape (n, 3) for L1, L2, L3) and carry the unit in every name (``_va``, ``_a``,
``_w``, ``_s``, ``_v``). Each public function validates its inputs and raises
:class:`KernelInputError` (a ``ValueError``) naming the bad argument; each has a plain-Python
twin in :mod:`kernels.reference` that the tests compare it with. docs/kernels.md is the
reference of the maths and units.

This package imports nothing else of rampguard. Importing it compiles the kernels for their
explicit signatures, or loads them from numba's cache.
"""

from kernels._checks import KernelError, KernelInputError, KernelOutputError
from kernels.aggregate import (
    PHASE_3PH,
    PHASE_L1,
    PHASE_L1_L2,
    PHASE_L2,
    PHASE_L2_L3,
    PHASE_L3,
    PHASE_L3_L1,
    aggregate_tree,
    aggregate_tree_into,
    neutral_current_a,
    phase_current_a,
    psu_load_va,
    psu_load_va_into,
    tree_current_a,
    tree_current_a_into,
)
from kernels.breaker import (
    CAUSE_MAGNETIC,
    CAUSE_NAMES,
    CAUSE_NONE,
    CAUSE_SHORT_TIME,
    CAUSE_THERMAL,
    NO_TRIP,
    TripParams,
    breaker_step,
    electronic_params,
    mcb_params,
    time_to_trip_s,
    trip_param_arrays,
)
from kernels.headroom import (
    FEED_A,
    FEED_B,
    N_SCENARIOS,
    SCENARIO_FEED_A_LOST,
    SCENARIO_FEED_B_LOST,
    SCENARIO_NORMAL,
    feed_loss_current_a,
    feed_loss_current_a_into,
    headroom_a,
    worst_case_headroom_a,
    worst_case_utilization,
)

__all__ = [
    "CAUSE_MAGNETIC",
    "CAUSE_NAMES",
    "CAUSE_NONE",
    "CAUSE_SHORT_TIME",
    "CAUSE_THERMAL",
    "FEED_A",
    "FEED_B",
    "NO_TRIP",
    "N_SCENARIOS",
    "PHASE_3PH",
    "PHASE_L1",
    "PHASE_L1_L2",
    "PHASE_L2",
    "PHASE_L2_L3",
    "PHASE_L3",
    "PHASE_L3_L1",
    "SCENARIO_FEED_A_LOST",
    "SCENARIO_FEED_B_LOST",
    "SCENARIO_NORMAL",
    "KernelError",
    "KernelInputError",
    "KernelOutputError",
    "TripParams",
    "aggregate_tree",
    "aggregate_tree_into",
    "breaker_step",
    "electronic_params",
    "feed_loss_current_a",
    "feed_loss_current_a_into",
    "headroom_a",
    "mcb_params",
    "neutral_current_a",
    "phase_current_a",
    "psu_load_va",
    "psu_load_va_into",
    "time_to_trip_s",
    "tree_current_a",
    "tree_current_a_into",
    "trip_param_arrays",
    "worst_case_headroom_a",
    "worst_case_utilization",
]
