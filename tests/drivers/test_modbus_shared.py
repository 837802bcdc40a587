"""Devices behind one gateway share one connection (drivers._modbus_tcp.ConnectionPool), over
real loopback TCP: to the simulator's endpoints, and to raw servers that record what reaches
them."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest

from drivers._modbus_tcp import ConnectionPool, LeanModbusClient
from drivers.errors import DeviceTimeout
from drivers.modbus import (
    TIMEOUTS_BEFORE_DROP,
    ModbusDevice,
    ModbusDeviceConfig,
    ModbusPoller,
    shared_lean_clients,
)
from drivers.registers import PROFILE_METER, MeterSnapshot, encode_meter
from sim.endpoints import ModbusEndpoints

FAST: dict[str, Any] = {"timeout_s": 0.3, "backoff_initial_s": 0.05, "backoff_max_s": 0.2}
UNITS = 12


def _meter(unit: int, port: int = 0) -> ModbusDeviceConfig:
    return ModbusDeviceConfig(f"METER-{unit:02d}", port=port, unit_id=unit,
                              profile=PROFILE_METER, **FAST)


def _amps(node: str) -> float:
    return float(node.split("-")[1])          # each unit reads its own number: no mix-up


class Recorder(asyncio.Protocol):
    """A raw Modbus TCP server connection that records every chunk it receives and answers
    meter reads with current = unit number, except for the units in ``silent``."""

    def __init__(self, server: RecordingServer) -> None:
        self.server = server
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connections += 1
        self.server.open.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.open.discard(self)

    def data_received(self, data: bytes) -> None:
        self.server.chunks.append(len(data))
        self.buffer += data
        out = []
        while len(self.buffer) >= 12:
            tid, _pid, length, unit = struct.unpack_from(">HHHB", self.buffer)
            pdu = bytes(self.buffer[7:6 + length])
            del self.buffer[:6 + length]
            self.server.frames += 1
            if unit in self.server.silent:
                continue
            _fc, _address, count = struct.unpack(">BHH", pdu[:5])
            regs = encode_meter(MeterSnapshot(current_a=(float(unit), 0.0, 0.0)),
                                sequence=1, uptime_s=1.0)[:count]
            body = bytes([4, 2 * count]) + struct.pack(f">{count}H", *regs)
            out.append(struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body)
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


class RecordingServer:
    def __init__(self) -> None:
        self.connections = 0
        self.open: set[Recorder] = set()
        self.chunks: list[int] = []
        self.frames = 0
        self.silent: set[int] = set()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: Recorder(self), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for conn in list(self.open):
            if conn.transport is not None:
                conn.transport.close()
        await self._server.wait_closed()


@pytest.fixture
async def recording() -> AsyncIterator[RecordingServer]:
    server = RecordingServer()
    await server.start()
    yield server
    await server.close()


async def _until(predicate: Callable[[], bool], timeout_s: float = 3.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 (polls counters nobody signals)
            await asyncio.sleep(0.01)


async def test_a_poller_reads_every_unit_of_a_gateway_over_one_socket() -> None:
    configs = [_meter(u) for u in range(1, UNITS + 1)]
    async with ModbusEndpoints(configs, lambda node: MeterSnapshot(
            current_a=(_amps(node), 0.0, 0.0)), lambda *_: False,
            refresh_period_s=None) as ep:
        port = ep.bound_port(0)
        bound = [replace(c, port=port) for c in configs]
        seen: dict[str, float] = {}
        async with ModbusPoller(bound, period_s=0.05, phases=1, on_snapshot=lambda d, s:
                                seen.__setitem__(d.key, s["current_l1"].value)) as poller:
            await _until(lambda: len(seen) == UNITS and all(
                st.ok >= 3 for st in poller.stats.values()))
            (server,) = ep._servers.values()
            assert len(server.connections) == 1           # twelve units, one socket
    assert seen == {c.key: float(c.unit_id) for c in bound}
    assert all(st.errors == 0 for st in poller.stats.values())


async def test_requests_queued_in_one_pass_leave_in_one_write(
        recording: RecordingServer) -> None:
    pool = ConnectionPool()
    clients = [LeanModbusClient("127.0.0.1", recording.port, 1.0, pool) for _ in range(UNITS)]
    assert all([await c.connect() for c in clients])
    assert recording.connections == 1 and pool.open_sockets() == 1
    replies = await asyncio.gather(*(c.read_input_registers(0, count=46, device_id=u + 1)
                                     for u, c in enumerate(clients)))
    assert recording.frames == UNITS
    assert len(recording.chunks) == 1 and recording.chunks[0] == 12 * UNITS   # one write
    for u, reply in enumerate(replies):                       # each reply to its own unit
        expected = encode_meter(MeterSnapshot(current_a=(float(u + 1), 0.0, 0.0)),
                                sequence=1, uptime_s=1.0)[:46]
        assert reply.registers == tuple(expected)
    assert len({r.registers for r in replies}) == UNITS
    for c in clients:
        c.close()
    await _until(lambda: not recording.open)          # the last client closes the socket
    assert pool.open_sockets() == 0


async def test_a_silent_unit_drops_alone_and_the_gateway_stays(
        recording: RecordingServer) -> None:
    """A hung device behind a gateway times out and, after three timeouts in a row, drops its
    link; the socket, and the other units on it, carry on."""
    recording.silent = {3}
    factory = shared_lean_clients()
    configs = [_meter(u, recording.port) for u in (1, 2, 3)]
    devices = [ModbusDevice(c, client_factory=factory) for c in configs]
    for d in devices:
        await d.__aenter__()
    try:
        for d in devices:
            await d.wait_connected(2.0)
        hung = devices[2]
        for _ in range(TIMEOUTS_BEFORE_DROP):
            results = await asyncio.gather(*(d.read() for d in devices),
                                           return_exceptions=True)
            assert isinstance(results[2], DeviceTimeout)
            assert [r["current_l1"].value for r in results[:2]] == [1.0, 2.0]  # type: ignore[index]
        assert not hung.connected and hung.counters.disconnects == 1
        assert all(d.connected for d in devices[:2])
        assert recording.connections == 1 and len(recording.open) == 1
        await hung.wait_connected(2.0)                # rejoins the same socket
        assert recording.connections == 1
    finally:
        for d in devices:
            await d.aclose()
    await _until(lambda: not recording.open)


async def test_a_lost_gateway_fails_every_unit_and_all_come_back_on_one_socket(
        recording: RecordingServer) -> None:
    factory = shared_lean_clients()
    configs = [_meter(u, recording.port) for u in range(1, 5)]
    async with ModbusPoller(configs, period_s=0.05, phases=1, client_factory=factory) as poller:
        await _until(lambda: all(st.ok >= 2 for st in poller.stats.values()))
        for conn in list(recording.open):             # the gateway drops its connection
            assert conn.transport is not None
            conn.transport.close()
        await _until(lambda: all(st.errors >= 1 for st in poller.stats.values()))
        ok_before = {k: st.ok for k, st in poller.stats.items()}
        await _until(lambda: all(st.ok > ok_before[k] + 2 for k, st in poller.stats.items()))
        assert recording.connections == 2 and len(recording.open) == 1
        assert all(d.counters.disconnects >= 1 for d in poller.devices.values())


async def test_a_connect_all_callers_gave_up_on_leaves_no_socket(
        scripted_server: Callable[..., Awaitable[object]]) -> None:
    """The first connect of a pool is shared; when every caller is cancelled while it is under
    way, the socket it opens is closed (no client is there to use it)."""
    server = await scripted_server(lambda unit, pdu: None)
    pool = ConnectionPool()
    port = server.port  # type: ignore[attr-defined]
    clients = [LeanModbusClient("127.0.0.1", port, 1.0, pool) for _ in range(3)]
    tasks = [asyncio.create_task(c.connect()) for c in clients]
    await asyncio.sleep(0)                            # the connect has started
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await _until(lambda: pool.get("127.0.0.1", port)._connecting is not None
                 and pool.get("127.0.0.1", port)._connecting.done())  # type: ignore[union-attr]
    await asyncio.sleep(0.05)
    assert pool.open_sockets() == 0 and not any(c.connected for c in clients)


async def test_each_request_times_out_at_its_own_deadline_on_one_timer(
        recording: RecordingServer) -> None:
    """The connection keeps one timer for all its requests: a short timeout queued behind
    long ones still fails on time, a long one does not fail early, answered requests leave
    nothing behind, and the timer is gone once nothing waits."""
    recording.silent = {2, 3}
    pool = ConnectionPool()
    quick = LeanModbusClient("127.0.0.1", recording.port, 0.15, pool)
    slow = LeanModbusClient("127.0.0.1", recording.port, 0.6, pool)
    assert await quick.connect() and await slow.connect()
    conn = pool.get("127.0.0.1", recording.port)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    late = slow.read_input_registers(0, count=46, device_id=3)        # queued first
    early = quick.read_input_registers(0, count=46, device_id=2)
    answered = await asyncio.gather(*(quick.read_input_registers(0, count=46, device_id=1)
                                      for _ in range(50)))
    unit_1 = tuple(encode_meter(MeterSnapshot(current_a=(1.0, 0.0, 0.0)), sequence=1,
                                uptime_s=1.0)[:46])
    assert all(r.registers == unit_1 for r in answered)
    with pytest.raises(TimeoutError, match=r"within 0\.15 s"):
        await early
    t_early = loop.time() - t0
    assert 0.15 <= t_early < 0.45 and not late.done()
    with pytest.raises(TimeoutError, match=r"within 0\.6 s"):
        await late
    assert loop.time() - t0 >= 0.6
    assert conn.pending == {} and conn._timer is None
    # the next request arms it again, and its answer leaves only a stale heap entry
    reply = await quick.read_input_registers(0, count=46, device_id=1)
    assert not reply.isError() and conn.pending == {}
    quick.close()
    slow.close()
    assert conn._timer is None and conn._deadlines == []
