"""The per-tick kernels of the core and the telemetry store (kernels.tick) against the numpy code
they replace (bit for bit) and against their plain-Python references, on random inputs with the
awkward values: NaN, ±inf, 0.0 and -0.0, ties."""

from __future__ import annotations

import math

import numpy as np
import pytest

from controller.telemetry import Quality
from kernels import reference, tick

SEEDS = range(20)


def _bits_equal(a: np.ndarray, b: np.ndarray) -> None:
    """Same dtype, shape and bits (0.0 and -0.0 differ; NaN equals NaN of the same bits)."""
    assert a.dtype == b.dtype and a.shape == b.shape
    if a.dtype == np.float64:
        np.testing.assert_array_equal(a.view(np.uint64), b.view(np.uint64))
    else:
        np.testing.assert_array_equal(a, b)


def _awkward(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    x = rng.uniform(0.0, scale, shape)
    pick = rng.random(shape)
    x[pick < 0.05] = 0.0
    x[(pick >= 0.05) & (pick < 0.10)] = -0.0
    x[(pick >= 0.10) & (pick < 0.13)] = np.nan
    x[(pick >= 0.13) & (pick < 0.15)] = np.inf
    # ties between poles
    tie = rng.random(shape[0]) < 0.1
    x[tie, 1] = x[tie, 0]
    return x


# ------------------------------------------------------------------------ node utilization
def _numpy_utilization(measured_a, limit_a, over_since_s, now_s, over_x, capping_x):
    """controller.core._shed before the kernel, verbatim but for the names."""
    ratio = measured_a / limit_a
    util = np.maximum(np.maximum(ratio[:, 0], ratio[:, 1]), ratio[:, 2])
    over = util > capping_x
    over_since = np.where(util > over_x, np.minimum(over_since_s, now_s), np.inf)
    return util, over_since, int(over.sum())


@pytest.mark.parametrize("seed", SEEDS)
def test_node_utilization_is_the_numpy_code_it_replaces(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 300))
    limit = rng.uniform(10.0, 100.0, (n, 3))
    limit[rng.random((n, 3)) < 0.2] = np.inf
    measured = _awkward(rng, (n, 3), 120.0)
    since = np.where(rng.random(n) < 0.5, np.inf, rng.uniform(0.0, 50.0, n))
    since[rng.random(n) < 0.05] = np.nan
    now, over_x, cap_x = 40.0, 1.0 + 1e-9, float(rng.choice([0.9, 0.95, 1.0]))
    with np.errstate(all="ignore"):
        want = _numpy_utilization(measured, limit, since, now, over_x, cap_x)
    util, over_since, count = np.full(n, 7.0), np.full(n, 7.0), np.full(1, -1, np.int64)
    every = np.arange(n, dtype=np.int64)
    tick._node_utilization_into(every, measured, limit, since, now, over_x, cap_x, util,
                                over_since, count)
    _bits_equal(util, want[0])
    _bits_equal(over_since, want[1])
    assert int(count[0]) == want[2]
    ref = reference.node_utilization(every, measured, limit, since, now, over_x, cap_x)
    np.testing.assert_array_equal(ref[0], util)
    np.testing.assert_array_equal(ref[1], over_since)
    assert ref[2] == want[2]


@pytest.mark.parametrize("seed", SEEDS)
def test_node_utilization_of_the_metered_nodes_is_that_of_all_when_the_rest_carry_nothing(seed):
    """The core lists its metered nodes; elsewhere the measured load is 0: the result over all
    nodes is the same bits as over every node."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    limit = rng.uniform(10.0, 100.0, (n, 3))
    limit[rng.random((n, 3)) < 0.2] = np.inf
    metered = np.flatnonzero(rng.random(n) < 0.3).astype(np.int64)
    measured = np.zeros((n, 3))
    measured[metered] = _awkward(rng, (metered.size, 3), 120.0)
    since = np.where(rng.random(n) < 0.5, np.inf, rng.uniform(0.0, 50.0, n))
    with np.errstate(all="ignore"):
        want = _numpy_utilization(measured, limit, since, 40.0, 1.0 + 1e-9, 0.95)
    util, over_since, count = np.zeros(n), np.full(n, np.inf), np.zeros(1, np.int64)
    tick._node_utilization_into(metered, measured, limit, since, 40.0, 1.0 + 1e-9, 0.95, util,
                                over_since, count)
    _bits_equal(util, want[0])
    _bits_equal(over_since, want[1])
    assert int(count[0]) == want[2]
    ref = reference.node_utilization(metered, measured, limit, since, 40.0, 1.0 + 1e-9, 0.95)
    np.testing.assert_array_equal(ref[0], util)
    np.testing.assert_array_equal(ref[1], over_since)


@pytest.mark.parametrize("seed", SEEDS)
def test_measured_at_the_meters_is_the_full_kernel_without_background(seed):
    from kernels.aggregate import _measured_load_into

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 80))
    parent = np.array([-1] + [int(rng.integers(-1, i)) for i in range(1, n)], np.int32)
    metered = rng.random(n) < 0.6
    quality = np.where(metered & (rng.random(n) < 0.2), np.int8(2), np.int8(0))
    model = rng.uniform(0.0, 100.0, (3, n, 3))
    cur = model[0] * rng.choice([0.8, 1.0, 1.2]) * rng.uniform(0.9, 1.1, (n, 3))
    cur[rng.random((n, 3)) < 0.05] = np.nan
    cur[~metered] = np.nan
    nodes = np.flatnonzero(metered).astype(np.int64)
    got, excess = np.zeros((n, 3)), np.zeros(1, np.bool_)
    tick._measured_at_into(nodes, cur, quality, model, 0.02, 0.5, got, excess)
    trusted = metered & (quality == 0)
    depth = np.zeros(n, np.int64)
    for i in range(n):
        depth[i] = 0 if parent[i] < 0 else depth[parent[i]] + 1
    levels = [np.flatnonzero(depth == d) for d in range(int(depth.max()), 0, -1)]
    order = np.concatenate([np.zeros(0, np.int64), *levels]).astype(np.int64)
    start = np.concatenate([[0], np.cumsum([lv.size for lv in levels])]).astype(np.int64)
    want = np.full((n, 3), np.nan)
    flags = np.zeros(2, np.bool_)
    _measured_load_into(cur, trusted, metered, model, parent, order, start,
                        np.full((n, 3), 5.0), 0.02, 0.5, np.empty((n, 3)), np.empty((n, 3)),
                        np.empty((3, n, 3)), want, flags)
    assert bool(excess[0]) == bool(flags[0])
    if not flags[0]:
        _bits_equal(got, want)
    ref = reference.measured_at(nodes, cur, quality, model, 0.02, 0.5)
    assert ref[1] == bool(excess[0])
    np.testing.assert_array_equal(ref[0], got)


# ------------------------------------------------------------------------ node quality
def _numpy_quality(metered, node_t_s, rejected_now, parent, child_count, sum_check, node_i_a,
                   rating_a, now, stale_s, tol_x, tol_a):
    """controller.telemetry.TelemetryStore.refresh before the kernel (the node part),
    verbatim but for the names; returns the qualities and the nodes found inconsistent."""
    n = metered.size
    q = np.full(n, Quality.GOOD, dtype=np.int8)
    never = metered & ~np.isfinite(node_t_s)
    stale = metered & np.isfinite(node_t_s) & (now - node_t_s > stale_s)
    q[stale] = Quality.STALE
    q[never] = Quality.MISSING
    rejected = metered & (rejected_now != Quality.GOOD)
    q[rejected] = rejected_now[rejected]
    fresh = metered & (q == Quality.GOOD)
    child_fresh = np.bincount(parent[(parent >= 0) & fresh], minlength=n)
    check = sum_check & fresh & (child_fresh == child_count)
    bad = np.zeros(n, bool)
    if check.any():
        kids = np.flatnonzero((parent >= 0) & fresh)
        rows = np.flatnonzero(check)
        sums = np.stack([np.bincount(parent[kids], weights=node_i_a[kids, c],
                                     minlength=n)[rows] for c in range(3)], axis=1)
        rating = rating_a[rows]
        tol = (tol_x * np.maximum(np.maximum(rating[:, 0], rating[:, 1]), rating[:, 2])
               + tol_a)
        d = np.abs(sums - np.nan_to_num(node_i_a[rows]))
        bad[rows] = np.maximum(np.maximum(d[:, 0], d[:, 1]), d[:, 2]) > tol
        q[bad] = Quality.INCONSISTENT
    return q, bad


def _quality_inputs(seed: int):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 80))
    parent = np.array([-1] + [int(rng.integers(-1, i)) for i in range(1, n)], np.int32)
    metered = rng.random(n) < float(rng.choice([0.6, 0.95, 1.0]))
    child_count = np.bincount(parent[parent >= 0], minlength=n).astype(np.int64)
    metered_children = np.bincount(parent[(parent >= 0) & metered], minlength=n)
    sum_check = metered & (child_count > 0) & (metered_children == child_count)
    t = rng.uniform(0.0, 10.0, n)
    t[rng.random(n) < 0.1] = -np.inf
    rejected = np.where(rng.random(n) < 0.08, np.int8(Quality.IMPLAUSIBLE), np.int8(0))
    rating = rng.choice([0.0, 16.0, 32.0, 63.0], (n, 3))
    # readings near the children's sums, some far off, a few not finite
    cur = rng.uniform(0.0, 20.0, (n, 3))
    for i in range(n - 1, 0, -1):
        if parent[i] >= 0:
            cur[parent[i]] += cur[i] * (1.0 if rng.random() < 0.8 else 1.5)
    cur[rng.random((n, 3)) < 0.03] = np.nan
    cur[rng.random((n, 3)) < 0.01] = np.inf
    return (metered, t, rejected, parent, child_count, sum_check, cur, rating, 10.0, 5.0,
            0.05, 1.0)


@pytest.mark.parametrize("seed", SEEDS)
def test_node_quality_is_the_numpy_code_it_replaces(seed):
    args = _quality_inputs(seed)
    n = args[0].size
    with np.errstate(all="ignore"):
        want_q, want_bad = _numpy_quality(*args)
    q, bad = np.zeros(n, np.int8), np.zeros(n, np.bool_)
    metered, t, rejected, parent, _count, sum_check, cur, rating = args[:8]
    kids = np.flatnonzero(parent >= 0)
    kids = kids[np.argsort(parent[kids], kind="stable")].astype(np.int64)
    start = np.searchsorted(parent[kids], np.arange(n + 1)).astype(np.int64)
    with np.errstate(all="ignore"):
        tick._node_quality_into(np.flatnonzero(metered).astype(np.int64), t, rejected,
                                np.flatnonzero(sum_check).astype(np.int64), start, kids, cur,
                                rating, *args[8:], q, bad)
    _bits_equal(q, want_q)
    _bits_equal(bad, want_bad)
    ref_q, ref_bad = reference.node_quality(*args)
    _bits_equal(ref_q, want_q)
    _bits_equal(ref_bad, want_bad)


def test_random_quality_inputs_cover_every_quality():
    seen = set()
    for seed in SEEDS:
        with np.errstate(all="ignore"):
            seen |= set(_numpy_quality(*_quality_inputs(seed))[0].tolist())
    assert seen == {int(q) for q in Quality}


def test_quality_codes_are_the_stores():
    assert (tick.QUALITY_GOOD, tick.QUALITY_MISSING, tick.QUALITY_STALE,
            tick.QUALITY_IMPLAUSIBLE, tick.QUALITY_INCONSISTENT) == (
        Quality.GOOD, Quality.MISSING, Quality.STALE, Quality.IMPLAUSIBLE,
        Quality.INCONSISTENT)


# ------------------------------------------------------------------------ reading screening
_REASON_CODE = {"not_finite": 1, "negative": 2, "current_on_absent_pole": 3,
                "out_of_range": 4, "future_timestamp": 5}


def _numpy_screen(node, v, t, rating_a, rating_max_a, jump_fraction, now, future_tol,
                  range_x, absent_a, node_i_a, node_t_s, pending_i_a, rejected_now):
    """TelemetryStore.ingest_nodes before the kernel (from the bound readings on), verbatim but
    for the names; the rejections become codes and the store's arrays are updated in place."""
    rating = rating_a[node]
    reason = np.full(node.size, "", dtype=object)
    checks = (
        ("future_timestamp", ~np.isfinite(t) | (t > now + future_tol)),
        ("out_of_range", ((rating > 0) & (v > range_x * rating)).any(axis=1)),
        ("current_on_absent_pole", ((rating == 0) & (v > absent_a)).any(axis=1)),
        ("negative", (v < 0).any(axis=1)),
        ("not_finite", ~np.isfinite(v).all(axis=1)),
    )
    for name, bad in checks:
        reason[bad] = name
    implausible = reason != ""
    code = np.zeros(node.size, np.int8)
    for j in np.flatnonzero(implausible):
        code[j] = _REASON_CODE[reason[j]]
    older = ~implausible & (t < node_t_s[node])
    code[older] = 6
    go = ~implausible & ~older
    prev = node_i_a[node]
    jump_a = jump_fraction * rating_max_a[node]
    with np.errstate(invalid="ignore"):
        jumped = go & np.isfinite(prev).all(axis=1) & (np.abs(v - prev).max(axis=1) > jump_a)
    glitch = jumped
    if jumped.any():
        jn = np.flatnonzero(jumped)
        pending = pending_i_a[node[jn]]
        with np.errstate(invalid="ignore"):
            confirmed = np.isfinite(pending).all(axis=1) & (
                np.abs(v[jn] - pending).max(axis=1) <= jump_a[jn] * 0.5)
        glitch = jumped.copy()
        glitch[jn[confirmed]] = False
    for j in np.flatnonzero(glitch):
        pending_i_a[node[j]] = v[j]
        code[j] = 7
    take = go & ~glitch
    tn = node[take]
    pending_i_a[tn] = math.nan
    node_i_a[tn] = v[take]
    node_t_s[tn] = t[take]
    rejected_now[tn] = Quality.GOOD
    return code


def _screen_inputs(seed: int):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    rating = rng.choice([0.0, 16.0, 32.0], (n, 3))
    rating[:, 0] = np.where(rating.max(axis=1) == 0, 16.0, rating[:, 0])
    node_i_a = np.where(rating > 0, rng.uniform(0.0, 20.0, (n, 3)), 0.0)
    node_i_a[rng.random(n) < 0.2] = np.nan          # never read
    node_t_s = np.where(np.isfinite(node_i_a[:, 0]), rng.uniform(0.0, 5.0, n), -np.inf)
    pending = np.full((n, 3), np.nan)
    pend = rng.random(n) < 0.3
    pending[pend] = node_i_a[pend] + rng.choice([0.5, 30.0])
    rejected = np.where(rng.random(n) < 0.1, np.int8(3), np.int8(0))
    m = int(rng.integers(0, n + 1))
    node = rng.permutation(n)[:m].astype(np.int64)
    base = np.nan_to_num(node_i_a[node])
    step = rng.choice([0.0, 1.0, 10.0, 25.0, 40.0], (m, 1))
    v = np.where(rating[node] > 0, base + step * rng.uniform(0.5, 1.5, (m, 3)), 0.0)
    confirm = pend[node] & (rng.random(m) < 0.5)
    v[confirm] = np.where(rating[node[confirm]] > 0, pending[node[confirm]], 0.0)
    pick = rng.random((m, 3))
    v[pick < 0.02] = np.nan
    v[(pick >= 0.02) & (pick < 0.04)] = -1.0
    v[(pick >= 0.04) & (pick < 0.05)] = -0.0
    v[(pick >= 0.05) & (pick < 0.07)] = 1e4                  # out of range (or absent pole)
    v[(pick >= 0.07) & (pick < 0.08)] = np.inf
    t = rng.uniform(4.0, 8.0, m)
    t[rng.random(m) < 0.03] = np.nan
    t[rng.random(m) < 0.03] = 100.0                          # from the future
    rmax = rating.max(axis=1)
    return node, v, t, rating, rmax, node_i_a, node_t_s, pending, rejected


@pytest.mark.parametrize("seed", SEEDS)
def test_screen_readings_is_the_numpy_code_it_replaces(seed):
    node, v, t, rating, rmax, cur, t_node, pending, rejected = _screen_inputs(seed)
    now, future_tol, range_x, absent_a, jump = 6.0, 1.0, 20.0, 1.0, 0.5
    want = [cur.copy(), t_node.copy(), pending.copy(), rejected.copy()]
    with np.errstate(all="ignore"):
        want_code = _numpy_screen(node, v, t, rating, rmax, jump, now, future_tol, range_x,
                                  absent_a, *want)
    got = [cur.copy(), t_node.copy(), pending.copy(), rejected.copy()]
    code = np.full(node.size, 99, np.int8)
    tick._screen_readings_into(node, v, t, rating, rmax, jump, now + future_tol, range_x,
                               absent_a, 0.5, *got, code)
    _bits_equal(code, want_code)
    for g, w in zip(got, want, strict=True):
        _bits_equal(g, w)
    ref = reference.screen_readings(node, v, t, rating, rmax, jump, now + future_tol, range_x,
                                    absent_a, 0.5, cur, t_node, pending, rejected)
    _bits_equal(ref[4], want_code)
    for r, w in zip(ref[:4], want, strict=True):
        np.testing.assert_array_equal(r, w)


def test_random_readings_cover_every_code():
    seen = set()
    for seed in SEEDS:
        node, v, t, rating, rmax, cur, t_node, pending, rejected = _screen_inputs(seed)
        with np.errstate(all="ignore"):
            seen |= set(_numpy_screen(node, v, t, rating, rmax, 0.5, 6.0, 1.0, 20.0, 1.0, cur,
                                      t_node, pending, rejected).tolist())
    assert seen == set(range(8))


# ------------------------------------------------------------------------ step budgets
def _servers(rng: np.random.Generator, s: int) -> tuple[np.ndarray, ...]:
    """GPUs per server, per-GPU cap range (W), non-GPU and largest power (W) of ``s`` servers,
    some at their largest power before the top of their cap range."""
    gpus = rng.choice([0, 4, 8], s).astype(np.float64)
    lo = rng.uniform(100.0, 200.0, s)
    hi = lo + rng.uniform(0.0, 500.0, s)
    other = rng.uniform(200.0, 2000.0, s)
    top = other + gpus * hi * rng.choice([0.8, 1.0, 1.2], s)
    return gpus, lo, hi, other, top


def _numpy_step_budget(servers, old_cap_w, new_cap_w, draw_w, lo, hi, other, gpus, top,
                       slot_of, server_of, drop_budget, rise_budget):
    """controller.core._limit_cap_change before the kernel (with CoreContext.work_w), up to
    the fraction per node, verbatim but for the names."""
    def work_w(cap_w):
        cap = np.clip(cap_w, lo[servers], hi[servers])
        return np.minimum(other[servers] + gpus[servers] * cap, top[servers])

    n_servers = lo.size
    new_w = work_w(new_cap_w)
    old_w = work_w(old_cap_w)
    drop_w = np.maximum(np.minimum(draw_w, old_w) - new_w, 0.0)
    rise_w = np.maximum(new_w - old_w, 0.0)
    per_server_drop = np.zeros(n_servers)
    per_server_rise = np.zeros(n_servers)
    per_server_drop[servers] = drop_w
    per_server_rise[servers] = rise_w
    n_slots = drop_budget.size
    drop_node = np.bincount(slot_of, weights=per_server_drop[server_of], minlength=n_slots)
    rise_node = np.bincount(slot_of, weights=per_server_rise[server_of], minlength=n_slots)
    f_node = np.minimum(np.where(drop_node > 0, drop_budget / drop_node, 1.0),
                        np.where(rise_node > 0, rise_budget / rise_node, 1.0))
    f_node = np.clip(f_node, 0.0, 1.0)
    return f_node, not bool((f_node >= 1.0).all())


@pytest.mark.parametrize("seed", SEEDS)
def test_step_budget_is_the_numpy_code_it_replaces(seed):
    rng = np.random.default_rng(seed)
    s = int(rng.integers(1, 40))
    b = int(rng.integers(1, 6))
    gpus, lo, hi, other, top = _servers(rng, s)
    servers = np.sort(rng.permutation(s)[:int(rng.integers(0, s + 1))]).astype(np.int64)
    m = servers.size
    old = rng.uniform(50.0, 800.0, m)
    new = np.where(rng.random(m) < 0.3, old, rng.uniform(50.0, 800.0, m))
    new[rng.random(m) < 0.05] = np.nan
    draw = rng.uniform(0.0, 8000.0, m)
    pairs = int(rng.integers(0, 3 * s))
    slot_of = rng.integers(0, b, pairs).astype(np.int64)
    server_of = rng.integers(0, s, pairs).astype(np.int64)
    scale = float(rng.choice([10.0, 1e3, 1e5]))
    drop_budget = np.where(rng.random(b) < 0.3, np.inf, rng.uniform(0.0, scale, b))
    rise_budget = np.where(rng.random(b) < 0.3, np.inf, rng.uniform(0.0, scale, b))
    args = (servers, old, new, draw, lo, hi, other, gpus, top, slot_of, server_of,
            drop_budget, rise_budget)
    with np.errstate(all="ignore"):
        want, want_limited = _numpy_step_budget(*args)
    got, limited = np.full(b, 7.0), np.zeros(1, np.bool_)
    tick._step_budget_into(*args, np.full(s, 7.0), np.full(s, 7.0), got, limited)
    _bits_equal(got, want)
    assert bool(limited[0]) == want_limited
    with np.errstate(all="ignore"):
        ref, ref_limited = reference.step_budget(*args)
    np.testing.assert_allclose(ref, got, rtol=1e-12, atol=0.0)
    assert ref_limited == want_limited


# ------------------------------------------------------------------------ worst server power
def _numpy_worst_server_w(t_first, e4, confirmed_cap, cap_cmd_w, now_s, floor_w, lo, hi, other,
                          gpus, top):
    """controller.core._worst_server_w before the kernel (with CoreContext.work_w), from the
    server times on, verbatim but for the names."""
    def work_w(cap_w):
        cap = np.clip(cap_w, lo, hi)
        return np.minimum(other + gpus * cap, top)

    energized = np.isfinite(t_first)
    full = top.astype(float)
    conf = np.isfinite(confirmed_cap)
    capped = np.maximum(work_w(np.where(conf, confirmed_cap, 0.0)), floor_w)
    booting = now_s < e4
    w = np.where(booting, floor_w, np.where(conf, capped, full))
    cmd = np.isfinite(cap_cmd_w)
    commanded = np.maximum(work_w(np.where(cmd, cap_cmd_w, 0.0)), floor_w)
    wc = np.where(booting | conf, w, np.where(cmd, np.minimum(commanded, full), full))
    return np.where(energized, w, 0.0), np.where(energized, wc, 0.0)


@pytest.mark.parametrize("seed", SEEDS)
def test_worst_server_power_is_the_numpy_code_it_replaces(seed):
    rng = np.random.default_rng(seed)
    s = int(rng.integers(1, 60))
    gpus, lo, hi, other, top = _servers(rng, s)
    floor = rng.uniform(100.0, 3000.0, s)
    t_first = np.where(rng.random(s) < 0.2, np.inf, rng.uniform(0.0, 10.0, s))
    e4 = np.where(rng.random(s) < 0.1, np.inf, t_first + rng.uniform(0.0, 20.0, s))
    conf = np.where(rng.random(s) < 0.5, np.nan, rng.uniform(50.0, 800.0, s))
    cmd = np.where(rng.random(s) < 0.3, np.nan, rng.uniform(50.0, 800.0, s))
    tie = rng.random(s) < 0.2   # confirmed at the command
    conf[tie] = cmd[tie]
    now = 15.0
    args = (t_first, e4, conf, cmd, now, floor, lo, hi, other, gpus, top)
    want = _numpy_worst_server_w(*args)
    got = (np.full(s, 7.0), np.full(s, 7.0))
    tick._worst_server_power_into(*args, *got)
    _bits_equal(got[0], want[0])
    _bits_equal(got[1], want[1])
    ref = reference.worst_server_power(*args)
    np.testing.assert_array_equal(ref[0], got[0])
    np.testing.assert_array_equal(ref[1], got[1])


# ------------------------------------------------------------------------ PSU on-state
def _numpy_psu_on(psu_outlet, outlet_known, outlet_on, psu_on_s, psu_commanded, now_s,
                  grace_s):
    """Step 1 of controller.core.decide before the kernel, verbatim but for the names."""
    n_psus = psu_on_s.size
    psu_on = psu_on_s.copy()
    known = psu_outlet >= 0
    known[known] = outlet_known[psu_outlet[known]]
    seen_on = np.zeros(n_psus, bool)
    seen_on[known] = outlet_on[psu_outlet[known]]
    in_grace = psu_commanded & np.isfinite(psu_on_s) & (now_s - psu_on_s < grace_s)
    psu_on[known & seen_on & np.isposinf(psu_on) & ~psu_commanded] = -np.inf
    psu_on[known & seen_on & (psu_on > now_s)] = now_s
    psu_on[known & ~seen_on & (psu_on <= now_s) & ~in_grace] = np.inf
    return psu_on, psu_on <= now_s


@pytest.mark.parametrize("seed", SEEDS)
def test_psu_on_is_the_numpy_code_it_replaces(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(0, 200))
    n_outlets = int(rng.integers(1, 60))
    outlet = rng.integers(-1, n_outlets, k).astype(np.int64)
    known = rng.random(n_outlets) < 0.8
    on = rng.random(n_outlets) < 0.6
    now = 50.0
    t = rng.uniform(0.0, 100.0, k)
    pick = rng.random(k)
    t[pick < 0.25] = np.inf
    t[(pick >= 0.25) & (pick < 0.35)] = -np.inf
    t[(pick >= 0.35) & (pick < 0.40)] = now               # at now: powered
    t[(pick >= 0.40) & (pick < 0.45)] = now - 3.0         # at the grace's edge
    commanded = rng.random(k) < 0.5
    grace = 3.0
    want = _numpy_psu_on(outlet, known, on, t, commanded, now, grace)
    got_t, got_p = np.full(k, 7.0), np.zeros(k, np.bool_)
    tick._psu_on_into(outlet, known, on, t, commanded, now, grace, got_t, got_p)
    _bits_equal(got_t, want[0])
    _bits_equal(got_p, want[1])
    ref = reference.psu_on(outlet, known, on, t, commanded, now, grace)
    np.testing.assert_array_equal(ref[0], got_t)
    np.testing.assert_array_equal(ref[1], got_p)


def test_psu_on_cases_by_hand():
    """One PSU per case: outlet read on (never commanded and unknown; commanded, not yet
    on; on since 10 s), read off (commanded 1 s ago: grace; 5 s ago: off; off already), not
    read back, and not switchable."""
    outlet = np.array([0, 0, 0, 1, 1, 1, 2, -1], np.int64)
    known = np.array([True, True, False])
    on = np.array([True, False, True])
    t = np.array([np.inf, np.inf, 10.0, 19.0, 15.0, np.inf, np.inf, 12.0])
    commanded = np.array([False, True, True, True, True, False, True, True])
    got_t, got_p = np.empty(8), np.empty(8, np.bool_)
    tick._psu_on_into(outlet, known, on, t, commanded, 20.0, 3.0, got_t, got_p)
    np.testing.assert_array_equal(
        got_t, [-np.inf, 20.0, 10.0, 19.0, np.inf, np.inf, np.inf, 12.0])
    np.testing.assert_array_equal(got_p, [True, True, True, True, False, False, False, True])


# ------------------------------------------------------------------------ untrusted since
def _numpy_unknown_since(unknown, metered, node_quality, unknown_since_s, now_s, stale_s,
                         safe_s):
    """Step 2 of controller.core.decide before the kernel, verbatim but for the names."""
    metered_unknown = metered & (node_quality != Quality.GOOD)
    since = np.where(unknown, np.minimum(unknown_since_s, now_s), np.inf)
    overdue = metered_unknown & ((node_quality != Quality.MISSING)
                                 | (now_s - since >= stale_s))
    lost_long = metered_unknown & (now_s - since >= safe_s)
    return since, metered_unknown, overdue, lost_long


@pytest.mark.parametrize("seed", SEEDS)
def test_unknown_since_is_the_numpy_code_it_replaces(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 300))
    metered = rng.random(n) < 0.4
    quality = rng.integers(0, 5, n).astype(np.int8)
    quality[rng.random(n) < 0.4] = Quality.GOOD
    unknown = (metered & (quality != Quality.GOOD)) | (rng.random(n) < 0.1)
    now, stale, safe = 100.0, 5.0, 30.0
    since = rng.choice([np.inf, now, now - stale, now - safe, 20.0, 99.5, 150.0], n)
    since[rng.random(n) < 0.03] = np.nan
    want = _numpy_unknown_since(unknown, metered, quality, since, now, stale, safe)
    got = (np.full(n, 7.0), *(np.zeros(n, np.bool_) for _ in range(3)))
    tick._unknown_since_into(unknown, metered, quality, since, now, stale, safe, *got)
    for g, w in zip(got, want, strict=True):
        _bits_equal(g, w)
    ref = reference.unknown_since(unknown, metered, quality, since, now, stale, safe)
    for r, g in zip(ref, got, strict=True):
        np.testing.assert_array_equal(r, g)


# ------------------------------------------------------------------------ ramp guard inputs
def _numpy_guard_servers(shed_cap_w, cap_plan_w, server_power_w, server_quality, server_w,
                         guard_seen_w, lo, hi, other, gpus_raw, top):
    """controller.core._ramp_guard's per-server part before the kernel, verbatim but for the
    names (``work_w`` inlined); ``guard_seen_w`` None: no pass before."""
    gpus = np.maximum(gpus_raw, 1).astype(float)
    plan_cap = np.where(np.isfinite(shed_cap_w), np.minimum(shed_cap_w, cap_plan_w),
                        cap_plan_w)
    plan_cap = np.clip(plan_cap, lo, hi)
    draw = server_power_w / gpus
    known = (server_quality == Quality.GOOD) & np.isfinite(draw) & (server_w > 0)
    base = np.clip(np.where(known, draw, plan_cap), lo, plan_cap)
    servers = np.flatnonzero(known)
    power_w = server_power_w[servers]
    cap = np.clip(base[servers], lo[servers], hi[servers])
    work = np.minimum(other[servers] + gpus_raw[servers] * cap, top[servers])
    fixed = np.maximum(work - power_w, 0.0)
    if guard_seen_w is not None:
        seen = guard_seen_w[servers]
        fixed += np.where(np.isfinite(seen), np.maximum(power_w - seen, 0.0), 0.0)
    fixed_all = np.zeros(server_power_w.size)
    fixed_all[servers] = fixed
    return plan_cap, base, known, fixed_all, np.where(known, server_power_w, np.nan)


@pytest.mark.parametrize("seed", SEEDS)
def test_guard_servers_is_the_numpy_code_it_replaces(seed):
    rng = np.random.default_rng(seed)
    s = int(rng.integers(1, 80))
    gpus, lo, hi, other, top = _servers(rng, s)
    plan = rng.uniform(50.0, 800.0, s)
    at_top = rng.random(s) < 0.1
    plan[at_top] = hi[at_top]
    shed = np.where(rng.random(s) < 0.5, np.nan, rng.uniform(50.0, 800.0, s))
    tie = rng.random(s) < 0.1
    shed[tie] = plan[tie]
    power = rng.uniform(0.0, 10_000.0, s)
    power[rng.random(s) < 0.1] = 0.0
    power[rng.random(s) < 0.05] = np.nan
    base_tie = rng.random(s) < 0.1   # drawing exactly its minimum cap per GPU
    power[base_tie] = lo[base_tie] * np.maximum(gpus[base_tie], 1)
    quality = np.where(rng.random(s) < 0.8, Quality.GOOD, Quality.STALE).astype(np.int8)
    worst = np.where(rng.random(s) < 0.15, 0.0, rng.uniform(100.0, 12_000.0, s))
    for seen in (None, np.where(rng.random(s) < 0.3, np.nan, power + rng.normal(0, 500, s))):
        want = _numpy_guard_servers(shed, plan, power, quality, worst, seen, lo, hi, other,
                                    gpus, top)
        seen_in = np.full(s, np.nan) if seen is None else seen
        got = (np.full(s, 7.0), np.full(s, 7.0), np.zeros(s, np.bool_), np.full(s, 7.0),
               np.full(s, 7.0))
        tick._guard_servers_into(shed, plan, power, quality, worst, seen_in, lo, hi, other,
                                 gpus, top, *got)
        for g, w in zip(got, want, strict=True):
            _bits_equal(g, w)
        ref = reference.guard_servers(shed, plan, power, quality, worst, seen_in, lo, hi,
                                      other, gpus, top)
        for r, g in zip(ref, got, strict=True):
            np.testing.assert_array_equal(r, g)


# ------------------------------------------------------------------------ agent screening
def _numpy_ingest_servers(idx, p, c, t, now_plus_tol, range_x, has_agent, gpu_max_w,
                          server_gpus, power_w, cap_w, time_s):
    """TelemetryStore.ingest_servers before the kernel (``_server_bounds`` and
    ``_take_servers`` inlined), verbatim but for the names; returns the store's arrays and
    the accepted mask."""
    power_w, cap_w, time_s = power_w.copy(), cap_w.copy(), time_s.copy()
    inside = (idx >= 0) & (idx < has_agent.size)
    bound = inside.copy()
    bound[inside] = has_agent[idx[inside]]
    gmax = np.ones(idx.size)
    gmax[inside] = np.maximum(gpu_max_w[idx[inside]], 1.0)
    with np.errstate(invalid="ignore"):
        good = bound & np.isfinite(p) & np.isfinite(c) & (p >= 0) & (c >= 0) & (
            p <= range_x * gmax) & (t <= now_plus_tol)
    gpus = server_gpus[idx[good]]
    s = idx[good]
    power_w[s] = p[good] * gpus
    cap_w[s] = np.where(gpus > 0, c[good], 0.0)
    time_s[s] = np.maximum(time_s[s], t)
    return power_w, cap_w, time_s, good, bound


@pytest.mark.parametrize("seed", SEEDS)
def test_screen_servers_is_the_numpy_code_it_replaces(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 50))
    has_agent = rng.random(n) < 0.8
    server_gpus = rng.choice([0, 4, 8], n).astype(np.int64)
    gpu_max = rng.choice([0.0, 0.5, 400.0, 700.0], n)
    m = int(rng.integers(0, n + 1))
    idx = rng.permutation(np.arange(-2, n + 3))[:m].astype(np.int64)   # distinct, some outside
    p = rng.uniform(-50.0, 1500.0, m)
    p[rng.random(m) < 0.1] = np.nan
    p[rng.random(m) < 0.05] = np.inf
    c = rng.uniform(-10.0, 800.0, m)
    c[rng.random(m) < 0.1] = np.nan
    power, cap = np.full(n, np.nan), np.full(n, np.nan)
    times = np.where(rng.random(n) < 0.5, -np.inf, rng.uniform(0.0, 20.0, n))
    t = float(rng.choice([10.0, 30.0]))
    limit, range_x = 25.0, 1.5
    want = _numpy_ingest_servers(idx, p, c, t, limit, range_x, has_agent, gpu_max, server_gpus,
                                 power, cap, times)
    got = (power.copy(), cap.copy(), times.copy())
    code = np.full(m, 9, np.int8)
    tick._screen_servers_into(idx, p, c, t, limit, range_x, has_agent, gpu_max,
                              server_gpus.astype(np.float64), *got, code)
    for g, w in zip(got, want[:3], strict=True):
        _bits_equal(g, w)
    np.testing.assert_array_equal(code == tick.SERVER_TAKEN, want[3])
    np.testing.assert_array_equal(code == tick.SERVER_UNBOUND, ~want[4])
    ref = reference.screen_servers(idx, p, c, t, limit, range_x, has_agent, gpu_max,
                                   server_gpus.astype(np.float64), power, cap, times)
    for r, g in zip(ref, (*got, code), strict=True):
        np.testing.assert_array_equal(r, g)
