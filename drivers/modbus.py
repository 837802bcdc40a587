"""Modbus TCP: one device per connection (:class:`ModbusDevice`) and a poller over many
(:class:`ModbusPoller`), both async context managers.

One strategy for the connection, and only one: pymodbus's own reconnect is off
(``reconnect_delay=0``) and a supervisor task per device connects, and after a failure waits a
capped exponential backoff with jitter (:class:`drivers._link.Backoff`) before it tries again.
The backoff is reset by a successful request, not by a successful connect, so a device that
accepts connections and never answers is retried ever more slowly too. A fault is logged once
at ERROR, its repeats at DEBUG, its recovery at INFO.

Timeouts, one rule: every request has ``timeout_s`` (pymodbus's ``timeout``, no retries); an
operation of n requests (a read, a switch with its read-back) with pymodbus's client also runs
under a guard of ``n × timeout_s + 0.25 s`` in case pymodbus does not time out. A request
that times out raises :class:`~drivers.errors.DeviceTimeout`; with pymodbus's client it drops
the connection (the stream may still carry a late answer), with the lean client only the
:data:`TIMEOUTS_BEFORE_DROP`-th timeout in a row does (it discards late answers by transaction
id); the supervisor reconnects. A read never waits for a
connection: while disconnected it raises :class:`~drivers.errors.NotConnected` at once, so a
poller never blocks on a dead device.

Every pymodbus outcome is mapped here: an exception response raises
:class:`~drivers.errors.DeviceException` (the connection stays), a wrong register count
:class:`~drivers.errors.DecodeError`, a transport failure
:class:`~drivers.errors.DeviceUnreachable`. Nothing returns ``None`` or needs ``isError()``.

pymodbus logs some of the same faults itself on the ``pymodbus`` logger (a failed connect at
WARNING, a timeout at ERROR, on every occurrence); an application that wants one line per fault
sets that logger's level, the driver never does. The default client factory is
:func:`lean_client` (:mod:`drivers._modbus_tcp`: the five functions used, one asyncio protocol,
about a quarter of pymodbus's CPU per request, which a hall of thousands of devices polled at 1
Hz needs); a :class:`ModbusPoller`'s devices share one such connection per endpoint
(:func:`shared_lean_clients`); :func:`pymodbus_client` is pymodbus's ``AsyncModbusTcpClient``,
with a register-reply decoder registered per client that unpacks a reply in one call instead of
one per register (pymodbus's), which halves that client's CPU per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import random
import struct
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar, cast

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersResponse,
    ReadInputRegistersResponse,
)

from drivers._link import Backoff, FaultLog, LinkState, LogBudget, StatefulLink, stop_task
from drivers._modbus_tcp import ConnectionPool, LeanModbusClient
from drivers.errors import (
    DecodeError,
    DeviceException,
    DeviceTimeout,
    DeviceUnreachable,
    DriverConfigError,
    DriverError,
    NotAllowed,
    NotConnected,
    WriteNotConfirmed,
)
from drivers.registers import (
    BUILTIN_PROFILES,
    FC_READ_COILS,
    FC_READ_DISCRETE_INPUTS,
    FC_READ_HOLDING_REGISTERS,
    FC_READ_INPUT_REGISTERS,
    MAX_BANKS,
    MAX_OUTLETS,
    PROFILE_METER,
    PROFILE_PDU,
    GenericProfile,
    Layout,
    Quality,
    ReadBlock,
    Snapshot,
    decode_builtin,
    decode_generic,
    plan_builtin,
    plan_generic,
)

__all__ = [
    "ClientFactory",
    "CoilAllowlist",
    "DeviceCounters",
    "LinkState",
    "ModbusClient",
    "ModbusDevice",
    "ModbusDeviceConfig",
    "ModbusPoller",
    "PollStats",
    "lean_client",
    "pymodbus_client",
    "shared_lean_clients",
]

_log = logging.getLogger(__name__)
_GUARD_S = 0.25
#: Requests in a row without an answer before the lean client's connection is dropped and
#: reconnected. It matches replies by transaction id, so a late answer to a timed-out request
#: is discarded and the stream stays usable; reconnecting at the first timeout turned a busy
#: gateway into a storm of reconnects (the 32k load run: 86,000 connects in 150 s). pymodbus's
#: client is dropped at the first timeout, as before.
TIMEOUTS_BEFORE_DROP = 3
#: A poller's devices together write at most this many fault and recovery lines per
#: ``LOG_WINDOW_S``; one summary line per window counts the rest (drivers._link.LogBudget).
LOG_LINES = 20
LOG_WINDOW_S = 10.0
_PHASE_S = 0.02         # default poll slot: polls within one slot share event-loop wake-ups
T = TypeVar("T")
_EMPTY_LAYOUT = Layout((), ())
_FC_WRITE_SINGLE_COIL = 5

#: The coils a device may write: ``(host, port, unit id, coil address)`` tuples, built by the
#: controller from the config's actuator bindings. A write to any other coil raises
#: :class:`~drivers.errors.NotAllowed` before a byte is sent. None: no allowlist (tests, tools).
CoilAllowlist = frozenset[tuple[str, int, int, int]]


# ============================================================================================
# Config
# ============================================================================================
@dataclass(frozen=True, slots=True)
class ModbusDeviceConfig:
    """One Modbus device (one unit id behind one host:port), as :mod:`controller.bindings`
    resolves it from the config. Validated on construction (:class:`DriverConfigError`).

    ``node_id`` is the node the device meters or whose outlets it switches. ``profile`` is a
    built-in profile name or a :class:`GenericProfile`. ``meter``: read its measurements;
    ``actuator``: its coils switch ``outlets`` outlets (outlet n = coil n − 1).
    ``stale_after_s``: a device whose ``sequence`` has not moved for longer reads ``STALE``.
    """

    node_id: str
    host: str = "127.0.0.1"
    port: int = 502
    unit_id: int = 1
    profile: str | GenericProfile = PROFILE_PDU
    banks: int = 0
    outlets: int = 0
    meter: bool = True
    actuator: bool = False
    timeout_s: float = 0.5
    stale_after_s: float = 3.0
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 5.0

    def __post_init__(self) -> None:
        def bad(message: str) -> DriverConfigError:
            return DriverConfigError(message, device=self.key)

        if not self.node_id or not self.host:
            raise bad("node_id and host must not be empty")
        if not (0 <= self.port <= 65535):
            raise bad(f"port must be 0–65535 (0: any free port, endpoints only), got {self.port}")
        if not (0 <= self.unit_id <= 255):
            raise bad(f"unit_id must be 0–255, got {self.unit_id}")
        for name in ("timeout_s", "stale_after_s", "backoff_initial_s", "backoff_max_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise bad(f"{name} must be a positive number, got {value!r}")
        if self.backoff_initial_s > self.backoff_max_s:
            raise bad("backoff_initial_s must not exceed backoff_max_s")
        if not (self.meter or self.actuator):
            raise bad("a device is a meter, an actuator, or both")
        if isinstance(self.profile, str):
            if self.profile not in BUILTIN_PROFILES:
                raise bad(f"unknown profile {self.profile!r}; built in: "
                          f"{', '.join(BUILTIN_PROFILES)} (or pass a GenericProfile)")
            if self.profile == PROFILE_METER and (self.banks or self.outlets):
                raise bad(f"{PROFILE_METER} has no banks or outlets")
        elif not isinstance(self.profile, GenericProfile):
            raise bad(f"profile must be a name or a GenericProfile, got {self.profile!r}")
        if not (0 <= self.banks <= MAX_BANKS and 0 <= self.outlets <= MAX_OUTLETS):
            raise bad(f"banks must be 0–{MAX_BANKS} and outlets 0–{MAX_OUTLETS}")
        if self.actuator and self.outlets < 1:
            raise bad("an actuator needs at least one outlet")

    @property
    def key(self) -> str:
        """``host:port/unit``: the device's name in logs, errors and counters."""
        return f"{self.host}:{self.port}/{self.unit_id}"

    @property
    def profile_id(self) -> str:
        return self.profile if isinstance(self.profile, str) else self.profile.id

    def read_plan(self) -> tuple[ReadBlock, ...]:
        """The requests of one :meth:`ModbusDevice.read`, in order: a built-in device is read
        whole (its outlet states come with registers 34–45); a generic one by its fields, plus
        its coils when it is an actuator."""
        if isinstance(self.profile, str):
            return plan_builtin(self.profile, self.banks, self.outlets)
        blocks = plan_generic(self.profile) if self.meter else ()
        if self.actuator:
            blocks += (ReadBlock(FC_READ_COILS, 0, self.outlets),)
        return blocks


# ============================================================================================
# The transport seam
# ============================================================================================
class ModbusResponse(Protocol):
    """What a pymodbus response offers (the subset used here)."""

    registers: Sequence[int]
    bits: Sequence[bool]
    exception_code: int
    function_code: int

    def isError(self) -> bool: ...  # noqa: N802 (pymodbus's name)


class ModbusClient(Protocol):
    """The client surface :class:`ModbusDevice` uses: pymodbus's ``AsyncModbusTcpClient``."""

    @property
    def connected(self) -> bool: ...

    async def connect(self) -> bool: ...

    def close(self) -> None: ...

    def read_input_registers(self, address: int, *, count: int = 1,
                             device_id: int = 1) -> Awaitable[Any]: ...

    def read_holding_registers(self, address: int, *, count: int = 1,
                               device_id: int = 1) -> Awaitable[Any]: ...

    def read_coils(self, address: int, *, count: int = 1, device_id: int = 1) -> Awaitable[Any]: ...

    def read_discrete_inputs(self, address: int, *, count: int = 1,
                             device_id: int = 1) -> Awaitable[Any]: ...

    def write_coil(self, address: int, value: bool, *, device_id: int = 1) -> Awaitable[Any]: ...


ClientFactory = Callable[[ModbusDeviceConfig], ModbusClient]


class _InputRegisters(ReadInputRegistersResponse):
    """pymodbus 3.16 decodes a register reply one ``struct.unpack`` per register (about half
    the client's CPU per request at 1 kHz); this decodes it in one call, with the same checks.
    Registered per client (``client.register``): pymodbus's own tables are left alone."""

    def decode(self, data: bytes) -> None:
        if not data:
            raise ModbusIOException("empty register reply", function_code=self.function_code)
        byte_count = data[0]
        if byte_count >= len(data) or byte_count % 2:
            raise ModbusIOException(f"byte_count {byte_count} does not fit {len(data)} bytes",
                                    function_code=self.function_code)
        self.registers = list(_unpack_words(byte_count // 2, data[1:1 + byte_count]))

    def __str__(self) -> str:
        # pymodbus formats every decoded reply for a debug line, enabled or not: keep it cheap
        return f"{type(self).__name__}({len(self.registers)} registers)"


class _HoldingRegisters(ReadHoldingRegistersResponse):
    decode = _InputRegisters.decode
    __str__ = _InputRegisters.__str__


@lru_cache(maxsize=128)
def _words(n: int) -> struct.Struct:
    return struct.Struct(f">{n}H")


def _unpack_words(n: int, data: bytes) -> tuple[int, ...]:
    return tuple(_words(n).unpack(data))


def pymodbus_client(config: ModbusDeviceConfig) -> ModbusClient:
    """The default factory: one ``AsyncModbusTcpClient`` per device, with pymodbus's own
    reconnect and retries off (our supervisor is the one strategy)."""
    client = AsyncModbusTcpClient(
        config.host, port=config.port, name=config.key, timeout=config.timeout_s, retries=0,
        reconnect_delay=0, reconnect_delay_max=0,
    )
    client.register(_InputRegisters)
    client.register(_HoldingRegisters)
    return client


def lean_client(config: ModbusDeviceConfig) -> ModbusClient:
    """The default factory of a device: a :class:`drivers._modbus_tcp.LeanModbusClient` with a
    connection of its own (the same surface as pymodbus's client at about a quarter of its CPU
    per request; no retries, no reconnect of its own)."""
    return cast(ModbusClient, LeanModbusClient(config.host, config.port, config.timeout_s))


def shared_lean_clients() -> ClientFactory:
    """A factory of lean clients that share one connection per endpoint (host, port): the
    default of :class:`ModbusPoller`, which makes one for its devices. The units behind one
    gateway then use one socket, and the requests of the units polled in one slot of the
    period leave in one write (docs/operations.md, "Modbus polling")."""
    pool = ConnectionPool()

    def factory(config: ModbusDeviceConfig) -> ModbusClient:
        return cast(ModbusClient, LeanModbusClient(config.host, config.port,
                                                   config.timeout_s, pool))
    return factory


# ============================================================================================
# One device
# ============================================================================================
@dataclass
class DeviceCounters:
    """Monotonic counters of one device (for metrics)."""

    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    requests: int = 0
    reads: int = 0
    timeouts: int = 0
    unreachable: int = 0
    exceptions: int = 0
    decode_errors: int = 0
    writes: int = 0
    write_failures: int = 0
    #: coil writes the allowlist refused (nothing sent)
    writes_refused: int = 0


class ModbusDevice(StatefulLink):
    """One Modbus device over its own TCP connection.

    ::

        async with ModbusDevice(config) as dev:
            await dev.wait_connected(2.0)
            snapshot = await dev.read()
            await dev.switch_outlet(3, on=True)     # confirmed by read-back

    Entering starts the connection supervisor and returns at once: a device that is down at
    start is not an error until it is used (:class:`NotConnected`). ``client_factory``,
    ``clock`` (monotonic s), ``wall_clock`` (Unix s) and ``rng`` (backoff jitter) are
    injectable; ``start_delay_s`` delays the first connect attempt. ``allowed_coils``: when
    given, a coil write to an address it does not name raises
    :class:`~drivers.errors.NotAllowed` before anything is sent (counted in
    ``counters.writes_refused``).
    """

    _link_name = "device"

    def __init__(
        self,
        config: ModbusDeviceConfig,
        *,
        client_factory: ClientFactory = lean_client,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        start_delay_s: float = 0.0,
        allowed_coils: CoilAllowlist | None = None,
        log_budget: LogBudget | None = None,
    ) -> None:
        if config.port == 0:
            raise DriverConfigError("a device to connect to needs a port (not 0)",
                                    device=config.key)
        self.config = config
        self.key = config.key
        self._allowed_coils = allowed_coils
        self.counters = DeviceCounters()
        self._start_delay_s = start_delay_s
        self._factory = client_factory
        self._clock = clock
        self._wall = wall_clock
        self._timeouts_in_row = 0
        self._backoff = Backoff(config.backoff_initial_s, config.backoff_max_s,
                                rng=rng or random.Random())  # noqa: S311 (jitter)
        self._faults = FaultLog(_log, f"modbus {config.key} ({config.node_id})", log_budget)
        self._plan = config.read_plan()
        self._client: ModbusClient | None = None
        self._init_state()
        self._lost = asyncio.Event()
        self._attempted = asyncio.Event()     # the first connect attempt has finished
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = False
        self._last_sequence: int | None = None
        self._sequence_since_s = 0.0
        self.last_snapshot: Snapshot | None = None
        self.last_error: DriverError | None = None
        self._plan_read: _PlanRead | None = None

    # -- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        if self._state is not LinkState.IDLE:
            raise RuntimeError(f"{self.key}: a ModbusDevice is entered once")
        self._client = self._factory(self.config)
        self._supervisor = asyncio.create_task(self._supervise(), name=f"modbus {self.key}")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the supervisor and close the connection (idempotent)."""
        self._closing = True
        task, self._supervisor = self._supervisor, None
        failure = await stop_task(task)
        if self._client is not None:
            self._client.close()
        self._set_state(LinkState.CLOSED)
        if failure is not None:           # the supervisor never fails on purpose: a bug
            raise failure

    # -- state (drivers._link.StatefulLink) ---------------------------------------------------
    async def wait_connected(self, timeout_s: float | None = None) -> None:
        """Wait until connected; :class:`DeviceTimeout` after ``timeout_s``."""
        await self._wait_for_connected(timeout_s, self.key)

    async def wait_first_attempt(self) -> None:
        """Wait until the first connect attempt has succeeded or failed (bounded by the
        start delay and the connect timeout)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._start_delay_s + self.config.timeout_s + _GUARD_S):
                await self._attempted.wait()

    # -- supervisor ------------------------------------------------------------------------
    async def _supervise(self) -> None:
        assert self._client is not None
        client = self._client
        if self._start_delay_s > 0:       # a poller spreads many devices' first connects
            await asyncio.sleep(self._start_delay_s)
        # the flag as well as the cancellation: on Python 3.11 the wait_for inside pymodbus's
        # connect can swallow a cancellation that lands as its own timeout fires
        while not self._closing:
            if self._state is LinkState.CONNECTED:
                await self._lost.wait()          # set by _drop after a transport failure
                self._lost.clear()
                await asyncio.sleep(self._backoff.next_s())
                continue
            self._set_state(LinkState.CONNECTING)
            error = "connection refused or timed out"
            try:
                ok = await client.connect()
            except OSError as exc:         # pymodbus maps most; a resolver error may escape
                ok, error = False, str(exc)
            if ok and client.connected:
                self.counters.connects += 1
                self._timeouts_in_row = 0
                self._faults.recovered("connect")
                self._lost.clear()
                self._set_state(LinkState.CONNECTED)
                self._attempted.set()
                continue
            client.close()
            self.counters.connect_failures += 1
            self._faults.fault("connect", "cannot connect: %s", error)
            self._set_state(LinkState.BACKOFF)
            self._attempted.set()
            await asyncio.sleep(self._backoff.next_s())

    def _drop(self, fault: str, message: str, *args: object) -> None:
        """Close the connection after a transport failure; the supervisor reconnects after
        the backoff delay."""
        self._faults.fault(fault, message, *args)
        if self._client is not None:
            self._client.close()
        if self._state is LinkState.CONNECTED:
            self.counters.disconnects += 1
            self._set_state(LinkState.BACKOFF)
            self._lost.set()

    # -- requests --------------------------------------------------------------------------
    async def _request(self, function: int, address: int, count: int,
                       write: bool | None = None) -> Sequence[int]:
        """One request, mapped: returns registers or bits, or raises one of our errors."""
        if function == _FC_WRITE_SINGLE_COIL:
            self._check_allowed(address)
        client = self._ready_client(address)
        unit = self.config.unit_id
        call: Awaitable[Any]
        if function == FC_READ_INPUT_REGISTERS:
            call = client.read_input_registers(address, count=count, device_id=unit)
        elif function == FC_READ_HOLDING_REGISTERS:
            call = client.read_holding_registers(address, count=count, device_id=unit)
        elif function == FC_READ_COILS:
            call = client.read_coils(address, count=count, device_id=unit)
        elif function == FC_READ_DISCRETE_INPUTS:
            call = client.read_discrete_inputs(address, count=count, device_id=unit)
        elif function == _FC_WRITE_SINGLE_COIL and write is not None:
            call = client.write_coil(address, write, device_id=unit)
        else:  # pragma: no cover - a bug in a plan
            raise DriverConfigError(f"unsupported function {function}", device=self.key)
        self.counters.requests += 1
        try:
            response = await call         # pymodbus's timeout bounds it; see _guarded
        except Exception as exc:
            raise self._failure(client, exc, address) from exc
        return self._mapped(response, function, address, count)

    def _ready_client(self, address: int) -> ModbusClient:
        """The client, connected, or :class:`NotConnected` (counted; a client found dead
        while the state says connected is dropped)."""
        client = self._client
        if client is None or self._state is not LinkState.CONNECTED or not client.connected:
            if self._state is LinkState.CONNECTED:
                self._drop("lost", "connection lost")
            self.counters.unreachable += 1
            raise NotConnected(f"not connected ({self._state.value})", device=self.key,
                               register=address)
        return client

    def _failure(self, client: ModbusClient, exc: Exception, address: int) -> DriverError:
        """A request that raised, mapped (counted, and the connection dropped where the
        rules say so): :class:`DeviceTimeout` or :class:`DeviceUnreachable`."""
        # pymodbus: ModbusIOException (no answer in time, or an answer that does not
        # match the request), ConnectionException (not connected); OSError from asyncio.
        if client.connected and _is_no_answer(exc):
            self.counters.timeouts += 1
            self._timeouts_in_row += 1
            if not isinstance(client, LeanModbusClient) or \
                    self._timeouts_in_row >= TIMEOUTS_BEFORE_DROP:
                self._drop("timeout", "no answer within %.3g s", self.config.timeout_s)
            else:
                self._faults.fault("timeout", "no answer within %.3g s",
                                   self.config.timeout_s)
            return DeviceTimeout(f"no answer within {self.config.timeout_s} s",
                                 device=self.key, register=address)
        self.counters.unreachable += 1
        self._drop("lost", "transport failed: %s: %s", type(exc).__name__, exc)
        return DeviceUnreachable(f"transport failed: {type(exc).__name__}: {exc}",
                                 device=self.key, register=address)

    def _mapped(self, response: Any, function: int, address: int,
                count: int) -> Sequence[int]:
        """A reply, mapped: its registers or bits, or :class:`DeviceException` /
        :class:`DecodeError` (counted)."""
        self._timeouts_in_row = 0
        if response.isError():
            self.counters.exceptions += 1
            code = int(getattr(response, "exception_code", 0))
            self._faults.fault(f"exception {code}", "exception %02d for function %d at %d",
                               code, function, address)
            raise DeviceException(f"function {function} at {address}", exception_code=code,
                                  function_code=function, device=self.key, register=address)
        if function in (FC_READ_COILS, FC_READ_DISCRETE_INPUTS, _FC_WRITE_SINGLE_COIL):
            bits = list(response.bits)
            if len(bits) < (1 if function == 5 else count):
                self.counters.decode_errors += 1
                raise DecodeError(f"function {function}: expected {count} bits, got "
                                  f"{len(bits)}", device=self.key, register=address)
            return bits[:count]   # bit replies are padded to a multiple of 8
        registers: Sequence[int] = response.registers
        if len(registers) != count:
            self.counters.decode_errors += 1
            self._faults.fault("count", "asked %d registers at %d, got %d", count, address,
                               len(registers))
            raise DecodeError(f"asked for {count} registers, got {len(registers)}",
                              device=self.key, register=address)
        return registers

    async def _guarded(self, operation: Awaitable[T], requests: int) -> T:
        """Run an operation of ``requests`` requests under one guard of
        ``requests × timeout_s + 0.25 s``: pymodbus times each request out itself; the guard
        only catches the case where it does not. The lean client's own timer always fires (one
        per request), so its operations run without the guard (a timer and a context manager
        less per poll: about a tenth of a poll's CPU)."""
        if isinstance(self._client, LeanModbusClient):
            return await operation
        try:
            async with asyncio.timeout(requests * self.config.timeout_s + _GUARD_S):
                return await operation
        except DeviceTimeout:
            raise
        except TimeoutError:
            self.counters.timeouts += 1
            self._drop("timeout", "no answer within %.3g s (guard)", self.config.timeout_s)
            raise DeviceTimeout(f"no answer within {self.config.timeout_s} s",
                                device=self.key) from None

    async def read(self) -> Snapshot:
        """Read the whole device (as few requests as its map allows) into a :class:`Snapshot`.

        Raises :class:`NotConnected` at once while disconnected, else whatever a request
        raises (:class:`DeviceTimeout`, :class:`DeviceUnreachable`, :class:`DeviceException`,
        :class:`DecodeError`, :class:`~drivers.errors.DeviceMismatch`).
        """
        return await self._guarded(self._read(), len(self._plan))

    async def _read(self) -> Snapshot:
        blocks: dict[tuple[int, int], Sequence[int]] = {}
        try:
            for blk in self._plan:
                blocks[(blk.function, blk.address)] = await self._request(
                    blk.function, blk.address, blk.count)
            return self._finish_read(blocks)
        except DriverError as exc:
            self.last_error = exc
            raise

    @property
    def submits(self) -> bool:
        """Whether :meth:`start_read` can be used (the client is the lean one)."""
        return isinstance(self._client, LeanModbusClient)

    def start_read(self, done: Callable[[Snapshot | None, DriverError | None], None]) -> None:
        """A whole-device read like :meth:`read`, without a task: every request of the read
        plan leaves now, and ``done(snapshot, None)`` or ``done(None, error)`` is called once
        from the reply path (at once when nothing can be sent), with the same counters,
        faults and errors as :meth:`read`. Needs the lean client (:attr:`submits`); after
        the first failed request of a read, the outcomes of its other requests are not
        counted (as :meth:`read`, which would not have sent them). ``done`` must not raise."""
        plan = self._plan
        try:
            client = cast(LeanModbusClient, self._ready_client(plan[0].address))
        except DriverError as exc:
            self.last_error = exc
            done(None, exc)
            return
        state = self._plan_read
        if state is None or state.outstanding:   # none yet, or requests of one still out
            state = self._plan_read = _PlanRead(self)
        state.start(client, done)
        unit = self.config.unit_id
        for k, blk in enumerate(plan):
            if state.over:                  # failed at once (the connection went meanwhile)
                break
            self.counters.requests += 1
            state.outstanding += 1
            client.submit(blk.function, blk.address, blk.count, unit, state.sinks[k])

    def _finish_read(self, blocks: Mapping[tuple[int, int], Sequence[int]]) -> Snapshot:
        """Decode a whole-device read and keep its bookkeeping."""
        try:
            snapshot = self._decode(blocks)
        except DecodeError as exc:
            self.counters.decode_errors += 1
            self._faults.fault(type(exc).__name__, "%s", exc.message)
            raise
        self.counters.reads += 1
        self._backoff.reset()
        self._faults.recovered()
        self.last_error = None
        self.last_snapshot = snapshot
        return snapshot

    def _decode(self, blocks: Mapping[tuple[int, int], Sequence[int]]) -> Snapshot:
        cfg = self.config
        now, wall = self._clock(), self._wall()
        snapshot: Snapshot
        if isinstance(cfg.profile, str):
            snapshot = decode_builtin(cfg.profile, blocks, banks=cfg.banks, outlets=cfg.outlets,
                                      t_mono_s=now, t_wall_s=wall, device=self.key,
                                      node_id=cfg.node_id)
        else:
            if cfg.meter:
                snapshot = decode_generic(cfg.profile, blocks, t_mono_s=now, t_wall_s=wall,
                                          device=self.key, node_id=cfg.node_id)
            else:
                snapshot = Snapshot(device=cfg.key, profile=cfg.profile_id, t_mono_s=now,
                                    t_wall_s=wall, layout=_EMPTY_LAYOUT, values=(),
                                    qualities=(), node_id=cfg.node_id)
            if cfg.actuator:
                coils = blocks[(FC_READ_COILS, 0)]
                snapshot = replace(snapshot, outlets_on=tuple(bool(b) for b in coils))
        if snapshot.sequence is not None:
            if snapshot.sequence != self._last_sequence:
                self._last_sequence = snapshot.sequence
                self._sequence_since_s = now
            elif now - self._sequence_since_s > cfg.stale_after_s:
                snapshot = replace(snapshot, stale=True)
        return snapshot

    async def read_outlets(self) -> tuple[bool, ...]:
        """The relay state of every outlet (coils), as read back now."""
        self._need_outlets()
        bits = await self._guarded(self._request(FC_READ_COILS, 0, self.config.outlets), 1)
        return tuple(bool(b) for b in bits)

    async def switch_outlet(self, outlet: int, on: bool) -> bool:
        """Switch outlet ``outlet`` (1-based) and confirm by reading its coil back.

        Returns the read-back state (equal to ``on``); raises :class:`WriteNotConfirmed` when
        the read-back disagrees, or any request error. The caller audits before and after.
        """
        self._need_outlets()
        if not (isinstance(outlet, int) and 1 <= outlet <= self.config.outlets):
            raise DriverConfigError(f"outlet must be 1–{self.config.outlets}, got {outlet!r}",
                                    device=self.key)
        self.counters.writes += 1
        return await self._guarded(self._switch(outlet, bool(on)), 2)

    async def _switch(self, outlet: int, on: bool) -> bool:
        coil = outlet - 1
        try:
            echo = await self._request(5, coil, 1, write=bool(on))
            if bool(echo[0]) != bool(on):
                raise WriteNotConfirmed(f"outlet {outlet}: the write echo disagrees",
                                        expected=bool(on), observed=bool(echo[0]),
                                        device=self.key, register=coil)
            back = await self._request(FC_READ_COILS, coil, 1)
            if bool(back[0]) != bool(on):
                raise WriteNotConfirmed(f"outlet {outlet}: the relay did not follow",
                                        expected=bool(on), observed=bool(back[0]),
                                        device=self.key, register=coil)
        except DriverError:
            self.counters.write_failures += 1
            raise
        return bool(back[0])

    def _check_allowed(self, coil: int) -> None:
        cfg = self.config
        allowed = self._allowed_coils
        if allowed is not None and (cfg.host, cfg.port, cfg.unit_id, coil) not in allowed:
            self.counters.writes_refused += 1
            self._faults.fault(f"refused {coil}", "coil %d write refused: not in the "
                               "actuation allowlist (nothing sent)", coil)
            raise NotAllowed(f"coil {coil} is not in the actuation allowlist; nothing sent",
                             target=f"{self.key} coil {coil}", device=self.key,
                             unit_id=cfg.unit_id, register=coil)

    def _need_outlets(self) -> None:
        if not self.config.actuator and self.config.profile != PROFILE_PDU:
            raise DriverConfigError("this device has no switchable outlets", device=self.key)
        if self.config.outlets < 1:
            raise DriverConfigError("this device has no outlets", device=self.key)


class _PlanRead:
    """A :meth:`ModbusDevice.start_read`: the blocks answered so far, and one sink per block
    of the plan. Kept by the device and used again for its next read once none of its
    requests is still out (a request outliving its read, a second block still waiting for
    its deadline after the first failed, must not land in the next read)."""

    __slots__ = ("blocks", "client", "dev", "done", "left", "outstanding", "over", "sinks")

    def __init__(self, dev: ModbusDevice) -> None:
        self.dev = dev
        self.outstanding = 0
        self.over = True
        self.sinks = [functools.partial(self._reply, k) for k in range(len(dev._plan))]

    def start(self, client: LeanModbusClient,
              done: Callable[[Snapshot | None, DriverError | None], None]) -> None:
        self.client, self.done = client, done
        self.blocks: dict[tuple[int, int], Sequence[int]] = {}
        self.left = len(self.sinks)
        self.over = False

    def _reply(self, k: int, reply: Any) -> None:
        self.outstanding -= 1
        if self.over:
            return
        dev = self.dev
        blk = dev._plan[k]
        try:
            if isinstance(reply, Exception):
                self.over = True
                raise dev._failure(self.client, reply, blk.address) from reply
            self.blocks[(blk.function, blk.address)] = dev._mapped(
                reply, blk.function, blk.address, blk.count)
            self.left -= 1
            if self.left:
                return
            self.over = True
            snapshot = dev._finish_read(self.blocks)
        except DriverError as exc:
            self.over = True
            dev.last_error = exc
            self.done(None, exc)
            return
        self.done(snapshot, None)


@functools.lru_cache(maxsize=64)
def _snake(name: str) -> str:
    """``DeviceTimeout`` -> ``device_timeout``."""
    return "".join(f"_{c.lower()}" if c.isupper() and k else c.lower()
                   for k, c in enumerate(name))


def _is_no_answer(exc: Exception) -> bool:
    text = str(exc).lower()
    return "no response" in text or "timeout" in text or isinstance(exc, TimeoutError)


# ============================================================================================
# Many devices
# ============================================================================================
@dataclass
class PollStats:
    """Per-device polling statistics (counters are monotonic)."""

    polls: int = 0
    ok: int = 0
    errors: int = 0
    overruns: int = 0
    consecutive_errors: int = 0
    last_ok_mono_s: float = -math.inf
    last_latency_s: float = math.nan
    last_error: DriverError | None = None
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    #: snapshots delivered whose worst quality was not GOOD, by its label (``stale``,
    #: ``implausible``, ``bad``): the reads a consumer must not trust
    untrusted_by_quality: dict[str, int] = field(default_factory=dict)


class ModbusPoller:
    """Polls many devices concurrently every ``period_s``, keeping the latest snapshot and
    statistics of each.

    Devices are dealt in turn to ``phases`` equally spaced slots of the period (default one
    slot per 20 ms; 1: all at once), so that a gateway's units spread over the period. On the
    lean client (the default), one task per slot wakes once a period and starts the reads of
    all its devices (:meth:`ModbusDevice.start_read`: every request sent at once, no task or
    future per request); each read's outcome is recorded from the reply path as it comes, so
    a slow or hung device delays nobody but itself: its read is bounded by its timeout, and
    a period that finds it still waiting is counted as an overrun for it, not queued. A device
    on another client (pymodbus's) has a task of its own on the same schedule. First connects
    are spread the same way over the period (at most 1 s), so a thousand devices do not
    overflow one listen backlog.

    ``on_snapshot(device, snapshot)`` and ``on_error(device, error)`` are called from the
    polling tasks (synchronously; they must not block). An exception escaping them is a bug:
    it stops the poller, and :meth:`__aexit__` and :meth:`wait` raise it.
    ``allowed_coils`` is handed to every device (see :class:`ModbusDevice`).
    """

    def __init__(
        self,
        configs: Sequence[ModbusDeviceConfig],
        *,
        period_s: float = 1.0,
        phases: int | None = None,
        client_factory: ClientFactory | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_snapshot: Callable[[ModbusDevice, Snapshot], None] | None = None,
        on_error: Callable[[ModbusDevice, DriverError], None] | None = None,
        rng: random.Random | None = None,
        allowed_coils: CoilAllowlist | None = None,
    ) -> None:
        if not (math.isfinite(period_s) and period_s > 0):
            raise DriverConfigError(f"period_s must be positive, got {period_s!r}")
        keys = [c.key for c in configs]
        if len(set(keys)) != len(keys):
            dup = sorted({k for k in keys if keys.count(k) > 1})
            raise DriverConfigError(f"devices listed twice: {', '.join(dup[:5])}")
        rng = rng or random.Random()  # noqa: S311 (jitter, not secrets)
        self.period_s = period_s
        n = len(configs)
        if phases is None:
            phases = max(1, round(period_s / _PHASE_S))
        if phases < 1:
            raise DriverConfigError(f"phases must be at least 1, got {phases}")
        self.phases = min(phases, max(n, 1))
        self._clock = clock
        self._on_snapshot = on_snapshot
        self._on_error = on_error
        spread_s = min(period_s, 1.0)
        if client_factory is None:
            client_factory = shared_lean_clients()
        #: the devices' fault and recovery lines, at most ``LOG_LINES`` per ``LOG_WINDOW_S``
        self.log_budget = LogBudget(_log, f"modbus poller ({n} devices)", lines=LOG_LINES,
                                    window_s=LOG_WINDOW_S)
        self.devices: dict[str, ModbusDevice] = {
            c.key: ModbusDevice(c, client_factory=client_factory, clock=clock,
                                rng=random.Random(rng.random()),  # noqa: S311
                                start_delay_s=spread_s * (k % self.phases) / self.phases,
                                allowed_coils=allowed_coils, log_budget=self.log_budget)
            for k, c in enumerate(configs)
        }
        self.stats: dict[str, PollStats] = {k: PollStats() for k in self.devices}
        self.latest: dict[str, Snapshot] = {}
        self._runner: asyncio.Task[None] | None = None
        self._in_flight: dict[str, float] = {}          # device key -> start of its read
        self._callback_failure: Exception | None = None
        self._callback_failed = asyncio.Event()
        # the flag as well as the cancellation (as in the device's supervisor): on Python 3.11
        # pymodbus's wait_for can swallow the cancellation of a read that is timing out, and a
        # poll loop that only waits to be cancelled would then never stop
        self._closing = False

    async def __aenter__(self) -> Self:
        for dev in self.devices.values():
            await dev.__aenter__()
        self._runner = asyncio.create_task(self._run(), name="modbus poller")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        runner, self._runner = self._runner, None
        self._closing = True
        failure = await stop_task(runner)
        # all at once: a thousand supervisors still reconnecting would otherwise keep the loop
        # busy while each one is stopped in turn
        results = await asyncio.gather(*(dev.aclose() for dev in self.devices.values()),
                                       return_exceptions=True)
        self.log_budget.flush()              # what the last window held back
        failure = failure or next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None and exc is None:
            raise failure

    async def wait(self) -> None:
        """Return when the poller stops (only by a failure, which is raised here)."""
        if self._runner is not None:
            await asyncio.shield(self._runner)

    def rejections(self) -> dict[str, int]:
        """Reads refused, summed over the devices, by reason (monotonic; for metrics): a
        failed read by its error in snake case (``device_timeout``, ``decode_error``,
        ``device_mismatch``, ``device_exception``, ``device_unreachable``; not
        ``not_connected``: nothing was asked), and a read whose worst quality was not GOOD as
        ``quality_stale``, ``quality_implausible`` or ``quality_bad``."""
        out: dict[str, int] = {}
        for stats in self.stats.values():
            for kind, n in stats.errors_by_kind.items():
                if kind != NotConnected.__name__:
                    reason = _snake(kind)
                    out[reason] = out.get(reason, 0) + n
            for label, n in stats.untrusted_by_quality.items():
                out[f"quality_{label}"] = out.get(f"quality_{label}", 0) + n
        return out

    async def wait_connected(self, timeout_s: float) -> None:
        """Wait until every device is connected; :class:`DeviceTimeout` naming those that are
        not after ``timeout_s``."""
        results = await asyncio.gather(*(dev.wait_connected(timeout_s)
                                         for dev in self.devices.values()),
                                       return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, DriverError):
                raise r
        down = [dev.key for dev in self.devices.values() if not dev.connected]
        if down:
            raise DeviceTimeout(f"{len(down)} of {len(self.devices)} devices not connected "
                                f"within {timeout_s} s: {', '.join(down[:10])}"
                                + (", ..." if len(down) > 10 else ""))

    async def _run(self) -> None:
        start = self._clock()
        slots: list[list[ModbusDevice]] = [[] for _ in range(self.phases)]
        async with asyncio.TaskGroup() as tg:
            for k, dev in enumerate(self.devices.values()):
                if dev.submits:
                    slots[k % self.phases].append(dev)
                else:
                    offset = self.period_s * (k % self.phases) / self.phases
                    tg.create_task(self._poll(dev, start + offset), name=f"poll {dev.key}")
            for j, devs in enumerate(slots):
                if devs:
                    tg.create_task(self._poll_slot(devs, start + self.period_s * j / self.phases),
                                   name=f"poll slot {j}")
            tg.create_task(self._watch_callbacks(), name="poll callbacks")

    async def _poll(self, dev: ModbusDevice, next_s: float) -> None:
        """A device whose client cannot submit (pymodbus's): a task of its own."""
        stats = self.stats[dev.key]
        period = self.period_s
        await dev.wait_first_attempt()       # no NotConnected just because we started
        while not self._closing:
            delay = next_s - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)
            t0 = self._clock()
            stats.polls += 1
            try:
                snapshot = await dev.read()
            except DriverError as exc:
                self._record(dev, stats, t0, None, exc)
            else:
                self._record(dev, stats, t0, snapshot, None)
            self.log_budget.flush_due()
            now = self._clock()
            next_s += period
            if next_s <= now:   # overran: skip the missed ticks, keep the phase
                missed = math.floor((now - next_s) / period) + 1
                stats.overruns += missed
                next_s += missed * period

    async def _poll_slot(self, devs: list[ModbusDevice], next_s: float) -> None:
        """The devices of one slot of the period on lean clients: one wake-up per period
        starts all their reads (:meth:`ModbusDevice.start_read`); each read's outcome is
        recorded from the reply path when it comes. A device whose read of the period before
        is still waiting (for its timeout) skips this one, counted as an overrun."""
        period = self.period_s
        await asyncio.gather(*(dev.wait_first_attempt() for dev in devs))
        polled = [(dev, self.stats[dev.key], self._sink(dev)) for dev in devs]
        in_flight = self._in_flight
        while not self._closing:
            delay = next_s - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)
            for dev, stats, sink in polled:
                if dev.key in in_flight:
                    stats.overruns += 1
                    continue
                stats.polls += 1
                in_flight[dev.key] = self._clock()
                dev.start_read(sink)
            self.log_budget.flush_due()
            now = self._clock()
            next_s += period
            if next_s <= now:   # the loop was late: skip the missed ticks, keep the phase
                missed = math.floor((now - next_s) / period) + 1
                for _dev, stats, _sink in polled:
                    stats.overruns += missed
                next_s += missed * period

    def _sink(self, dev: ModbusDevice) -> Callable[[Snapshot | None, DriverError | None], None]:
        key, stats = dev.key, self.stats[dev.key]

        def done(snapshot: Snapshot | None, error: DriverError | None) -> None:
            t0 = self._in_flight.pop(key, None)
            if t0 is None or self._closing:
                return
            try:
                self._record(dev, stats, t0, snapshot, error)
            except Exception as exc:      # a consumer's bug: stop the poller with it
                if self._callback_failure is None:
                    self._callback_failure = exc
                    self._callback_failed.set()
        return done

    async def _watch_callbacks(self) -> None:
        await self._callback_failed.wait()
        assert self._callback_failure is not None
        raise self._callback_failure

    def _record(self, dev: ModbusDevice, stats: PollStats, t0: float,
                snapshot: Snapshot | None, error: DriverError | None) -> None:
        """One poll's outcome: statistics, then ``on_snapshot`` or ``on_error``."""
        if snapshot is None:
            assert error is not None
            stats.errors += 1
            stats.consecutive_errors += 1
            stats.last_error = error
            kind = type(error).__name__
            stats.errors_by_kind[kind] = stats.errors_by_kind.get(kind, 0) + 1
            if self._on_error is not None:
                self._on_error(dev, error)
        else:
            stats.ok += 1
            stats.consecutive_errors = 0
            stats.last_ok_mono_s = t0
            quality = snapshot.quality
            if quality is not Quality.GOOD:
                label = quality.label
                stats.untrusted_by_quality[label] = \
                    stats.untrusted_by_quality.get(label, 0) + 1
            self.latest[dev.key] = snapshot
            if self._on_snapshot is not None:
                self._on_snapshot(dev, snapshot)
        stats.last_latency_s = self._clock() - t0
