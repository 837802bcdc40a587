"""Actuation only to what the config names, checked at the driver: a coil write or a command
publish outside the allowlist the controller builds from the bindings raises NotAllowed before
anything goes on the wire. Real loopback Modbus (the simulator's endpoints) and the real
broker."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from controller.bindings import (
    ResolvedBindings,
    coil_allowlist,
    command_allowlist,
    pdu_nodes,
    resolve_bindings,
)
from controller.config import load_hall_config
from controller.topology import compile_hall
from drivers import (
    DriverConfigError,
    ModbusDevice,
    MqttConfig,
    MqttLink,
    NotAllowed,
    Subscription,
    TopicAllowlist,
)
from drivers.payloads import CapCommand
from drivers.registers import BankSnapshot, MeterSnapshot, OutletSnapshot, PduSnapshot
from sim.endpoints import ModbusEndpoints
from tests.serve_helpers import rig_on_free_ports


@dataclass
class Relays:
    """The PDU behind the endpoints: every write that reached it."""

    on: list[bool] = field(default_factory=lambda: [False] * 16)
    writes: list[tuple[str, int, bool]] = field(default_factory=list)

    def snapshot(self, node: str) -> MeterSnapshot | PduSnapshot | None:
        if node != "RIG-A":
            return MeterSnapshot(current_a=(1.0, 1.0, 1.0), voltage_v=(230.0,) * 3)
        return PduSnapshot(MeterSnapshot(voltage_v=(230.0,) * 3),
                           (BankSnapshot(), BankSnapshot()),
                           tuple(OutletSnapshot(relay_on=r, energized=r) for r in self.on))

    def write(self, node: str, outlet: int, on: bool) -> bool:
        self.writes.append((node, outlet, on))
        self.on[outlet - 1] = on
        return True


@dataclass
class Rig:
    bindings: ResolvedBindings
    allowed: frozenset[tuple[str, int, int, int]]
    relays: Relays


def _bindings(path: Path) -> tuple[ResolvedBindings, Any]:
    config = load_hall_config(path)
    topo = compile_hall(config, source=str(path))
    bindings = resolve_bindings(config, topo, source=str(path))
    return bindings, pdu_nodes(config, topo)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    path, _pdu, _meter = rig_on_free_ports(tmp_path)
    bindings, layout = _bindings(path)
    relays = Relays()
    async with ModbusEndpoints(bindings.modbus, relays.snapshot, relays.write,
                               refresh_period_s=0.05):
        yield Rig(bindings, coil_allowlist(bindings, layout), relays)


def test_the_allowlists_name_what_the_config_binds() -> None:
    bindings, layout = _bindings(Path(__file__).resolve().parents[2] / "configs" / "rig.toml")
    # the rig's PDU has 16 outlets; the servers plug into 1-4 and 9-12 (coils 0-3, 8-11)
    assert coil_allowlist(bindings, layout) == frozenset(
        ("127.0.0.1", 15020, 1, c) for c in (0, 1, 2, 3, 8, 9, 10, 11))
    topics = command_allowlist(bindings)
    assert topics.exact == frozenset(f"rampguard/agents/RIG-S0{k}/caps/set" for k in range(1, 5))
    assert topics.allows("rampguard/agents/RIG-S01/caps/set")
    assert not topics.allows("rampguard/agents/RIG-S05/caps/set")
    assert not topics.allows("rampguard/agents/RIG-S01/caps/set/x")
    with pytest.raises(DriverConfigError):
        TopicAllowlist(exact=frozenset({"a/+/caps/set"}))
    with pytest.raises(DriverConfigError):
        TopicAllowlist(prefixes=("a/b",))


async def test_a_coil_write_outside_the_allowlist_never_reaches_the_pdu(rig: Rig) -> None:
    pdu = next(c for c in rig.bindings.modbus if c.actuator)
    async with ModbusDevice(pdu, allowed_coils=rig.allowed) as dev:
        await dev.wait_connected(10)
        assert await dev.switch_outlet(1, True) is True          # coil 0: named
        assert rig.relays.writes == [("RIG-A", 1, True)]
        requests = dev.counters.requests
        for outlet in (5, 8, 13, 16):                            # no server behind them
            with pytest.raises(NotAllowed, match="not in the actuation allowlist") as info:
                await dev.switch_outlet(outlet, True)
            assert info.value.target == f"{pdu.key} coil {outlet - 1}"
        assert dev.counters.requests == requests                 # nothing went on the wire
        assert dev.counters.writes_refused == 4
        assert rig.relays.writes == [("RIG-A", 1, True)]
        assert (await dev.read_outlets())[4:8] == (False,) * 4
    # the same PDU reached under a unit id the config does not bind
    other = replace(pdu, unit_id=7)
    async with ModbusDevice(other, allowed_coils=rig.allowed) as dev:
        await dev.wait_connected(10)
        with pytest.raises(NotAllowed):
            await dev.switch_outlet(2, True)
        assert dev.counters.requests == 0
    assert rig.relays.writes == [("RIG-A", 1, True)]


async def test_a_meter_only_device_cannot_be_switched_through_the_allowlist(rig: Rig) -> None:
    """A PDU bound as a meter only: its coils are not in the list (profile rampguard-pdu-v1
    would otherwise take coil writes)."""
    pdu = next(c for c in rig.bindings.modbus if c.actuator)
    meter_only = replace(pdu, actuator=False)
    async with ModbusDevice(meter_only, allowed_coils=frozenset()) as dev:
        await dev.wait_connected(10)
        with pytest.raises(NotAllowed):
            await dev.switch_outlet(1, True)
    assert rig.relays.writes == []


async def test_a_command_publish_outside_the_allowlist_never_reaches_the_broker(
        tmp_path: Path, mqtt_broker: Any) -> None:
    prefix = f"rampguard-test/{uuid.uuid4().hex[:8]}"
    path, _pdu, _meter = rig_on_free_ports(tmp_path, agent_prefix=prefix)
    bindings, _layout = _bindings(path)
    allowed = command_allowlist(bindings)
    seen: list[str] = []
    sentinel = asyncio.Event()

    def sniff(topic: str, payload: CapCommand) -> None:
        seen.append(topic)
        if payload.id == "sentinel":
            sentinel.set()

    cfg = MqttConfig(host=mqtt_broker.host, port=mqtt_broker.port)
    sniffer = MqttLink(cfg, subscriptions=[Subscription(f"{prefix}/#", CapCommand, sniff,
                                                        qos=1)])

    def command(cid: str, server: str) -> CapCommand:
        return CapCommand(v=1, t=time.time(), id=cid, issuer="ctl", seq=1, server=server,
                          cap_w=[200.0], valid_s=30.0)

    async with sniffer, MqttLink(cfg, allowed_topics=allowed) as ctl:
        await sniffer.wait_connected(10)
        await ctl.wait_connected(10)
        for topic in (f"{prefix}/RIG-S09/caps/set", f"{prefix}/RIG-S01/telemetry",
                      f"{prefix}/RIG-S01/caps/set/extra", "rampguard/agents/RIG-S01/caps/set"):
            with pytest.raises(NotAllowed, match="allowlist") as info:
                await ctl.publish(topic, command("rogue", "RIG-S01"))
            assert info.value.target == topic
        assert ctl.counters.publish_refused == 4 and ctl.counters.published == 0
        await ctl.publish(f"{prefix}/RIG-S01/caps/set", command("sentinel", "RIG-S01"))
        await asyncio.wait_for(sentinel.wait(), 15)
    # everything the refused publishes would have sent came before the sentinel
    assert seen == [f"{prefix}/RIG-S01/caps/set"]
