"""The plant adapter (sim.hil.PlantView, described in docs/simulator-endpoints.md): the rig's
plant behind the endpoints, driven by the drivers over real loopback TCP and a real broker."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from controller.bindings import resolve_bindings
from controller.config import load_hall_config
from drivers.modbus import ModbusDevice
from drivers.mqtt import MqttConfig, MqttLink, Subscription
from drivers.payloads import AgentTelemetry, CapAck, CapCommand
from drivers.registers import PROFILE_PDU, Quality
from sim import Plant
from sim.endpoints import ModbusEndpoints, MqttEndpoints
from sim.faults import MeterDead
from sim.hil import PlantView

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def rig() -> tuple[Any, Any, Any]:
    config = load_hall_config(ROOT / "configs" / "rig.toml")
    plant = Plant(config)
    return config, plant, PlantView(plant)


async def test_modbus_endpoints_on_the_plant(rig: tuple[Any, Any, Any],
                                             unused_tcp_port_factory: Any) -> None:
    config, plant, view = rig
    bindings = resolve_bindings(config, plant.topo)
    ports = {p: unused_tcp_port_factory() for p in bindings.ports}
    devices = [replace(c, port=ports[c.port]) for c in bindings.modbus]
    pdu_cfg = next(c for c in devices if c.profile == PROFILE_PDU)
    panel_cfg = next(c for c in devices if c.node_id == "LAB-PANEL")
    async with ModbusEndpoints(devices, view.snapshot, view.write, refresh_period_s=None) as ep:
        async with ModbusDevice(pdu_cfg) as pdu, ModbusDevice(panel_cfg) as panel:
            await pdu.wait_connected(2.0)
            await panel.wait_connected(2.0)
            plant.run_until(1.0, dt_s=0.5)
            ep.refresh()
            snap = await pdu.read()
            assert snap.quality is Quality.GOOD and snap.outlets_on == (False,) * 16
            assert snap["voltage_l1"].value > 200 and snap["current_l1"].value == 0.0
            assert await pdu.switch_outlet(1, True) is True          # a PSU of server 1
            plant.run_until(3.0, dt_s=0.5)
            ep.refresh()
            snap = await pdu.read()
            assert snap.outlets_on[0] and snap.outlets_energized[0]
            assert snap["outlet1.power"].value > 0 and snap["bank1.current"].value > 0
            assert snap.sequence is not None and snap.sequence >= 2
            meter = await panel.read()
            assert meter["power_total"].value > 0 and meter.quality is Quality.GOOD
            with pytest.raises(Exception, match="exception 04"):
                await pdu.switch_outlet(8, True)      # RIG-A-1-8 has no PSU: not modelled
            plant.schedule_fault(MeterDead(kind="meter-dead", nodes="LAB-PANEL", at_s=3.5),
                                 at_s=3.5)
            plant.run_until(5.0, dt_s=0.5)
            ep.refresh()
            with pytest.raises(TimeoutError):
                await panel.read()                    # a dead meter answers nothing


async def test_mqtt_endpoints_on_the_plant(rig: tuple[Any, Any, Any], mqtt_broker: Any) -> None:
    config, plant, view = rig
    bindings = resolve_bindings(config, plant.topo)
    for outlet in plant.switchable_outlets:
        plant.switch_outlet(int(outlet), True)
    plant.run_until(400.0, dt_s=1.0)                  # every server booted
    root = f"rgtest/{uuid.uuid4().hex}"
    agents = [replace(a, topics=type(a.topics)(f"{root}/{a.server}")) for a in bindings.agents]
    cfg = MqttConfig(host=mqtt_broker.host, port=mqtt_broker.port)
    got: dict[str, list[Any]] = {"telemetry": [], "ack": []}
    subs = [Subscription(f"{root}/+/telemetry", AgentTelemetry,
                         lambda t, p: got["telemetry"].append(p)),
            Subscription(f"{root}/+/caps/ack", CapAck, lambda t, p: got["ack"].append(p), qos=1)]
    async with MqttLink(cfg, subscriptions=subs) as ctl:
        await ctl.wait_connected(5.0)
        async with MqttEndpoints(cfg, agents, view.agent_state, view.apply_caps,
                                 zones=plant.topo.zone_id, zone_state=view.zone_state,
                                 period_s=None, status_topic=f"{root}/sim/status") as ep:
            await ep.wait_connected(5.0)
            assert await ep.publish_telemetry() == 5          # four agents and the zone
            await ctl.publish(agents[0].topics.caps_set, CapCommand(
                v=1, id="ctl-1:000001", issuer="ctl-1", seq=1, t=time.time(),
                server=agents[0].server, cap_w=[200.0], valid_s=30.0))
            async with asyncio.timeout(15):
                while not (got["ack"] and len(got["telemetry"]) >= 4):  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
        async with MqttLink(cfg) as cleaner:
            await cleaner.wait_connected(5.0)
            for topic in [a.topics.status for a in agents] + [f"{root}/sim/status"]:
                await cleaner.publish(topic, b"", qos=1, retain=True)
    assert {t.server for t in got["telemetry"]} == {a.server for a in agents}
    assert all(len(t.gpus) == 8 for t in got["telemetry"])
    ack = got["ack"][0]
    assert ack.ok and ack.enforced_w == [200.0] * 8
    assert plant.server_cap_w[0] == 200.0


def test_a_meter_before_its_first_sample_says_its_data_are_not_valid(
        rig: tuple[Any, Any, Any]) -> None:
    """Zeros with good quality would read as an idle node: the controller would admit load on
    a reading nobody took (found by the HIL campaign, docs/campaign-hil.md)."""
    _config, plant, view = rig
    before = view.snapshot("LAB-PANEL")
    assert before is not None and before.data_valid is False
    plant.run_until(1.5, dt_s=0.5)
    after = view.snapshot("LAB-PANEL")
    assert after is not None and after.data_valid is True and after.voltage_v[0] > 200


def test_agents_report_from_one_read_of_the_plant_per_step(
        rig: tuple[Any, Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A controller switching outlets and setting caps between agent publishes must not make
    every agent re-read the whole plant: on the 32k hall that froze the simulator for 87 s
    (load run of bench_load.py). The registers still show a write at once."""
    _config, plant, view = rig
    for outlet in plant.switchable_outlets:
        plant.switch_outlet(int(outlet), True)
    plant.run_until(400.0, dt_s=1.0)                  # every server booted
    reads = 0
    observe = plant.observe

    def counted() -> Any:
        nonlocal reads
        reads += 1
        return observe()

    monkeypatch.setattr(plant, "observe", counted)
    servers = list(view.server_index)
    pdu = next(iter(view.pdus))
    for _ in range(3):
        for server in servers:
            view.write(pdu, 1, True)
            view.apply_caps(server, (300.0,))
            assert view.agent_state(server) is not None
    assert reads == 1
    assert view.snapshot(pdu) is not None and reads == 2    # a write shows in the registers
    plant.run_until(plant.t_s + 0.5, dt_s=0.5)
    state = view.agent_state(servers[0])
    assert reads == 3 and state is not None
    assert state.gpus[0].limit_w == 300.0                     # the next step shows the cap
