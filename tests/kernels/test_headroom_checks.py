"""PHYSICS.md §8 checks 8 and 11 with the aggregation and headroom kernels.

A three-phase 415 V branch (V_LN = 415/√3 ≈ 239.6 V) feeds a rack PDU inlet with outlets on
L1, L2 and L3; servers have 6 PSUs plugged line-to-neutral, two per phase, so each server
loads the three phases equally. The continuous limit is 80 % of the rating.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import kernels

V_LN_V = 415.0 / math.sqrt(3.0)
CONTINUOUS = 0.80


def branch_hall(rating_a: float, server_p_w: list[float], server_pf: float, feeds: int = 1):
    """Arrays of a hall with one 3φ branch per feed (node 0 on A, node 1 on B when feeds = 2),
    one outlet node per phase below each, and servers whose 6 PSUs are spread L-N over the
    phases (with two feeds: 3 PSUs on each, one per phase)."""
    parent = []
    node_feed = []
    outlet = {}
    for f in range(feeds):
        parent.append(-1)
        node_feed.append(f)
    for f in range(feeds):
        for ph in range(3):
            outlet[f, ph] = len(parent)
            parent.append(f)
            node_feed.append(f)
    n = len(parent)
    rating = np.zeros((n, 3))
    rating[:feeds] = rating_a
    for (_, ph), node in outlet.items():
        rating[node, ph] = 16.0
    psu_server, psu_node, psu_phase, psu_feed = [], [], [], []
    for s in range(len(server_p_w)):
        for k in range(6):
            f = k % feeds
            ph = (k // feeds) % 3 if feeds == 2 else k % 3
            psu_server.append(s)
            psu_node.append(outlet[f, ph])
            psu_phase.append(ph)
            psu_feed.append(f)
    return {
        "server_p_w": np.array(server_p_w, dtype=np.float64),
        "server_pf": np.full(len(server_p_w), server_pf),
        "psu_server": np.array(psu_server, np.int32),
        "psu_node": np.array(psu_node, np.int32),
        "psu_phase": np.array(psu_phase, np.int8),
        "psu_feed": np.array(psu_feed, np.int8),
        "psu_alive": np.ones(len(psu_server), bool),
        "parent_idx": np.array(parent, np.int32),
        "v_ln_v": np.full(n, V_LN_V),
        "node_feed": np.array(node_feed, np.int8),
        "limit_a": CONTINUOUS * rating,
    }


def branch_current_a(h) -> np.ndarray:
    return kernels.tree_current_a(
        h["server_p_w"],
        h["server_pf"],
        h["psu_server"],
        h["psu_node"],
        h["psu_phase"],
        h["psu_alive"],
        h["parent_idx"],
        h["v_ln_v"],
    )


def worst_case(h) -> tuple[np.ndarray, np.ndarray]:
    scen = kernels.feed_loss_current_a(
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
    return (
        kernels.worst_case_headroom_a(scen, h["node_feed"], h["limit_a"]),
        kernels.worst_case_utilization(scen, h["node_feed"], h["limit_a"]),
    )


@pytest.mark.parametrize(
    ("load_va", "flagged"),
    [(30_000.0, False), (34_490.0, False), (34_600.0, True), (40_000.0, True)],
)
def test_check8_415v_60a_branch_is_flagged_above_34_5_kva(load_va, flagged):
    # 415 V 3φ 60 A: 43.1 kVA nameplate, 34.5 kVA (34,507 VA) at 80 %; four servers at pf 1
    nameplate_va = math.sqrt(3.0) * 415.0 * 60.0
    assert nameplate_va == pytest.approx(43.1e3, abs=50.0)
    limit_va = CONTINUOUS * nameplate_va
    assert limit_va == pytest.approx(34.5e3, abs=50.0)
    h = branch_hall(60.0, [load_va / 4] * 4, 1.0)
    i_a = branch_current_a(h)
    np.testing.assert_allclose(i_a[0], load_va / 3 / V_LN_V)
    headroom = kernels.headroom_a(i_a, h["limit_a"])
    assert bool(np.any(headroom[0] < 0.0)) is flagged
    _, util = worst_case(h)
    assert bool(util[0] > 1.0) is flagged
    assert util[0] == pytest.approx(load_va / limit_va)


@pytest.mark.parametrize("pf", [1.0, 0.99])
def test_check11_two_dgx_h100_break_80_percent_of_32a(pf):
    h = branch_hall(32.0, [10_200.0] * 2, pf)
    i_a = branch_current_a(h)
    per_server_a = 10_200.0 / pf / (math.sqrt(3.0) * 415.0)
    assert per_server_a == pytest.approx(14.3, abs=0.15)
    np.testing.assert_allclose(i_a[0], 2 * per_server_a)
    headroom = kernels.headroom_a(i_a, h["limit_a"])
    assert np.all(headroom[0] < 0.0)  # 28.4-28.7 A > 25.6 A
    _, util = worst_case(h)
    assert util[0] > 1.0


@pytest.mark.parametrize("pf", [1.0, 0.99])
def test_check11_three_dgx_h100_pass_on_60a(pf):
    h = branch_hall(60.0, [10_200.0] * 3, pf)
    i_a = branch_current_a(h)
    headroom = kernels.headroom_a(i_a, h["limit_a"])
    assert np.all(headroom[0] > 0.0)  # 42.6-43.0 A < 48 A
    assert np.all(headroom[0] < 6.0)
    _, util = worst_case(h)
    assert 0.85 < util[0] < 1.0


@pytest.mark.parametrize(("rating_a", "servers", "flagged"), [(32.0, 2, True), (60.0, 3, False)])
def test_check11_with_a_and_b_feeds_the_worst_case_is_one_feed_carrying_all(
    rating_a, servers, flagged
):
    # with 3 PSUs on each feed the branches share the load normally (and pass) but after the
    # loss of one feed the surviving branch carries everything: the worst case decides.
    h = branch_hall(rating_a, [10_200.0] * servers, 0.99, feeds=2)
    i_a = branch_current_a(h)
    normal = kernels.headroom_a(i_a, h["limit_a"])
    assert np.all(normal[:2] > 0.0)
    worst_headroom, util = worst_case(h)
    np.testing.assert_allclose(h["limit_a"][:2] - worst_headroom[:2], 2 * i_a[:2])
    assert bool(np.all(worst_headroom[:2] < 0.0)) is flagged
    assert bool(np.all(util[:2] > 1.0)) is flagged


def test_neutral_of_the_balanced_branch_is_zero_and_one_lost_phase_shows():
    h = branch_hall(60.0, [10_200.0] * 3, 1.0)
    i_a = branch_current_a(h)
    assert kernels.neutral_current_a(i_a)[0] == pytest.approx(0.0, abs=1e-9)
    h["psu_alive"][h["psu_phase"] == 0] = False  # the L1 PSUs drop out: L2, L3 take it all
    i_a = branch_current_a(h)
    assert i_a[0, 0] == 0.0
    assert kernels.neutral_current_a(i_a)[0] == pytest.approx(i_a[0, 1])
