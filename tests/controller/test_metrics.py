"""The service's metrics: values in the text exposition (parsed back with prometheus_client's
own parser), over HTTP from the started exporter, NaN handling, and a clean shutdown."""

from __future__ import annotations

import asyncio
import math
import socket
import urllib.request

import numpy as np
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from controller.metrics import MODES, TICK_BUCKETS_S, ServiceMetrics


def _samples(text: bytes | str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    if isinstance(text, bytes):
        text = text.decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def _fill(metrics: ServiceMetrics) -> None:
    metrics.set_mode("SHEDDING")
    for duration_s in (0.0004, 0.0015, 0.0015, 0.3):
        metrics.observe_tick(duration_s)
    metrics.set_node_loads(
        ["UPS-A", "R1-PDU-B1"],
        np.array([[100.0, 110.0, 120.0], [10.5, np.nan, 12.0]]),
        np.array([400.0, 25.6]), np.array([280.0, np.nan]))
    metrics.set_utilization_by_kind({"ups": 0.3, "rack_pdu": 0.82, "zone": float("nan")})
    metrics.set_stale(3)
    metrics.set_telemetry_counters({"schema": 4, "out_of_range": 1})
    metrics.count_action("switch_outlet", "ok", 5)
    metrics.count_action("set_caps", "failed")
    metrics.count_action("set_caps", "ok", 2)
    metrics.set_alarms(2)
    metrics.set_servers(3, 4)


def test_every_value_appears_in_the_exposition() -> None:
    metrics = ServiceMetrics()
    _fill(metrics)
    s = _samples(metrics.render())
    assert {mode: _value(s, "rampguard_mode", mode=mode) for mode in MODES} == {
        m: (1.0 if m == "SHEDDING" else 0.0) for m in MODES}
    assert _value(s, "rampguard_tick_seconds_count") == 4
    assert math.isclose(_value(s, "rampguard_tick_seconds_sum"), 0.3034)
    assert _value(s, "rampguard_tick_seconds_bucket", le="0.0005") == 1
    assert _value(s, "rampguard_tick_seconds_bucket", le="0.002") == 3
    assert _value(s, "rampguard_tick_seconds_bucket", le="0.25") == 3
    assert _value(s, "rampguard_tick_seconds_bucket", le="+Inf") == 4
    assert _value(s, "rampguard_node_load_a", node="UPS-A", phase="L2") == 110.0
    assert _value(s, "rampguard_node_load_a", node="R1-PDU-B1", phase="L3") == 12.0
    assert math.isnan(_value(s, "rampguard_node_load_a", node="R1-PDU-B1", phase="L2"))
    assert _value(s, "rampguard_node_limit_a", node="R1-PDU-B1") == 25.6
    assert _value(s, "rampguard_node_headroom_a", node="UPS-A") == 280.0
    assert math.isnan(_value(s, "rampguard_node_headroom_a", node="R1-PDU-B1"))
    assert _value(s, "rampguard_max_utilization", kind="rack_pdu") == 0.82
    assert math.isnan(_value(s, "rampguard_max_utilization", kind="zone"))
    assert _value(s, "rampguard_stale_readings") == 3
    assert _value(s, "rampguard_telemetry_rejected_total", reason="schema") == 4
    assert _value(s, "rampguard_actions_total", type="switch_outlet", outcome="ok") == 5
    assert _value(s, "rampguard_actions_total", type="set_caps", outcome="failed") == 1
    assert _value(s, "rampguard_actions_total", type="set_caps", outcome="ok") == 2
    assert _value(s, "rampguard_alarms_active") == 2
    assert _value(s, "rampguard_servers_energized") == 3
    assert _value(s, "rampguard_servers_total") == 4


def test_the_registry_is_private() -> None:
    a, b = ServiceMetrics(), ServiceMetrics()
    a.set_stale(7)
    b.set_stale(1)
    assert _value(_samples(a.render()), "rampguard_stale_readings") == 7
    assert _value(_samples(b.render()), "rampguard_stale_readings") == 1
    assert REGISTRY.get_sample_value("rampguard_stale_readings") is None


def test_modes_are_one_hot_including_a_new_one() -> None:
    metrics = ServiceMetrics()
    s = _samples(metrics.render())
    assert all(_value(s, "rampguard_mode", mode=m) == 0.0 for m in MODES)
    metrics.set_mode("RAMPING")
    metrics.set_mode("DRAINING")
    s = _samples(metrics.render())
    modes = {labels[0][1]: v for (name, labels), v in s.items() if name == "rampguard_mode"}
    assert modes == {**{m: 0.0 for m in MODES}, "DRAINING": 1.0}


def test_node_set_is_replaced_and_copied() -> None:
    metrics = ServiceMetrics()
    load = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    limit = np.array([10.0, 20.0])
    headroom = np.array([7.0, 14.0])
    metrics.set_node_loads(["A", "B"], load, limit, headroom)
    load[0, 0] = 99.0                 # the caller reuses its buffers
    limit[:] = 0.0
    s = _samples(metrics.render())
    assert _value(s, "rampguard_node_load_a", node="A", phase="L1") == 1.0
    assert _value(s, "rampguard_node_limit_a", node="B") == 20.0
    metrics.set_node_loads(["C"], np.full((1, 3), np.inf), np.array([-np.inf]), np.array([5.0]))
    s = _samples(metrics.render())
    nodes = {dict(labels)["node"] for (name, labels) in s if name.startswith("rampguard_node_")}
    assert nodes == {"C"}
    assert math.isnan(_value(s, "rampguard_node_load_a", node="C", phase="L1"))
    assert math.isnan(_value(s, "rampguard_node_limit_a", node="C"))
    metrics.set_node_loads([], np.zeros((0, 3)), np.zeros(0), np.zeros(0))
    assert not any(name.startswith("rampguard_node_") for name, _ in _samples(metrics.render()))


def test_hostile_label_values_are_escaped() -> None:
    metrics = ServiceMetrics()
    odd = 'a"b\\c\nd{e}=ü'
    metrics.set_node_loads([odd], np.ones((1, 3)), np.ones(1), np.ones(1))
    metrics.set_utilization_by_kind({odd: 0.5})
    metrics.count_action(odd, odd)
    metrics.set_mode(odd)
    s = _samples(metrics.render())
    assert _value(s, "rampguard_node_limit_a", node=odd) == 1.0
    assert _value(s, "rampguard_max_utilization", kind=odd) == 0.5
    assert _value(s, "rampguard_actions_total", type=odd, outcome=odd) == 1.0
    assert _value(s, "rampguard_mode", mode=odd) == 1.0


@pytest.mark.parametrize(("load", "limit", "headroom", "ids"), [
    (np.zeros((2, 3)), np.zeros(2), np.zeros(2), ["A"]),
    (np.zeros((1, 2)), np.zeros(1), np.zeros(1), ["A"]),
    (np.zeros(3), np.zeros(1), np.zeros(1), ["A"]),
    (np.zeros((1, 3)), np.zeros(2), np.zeros(1), ["A"]),
    (np.zeros((1, 3)), np.zeros(1), np.zeros((1, 1)), ["A"]),
])
def test_shape_mismatches_are_refused(load: np.ndarray, limit: np.ndarray,
                                      headroom: np.ndarray, ids: list[str]) -> None:
    metrics = ServiceMetrics()
    with pytest.raises(ValueError, match="shape"):
        metrics.set_node_loads(ids, load, limit, headroom)


def test_invalid_counts_and_durations() -> None:
    metrics = ServiceMetrics()
    with pytest.raises(ValueError):
        metrics.count_action("set_caps", "ok", -1)
    with pytest.raises(ValueError):
        metrics.set_telemetry_counters({"schema": -2})
    for bad in (float("nan"), float("inf"), -0.1):
        metrics.observe_tick(bad)
    metrics.observe_tick(np.float64(0.001))
    s = _samples(metrics.render())
    assert _value(s, "rampguard_tick_seconds_count") == 1
    assert _value(s, "rampguard_tick_seconds_sum") == 0.001
    assert TICK_BUCKETS_S[2] == 0.002      # the 2 ms target is a bucket edge


def _scrape(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return bytes(response.read())


def _port_is_free(port: int) -> bool:
    """Nothing listens there any more (a bind may still fail on TIME_WAIT connections)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def test_the_exporter_serves_the_registry_and_stops_cleanly() -> None:
    metrics = ServiceMetrics()
    _fill(metrics)
    with metrics.serve() as exporter:
        assert exporter.url == f"http://127.0.0.1:{exporter.port}/metrics"
        first = _samples(_scrape(exporter.url))
        assert _value(first, "rampguard_node_load_a", node="UPS-A", phase="L3") == 120.0
        assert math.isnan(_value(first, "rampguard_node_headroom_a", node="R1-PDU-B1"))
        metrics.set_servers(4, 4)
        metrics.set_mode("STEADY")
        second = _samples(_scrape(exporter.url))
        assert _value(second, "rampguard_servers_energized") == 4
        assert _value(second, "rampguard_mode", mode="STEADY") == 1.0
        assert "python_info" not in {name for name, _ in second}   # not the global registry
        port = exporter.port
    assert _port_is_free(port)
    with pytest.raises(RuntimeError, match="not started"):
        _ = exporter.port
    exporter.close()                     # closing twice is harmless


async def test_the_exporter_as_an_async_context_manager() -> None:
    metrics = ServiceMetrics()
    metrics.set_alarms(5)
    async with metrics.serve(host="127.0.0.1", port=0) as exporter:
        body = await asyncio.to_thread(_scrape, exporter.url)
        assert _value(_samples(body), "rampguard_alarms_active") == 5
        port = exporter.port
    assert _port_is_free(port)


def test_a_started_exporter_refuses_to_start_again() -> None:
    with ServiceMetrics().serve() as exporter, pytest.raises(RuntimeError, match="already"):
        exporter.start()


def test_tick_phases_recorded_beside_their_ticks() -> None:
    metrics = ServiceMetrics()
    metrics.observe_tick(0.5)
    metrics.observe_tick_phases({"drain": 0.1, "decide": 0.35, "decide_cpu": 0.002, "act": 0.05})
    metrics.observe_tick(0.2)                     # a tick whose phases were never reported
    metrics.observe_tick(0.3)
    metrics.observe_tick_phases({"drain": 0.25, "unknown": 1.0, "act": float("nan"),
                                 "decide": -1.0})
    phases = metrics.recent_tick_phases()
    assert phases == {"drain": [0.1, None, 0.25], "decide": [0.35, None, None],
                      "decide_cpu": [0.002, None, None], "act": [0.05, None, None]}
    # the same window as recent_ticks, oldest first
    assert {k: v[-1:] for k, v in metrics.recent_tick_phases(1).items()} == {
        "drain": [0.25], "decide": [None], "decide_cpu": [None], "act": [None]}
    s = _samples(metrics.render())
    assert _value(s, "rampguard_tick_phase_seconds_count", phase="drain") == 2
    assert math.isclose(_value(s, "rampguard_tick_phase_seconds_sum", phase="drain"), 0.35)
    assert _value(s, "rampguard_tick_phase_seconds_count", phase="decide") == 1
    assert ("rampguard_tick_phase_seconds_count", (("phase", "unknown"),)) not in s
