"""A hostile Modbus TCP server against drivers/modbus.py's client, over real loopback TCP.

The server (raw asyncio, frame by frame) answers each request as a script says: correctly, with
random bytes, with a reply of another transaction id, unit or function, truncated (and then
silent, or closing), with a valid header around a garbage PDU, with an exception response of
any code, with the wrong register count, twice, late, or never; or it closes the connection.
Hypothesis draws the scripts, and the profiles (a meter: one request per read; a PDU with
banks and 40 outlets: two). For every read the client must end with a snapshot or a typed
:class:`~drivers.errors.DriverError`, within its guard (``requests × timeout_s + 0.25 s``, plus
slack for a loaded machine); and once the server behaves again, the client recovers and reads
the true values. Through a :class:`~drivers.modbus.ModbusPoller` every failed poll is counted
(``PollStats.errors_by_kind``, ``ModbusPoller.rejections``) and the poller never stops.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from collections.abc import Sequence

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.errors import (
    DecodeError,
    DeviceException,
    DeviceTimeout,
    DeviceUnreachable,
    DriverError,
    NotConnected,
)
from drivers.modbus import ModbusDevice, ModbusDeviceConfig, ModbusPoller
from drivers.registers import PROFILE_METER, PROFILE_PDU, Snapshot
from tests.fuzz.hostile_servers import BANKS, BEHAVIOURS, OUTLETS, TIMEOUT_S, HostileServer

#: What a loaded 2-core machine may add to a guard before we call it a hang.
SLACK_S = 1.5
TYPED = (DeviceTimeout, DeviceUnreachable, DeviceException, DecodeError)



def _config(profile: str, port: int) -> ModbusDeviceConfig:
    pdu = profile == PROFILE_PDU
    return ModbusDeviceConfig(f"HOSTILE-{profile}", port=port, unit_id=3, profile=profile,
                              banks=BANKS if pdu else 0, outlets=OUTLETS if pdu else 0,
                              actuator=pdu, timeout_s=TIMEOUT_S, backoff_initial_s=0.02,
                              backoff_max_s=0.1)


def _true_values(snap: Snapshot) -> None:
    assert math.isclose(snap["current_l1"].value, 12.5)
    assert snap.quality.value == 0


async def _recovered_read(dev: ModbusDevice, timeout_s: float = 15.0) -> Snapshot:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await dev.wait_connected(max(deadline - time.monotonic(), 0.01))
            return await dev.read()
        except DriverError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)


async def hostile_reads(profile: str, script: Sequence[str], seed: int) -> None:
    async with HostileServer(profile, deque(), random.Random(seed)) as server:
        cfg = _config(profile, server.port)
        guard_s = len(cfg.read_plan()) * TIMEOUT_S + 0.25
        async with ModbusDevice(cfg) as dev:
            await dev.wait_connected(10.0)
            server.script.extend(script)
            while server.script:
                t0 = time.monotonic()
                try:
                    snap = await dev.read()
                except NotConnected:            # the last one dropped it: it reconnects
                    await dev.wait_connected(10.0)
                except TYPED:
                    pass
                else:
                    # a read that got through (the hostile answer was discarded and a good
                    # one matched, or the request that drew it was not ours): true values
                    _true_values(snap)
                elapsed = time.monotonic() - t0
                assert elapsed < guard_s + SLACK_S, (elapsed, script)
            _true_values(await _recovered_read(dev))
            c = dev.counters
            assert c.requests >= len(script)
            assert c.reads >= 1


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.sampled_from([PROFILE_METER, PROFILE_PDU]),
       st.lists(st.sampled_from(BEHAVIOURS), min_size=1, max_size=5),
       st.integers(0, 2**32))
def test_hostile_server_errors_are_typed_bounded_and_the_client_recovers(
        profile: str, script: list[str], seed: int) -> None:
    asyncio.run(hostile_reads(profile, script, seed))


def test_each_hostile_behaviour_alone_is_a_typed_error() -> None:
    """Every misbehaviour of the server, once, on a fresh connection: the read that meets it
    fails with the error that fits (or, for a reply the client can discard, still succeeds)."""
    expected: dict[str, tuple[type[DriverError], ...]] = {
        "random": (DeviceTimeout, DeviceUnreachable, DecodeError, DeviceException),
        "wrong_tid": (DeviceTimeout,), "silent": (DeviceTimeout,), "late": (DeviceTimeout,),
        "truncated": (DeviceTimeout,), "truncated_close": (DeviceUnreachable, DeviceTimeout),
        "close": (DeviceUnreachable, DeviceTimeout),
        "exception": (DeviceException, DeviceTimeout),
        "short_count": (DecodeError,), "long_count": (DecodeError,),
        "garbage_pdu": (DeviceTimeout, DecodeError, DeviceException, DeviceUnreachable),
        "huge_length": (DeviceTimeout, DeviceUnreachable),
        # pymodbus discards a reply from another unit (a timeout); the lean client drops the
        # connection on it (a gateway that mixes up units cannot be trusted with the next one)
        "wrong_unit": (DeviceTimeout, DecodeError, DeviceUnreachable),
        "wrong_fc": (DeviceTimeout, DecodeError, DeviceUnreachable),
    }

    async def one(how: str, allowed: tuple[type[DriverError], ...]) -> None:
        async with HostileServer(PROFILE_METER, deque([how]), random.Random(7)) as server:
            cfg = _config(PROFILE_METER, server.port)
            async with ModbusDevice(cfg) as dev:
                await dev.wait_connected(10.0)
                t0 = time.monotonic()
                try:
                    await dev.read()
                except DriverError as exc:
                    assert isinstance(exc, allowed), (how, exc)
                elapsed = time.monotonic() - t0
                assert elapsed < TIMEOUT_S + 0.25 + SLACK_S, (how, elapsed)
                _true_values(await _recovered_read(dev))

    async def main() -> None:
        for how, allowed in expected.items():
            await one(how, allowed)

    asyncio.run(main())


def test_the_poller_counts_every_failed_poll_and_keeps_polling() -> None:
    script = ["silent", "short_count", "exception", "random", "close", "garbage_pdu",
              "wrong_tid", "long_count", "truncated_close", "late"] * 2

    async def main() -> None:
        async with HostileServer(PROFILE_METER, deque(), random.Random(3)) as server:
            cfg = _config(PROFILE_METER, server.port)
            async with ModbusPoller([cfg], period_s=0.05) as poller:
                stats = poller.stats[cfg.key]
                deadline = time.monotonic() + 20
                while stats.ok < 1:                                # first a good poll
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.02)
                server.script.extend(script)
                while server.script:
                    assert time.monotonic() < deadline, "the poller stopped asking"
                    await asyncio.sleep(0.02)
                ok_before = stats.ok
                while stats.ok < ok_before + 3:                    # and it recovers
                    assert time.monotonic() < deadline, "the poller did not recover"
                    await asyncio.sleep(0.02)
                errors = dict(stats.errors_by_kind)
                rejected = poller.rejections()
                assert stats.errors == sum(errors.values())
                assert stats.errors >= 10                  # each misbehaviour failed a poll
                not_connected = errors.pop("NotConnected", 0)
                assert sum(rejected.values()) == stats.errors - not_connected
                assert rejected.get("decode_error", 0) >= 2 * 2     # short and long counts
                assert rejected.get("device_timeout", 0) >= 2
                assert poller._runner is not None and not poller._runner.done()

    asyncio.run(main())
