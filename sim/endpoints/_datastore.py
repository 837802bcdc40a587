"""The one thin adapter between pymodbus's server and our register images.

pymodbus 3.16's server asks its context three things: ``async_getValues``, ``async_setValues``
and ``device_ids``. Its ``ModbusDeviceContext``/``ModbusServerContext`` data blocks are
deprecated and its ``SimDevice`` API is experimental (DEPENDENCIES.md), so this module keeps the
registers itself (:class:`DeviceImage`) and hands the server a :class:`StrictContext`, a
``ModbusServerContext`` in name only (the server checks the type) that answers from the images.

It also enforces what real PDUs do and pymodbus 3.16.1 does not (docs/registers.md):

* a read of 0 or more than 125 registers (2000 bits) is answered with exception 03, not 01;
* a write-single-coil with a value other than 0xFF00 or 0x0000 is answered with exception 03
  instead of being accepted and echoed;
* a write-multiple-coils of 0 or more than 1968 coils, or whose byte count disagrees, gets 03;
* an address outside the device's map gets exception 02;
* a unit id no device has is the catch-all device 0: it answers exception 0B (gateway target
  device failed to respond), and pymodbus logs nothing;
* a device set ``silent`` answers nothing at all (the client times out).

The request classes are registered per server (``custom_pdu=``), which copies pymodbus's decoder
table for that server; pymodbus's globals are left alone.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Sequence
from typing import cast

from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.pdu.bit_message import (
    ReadCoilsRequest,
    ReadDiscreteInputsRequest,
    WriteMultipleCoilsRequest,
    WriteSingleCoilRequest,
)
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadInputRegistersRequest,
)

_log = logging.getLogger(__name__)

COIL_ON = 0xFF00
COIL_OFF = 0x0000
MAX_READ_REGISTERS = 125
MAX_READ_BITS = 2000
MAX_WRITE_COILS = 1968

#: ``on_coil_write(unit_id, coil_address, on) -> bool``: False refuses (exception 04).
CoilWriter = Callable[[int, int, bool], bool]


#: a run of registers from ``start``: their big-endian bytes, two per register, as they go on
#: the wire (a reply is a slice; no per-request packing, and no object the collector tracks)
Segment = tuple[int, bytes]


def _pack_registers(values: Sequence[int]) -> bytes:
    try:
        return struct.pack(f">{len(values)}H", *values)
    except struct.error as exc:
        raise ValueError(f"a register holds 0 to 65535: {exc}") from None


class DeviceImage:
    """The registers of one device (one unit id): input register segments, coils, discrete
    inputs, holding register segments (generic profiles with function 03 only)."""

    __slots__ = ("coils", "discrete_inputs", "exception", "holding", "inputs", "silent")

    def __init__(self, n_coils: int = 0) -> None:
        self.inputs: list[Segment] = []
        self.holding: list[Segment] = []
        self.coils: list[bool] = [False] * n_coils
        self.discrete_inputs: list[bool] = [False] * n_coils
        self.silent = False
        self.exception: int | None = None

    def set_inputs(self, blocks: Sequence[tuple[int, Sequence[int]]]) -> None:
        """Replace the input registers by ``(start, values)`` blocks (``ValueError`` for a value
        outside 0..65535; the image is then left as it was)."""
        self.inputs = [(start, _pack_registers(values)) for start, values in blocks]

    def set_holding(self, blocks: Sequence[tuple[int, Sequence[int]]]) -> None:
        self.holding = [(start, _pack_registers(values)) for start, values in blocks]


def _read_segment(segments: list[Segment], address: int, count: int) -> bytes | None:
    """The bytes of registers ``address .. address + count − 1`` if one segment holds them all,
    else None (an illegal address)."""
    for start, data in segments:
        if start <= address and 2 * (address - start + count) <= len(data):
            return data[2 * (address - start):2 * (address - start + count)]
    return None


def _read_words(segments: list[Segment], address: int, count: int) -> list[int] | ExcCodes:
    data = _read_segment(segments, address, count)
    if data is None:
        return ExcCodes.ILLEGAL_ADDRESS
    return list(struct.unpack(f">{count}H", data))


class StrictContext(ModbusServerContext):
    """A server context that answers from :class:`DeviceImage` s keyed by unit id."""

    def __init__(self, devices: dict[int, DeviceImage], on_coil_write: CoilWriter) -> None:
        # Deliberately not calling ModbusServerContext.__init__: it wraps deprecated data
        # blocks. ``old_simulator = True`` makes pymodbus's server use this object as is.
        self.old_simulator = True
        self.simdevices = []
        self.images = devices
        self._on_coil_write = on_coil_write

    def device_ids(self) -> list[int]:
        return list(self.images)

    def _device(self, device_id: int) -> DeviceImage | ExcCodes:
        image = self.images.get(device_id)
        if image is None:
            return ExcCodes.GATEWAY_NO_RESPONSE          # the catch-all device 0
        if image.silent:
            raise NoSuchIdException(f"device {device_id} is silent")   # no answer at all
        if image.exception is not None:
            return ExcCodes(image.exception)
        return image

    async def async_getValues(  # noqa: N802 (pymodbus's name)
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        image = self._device(device_id)
        if isinstance(image, ExcCodes):
            return image
        if func_code == 4:
            return _read_words(image.inputs, address, count)
        if func_code in (3, 6, 16):
            return _read_words(image.holding, address, count)
        if func_code in (1, 5, 15):
            bits = image.coils
        elif func_code == 2:
            bits = image.discrete_inputs
        else:
            return ExcCodes.ILLEGAL_FUNCTION
        if address + count > len(bits):
            return ExcCodes.ILLEGAL_ADDRESS
        return bits[address:address + count]

    async def async_setValues(  # noqa: N802 (pymodbus's name)
        self, device_id: int, func_code: int, address: int,
        values: Sequence[int] | Sequence[bool],
    ) -> ExcCodes | None:
        image = self._device(device_id)
        if isinstance(image, ExcCodes):
            return image
        if func_code not in (5, 15):
            return ExcCodes.ILLEGAL_ADDRESS               # no writable registers in the maps
        if address + len(values) > len(image.coils):
            return ExcCodes.ILLEGAL_ADDRESS
        for k, value in enumerate(values):
            on = bool(value)
            try:
                accepted = self._on_coil_write(device_id, address + k, on)
            except Exception:
                _log.exception("outlet write callback failed for unit %d coil %d",
                               device_id, address + k)
                return ExcCodes.DEVICE_FAILURE
            if not accepted:
                return ExcCodes.DEVICE_FAILURE
            image.coils[address + k] = on
        return None


# --------------------------------------------------------------------------------------------
# Request PDUs that validate as real devices do
# --------------------------------------------------------------------------------------------
def _refuse(function_code: int) -> ModbusPDU:
    return ExceptionResponse(function_code, ExcCodes.ILLEGAL_VALUE)


class StrictReadCoils(ReadCoilsRequest):
    def decode(self, data: bytes) -> None:
        self.address, self.count = struct.unpack(">HH", data[:4])

    async def datastore_update(self, context: ModbusServerContext, device_id: int) -> ModbusPDU:
        if not 1 <= self.count <= MAX_READ_BITS:
            return _refuse(self.function_code)
        return await super().datastore_update(context, device_id)


class StrictReadDiscreteInputs(ReadDiscreteInputsRequest):
    def decode(self, data: bytes) -> None:
        self.address, self.count = struct.unpack(">HH", data[:4])

    async def datastore_update(self, context: ModbusServerContext, device_id: int) -> ModbusPDU:
        if not 1 <= self.count <= MAX_READ_BITS:
            return _refuse(self.function_code)
        return await super().datastore_update(context, device_id)


class StrictReadHoldingRegisters(ReadHoldingRegistersRequest):
    def decode(self, data: bytes) -> None:
        self.address, self.count = struct.unpack(">HH", data[:4])

    async def datastore_update(self, context: ModbusServerContext, device_id: int) -> ModbusPDU:
        if not 1 <= self.count <= MAX_READ_REGISTERS:
            return _refuse(self.function_code)
        return await super().datastore_update(context, device_id)


class StrictReadInputRegisters(ReadInputRegistersRequest):
    def decode(self, data: bytes) -> None:
        self.address, self.count = struct.unpack(">HH", data[:4])

    async def datastore_update(self, context: ModbusServerContext, device_id: int) -> ModbusPDU:
        if not 1 <= self.count <= MAX_READ_REGISTERS:
            return _refuse(self.function_code)
        return await super().datastore_update(context, device_id)


class StrictWriteSingleCoil(WriteSingleCoilRequest):
    raw_value: int = COIL_OFF

    def decode(self, data: bytes) -> None:
        self.address, self.raw_value = struct.unpack(">HH", data[:4])
        self.bits = [self.raw_value == COIL_ON]

    async def datastore_update(self, context: ModbusServerContext, device_id: int) -> ModbusPDU:
        if self.raw_value not in (COIL_ON, COIL_OFF):
            return _refuse(self.function_code)
        return await super().datastore_update(context, device_id)


class StrictWriteMultipleCoils(WriteMultipleCoilsRequest):
    def decode(self, data: bytes) -> None:
        self.address, self.count, self.byte_count = struct.unpack(">HHB", data[0:5])
        self.data_byte_count = len(data) - 5
        bits = [bool(byte >> k & 1) for byte in data[5:5 + cast(int, self.byte_count)]
                for k in range(8)]
        self.bits = bits[:self.count]

    async def datastore_update(self, context: ModbusServerContext, device_id: int) -> ModbusPDU:
        if not 1 <= self.count <= MAX_WRITE_COILS or len(self.bits) != self.count:
            return _refuse(self.function_code)
        return await super().datastore_update(context, device_id)


STRICT_PDUS: list[type[ModbusPDU]] = [
    StrictReadCoils, StrictReadDiscreteInputs, StrictReadHoldingRegisters,
    StrictReadInputRegisters, StrictWriteSingleCoil, StrictWriteMultipleCoils,
]
