"""A lean Modbus TCP client for the functions the drivers use (01, 02, 03, 04, 05).

:class:`ModbusDevice` talks to a device through the :class:`~drivers.modbus.ModbusClient`
surface. pymodbus's ``AsyncModbusTcpClient`` costs about 120 µs of CPU per request (its framer,
transaction manager and logging); a hall of 4,256 devices polled at 1 Hz makes 8,352 requests a
second, which is a whole core. :class:`LeanModbusClient` is the same surface over one asyncio
protocol: one MBAP frame out, one in, matched by transaction id, with the timeout per request
pymodbus has. It has no retries and no reconnect of its own (the device's supervisor is the one
strategy). Replies come back as :class:`Reply` objects shaped like pymodbus's responses
(``registers``, ``bits``, ``isError()``, ``exception_code``); failures raise:

* no answer within ``timeout_s``: :class:`TimeoutError` (the text says "timeout");
* not connected, the connection lost while waiting, or a frame that does not answer the request
  (wrong transaction, unit or function, or malformed): :class:`ConnectionError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from typing import Any

_MBAP = struct.Struct(">HHHB")          # transaction, protocol (0), length, unit
_READ = struct.Struct(">HHHBBHH")       # MBAP + function, address, count
_COIL_ON, _COIL_OFF = 0xFF00, 0x0000
#: Least time a connect may take (s).
CONNECT_TIMEOUT_MIN_S = 2.0
_WORDS: dict[int, struct.Struct] = {}


def _words(n: int) -> struct.Struct:
    s = _WORDS.get(n)
    if s is None:
        s = _WORDS[n] = struct.Struct(f">{n}H")
    return s


class Reply:
    """A decoded reply: ``registers`` (03, 04), ``bits`` (01, 02: padded to whole bytes as on
    the wire; 05: the echoed state), or an exception (``isError()``, ``exception_code``)."""

    __slots__ = ("bits", "exception_code", "function_code", "registers")

    def __init__(self, function_code: int, registers: tuple[int, ...] = (),
                 bits: list[bool] | None = None, exception_code: int = 0) -> None:
        self.function_code = function_code
        self.registers = registers
        self.bits = bits if bits is not None else []
        self.exception_code = exception_code

    def isError(self) -> bool:  # noqa: N802 (pymodbus's name)
        return self.exception_code != 0

    def __repr__(self) -> str:
        if self.exception_code:
            return f"Reply(function {self.function_code}, exception {self.exception_code})"
        return (f"Reply(function {self.function_code}, {len(self.registers)} registers, "
                f"{len(self.bits)} bits)")


def _decode(function: int, pdu: bytes) -> Reply:
    fc = pdu[0]
    if fc == function | 0x80:
        if len(pdu) < 2:
            raise ConnectionError(f"malformed exception reply to function {function}")
        return Reply(function, exception_code=pdu[1])
    if fc != function:
        raise ConnectionError(f"reply of function {fc} to a request of function {function}")
    if function in (3, 4):
        count = pdu[1] if len(pdu) > 1 else -1
        if count < 0 or count % 2 or len(pdu) < 2 + count:
            raise ConnectionError(f"malformed register reply ({len(pdu)} bytes)")
        return Reply(function, registers=_words(count // 2).unpack_from(pdu, 2))
    if function in (1, 2):
        count = pdu[1] if len(pdu) > 1 else -1
        if count < 0 or len(pdu) < 2 + count:
            raise ConnectionError(f"malformed bit reply ({len(pdu)} bytes)")
        return Reply(function, bits=[bool(byte >> k & 1) for byte in pdu[2:2 + count]
                                     for k in range(8)])
    if function == 5:
        if len(pdu) < 5:
            raise ConnectionError(f"malformed write-coil reply ({len(pdu)} bytes)")
        value = pdu[3] << 8 | pdu[4]
        return Reply(function, bits=[value == _COIL_ON])
    raise ConnectionError(f"unsupported function {function}")  # pragma: no cover


class _Protocol(asyncio.Protocol):
    """One connection: frames out, replies matched to their requests by transaction id."""

    def __init__(self, client: LeanModbusClient) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.client._lost(self, exc)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        while len(buf) >= 8:
            tid, pid, length, unit = _MBAP.unpack_from(buf)
            if length < 2 or pid != 0:
                self.client._protocol_error(self, f"malformed frame header (length {length})")
                return
            end = 6 + length
            if len(buf) < end:
                return
            pdu = bytes(buf[7:end])
            del buf[:end]
            self.client._reply(self, tid, unit, pdu)


class LeanModbusClient:
    """The :class:`~drivers.modbus.ModbusClient` surface over one TCP connection (see the
    module docstring). ``timeout_s`` bounds each request and the connect."""

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self._proto: _Protocol | None = None
        self._tid = 0
        # transaction id -> (future, function, unit, timeout handle)
        self._pending: dict[int, tuple[asyncio.Future[Reply], int, int,
                                       asyncio.TimerHandle]] = {}

    @property
    def connected(self) -> bool:
        p = self._proto
        return p is not None and p.transport is not None and not p.transport.is_closing()

    async def connect(self) -> bool:
        """Open the connection; False (never an exception) when it cannot be opened in
        ``timeout_s`` (at least ``CONNECT_TIMEOUT_MIN_S``: a refused connection fails at once
        anyway, and a busy event loop must not turn a thousand good connects into timeouts)."""
        if self.connected:
            return True
        loop = asyncio.get_running_loop()
        proto = _Protocol(self)
        try:
            async with asyncio.timeout(max(self.timeout_s, CONNECT_TIMEOUT_MIN_S)):
                await loop.create_connection(lambda: proto, self.host, self.port)
        except (OSError, TimeoutError):
            return False
        self._proto = proto
        return True

    def close(self) -> None:
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.close()
        self._fail_all(ConnectionError("connection closed"))

    # -- requests ----------------------------------------------------------------------------
    def read_input_registers(self, address: int, *, count: int = 1,
                             device_id: int = 1) -> asyncio.Future[Reply]:
        return self._send(4, address, count, device_id)

    def read_holding_registers(self, address: int, *, count: int = 1,
                               device_id: int = 1) -> asyncio.Future[Reply]:
        return self._send(3, address, count, device_id)

    def read_coils(self, address: int, *, count: int = 1,
                   device_id: int = 1) -> asyncio.Future[Reply]:
        return self._send(1, address, count, device_id)

    def read_discrete_inputs(self, address: int, *, count: int = 1,
                             device_id: int = 1) -> asyncio.Future[Reply]:
        return self._send(2, address, count, device_id)

    def write_coil(self, address: int, value: bool, *,
                   device_id: int = 1) -> asyncio.Future[Reply]:
        return self._send(5, address, _COIL_ON if value else _COIL_OFF, device_id)

    def _send(self, function: int, address: int, word: int, unit: int) -> asyncio.Future[Reply]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Reply] = loop.create_future()
        proto = self._proto
        if proto is None or proto.transport is None or proto.transport.is_closing():
            fut.set_exception(ConnectionError("not connected"))
            return fut
        self._tid = tid = (self._tid + 1) & 0xFFFF
        handle = loop.call_later(self.timeout_s, self._expire, tid)
        self._pending[tid] = (fut, function, unit, handle)
        proto.transport.write(_READ.pack(tid, 0, 6, unit, function, address, word))
        return fut

    # -- replies (from the protocol) -----------------------------------------------------------
    def _expire(self, tid: int) -> None:
        entry = self._pending.pop(tid, None)
        if entry is not None and not entry[0].done():
            entry[0].set_exception(TimeoutError(
                f"no response within {self.timeout_s} s (timeout)"))

    def _reply(self, proto: _Protocol, tid: int, unit: int, pdu: bytes) -> None:
        entry = self._pending.pop(tid, None)
        if entry is None:
            return                    # a late answer to a request that timed out
        fut, function, want_unit, handle = entry
        handle.cancel()
        if fut.done():
            return
        try:
            if unit != want_unit:
                raise ConnectionError(f"reply from unit {unit} to a request to unit "
                                      f"{want_unit}")
            fut.set_result(_decode(function, pdu))
        except ConnectionError as exc:
            fut.set_exception(exc)
        except (IndexError, struct.error) as exc:
            fut.set_exception(ConnectionError(f"malformed reply: {exc}"))

    def _protocol_error(self, proto: _Protocol, message: str) -> None:
        if proto.transport is not None:
            proto.transport.close()
        self._fail_all(ConnectionError(message))

    def _lost(self, proto: _Protocol, exc: Exception | None) -> None:
        if proto is self._proto:
            self._fail_all(ConnectionError(f"connection lost: {exc or 'closed by peer'}"))

    def _fail_all(self, exc: Exception) -> None:
        pending, self._pending = self._pending, {}
        for fut, _f, _u, handle in pending.values():
            handle.cancel()
            if not fut.done():
                fut.set_exception(exc)
                with contextlib.suppress(Exception):
                    fut.exception()   # retrieved: no "never retrieved" warning when unawaited


def lean_client(host: str, port: int, timeout_s: float) -> Any:
    """A :class:`LeanModbusClient` (typed loosely: it satisfies ``ModbusClient``)."""
    return LeanModbusClient(host, port, timeout_s)
