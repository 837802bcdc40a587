"""The plant: conservation after every step, determinism, server life cycle, caps, A/B sharing,
meters and observations, the endpoint API."""

from __future__ import annotations

import math

import numpy as np
import pytest

import kernels
from controller.model import HallConfig
from controller.topology import KIND_CODE, Topology
from kernels import plant as kp
from sim import (
    QUALITY_NO_REPLY,
    QUALITY_OK,
    QUALITY_UNREACHABLE,
    Plant,
    PlantOptions,
    ResetBreakers,
    SetGpuCaps,
    SetWork,
    SwitchOutlets,
    loads_scenario,
)


def switch_all(plant: Plant, t_s: float = 0.0) -> None:
    plant.submit(SwitchOutlets(plant.topo.psu_node, True, t_s=t_s))


def switch_staggered(plant: Plant, guard_s: float = 0.1) -> None:
    """Each outlet in turn, ``guard_s`` apart (a PDU's inrush guard)."""
    for k, outlet in enumerate(plant.topo.psu_node):
        plant.submit(SwitchOutlets(np.array([outlet]), True, t_s=k * guard_s))


def check_conservation(plant: Plant) -> None:
    """Each parent's load equals the sum of its children's (per phase, VA and W); each outlet's
    load is its PSU's share; energies add up the same way."""
    assert plant.conservation_error() < 1e-9
    topo = plant.topo
    parent = topo.parent_idx
    has_parent = parent >= 0
    is_leaf = np.ones(topo.n_nodes, dtype=bool)
    is_leaf[parent[has_parent]] = False
    for values in (plant.node_power_w(), plant.node_apparent_power_va(),
                   plant.node_energy_wh()[:, None]):
        children = np.zeros_like(values)
        np.add.at(children, parent[has_parent], values[has_parent])
        inner = ~is_leaf
        scale = max(float(np.abs(values).max()), 1.0)
        assert np.abs(values[inner] - children[inner]).max() <= 1e-9 * scale


def test_conservation_after_every_step_through_bring_up_trip_and_feed_loss(
        cascade_config: HallConfig) -> None:
    plant = Plant(cascade_config, seed=3)
    switch_staggered(plant)
    plant.schedule_fault(loads_scenario(
        'name = "x"\n[[faults]]\nkind = "feed-loss"\nfeed = "A"\nat_s = 120\n').faults[0], 120.0)
    for _ in range(3000):  # 300 s: bring-up, feed A lost, B's bank trips
        plant.step(0.1)
        check_conservation(plant)
    assert [(t.node, t.cause) for t in plant.trips] == [("R1-B-1", "thermal")]


def test_conservation_on_the_demo_hall_while_everything_starts(demo_config: HallConfig,
                                                               demo_topo: Topology) -> None:
    plant = Plant(demo_config, demo_topo, seed=1)
    switch_all(plant)
    for k in range(260):  # the switch-on instant and the POST step at 20 s
        plant.step(0.1)
        if k % 4 == 0 or 195 <= k <= 205:
            check_conservation(plant)
    # the storage racks' banks trip on inrush (four 1U PSUs each); every DGX comes up
    assert {t.cause for t in plant.trips} == {"inrush"} and len(plant.trips) == 48
    assert plant.energized_servers() == int((demo_topo.server_gpus > 0).sum()) == 512
    # Σ of the roots' power is every server's input power
    roots = np.flatnonzero(demo_topo.parent_idx < 0)
    assert plant.node_power_w()[roots].sum() == pytest.approx(plant.server_power_w().sum())


def test_zone_energy_balance_and_it_energy(rig_config: HallConfig) -> None:
    plant = Plant(rig_config)
    switch_all(plant)
    t_a0 = plant.zone_t_air_c.copy()
    t_m0 = plant.zone_t_mass_c.copy()
    plant.run_until(600.0, 0.1)
    stored = (plant._z_c_air * (plant.zone_t_air_c - t_a0)
              + plant._z_c_mass * (plant.zone_t_mass_c - t_m0))
    assert stored == pytest.approx(plant.zone_e_it_j - plant.zone_e_cool_j, rel=1e-9, abs=1e-3)
    roots = np.flatnonzero(plant.topo.parent_idx < 0)
    electrical_j = plant.node_energy_wh()[roots].sum() * 3600.0
    assert plant.zone_e_it_j.sum() == pytest.approx(electrical_j, rel=2e-3)


def test_deterministic_for_a_seed(rig_config: HallConfig) -> None:
    def run(seed: int) -> tuple[object, ...]:
        plant = Plant(rig_config, seed=seed)
        switch_all(plant)
        plant.run_until(400.0, 0.1)
        obs = plant.observe()
        return (plant.server_post_s.tolist(), plant.server_boot_s.tolist(),
                plant.server_state.tolist(), plant.node_energy_wh().tolist(),
                plant.zone_t_air_c.tolist(), obs.meter_i_a.tolist(), obs.meter_p_w.tolist())

    assert run(7) == run(7)
    assert run(7)[:2] != run(8)[:2]


def test_server_life_cycle_and_durations_from_the_model(rig_config: HallConfig) -> None:
    plant = Plant(rig_config, seed=0)
    topo = plant.topo
    lo, hi = topo.server_post_s[:, 0], topo.server_post_s[:, 1]
    assert ((plant.server_post_s >= lo) & (plant.server_post_s <= hi)).all()
    assert ((plant.server_boot_s >= topo.server_boot_s[:, 0])
            & (plant.server_boot_s <= topo.server_boot_s[:, 1])).all()
    assert (plant.server_state == kp.SERVER_OFF).all()
    switch_all(plant, 1.0)
    plant.run_until(1.5)
    assert (plant.server_state == kp.SERVER_BMC).all()
    assert plant.server_power_w() == pytest.approx(topo.server_standby_w)
    plant.run_until(1.0 + topo.server_bmc_ready_s[0] + 0.2)
    assert (plant.server_state == kp.SERVER_POST).all()
    assert plant.server_power_w() == pytest.approx(topo.server_post_w)
    done = 1.0 + topo.server_bmc_ready_s + plant.server_post_s + plant.server_boot_s
    plant.run_until(float(done.max()) + 0.2)
    assert (plant.server_state == kp.SERVER_LOADED).all()
    expected = topo.server_other_max_w + topo.server_gpus * topo.server_gpu_max_w
    assert plant.server_power_w() == pytest.approx(expected)


def test_caps_are_clamped_never_applied_as_asked(rig_config: HallConfig) -> None:
    # PHYSICS §8 check 12: a cap below the minimum or above the maximum is clamped
    plant = Plant(rig_config)
    topo = plant.topo
    switch_all(plant)
    plant.run_until(400.0)
    result = plant.apply_now(SetGpuCaps(np.array([0, 1, 2]), np.array([50.0, 1000.0, 200.0])))
    assert "clamped" in result.detail
    assert plant.server_cap_w[:3].tolist() == [topo.server_gpu_min_cap_w[0],
                                               topo.server_gpu_max_w[1], 200.0]
    plant.step(0.1)
    gpu = plant.server_gpu_power_w()
    assert gpu[:3].tolist() == pytest.approx([150.0, 300.0, 200.0])
    assert plant.set_gpu_cap("RIG-S04", 180.0).ok
    plant.step(0.1)
    assert plant.server_gpu_power_w()[3] == pytest.approx(180.0)


def test_work_hold_and_release(rig_config: HallConfig) -> None:
    plant = Plant(rig_config)
    switch_all(plant)
    plant.submit(SetWork(np.arange(4), False, t_s=0.0))
    plant.run_until(400.0)
    assert (plant.server_state == kp.SERVER_IDLE).all()
    assert plant.server_power_w() == pytest.approx(plant.topo.server_idle_w)
    plant.submit(SetWork(np.arange(4), True))
    plant.step(0.1)
    assert (plant.server_state == kp.SERVER_LOADED).all()


def test_a_and_b_share_and_the_survivor_carries_everything(cascade_config: HallConfig) -> None:
    plant = Plant(cascade_config)
    topo = plant.topo
    switch_staggered(plant)
    plant.run_until(60.0)
    i_a = plant.node_current_a()
    bank_a, bank_b = topo.node_index["R1-A-1"], topo.node_index["R1-B-1"]
    assert i_a[bank_a, 0] == pytest.approx(i_a[bank_b, 0])
    per_side = 3 * 1700.0 / 2 / 0.95 / (415 / math.sqrt(3))
    assert i_a[bank_a, 0] == pytest.approx(per_side)
    plant.apply_now(SwitchOutlets(np.array([topo.node_index["R1-A-1-1"]]), False))
    assert plant.server_psus_powered().tolist() == [1, 2, 2]
    assert plant.server_state[0] == kp.SERVER_LOADED  # within the PSU hold-up: no reboot
    i_a = plant.node_current_a()
    assert i_a[topo.node_index["R1-B-1-1"], 0] == pytest.approx(
        1700.0 / 0.95 / (415 / math.sqrt(3)))
    assert plant.server_power_w()[0] == pytest.approx(1700.0)


def test_power_brake_with_fewer_psus_than_needed_to_carry(demo_config: HallConfig,
                                                          demo_topo: Topology) -> None:
    plant = Plant(demo_config, demo_topo)
    switch_all(plant)
    plant.run_until(500.0, 0.5)
    server = int(np.flatnonzero(demo_topo.server_gpus > 0)[0])  # a DGX, not a storage server
    psus = np.flatnonzero(demo_topo.psu_server == server)
    a_side = [demo_topo.psu_node[k] for k in psus if demo_topo.psu_feed[k] == 0]
    plant.apply_now(SwitchOutlets(np.array(a_side), False))
    # DGX H100: 4 of 6 PSUs carry it; on 3 the GPUs are braked to 3 × 3.3 kW
    assert plant.server_power_w()[server] == pytest.approx(3 * 3300.0)
    assert plant.server_braked()[server]


def test_trip_opens_everything_below_until_reset(inrush_config: HallConfig) -> None:
    plant = Plant(inrush_config)
    switch_all(plant)
    plant.step(0.1)
    bank = plant.topo.node_index["R1-A-1"]
    assert [t.node for t in plant.trips] == ["R1-A-1"]
    assert not plant.breaker_closed()[bank]
    assert not plant.energized()[bank:].any()
    assert plant.energized_servers() == 0
    assert plant.node_current_a()[bank].sum() == 0.0
    # reclosing re-energizes the three PSUs at once: the same inrush trips it again
    assert plant.reset_breaker("R1-A-1").ok
    assert len(plant.trips) == 2 and not plant.breaker_closed()[bank]
    # with two outlets off, a reset brings one PSU back and holds
    plant.apply_now(SwitchOutlets(plant.topo.psu_node[1:], False))
    plant.apply_now(ResetBreakers(np.array([bank])))
    assert plant.breaker_closed()[bank] and plant.energized_servers() == 1


def test_observation_with_meter_faults(rig_config: HallConfig) -> None:
    scenario = loads_scenario("""
name = "meters"
[plant]
meter_noise_x = 0.0
[[faults]]
kind = "meter-lying"
nodes = "LAB-PANEL"
factor = 0.5
at_s = 0
[[faults]]
kind = "meter-stale"
nodes = "RIG-A"
at_s = 100
[[faults]]
kind = "meter-dead"
nodes = "LAB-PANEL"
at_s = 300
duration_s = 50
[[faults]]
kind = "meter-stuck"
nodes = "RIG-A"
at_s = 380
""")
    plant = Plant(rig_config, options=scenario.plant)
    for fault in scenario.faults:
        plant.schedule_fault(fault, fault.offset_s)
    switch_all(plant)
    plant.run_until(200.0, 0.1)
    obs = plant.observe()
    topo = plant.topo
    m_pdu = int(np.flatnonzero(obs.meter_node == topo.node_index["RIG-A"])[0])
    m_panel = int(np.flatnonzero(obs.meter_node == topo.node_index["LAB-PANEL"])[0])
    assert obs.meter_t_sample_s[m_pdu] == pytest.approx(100.0)  # stale since 100 s
    assert obs.meter_t_sample_s[m_panel] == pytest.approx(200.0, abs=1.0)
    true_panel = plant.node_current_a()[topo.node_index["LAB-PANEL"]]
    assert obs.meter_i_a[m_panel] == pytest.approx(0.5 * true_panel, abs=0.02)
    assert (obs.meter_quality == QUALITY_OK).all()
    assert obs.server_agent_up.sum() == 0 or obs.server_cap_w[obs.server_agent_up].min() > 0
    plant.run_until(320.0, 0.1)
    obs = plant.observe()
    assert obs.meter_quality[m_panel] == QUALITY_NO_REPLY and math.isnan(obs.meter_i_a[m_panel, 0])
    plant.run_until(360.0, 0.1)
    assert plant.observe().meter_quality[m_panel] == QUALITY_OK
    # stale beats stuck: clear nothing, but a stuck meter alone keeps its value with fresh times
    plant.meters.stale[:] = False
    plant.run_until(390.0, 0.1)
    frozen = plant.observe().meter_i_a[m_pdu].copy()
    plant.run_until(420.0, 0.1)
    obs = plant.observe()
    assert obs.meter_i_a[m_pdu].tolist() == frozen.tolist()
    assert obs.meter_t_sample_s[m_pdu] == pytest.approx(420.0, abs=1.0)


def test_modbus_unreachable_marks_meters_and_outlets(rig_config: HallConfig) -> None:
    scenario = loads_scenario('name = "m"\n[[faults]]\nkind = "modbus-unreachable"\n'
                              'nodes = "RIG-A"\nat_s = 0\n')
    plant = Plant(rig_config)
    plant.schedule_fault(scenario.faults[0], 0.0)
    plant.step(0.1)
    obs = plant.observe()
    m_pdu = int(np.flatnonzero(obs.meter_node == plant.topo.node_index["RIG-A"])[0])
    assert obs.meter_quality[m_pdu] == QUALITY_UNREACHABLE
    assert not obs.outlet_reachable.any() and obs.outlet_node.size == 8  # used outlets


def test_meter_readings_are_noisy_and_quantized(demo_config: HallConfig,
                                                demo_topo: Topology) -> None:
    plant = Plant(demo_config, demo_topo, options=PlantOptions(meter_noise_x=0.01))
    switch_all(plant)
    plant.run_until(30.0, 0.5)
    obs = plant.observe()
    true_i = plant.node_current_a()[obs.meter_node]
    loaded = true_i > 1.0
    rel = obs.meter_i_a[loaded] / true_i[loaded] - 1.0
    assert 0.003 < rel.std() < 0.02 and abs(rel.mean()) < 0.003
    assert np.allclose(obs.meter_i_a * 100.0, np.round(obs.meter_i_a * 100.0))
    assert (obs.meter_v_v[:, 0] > 0).all()


def test_endpoint_readouts_have_units_and_shapes(rig_config: HallConfig) -> None:
    plant = Plant(rig_config)
    switch_all(plant)
    plant.run_until(400.0)
    n = plant.topo.n_nodes
    assert plant.node_current_a().shape == (n, 3)
    assert plant.node_power_w().shape == (n, 3)
    v = plant.node_voltage_v()
    panel = plant.topo.node_index["LAB-PANEL"]
    assert v[panel] == pytest.approx([415 / math.sqrt(3)] * 3)
    bank1 = plant.topo.node_index["RIG-A-1"]
    assert v[bank1, 1] == 0.0  # bank 1 is on L1 only
    assert plant.node_energy_wh()[panel] > 0
    assert plant.server_gpu_temp_c().min() > plant.zone_inlet_c().max()
    assert plant.switchable_outlets.size == 8  # the used ones: unused outlets are pruned
    assert plant.breaker_nodes.size == 4
    theta = plant.node_theta()
    assert theta.shape == (n, 3) and (theta >= 0).all()
    assert plant.switch_outlet("RIG-A-1-1", False).ok
    assert not plant.outlet_on()[plant.topo.node_index["RIG-A-1-1"]]
    refused = plant.switch_outlet("LAB-PANEL", True)
    assert not refused.ok and refused.refused == (panel,)


def test_kind_codes_stay_in_step_with_the_kernels() -> None:
    assert kernels.SERVER_STATE_NAMES[kp.SERVER_LOADED] == "loaded"
    assert KIND_CODE["outlet"] == 7


def test_single_switches_at_one_instant_act_as_one_batch(inrush_config: HallConfig) -> None:
    """An endpoint's coil writes arrive one at a time: switched one call each at the same
    instant, the PSUs' inrush adds up as if switched together (the bank trips as in
    test_trip_opens_everything_below_until_reset), and the plant keeps one inrush record for
    the instant rather than one per call (a list walked by every call: 64 s of simulator time
    for 3,000 coil writes in one step of the 32k hall)."""
    batch, single = Plant(inrush_config), Plant(inrush_config)
    batch.apply_now(SwitchOutlets(batch.topo.psu_node, True))
    for outlet in single.topo.psu_node:
        single.switch_outlet(int(outlet), True)
    assert [(t.node, t.cause) for t in single.trips] == [(t.node, t.cause) for t in batch.trips]
    assert [t.node for t in single.trips] == ["R1-A-1"]
    assert len(single._recent_inrush) == 1


def test_many_single_switches_in_one_instant_keep_one_inrush_record(
        demo_config: HallConfig, demo_topo: Topology) -> None:
    plant = Plant(demo_config, demo_topo, seed=1)
    dgx = [int(n) for k, n in enumerate(demo_topo.psu_node)
           if demo_topo.server_gpus[demo_topo.psu_server[k]] > 0][:300]
    for outlet in dgx:
        plant.switch_outlet(outlet, True)
    assert len(plant._recent_inrush) == 1 and plant._recent_inrush[0][1].size == len(dgx)
    plant.step(0.1)
    plant.switch_outlet(int(demo_topo.psu_node[-1]), True)
    assert len(plant._recent_inrush) <= 2          # earlier instants drop once their inrush ends
