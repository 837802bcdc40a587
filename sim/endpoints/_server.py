"""A lean Modbus TCP server over the register images of :mod:`sim.endpoints._datastore`.

pymodbus's ``ModbusTcpServer`` costs about 100 µs of CPU per request; the 32k hall's 4,256
devices polled at 1 Hz ask 8,352 requests a second, most of a core the simulator then lacks for
the plant and its agents. :class:`LeanModbusServer` answers the same requests from the same
:class:`~sim.endpoints._datastore.StrictContext` by the same rules (docs/registers.md,
``_datastore``'s docstring): the functions 01, 02, 03, 04, 05, 06, 15, 16, the size checks
(exception 03), addresses outside the map (02), the catch-all gateway answer for an unknown unit
(0B), exception 04 for a refused write or a failing device, and silence for a silent device. A
request it cannot parse, or a function it does not serve, gets exception 01 when the function
byte is there, nothing otherwise; the connection stays.
"""

from __future__ import annotations

import asyncio
import logging
import struct

from sim.endpoints._datastore import (
    COIL_OFF,
    COIL_ON,
    MAX_READ_BITS,
    MAX_READ_REGISTERS,
    MAX_WRITE_COILS,
    DeviceImage,
    StrictContext,
    _read_segment,
)

_log = logging.getLogger(__name__)

_MBAP = struct.Struct(">HHHB")
_HH = struct.Struct(">HH")
_ILLEGAL_FUNCTION, _ILLEGAL_ADDRESS, _ILLEGAL_VALUE, _DEVICE_FAILURE = 1, 2, 3, 4
_GATEWAY_NO_RESPONSE = 0x0B
def _pack_bits(bits: list[bool]) -> bytes:
    out = bytearray((len(bits) + 7) // 8)
    for k, on in enumerate(bits):
        if on:
            out[k >> 3] |= 1 << (k & 7)
    return bytes(out)


def answer(context: StrictContext, unit: int, pdu: bytes) -> bytes | None:
    """The reply PDU to request ``pdu`` for ``unit``, or None for no answer at all."""
    if not pdu:
        return None
    fc = pdu[0]

    def exc(code: int) -> bytes:
        return bytes((fc | 0x80, code))

    if fc not in (1, 2, 3, 4, 5, 6, 15, 16):
        return exc(_ILLEGAL_FUNCTION)
    if len(pdu) < 5:
        return exc(_ILLEGAL_FUNCTION)        # truncated: nothing to act on
    address, word = _HH.unpack_from(pdu, 1)
    # the size and value checks come first, as in the strict request classes
    if fc in (3, 4) and not 1 <= word <= MAX_READ_REGISTERS:
        return exc(_ILLEGAL_VALUE)
    if fc in (1, 2) and not 1 <= word <= MAX_READ_BITS:
        return exc(_ILLEGAL_VALUE)
    if fc == 5 and word not in (COIL_ON, COIL_OFF):
        return exc(_ILLEGAL_VALUE)
    values: list[bool] = []
    if fc == 15:
        if len(pdu) < 6:
            return exc(_ILLEGAL_FUNCTION)
        byte_count = pdu[5]
        data = pdu[6:6 + byte_count]
        values = [bool(byte >> k & 1) for byte in data for k in range(8)][:word]
        if (not 1 <= word <= MAX_WRITE_COILS or len(values) != word
                or byte_count != (word + 7) // 8 or len(data) != byte_count):
            return exc(_ILLEGAL_VALUE)
    image = context.images.get(unit)
    if image is None:
        return exc(_GATEWAY_NO_RESPONSE)     # the catch-all device 0
    if image.silent:
        return None
    if image.exception is not None:
        return exc(image.exception)
    if fc in (3, 4):
        regs = _read_segment(image.inputs if fc == 4 else image.holding, address, word)
        if regs is None:
            return exc(_ILLEGAL_ADDRESS)
        return bytes((fc, 2 * word)) + regs
    if fc in (1, 2):
        bits = image.coils if fc == 1 else image.discrete_inputs
        if address + word > len(bits):
            return exc(_ILLEGAL_ADDRESS)
        packed = _pack_bits(bits[address:address + word])
        return bytes((fc, len(packed))) + packed
    if fc in (6, 16):
        return exc(_ILLEGAL_ADDRESS)         # no writable registers in the maps
    if fc == 5:
        values = [word == COIL_ON]
    code = _write_coils(context, image, unit, address, values)
    if code:
        return exc(code)
    return pdu[:5]                            # 05 echoes the request; 15 its address and count


def _write_coils(context: StrictContext, image: DeviceImage, unit: int, address: int,
                 values: list[bool]) -> int:
    if address + len(values) > len(image.coils):
        return _ILLEGAL_ADDRESS
    for k, on in enumerate(values):
        try:
            accepted = context._on_coil_write(unit, address + k, on)
        except Exception:
            _log.exception("outlet write callback failed for unit %d coil %d", unit,
                           address + k)
            return _DEVICE_FAILURE
        if not accepted:
            return _DEVICE_FAILURE
        image.coils[address + k] = on
    return 0


class _Connection(asyncio.Protocol):
    def __init__(self, server: LeanModbusServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        context = self.server.context
        out: list[bytes] = []
        while len(buf) >= 7:
            tid, pid, length, unit = _MBAP.unpack_from(buf)
            if pid != 0 or not 1 <= length <= 254:
                buf.clear()                   # not Modbus TCP: drop what we have
                break
            end = 6 + length
            if len(buf) < end:
                break
            pdu = bytes(buf[7:end])
            del buf[:end]
            reply = answer(context, unit, pdu)
            if reply is not None:
                out.append(_MBAP.pack(tid, 0, len(reply) + 1, unit) + reply)
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


class LeanModbusServer:
    """Serve one :class:`StrictContext` on ``address`` (host, port; port 0: any free one)."""

    def __init__(self, context: StrictContext, address: tuple[str, int]) -> None:
        self.context = context
        self.address = address
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the server is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Listen (``OSError`` when the address cannot be bound)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), *self.address,
                                                reuse_address=True, backlog=4096)

    async def shutdown(self) -> None:
        """Stop listening and close every connection (a dead gateway)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        self.connections.clear()
        if server is not None:
            await server.wait_closed()
