"""PHYSICS.md §8 checks 10 and 13 on the simulated plant, and the 2N cascade."""

from __future__ import annotations

import math

import numpy as np
import pytest

from controller.model import HallConfig
from kernels import plant as kp
from sim import Plant, SwitchOutlets, loads_scenario

FEED_A_LOSS = loads_scenario('name = "a"\n[[faults]]\nkind = "feed-loss"\nfeed = "A"\n').faults[0]
TOTAL_COOLING_LOSS = loads_scenario(
    'name = "c"\n[[faults]]\nkind = "cooling-unit-failure"\nzones = "*"\nunits = "all"\n'
).faults[0]
FAST_TOLERANCE = loads_scenario(
    'name = "f"\n[[faults]]\nkind = "breaker-tolerance"\nnodes = "*"\n').faults[0]


# ------------------------------------------------------------------ check 10: inrush
def outlets(plant: Plant) -> list[int]:
    return [int(o) for o in plant.topo.psu_node]


def test_check10_one_psu_does_not_trip_a_16a_c_curve_breaker(inrush_config: HallConfig) -> None:
    plant = Plant(inrush_config)
    plant.submit(SwitchOutlets(np.array(outlets(plant)[:1]), True, t_s=0.0))
    plant.run_until(60.0)
    assert plant.trips == []
    assert plant.energized_servers() == 1


def test_check10_three_psus_in_the_same_instant_trip_it(inrush_config: HallConfig) -> None:
    plant = Plant(inrush_config)
    plant.submit(SwitchOutlets(np.array(outlets(plant)), True, t_s=0.0))
    plant.step(0.1)
    assert len(plant.trips) == 1
    trip = plant.trips[0]
    assert (trip.node, trip.node_kind, trip.cause, trip.t_s) == ("R1-A-1", "bank", "inrush", 0.0)
    # 3 × 65 A / √2 = 138 A against the C-curve band middle 7.5 × 16 A = 120 A
    assert trip.current_a == pytest.approx(3 * 65 / math.sqrt(2))
    assert trip.threshold_a == pytest.approx(120.0)
    assert "3 PSU(s)" in trip.detail
    assert plant.energized_servers() == 0


@pytest.mark.parametrize("gap_s", [0.1, 0.011])
def test_check10_staggered_by_the_inrush_guard_they_do_not(inrush_config: HallConfig,
                                                           gap_s: float) -> None:
    plant = Plant(inrush_config)
    guard = float(plant.topo.inrush_guard_s[plant.topo.node_index["R1-A-1"]])
    assert guard == pytest.approx(0.1)
    for k, outlet in enumerate(outlets(plant)):
        plant.submit(SwitchOutlets(np.array([outlet]), True, t_s=k * gap_s))
    plant.run_until(120.0)
    assert plant.trips == []
    assert plant.working_servers() == 3


def test_check10_overlapping_inrush_within_its_duration_adds_up(inrush_config: HallConfig) -> None:
    # 4 ms apart: the first PSU's 10 ms inrush still flows when the third one starts
    plant = Plant(inrush_config)
    for k, outlet in enumerate(outlets(plant)):
        plant.submit(SwitchOutlets(np.array([outlet]), True, t_s=0.004 * k))
    plant.step(0.1)
    assert [(t.node, t.cause) for t in plant.trips] == [("R1-A-1", "inrush")]
    assert plant.trips[0].t_s == pytest.approx(0.008)


def test_check10_at_the_fast_end_two_psus_already_trip(inrush_config: HallConfig) -> None:
    # the conservative end of the C band is 5 × 16 A = 80 A < 2 × 46 A
    plant = Plant(inrush_config)
    plant.schedule_fault(FAST_TOLERANCE, 0.0)
    plant.submit(SwitchOutlets(np.array(outlets(plant)[:2]), True, t_s=0.0))
    plant.step(0.1)
    assert [(t.node, t.cause, t.threshold_a) for t in plant.trips] == [("R1-A-1", "inrush", 80.0)]


# ------------------------------------------------------------------ check 13: cooling
def test_check13_cooling_loss_at_1mw_takes_the_inlet_past_32c_in_2_to_4_minutes(
        cooling_config: HallConfig) -> None:
    plant = Plant(cooling_config)
    topo = plant.topo
    it_w = float(topo.server_max_w.sum())
    assert it_w == pytest.approx(1.008e6)
    assert plant._z_c_air[0] == pytest.approx(4.8e6)
    plant.submit(SwitchOutlets(topo.psu_node, True, t_s=0.0))
    plant.run_until(2400.0, 0.5)  # bring-up, then the cooling loop settles
    assert plant.zone_p_it_w[0] == pytest.approx(it_w)
    assert plant.zone_inlet_c()[0] == pytest.approx(24.0, abs=0.1)
    assert plant.zone_q_cool_w[0] == pytest.approx(it_w, rel=0.01)
    t0 = plant.t_s
    plant.schedule_fault(TOTAL_COOLING_LOSS, t0)
    plant.run_until(t0 + 60.0, 0.1)
    assert plant.zone_inlet_c()[0] < 32.0  # not in seconds
    while plant.zone_inlet_c()[0] <= 32.0 and plant.t_s < t0 + 3600:
        plant.step(0.1)
    elapsed = plant.t_s - t0
    assert 120.0 <= elapsed <= 240.0, elapsed  # 2-4 minutes, not hours
    assert plant.zone_capacity_available_w()[0] == 0.0
    # then the GPUs slow down at 89 °C and shut down at 92 °C
    while plant.first_gpu_shutdown_s is None and plant.t_s < t0 + 3600:
        plant.step(0.5)
    assert plant.first_gpu_slowdown_s is not None and plant.first_gpu_shutdown_s is not None
    assert t0 < plant.first_gpu_slowdown_s < plant.first_gpu_shutdown_s
    halted = plant.server_state == kp.SERVER_HALTED
    assert halted.any()
    assert plant.server_gpu_power_w()[halted].max() == 0.0
    kinds = [e.kind for e in plant.events]
    assert kinds.index("inlet-above-allowable") < kinds.index("gpu-slowdown") \
        < kinds.index("gpu-shutdown")


# ------------------------------------------------------------------ 2N cascade
def test_2n_cascade_losing_feed_a_trips_side_b(cascade_config: HallConfig) -> None:
    # each side at 70 % of its 16 A bank: after the loss of A, B's bank carries 140 %
    plant = Plant(cascade_config)
    topo = plant.topo
    for k, outlet in enumerate(topo.psu_node):
        plant.submit(SwitchOutlets(np.array([outlet]), True, t_s=0.1 * k))
    plant.run_until(900.0)
    bank_b = topo.node_index["R1-B-1"]
    assert plant.node_current_a()[bank_b, 0] / 16.0 == pytest.approx(0.70, abs=0.005)
    theta0 = float(plant.node_theta()[bank_b, 0])
    assert theta0 == pytest.approx(0.49, abs=0.01)
    t0 = plant.t_s
    plant.schedule_fault(FEED_A_LOSS, t0)
    plant.run_until(t0 + 600.0)
    assert [(t.node, t.cause) for t in plant.trips] == [("R1-B-1", "thermal")]
    trip = plant.trips[0]
    x = trip.current_a / 16.0
    assert x == pytest.approx(1.40, abs=0.01)
    # the trip comes exactly when the thermal image says: t = τ·ln((x² − θ0)/(x² − k²))
    expected = 60.0 * math.log((x * x - theta0) / (x * x - 1.30 ** 2))
    assert trip.t_s - t0 == pytest.approx(expected, rel=1e-6)
    assert plant.energized_servers() == 0
    assert plant.breaker_closed()[topo.node_index["R1-A-1"]]  # A is dead, not tripped
