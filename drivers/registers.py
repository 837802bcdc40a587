"""Pure encode/decode of the Modbus register maps of docs/registers.md, and of generic profiles.

Nothing here does I/O or reads a clock: functions take registers and times and return values.
Both sides use this module: the simulator's endpoints encode :class:`MeterSnapshot` and
:class:`PduSnapshot` into register images, the driver decodes what it reads into a
:class:`Snapshot` of typed :class:`Reading` s.

Conventions (docs/registers.md): protocol addresses are 0-based; ``float32`` is IEEE 754 with
the high word first ("ABCD"); ``uint32`` high word first; input registers (function 04) hold the
measurements, coils (01/05/15) the outlet relays, discrete inputs (02) the outlet energized
states. A generic profile (:class:`GenericProfile`) may use either word order, signed or
unsigned integers, a scale, and a unit that is converted to SI here (kW → W, kVA → VA,
kWh → Wh), and nowhere else.

Quality, per reading, worst wins (:class:`Quality`):

* ``BAD``: a float that is NaN or infinite, or a device that says its data is not valid or its
  meter is faulty (status bits 0 and 1). Never a silent number.
* ``IMPLAUSIBLE``: a value no meter of this kind can show: a negative current, voltage, power or
  energy; a magnitude above :data:`PLAUSIBLE_MAX` for its unit.
* ``STALE``: set by the driver, not here, when the device's ``sequence`` has not moved for
  longer than the staleness limit.
* ``GOOD``: otherwise.

Reads are planned in blocks of at most :data:`MAX_READ_REGISTERS` registers that never split one
value across two requests (the halves could come from two different meter updates); the
built-in maps are contiguous from register 0, and a generic profile's reads never bridge an
unmapped register (a real device may answer such a read with exception 02).
"""

from __future__ import annotations

import math
import struct
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from functools import lru_cache
from operator import itemgetter
from typing import Literal

from drivers.errors import DecodeError, DeviceMismatch, DriverConfigError

__all__ = [
    "MAP_VERSION",
    "MAX_BANKS",
    "MAX_OUTLETS",
    "MAX_READ_REGISTERS",
    "PLAUSIBLE_MAX",
    "PROFILE_METER",
    "PROFILE_PDU",
    "BankSnapshot",
    "GenericField",
    "GenericProfile",
    "Header",
    "Layout",
    "MeterSnapshot",
    "OutletSnapshot",
    "PduSnapshot",
    "Quality",
    "ReadBlock",
    "Reading",
    "RegisterImage",
    "Snapshot",
    "TripCause",
    "bank_address",
    "decode_builtin",
    "decode_float32",
    "decode_generic",
    "decode_header",
    "encode_float32",
    "encode_generic",
    "encode_meter",
    "encode_pdu",
    "encode_uint32",
    "meter_quantities",
    "outlet_address",
    "plan_builtin",
    "plan_generic",
]

PROFILE_PDU = "rampguard-pdu-v1"
PROFILE_METER = "rampguard-meter-v1"
BUILTIN_PROFILES = (PROFILE_PDU, PROFILE_METER)
MAP_VERSION = 1
MAX_READ_REGISTERS = 125
MAX_READ_BITS = 2000
MAX_BANKS = 24
MAX_OUTLETS = 96

FC_READ_COILS = 1
FC_READ_DISCRETE_INPUTS = 2
FC_READ_HOLDING_REGISTERS = 3
FC_READ_INPUT_REGISTERS = 4

HEADER_ADDRESS = 0
HEADER_COUNT = 8
INLET_ADDRESS = 8
INLET_COUNT = 26            # registers 8..33
STATES_ADDRESS = 34         # 34..39 relay bits, 40..45 energized bits (outlet n: bit n-1)
STATES_COUNT = 12
BLOCK0_COUNT = HEADER_COUNT + INLET_COUNT + STATES_COUNT     # registers 0..45, one read
BANK_ADDRESS = BLOCK0_COUNT  # bank b (1-based) at 46 + 8·(b − 1)
BANK_STRIDE = 8
OUTLET_STRIDE = 4           # outlet n at 46 + 8·banks + 4·(n − 1)

STATUS_DATA_VALID = 0x0001
STATUS_METER_FAULT = 0x0002
STATUS_BREAKER_OPEN = 0x0004

_U32 = 1 << 32

#: Above these magnitudes (per SI unit) a reading is implausible for any meter in a hall.
PLAUSIBLE_MAX: dict[str, float] = {
    "A": 1e5, "V": 1e5, "W": 1e9, "VA": 1e9, "Wh": math.inf, "C": 200.0, "Hz": 100.0, "1": math.inf,
}
#: Units whose readings cannot be negative in a hall (loads are positive when consuming).
_NON_NEGATIVE = frozenset({"A", "V", "W", "VA", "Wh", "Hz"})
_MIN_CELSIUS = -60.0

#: Config unit → (SI unit, factor).
UNIT_TO_SI: dict[str, tuple[str, float]] = {
    "A": ("A", 1.0), "V": ("V", 1.0), "W": ("W", 1.0), "kW": ("W", 1e3), "VA": ("VA", 1.0),
    "kVA": ("VA", 1e3), "Wh": ("Wh", 1.0), "kWh": ("Wh", 1e3), "C": ("C", 1.0),
    "Hz": ("Hz", 1.0), "1": ("1", 1.0),
}


class TripCause(IntEnum):
    """Register 33 (and bank +7): why a breaker is open."""

    NONE = 0
    THERMAL = 1
    SHORT_TIME = 2
    MAGNETIC = 3
    UNKNOWN = -1    # decoded from a code outside the map; never encoded


class Quality(IntEnum):
    """How far a reading can be trusted; a larger value is worse (``max`` gives the worst)."""

    GOOD = 0
    STALE = 1
    IMPLAUSIBLE = 2
    BAD = 3

    @property
    def label(self) -> str:
        return self.name.lower()


# ============================================================================================
# What a device measures: plain values in SI units (the simulator's side)
# ============================================================================================
@dataclass(frozen=True, slots=True)
class MeterSnapshot:
    """What a meter (or a PDU's inlet) measures, in SI units; an absent phase reads 0.

    ``voltage_v`` is line-to-neutral. ``power_total_w`` defaults to the sum of the phases.
    ``sequence`` and ``uptime_s`` default to the endpoint's own counters (it counts refreshes);
    give them to freeze a meter (a stale meter keeps its sequence).
    """

    current_a: tuple[float, float, float] = (0.0, 0.0, 0.0)
    voltage_v: tuple[float, float, float] = (0.0, 0.0, 0.0)
    power_w: tuple[float, float, float] = (0.0, 0.0, 0.0)
    neutral_a: float = 0.0
    power_total_w: float | None = None
    energy_wh: float = 0.0
    breaker_open: bool = False
    trip_cause: TripCause = TripCause.NONE
    data_valid: bool = True
    meter_fault: bool = False
    sequence: int | None = None
    uptime_s: float | None = None


@dataclass(frozen=True, slots=True)
class BankSnapshot:
    """One outlet bank of a rack PDU: its line's current, voltage, power and its breaker."""

    current_a: float = 0.0
    voltage_v: float = 0.0
    power_w: float = 0.0
    breaker_open: bool = False
    trip_cause: TripCause = TripCause.NONE


@dataclass(frozen=True, slots=True)
class OutletSnapshot:
    """One outlet: current, power, relay state (coil) and energized state (discrete input)."""

    current_a: float = 0.0
    power_w: float = 0.0
    relay_on: bool = False
    energized: bool = False


@dataclass(frozen=True, slots=True)
class PduSnapshot:
    """A switched, metered rack PDU: the inlet, its banks and outlets in config order."""

    inlet: MeterSnapshot
    banks: tuple[BankSnapshot, ...] = ()
    outlets: tuple[OutletSnapshot, ...] = ()


@dataclass(frozen=True, slots=True)
class RegisterImage:
    """The register image of one device: input register blocks ``(start, values)``, coils and
    discrete inputs (both from address 0)."""

    input_registers: tuple[tuple[int, tuple[int, ...]], ...]
    coils: tuple[bool, ...] = ()
    discrete_inputs: tuple[bool, ...] = ()


# ============================================================================================
# Scalar codecs
# ============================================================================================
_F32 = struct.Struct(">f")
_HH = struct.Struct(">HH")


def encode_float32(value: float) -> tuple[int, int]:
    """IEEE 754 single, high word first. Values beyond float32 range become ±inf (as a device
    would send them), NaN stays NaN."""
    try:
        raw = _F32.pack(value)
    except OverflowError:
        raw = _F32.pack(math.copysign(math.inf, value))
    hi, lo = _HH.unpack(raw)
    return hi, lo


def decode_float32(hi: int, lo: int) -> float:
    return float(_F32.unpack(_HH.pack(hi, lo))[0])


def encode_uint32(value: int) -> tuple[int, int]:
    """Unsigned 32 bits, high word first; counters wrap modulo 2**32 as a device's do."""
    v = int(value) % _U32
    return v >> 16, v & 0xFFFF


def _u32(value: float) -> int:
    if not math.isfinite(value) or value < 0:
        return 0
    return int(value) % _U32


# ============================================================================================
# Encoding (simulator side)
# ============================================================================================
_INLET_FLOATS = struct.Struct(">11f")
_INLET_AS_REGS = struct.Struct(">22H")


def _bit_words(bits: Sequence[bool]) -> tuple[int, ...]:
    """96 bits → 6 registers, bit k in register k // 16, least significant bit first."""
    words = [0] * (STATES_COUNT // 2)
    for k, on in enumerate(bits):
        if on:
            words[k >> 4] |= 1 << (k & 15)
    return tuple(words)


def _phase_sum(power_w: Sequence[float]) -> float:
    """``math.fsum`` of the phases; ±inf where the exact sum of finite phases is beyond a double
    (fsum raises OverflowError there). ``+inf`` with ``-inf`` still raises ValueError."""
    try:
        return math.fsum(power_w)
    except OverflowError:
        return math.copysign(math.inf, sum(power_w))


def encode_meter(snapshot: MeterSnapshot, *, sequence: int, uptime_s: float, banks: int = 0,
                 outlets: int = 0, relays: Sequence[bool] = (),
                 energized: Sequence[bool] = ()) -> tuple[int, ...]:
    """Input registers 0–45: header, inlet block and outlet state bits (0 for a meter)."""
    s = snapshot
    status = ((STATUS_DATA_VALID if s.data_valid else 0)
              | (STATUS_METER_FAULT if s.meter_fault else 0)
              | (STATUS_BREAKER_OPEN if s.breaker_open else 0))
    seq = s.sequence if s.sequence is not None else sequence
    up = s.uptime_s if s.uptime_s is not None else uptime_s
    total = s.power_total_w if s.power_total_w is not None else _phase_sum(s.power_w)
    floats = (*s.current_a, s.neutral_a, *s.voltage_v, *s.power_w, total)
    try:
        packed = _INLET_FLOATS.pack(*floats)
    except OverflowError:
        packed = b"".join(_F32.pack(_clamp_f32(x)) for x in floats)
    return (
        MAP_VERSION, banks, outlets, status, *encode_uint32(seq), *encode_uint32(_u32(up)),
        *_INLET_AS_REGS.unpack(packed),
        *encode_uint32(_u32(s.energy_wh)),
        1 if s.breaker_open else 0, int(s.trip_cause),
        *_bit_words(relays), *_bit_words(energized),
    )


@lru_cache(maxsize=64)
def _float_structs(n: int) -> tuple[struct.Struct, struct.Struct]:
    return struct.Struct(f">{n}f"), struct.Struct(f">{2 * n}H")


def _float_words(values: Sequence[float]) -> tuple[int, ...]:
    """Many floats as registers, as :func:`encode_float32` gives them one by one (one pack
    for all: a PDU image has 66 of them)."""
    floats, words = _float_structs(len(values))
    try:
        return tuple(words.unpack(floats.pack(*values)))
    except OverflowError:
        return tuple(words.unpack(floats.pack(*map(_clamp_f32, values))))


def _clamp_f32(x: float) -> float:
    if math.isfinite(x) and abs(x) > 3.4028234663852886e38:
        return math.copysign(math.inf, x)
    return x


def encode_pdu(snapshot: PduSnapshot, *, sequence: int, uptime_s: float) -> RegisterImage:
    """The full image of a ``rampguard-pdu-v1`` device."""
    nb, no = len(snapshot.banks), len(snapshot.outlets)
    if nb > MAX_BANKS or no > MAX_OUTLETS:
        raise ValueError(f"a PDU map holds at most {MAX_BANKS} banks and {MAX_OUTLETS} outlets, "
                         f"got {nb} and {no}")
    relays = [o.relay_on for o in snapshot.outlets]
    energized = [o.energized for o in snapshot.outlets]
    head = encode_meter(snapshot.inlet, sequence=sequence, uptime_s=uptime_s, banks=nb,
                        outlets=no, relays=relays, energized=energized)
    regs: list[int] = list(head)
    bank_words = _float_words([x for b in snapshot.banks
                               for x in (b.current_a, b.voltage_v, b.power_w)])
    for k, b in enumerate(snapshot.banks):
        regs += bank_words[6 * k:6 * k + 6]
        regs += (1 if b.breaker_open else 0, int(b.trip_cause))
    regs += _float_words([x for o in snapshot.outlets for x in (o.current_a, o.power_w)])
    blocks = ((HEADER_ADDRESS, tuple(regs)),)
    return RegisterImage(input_registers=blocks, coils=tuple(relays),
                         discrete_inputs=tuple(energized))


# ============================================================================================
# Read plans
# ============================================================================================
@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One request: function code (1, 2, 3 or 4), start address, count."""

    function: int
    address: int
    count: int


def outlet_address(banks: int, outlet: int) -> int:
    """Input register of outlet ``outlet`` (1-based) of a PDU with ``banks`` banks."""
    return BANK_ADDRESS + BANK_STRIDE * banks + OUTLET_STRIDE * (outlet - 1)


def bank_address(bank: int) -> int:
    """Input register of bank ``bank`` (1-based)."""
    return BANK_ADDRESS + BANK_STRIDE * (bank - 1)


@lru_cache(maxsize=256)
def plan_builtin(profile: str, banks: int = 0, outlets: int = 0) -> tuple[ReadBlock, ...]:
    """The requests that read a whole built-in device, in order.

    The map is contiguous from register 0: the header, inlet and outlet-state block (46
    registers), then the banks (8 each), then the outlets (4 each). It is read in as few
    requests of at most 125 registers as it takes, each ending on a record boundary (a value
    is never split across two requests: its halves could come from two meter updates). A
    meter is one read of registers 0–45; the demo hall's PDU (6 banks, 24 outlets) two.
    """
    _check_builtin_shape(profile, banks, outlets)
    records = [BLOCK0_COUNT] + [BANK_STRIDE] * banks + [OUTLET_STRIDE] * outlets
    blocks: list[ReadBlock] = []
    start = count = 0
    for size in records:
        if count + size > MAX_READ_REGISTERS:
            blocks.append(ReadBlock(FC_READ_INPUT_REGISTERS, start, count))
            start, count = start + count, 0
        count += size
    blocks.append(ReadBlock(FC_READ_INPUT_REGISTERS, start, count))
    return tuple(blocks)


def _check_builtin_shape(profile: str, banks: int, outlets: int) -> None:
    if profile not in BUILTIN_PROFILES:
        raise DriverConfigError(f"unknown built-in profile {profile!r}")
    if profile == PROFILE_METER and (banks or outlets):
        raise DriverConfigError(f"{PROFILE_METER} has no banks or outlets")
    if not (0 <= banks <= MAX_BANKS and 0 <= outlets <= MAX_OUTLETS):
        raise DriverConfigError(f"{profile} holds 0–{MAX_BANKS} banks and 0–{MAX_OUTLETS} "
                                f"outlets, got {banks} and {outlets}")


# ============================================================================================
# Decoded readings (driver side)
# ============================================================================================
@dataclass(frozen=True, slots=True)
class Reading:
    """One measured quantity: value in an SI unit, quality, and when it was read."""

    value: float
    unit: str
    quality: Quality
    t_mono_s: float
    t_wall_s: float

    @property
    def good(self) -> bool:
        return self.quality is Quality.GOOD


class Layout:
    """The named quantities of one device shape, in order, with their SI units (shared by every
    snapshot of that shape, so a snapshot is two tuples, not a hundred objects)."""

    __slots__ = ("all_good", "bounds", "groups", "index", "names", "units")

    def __init__(self, names: Sequence[str], units: Sequence[str]) -> None:
        if len(names) != len(units) or len(set(names)) != len(names):
            raise DriverConfigError("a layout needs unique names, one unit each")
        self.names: tuple[str, ...] = tuple(names)
        self.units: tuple[str, ...] = tuple(units)
        self.index: dict[str, int] = {n: i for i, n in enumerate(self.names)}
        self.bounds = _plausible_bounds(self.units)
        self.all_good = (Quality.GOOD,) * len(self.names)
        groups: list[tuple[Callable[[Sequence[float]], tuple[float, ...]] | None, float,
                           float]] = []
        for unit in dict.fromkeys(self.units):
            idx = [i for i, u in enumerate(self.units) if u == unit]
            lo, hi = self.bounds[idx[0]]
            getter = _tuple_getter(idx)
            groups.append((getter, lo, hi))
        self.groups = tuple(groups)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"Layout({len(self.names)} quantities)"


_INLET_NAMES = ("current_l1", "current_l2", "current_l3", "current_n", "voltage_l1",
                "voltage_l2", "voltage_l3", "power_l1", "power_l2", "power_l3", "power_total",
                "energy")
_INLET_UNITS = ("A", "A", "A", "A", "V", "V", "V", "W", "W", "W", "W", "Wh")


@lru_cache(maxsize=256)
def builtin_layout(profile: str, banks: int = 0, outlets: int = 0) -> Layout:
    """Quantity names of a built-in device: the inlet (``current_l1`` … ``energy``), then
    ``bank{b}.current|voltage|power`` and ``outlet{n}.current|power`` (1-based)."""
    _check_builtin_shape(profile, banks, outlets)
    names = list(_INLET_NAMES)
    units = list(_INLET_UNITS)
    for b in range(1, banks + 1):
        names += (f"bank{b}.current", f"bank{b}.voltage", f"bank{b}.power")
        units += ("A", "V", "W")
    for n in range(1, outlets + 1):
        names += (f"outlet{n}.current", f"outlet{n}.power")
        units += ("A", "W")
    return Layout(names, units)


def _tuple_getter(idx: Sequence[int]) -> Callable[[Sequence[float]], tuple[float, ...]]:
    """``values → tuple of values[i] for i in idx`` (itemgetter, always a tuple)."""
    if len(idx) == 1:
        one = idx[0]
        return lambda values: (values[one],)
    get = itemgetter(*idx)
    return lambda values: get(values)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class Header:
    """Input registers 0–7."""

    map_version: int
    banks: int
    outlets: int
    status: int
    sequence: int
    uptime_s: int

    @property
    def data_valid(self) -> bool:
        return bool(self.status & STATUS_DATA_VALID)

    @property
    def meter_fault(self) -> bool:
        return bool(self.status & STATUS_METER_FAULT)

    @property
    def breaker_open(self) -> bool:
        return bool(self.status & STATUS_BREAKER_OPEN)


@dataclass(frozen=True, slots=True, eq=False)
class Snapshot:
    """One complete read of one device, decoded.

    ``values``/``qualities`` follow ``layout``; :meth:`reading` gives a typed :class:`Reading`.
    ``sequence`` is the device's update counter (None for a generic profile without one).
    Breaker and outlet states are read-backs (empty where the profile has none).
    """

    device: str
    profile: str
    t_mono_s: float
    t_wall_s: float
    layout: Layout
    values: tuple[float, ...]
    qualities: tuple[Quality, ...]
    header: Header | None = None
    sequence: int | None = None
    breaker_open: bool | None = None
    trip_cause: TripCause | None = None
    bank_breaker_open: tuple[bool, ...] = ()
    bank_trip_cause: tuple[TripCause, ...] = ()
    outlets_on: tuple[bool, ...] = ()
    outlets_energized: tuple[bool, ...] = ()
    stale: bool = False
    node_id: str | None = None

    @property
    def quality(self) -> Quality:
        """The worst quality of any reading (``STALE`` when the device has not updated)."""
        if self.qualities is self.layout.all_good:     # the decoders' every-value-good case
            return Quality.STALE if self.stale else Quality.GOOD
        worst = max(self.qualities, default=Quality.GOOD)
        return max(worst, Quality.STALE) if self.stale else worst

    def reading(self, name: str) -> Reading:
        try:
            i = self.layout.index[name]
        except KeyError:
            raise KeyError(f"{self.device}: no quantity {name!r} in {self.profile}") from None
        q = self.qualities[i]
        if self.stale:
            q = max(q, Quality.STALE)
        return Reading(self.values[i], self.layout.units[i], q, self.t_mono_s, self.t_wall_s)

    __getitem__ = reading

    def __contains__(self, name: object) -> bool:
        return name in self.layout.index

    def readings(self) -> dict[str, Reading]:
        return {name: self.reading(name) for name in self.layout.names}


def _quality(value: float, unit: str) -> Quality:
    if not math.isfinite(value):
        return Quality.BAD
    if unit in _NON_NEGATIVE and value < 0:
        return Quality.IMPLAUSIBLE
    if unit == "C" and value < _MIN_CELSIUS:
        return Quality.IMPLAUSIBLE
    if abs(value) > PLAUSIBLE_MAX.get(unit, math.inf):
        return Quality.IMPLAUSIBLE
    return Quality.GOOD


def _plausible_bounds(units: Sequence[str]) -> tuple[tuple[float, float], ...]:
    """Finite [low, high] per unit: a value inside is GOOD (NaN and ±inf never are)."""
    out = []
    for unit in units:
        high = min(PLAUSIBLE_MAX.get(unit, math.inf), sys.float_info.max)
        low = 0.0 if unit in _NON_NEGATIVE else (_MIN_CELSIUS if unit == "C" else -high)
        out.append((low, high))
    return tuple(out)


def _qualities(values: Sequence[float], layout: Layout) -> tuple[Quality, ...]:
    """Per value: GOOD when finite and plausible, else what :func:`_quality` says.

    Fast path (the common case, every value good): per group of one unit, the exact sum is
    finite (no NaN, no inf; inf − inf is NaN) and min and max are within the bounds; one C
    call each.
    """
    for idx, lo, hi in layout.groups:
        group = idx(values) if idx is not None else ()
        if not group:
            continue
        if not (math.isfinite(sum(group)) and min(group) >= lo and max(group) <= hi):
            break
    else:
        return layout.all_good
    good = Quality.GOOD
    return tuple(good if lo <= v <= hi else _quality(v, u)
                 for v, (lo, hi), u in zip(values, layout.bounds, layout.units, strict=True))


def _check_registers(regs: Sequence[int], count: int, what: str, device: str,
                     address: int) -> bytes:
    """The registers as bytes (big-endian words); DecodeError unless ``count`` 16-bit words."""
    if len(regs) != count:
        raise DecodeError(f"{what}: expected {count} registers, got {len(regs)}",
                          device=device, register=address)
    try:
        return _words_struct(count).pack(*regs)
    except struct.error:
        for k, r in enumerate(regs):
            if not (isinstance(r, int) and 0 <= r <= 0xFFFF):
                raise DecodeError(f"{what}: register value {r!r} is not a 16-bit word",
                                  device=device, register=address + k) from None
        raise      # pragma: no cover - struct refused what looked like words


@lru_cache(maxsize=256)
def _words_struct(n: int) -> struct.Struct:
    return struct.Struct(f">{n}H")


def decode_header(regs: Sequence[int], device: str = "?") -> Header:
    """Registers 0–7 (more may follow; they are ignored)."""
    if len(regs) < HEADER_COUNT:
        raise DecodeError(f"header: expected {HEADER_COUNT} registers, got {len(regs)}",
                          device=device, register=0)
    _check_registers(regs[:HEADER_COUNT], HEADER_COUNT, "header", device, 0)
    return Header(regs[0], regs[1], regs[2], regs[3], (regs[4] << 16) | regs[5],
                  (regs[6] << 16) | regs[7])


_BLOCK0 = struct.Struct(">4H2I11fI2H12H")      # registers 0..45, unpacked in one call


@lru_cache(maxsize=256)
def _tail_struct(banks: int, outlets: int) -> struct.Struct:
    """Banks (3 floats, 2 words each) then outlets (2 floats each), as read back to back."""
    return struct.Struct(">" + "3f2H" * banks + "2f" * outlets)


@lru_cache(maxsize=4096)
def _bits(words: tuple[int, ...], n: int) -> tuple[bool, ...]:
    """Bits of registers (bit k in word k // 16, LSB first); cached: outlet states repeat."""
    return tuple(bool(words[k >> 4] >> (k & 15) & 1) for k in range(n))


def decode_builtin(
    profile: str,
    blocks: Mapping[tuple[int, int], Sequence[int]],
    *,
    banks: int,
    outlets: int,
    t_mono_s: float,
    t_wall_s: float,
    device: str = "?",
    node_id: str | None = None,
) -> Snapshot:
    """Decode what :func:`plan_builtin` read: ``blocks`` maps ``(function, address)`` of each
    :class:`ReadBlock` to the registers that came back.

    Raises :class:`DecodeError` when a block is missing or has the wrong length, and
    :class:`DeviceMismatch` when the header's map version, bank or outlet count is not what the
    config says (a wrong unit id or a different device).
    """
    plan = plan_builtin(profile, banks, outlets)
    raw = []
    for blk in plan:
        data = blocks.get((blk.function, blk.address))
        if data is None:
            raise DecodeError(f"no answer for function {blk.function} at {blk.address}",
                              device=device, register=blk.address)
        raw.append(_check_registers(data, blk.count, f"function {blk.function}", device,
                                    blk.address))
    data = b"".join(raw)
    head = _BLOCK0.unpack_from(data)
    version, n_banks, n_outlets, status, sequence, uptime = head[:6]
    if version != MAP_VERSION:
        raise DeviceMismatch(f"map version {version}, expected {MAP_VERSION}",
                             device=device, register=0)
    if (n_banks, n_outlets) != (banks, outlets):
        raise DeviceMismatch(
            f"device has {n_banks} banks and {n_outlets} outlets, the config says "
            f"{banks} and {outlets} ({profile})", device=device, register=1)
    header = Header(version, n_banks, n_outlets, status, sequence, uptime)
    layout = builtin_layout(profile, banks, outlets)
    values: list[float] = [*head[6:17], float(head[17])]             # 11 floats, energy Wh
    bank_open: tuple[bool, ...] = ()
    bank_cause: tuple[TripCause, ...] = ()
    if banks or outlets:
        tail = _tail_struct(banks, outlets).unpack_from(data, 2 * BLOCK0_COUNT)
        nb5 = 5 * banks
        for b in range(0, nb5, 5):
            values += tail[b:b + 3]
        bank_open = tuple(bool(tail[b + 3]) for b in range(0, nb5, 5))
        bank_cause = tuple(_trip(tail[b + 4]) for b in range(0, nb5, 5))
        values += tail[nb5:]
    if status & STATUS_DATA_VALID and not status & STATUS_METER_FAULT:
        qualities = _qualities(values, layout)
    else:
        qualities = (Quality.BAD,) * len(values)
    states = head[20:32]
    return Snapshot(
        device=device, profile=profile, t_mono_s=t_mono_s, t_wall_s=t_wall_s, layout=layout,
        values=tuple(values), qualities=qualities, header=header, sequence=sequence,
        breaker_open=bool(head[18]), trip_cause=_trip(head[19]), bank_breaker_open=bank_open,
        bank_trip_cause=bank_cause, outlets_on=_bits(states[:6], outlets),
        outlets_energized=_bits(states[6:], outlets), node_id=node_id,
    )


_TRIPS = (TripCause.NONE, TripCause.THERMAL, TripCause.SHORT_TIME, TripCause.MAGNETIC)


def _trip(code: int) -> TripCause:
    return _TRIPS[code] if 0 <= code <= 3 else TripCause.UNKNOWN


# ============================================================================================
# Generic profiles
# ============================================================================================
RegisterType = Literal["int16", "uint16", "int32", "uint32", "float32"]
_WIDTH = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}


@dataclass(frozen=True, slots=True)
class GenericField:
    """One quantity of a generic profile: where it is, how it is coded, and its unit."""

    quantity: str
    address: int
    type: RegisterType
    unit: str
    word_order: Literal["big", "little"] = "big"
    scale: float = 1.0

    @property
    def width(self) -> int:
        return _WIDTH[self.type]


@dataclass(frozen=True, slots=True)
class GenericProfile:
    """A register map described by the config (``[[register_profiles]]``).

    ``function`` is 4 (input registers, the default) or 3 (holding registers); ``max_gap`` is
    how many unmapped registers one read may bridge (0: the device may refuse reads of
    unmapped registers, as many do). A quantity named ``sequence`` (an update counter) lets
    the driver detect a stale device.
    """

    id: str
    fields: tuple[GenericField, ...]
    function: int = FC_READ_INPUT_REGISTERS
    max_gap: int = 0

    def __post_init__(self) -> None:
        if not self.fields:
            raise DriverConfigError(f"profile {self.id!r} has no fields")
        if self.function not in (FC_READ_HOLDING_REGISTERS, FC_READ_INPUT_REGISTERS):
            raise DriverConfigError(f"profile {self.id!r}: function must be 3 or 4")
        if not (0 <= self.max_gap < MAX_READ_REGISTERS):
            raise DriverConfigError(f"profile {self.id!r}: max_gap must be 0–124")
        seen: set[str] = set()
        for f in self.fields:
            if f.quantity in seen:
                raise DriverConfigError(f"profile {self.id!r}: quantity {f.quantity!r} twice")
            seen.add(f.quantity)
            if f.type not in _WIDTH:
                raise DriverConfigError(f"profile {self.id!r}: unknown type {f.type!r}")
            if f.word_order not in ("big", "little"):
                raise DriverConfigError(f"profile {self.id!r}: word_order is big or little")
            if f.unit not in UNIT_TO_SI:
                raise DriverConfigError(f"profile {self.id!r}: unknown unit {f.unit!r}")
            if not (0 <= f.address and f.address + f.width <= 0x10000):
                raise DriverConfigError(f"profile {self.id!r}: {f.quantity} at {f.address} "
                                        "does not fit the 16-bit address space")
            if not math.isfinite(f.scale) or f.scale == 0:
                raise DriverConfigError(f"profile {self.id!r}: {f.quantity}: scale must be a "
                                        "finite non-zero number")

    @property
    def layout(self) -> Layout:
        return _generic_layout(self)


@lru_cache(maxsize=128)
def _generic_layout(profile: GenericProfile) -> Layout:
    return Layout([f.quantity for f in profile.fields],
                  [UNIT_TO_SI[f.unit][0] for f in profile.fields])


@lru_cache(maxsize=128)
def plan_generic(profile: GenericProfile) -> tuple[ReadBlock, ...]:
    """Fewest reads of at most 125 registers that cover every field, bridging gaps of at most
    ``max_gap`` registers, never splitting a field."""
    spans = sorted((f.address, f.address + f.width) for f in profile.fields)
    blocks: list[ReadBlock] = []
    start, end = spans[0]
    for a, b in spans[1:]:
        if a - end <= profile.max_gap and max(end, b) - start <= MAX_READ_REGISTERS:
            end = max(end, b)
        else:
            blocks.append(ReadBlock(profile.function, start, end - start))
            start, end = a, b
    blocks.append(ReadBlock(profile.function, start, end - start))
    return tuple(blocks)


def _raw_value(f: GenericField, words: Sequence[int]) -> float:
    if f.width == 2:
        hi, lo = (words[0], words[1]) if f.word_order == "big" else (words[1], words[0])
        if f.type == "float32":
            return decode_float32(hi, lo)
        v = (hi << 16) | lo
        if f.type == "int32" and v >= 1 << 31:
            v -= 1 << 32
        return float(v)
    v = words[0]
    if f.type == "int16" and v >= 1 << 15:
        v -= 1 << 16
    return float(v)


def decode_generic(
    profile: GenericProfile,
    blocks: Mapping[tuple[int, int], Sequence[int]],
    *,
    t_mono_s: float,
    t_wall_s: float,
    device: str = "?",
    node_id: str | None = None,
) -> Snapshot:
    """Decode what :func:`plan_generic` read into SI readings (``value · scale``, converted)."""
    plan = plan_generic(profile)
    words: dict[int, int] = {}
    for blk in plan:
        data = blocks.get((blk.function, blk.address))
        if data is None:
            raise DecodeError(f"no answer for function {blk.function} at {blk.address}",
                              device=device, register=blk.address)
        _check_registers(data, blk.count, f"{profile.id} function {blk.function}", device,
                         blk.address)
        for k, w in enumerate(data):
            words[blk.address + k] = w
    values: list[float] = []
    sequence: int | None = None
    for f in profile.fields:
        raw = _raw_value(f, [words[f.address + k] for k in range(f.width)])
        values.append(raw * f.scale * UNIT_TO_SI[f.unit][1])
        if f.quantity == "sequence" and math.isfinite(raw):
            sequence = int(raw)
    return Snapshot(device=device, profile=profile.id, t_mono_s=t_mono_s, t_wall_s=t_wall_s,
                    layout=profile.layout, values=tuple(values),
                    qualities=_qualities(values, profile.layout), sequence=sequence,
                    node_id=node_id)


_INT_RANGE = {"int16": (-(1 << 15), (1 << 15) - 1), "uint16": (0, 0xFFFF),
              "int32": (-(1 << 31), (1 << 31) - 1), "uint32": (0, 0xFFFFFFFF)}


def _field_words(f: GenericField, raw: float) -> tuple[int, ...]:
    if f.type == "float32":
        hi, lo = encode_float32(raw)
    else:
        low, high = _INT_RANGE[f.type]
        v = 0 if not math.isfinite(raw) else min(max(round(raw), low), high)
        v %= 1 << (16 * f.width)
        if f.width == 1:
            return (v,)
        hi, lo = v >> 16, v & 0xFFFF
    return (hi, lo) if f.word_order == "big" else (lo, hi)


def encode_generic(profile: GenericProfile,
                   values: Mapping[str, float]) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """The register blocks of a generic device showing ``values`` (SI, by quantity name;
    missing quantities read 0): the inverse of :func:`decode_generic`, one block per read of
    :func:`plan_generic` (bridged gaps read 0). Integers are rounded and clamped to their type.
    """
    words: dict[int, int] = {}
    for f in profile.fields:
        factor = UNIT_TO_SI[f.unit][1]
        raw = float(values.get(f.quantity, 0.0)) / factor / f.scale
        for k, w in enumerate(_field_words(f, raw)):
            words[f.address + k] = w
    return tuple(
        (blk.address, tuple(words.get(a, 0) for a in range(blk.address, blk.address + blk.count)))
        for blk in plan_generic(profile)
    )


def meter_quantities(snapshot: MeterSnapshot, *, sequence: int) -> dict[str, float]:
    """A meter snapshot as quantities by their canonical names (those of the built-in layout,
    plus ``sequence``): what a generic profile can map."""
    s = snapshot
    total = s.power_total_w if s.power_total_w is not None else _phase_sum(s.power_w)
    values = (*s.current_a, s.neutral_a, *s.voltage_v, *s.power_w, total, s.energy_wh)
    out = dict(zip(_INLET_NAMES, values, strict=True))
    out["sequence"] = float(s.sequence if s.sequence is not None else sequence)
    return out
