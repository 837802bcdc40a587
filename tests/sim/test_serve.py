"""`rampguard sim serve` as a test engineer runs it: a real process, real loopback Modbus TCP,
the real broker; a plain pymodbus client and a plain MQTT client on the other side."""

from __future__ import annotations

import asyncio
import json
import os
import struct
from pathlib import Path
from typing import Any

import aiomqtt
from pymodbus.client import AsyncModbusTcpClient

from tests.serve_helpers import rig_on_free_ports, start_sim, stop_sim


async def test_sim_serve_over_real_modbus_and_mqtt(tmp_path: Path, mqtt_broker: Any) -> None:
    config, pdu_port, _ = rig_on_free_ports(tmp_path)
    async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port,
                              identifier=f"test-serve-{os.getpid()}") as client:
        await client.subscribe("rampguard/agents/RIG-S01/#")
        await client.subscribe("rampguard/sim/zones/LAB/telemetry")
        proc, info = await start_sim(config, "--speed", "20", "--mqtt", mqtt_broker.url)
        try:
            assert info["event"] == "serving" and info["devices"] == 2 and info["agents"] == 4
            modbus = AsyncModbusTcpClient("127.0.0.1", port=pdu_port, timeout=2, retries=1)
            await modbus.connect()
            try:
                header = await modbus.read_input_registers(0, count=8, device_id=1)
                assert not header.isError()
                assert header.registers[:3] == [1, 2, 16]  # map v1, 2 banks, 16 outlets
                # switch outlet 1 (server 1's first PSU) on and read the relay back
                written = await modbus.write_coil(0, True, device_id=1)
                assert not written.isError()
                coils = await modbus.read_coils(0, count=16, device_id=1)
                assert coils.bits[0] and not any(coils.bits[1:16])
                # a second later (plant time) the outlet is energized and draws standby current
                await asyncio.sleep(0.5)
                live = await modbus.read_discrete_inputs(0, count=16, device_id=1)
                assert live.bits[0]
                # outlet 1's current: registers 46 + 8·banks (docs/registers.md)
                regs = await modbus.read_input_registers(46 + 8 * 2, count=2, device_id=1)
                assert not regs.isError(), regs
                outlet_a = struct.unpack(">f", struct.pack(">HH", *regs.registers))[0]
                assert outlet_a > 0.1
            finally:
                modbus.close()
            # the simulated agents and the zone sensor publish on the broker
            topics: set[str] = set()

            async def collect() -> None:
                async for message in client.messages:
                    topics.add(str(message.topic))
                    if {"rampguard/agents/RIG-S01/status",
                            "rampguard/sim/zones/LAB/telemetry"} <= topics:
                        return

            await asyncio.wait_for(collect(), timeout=30)
        finally:
            code, out = await stop_sim(proc)
    assert code == 0
    assert '"event": "stopped"' in out


async def test_sim_serve_says_its_agents_are_offline_after_sigterm(tmp_path: Path,
                                                                  mqtt_broker: Any) -> None:
    """A clean stop sets every simulated agent's retained status offline (it used to leave
    them online: the stop is a cancellation, and the cleanup gave up at its first wait; and
    a stop right after the agents said online found the MQTT link still in its connect, not
    yet CONNECTED, and skipped the goodbye)."""
    prefix = f"rampguard-test/{os.urandom(4).hex()}"
    config, _pdu, _meter = rig_on_free_ports(tmp_path, agent_prefix=prefix)
    proc, _info = await start_sim(config, "--speed", "20", "--mqtt", mqtt_broker.url)
    async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port,
                              identifier=f"test-offline-{os.getpid()}") as client:
        await client.subscribe(f"{prefix}/+/status")
        states: dict[str, str] = {}

        async def until(state: str) -> None:
            async for message in client.messages:
                states[str(message.topic)] = json.loads(message.payload)["state"]
                if len(states) == 4 and set(states.values()) == {state}:
                    return

        await asyncio.wait_for(until("online"), timeout=30)
        code, _out = await stop_sim(proc)
        await asyncio.wait_for(until("offline"), timeout=30)
    assert code == 0 and set(states.values()) == {"offline"}
