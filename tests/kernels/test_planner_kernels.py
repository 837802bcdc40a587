"""The planner kernels (kernels.caps, kernels.planner) against their plain-Python twins in
kernels.reference_planner, and the package's conventions for them.

The cap allocation and the staged planner must agree *exactly* with their references (a greedy
scheduler that flips one decision diverges wholesale, so exact agreement is the meaningful
test); the prediction, computed by a different algorithm in the reference, to rounding.
Random halls come from tests/planner_halls.py, driven by hypothesis through a seed.
"""

from __future__ import annotations

import ast
import inspect
import math
from pathlib import Path

import numba
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from numba.core.registry import CPUDispatcher

from controller.planner import (
    PlannerContext,
    PlannerSettings,
    PlanState,
    allocation_arguments,
    plan,
    staged_kernel_arguments,
)
from controller.prediction import prediction_arguments
from kernels import KernelInputError, caps, planner, reference_planner
from tests.planner_halls import compile_random_hall

ROOT = Path(__file__).resolve().parents[2]
MODULES = (caps, planner)
REFERENCE_OF = {
    "_allocate_caps_into": "allocate_caps",
    "_plan_staged_into": "plan_staged",
    "_predict_into": "predict_plan",
    "_envelope_into": "envelope_w",
    "_zone_suffix_add": "zone_suffix_add",
    "_zone_suffix_min": "zone_suffix_min",
}

requires_jit = pytest.mark.skipif(
    numba.config.DISABLE_JIT, reason="NUMBA_DISABLE_JIT=1: the kernels are plain Python"
)
seeds = st.integers(0, 10_000)
few = settings(deadline=None, max_examples=25)


def _dispatchers() -> dict[str, CPUDispatcher]:
    found = {}
    for module in MODULES:
        for name, obj in vars(module).items():
            if isinstance(obj, CPUDispatcher) and obj.py_func.__module__ == module.__name__:
                found[name] = obj
    return found


def _hall(seed: int) -> tuple[object, PlannerContext]:
    topo, config = compile_random_hall(seed)
    return topo, PlannerContext(topo, PlannerSettings.from_controller(config.controller))


# --------------------------------------------------------------------------- conventions
@requires_jit
def test_every_planner_kernel_is_known_and_has_a_reference():
    assert set(_dispatchers()) == set(REFERENCE_OF)
    for ref in REFERENCE_OF.values():
        assert callable(getattr(reference_planner, ref))
        assert not isinstance(getattr(reference_planner, ref), CPUDispatcher)


@requires_jit
@pytest.mark.parametrize("name", sorted(REFERENCE_OF))
def test_planner_kernel_options_signature_and_docstring(name):
    disp = _dispatchers()[name]
    assert disp.targetoptions["nogil"] is True
    assert disp.targetoptions["error_model"] == "numpy"
    assert type(disp._cache).__name__ == "FunctionCache"
    assert len(disp.signatures) == 1 and not disp._can_compile
    params = inspect.signature(disp.py_func).parameters
    for arg_name, arg in zip(params, disp.signatures[0], strict=True):
        if isinstance(arg, numba.types.Array):
            assert arg.layout == "C"
            assert arg.mutable is arg_name.startswith(("out_", "scratch_")), arg_name
    doc = disp.__doc__ or ""
    assert len(doc) > 80 and "Units" in doc, name
    for global_name in disp.py_func.__code__.co_names:  # same-module kernel calls only
        callee = disp.py_func.__globals__.get(global_name)
        if isinstance(callee, CPUDispatcher):
            assert callee.py_func.__module__ == disp.py_func.__module__


def test_reference_planner_uses_no_numba():
    tree = ast.parse((ROOT / "kernels" / "reference_planner.py").read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"__future__", "math", "typing", "numpy"}


# --------------------------------------------------------------------------- envelope
times = st.floats(-10.0, 500.0, allow_nan=False)
durations = st.floats(0.0, 100.0, allow_nan=False)
powers = st.floats(0.0, 5000.0, allow_nan=False)


@given(t=times, t_first=st.floats(0.0, 50.0), bmc=durations, p0=durations, dp=durations,
       q0=durations, dq=durations, standby=powers, post=powers, boot=powers, work=powers)
@settings(deadline=None, max_examples=200)
def test_envelope_matches_reference_and_bounds_every_realisation(
        t, t_first, bmc, p0, dp, q0, dq, standby, post, boot, work):
    t_post = t_first + bmc
    e = (t_post + p0, t_post + (p0 + dp), t_post + (p0 + q0), t_post + ((p0 + dp) + (q0 + dq)))
    args = (t, t_first, t_post, *e, standby, post, boot, work)
    hi, lo = planner.envelope_w(*args)
    assert (hi, lo) == reference_planner.envelope_w(*args)
    # every realisation of the durations draws between the two envelopes
    for fp in (0.0, 0.5, 1.0):
        for fq in (0.0, 0.5, 1.0):
            d_post, d_boot = p0 + fp * dp, q0 + fq * dq
            if t < t_first:
                p = 0.0
            elif t < t_post:
                p = standby
            elif t < t_post + d_post:
                p = post
            elif t < t_post + d_post + d_boot:
                p = boot
            else:
                p = work
            assert lo - 1e-9 <= p <= hi + 1e-9


# --------------------------------------------------------------------------- zone budgets
@given(h=st.integers(1, 60), nb=st.integers(1, 10),
       ops=st.lists(st.tuples(st.integers(0, 59), st.floats(-1e3, 1e3)), max_size=30))
@settings(deadline=None, max_examples=100)
def test_zone_suffix_structure_matches_a_plain_array(h, nb, ops):
    nb = min(nb, h)
    base = np.arange(h, dtype=np.float64) * 3.0 + 1.0
    g = base[None, :].copy()
    size = (h + nb - 1) // nb
    add = np.zeros((1, nb))
    mins = np.array([[min(g[0, b * size:(b + 1) * size], default=math.inf)
                      for b in range(nb)]])
    plain = base.copy()
    out = np.empty(1)
    rg, radd, rmin = g.tolist(), add.tolist(), mins.tolist()
    for k, c in ops:
        k = k % h
        planner._zone_suffix_add(g, add, mins, 0, k, c)
        reference_planner.zone_suffix_add(rg, radd, rmin, 0, k, c)
        plain[k:] += c
        for q in range(h):
            planner._zone_suffix_min(g, add, mins, 0, q, out)
            assert out[0] == pytest.approx(plain[q:].min(), abs=1e-6)
            assert reference_planner.zone_suffix_min(rg, radd, rmin, 0, q) == out[0]


# --------------------------------------------------------------------------- cap allocation
@given(seed=seeds)
@few
def test_allocate_caps_matches_reference_exactly(seed):
    _topo, ctx = _hall(seed)
    args = allocation_arguments(ctx, PlanState())
    cap_k, adm_k = caps.allocate_caps(**args)
    cap_r, adm_r = reference_planner.allocate_caps(**args)
    np.testing.assert_array_equal(cap_k, cap_r)
    np.testing.assert_array_equal(adm_k, adm_r)


def test_allocate_caps_refuses_bad_input():
    topo, ctx = _hall(3)
    args = allocation_arguments(ctx, PlanState())
    bad = dict(args, order=np.zeros(topo.n_servers, np.int32))
    if topo.n_servers > 1:
        with pytest.raises(KernelInputError, match="every server once"):
            caps.allocate_caps(**bad)
    with pytest.raises(KernelInputError, match="max_cap_w"):
        caps.allocate_caps(**dict(args, max_cap_w=np.asarray(args["min_cap_w"]) - 1.0))


# --------------------------------------------------------------------------- staged planner
def _staged_args(seed: int, replan: bool) -> dict[str, object]:
    topo, ctx = _hall(seed)
    state = PlanState()
    if replan:
        first = plan(topo, "staged", context=ctx)
        cut = first.makespan_s * 0.5 if math.isfinite(first.makespan_s) else 5.0
        state = PlanState(now_s=float(cut), history=first.schedule)
    cap_f, admitted = caps.allocate_caps(**allocation_arguments(ctx, state))
    return staged_kernel_arguments(ctx, state, cap_f, admitted)


@given(seed=seeds, replan=st.booleans())
@few
def test_plan_staged_matches_reference_exactly(seed, replan):
    args = _staged_args(seed, replan)
    got = planner.plan_staged(**args)
    want = reference_planner.plan_staged(**args)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


@given(seed=seeds, cut=st.floats(0.0, 0.05), hold=st.booleans())
@example(seed=6324, cut=0.0, hold=True)
@few
def test_plan_staged_matches_reference_with_servers_partly_on(seed, cut, hold):
    # re-plans early in the bring-up, some servers with only part of their PSUs on, and a zone
    # on hold: those whose POST is certain are completed, the others of the zone kept as they are
    topo, ctx = _hall(seed)
    first = plan(topo, "staged", context=ctx)
    now = cut * (first.makespan_s if math.isfinite(first.makespan_s) else 100.0)
    zone_hold = np.zeros(len(topo.zone_id), bool)
    zone_hold[0] = hold
    state = PlanState(now_s=float(now), history=first.schedule, zone_hold=zone_hold)
    cap_f, admitted = caps.allocate_caps(**allocation_arguments(ctx, state))
    args = staged_kernel_arguments(ctx, state, cap_f, admitted)
    got = planner.plan_staged(**args)
    want = reference_planner.plan_staged(**args)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_plan_staged_refuses_bad_input():
    args = _staged_args(5, False)
    with pytest.raises(KernelInputError, match="micro_s"):
        planner.plan_staged(**dict(args, micro_s=1e-5))
    with pytest.raises(KernelInputError, match="t_base_s"):
        planner.plan_staged(**dict(args, t_base_s=float(args["now_s"]) + 1.0))
    with pytest.raises(KernelInputError, match="missing"):
        planner.plan_staged(**{k: v for k, v in args.items() if k != "mode"})


# --------------------------------------------------------------------------- prediction
@given(seed=seeds, strategy=st.sampled_from(["staged", "all-at-once", "fixed-delay"]))
@few
def test_predict_matches_reference(seed, strategy):
    topo, ctx = _hall(seed)
    result = plan(topo, strategy, context=ctx)
    args = prediction_arguments(topo, result.schedule, anc=ctx.anc)
    got = planner.predict_plan(**args)
    want = reference_planner.predict_plan(**args)
    for key in ("peak_a", "peak_u", "ramp_rise_w", "zone_peak_w", "zone_deficit_w"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-9, atol=1e-6, err_msg=key)
