"""Register images of many devices of one shape at once, from arrays.

:func:`drivers.registers.encode_pdu` and :func:`~drivers.registers.encode_meter` encode one
device from one :class:`~drivers.registers.PduSnapshot`: about 30 small objects and 140 register
values built in Python per device. On the 32k hall (4,256 devices refreshed once a second) that
was 0.3-0.5 s of CPU per round, the simulator's largest cost while it serves. Here the devices
that share a built-in profile and a shape (banks, outlets) are encoded together: a provider gives
their values as arrays (:class:`SnapshotArrays`, one row per device) and :func:`encode_arrays`
returns every row's input registers as one ``uint16`` matrix, word for word what the one-device
encoders give for the same values (tests/sim/test_endpoints_arrays.py holds them to it, hostile
values included):

* floats are IEEE 754 singles, high word first; a value beyond the single range becomes ±inf.
  The one-device encoders pack a run of floats at once and, when one of them overflows, clamp the
  whole run; so a value just above the largest single (which the C cast rounds down to it) reads
  as that largest single, unless another value of its run overflows, when it reads as inf. The
  runs are the same here: the inlet's 11 floats, the banks' 3 per bank, the outlets' 2 per outlet;
* the inlet's total power, when not given, is ``math.fsum`` of the phases (correctly rounded),
  row by row; a row whose phases sum ``+inf`` and ``-inf`` cannot be encoded (``fsum`` raises
  ``ValueError`` as the one-device encoder does) and is reported in ``bad``, so that its device
  answers as a device whose snapshot did not fit;
* counters (sequence, uptime, energy) are unsigned 32 bits, modulo 2**32; a non-finite or
  negative energy reads 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from drivers.registers import (
    BANK_STRIDE,
    BLOCK0_COUNT,
    MAP_VERSION,
    MAX_BANKS,
    MAX_OUTLETS,
    OUTLET_STRIDE,
    STATES_COUNT,
    STATUS_BREAKER_OPEN,
    STATUS_DATA_VALID,
    STATUS_METER_FAULT,
)

__all__ = ["SnapshotArrays", "encode_arrays", "image_registers"]

F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]
I64 = npt.NDArray[np.int64]
U16 = npt.NDArray[np.uint16]

_F32_MAX = float(np.finfo(np.float32).max)
_U32 = 2 ** 32
_WORDS_PER_BITS = STATES_COUNT // 2        # 6 registers for 96 relay (or energized) bits


@dataclass(frozen=True, slots=True)
class SnapshotArrays:
    """What ``n`` devices of one shape measure, one row per device, in SI units.

    The fields of :class:`~drivers.registers.MeterSnapshot` (the inlet), then of its banks
    ``(n, banks)`` and outlets ``(n, outlets)``. ``present[k]`` False: device ``k`` answers
    nothing (a dead meter; its other values are ignored). ``power_total_w`` None: the sum of
    the phases; ``sequence`` None: the endpoint's own counter; ``uptime_s`` None: the endpoint's
    uptime. Every array is read, never kept.
    """

    present: B
    current_a: F64               # (n, 3)
    voltage_v: F64               # (n, 3) line to neutral
    power_w: F64                 # (n, 3)
    energy_wh: F64               # (n,)
    breaker_open: B              # (n,)
    data_valid: B                # (n,)
    neutral_a: F64 | None = None
    power_total_w: F64 | None = None
    trip_cause: I64 | None = None
    meter_fault: B | None = None
    sequence: I64 | None = None
    uptime_s: F64 | None = None
    bank_current_a: F64 | None = None    # (n, banks)
    bank_voltage_v: F64 | None = None
    bank_power_w: F64 | None = None
    bank_open: B | None = None
    bank_trip_cause: I64 | None = None
    outlet_current_a: F64 | None = None  # (n, outlets)
    outlet_power_w: F64 | None = None
    outlet_relay_on: B | None = None
    outlet_energized: B | None = None

    @property
    def n(self) -> int:
        return int(self.present.shape[0])


def image_registers(banks: int, outlets: int) -> int:
    """Input registers of a built-in image (0 and 0 for a meter)."""
    return BLOCK0_COUNT + BANK_STRIDE * banks + OUTLET_STRIDE * outlets


def _f32_words(values: F64) -> U16:
    """``(n, m)`` doubles as ``(n, 2m)`` registers, as the one-device encoders pack a run of
    ``m`` floats: a row with an overflow has every value beyond the single range made ±inf."""
    v = np.asarray(values, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        single = v.astype(np.float32)
        overflowed = np.isinf(single) & np.isfinite(v)
        rows: B = np.asarray(overflowed.any(axis=1))
        if rows.any():
            beyond = rows[:, None] & np.isfinite(v) & (np.abs(v) > _F32_MAX)
            single = np.where(beyond, np.copysign(np.float32(np.inf), v).astype(np.float32),
                              single)
    raw = single.astype(">f4").view(">u2")
    return raw.reshape(v.shape[0], 2 * v.shape[1]).astype(np.uint16)


def _u32_words(values: I64) -> U16:
    """Non-negative integers (any size within int64) as two registers, high word first."""
    v = np.asarray(values, dtype=np.int64) % _U32
    return np.stack([(v >> 16) & 0xFFFF, v & 0xFFFF], axis=1).astype(np.uint16)


def _counter(values: F64) -> I64:
    """``int(x) % 2**32`` for finite non-negative ``x``, 0 otherwise (as a device's counter)."""
    v = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(v) & (v >= 0)
        wrapped = np.fmod(np.floor(np.where(ok, v, 0.0)), float(_U32))
    return wrapped.astype(np.int64)


def _bit_words(bits: B, n: int) -> U16:
    """``(n, k)`` bits (k ≤ 96) as ``(n, 6)`` registers, bit j in register j // 16, least
    significant bit first."""
    out = np.zeros((n, _WORDS_PER_BITS), dtype=np.uint16)
    k = bits.shape[1] if bits.ndim == 2 else 0
    if k:
        padded = np.zeros((n, 16 * _WORDS_PER_BITS), dtype=np.uint16)
        padded[:, :k] = bits
        weights = (1 << np.arange(16, dtype=np.uint32)).astype(np.uint32)
        out[:] = (padded.reshape(n, _WORDS_PER_BITS, 16) * weights).sum(axis=2)
    return out


def _totals(power_w: F64) -> tuple[F64, B]:
    """Each row's ``math.fsum`` (±inf where the sum leaves the doubles); ``bad`` where fsum
    refuses the row (``+inf`` and ``-inf`` together)."""
    rows = power_w.tolist()
    out = np.empty(len(rows), dtype=np.float64)
    bad = np.zeros(len(rows), dtype=np.bool_)
    fsum = math.fsum
    for k, row in enumerate(rows):
        try:
            out[k] = fsum(row)
        except OverflowError:          # finite phases whose exact sum is beyond a double
            out[k] = math.copysign(math.inf, sum(row))
        except ValueError:
            out[k], bad[k] = math.nan, True
    return out, bad


def _column(values: npt.NDArray[Any] | None, n: int, fill: float | bool | int,
            dtype: type) -> npt.NDArray[Any]:
    if values is None:
        return np.full(n, fill, dtype=dtype)
    return np.asarray(values, dtype=dtype).reshape(n)


def _matrix(values: npt.NDArray[Any] | None, n: int, m: int, fill: float | bool | int,
            dtype: type, name: str) -> npt.NDArray[Any]:
    if values is None:
        return np.full((n, m), fill, dtype=dtype)
    arr: npt.NDArray[Any] = np.asarray(values, dtype=dtype)
    if arr.shape != (n, m):
        raise ValueError(f"{name} has shape {arr.shape}, expected {(n, m)}")
    return arr


def encode_arrays(a: SnapshotArrays, *, banks: int, outlets: int, sequence: I64,
                  uptime_s: float) -> tuple[U16, B]:
    """The input registers (from address 0) of every row of ``a``, ``(n, registers)`` uint16,
    and ``bad``: the rows that cannot be encoded (see the module's docstring). ``sequence``: the
    endpoint's counter per row, used where ``a.sequence`` is None; ``uptime_s`` likewise.

    Raises ``ValueError`` when an array's shape is not the one ``banks`` and ``outlets`` ask
    for, or the shape is beyond the map (24 banks, 96 outlets)."""
    if not (0 <= banks <= MAX_BANKS and 0 <= outlets <= MAX_OUTLETS):
        raise ValueError(f"a map holds at most {MAX_BANKS} banks and {MAX_OUTLETS} outlets, "
                         f"got {banks} and {outlets}")
    n = a.n
    current = _matrix(a.current_a, n, 3, 0.0, np.float64, "current_a")
    voltage = _matrix(a.voltage_v, n, 3, 0.0, np.float64, "voltage_v")
    power = _matrix(a.power_w, n, 3, 0.0, np.float64, "power_w")
    neutral = _column(a.neutral_a, n, 0.0, np.float64)
    breaker_open = _column(a.breaker_open, n, False, np.bool_)
    if a.power_total_w is None:
        total, bad = _totals(power)
    else:
        total, bad = _column(a.power_total_w, n, 0.0, np.float64), np.zeros(n, dtype=np.bool_)
    status = (np.where(_column(a.data_valid, n, True, np.bool_), STATUS_DATA_VALID, 0)
              | np.where(_column(a.meter_fault, n, False, np.bool_), STATUS_METER_FAULT, 0)
              | np.where(breaker_open, STATUS_BREAKER_OPEN, 0))
    seq = np.asarray(sequence if a.sequence is None else a.sequence, dtype=np.int64).reshape(n)
    up = (np.full(n, uptime_s, dtype=np.float64) if a.uptime_s is None
          else _column(a.uptime_s, n, 0.0, np.float64))
    regs = np.zeros((n, image_registers(banks, outlets)), dtype=np.uint16)
    regs[:, 0] = MAP_VERSION
    regs[:, 1] = banks
    regs[:, 2] = outlets
    regs[:, 3] = status
    regs[:, 4:6] = _u32_words(seq)
    regs[:, 6:8] = _u32_words(_counter(up))
    regs[:, 8:30] = _f32_words(np.column_stack([current, neutral, voltage, power, total]))
    regs[:, 30:32] = _u32_words(_counter(_column(a.energy_wh, n, 0.0, np.float64)))
    regs[:, 32] = breaker_open
    regs[:, 33] = _column(a.trip_cause, n, 0, np.int64)
    relay = _matrix(a.outlet_relay_on, n, outlets, False, np.bool_, "outlet_relay_on")
    live = _matrix(a.outlet_energized, n, outlets, False, np.bool_, "outlet_energized")
    regs[:, 34:40] = _bit_words(relay, n)
    regs[:, 40:46] = _bit_words(live, n)
    if banks:
        floats = np.stack([_matrix(a.bank_current_a, n, banks, 0.0, np.float64,
                                   "bank_current_a"),
                           _matrix(a.bank_voltage_v, n, banks, 0.0, np.float64,
                                   "bank_voltage_v"),
                           _matrix(a.bank_power_w, n, banks, 0.0, np.float64, "bank_power_w")],
                          axis=2).reshape(n, 3 * banks)
        block = np.zeros((n, banks, BANK_STRIDE), dtype=np.uint16)
        block[:, :, :6] = _f32_words(floats).reshape(n, banks, 6)
        block[:, :, 6] = _matrix(a.bank_open, n, banks, False, np.bool_, "bank_open")
        block[:, :, 7] = _matrix(a.bank_trip_cause, n, banks, 0, np.int64, "bank_trip_cause")
        regs[:, BLOCK0_COUNT:BLOCK0_COUNT + BANK_STRIDE * banks] = block.reshape(n, -1)
    if outlets:
        floats = np.stack([_matrix(a.outlet_current_a, n, outlets, 0.0, np.float64,
                                   "outlet_current_a"),
                           _matrix(a.outlet_power_w, n, outlets, 0.0, np.float64,
                                   "outlet_power_w")], axis=2).reshape(n, 2 * outlets)
        regs[:, BLOCK0_COUNT + BANK_STRIDE * banks:] = _f32_words(floats)
    return regs, bad
