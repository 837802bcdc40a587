"""The telemetry store: staleness, plausibility, sums, unknown subtrees, counters."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.model import ControllerSettings
from controller.telemetry import FAULT_LOG_LINES, FAULT_LOG_WINDOW_S, Quality, TelemetryStore
from controller.topology import Topology
from drivers import LogBudget


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _store(rig: Topology, clock: Clock, nodes: list[str] | None = None) -> TelemetryStore:
    names = nodes or ["LAB-PANEL", "RIG-A", "RIG-A-1", "RIG-A-2"]
    metered = [rig.node_index[n] for n in names]
    return TelemetryStore(rig, ControllerSettings(), metered, agent_servers=range(4),
                          clock=clock)


def test_missing_then_good_then_stale(rig: Topology) -> None:
    clock = Clock()
    store = _store(rig, clock)
    pdu = rig.node_index["RIG-A"]
    store.refresh()
    assert store.node_quality[pdu] == Quality.MISSING
    assert store.ingest_node(pdu, [10.0, 9.0, 0.0])
    store.refresh()
    assert store.node_quality[pdu] == Quality.GOOD
    clock.t += 2.9
    store.refresh()
    assert store.node_quality[pdu] == Quality.GOOD
    clock.t += 0.2  # 3.1 s > meter_stale_s = 3
    store.refresh()
    assert store.node_quality[pdu] == Quality.STALE
    # an unmetered node is never unknown by itself, but it is below a stale one
    unknown = store.unknown_nodes()
    assert unknown[pdu] and unknown[rig.node_index["RIG-A-1-1"]]
    assert not unknown[rig.node_index["LAB-UTIL"]]


@pytest.mark.parametrize(
    ("reading", "reason"),
    [
        ([math.nan, 0.0, 0.0], "not_finite"),
        ([math.inf, 0.0, 0.0], "not_finite"),
        ([-1.0, 0.0, 0.0], "negative"),
        ([5.0, 5.0, 3.0], "current_on_absent_pole"),  # bank 1 has only L1
        ([32.0 * 21, 0.0, 0.0], "out_of_range"),
        ([1.0, 2.0], "wrong_shape"),
    ],
)
def test_implausible_readings_are_rejected_and_counted(
    rig: Topology, reading: list[float], reason: str
) -> None:
    clock = Clock()
    store = _store(rig, clock)
    bank = rig.node_index["RIG-A-1"]
    assert not store.ingest_node(bank, reading)
    assert store.counters()[reason] == 1
    store.refresh()
    assert store.node_quality[bank] == Quality.IMPLAUSIBLE
    assert store.unknown_nodes()[bank]


def test_future_timestamp_and_out_of_order(rig: Topology) -> None:
    clock = Clock()
    store = _store(rig, clock)
    pdu = rig.node_index["RIG-A"]
    assert not store.ingest_node(pdu, [1.0, 1.0, 0.0], t_s=clock.t + 60)
    assert store.counters()["future_timestamp"] == 1
    assert store.ingest_node(pdu, [1.0, 1.0, 0.0], t_s=clock.t)
    assert not store.ingest_node(pdu, [1.0, 1.0, 0.0], t_s=clock.t - 5)
    assert store.counters()["out_of_order"] == 1


def test_a_glitch_is_rejected_but_a_real_step_is_confirmed(rig: Topology) -> None:
    clock = Clock()
    store = _store(rig, clock)
    pdu = rig.node_index["RIG-A"]  # 32 A: jumps above 16 A need confirmation
    assert store.ingest_node(pdu, [5.0, 5.0, 0.0])
    clock.t += 1
    assert not store.ingest_node(pdu, [25.0, 5.0, 0.0])      # glitch
    clock.t += 1
    assert store.ingest_node(pdu, [5.5, 5.0, 0.0])           # back to normal: accepted
    clock.t += 1
    assert not store.ingest_node(pdu, [24.0, 24.0, 0.0])     # a step ...
    clock.t += 1
    assert store.ingest_node(pdu, [24.5, 23.8, 0.0])         # ... confirmed by the next reading
    assert store.node_i_a[pdu].tolist() == [24.5, 23.8, 0.0]
    assert store.counters()["impossible_jump"] == 2


def test_children_sum_must_match_parent(rig: Topology) -> None:
    clock = Clock()
    store = _store(rig, clock)
    pdu, b1, b2 = (rig.node_index[n] for n in ("RIG-A", "RIG-A-1", "RIG-A-2"))
    assert store.ingest_node(b1, [10.0, 0.0, 0.0])
    assert store.ingest_node(b2, [0.0, 12.0, 0.0])
    assert store.ingest_node(pdu, [10.2, 11.9, 0.0])
    store.refresh()
    assert store.node_quality[pdu] == Quality.GOOD
    # the PDU meter now lies by 30 %
    clock.t += 1
    assert store.ingest_node(pdu, [13.0, 15.6, 0.0])
    store.refresh()
    assert store.node_quality[pdu] == Quality.INCONSISTENT
    assert store.unknown_nodes()[b1]
    assert store.counters()["children_sum_disagrees"] == 1


def test_agents(rig: Topology) -> None:
    clock = Clock()
    store = _store(rig, clock)
    assert store.ingest_server(0, [250.0] * 8, [300.0] * 8)
    assert store.server_power_w[0] == 2000.0 and store.server_cap_w[0] == 300.0
    assert not store.ingest_server(1, [250.0] * 7, [300.0] * 8)
    assert not store.ingest_server(1, [math.nan] * 8, [300.0] * 8)
    assert not store.ingest_server(9, [250.0] * 8, [300.0] * 8)
    store.refresh()
    assert store.server_quality[0] == Quality.GOOD
    assert store.server_quality[1] == Quality.MISSING
    clock.t += 6
    store.refresh()
    assert store.server_quality[0] == Quality.STALE


def test_fault_logged_once_then_cleared(rig: Topology, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    store = _store(rig, clock)
    pdu = rig.node_index["RIG-A"]
    with caplog.at_level(logging.INFO, logger="controller.telemetry"):
        for _ in range(50):
            store.ingest_node(pdu, [math.nan, 0.0, 0.0])
        store.ingest_node(pdu, [1.0, 1.0, 0.0])
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(warnings) == 1 and "RIG-A" in warnings[0].getMessage()
    assert len(infos) == 1 and "cleared" in infos[0].getMessage()
    assert store.counters()["not_finite"] == 50


def test_fault_lines_of_many_nodes_are_bounded_then_summed_up(
        demo: Topology, caplog: pytest.LogCaptureFixture) -> None:
    """A plant answering late makes thousands of nodes fault and clear every tick: the store
    writes ``FAULT_LOG_LINES`` lines per window and one summary of the rest; the counters
    still count every rejection."""
    clock = Clock()
    nodes = list(range(60))
    store = TelemetryStore(demo, ControllerSettings(), nodes, clock=clock)
    wall = Clock()
    store.log_budget = LogBudget(logging.getLogger("controller.telemetry"), "telemetry store",
                                 lines=FAULT_LOG_LINES, window_s=FAULT_LOG_WINDOW_S, clock=wall)
    with caplog.at_level(logging.INFO, logger="controller.telemetry"):
        for node in nodes:
            store.ingest_node(node, [-1.0, 0.0, 0.0])
        for node in nodes:
            store.ingest_node(node, [1.0, 1.0, 0.0])
        assert store.counters()["negative"] == 60
        lines = [r for r in caplog.records if r.name == "controller.telemetry"]
        assert len(lines) == FAULT_LOG_LINES == 20
        assert all("fault on node" in r.getMessage() for r in lines)
        wall.t += FAULT_LOG_WINDOW_S
        store.refresh()                          # each tick's refresh writes a due summary
    summary = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
               and "not written one by one" in r.getMessage()]
    assert summary == ["telemetry store: 100 more fault and recovery line(s) in 10 s not "
                       "written one by one (over 20 per 10 s): cleared negative 60, negative 40"]


@settings(max_examples=200, deadline=None)
@given(
    node=st.integers(-5, 40),
    values=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=0,
                    max_size=5),
    t_off=st.floats(allow_nan=True, allow_infinity=True),
)
def test_hostile_readings_never_raise(rig: Topology, node: int, values: list[float],
                                      t_off: float) -> None:
    clock = Clock()
    store = _store(rig, clock)
    accepted = store.ingest_node(node, values, t_s=clock.t + t_off)
    if accepted:
        assert np.isfinite(store.node_i_a[node]).all() and (store.node_i_a[node] >= 0).all()
    store.refresh()
    assert set(np.unique(store.node_quality)) <= {q.value for q in Quality}


_GPU_W = st.one_of(st.floats(0.0, 1200.0), st.sampled_from(
    [math.nan, math.inf, -math.inf, -1.0, 1e9, 0.0]))


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(st.tuples(
    st.integers(-2, 6),                                   # servers 0-3 have agents
    st.lists(_GPU_W, min_size=8, max_size=8), st.lists(_GPU_W, min_size=8, max_size=8),
    st.sampled_from([0.0, -0.5, 0.5, 100.0, math.nan])), min_size=0, max_size=8))
def test_server_rows_as_readings_one_by_one(
        rig: Topology, rows: list[tuple[int, list[float], list[float], float]]) -> None:
    """The service hands the store a tick's agent readings at once: every accepted value,
    rejection, counter and fault is what the readings one at a time give, hostile values,
    unbound servers, future times and repeats included."""
    clock = Clock()
    one, many = _store(rig, clock), _store(rig, clock)
    want = [one.ingest_server(s, p, c, clock.t + dt) for s, p, c, dt in rows]
    got = many.ingest_server_rows([r[0] for r in rows],
                                  np.array([r[1] for r in rows]).reshape(len(rows), 8),
                                  np.array([r[2] for r in rows]).reshape(len(rows), 8),
                                  [clock.t + r[3] for r in rows])
    assert got.tolist() == want
    for name in ("server_power_w", "server_cap_w", "server_t_s"):
        np.testing.assert_array_equal(getattr(many, name), getattr(one, name))
    assert many.counters() == one.counters() and many.accepted == one.accepted
    assert many._faults == one._faults


def test_server_rows_of_another_gpu_count_are_implausible(rig: Topology) -> None:
    clock = Clock()
    store = _store(rig, clock)
    ok = store.ingest_server_rows([0, 1], np.full((2, 7), 250.0), np.full((2, 7), 300.0),
                                  [clock.t, clock.t])
    assert ok.tolist() == [False, False]
    assert store.counters()["implausible_agent"] == 2
    ok = store.ingest_server_rows([0, 1], np.full((2, 8), 250.0), np.full((2, 8), 300.0),
                                  clock.t)
    assert ok.tolist() == [True, True] and store.server_power_w[:2].tolist() == [2000.0] * 2
