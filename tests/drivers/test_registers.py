"""The register codec: golden tables, read plans, round trips, and hostile input."""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.errors import DecodeError, DeviceMismatch, DriverConfigError
from drivers.registers import (
    PROFILE_METER,
    PROFILE_PDU,
    BankSnapshot,
    GenericField,
    GenericProfile,
    MeterSnapshot,
    OutletSnapshot,
    PduSnapshot,
    Quality,
    ReadBlock,
    TripCause,
    bank_address,
    decode_builtin,
    decode_float32,
    decode_generic,
    decode_header,
    encode_float32,
    encode_generic,
    encode_meter,
    encode_pdu,
    encode_uint32,
    outlet_address,
    plan_builtin,
    plan_generic,
)

# --------------------------------------------------------------------------------------------
# Golden tables
# --------------------------------------------------------------------------------------------
FLOAT32_GOLDEN = [
    (0.0, (0x0000, 0x0000)),
    (1.0, (0x3F80, 0x0000)),
    (-2.5, (0xC020, 0x0000)),
    (230.0, (0x4366, 0x0000)),
    (0.1, (0x3DCC, 0xCCCD)),
    (6300.0, (0x45C4, 0xE000)),
    (math.inf, (0x7F80, 0x0000)),
    (-math.inf, (0xFF80, 0x0000)),
    (1e40, (0x7F80, 0x0000)),          # beyond float32: a device sends +inf
]


@pytest.mark.parametrize(("value", "words"), FLOAT32_GOLDEN)
def test_float32_golden(value: float, words: tuple[int, int]) -> None:
    assert encode_float32(value) == words
    back = decode_float32(*words)
    if math.isfinite(value) and abs(value) < 3.4e38:
        assert back == struct.unpack(">f", struct.pack(">f", value))[0]


def test_float32_nan_is_high_word_first() -> None:
    hi, lo = encode_float32(math.nan)
    assert hi & 0x7F80 == 0x7F80 and (hi & 0x007F or lo)
    assert math.isnan(decode_float32(0x7FC0, 0x0000))


@pytest.mark.parametrize(("value", "words"), [
    (0, (0, 0)), (0x12345678, (0x1234, 0x5678)), (2**32 - 1, (0xFFFF, 0xFFFF)),
    (2**32 + 5, (0, 5)),                # counters wrap as a device's do
])
def test_uint32_golden(value: int, words: tuple[int, int]) -> None:
    assert encode_uint32(value) == words


METER = MeterSnapshot(current_a=(10.0, 11.0, 12.0), voltage_v=(230.0, 231.0, 232.0),
                      power_w=(2000.0, 2100.0, 2200.0), energy_wh=12345.0)
METER_REGISTERS = (
    0x0001, 0x0000, 0x0000, 0x0001,                 # version 1, no banks/outlets, data valid
    0x0000, 0x0007, 0x0000, 0x0064,                 # sequence 7, uptime 100 s
    0x4120, 0x0000, 0x4130, 0x0000, 0x4140, 0x0000,  # 10, 11, 12 A
    0x0000, 0x0000,                                 # neutral 0 A
    0x4366, 0x0000, 0x4367, 0x0000, 0x4368, 0x0000,  # 230, 231, 232 V
    0x44FA, 0x0000, 0x4503, 0x4000, 0x4509, 0x8000,  # 2000, 2100, 2200 W
    0x45C4, 0xE000,                                 # 6300 W total
    0x0000, 0x3039,                                 # 12345 Wh
    0x0000, 0x0000,                                 # breaker closed, no trip
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,             # no outlets: no relay or energized bits
)


def test_meter_image_golden() -> None:
    assert encode_meter(METER, sequence=7, uptime_s=100.4) == METER_REGISTERS
    assert len(METER_REGISTERS) == 46


def test_meter_decode_golden() -> None:
    snap = decode_builtin(PROFILE_METER, {(4, 0): METER_REGISTERS}, banks=0, outlets=0,
                          t_mono_s=5.0, t_wall_s=1.8e9, device="d")
    assert snap.sequence == 7 and snap.header is not None and snap.header.uptime_s == 100
    assert snap["current_l2"].value == 11.0 and snap["current_l2"].unit == "A"
    assert snap["power_total"].value == 6300.0
    assert snap["energy"].value == 12345.0 and snap["energy"].unit == "Wh"
    assert snap.quality is Quality.GOOD and snap.breaker_open is False
    r = snap.reading("voltage_l3")
    assert (r.value, r.t_mono_s, r.t_wall_s) == (232.0, 5.0, 1.8e9)


def test_pdu_image_golden() -> None:
    pdu = PduSnapshot(
        inlet=MeterSnapshot(breaker_open=True, trip_cause=TripCause.MAGNETIC, sequence=3),
        banks=(BankSnapshot(5.0, 230.0, 1100.0, breaker_open=True,
                            trip_cause=TripCause.THERMAL),),
        outlets=(OutletSnapshot(1.0, 200.0, True, True), OutletSnapshot(2.0, 300.0, True, False)))
    image = encode_pdu(pdu, sequence=99, uptime_s=0)
    ((start, regs),) = image.input_registers          # one contiguous map from register 0
    assert start == 0 and len(regs) == 46 + 8 + 2 * 4
    assert regs[:8] == (1, 1, 2, 0x0005, 0, 3, 0, 0)   # version, 1 bank, 2 outlets, valid|open
    assert regs[32:34] == (1, 3)                       # tripped, magnetic
    assert regs[34:46] == (0b11, 0, 0, 0, 0, 0, 0b01, 0, 0, 0, 0, 0)   # relays, energized
    assert regs[46:54] == (0x40A0, 0, 0x4366, 0, 0x4489, 0x8000, 1, 1)  # bank 1 at 46
    assert regs[54:62] == (0x3F80, 0, 0x4348, 0, 0x4000, 0, 0x4396, 0)  # outlets at 54, 58
    assert (bank_address(1), outlet_address(1, 1), outlet_address(1, 2)) == (46, 54, 58)
    assert image.coils == (True, True) and image.discrete_inputs == (True, False)


def test_pdu_decode_golden() -> None:
    pdu = PduSnapshot(MeterSnapshot(sequence=3),
                      (BankSnapshot(5.0, 230.0, 1100.0, True, TripCause.THERMAL),),
                      (OutletSnapshot(1.0, 200.0, True, True),
                       OutletSnapshot(2.0, 300.0, True, False)))
    ((_, regs),) = encode_pdu(pdu, sequence=99, uptime_s=0).input_registers
    snap = decode_builtin(PROFILE_PDU, {(4, 0): regs}, banks=1, outlets=2, t_mono_s=0,
                          t_wall_s=0)
    assert snap["bank1.power"].value == 1100.0 and snap["outlet2.current"].value == 2.0
    assert snap.bank_breaker_open == (True,) and snap.bank_trip_cause == (TripCause.THERMAL,)
    assert snap.outlets_on == (True, True) and snap.outlets_energized == (True, False)


GENERIC = GenericProfile("acme-meter", (
    GenericField("current_l1", 0, "int16", "A", scale=0.01),
    GenericField("power_total", 1, "int32", "kW", word_order="little", scale=0.1),
    GenericField("energy", 3, "uint32", "kWh"),
    GenericField("voltage_l1", 5, "float32", "V", word_order="little"),
    GenericField("sequence", 20, "uint16", "1"),
))


def test_generic_golden() -> None:
    regs = (0xFFFF,                 # -1 × 0.01 A
            0x0064, 0x0000,         # little-endian int32 100 × 0.1 kW = 10 kW
            0x0001, 0x1170,         # 70000 kWh
            0x0000, 0x3FC0)         # little-endian float32 1.5 V
    snap = decode_generic(GENERIC, {(4, 0): regs, (4, 20): (42,)}, t_mono_s=0, t_wall_s=0)
    assert snap["current_l1"].value == pytest.approx(-0.01)
    assert snap["current_l1"].quality is Quality.IMPLAUSIBLE      # negative current
    assert snap["power_total"].value == pytest.approx(10_000.0)
    assert snap["power_total"].unit == "W"                        # kW converted at the edge
    assert snap["energy"].value == 70_000_000.0 and snap["energy"].unit == "Wh"
    assert snap["voltage_l1"].value == 1.5
    assert snap.sequence == 42
    assert encode_generic(GENERIC, {"current_l1": -0.01, "power_total": 10_000.0,
                                    "energy": 7e7, "voltage_l1": 1.5, "sequence": 42}) == (
        (0, regs), (20, (42,)))


# --------------------------------------------------------------------------------------------
# Read plans
# --------------------------------------------------------------------------------------------
def test_plan_meter_is_one_read() -> None:
    assert plan_builtin(PROFILE_METER) == (ReadBlock(4, 0, 46),)


def test_plan_full_pdu_never_splits_a_record_nor_exceeds_125() -> None:
    plan = plan_builtin(PROFILE_PDU, 24, 96)
    assert plan == (
        ReadBlock(4, 0, 118), ReadBlock(4, 118, 124), ReadBlock(4, 242, 124),
        ReadBlock(4, 366, 124), ReadBlock(4, 490, 124), ReadBlock(4, 614, 8))
    assert plan[-1].address + plan[-1].count == 622      # the largest map ends at 621
    starts = {0} | {46 + 8 * b for b in range(24)} | {238 + 4 * n for n in range(96)}
    assert all(b.address in starts for b in plan)        # every read starts on a record


def test_plan_rig_and_demo_pdus() -> None:
    assert plan_builtin(PROFILE_PDU, 2, 16) == (ReadBlock(4, 0, 122), ReadBlock(4, 122, 4))
    assert plan_builtin(PROFILE_PDU, 6, 24) == (ReadBlock(4, 0, 122), ReadBlock(4, 122, 68))


def test_plan_generic_merges_contiguous_only() -> None:
    assert plan_generic(GENERIC) == (ReadBlock(4, 0, 7), ReadBlock(4, 20, 1))
    bridged = GenericProfile("g", GENERIC.fields, max_gap=13)
    assert plan_generic(bridged) == (ReadBlock(4, 0, 21),)
    holding = GenericProfile("h", GENERIC.fields, function=3)
    assert {b.function for b in plan_generic(holding)} == {3}


def test_plan_generic_caps_at_125_without_splitting_a_field() -> None:
    fields = tuple(GenericField(f"q{k}", 2 * k, "float32", "W") for k in range(100))
    plan = plan_generic(GenericProfile("wide", fields))
    assert all(b.count <= 125 and b.count % 2 == 0 for b in plan)
    assert sum(b.count for b in plan) == 200


@pytest.mark.parametrize("bad", [
    {"fields": ()},
    {"function": 1},
    {"max_gap": 125},
    {"fields": (GenericField("a", 0, "int16", "A"), GenericField("a", 1, "int16", "A"))},
    {"fields": (GenericField("a", 0, "int16", "furlongs"),)},
    {"fields": (GenericField("a", 65535, "float32", "A"),)},
    {"fields": (GenericField("a", 0, "int16", "A", scale=math.nan),)},
    {"fields": (GenericField("a", 0, "int16", "A", scale=0.0),)},
])
def test_generic_profile_refuses_bad_maps(bad: dict[str, object]) -> None:
    kwargs: dict[str, object] = {"id": "p", "fields": GENERIC.fields, **bad}
    with pytest.raises(DriverConfigError):
        GenericProfile(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Quality: never a silent number
# --------------------------------------------------------------------------------------------
def _read_all(image_blocks: tuple[tuple[int, tuple[int, ...]], ...], plan: tuple[ReadBlock, ...]
              ) -> dict[tuple[int, int], tuple[int, ...]]:
    words: dict[int, int] = {}
    for start, regs in image_blocks:
        for k, w in enumerate(regs):
            words[start + k] = w
    return {(b.function, b.address): tuple(words[a] for a in range(b.address, b.address + b.count))
            for b in plan}


def test_nan_and_inf_decode_bad() -> None:
    pdu = PduSnapshot(MeterSnapshot(current_a=(math.nan, 1.0, math.inf)),
                      (BankSnapshot(-math.inf, 230.0, 10.0),), (OutletSnapshot(math.nan, 5.0),))
    img = encode_pdu(pdu, sequence=1, uptime_s=1)
    plan = plan_builtin(PROFILE_PDU, 1, 1)
    snap = decode_builtin(PROFILE_PDU, _read_all(img.input_registers, plan),
                          banks=1, outlets=1, t_mono_s=0, t_wall_s=0)
    assert snap["current_l1"].quality is Quality.BAD
    assert snap["current_l2"].quality is Quality.GOOD
    assert snap["current_l3"].quality is Quality.BAD
    assert snap["bank1.current"].quality is Quality.BAD
    assert snap["outlet1.current"].quality is Quality.BAD
    assert snap["outlet1.power"].quality is Quality.GOOD
    assert snap.quality is Quality.BAD


@pytest.mark.parametrize(("snapshot", "name", "quality"), [
    (MeterSnapshot(current_a=(-1.0, 0, 0)), "current_l1", Quality.IMPLAUSIBLE),
    (MeterSnapshot(voltage_v=(2e5, 0, 0)), "voltage_l1", Quality.IMPLAUSIBLE),
    (MeterSnapshot(power_w=(0, -5.0, 0)), "power_l2", Quality.IMPLAUSIBLE),
    (MeterSnapshot(data_valid=False), "current_l1", Quality.BAD),
    (MeterSnapshot(meter_fault=True), "energy", Quality.BAD),
])
def test_quality_rules(snapshot: MeterSnapshot, name: str, quality: Quality) -> None:
    regs = encode_meter(snapshot, sequence=1, uptime_s=0)
    snap = decode_builtin(PROFILE_METER, {(4, 0): regs}, banks=0, outlets=0, t_mono_s=0,
                          t_wall_s=0)
    assert snap[name].quality is quality


def test_header_mismatch_is_refused() -> None:
    regs = encode_meter(METER, sequence=1, uptime_s=0, banks=2, outlets=8)
    with pytest.raises(DeviceMismatch, match="2 banks and 8 outlets"):
        decode_builtin(PROFILE_METER, {(4, 0): regs}, banks=0, outlets=0, t_mono_s=0,
                       t_wall_s=0)
    wrong_version = (2, *METER_REGISTERS[1:])
    with pytest.raises(DeviceMismatch, match="map version 2"):
        decode_builtin(PROFILE_METER, {(4, 0): wrong_version}, banks=0, outlets=0, t_mono_s=0,
                       t_wall_s=0)


def test_wrong_register_count_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="expected 46 registers, got 45"):
        decode_builtin(PROFILE_METER, {(4, 0): METER_REGISTERS[:45]}, banks=0, outlets=0,
                       t_mono_s=0, t_wall_s=0)
    with pytest.raises(DecodeError, match="no answer"):
        decode_builtin(PROFILE_METER, {}, banks=0, outlets=0, t_mono_s=0, t_wall_s=0)


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------
f32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
finite32 = st.floats(min_value=0, max_value=1e5, width=32)  # plausible A and W


@given(st.tuples(finite32, finite32, finite32), st.tuples(finite32, finite32, finite32),
       st.integers(0, 2**32 - 1), st.floats(0, 4e9))
def test_meter_round_trip(current: tuple[float, float, float], power: tuple[float, float, float],
                          sequence: int, energy_wh: float) -> None:
    snap_in = MeterSnapshot(current_a=current, power_w=power, energy_wh=energy_wh,
                            voltage_v=(230.0, 230.0, 230.0))
    regs = encode_meter(snap_in, sequence=sequence, uptime_s=1)
    snap = decode_builtin(PROFILE_METER, {(4, 0): regs}, banks=0, outlets=0, t_mono_s=0,
                          t_wall_s=0)
    assert tuple(snap[f"current_l{k}"].value for k in (1, 2, 3)) == current
    assert tuple(snap[f"power_l{k}"].value for k in (1, 2, 3)) == power
    assert snap.sequence == sequence
    assert snap["energy"].value == float(int(energy_wh) % 2**32)
    assert snap.quality is Quality.GOOD


@given(st.lists(f32, min_size=11, max_size=11), st.integers(0, 24), st.integers(0, 96),
       st.data())
def test_no_silent_non_finite_number(floats: list[float], banks: int, outlets: int,
                                     data: st.DataObject) -> None:
    bank_f = data.draw(st.lists(f32, min_size=3 * banks, max_size=3 * banks))
    out_f = data.draw(st.lists(f32, min_size=2 * outlets, max_size=2 * outlets))
    pdu = PduSnapshot(
        MeterSnapshot(current_a=(floats[0], floats[1], floats[2]), neutral_a=floats[3],
                      voltage_v=(floats[4], floats[5], floats[6]),
                      power_w=(floats[7], floats[8], floats[9]), power_total_w=floats[10]),
        tuple(BankSnapshot(*bank_f[3 * b:3 * b + 3]) for b in range(banks)),
        tuple(OutletSnapshot(*out_f[2 * n:2 * n + 2]) for n in range(outlets)))
    img = encode_pdu(pdu, sequence=1, uptime_s=0)
    plan = plan_builtin(PROFILE_PDU, banks, outlets)
    snap = decode_builtin(PROFILE_PDU, _read_all(img.input_registers, plan),
                          banks=banks, outlets=outlets, t_mono_s=0, t_wall_s=0)
    for value, quality in zip(snap.values, snap.qualities, strict=True):
        assert math.isfinite(value) or quality is Quality.BAD


words = st.integers(0, 0xFFFF)
hostile_words = st.one_of(words, st.integers(-5, 70_000), st.booleans())


@given(st.dictionaries(st.tuples(st.sampled_from([1, 2, 3, 4]), st.integers(0, 800)),
                       st.lists(hostile_words, max_size=140), max_size=10),
       st.sampled_from([PROFILE_METER, PROFILE_PDU]), st.integers(0, 3), st.integers(0, 5))
def test_builtin_decoder_survives_hostile_blocks(blocks: dict[tuple[int, int], list[int]],
                                                 profile: str, banks: int, outlets: int) -> None:
    if profile == PROFILE_METER:
        banks = outlets = 0
    try:
        snap = decode_builtin(profile, blocks, banks=banks, outlets=outlets, t_mono_s=0,
                              t_wall_s=0)
    except DecodeError:
        return
    assert len(snap.values) == len(snap.layout)


@settings(max_examples=300)
@given(st.lists(words, min_size=46, max_size=46))
def test_meter_decoder_on_random_words(regs: list[int]) -> None:
    regs[0:3] = [1, 0, 0]       # a meter's header, everything else random
    snap = decode_builtin(PROFILE_METER, {(4, 0): regs}, banks=0, outlets=0, t_mono_s=0,
                          t_wall_s=0)
    for value, quality in zip(snap.values, snap.qualities, strict=True):
        assert math.isfinite(value) or quality is Quality.BAD
    assert snap.trip_cause in set(TripCause)


@given(st.lists(hostile_words, max_size=12))
def test_header_decoder_survives(regs: list[int]) -> None:
    try:
        header = decode_header(regs)
    except DecodeError:
        return
    assert 0 <= header.sequence < 2**32


@given(st.dictionaries(st.tuples(st.just(4), st.integers(0, 25)),
                       st.lists(hostile_words, max_size=30), max_size=4))
def test_generic_decoder_survives_hostile_blocks(blocks: dict[tuple[int, int], list[int]]
                                                 ) -> None:
    try:
        snap = decode_generic(GENERIC, blocks, t_mono_s=0, t_wall_s=0)
    except DecodeError:
        return
    for value, quality in zip(snap.values, snap.qualities, strict=True):
        assert math.isfinite(value) or quality is Quality.BAD


@given(st.lists(words, min_size=7, max_size=7), st.integers(0, 0xFFFF))
def test_generic_decoder_on_random_words(regs: list[int], seq: int) -> None:
    snap = decode_generic(GENERIC, {(4, 0): regs, (4, 20): [seq]}, t_mono_s=0, t_wall_s=0)
    for value, quality in zip(snap.values, snap.qualities, strict=True):
        assert math.isfinite(value) or quality is Quality.BAD
    assert snap.sequence == seq


def test_the_demo_pdu_example_of_the_doc() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "registers.md").read_text()
    m = re.search(r"has bank 1 at (\d+), bank 6 at (\d+), outlet 1\s+at (\d+) and outlet 24 at "
                  r"(\d+); its map ends at register (\d+)", doc)
    assert m is not None
    b1, b6, o1, o24, end = map(int, m.groups())
    assert (bank_address(1), bank_address(6)) == (b1, b6)
    assert (outlet_address(6, 1), outlet_address(6, 24)) == (o1, o24)
    ((_, regs),) = encode_pdu(PduSnapshot(MeterSnapshot(), (BankSnapshot(),) * 6,
                                          (OutletSnapshot(),) * 24), sequence=0,
                              uptime_s=0).input_registers
    assert len(regs) - 1 == end
