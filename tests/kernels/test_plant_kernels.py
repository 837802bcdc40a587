"""The plant kernels (kernels.plant, kernels.thermal) against their plain-Python references,
and the package's conventions for them."""

from __future__ import annotations

import inspect
import math

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba.core.registry import CPUDispatcher

import kernels
from kernels import plant, reference, thermal

PLANT_KERNELS = {
    "_advance_servers": "advance_servers",
    "_alive_changed": "alive_changed",
    "_server_power": "server_power",
    "_commit_loads": "commit_loads",
    "_refresh_nodes": "refresh_nodes",
    "_energize": "energize",
    "_inrush_x": "inrush_x",
    "_utilization_by_kind": "utilization_by_kind",
    "_meter_sample": "meter_sample",
    "_zone_step": "zone_step",
    "_gpu_temperature_step": "gpu_temperature_step",
}
requires_jit = pytest.mark.skipif(numba.config.DISABLE_JIT, reason="plain Python under coverage")
fast = settings(deadline=None, max_examples=60)


def dispatchers() -> dict[str, CPUDispatcher]:
    found = {}
    for module in (plant, thermal):
        for name, obj in vars(module).items():
            if isinstance(obj, CPUDispatcher) and obj.py_func.__module__ == module.__name__:
                found[name] = obj
    return found


@requires_jit
def test_every_plant_kernel_has_a_reference_and_fixed_signature() -> None:
    found = dispatchers()
    assert set(found) == set(PLANT_KERNELS)
    for name, disp in found.items():
        assert callable(getattr(reference, PLANT_KERNELS[name]))
        assert disp.targetoptions["nogil"] is True and disp.targetoptions["error_model"] == "numpy"
        assert len(disp.signatures) == 1 and not disp._can_compile
        params = inspect.signature(disp.py_func).parameters
        for arg_name, arg in zip(params, disp.signatures[0], strict=True):
            if isinstance(arg, numba.types.Array):
                assert arg.layout == "C"
                assert arg.mutable is arg_name.startswith(("out_", "scratch_")), (name, arg_name)
        doc = disp.__doc__ or ""
        assert "Units" in doc and len(doc) > 80, name
        for global_name in disp.py_func.__code__.co_names:
            callee = disp.py_func.__globals__.get(global_name)
            if isinstance(callee, CPUDispatcher):
                assert callee.py_func.__module__ == disp.py_func.__module__


def test_public_plant_functions_are_exported_and_documented() -> None:
    for name in [*plant.__all__, *thermal.__all__]:
        assert name in kernels.__all__
        obj = getattr(kernels, name)
        if callable(obj):
            assert obj.__doc__ and len(obj.__doc__) > 40


# ------------------------------------------------------------------ random small plants
@st.composite
def plants(draw: st.DrawFn) -> dict[str, np.ndarray]:
    n = draw(st.integers(1, 12))
    parent = [-1] + [draw(st.integers(-1, i - 1)) for i in range(1, n)]
    s = draw(st.integers(1, 5))
    k = draw(st.integers(1, 12))
    psu_server = np.sort(np.array([draw(st.integers(0, s - 1)) for _ in range(k)], np.int32))
    floats = st.floats(0.0, 5000.0)
    d = {
        "parent": np.array(parent, np.int32),
        "v_ln": np.array([draw(st.floats(100.0, 400.0)) for _ in range(n)]),
        "rating": np.array([[draw(st.sampled_from([0.0, 16.0, 32.0])) for _ in range(3)]
                            for _ in range(n)]),
        "psu_server": psu_server,
        "psu_node": np.array([draw(st.integers(0, n - 1)) for _ in range(k)], np.int32),
        "psu_phase": np.array([draw(st.integers(0, 6)) for _ in range(k)], np.int8),
        "alive_old": np.array([draw(st.booleans()) for _ in range(k)]),
        "alive_new": np.array([draw(st.booleans()) for _ in range(k)]),
        "p_old": np.array([draw(floats) for _ in range(s)]),
        "p_new": np.array([draw(floats) for _ in range(s)]),
        "pf": np.array([draw(st.floats(0.6, 1.0)) for _ in range(s)]),
        "servers": np.array(sorted(set(draw(st.lists(st.integers(0, s - 1), min_size=1,
                                                     max_size=s)))), np.int32),
    }
    d["limit"] = 0.8 * d["rating"]
    d["zone"] = np.zeros(s, np.int32)
    d["psu_order"] = np.arange(k, dtype=np.int32)
    d["psu_start"] = np.searchsorted(psu_server, np.arange(s + 1)).astype(np.int32)
    d["tau"] = np.full(n, 60.0)
    d["pickup"] = np.full(n, math.inf)
    return d


def _loads(d: dict[str, np.ndarray], alive: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, ...]:
    n = d["parent"].shape[0]
    va = kernels.psu_load_va(p, d["pf"], d["psu_server"], d["psu_node"], d["psu_phase"], alive, n)
    pw = kernels.psu_load_va(p, np.ones_like(d["pf"]), d["psu_server"], d["psu_node"],
                             d["psu_phase"], alive, n)
    return kernels.aggregate_tree(d["parent"], va), kernels.aggregate_tree(d["parent"], pw)


@fast
@given(plants(), st.floats(0.0, 100.0))
def test_commit_loads_matches_the_reference_and_a_full_recomputation(
        d: dict[str, np.ndarray], t_s: float) -> None:
    n = d["parent"].shape[0]
    va, pw = _loads(d, d["alive_old"], d["p_old"])
    state = {
        "server_p_applied_w": d["p_old"].copy(), "psu_alive_applied": d["alive_old"].copy(),
        "node_va": va, "node_pw": pw, "theta": np.full((n, 3), 0.3) * (d["rating"] > 0),
        "short_timer_s": np.zeros((n, 3)), "t_state_s": np.zeros(n),
        "energy_j": np.zeros(n), "zone_p_w": np.zeros(1),
    }
    ref = reference.commit_loads(t_s, d["servers"], d["p_new"], d["pf"], d["zone"],
                                 d["psu_start"], d["psu_order"], d["alive_new"], d["psu_node"],
                                 d["psu_phase"], d["parent"], d["v_ln"], d["rating"], d["tau"],
                                 d["pickup"], **{k: v.copy() for k, v in state.items()})
    touched = np.zeros(n, np.int32)
    n_touched = np.zeros(1, np.int64)
    mark = np.zeros(n, np.bool_)
    kernels.commit_loads(t_s, d["servers"], d["p_new"], d["pf"], d["zone"], d["psu_start"],
                         d["psu_order"], d["alive_new"], d["psu_node"], d["psu_phase"],
                         d["parent"], d["v_ln"], d["rating"], d["tau"], d["pickup"],
                         state["server_p_applied_w"], state["psu_alive_applied"],
                         state["node_va"], state["node_pw"], state["theta"],
                         state["short_timer_s"], state["t_state_s"], state["energy_j"],
                         state["zone_p_w"], mark, touched, n_touched)
    for key, value in state.items():
        np.testing.assert_allclose(value, ref[key], rtol=1e-9, atol=1e-7, err_msg=key)
    assert set(touched[: int(n_touched[0])].tolist()) == ref["touched"]
    # and the result is what a full recomputation of the new state gives
    p_full = np.where(np.isin(np.arange(d["p_old"].size), d["servers"]), d["p_new"], d["p_old"])
    listed_psu = np.isin(d["psu_server"], d["servers"])
    alive_full = np.where(listed_psu, d["alive_new"], d["alive_old"])
    va_full, pw_full = _loads(d, alive_full, p_full)
    np.testing.assert_allclose(state["node_va"], va_full, rtol=1e-9, atol=1e-7)
    np.testing.assert_allclose(state["node_pw"], pw_full, rtol=1e-9, atol=1e-7)


@fast
@given(plants(), st.floats(0.0, 50.0))
def test_refresh_nodes_matches_the_reference(d: dict[str, np.ndarray], t_s: float) -> None:
    n = d["parent"].shape[0]
    va, _ = _loads(d, d["alive_new"], d["p_new"] * 3)
    params = kernels.trip_param_arrays([kernels.mcb_params("C", 16.0)] * n)
    theta = np.full((n, 3), 0.5) * (d["rating"] > 0)
    timer = np.zeros((n, 3))
    live = d["rating"].max(axis=1) > 0
    nodes = np.arange(n, dtype=np.int32)
    since = np.where(np.arange(n) % 2 == 0, np.inf, 1.0)
    arrays = {"t_trip_s": np.full(n, np.inf), "peak_utilization": np.zeros(n),
              "over_since_s": since.copy(), "over_peak_x": np.ones(n)}
    ref = reference.refresh_nodes(t_s, nodes, va, d["v_ln"], d["rating"], d["limit"], *params,
                                  theta, timer, live, **{k: v.copy() for k, v in arrays.items()})
    ev = [np.zeros(n, np.int32), np.zeros(n, np.int8), np.zeros(n), np.zeros(n)]
    n_ev = np.zeros(1, np.int64)
    trip_min = np.array([np.inf, -1.0])
    kernels.refresh_nodes(t_s, nodes, va, d["v_ln"], d["rating"], d["limit"], *params, theta,
                          timer, live, arrays["t_trip_s"], arrays["peak_utilization"],
                          arrays["over_since_s"], arrays["over_peak_x"], np.zeros(n, np.bool_),
                          *ev, n_ev, trip_min)
    for key, value in arrays.items():
        np.testing.assert_allclose(value, ref[key], rtol=1e-9, err_msg=key)
    events = [(int(ev[0][j]), int(ev[1][j]), float(ev[2][j]), float(ev[3][j]))
              for j in range(int(n_ev[0]))]
    assert len(events) == len(ref["events"])
    for got, want in zip(events, ref["events"], strict=True):
        assert got[:2] == want[:2] and got[2:] == pytest.approx(want[2:])
    assert trip_min[0] == pytest.approx(ref["trip_min"][0], rel=1e-12)


@fast
@given(plants(), st.floats(0.0, 500.0))
def test_server_state_kernels_match_the_reference(d: dict[str, np.ndarray], t_s: float) -> None:
    s = d["p_old"].shape[0]
    rng = np.random.default_rng(int(t_s * 1000))
    state = rng.integers(0, plant.N_SERVER_STATES, s).astype(np.int8)
    next_s = np.where(rng.random(s) < 0.5, rng.uniform(0, 400, s), np.inf)
    alive_count = np.bincount(d["psu_server"][d["alive_old"]], minlength=s).astype(np.int32)
    to_boot = rng.integers(1, 3, s).astype(np.int32)
    bmc, post, boot = rng.uniform(1, 30, s), rng.uniform(1, 100, s), rng.uniform(1, 100, s)
    work = rng.random(s) < 0.5
    ref = reference.advance_servers(t_s, alive_count, to_boot, bmc, post, boot, work, state,
                                    next_s)
    st_k, nx_k, dirty = state.copy(), next_s.copy(), np.zeros(s, np.bool_)
    nmin = kernels.advance_servers(t_s, alive_count, to_boot, bmc, post, boot, work, st_k, nx_k,
                                   dirty)
    assert st_k.tolist() == ref[0].tolist() and nx_k.tolist() == ref[1].tolist()
    assert dirty.tolist() == ref[2].tolist() and nmin == ref[3]
    flipped = np.flatnonzero(d["alive_old"] != d["alive_new"]).astype(np.int32)
    ref2 = reference.alive_changed(t_s, flipped, d["alive_new"], d["psu_server"], to_boot, bmc,
                                   post, alive_count, state, next_s)
    cnt, st2, nx2, dirty2 = alive_count.copy(), state.copy(), next_s.copy(), np.zeros(s, bool)
    nmin2 = kernels.alive_changed(t_s, flipped, d["alive_new"], d["psu_server"], to_boot, bmc,
                                  post, cnt, st2, nx2, dirty2)
    assert cnt.tolist() == ref2[0].tolist() and st2.tolist() == ref2[1].tolist()
    assert nx2.tolist() == ref2[2].tolist() and dirty2.tolist() == ref2[3].tolist()
    assert nmin2 == ref2[4]
    # power from state
    cnt = np.maximum(cnt, 0)
    args = (d["servers"], st2, cnt, rng.uniform(0, 900, s), rng.random(s) < 0.3,
            rng.random(s) < 0.3, rng.uniform(1, 1.5, s), np.full(s, 200.0), np.full(s, 4000.0),
            np.full(s, 2500.0), np.full(s, 1800.0), np.full(s, 8, np.int32), np.full(s, 75.0),
            np.full(s, 200.0), np.full(s, 700.0), np.full(s, 4600.0),
            np.full(s, 4, np.int32), np.full(s, 3300.0), 0.6)
    out = [np.zeros(s), np.zeros(s), np.zeros(s, np.bool_)]
    ref3 = reference.server_power(*args, *[o.copy() for o in out])
    kernels.server_power(*args, *out)
    for got, want in zip(out, ref3, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12)


@fast
@given(plants())
def test_energize_inrush_and_utilization_match_the_reference(d: dict[str, np.ndarray]) -> None:
    n = d["parent"].shape[0]
    closed = d["rating"].sum(axis=1) != 16.0
    np.testing.assert_array_equal(kernels.energize(d["parent"], closed),
                                  reference.energize(d["parent"], closed))
    va, _ = _loads(d, d["alive_new"], d["p_new"])
    inrush = np.full(d["psu_node"].shape[0], 65.0 / math.sqrt(2))
    psus = np.flatnonzero(d["alive_new"]).astype(np.int32)
    rating = np.where(d["rating"] > 0, d["rating"], 0.0)
    nodes, xs = kernels.inrush_x(psus, inrush, d["psu_node"], d["psu_phase"], d["parent"],
                                 d["v_ln"], va, rating)
    ref_nodes, ref_xs = reference.inrush_x(psus, inrush, d["psu_node"], d["psu_phase"],
                                           d["parent"], d["v_ln"], va, rating)
    order = np.argsort(nodes)
    assert nodes[order].tolist() == ref_nodes.tolist()
    np.testing.assert_allclose(xs[order], ref_xs, rtol=1e-12)
    kind = (np.arange(n) % 3).astype(np.int8)
    np.testing.assert_allclose(
        kernels.utilization_by_kind(va, d["v_ln"], d["limit"], kind, 4),
        reference.utilization_by_kind(va, d["v_ln"], d["limit"], kind, 4), rtol=1e-12)


@fast
@given(plants(), st.integers(0, 2**64 - 1), st.floats(0.0, 0.1))
def test_meter_sample_matches_the_reference(d: dict[str, np.ndarray], seed: int,
                                            noise: float) -> None:
    n = d["parent"].shape[0]
    va, pw = _loads(d, d["alive_new"], d["p_new"])
    meters = np.arange(n, dtype=np.int32)
    energized = d["rating"].sum(axis=1) > 0
    energy = np.linspace(0, 1e6, n)
    t_state = np.zeros(n)
    lie = np.where(np.arange(n) % 3 == 0, 0.5, 1.0)
    out = [np.zeros((n, 3)), np.zeros((n, 3)), np.zeros((n, 3)), np.zeros(n), np.zeros(n)]
    state = np.array([seed], np.uint64)
    args = (10.0, meters, meters, va, pw, d["v_ln"], energized, energy, t_state, lie, noise,
            noise / 2, 0.01, 0.1, 1.0, 1.0)
    ref = reference.meter_sample(*args, seed, *[o.copy() for o in out])
    kernels.meter_sample(*args, state, *out)
    for got, key in zip(out, ("i_a", "v_v", "p_w", "e_wh", "t_sample_s"), strict=True):
        np.testing.assert_allclose(got, ref[key], rtol=1e-12, atol=1e-9, err_msg=key)
    assert int(state[0]) == ref["rng_state"]


def test_meter_noise_has_the_configured_spread() -> None:
    n = 20_000
    parent = np.full(n, -1, np.int32)
    va = np.full((n, 3), 1000.0)
    out = [np.zeros((n, 3)), np.zeros((n, 3)), np.zeros((n, 3)), np.zeros(n), np.zeros(n)]
    kernels.meter_sample(0.0, np.arange(n, dtype=np.int32), np.arange(n, dtype=np.int32), va,
                         va, np.full(n, 230.0), np.ones(n, bool), np.zeros(n), np.zeros(n),
                         np.ones(n), 0.01, 0.0, 0.0, 0.0, 0.0, 0.0,
                         np.array([1], np.uint64), *out)
    rel = out[2] / 1000.0 - 1.0
    assert abs(rel.mean()) < 2e-4 and rel.std() == pytest.approx(0.01, rel=0.03)
    del parent


@fast
@given(st.floats(0.01, 30.0), st.lists(st.floats(0.0, 3e6), min_size=1, max_size=4),
       st.floats(0.0, 1.0))
def test_thermal_kernels_match_the_reference(dt: float, p: list[float], frac: float) -> None:
    z = len(p)
    p_w = np.array(p)
    cap = frac * 2e6 * np.ones(z)
    args = (dt, p_w, cap, np.full(z, 22.0), np.full(z, 4.8e6), np.full(z, 8e6),
            np.full(z, 8e6 / 240), np.full(z, 120.0))
    start = [np.full(z, 25.0), np.full(z, 23.0), p_w * 0.9, np.zeros(z), np.zeros(z)]
    ref = reference.zone_step(*args, *[a.copy() for a in start])
    kernels.zone_step(*args, *start)
    for got, want in zip(start, ref, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-9)
    # energy balance of the discrete scheme
    stored = 4.8e6 * (start[0] - 25.0) + 8e6 * (start[1] - 23.0)
    np.testing.assert_allclose(stored, start[3] - start[4], rtol=1e-9, atol=1e-3)
    s = 6
    st0 = np.array([6, 6, 6, 5, 6, 7], np.int8)
    temps = np.array([50.0, 88.9, 91.9, 95.0, 86.0, 70.0])
    slowed = np.array([False, False, True, False, True, False])
    gargs = (dt, np.array([40.0]), np.zeros(s, np.int32), np.full(s, 700.0),
             np.full(s, 700.0), 45.0, 30.0, 89.0, 92.0, 2.0)
    ref2 = reference.gpu_temperature_step(*gargs, st0.copy(), temps.copy(), slowed.copy())
    changed = np.zeros(s, bool)
    kernels.gpu_temperature_step(*gargs, st0, temps, slowed, changed)
    assert st0.tolist() == ref2[0].tolist() and slowed.tolist() == ref2[2].tolist()
    assert changed.tolist() == ref2[3].tolist()
    np.testing.assert_allclose(temps, ref2[1], rtol=1e-12)


def test_wrappers_refuse_bad_inputs() -> None:
    with pytest.raises(kernels.KernelInputError, match="closed"):
        kernels.energize(np.array([-1, 0], np.int32), np.array([1, 0]))
    with pytest.raises(kernels.KernelInputError, match="out_state"):
        kernels.advance_servers(0.0, np.zeros(2), np.ones(2), np.ones(2), np.ones(2),
                                np.ones(2), np.ones(2, bool), np.zeros(2, np.int64),
                                np.zeros(2), np.zeros(2, bool))
    with pytest.raises(kernels.KernelInputError, match="psus lists a PSU twice"):
        kernels.alive_changed(0.0, np.array([0, 0]), np.ones(1, bool), np.zeros(1, np.int32),
                              np.ones(1), np.ones(1), np.ones(1), np.zeros(1, np.int32),
                              np.zeros(1, np.int8), np.zeros(1), np.zeros(1, bool))
    with pytest.raises(kernels.KernelInputError, match="p_it_w"):
        kernels.zone_step(1.0, np.array([np.nan]), np.ones(1), np.ones(1), np.ones(1),
                          np.ones(1), np.ones(1), np.ones(1), np.zeros(1), np.zeros(1),
                          np.zeros(1), np.zeros(1), np.zeros(1))
