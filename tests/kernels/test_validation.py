"""The public wrappers refuse bad inputs with a clear ValueError and check their outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

import kernels
from kernels import KernelInputError, KernelOutputError

NAN = math.nan
INF = math.inf


def hall():
    """A small valid hall: source 0 → branch 1 → outlets 2, 3; two servers, four PSUs."""
    return {
        "server_p_w": np.array([1000.0, 2000.0]),
        "server_pf": np.array([0.95, 1.0]),
        "psu_server": np.array([0, 0, 1, 1], np.int32),
        "psu_node": np.array([2, 3, 2, 3], np.int32),
        "psu_phase": np.array([0, 1, 3, 6], np.int8),
        "psu_feed": np.array([0, 1, 0, 1], np.int8),
        "psu_alive": np.array([True, True, True, False]),
        "parent_idx": np.array([-1, 0, 1, 1], np.int32),
        "v_ln_v": np.full(4, 230.0),
    }


PSU_ARGS = ["server_p_w", "server_pf", "psu_server", "psu_node", "psu_phase", "psu_alive"]
TREE_ARGS = [*PSU_ARGS, "parent_idx", "v_ln_v"]
FEED_ARGS = [*PSU_ARGS[:5], "psu_feed", "psu_alive", "parent_idx", "v_ln_v"]


def call_tree(h):
    return kernels.tree_current_a(*(h[k] for k in TREE_ARGS))


def call_feed(h):
    return kernels.feed_loss_current_a(*(h[k] for k in FEED_ARGS))


def call_psu(h):
    return kernels.psu_load_va(*(h[k] for k in PSU_ARGS), 4)


def test_valid_hall_passes():
    assert call_tree(hall()).shape == (4, 3)
    assert call_feed(hall()).shape == (3, 4, 3)
    assert call_psu(hall()).shape == (4, 3)


def _set(key, index, value):
    def mutate(h):
        arr = h[key].copy()
        arr[index] = value
        h[key] = arr

    return mutate


def _replace(key, value):
    def mutate(h):
        h[key] = value

    return mutate


BAD_HALLS = [
    ("nan power", _set("server_p_w", 1, NAN), "server_p_w", "server_p_w\\[1\\] = nan"),
    ("inf power", _set("server_p_w", 0, INF), "server_p_w", "not finite"),
    ("negative power", _set("server_p_w", 0, -5.0), "server_p_w", ">= 0"),
    ("pf zero", _set("server_pf", 0, 0.0), "server_pf", "> 0"),
    ("pf above one", _set("server_pf", 1, 1.2), "server_pf", "<= 1"),
    ("pf nan", _set("server_pf", 1, NAN), "server_pf", "nan"),
    ("pf shape", _replace("server_pf", np.ones(3)), "server_pf", "shape \\(3,\\)"),
    ("power 2-D", _replace("server_p_w", np.ones((2, 1))), "server_p_w", "1-D"),
    ("server index", _set("psu_server", 2, 2), "psu_server", "server index"),
    ("server index float", _replace("psu_server", np.zeros(4)), "psu_server", "integers"),
    ("node index", _set("psu_node", 0, 4), "psu_node", "node index"),
    ("node negative", _set("psu_node", 0, -1), "psu_node", "node index"),
    ("phase code", _set("psu_phase", 3, 7), "psu_phase", "connection code"),
    ("alive not bool", _replace("psu_alive", np.ones(4, np.int8)), "psu_alive", "bool"),
    ("alive shape", _replace("psu_alive", np.ones(5, bool)), "psu_alive", "shape"),
    ("child before parent", _set("parent_idx", 1, 2), "parent_idx", "parents first"),
    ("self parent", _set("parent_idx", 2, 2), "parent_idx", "parents first"),
    ("parent below -1", _set("parent_idx", 3, -2), "parent_idx", "parent_idx\\[3\\] = -2"),
    ("parent float", _replace("parent_idx", np.array([-1.0, 0, 1, 1])), "parent_idx", "integers"),
    ("parent 2-D", _replace("parent_idx", np.zeros((4, 1), np.int32)), "parent_idx", "1-D"),
    ("voltage zero", _set("v_ln_v", 2, 0.0), "v_ln_v", "> 0"),
    ("voltage nan", _set("v_ln_v", 2, NAN), "v_ln_v", "nan"),
    ("voltage shape", _replace("v_ln_v", np.full(3, 230.0)), "v_ln_v", "shape"),
    ("voltage strings", _replace("v_ln_v", np.array(["230"] * 4)), "v_ln_v", "real numbers"),
]


@pytest.mark.parametrize(
    ("mutate", "argument", "match"),
    [case[1:] for case in BAD_HALLS],
    ids=[case[0] for case in BAD_HALLS],
)
def test_tree_and_feed_wrappers_reject(mutate, argument, match):
    h = hall()
    mutate(h)
    for call in (call_tree, call_feed):
        with pytest.raises(KernelInputError, match=match) as info:
            call(h)
        assert info.value.argument == argument
        assert isinstance(info.value, ValueError)


def test_feed_code_is_checked():
    h = hall()
    h["psu_feed"] = np.array([0, 1, 2, 1], np.int8)
    with pytest.raises(KernelInputError, match="psu_feed\\[2\\] = 2 is not a feed code") as info:
        call_feed(h)
    assert info.value.index == (2,)


def test_psu_load_va_checks_n_nodes_and_out():
    with pytest.raises(KernelInputError, match="n_nodes"):
        kernels.psu_load_va(*(hall()[k] for k in PSU_ARGS), -1)
    with pytest.raises(KernelInputError, match="psu_node"):
        kernels.psu_load_va(*(hall()[k] for k in PSU_ARGS), 3)
    args = [hall()[k] for k in PSU_ARGS]
    for out, match in [
        (np.zeros((4, 3), np.float32), "dtype float64"),
        (np.zeros((4, 2)), "shape"),
        (np.zeros((3, 4)).T, "shape|C-contiguous"),
        (np.zeros((4, 6))[:, ::2], "C-contiguous"),
        ([[0.0] * 3] * 4, "numpy array"),
    ]:
        with pytest.raises(KernelInputError, match=match):
            kernels.psu_load_va_into(*args, out)
    readonly = np.zeros((4, 3))
    readonly.flags.writeable = False
    with pytest.raises(KernelInputError, match="writeable"):
        kernels.psu_load_va_into(*args, readonly)


def test_aggregate_rejects():
    parent = np.array([-1, 0, 1], np.int32)
    with pytest.raises(KernelInputError, match="leaf_va has shape \\(3, 2\\), expected \\(3, 3\\)"):
        kernels.aggregate_tree(parent, np.zeros((3, 2)))
    with pytest.raises(KernelInputError, match="leaf_va\\[1, 2\\] = nan"):
        kernels.aggregate_tree(parent, np.array([[0, 0, 0], [0, 0, NAN], [0, 0, 0]]))
    with pytest.raises(KernelInputError, match=">= 0"):
        kernels.aggregate_tree(parent, -np.ones((3, 3)))
    with pytest.raises(KernelInputError, match="parents first"):
        kernels.aggregate_tree(np.array([0, 0, 1], np.int32), np.zeros((3, 3)))
    out = np.zeros((3, 3))
    out[1, 1] = INF
    with pytest.raises(KernelInputError, match="out_node_va\\[1, 1\\]"):
        kernels.aggregate_tree_into(parent, out)
    with pytest.raises(KernelInputError, match="dtype"):
        kernels.aggregate_tree_into(parent, np.zeros((3, 3), np.int64))


def test_current_and_headroom_wrappers_reject():
    with pytest.raises(KernelInputError, match="node_va"):
        kernels.phase_current_a(np.zeros(3), np.ones(3))
    with pytest.raises(KernelInputError, match="v_ln_v"):
        kernels.phase_current_a(np.zeros((3, 3)), np.array([230.0, -230.0, 230.0]))
    with pytest.raises(KernelInputError, match="i_a"):
        kernels.neutral_current_a(np.array([[1.0, NAN, 0.0]]))
    with pytest.raises(KernelInputError, match="i_a"):
        kernels.neutral_current_a(np.array([[1.0, -1.0, 0.0]]))
    with pytest.raises(KernelInputError, match="limit_a"):
        kernels.headroom_a(np.zeros((2, 3)), np.full((2, 3), NAN))
    with pytest.raises(KernelInputError, match="limit_a has shape"):
        kernels.headroom_a(np.zeros((2, 3)), np.zeros((3, 3)))
    with pytest.raises(KernelInputError, match="bool"):
        kernels.headroom_a(np.zeros((2, 3), bool), np.zeros((2, 3)))
    scen = np.zeros((3, 2, 3))
    feed = np.array([0, 1], np.int8)
    with pytest.raises(KernelInputError, match="scenario_i_a must have shape \\(3, n, 3\\)"):
        kernels.worst_case_headroom_a(np.zeros((2, 2, 3)), feed, np.zeros((2, 3)))
    with pytest.raises(KernelInputError, match="node_feed\\[1\\] = 2"):
        kernels.worst_case_utilization(scen, np.array([0, 2], np.int8), np.zeros((2, 3)))
    bad = scen.copy()
    bad[2, 1, 0] = NAN
    with pytest.raises(KernelInputError, match="scenario_i_a\\[2, 1, 0\\]") as info:
        kernels.worst_case_headroom_a(bad, feed, np.zeros((2, 3)))
    assert info.value.index == (2, 1, 0)


def breaker_args(n=2):
    p = kernels.trip_param_arrays([kernels.mcb_params("C", 16.0)] * n)
    state = (np.zeros((n, 3)), np.zeros((n, 3)), np.zeros(n, bool), np.zeros(n, np.int8))
    return [np.full((n, 3), 10.0), np.full((n, 3), 16.0), *p, 1.0, *state]


# index in breaker_args: 0 i_a, 1 rating_a, 2 k, 3 tau, 4 m, 5 pickup, 6 delay, 7 dt_s,
# 8 out_theta, 9 out_short_timer_s, 10 out_tripped, 11 out_cause
BAD_BREAKERS = [
    ("current nan", 0, np.array([[1.0, NAN, 0], [0, 0, 0]]), "i_a"),
    ("current negative", 0, -np.ones((2, 3)), "i_a"),
    ("current shape", 0, np.ones((2, 2)), "i_a"),
    ("rating negative", 1, np.full((2, 3), -16.0), "rating_a"),
    ("rating inf", 1, np.full((2, 3), INF), "rating_a"),
    ("k zero", 2, np.zeros(2), "thermal_k"),
    ("k nan", 2, np.array([NAN, 1.3]), "thermal_k"),
    ("tau zero", 3, np.zeros(2), "thermal_tau_s"),
    ("tau inf with k", 3, np.array([60.0, INF]), "thermal_tau_s"),
    ("magnetic nan", 4, np.array([NAN, 7.5]), "magnetic_x"),
    ("pickup negative", 5, np.array([-1.0, INF]), "short_pickup_x"),
    ("delay inf", 6, np.array([INF, 0.0]), "short_delay_s"),
    ("dt negative", 7, -1.0, "dt_s"),
    ("dt nan", 7, NAN, "dt_s"),
    ("dt array", 7, np.ones(2), "dt_s"),
    ("theta float32", 8, np.zeros((2, 3), np.float32), "out_theta"),
    ("theta nan", 8, np.full((2, 3), NAN), "out_theta"),
    ("timer negative", 9, -np.ones((2, 3)), "out_short_timer_s"),
    ("tripped int", 10, np.zeros(2, np.int8), "out_tripped"),
    ("cause int64", 11, np.zeros(2, np.int64), "out_cause"),
    ("cause code", 11, np.array([0, 9], np.int8), "out_cause"),
]


@pytest.mark.parametrize(
    ("position", "value", "argument"),
    [case[1:] for case in BAD_BREAKERS],
    ids=[case[0] for case in BAD_BREAKERS],
)
def test_breaker_step_rejects(position, value, argument):
    args = breaker_args()
    args[position] = value
    with pytest.raises(KernelInputError) as info:
        kernels.breaker_step(*args)
    assert info.value.argument == argument
    assert argument in str(info.value)


def test_time_to_trip_rejects():
    args = breaker_args()
    i_a, rating, *params = args[:7]
    theta, timer = args[8], args[9]
    assert kernels.time_to_trip_s(i_a, rating, *params, theta, timer).shape == (2,)
    with pytest.raises(KernelInputError, match="theta"):
        kernels.time_to_trip_s(i_a, rating, *params, np.full((2, 3), NAN), timer)
    with pytest.raises(KernelInputError, match="short_timer_s"):
        kernels.time_to_trip_s(i_a, rating, *params, theta, np.zeros((3, 3)))


def test_outputs_that_overflow_are_refused():
    h = hall()
    h["server_p_w"] = np.array([1e308, 1e308])
    h["server_pf"] = np.array([0.5, 0.5])
    with pytest.raises(KernelOutputError, match="not finite"):
        call_tree(h)
    with pytest.raises(KernelOutputError):
        call_psu(h)


def test_wrappers_accept_other_integer_and_float_dtypes():
    h = hall()
    want = call_tree(h)
    h["psu_server"] = h["psu_server"].astype(np.int64)
    h["psu_node"] = h["psu_node"].tolist()
    h["psu_phase"] = h["psu_phase"].astype(np.uint8)
    h["parent_idx"] = h["parent_idx"].astype(np.int16)
    h["server_p_w"] = h["server_p_w"].astype(np.float32)
    h["v_ln_v"] = [230, 230, 230, 230]
    np.testing.assert_allclose(call_tree(h), want, rtol=1e-6)


def test_empty_hall():
    empty_f = np.zeros(0)
    empty_i = np.zeros(0, np.int32)
    i_a = kernels.tree_current_a(
        empty_f,
        empty_f,
        empty_i,
        empty_i,
        np.zeros(0, np.int8),
        np.zeros(0, bool),
        empty_i,
        empty_f,
    )
    assert i_a.shape == (0, 3)


def test_read_only_inputs_are_accepted():
    # the topology compiler hands out read-only arrays
    h = hall()
    want = call_feed(h)
    for value in h.values():
        value.flags.writeable = False
    np.testing.assert_array_equal(call_feed(h), want)
    np.testing.assert_array_equal(call_tree(h), want[0])
    args = breaker_args()
    for a in args[:7]:
        a.flags.writeable = False
    kernels.breaker_step(*args)
    assert kernels.time_to_trip_s(*args[:7], args[8], args[9]).shape == (2,)
    limit = np.full((4, 3), 20.0)
    limit.flags.writeable = False
    kernels.headroom_a(want[0], limit)
    kernels.worst_case_utilization(want, np.zeros(4, np.int8), limit)
