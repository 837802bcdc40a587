"""ModbusDevice and ModbusPoller against the simulator's endpoints over real loopback TCP, and
against scripted raw servers for what a well-behaved server cannot do."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers import LinkState
from drivers.errors import (
    DecodeError,
    DeviceException,
    DeviceMismatch,
    DeviceTimeout,
    DeviceUnreachable,
    DriverConfigError,
    NotConnected,
    WriteNotConfirmed,
)
from drivers.modbus import (
    LOG_LINES,
    TIMEOUTS_BEFORE_DROP,
    ModbusDevice,
    ModbusDeviceConfig,
    ModbusPoller,
    pymodbus_client,
)
from drivers.registers import (
    PROFILE_METER,
    PROFILE_PDU,
    BankSnapshot,
    MeterSnapshot,
    OutletSnapshot,
    PduSnapshot,
    Quality,
    encode_meter,
)
from sim.endpoints import EndpointFault, ModbusEndpoints

FAST = {"timeout_s": 0.3, "backoff_initial_s": 0.05, "backoff_max_s": 0.2}


@dataclass
class TinyPlant:
    """A plant just big enough to drive the endpoints: relays follow writes at once."""

    banks: int = 2
    outlets: int = 16
    relays: list[bool] = field(default_factory=list)
    meter_current_a: float = 12.0
    frozen_sequence: int | None = None
    refuse_writes: bool = False
    writes: list[tuple[str, int, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.relays = [False] * self.outlets

    def snapshot(self, node: str) -> MeterSnapshot | PduSnapshot:
        if node.startswith("METER"):
            return MeterSnapshot(current_a=(self.meter_current_a, 0.0, 0.0),
                                 voltage_v=(230.0, 0.0, 0.0), power_w=(2760.0, 0.0, 0.0),
                                 sequence=self.frozen_sequence)
        on = sum(self.relays)
        return PduSnapshot(
            MeterSnapshot(current_a=(1.5 * on, 0.0, 0.0), voltage_v=(230.0, 230.0, 230.0),
                          power_w=(345.0 * on, 0.0, 0.0), energy_wh=10.0),
            tuple(BankSnapshot(0.75 * on, 230.0, 172.5 * on) for _ in range(self.banks)),
            tuple(OutletSnapshot(1.5 if r else 0.0, 345.0 if r else 0.0, r, r)
                  for r in self.relays))

    def write(self, node: str, outlet: int, on: bool) -> bool:
        self.writes.append((node, outlet, on))
        if self.refuse_writes:
            return False
        self.relays[outlet - 1] = on
        return True


PDU = ModbusDeviceConfig("RIG-A", port=0, unit_id=1, profile=PROFILE_PDU, banks=2, outlets=16,
                         meter=True, actuator=True, **FAST)
METER = ModbusDeviceConfig("METER-1", port=0, unit_id=2, profile=PROFILE_METER, **FAST)


@dataclass
class Rig:
    plant: TinyPlant
    endpoints: ModbusEndpoints

    def cfg(self, config: ModbusDeviceConfig, **changes: object) -> ModbusDeviceConfig:
        return replace(config, port=self.endpoints.bound_port(config.port), **changes)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    plant = TinyPlant()
    async with ModbusEndpoints([PDU, METER], plant.snapshot, plant.write,
                               refresh_period_s=None) as ep:
        yield Rig(plant, ep)


async def test_read_pdu_snapshot_over_loopback(rig: Rig) -> None:
    async with ModbusDevice(rig.cfg(PDU)) as dev:
        await dev.wait_connected(2.0)
        snap = await dev.read()
    assert snap.node_id == "RIG-A" and snap.profile == PROFILE_PDU
    assert snap.quality is Quality.GOOD
    assert snap.outlets_on == (False,) * 16 and snap.outlets_energized == (False,) * 16
    assert snap["voltage_l2"].value == 230.0
    assert snap.bank_breaker_open == (False, False)
    assert snap.sequence == 1 and snap.stale is False
    assert dev.counters.reads == 1 and dev.counters.requests == 2   # registers 0–121, 122–125
    assert dev.state is LinkState.CLOSED


async def test_read_meter_snapshot(rig: Rig) -> None:
    async with ModbusDevice(rig.cfg(METER)) as dev:
        await dev.wait_connected(2.0)
        snap = await dev.read()
    assert snap["current_l1"].value == 12.0 and snap["power_total"].value == 2760.0
    assert snap.outlets_on == () and dev.counters.requests == 1


async def test_switch_outlet_confirmed_by_read_back(rig: Rig) -> None:
    async with ModbusDevice(rig.cfg(PDU)) as dev:
        await dev.wait_connected(2.0)
        assert await dev.switch_outlet(3, True) is True
        assert rig.plant.writes == [("RIG-A", 3, True)]
        assert (await dev.read_outlets())[2] is True
        rig.endpoints.refresh()
        snap = await dev.read()
        assert snap.outlets_on[2] and snap.outlets_energized[2]
        assert snap["outlet3.current"].value == 1.5
        assert await dev.switch_outlet(3, False) is False
        with pytest.raises(DriverConfigError, match="outlet must be 1–16"):
            await dev.switch_outlet(17, True)


async def test_refused_write_is_exception_04(rig: Rig) -> None:
    rig.plant.refuse_writes = True
    async with ModbusDevice(rig.cfg(PDU)) as dev:
        await dev.wait_connected(2.0)
        with pytest.raises(DeviceException) as err:
            await dev.switch_outlet(1, True)
    assert err.value.exception_code == 4 and err.value.device == dev.key
    assert dev.counters.write_failures == 1 and dev.state is LinkState.CLOSED


async def test_write_not_confirmed(scripted_server: Callable[..., Awaitable[object]]) -> None:
    def respond(unit: int, pdu: bytes) -> bytes | None:
        if pdu[0] == 5:
            return pdu                                   # echoes the write ...
        if pdu[0] == 1:
            return bytes([1, 1, 0])                      # ... but the relay stays off
        return None

    server = await scripted_server(respond)
    cfg = replace(PDU, port=server.port, meter=False)    # type: ignore[attr-defined]
    async with ModbusDevice(cfg) as dev:
        await dev.wait_connected(2.0)
        with pytest.raises(WriteNotConfirmed) as err:
            await dev.switch_outlet(1, True)
    assert err.value.expected is True and err.value.observed is False


async def test_exception_replies(rig: Rig) -> None:
    unknown = rig.cfg(METER, unit_id=99)          # the catch-all device 0: gateway, no target
    async with ModbusDevice(unknown) as dev:
        await dev.wait_connected(2.0)
        with pytest.raises(DeviceException) as err:
            await dev.read()
        assert err.value.exception_code == 11 and "gateway" in str(err.value)
        assert dev.connected                         # an exception reply keeps the connection
    rig.endpoints.set_fault("METER-1", EndpointFault.DEVICE_FAILURE)
    async with ModbusDevice(rig.cfg(METER)) as dev:
        await dev.wait_connected(2.0)
        with pytest.raises(DeviceException) as err:
            await dev.read()
        assert err.value.exception_code == 4
        rig.endpoints.set_fault("METER-1", None)
        assert (await dev.read()).quality is Quality.GOOD


async def test_device_with_other_shape_is_a_mismatch(rig: Rig) -> None:
    wrong = rig.cfg(PDU, banks=1, outlets=8)
    async with ModbusDevice(wrong) as dev:
        await dev.wait_connected(2.0)
        with pytest.raises(DeviceMismatch, match="2 banks and 16 outlets"):
            await dev.read()
    assert dev.counters.decode_errors == 1


async def test_nan_and_inf_read_as_bad(rig: Rig) -> None:
    rig.plant.meter_current_a = math.nan
    rig.endpoints.refresh()
    async with ModbusDevice(rig.cfg(METER)) as dev:
        await dev.wait_connected(2.0)
        snap = await dev.read()
        assert math.isnan(snap["current_l1"].value)
        assert snap["current_l1"].quality is Quality.BAD and snap.quality is Quality.BAD
        rig.plant.meter_current_a = math.inf
        rig.endpoints.refresh()
        snap = await dev.read()
        assert snap["current_l1"].quality is Quality.BAD
        assert snap["voltage_l1"].quality is Quality.GOOD


async def test_frozen_sequence_reads_stale(rig: Rig) -> None:
    rig.plant.frozen_sequence = 7
    rig.endpoints.refresh()
    clock = [100.0]
    async with ModbusDevice(rig.cfg(METER, stale_after_s=3.0), clock=lambda: clock[0]) as dev:
        await dev.wait_connected(2.0)
        assert (await dev.read()).stale is False
        clock[0] += 3.5
        rig.endpoints.refresh()
        snap = await dev.read()
    assert snap.stale and snap.quality is Quality.STALE
    assert snap["current_l1"].quality is Quality.STALE and snap["current_l1"].value == 12.0


async def test_wrong_register_count(scripted_server: Callable[..., Awaitable[object]]) -> None:
    def respond(unit: int, pdu: bytes) -> bytes:
        _fc, _address, count = struct.unpack(">BHH", pdu[:5])
        return bytes([4, 2 * (count - 1)]) + b"\x00\x01" * (count - 1)    # one short

    server = await scripted_server(respond)
    async with ModbusDevice(replace(METER, port=server.port)) as dev:  # type: ignore[attr-defined]
        await dev.wait_connected(2.0)
        with pytest.raises(DecodeError, match="asked for 46 registers, got 45"):
            await dev.read()
        assert dev.connected and dev.counters.decode_errors == 1


async def test_device_that_never_answers_times_out_and_backs_off(
    scripted_server: Callable[..., Awaitable[object]], caplog: pytest.LogCaptureFixture,
) -> None:
    """A timeout keeps the lean client's connection (a late answer is discarded by its
    transaction id); only the TIMEOUTS_BEFORE_DROP-th in a row drops it, and reads fail fast
    until the supervisor has reconnected."""
    server = await scripted_server(lambda unit, pdu: None)
    caplog.set_level(logging.DEBUG, logger="drivers.modbus")
    assert TIMEOUTS_BEFORE_DROP == 3
    async with ModbusDevice(replace(METER, port=server.port)) as dev:  # type: ignore[attr-defined]
        await dev.wait_connected(2.0)
        t0 = time.monotonic()
        with pytest.raises(DeviceTimeout):
            await dev.read()
        assert 0.25 < time.monotonic() - t0 < 1.0
        for _ in range(TIMEOUTS_BEFORE_DROP - 2):
            assert dev.connected                      # kept after a timeout ...
            with pytest.raises(DeviceTimeout):
                await dev.read()
        assert dev.connected and dev.counters.disconnects == 0
        with pytest.raises(DeviceTimeout):
            await dev.read()                          # ... dropped after three in a row
        assert not dev.connected and dev.counters.disconnects == 1
        with pytest.raises(NotConnected):
            await dev.read()                          # ... and reads fail fast meanwhile
        await dev.wait_connected(2.0)                 # ... and it comes back, and fails again
        with pytest.raises(DeviceTimeout):
            await dev.read()
        assert dev.connected
    assert dev.counters.timeouts == 4 and dev.counters.connects == 2
    timeouts = [r for r in caplog.records if "no answer" in r.getMessage()]
    assert [r.levelno for r in timeouts] == [logging.ERROR] + [logging.DEBUG] * 3


async def test_a_late_answer_after_a_timeout_is_discarded_and_the_next_read_is_good() -> None:
    """The first request is answered 0.5 s late (after its 0.3 s timeout) with other values,
    the next ones at once: the late reply is not taken for the next request's (replies are
    matched by transaction id) and the connection stays."""
    requests = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                tid, _proto, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
                pdu = await reader.readexactly(length - 1)
                _fc, _address, count = struct.unpack(">BHH", pdu[:5])
                requests += 1
                amps = 12.0
                if requests == 1:
                    await asyncio.sleep(0.5)
                    amps = 99.0                       # the stale reply: another reading
                regs = encode_meter(MeterSnapshot(current_a=(amps, 0.0, 0.0)), sequence=requests,
                                    uptime_s=float(requests))[:count]
                body = bytes([4, 2 * count]) + struct.pack(f">{count}H", *regs)
                writer.write(struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with ModbusDevice(replace(METER, port=port)) as dev:  # type: ignore[attr-defined]
            await dev.wait_connected(2.0)
            with pytest.raises(DeviceTimeout):
                await dev.read()
            await asyncio.sleep(0.4)                  # the late answer arrives meanwhile
            second = await dev.read()
            third = await dev.read()
            assert dev.connected and dev.counters.disconnects == 0 and requests == 3
            assert second["current_l1"].value == third["current_l1"].value == 12.0
    finally:
        server.close()
        await server.wait_closed()


async def test_device_down_at_start_then_up(unused_tcp_port: int,
                                            caplog: pytest.LogCaptureFixture) -> None:
    plant = TinyPlant()
    cfg = replace(METER, port=unused_tcp_port)
    caplog.set_level(logging.DEBUG, logger="drivers.modbus")
    async with ModbusDevice(cfg) as dev:
        with pytest.raises(DeviceTimeout):
            await dev.wait_connected(0.3)
        with pytest.raises(NotConnected):
            await dev.read()
        assert dev.counters.connect_failures >= 2
        async with ModbusEndpoints([cfg], plant.snapshot, refresh_period_s=None):
            await dev.wait_connected(2.0)
            assert (await dev.read())["current_l1"].value == 12.0
    connect = [r for r in caplog.records if "cannot connect" in r.getMessage()]
    assert connect[0].levelno == logging.ERROR
    assert all(r.levelno == logging.DEBUG for r in connect[1:])
    assert any("recovered from connect" in r.getMessage() and r.levelno == logging.INFO
               for r in caplog.records)


async def test_device_dying_mid_poll_and_coming_back(rig: Rig) -> None:
    states: list[LinkState] = []
    async with ModbusPoller([rig.cfg(PDU), rig.cfg(METER)], period_s=0.05) as poller:
        dev = poller.devices[rig.cfg(PDU).key]
        dev.add_listener(states.append)
        await poller.wait_connected(2.0)
        await _until(lambda: all(s.ok >= 2 for s in poller.stats.values()))
        await rig.endpoints.stop_port(0)
        await _until(lambda: all(s.consecutive_errors >= 2 for s in poller.stats.values()))
        assert not dev.connected
        await rig.endpoints.start_port(0)
        await _until(lambda: all(s.consecutive_errors == 0 for s in poller.stats.values()),
                     timeout_s=5.0)
    stats = poller.stats[dev.key]
    assert stats.errors >= 2 and set(stats.errors_by_kind) <= {
        "NotConnected", "DeviceUnreachable", "DeviceTimeout"}
    lost = states.index(LinkState.BACKOFF)
    assert states[lost + 1] is LinkState.CONNECTING and LinkState.CONNECTED in states[lost:]
    assert dev.counters.disconnects >= 1 and dev.counters.connects >= 2


async def test_hung_device_does_not_delay_the_others(
    rig: Rig, scripted_server: Callable[..., Awaitable[object]],
) -> None:
    hung = await scripted_server(lambda unit, pdu: None)
    configs = [rig.cfg(PDU), rig.cfg(METER),
               replace(METER, node_id="METER-HUNG", port=hung.port)]  # type: ignore[attr-defined]
    seen: list[str] = []
    async with ModbusPoller(configs, period_s=0.05,
                            on_snapshot=lambda d, s: seen.append(d.key)) as poller:
        await asyncio.sleep(0.8)
    good = [poller.stats[c.key] for c in configs[:2]]
    bad = poller.stats[configs[2].key]
    assert all(s.ok >= 10 and s.errors == 0 for s in good)       # 16 ticks in 0.8 s
    assert bad.ok == 0 and bad.errors >= 1 and bad.overruns >= 4
    assert poller.latest.keys() == {c.key for c in configs[:2]}
    assert configs[2].key not in seen


async def test_poller_callback_failure_surfaces(rig: Rig) -> None:
    def boom(dev: ModbusDevice, snap: object) -> None:
        raise RuntimeError("consumer bug")

    with pytest.raises(ExceptionGroup) as err:
        async with ModbusPoller([rig.cfg(METER)], period_s=0.02, on_snapshot=boom) as poller:
            await asyncio.wait_for(poller.wait(), 2.0)
    assert err.group_contains(RuntimeError, match="consumer bug")


def test_config_validation() -> None:
    with pytest.raises(DriverConfigError, match="unit_id"):
        ModbusDeviceConfig("n", unit_id=300)
    with pytest.raises(DriverConfigError, match="has no banks"):
        ModbusDeviceConfig("n", profile=PROFILE_METER, outlets=4)
    with pytest.raises(DriverConfigError, match="unknown profile"):
        ModbusDeviceConfig("n", profile="vendor-x")
    with pytest.raises(DriverConfigError, match="timeout_s"):
        ModbusDeviceConfig("n", timeout_s=math.nan)
    with pytest.raises(DriverConfigError, match="actuator needs"):
        ModbusDeviceConfig("n", actuator=True)
    with pytest.raises(DriverConfigError, match="needs a port"):
        ModbusDevice(ModbusDeviceConfig("n", port=0))
    with pytest.raises(DriverConfigError, match="listed twice"):
        ModbusPoller([ModbusDeviceConfig("a", port=1), ModbusDeviceConfig("b", port=1)])


async def test_unreachable_is_a_connection_error(unused_tcp_port: int) -> None:
    async with ModbusDevice(replace(METER, port=unused_tcp_port)) as dev:
        with pytest.raises(ConnectionError) as err:
            await dev.read()
    assert isinstance(err.value, DeviceUnreachable) and err.value.device == dev.key


async def _until(predicate: Callable[[], bool], timeout_s: float = 3.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 (polls counters nobody signals)
            await asyncio.sleep(0.01)


async def test_poller_names_the_devices_it_cannot_reach(rig: Rig, unused_tcp_port: int) -> None:
    down = replace(METER, node_id="METER-DOWN", port=unused_tcp_port)
    async with ModbusPoller([rig.cfg(METER), down], period_s=0.1) as poller:
        with pytest.raises(DeviceTimeout, match=f"1 of 2 devices not connected.*{down.key}"):
            await poller.wait_connected(0.3)


@given(st.binary(max_size=300))
def test_register_reply_decoder_survives_hostile_bytes(data: bytes) -> None:
    from pymodbus.exceptions import ModbusIOException

    from drivers.modbus import _InputRegisters

    reply = _InputRegisters()
    try:
        reply.decode(data)
    except ModbusIOException:
        return
    assert len(reply.registers) == data[0] // 2
    assert all(0 <= r <= 0xFFFF for r in reply.registers)
    str(reply)


async def test_poller_stops_when_a_read_swallows_its_cancellation(rig: Rig) -> None:
    """Python 3.11's wait_for inside pymodbus can swallow the cancellation of a request that
    is timing out: the request returns and the poll loop carries on. The poller must stop all
    the same (found by the HIL campaign: `rampguard run` hung on SIGTERM behind a hung
    gateway, docs/campaign-hil.md)."""
    swallowed: list[int] = []

    def factory(config: ModbusDeviceConfig) -> Any:
        client = pymodbus_client(config)
        real = client.read_input_registers

        async def read(*args: Any, **kwargs: Any) -> Any:
            try:
                await asyncio.sleep(0.02)           # most of the poll loop's time is here
                return await real(*args, **kwargs)
            except asyncio.CancelledError:
                swallowed.append(1)               # what the 3.11 race does
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
                return await real(*args, **kwargs)
        client.read_input_registers = read
        return client

    poller = ModbusPoller([rig.cfg(METER)], period_s=0.001, client_factory=factory)
    await poller.__aenter__()
    try:
        await poller.wait_connected(2.0)
        while poller.stats[rig.cfg(METER).key].ok < 5:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    finally:
        async with asyncio.timeout(5):
            await poller.__aexit__(None, None, None)
    assert swallowed, "the test never landed a cancellation inside a read"


async def test_a_poller_of_many_unreachable_devices_writes_a_bounded_log(
        unused_tcp_port: int, caplog: pytest.LogCaptureFixture) -> None:
    """Thirty devices behind a port nobody listens on: the first ``LOG_LINES`` connect faults
    are written, the rest counted in one summary when the poller stops."""
    caplog.set_level(logging.INFO, logger="drivers.modbus")
    configs = [replace(METER, node_id=f"METER-{k}", unit_id=k + 1, port=unused_tcp_port)
               for k in range(30)]
    async with ModbusPoller(configs, period_s=0.1) as poller:
        await _until(lambda: all(d.counters.connect_failures >= 1
                                 for d in poller.devices.values()))
        assert poller.log_budget.lines == LOG_LINES == 20
    records = [r for r in caplog.records if r.name == "drivers.modbus"]
    errors = [r for r in records if r.levelno == logging.ERROR]
    assert len(errors) == LOG_LINES
    assert all("cannot connect" in r.getMessage() for r in errors)
    summaries = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(summaries) == 1, summaries
    assert re.fullmatch(r"modbus poller \(30 devices\): 10 more fault and recovery line\(s\) "
                        r"in \d+ s not written one by one \(over 20 per 10 s\): connect 10",
                        summaries[0]), summaries[0]
