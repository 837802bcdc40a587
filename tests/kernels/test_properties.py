"""Kernels against their plain-Python references, and conservation laws, on random halls."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels
from kernels import reference

RTOL = 1e-10
ATOL = 1e-9

finite_settings = settings(deadline=None, max_examples=60)


ALL_PHASES = st.integers(0, 6)


@st.composite
def trees(draw, min_nodes=1, max_nodes=30):
    """parent_idx (parents first, several roots allowed) and node_feed inherited from roots."""
    n = draw(st.integers(min_nodes, max_nodes))
    parent = [-1]
    for i in range(1, n):
        parent.append(draw(st.integers(-1, i - 1)))
    feed = []
    for p in parent:
        feed.append(draw(st.integers(0, 1)) if p < 0 else feed[p])
    return np.array(parent, dtype=np.int32), np.array(feed, dtype=np.int8)


@st.composite
def halls(draw, phases=ALL_PHASES, max_servers=8, max_psus=30):
    """A random tree with servers and PSUs hanging off random nodes."""
    parent, node_feed = draw(trees())
    n = parent.shape[0]
    v_ln_v = np.array(
        draw(st.lists(st.floats(100.0, 400.0), min_size=n, max_size=n)), dtype=np.float64
    )
    s = draw(st.integers(0, max_servers))
    server_p_w = np.array(
        draw(st.lists(st.floats(0.0, 20_000.0), min_size=s, max_size=s)), dtype=np.float64
    )
    server_pf = np.array(
        draw(st.lists(st.floats(0.5, 1.0), min_size=s, max_size=s)), dtype=np.float64
    )
    k = draw(st.integers(0, max_psus)) if s else 0
    psu_server = np.array(
        draw(st.lists(st.integers(0, max(s - 1, 0)), min_size=k, max_size=k)), dtype=np.int32
    )
    psu_node = np.array(
        draw(st.lists(st.integers(0, n - 1), min_size=k, max_size=k)), dtype=np.int32
    )
    psu_phase = np.array(draw(st.lists(phases, min_size=k, max_size=k)), dtype=np.int8)
    psu_feed = np.array(draw(st.lists(st.integers(0, 1), min_size=k, max_size=k)), dtype=np.int8)
    psu_alive = np.array(draw(st.lists(st.booleans(), min_size=k, max_size=k)), dtype=np.bool_)
    return {
        "parent_idx": parent,
        "node_feed": node_feed,
        "v_ln_v": v_ln_v,
        "server_p_w": server_p_w,
        "server_pf": server_pf,
        "psu_server": psu_server,
        "psu_node": psu_node,
        "psu_phase": psu_phase,
        "psu_feed": psu_feed,
        "psu_alive": psu_alive,
    }


def _psu_args(h):
    return (
        h["server_p_w"],
        h["server_pf"],
        h["psu_server"],
        h["psu_node"],
        h["psu_phase"],
        h["psu_alive"],
    )


def per_phase(n, low=0.0, high=1000.0):
    return st.lists(
        st.lists(st.floats(low, high), min_size=3, max_size=3), min_size=n, max_size=n
    ).map(lambda rows: np.array(rows, dtype=np.float64).reshape(n, 3))


# --------------------------------------------------------------------------- aggregation


@finite_settings
@given(h=halls())
def test_psu_load_va_matches_reference(h):
    n = h["parent_idx"].shape[0]
    got = kernels.psu_load_va(*_psu_args(h), n)
    want = reference.psu_load_va(*_psu_args(h), n)
    assert got.dtype == np.float64 and got.shape == (n, 3)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@finite_settings
@given(h=halls())
def test_psu_load_va_into_zeroes_and_fills(h):
    n = h["parent_idx"].shape[0]
    out = np.full((n, 3), 123.0)
    kernels.psu_load_va_into(*_psu_args(h), out)
    np.testing.assert_allclose(out, reference.psu_load_va(*_psu_args(h), n), rtol=RTOL, atol=ATOL)


@finite_settings
@given(data=st.data())
def test_aggregate_tree_matches_reference(data):
    parent, _ = data.draw(trees())
    leaf_va = data.draw(per_phase(parent.shape[0]))
    before = leaf_va.copy()
    got = kernels.aggregate_tree(parent, leaf_va)
    np.testing.assert_array_equal(leaf_va, before)  # the input is not modified
    np.testing.assert_allclose(got, reference.aggregate_tree(parent, leaf_va), rtol=RTOL, atol=ATOL)
    out = leaf_va.copy()
    kernels.aggregate_tree_into(parent, out)
    np.testing.assert_array_equal(out, got)


@finite_settings
@given(data=st.data())
def test_phase_and_neutral_current_match_reference(data):
    parent, _ = data.draw(trees())
    n = parent.shape[0]
    node_va = data.draw(per_phase(n, 0.0, 1e6))
    v_ln_v = np.array(data.draw(st.lists(st.floats(1.0, 1000.0), min_size=n, max_size=n)))
    i_a = kernels.phase_current_a(node_va, v_ln_v)
    np.testing.assert_allclose(  # atol: denormal inputs differ in the last ulp
        i_a, reference.phase_current_a(node_va, v_ln_v), rtol=RTOL, atol=1e-300)
    i_n = kernels.neutral_current_a(i_a)
    assert i_n.shape == (n,) and np.all(i_n >= 0.0)
    np.testing.assert_allclose(i_n, reference.neutral_current_a(i_a), rtol=1e-9, atol=1e-6)


@finite_settings
@given(data=st.data())
def test_neutral_current_is_phasor_sum_for_line_to_neutral_loads(data):
    n = data.draw(st.integers(1, 10))
    i_a = data.draw(per_phase(n, 0.0, 500.0))
    i_n = kernels.neutral_current_a(i_a)
    angles = np.array([0.0, -2.0 * math.pi / 3.0, 2.0 * math.pi / 3.0])
    phasor = np.abs((i_a * np.exp(1j * angles)).sum(axis=1))
    np.testing.assert_allclose(i_n, phasor, rtol=1e-7, atol=1e-5)


@finite_settings
@given(h=halls())
def test_tree_current_matches_reference(h):
    args = (*_psu_args(h), h["parent_idx"], h["v_ln_v"])
    got = kernels.tree_current_a(*args)
    np.testing.assert_allclose(got, reference.tree_current_a(*args), rtol=RTOL, atol=ATOL)
    out = np.full_like(got, np.nan)
    kernels.tree_current_a_into(*args, out)
    np.testing.assert_array_equal(out, got)


# --------------------------------------------------------------------------- conservation


@finite_settings
@given(h=halls())
def test_sum_of_children_equals_parent(h):
    parent = h["parent_idx"]
    n = parent.shape[0]
    own = kernels.psu_load_va(*_psu_args(h), n)
    total = kernels.aggregate_tree(parent, own)
    children_sum = own.copy()
    for i in range(n):
        if parent[i] >= 0:
            children_sum[parent[i]] += total[i]
    np.testing.assert_allclose(total, children_sum, rtol=RTOL, atol=ATOL)
    # all load ends up at the roots
    roots = parent < 0
    np.testing.assert_allclose(total[roots].sum(axis=0), own.sum(axis=0), rtol=RTOL, atol=ATOL)


@finite_settings
@given(h=halls(phases=st.sampled_from([0, 1, 2, 6])))
def test_line_to_neutral_and_three_phase_loads_conserve_apparent_power(h):
    n = h["parent_idx"].shape[0]
    node_va = kernels.aggregate_tree(h["parent_idx"], kernels.psu_load_va(*_psu_args(h), n))
    powered = np.zeros(h["server_p_w"].shape[0], dtype=bool)
    powered[h["psu_server"][h["psu_alive"]]] = True
    s_va = (h["server_p_w"] / h["server_pf"])[powered].sum()
    roots = h["parent_idx"] < 0
    np.testing.assert_allclose(node_va[roots].sum(), s_va, rtol=RTOL, atol=ATOL)


@finite_settings
@given(h=halls(phases=st.sampled_from([3, 4, 5])))
def test_line_to_line_loads_put_share_over_root3_on_each_line(h):
    n = h["parent_idx"].shape[0]
    node_va = kernels.psu_load_va(*_psu_args(h), n)
    powered = np.zeros(h["server_p_w"].shape[0], dtype=bool)
    powered[h["psu_server"][h["psu_alive"]]] = True
    s_va = (h["server_p_w"] / h["server_pf"])[powered].sum()
    np.testing.assert_allclose(node_va.sum(), 2.0 * s_va / math.sqrt(3.0), rtol=RTOL, atol=ATOL)


def test_one_server_on_each_connection_kind():
    # 3,000 W at pf 0.75 = 4,000 VA shared by 2 alive PSUs (the third is dead): 2,000 VA each.
    p = np.array([3000.0]), np.array([0.75])
    srv = np.zeros(3, np.int32)
    node = np.array([0, 1, 2], np.int32)
    alive = np.array([True, True, False])
    for code, row in [
        (0, [2000.0, 0.0, 0.0]),
        (2, [0.0, 0.0, 2000.0]),
        (4, [0.0, 2000.0 / math.sqrt(3), 2000.0 / math.sqrt(3)]),
        (5, [2000.0 / math.sqrt(3), 0.0, 2000.0 / math.sqrt(3)]),
        (6, [2000.0 / 3, 2000.0 / 3, 2000.0 / 3]),
    ]:
        va = kernels.psu_load_va(*p, srv, node, np.full(3, code, np.int8), alive, 3)
        np.testing.assert_allclose(va[0], row)
        np.testing.assert_allclose(va[1], row)
        np.testing.assert_array_equal(va[2], 0.0)
    # no alive PSU: the server draws nothing
    va = kernels.psu_load_va(*p, srv, node, np.zeros(3, np.int8), np.zeros(3, bool), 3)
    np.testing.assert_array_equal(va, 0.0)


# --------------------------------------------------------------------------- feeds, headroom


@finite_settings
@given(h=halls())
def test_feed_loss_current_matches_reference(h):
    args = (
        h["server_p_w"],
        h["server_pf"],
        h["psu_server"],
        h["psu_node"],
        h["psu_phase"],
        h["psu_feed"],
        h["psu_alive"],
        h["parent_idx"],
        h["v_ln_v"],
    )
    got = kernels.feed_loss_current_a(*args)
    assert got.shape == (3, h["parent_idx"].shape[0], 3)
    np.testing.assert_allclose(got, reference.feed_loss_current_a(*args), rtol=RTOL, atol=ATOL)
    # scenario 0 is the plain tree current
    np.testing.assert_array_equal(
        got[0], kernels.tree_current_a(*_psu_args(h), h["parent_idx"], h["v_ln_v"])
    )


@finite_settings
@given(
    data=st.data(),
    n_servers=st.integers(1, 6),
    psus_per_side=st.integers(1, 3),
)
def test_feed_loss_doubles_the_surviving_side(data, n_servers, psus_per_side):
    # Two trees: node 0 is source A, node 1 source B; below each a random subtree of outlets.
    n_a = data.draw(st.integers(1, 8))
    n_b = data.draw(st.integers(1, 8))
    parent = [-1, -1]
    side = [0, 1]
    for i in range(2, 2 + n_a + n_b):
        s = 0 if i < 2 + n_a else 1
        candidates = [j for j in range(i) if side[j] == s]
        parent.append(data.draw(st.sampled_from(candidates)))
        side.append(s)
    parent = np.array(parent, np.int32)
    node_feed = np.array(side, np.int8)
    n = parent.shape[0]
    a_nodes = [j for j in range(n) if side[j] == 0]
    b_nodes = [j for j in range(n) if side[j] == 1]
    psu_server, psu_node, psu_feed = [], [], []
    for srv in range(n_servers):
        for feed, nodes in ((0, a_nodes), (1, b_nodes)):
            for _ in range(psus_per_side):
                psu_server.append(srv)
                psu_node.append(data.draw(st.sampled_from(nodes)))
                psu_feed.append(feed)
    k = len(psu_server)
    p_w = np.array(
        data.draw(st.lists(st.floats(1.0, 15_000.0), min_size=n_servers, max_size=n_servers))
    )
    pf = np.array(data.draw(st.lists(st.floats(0.5, 1.0), min_size=n_servers, max_size=n_servers)))
    phase = np.array(data.draw(st.lists(st.integers(0, 6), min_size=k, max_size=k)), np.int8)
    v = np.full(n, 230.0)
    scen = kernels.feed_loss_current_a(
        p_w,
        pf,
        np.array(psu_server, np.int32),
        np.array(psu_node, np.int32),
        phase,
        np.array(psu_feed, np.int8),
        np.ones(k, bool),
        parent,
        v,
    )
    normal, a_lost, b_lost = scen
    np.testing.assert_allclose(a_lost[b_nodes], 2.0 * normal[b_nodes], rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(a_lost[a_nodes], 0.0)
    np.testing.assert_allclose(b_lost[a_nodes], 2.0 * normal[a_nodes], rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(b_lost[b_nodes], 0.0)
    # the worst case of every node is its own feed carrying everything
    limit = np.full((n, 3), 1e9)
    worst = kernels.worst_case_headroom_a(scen, node_feed, limit)
    np.testing.assert_allclose(limit - worst, 2.0 * normal, rtol=RTOL, atol=1e-6)


@finite_settings
@given(data=st.data())
def test_headroom_matches_reference(data):
    n = data.draw(st.integers(1, 20))
    i_a = data.draw(per_phase(n, 0.0, 100.0))
    limit = data.draw(per_phase(n, 0.0, 100.0))
    # absent poles, some of them (wrongly) loaded
    absent = np.array(data.draw(st.lists(st.booleans(), min_size=3 * n, max_size=3 * n))).reshape(
        n, 3
    )
    limit[absent] = 0.0
    unloaded = np.array(data.draw(st.lists(st.booleans(), min_size=3 * n, max_size=3 * n))).reshape(
        n, 3
    )
    i_a[unloaded] = 0.0
    got = kernels.headroom_a(i_a, limit)
    np.testing.assert_array_equal(got, reference.headroom_a(i_a, limit))
    assert np.all(got[absent & unloaded] == np.inf)
    assert np.all(got[absent & (i_a > 0)] < 0.0)


@finite_settings
@given(data=st.data())
def test_worst_case_matches_reference(data):
    parent, node_feed = data.draw(trees())
    n = parent.shape[0]
    scen = np.stack([data.draw(per_phase(n, 0.0, 100.0)) for _ in range(3)])
    zero = np.array(data.draw(st.lists(st.booleans(), min_size=9 * n, max_size=9 * n))).reshape(
        3, n, 3
    )
    scen[zero] = 0.0
    limit = data.draw(per_phase(n, 0.0, 100.0))
    absent = np.array(data.draw(st.lists(st.booleans(), min_size=3 * n, max_size=3 * n))).reshape(
        n, 3
    )
    limit[absent] = 0.0
    np.testing.assert_array_equal(
        kernels.worst_case_headroom_a(scen, node_feed, limit),
        reference.worst_case_headroom_a(scen, node_feed, limit),
    )
    np.testing.assert_allclose(
        kernels.worst_case_utilization(scen, node_feed, limit),
        reference.worst_case_utilization(scen, node_feed, limit),
        rtol=RTOL,
    )


def test_worst_case_ignores_the_scenario_in_which_the_node_is_dead():
    # node 0 on feed A, node 1 on feed B; a huge (impossible) load in the scenario where each
    # is dead must not count.
    scen = np.zeros((3, 2, 3))
    scen[0] = 10.0
    scen[1, 0] = 1000.0  # feed A lost: node 0 is dead
    scen[2, 1] = 1000.0  # feed B lost: node 1 is dead
    scen[2, 0] = 20.0  # feed B lost: node 0 carries double
    scen[1, 1] = 20.0
    limit = np.full((2, 3), 32.0)
    feed = np.array([0, 1], np.int8)
    np.testing.assert_array_equal(kernels.worst_case_headroom_a(scen, feed, limit), 12.0)
    np.testing.assert_allclose(kernels.worst_case_utilization(scen, feed, limit), 20.0 / 32.0)


# --------------------------------------------------------------------------- breaker


inf = math.inf


@st.composite
def breakers(draw, max_nodes=12):
    n = draw(st.integers(1, max_nodes))
    rating = np.zeros((n, 3))
    for i in range(n):
        for p in range(3):
            if draw(st.booleans()) or p == 0:
                rating[i, p] = draw(st.floats(1.0, 400.0))
    k = np.array([draw(st.one_of(st.just(inf), st.floats(1.0, 1.5))) for _ in range(n)])
    tau = np.array(
        [
            draw(
                st.one_of(st.just(inf), st.floats(1.0, 500.0))
                if ki == inf
                else st.floats(1.0, 500.0)
            )
            for ki in k
        ]
    )
    m = np.array([draw(st.one_of(st.just(inf), st.floats(2.0, 20.0))) for _ in range(n)])
    pickup = np.array([draw(st.one_of(st.just(inf), st.floats(1.5, 10.0))) for _ in range(n)])
    delay = np.array(draw(st.lists(st.floats(0.0, 0.5), min_size=n, max_size=n)))
    theta = draw(per_phase(n, 0.0, 3.0))
    timer = draw(per_phase(n, 0.0, 0.5))
    tripped = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    cause = np.array([draw(st.integers(1, 3)) if t else 0 for t in tripped], np.int8)
    return rating, (k, tau, m, pickup, delay), theta, timer, tripped, cause


def currents(rating, draw):
    n = rating.shape[0]
    x = draw(per_phase(n, 0.0, 20.0))
    return x * rating


@settings(deadline=None, max_examples=100)
@given(data=st.data())
def test_breaker_step_matches_reference(data):
    rating, params, theta, timer, tripped, cause = data.draw(breakers())
    state = [theta.copy(), timer.copy(), tripped.copy(), cause.copy()]
    for _ in range(3):
        i_a = currents(rating, data.draw)
        dt_s = data.draw(st.floats(0.0, 5.0))
        want = reference.breaker_step(i_a, rating, *params, dt_s, *state)
        kernels.breaker_step(i_a, rating, *params, dt_s, *state)
        np.testing.assert_allclose(state[0], want[0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(state[1], want[1], rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(state[2], want[2])
        np.testing.assert_array_equal(state[3], want[3])
        assert state[2].dtype == np.bool_ and state[3].dtype == np.int8
        # latched: a node tripped before is still tripped with the same cause
        assert np.all(state[2][tripped])
        np.testing.assert_array_equal(state[3][tripped], cause[tripped])


@settings(deadline=None, max_examples=100)
@given(data=st.data())
def test_time_to_trip_matches_reference(data):
    rating, params, theta, timer, _, _ = data.draw(breakers())
    i_a = currents(rating, data.draw)
    got = kernels.time_to_trip_s(i_a, rating, *params, theta, timer)
    want = reference.time_to_trip_s(i_a, rating, *params, theta, timer)
    assert got.shape == (rating.shape[0],) and not np.isnan(got).any()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert np.all(got >= 0.0)
