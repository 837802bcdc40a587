"""The decision core's fused kernels against the numpy code they replace (bit for bit) and
against their plain-Python references, on random halls."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import reference
from kernels.aggregate import (
    _feed_loss_current_into,
    _measured_load_into,
    _tree_current_into,
    _worst_case_current_into,
    _worst_case_current_update_into,
)

RTOL = 1e-10
ATOL = 1e-9
SEEDS = range(150)


def _hall(rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = int(rng.integers(1, 40))
    parent = np.array([-1] + [int(rng.integers(-1, i)) if rng.random() < 0.9 else -1
                              for i in range(1, n)], np.int32)
    s = int(rng.integers(1, 12))
    k = int(rng.integers(0, 30))
    return {
        "parent_idx": parent,
        "v_ln_v": rng.uniform(100.0, 400.0, n),
        "server_pf": rng.uniform(0.5, 1.0, s),
        "psu_server": rng.integers(0, s, k).astype(np.int32),
        "psu_node": rng.integers(0, n, k).astype(np.int32),
        "psu_phase": rng.integers(0, 7, k).astype(np.int8),
        "psu_feed": rng.integers(0, 2, k).astype(np.int8),
        "psu_alive": rng.random(k) < 0.8,
    }


def _depth(parent: np.ndarray) -> np.ndarray:
    depth = np.zeros(parent.size, np.int64)
    for i, p in enumerate(parent):
        depth[i] = 0 if p < 0 else depth[p] + 1
    return depth


def _powers(rng: np.random.Generator, s: int) -> tuple[np.ndarray, np.ndarray]:
    wn = np.where(rng.random(s) < 0.2, 0.0, rng.uniform(0.0, 20_000.0, s))
    wc = np.where(rng.random(s) < 0.5, wn, rng.uniform(0.0, 20_000.0, s))
    return wn, wc


@pytest.mark.parametrize("seed", SEEDS)
def test_worst_case_current_is_the_two_kernels_it_replaces(seed):
    rng = np.random.default_rng(seed)
    h = _hall(rng)
    n, k = h["parent_idx"].size, h["psu_server"].size
    wn, wc = _powers(rng, h["server_pf"].size)
    topo = (h["server_pf"], h["psu_server"], h["psu_node"], h["psu_phase"])
    # what the core did before: three scenarios from wc, scenario 0 again from wn
    want = np.empty((3, n, 3))
    _feed_loss_current_into(wc, *topo, h["psu_feed"], h["psu_alive"], h["parent_idx"],
                            h["v_ln_v"], np.empty((n, 3)), np.empty(k, np.bool_), want)
    _tree_current_into(wn, *topo, h["psu_alive"], h["parent_idx"], h["v_ln_v"],
                       np.empty((n, 3)), want[0])
    got = np.full((3, n, 3), np.nan)
    finite = np.zeros(1, np.bool_)
    _worst_case_current_into(wn, wc, *topo, h["psu_feed"], h["psu_alive"], h["parent_idx"],
                             h["v_ln_v"], got, finite)
    np.testing.assert_array_equal(got, want)
    assert finite[0]
    ref = reference.worst_case_current_a(wn, wc, *topo, h["psu_feed"], h["psu_alive"],
                                         h["parent_idx"], h["v_ln_v"])
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL)


def test_worst_case_current_flags_a_current_that_is_not_finite():
    parent = np.array([-1, 0], np.int32)
    args = (np.array([1e308]), np.array([1e308]), np.array([0.5]), np.zeros(2, np.int32),
            np.array([1, 1], np.int32), np.zeros(2, np.int8), np.array([0, 1], np.int8),
            np.ones(2, np.bool_), parent, np.full(2, 230.0))
    out, finite = np.empty((3, 2, 3)), np.ones(1, np.bool_)
    _worst_case_current_into(*args, out, finite)
    assert not finite[0]


def _csr(h: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    """The node → PSU, node → children and server → PSU tables of
    controller.core.CoreContext."""
    parent, psu_node, psu_server = h["parent_idx"], h["psu_node"], h["psu_server"]
    n, s = parent.size, h["server_pf"].size
    by_node = np.argsort(psu_node, kind="stable")
    psu_start = np.searchsorted(psu_node[by_node], np.arange(n + 1))
    kids = np.flatnonzero(parent >= 0)
    kids = kids[np.lexsort((-kids, parent[kids]))]
    child_start = np.searchsorted(parent[kids], np.arange(n + 1))
    by_server = np.argsort(psu_server, kind="stable")
    server_start = np.searchsorted(psu_server[by_server], np.arange(s + 1))
    return tuple(np.ascontiguousarray(a, np.int64) for a in (
        psu_start, by_node, child_start, kids, server_start, by_server))


def _above(h: dict[str, np.ndarray], servers: np.ndarray) -> np.ndarray:
    """The nodes above any PSU of ``servers``, walked up one by one."""
    seen: set[int] = set()
    for k in np.flatnonzero(np.isin(h["psu_server"], servers)):
        node = int(h["psu_node"][k])
        while node >= 0:
            seen.add(node)
            node = int(h["parent_idx"][node])
    return np.array(sorted(seen, reverse=True), np.int64)


@pytest.mark.parametrize("seed", SEEDS)
def test_worst_case_update_gives_the_bits_of_the_full_kernel(seed):
    """A sequence of ticks, each changing a few servers' powers or PSUs (sometimes none,
    sometimes all): the partial recomputation from the last result equals the full kernel
    bit for bit, and its VA the reference's."""
    rng = np.random.default_rng(seed)
    h = _hall(rng)
    n, s = h["parent_idx"].size, h["server_pf"].size
    topo = (h["server_pf"], h["psu_server"], h["psu_node"], h["psu_phase"], h["psu_feed"])
    csr = _csr(h)
    va = np.full((3, n, 3), np.nan)
    prev = older = None
    wn, wc = _powers(rng, s)
    alive = h["psu_alive"].copy()
    for step in range(6):
        if step:
            pick = rng.random(s) < rng.choice([0.0, 0.2, 1.0])
            wn, wc = wn.copy(), wc.copy()
            wn[pick], wc[pick] = _powers(rng, int(pick.sum()))
            wn[rng.random(s) < 0.1] = -0.0
            flip = rng.random(alive.size) < 0.1
            alive = np.where(flip, ~alive, alive)
        if prev is None:
            changed = np.ones(s, np.bool_)
        else:
            changed = (prev[0] != wn) | (prev[1] != wc)
            changed[h["psu_server"][prev[2] != alive]] = True
        # the output array holds an older result (two computations back) and the nodes that
        # differ from the last one are named; or a copy of the last
        if prev is None:
            got, stale, last = np.full((3, n, 3), np.nan), np.zeros(0, np.int64), va
        elif older is not None and rng.random() < 0.7:
            got, stale, last = older[0].copy(), older[1], prev[3]
        else:
            got, stale, last = prev[3].copy(), np.zeros(0, np.int64), prev[3]
        finite = np.zeros(1, np.bool_)
        marks = np.zeros(n, np.bool_)
        affected, n_affected = np.full(n, -1, np.int64), np.zeros(1, np.int64)
        servers = np.flatnonzero(changed).astype(np.int64)
        _worst_case_current_update_into(
            wn, wc, *topo, alive, h["parent_idx"], h["v_ln_v"], *csr, servers, last, stale,
            marks, affected, n_affected, va, got, finite)
        # the nodes recomputed: all (the first time, or every server changed), else exactly
        # those above a changed server, from the highest index down; the marks are clear again
        recomputed = affected[:n_affected[0]]
        if servers.size == s:
            np.testing.assert_array_equal(recomputed, np.arange(n)[::-1])
        else:
            np.testing.assert_array_equal(recomputed, _above(h, servers))
        assert not marks.any()
        want = np.empty((3, n, 3))
        want_finite = np.zeros(1, np.bool_)
        _worst_case_current_into(wn, wc, *topo, alive, h["parent_idx"], h["v_ln_v"], want,
                                 want_finite)
        np.testing.assert_array_equal(got.view(np.uint64), want.view(np.uint64))
        assert finite[0] == want_finite[0]
        ref_va, ref_a = reference.worst_case_current_va(wn, wc, *topo, alive, h["parent_idx"],
                                                        h["v_ln_v"])
        np.testing.assert_allclose(va, ref_va, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(got, ref_a, rtol=RTOL, atol=ATOL)
        # what an array holding this result misses of the next one: the nodes it recomputes
        older = None if prev is None else (prev[3], recomputed.copy())
        prev = (wn, wc, alive, got)


def _numpy_measured_load(node_i_a, trusted, metered, model_a, parent, depth, departure_a,
                         tol_x, tol_a):
    """The numpy code of controller.core before the kernel (``_background`` and the lines of
    ``decide`` around it), verbatim but for the names."""
    meas = np.where(trusted[:, None], node_i_a, np.nan)
    with np.errstate(invalid="ignore"):
        tol = tol_x * meas + tol_a
        excess = np.where(np.isfinite(meas), np.maximum(meas - model_a[0] - tol, 0.0), 0.0)
    if not excess.any():
        background = np.zeros((3, *excess.shape))
    else:
        up = np.zeros_like(excess)
        n = excess.shape[0]
        levels = [np.flatnonzero(depth == d) for d in range(int(depth.max(initial=0)), 0, -1)]
        for level in levels:
            own = np.maximum(excess[level], up[level])
            up[level] = own
            if own.any():
                for c in range(3):
                    up[:, c] += np.bincount(parent[level], weights=own[:, c], minlength=n)
        roots = parent < 0
        up[roots] = np.maximum(excess[roots], up[roots])
        background = np.stack([up, 2.0 * up, 2.0 * up])
    worst_a = model_a + background
    measured_a = np.where(np.isfinite(meas), meas, np.where(metered[:, None], worst_a[0], 0.0))
    departed = bool(np.any(background[0] > departure_a))
    return background, worst_a, measured_a, bool(excess.any()), departed


def _measured_inputs(seed: int) -> tuple[np.ndarray, ...]:
    """A random tree with meters, a model, and readings near the model: some beyond it (by
    more than the tolerance), some not; a few trusted poles without a finite reading."""
    rng = np.random.default_rng(seed)
    parent = _hall(rng)["parent_idx"]
    n = parent.size
    metered = rng.random(n) < 0.7
    trusted = metered & (rng.random(n) < 0.8)
    model_a = rng.uniform(0.0, 100.0, (3, n, 3))
    scale = rng.choice([0.5, 1.0, 1.3]) if seed % 4 else 0.9
    node_i_a = model_a[0] * scale * rng.uniform(0.8, 1.2, (n, 3))
    node_i_a[rng.random((n, 3)) < 0.05] = np.nan
    departure_a = rng.uniform(1.0, 30.0, (n, 3))
    return parent, node_i_a, trusted, metered, model_a, departure_a


@pytest.mark.parametrize("seed", SEEDS)
def test_measured_load_is_the_numpy_code_it_replaces(seed):
    parent, node_i_a, trusted, metered, model_a, departure_a = _measured_inputs(seed)
    n = parent.size
    depth = _depth(parent)
    levels = [np.flatnonzero(depth == d) for d in range(int(depth.max(initial=0)), 0, -1)]
    order = np.concatenate([np.zeros(0, np.int64), *levels]).astype(np.int64)
    start = np.concatenate([[0], np.cumsum([lv.size for lv in levels])]).astype(np.int64)
    want = _numpy_measured_load(node_i_a, trusted, metered, model_a, parent, depth,
                                departure_a, 0.02, 0.5)
    up = np.full((n, 3), np.nan)
    worst = np.full((3, n, 3), np.nan)
    measured = np.full((n, 3), np.nan)
    flags = np.zeros(2, np.bool_)
    _measured_load_into(node_i_a, trusted, metered, model_a, parent, order, start, departure_a,
                        0.02, 0.5, np.full((n, 3), np.nan), up, worst, measured, flags)
    assert bool(flags[0]) == want[3] and bool(flags[1]) == want[4]
    np.testing.assert_array_equal(measured, want[2])
    if flags[0]:
        np.testing.assert_array_equal(up, want[0][0])
        np.testing.assert_array_equal(worst, want[1])
    else:  # no background: the kernel leaves both alone; the worst case is the model
        assert np.isnan(up).all() and np.isnan(worst).all()
        np.testing.assert_array_equal(want[1], model_a)
        np.testing.assert_array_equal(want[0], 0.0)
    ref = reference.measured_load_a(node_i_a, trusted, metered, model_a, parent, departure_a,
                                    0.02, 0.5)
    assert ref[3] == want[3] and ref[4] == want[4]
    np.testing.assert_allclose(want[0][0], ref[0], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(want[1], ref[1], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(measured, ref[2], rtol=RTOL, atol=ATOL)


def test_random_inputs_cover_both_paths_of_the_measured_load():
    seen = set()
    for seed in SEEDS:
        parent, node_i_a, trusted, metered, model_a, departure_a = _measured_inputs(seed)
        ref = reference.measured_load_a(node_i_a, trusted, metered, model_a, parent,
                                        departure_a, 0.02, 0.5)
        seen.add((ref[3], ref[4]))
    assert {(False, False), (True, False), (True, True)} <= seen
