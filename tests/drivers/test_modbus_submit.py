"""The poller's read without a task (ModbusDevice.start_read over LeanModbusClient.submit):
the same snapshot, counters and errors as ModbusDevice.read, each outcome delivered once,
against the simulator's endpoints and scripted servers over real loopback TCP."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest

from drivers._modbus_tcp import ConnectionPool, LeanModbusClient, Reply
from drivers.errors import DeviceException, DeviceTimeout, DriverError, NotConnected
from drivers.modbus import ModbusDevice, ModbusDeviceConfig, ModbusPoller, pymodbus_client
from drivers.registers import (
    PROFILE_PDU,
    BankSnapshot,
    MeterSnapshot,
    OutletSnapshot,
    PduSnapshot,
    Snapshot,
    encode_pdu,
)
from sim.endpoints import ModbusEndpoints

FAST = {"timeout_s": 0.3, "backoff_initial_s": 0.05, "backoff_max_s": 0.2}
PDU = ModbusDeviceConfig("RIG-A", port=0, unit_id=1, profile=PROFILE_PDU, banks=2, outlets=16,
                         meter=True, actuator=True, **FAST)


def _pdu_snapshot(amps: float) -> PduSnapshot:
    outlets = tuple(OutletSnapshot(amps / 16, 230.0 * amps / 16, k % 2 == 0, k % 2 == 0)
                    for k in range(16))
    return PduSnapshot(
        MeterSnapshot(current_a=(amps, 0.1, 0.2), voltage_v=(230.0, 231.0, 229.0),
                      power_w=(230.0 * amps, 0.0, 0.0), energy_wh=42.0),
        (BankSnapshot(amps / 2, 230.0, 115.0 * amps), BankSnapshot(amps / 2, 231.0, 0.0)),
        outlets)


@pytest.fixture
async def endpoints() -> AsyncIterator[ModbusEndpoints]:
    snap = _pdu_snapshot(12.5)
    async with ModbusEndpoints([PDU], lambda node: snap, lambda n, o, on: True,
                               refresh_period_s=None) as ep:
        yield ep


class Outcomes:
    """What ``done`` was called with, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[Snapshot | None, DriverError | None]] = []
        self.event = asyncio.Event()

    def __call__(self, snapshot: Snapshot | None, error: DriverError | None) -> None:
        self.calls.append((snapshot, error))
        self.event.set()

    async def first(self, timeout_s: float = 2.0) -> tuple[Snapshot | None, DriverError | None]:
        await asyncio.wait_for(self.event.wait(), timeout_s)
        return self.calls[0]


async def test_start_read_gives_what_read_gives(endpoints: ModbusEndpoints) -> None:
    cfg = replace(PDU, port=endpoints.bound_port(PDU.port))
    async with ModbusDevice(cfg) as dev:
        await dev.wait_connected(2.0)
        assert dev.submits
        by_read = await dev.read()
        requests, reads = dev.counters.requests, dev.counters.reads
        got = Outcomes()
        dev.start_read(got)
        snapshot, error = await got.first()
        await asyncio.sleep(0.05)
    assert error is None and snapshot is not None and len(got.calls) == 1
    assert snapshot.values == by_read.values and snapshot.qualities == by_read.qualities
    assert snapshot.outlets_on == by_read.outlets_on == tuple(k % 2 == 0 for k in range(16))
    assert snapshot["current_l1"].value == 12.5
    assert dev.counters.reads == reads + 1
    assert dev.counters.requests == requests + len(cfg.read_plan()) == requests + 2
    assert dev.last_snapshot is snapshot and dev.last_error is None


async def test_start_read_while_disconnected_answers_at_once(unused_tcp_port: int) -> None:
    async with ModbusDevice(replace(PDU, port=unused_tcp_port)) as dev:
        got = Outcomes()
        dev.start_read(got)                       # before any connection: no await needed
        assert len(got.calls) == 1
        snapshot, error = got.calls[0]
    assert snapshot is None and isinstance(error, NotConnected)
    assert dev.last_error is error and dev.counters.requests == 0


async def test_a_silent_device_times_out_once_per_read(
        scripted_server: Callable[..., Awaitable[Any]]) -> None:
    """Both requests of the PDU's plan leave together and both time out; the read counts one
    timeout (as read() would, which stops at the first) and calls done once."""
    server = await scripted_server(lambda unit, pdu: None)
    async with ModbusDevice(replace(PDU, port=server.port)) as dev:
        await dev.wait_connected(2.0)
        got = Outcomes()
        dev.start_read(got)
        snapshot, error = await got.first()
        await asyncio.sleep(0.4)                  # the second request's deadline passes too
        assert len(server.requests) == 2          # both sent at once
    assert snapshot is None and isinstance(error, DeviceTimeout) and len(got.calls) == 1
    assert dev.counters.timeouts == 1 and dev.counters.requests == 2


async def test_an_exception_reply_to_the_second_block_fails_the_read(
        scripted_server: Callable[..., Awaitable[Any]]) -> None:
    image = encode_pdu(_pdu_snapshot(3.0), sequence=1, uptime_s=1.0)
    regs = [w for _start, words in image.input_registers for w in words]
    assert image.input_registers[0][0] == 0

    def respond(unit: int, pdu: bytes) -> bytes:
        fc, address, count = struct.unpack(">BHH", pdu[:5])
        if address > 0:
            return bytes([fc | 0x80, 2])          # illegal data address
        words = regs[address:address + count]
        return bytes([fc, 2 * count]) + struct.pack(f">{count}H", *words)

    server = await scripted_server(respond)
    async with ModbusDevice(replace(PDU, port=server.port)) as dev:
        await dev.wait_connected(2.0)
        got = Outcomes()
        dev.start_read(got)
        snapshot, error = await got.first()
        await asyncio.sleep(0.05)
        still_connected = dev.connected
    assert snapshot is None and isinstance(error, DeviceException)
    assert error.exception_code == 2 and len(got.calls) == 1
    assert dev.counters.exceptions == 1 and dev.counters.reads == 0
    assert still_connected and dev.last_error is error  # an exception keeps the connection


async def test_a_callback_that_raises_does_not_starve_the_others(
        scripted_server: Callable[..., Awaitable[Any]]) -> None:
    """Two units behind one connection answered in one write: the first callback's bug is
    reported to the loop's exception handler and the second still gets its reply."""
    def respond(unit: int, pdu: bytes) -> bytes:
        return bytes([4, 2]) + struct.pack(">H", unit)

    server = await scripted_server(respond)
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    pool = ConnectionPool()
    a = LeanModbusClient("127.0.0.1", server.port, 0.5, pool)
    b = LeanModbusClient("127.0.0.1", server.port, 0.5, pool)
    try:
        assert await a.connect() and await b.connect()
        got: list[Reply | Exception] = []
        done = asyncio.Event()

        def bad(reply: Reply | Exception) -> None:
            raise RuntimeError("consumer bug")

        def good(reply: Reply | Exception) -> None:
            got.append(reply)
            done.set()

        a.submit(4, 0, 1, 7, bad)
        b.submit(4, 0, 1, 9, good)
        await asyncio.wait_for(done.wait(), 2.0)
    finally:
        loop.set_exception_handler(None)
        a.close()
        b.close()
    assert isinstance(got[0], Reply) and got[0].registers == (9,)
    assert [type(c["exception"]) for c in reported] == [RuntimeError]


async def test_poller_on_pymodbus_clients_keeps_a_task_per_device(
        endpoints: ModbusEndpoints) -> None:
    cfg = replace(PDU, port=endpoints.bound_port(PDU.port))
    async with ModbusPoller([cfg], period_s=0.05, client_factory=pymodbus_client) as poller:
        assert not poller.devices[cfg.key].submits
        async with asyncio.timeout(3):
            while poller.stats[cfg.key].ok < 3:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    assert poller.latest[cfg.key]["current_l1"].value == 12.5


async def test_poller_slots_read_every_device_once_a_period(endpoints: ModbusEndpoints) -> None:
    port = endpoints.bound_port(PDU.port)
    configs = [replace(PDU, port=port)]
    seen: list[float] = []
    async with ModbusPoller(configs, period_s=0.1, phases=1,
                            on_snapshot=lambda d, s: seen.append(s.t_mono_s)) as poller:
        assert poller.devices[configs[0].key].submits
        await asyncio.sleep(1.05)
    stats = poller.stats[configs[0].key]
    assert 8 <= stats.ok <= 12 and stats.errors == 0 and stats.polls == stats.ok
    gaps = [b - a for a, b in itertools.pairwise(seen)]
    assert all(0.05 < g < 0.2 for g in gaps)


async def test_a_request_outliving_its_read_does_not_land_in_the_next_one() -> None:
    """Read 1: block 1 refused at once, block 2 never answered (its deadline 0.3 s later).
    Read 2 starts at 0.15 s, its block 2 answered 0.25 s later: read 1's timeout of block 2
    falls inside read 2 and must not fail it."""
    image = encode_pdu(_pdu_snapshot(5.0), sequence=1, uptime_s=1.0)
    regs = [w for _start, words in image.input_registers for w in words]
    seen = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal seen
        loop = asyncio.get_running_loop()
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                tid, _pid, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
                fc, address, count = struct.unpack(">BHH", await reader.readexactly(length - 1))
                seen += 1
                if seen == 1:
                    body = bytes([fc | 0x80, 4])
                elif seen == 2:
                    continue                       # never answered
                else:
                    body = bytes([fc, 2 * count]) + struct.pack(
                        f">{count}H", *regs[address:address + count])
                frame = struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body
                if seen == 4:
                    loop.call_later(0.25, writer.write, frame)
                else:
                    writer.write(frame)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with ModbusDevice(replace(PDU, port=port)) as dev:
            await dev.wait_connected(2.0)
            first, second = Outcomes(), Outcomes()
            dev.start_read(first)
            _snap, error = await first.first()
            assert isinstance(error, DeviceException)
            await asyncio.sleep(0.15)
            dev.start_read(second)
            snapshot, error = await second.first()
            await asyncio.sleep(0.3)
    finally:
        server.close()
        await server.wait_closed()
    assert error is None and snapshot is not None and snapshot["current_l1"].value == 5.0
    assert len(first.calls) == len(second.calls) == 1 and seen == 4
