"""The simulator's Modbus endpoints, by raw frames over loopback: what real PDUs enforce and
pymodbus alone does not, faults, refresh, generic profiles, and the driver against them."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

import pytest

from drivers.errors import DeviceTimeout
from drivers.modbus import ModbusDevice, ModbusDeviceConfig
from drivers.registers import (
    PROFILE_METER,
    PROFILE_PDU,
    BankSnapshot,
    GenericField,
    GenericProfile,
    MeterSnapshot,
    OutletSnapshot,
    PduSnapshot,
    Quality,
    encode_float32,
)
from sim.endpoints import EndpointFault, ModbusEndpoints

PDU = ModbusDeviceConfig("R1-A", port=0, unit_id=1, profile=PROFILE_PDU, banks=2, outlets=4,
                         actuator=True, timeout_s=0.3)
METER = ModbusDeviceConfig("PANEL", port=0, unit_id=5, profile=PROFILE_METER, timeout_s=0.3)


@dataclass
class Plant:
    relays: list[bool] = field(default_factory=lambda: [False] * 4)
    writes: list[tuple[str, int, bool]] = field(default_factory=list)
    dead: set[str] = field(default_factory=set)
    broken: set[str] = field(default_factory=set)

    def snapshot(self, node: str) -> MeterSnapshot | PduSnapshot | None:
        if node in self.broken:
            raise RuntimeError("plant bug")
        if node in self.dead:
            return None
        if node == "PANEL":
            return MeterSnapshot(current_a=(20.0, 21.0, 22.0), voltage_v=(230.0,) * 3)
        return PduSnapshot(MeterSnapshot(voltage_v=(230.0,) * 3),
                           (BankSnapshot(), BankSnapshot()),
                           tuple(OutletSnapshot(relay_on=r, energized=r) for r in self.relays))

    def write(self, node: str, outlet: int, on: bool) -> bool:
        self.writes.append((node, outlet, on))
        self.relays[outlet - 1] = on
        return True


@dataclass
class Served:
    plant: Plant
    endpoints: ModbusEndpoints
    port: int


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    plant = Plant()
    async with ModbusEndpoints([PDU, METER], plant.snapshot, plant.write,
                               refresh_period_s=None) as ep:
        yield Served(plant, ep, ep.bound_port(0))


async def transact(port: int, unit: int, pdu: bytes, timeout_s: float = 1.0) -> bytes | None:
    """Send one raw Modbus TCP request; the reply's PDU, or None if none came in time."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(struct.pack(">HHHB", 7, 0, len(pdu) + 1, unit) + pdu)
        await writer.drain()
        try:
            async with asyncio.timeout(timeout_s):
                head = await reader.readexactly(7)
                tid, _, length, reply_unit = struct.unpack(">HHHB", head)
                body = await reader.readexactly(length - 1)
        except TimeoutError:
            return None
        assert (tid, reply_unit) == (7, unit)
        return body
    finally:
        writer.close()
        await writer.wait_closed()


def exception_of(reply: bytes | None, function: int) -> int:
    assert reply is not None and len(reply) == 2 and reply[0] == function | 0x80, reply
    return reply[1]


# --------------------------------------------------------------------------------------------
# What real PDUs enforce
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0x1234, 0x0001, 0xFFFF, 0x00FF])
async def test_coil_value_other_than_on_off_is_exception_03(served: Served, value: int) -> None:
    reply = await transact(served.port, 1, struct.pack(">BHH", 5, 0, value))
    assert exception_of(reply, 5) == 3
    assert served.plant.writes == []


async def test_coil_on_off_is_echoed_and_reaches_the_plant(served: Served) -> None:
    on = struct.pack(">BHH", 5, 2, 0xFF00)
    assert await transact(served.port, 1, on) == on
    off = struct.pack(">BHH", 5, 2, 0x0000)
    assert await transact(served.port, 1, off) == off
    assert served.plant.writes == [("R1-A", 3, True), ("R1-A", 3, False)]


@pytest.mark.parametrize(("function", "count"), [(4, 0), (4, 126), (3, 0), (3, 200),
                                                 (1, 0), (1, 2001), (2, 0), (2, 2001)])
async def test_read_count_out_of_range_is_exception_03(served: Served, function: int,
                                                       count: int) -> None:
    reply = await transact(served.port, 1, struct.pack(">BHH", function, 0, count))
    assert exception_of(reply, function) == 3


@pytest.mark.parametrize(("unit", "function", "address", "count"), [
    (1, 4, 76, 4),     # runs past register 77, the end of a 2-bank, 4-outlet PDU's map
    (1, 4, 78, 1),     # after it
    (5, 4, 40, 8),     # runs past register 45, the end of a meter's map
    (1, 3, 0, 1),      # no holding registers
    (1, 1, 3, 2),      # coil 5 does not exist
    (1, 2, 4, 1),
])
async def test_outside_the_map_is_exception_02(served: Served, unit: int, function: int,
                                               address: int, count: int) -> None:
    reply = await transact(served.port, unit, struct.pack(">BHH", function, address, count))
    assert exception_of(reply, function) == 2


async def test_write_outside_the_outlets_and_to_registers(served: Served) -> None:
    assert exception_of(await transact(served.port, 1, struct.pack(">BHH", 5, 4, 0xFF00)), 5) == 2
    assert exception_of(await transact(served.port, 1, struct.pack(">BHH", 6, 0, 1)), 6) == 2
    assert exception_of(await transact(served.port, 5, struct.pack(">BHH", 5, 0, 0xFF00)), 5) == 2


async def test_write_multiple_coils(served: Served) -> None:
    ok = await transact(served.port, 1, struct.pack(">BHHBB", 15, 0, 3, 1, 0b101))
    assert ok == struct.pack(">BHH", 15, 0, 3)
    assert served.plant.relays == [True, False, True, False]
    assert exception_of(await transact(served.port, 1, struct.pack(">BHHB", 15, 0, 0, 0)), 15) == 3
    bad_bytes = struct.pack(">BHHBBB", 15, 0, 3, 2, 0, 0)       # 3 coils in 2 bytes
    assert exception_of(await transact(served.port, 1, bad_bytes), 15) == 3


async def test_unknown_unit_is_the_catch_all_gateway_answer(served: Served,
                                                            caplog: pytest.LogCaptureFixture
                                                            ) -> None:
    caplog.set_level(logging.DEBUG)
    reply = await transact(served.port, 77, struct.pack(">BHH", 4, 0, 34))
    assert exception_of(reply, 4) == 0x0B
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_reads_serve_the_map(served: Served) -> None:
    reply = await transact(served.port, 5, struct.pack(">BHH", 4, 0, 46))
    assert reply is not None and reply[:2] == bytes([4, 92])
    regs = struct.unpack(">46H", reply[2:])
    assert regs[:4] == (1, 0, 0, 1)
    assert (regs[8], regs[9]) == encode_float32(20.0)
    served.plant.relays[1] = True
    served.endpoints.refresh()
    bits = await transact(served.port, 1, struct.pack(">BHH", 1, 0, 4))
    assert bits == bytes([1, 1, 0b0010])        # function 1, one byte, outlet 2 on
    states = await transact(served.port, 1, struct.pack(">BHH", 4, 34, 12))
    assert states is not None and struct.unpack(">12H", states[2:]) == (2, 0, 0, 0, 0, 0,
                                                                        2, 0, 0, 0, 0, 0)
    one = await transact(served.port, 1, struct.pack(">BHH", 4, 62, 2))   # an outlet mid-map
    assert one is not None and len(one) == 2 + 4


# --------------------------------------------------------------------------------------------
# Faults and refresh
# --------------------------------------------------------------------------------------------
async def test_silent_and_failing_devices(served: Served) -> None:
    served.endpoints.set_fault("PANEL", EndpointFault.SILENT)
    assert await transact(served.port, 5, struct.pack(">BHH", 4, 0, 34), timeout_s=0.3) is None
    served.endpoints.set_fault("PANEL", EndpointFault.DEVICE_FAILURE)
    assert exception_of(await transact(served.port, 5, struct.pack(">BHH", 4, 0, 34)), 4) == 4
    served.endpoints.set_fault("PANEL", None)
    assert (await transact(served.port, 5, struct.pack(">BHH", 4, 0, 34)) or b"")[0] == 4
    with pytest.raises(KeyError):
        served.endpoints.set_fault("NOPE", None)


async def test_dead_meter_is_silent_and_a_failing_provider_answers_04(
    served: Served, caplog: pytest.LogCaptureFixture,
) -> None:
    served.plant.dead.add("PANEL")
    served.endpoints.refresh()
    assert await transact(served.port, 5, struct.pack(">BHH", 4, 0, 34), timeout_s=0.3) is None
    served.plant.dead.clear()
    served.plant.broken.add("PANEL")
    served.endpoints.refresh()
    served.endpoints.refresh()
    assert exception_of(await transact(served.port, 5, struct.pack(">BHH", 4, 0, 34)), 4) == 4
    assert served.endpoints.stats.provider_errors == 2
    assert len([r for r in caplog.records if "provider failed" in r.getMessage()]) == 1
    served.plant.broken.clear()
    served.endpoints.refresh(["PANEL"])
    reply = await transact(served.port, 5, struct.pack(">BHH", 4, 4, 2))
    assert reply is not None and reply[0] == 4


async def test_sequence_counts_refreshes_and_background_refresh() -> None:
    plant = Plant()
    async with ModbusEndpoints([METER], plant.snapshot, refresh_period_s=0.02) as ep:
        port = ep.bound_port(0)
        first = await transact(port, 5, struct.pack(">BHH", 4, 4, 2))
        await asyncio.sleep(0.1)
        later = await transact(port, 5, struct.pack(">BHH", 4, 4, 2))
    assert first is not None and later is not None
    assert struct.unpack(">I", later[2:6])[0] >= struct.unpack(">I", first[2:6])[0] + 3



async def test_a_refresh_in_parts_refreshes_every_device_once_per_round() -> None:
    """Parts 0..n-1 in turn refresh each device exactly once (its sequence moves by one) and
    count as one refresh; a part outside 0..n-1 is refused."""
    meters = [replace(METER, node_id="PANEL", unit_id=u) for u in range(1, 8)]
    plant = Plant()
    async with ModbusEndpoints(meters, plant.snapshot, refresh_period_s=None) as ep:
        port = ep.bound_port(0)

        async def sequences() -> list[int]:
            out = []
            for cfg in meters:
                reply = await transact(port, cfg.unit_id, struct.pack(">BHH", 4, 4, 2))
                assert reply is not None
                out.append(struct.unpack(">I", reply[2:6])[0])
            return out

        ep.refresh()
        before, rounds = await sequences(), ep.stats.refreshes
        ep.refresh(part=(0, 3))
        moved = [b - a for a, b in zip(before, await sequences(), strict=True)]
        assert moved == [1, 0, 0, 1, 0, 0, 1]             # devices 0, 3, 6
        ep.refresh(part=(1, 3))
        ep.refresh(part=(2, 3))
        assert [b - a for a, b in zip(before, await sequences(), strict=True)] == [1] * 7
        assert ep.stats.refreshes == rounds + 1
        for bad in ((3, 3), (-1, 3), (0, 0)):
            with pytest.raises(ValueError, match="expected 0 <= k < n"):
                ep.refresh(part=bad)


async def test_conflicting_devices_are_refused() -> None:
    with pytest.raises(ValueError, match="dealt to both"):
        ModbusEndpoints([PDU, replace(METER, unit_id=1)], Plant().snapshot)


async def test_a_port_that_cannot_be_bound(unused_tcp_port: int) -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", unused_tcp_port)
    try:
        with pytest.raises(OSError, match="cannot listen"):
            async with ModbusEndpoints([replace(METER, port=unused_tcp_port)],
                                       Plant().snapshot):
                pass
    finally:
        blocker.close()
        await blocker.wait_closed()


async def test_shape_mismatch_answers_04(served: Served, caplog: pytest.LogCaptureFixture
                                        ) -> None:
    served.plant.relays = [False] * 3                     # the plant says 3 outlets, config 4
    served.endpoints.refresh()
    assert exception_of(await transact(served.port, 1, struct.pack(">BHH", 4, 0, 34)), 4) == 4
    assert any("does not fit" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------------------------
# The driver against the endpoints: generic profiles, silence
# --------------------------------------------------------------------------------------------
ACME = GenericProfile("acme", (
    GenericField("current_l1", 10, "uint16", "A", scale=0.01),
    GenericField("power_total", 11, "int32", "kW", word_order="little", scale=0.001),
    GenericField("voltage_l1", 13, "float32", "V"),
    GenericField("sequence", 40, "uint32", "1"),
), function=3)


async def test_generic_profile_end_to_end() -> None:
    cfg = ModbusDeviceConfig("PANEL", port=0, unit_id=9, profile=ACME, timeout_s=0.3)
    async with ModbusEndpoints([cfg], Plant().snapshot, refresh_period_s=None) as ep:
        async with ModbusDevice(replace(cfg, port=ep.bound_port(0))) as dev:
            await dev.wait_connected(2.0)
            snap = await dev.read()
            assert dev.counters.requests == 2          # two blocks: 10–14 and 40–41
    assert snap["current_l1"].value == pytest.approx(20.0)
    assert snap["power_total"].value == pytest.approx(0.0)
    assert snap["voltage_l1"].value == 230.0 and snap.sequence == 1
    assert snap.quality is Quality.GOOD


async def test_driver_times_out_on_a_silent_endpoint(served: Served) -> None:
    served.endpoints.set_fault("PANEL", EndpointFault.SILENT)
    async with ModbusDevice(replace(METER, port=served.port)) as dev:
        await dev.wait_connected(2.0)
        with pytest.raises(DeviceTimeout):
            await dev.read()


@pytest.mark.parametrize("pdu", [b"\x04", b"\x04\x00", b"\x05\x00\x01", b"\x0f\x00\x00\x00",
                                 b"\x63\x00\x00\x00\x01", b"\x2b\x0e"])
async def test_truncated_and_unknown_requests_leave_the_server_serving(served: Served,
                                                                       pdu: bytes) -> None:
    reply = await transact(served.port, 5, pdu, timeout_s=0.3)
    assert reply is None or reply[0] & 0x80          # an exception, or silence: never data
    ok = await transact(served.port, 5, struct.pack(">BHH", 4, 0, 8))
    assert ok is not None and ok[0] == 4
