"""The Modbus register decoders of drivers/registers.py on random register words, for every
profile: the built-in meter, the built-in PDU at every shape up to its limits (24 banks, 96
outlets), and generic profiles that hypothesis draws (every register type, word order, unit,
scale from tiny to huge, gaps, holding or input registers).

What a read can bring back is a snapshot or a :class:`~drivers.errors.DecodeError` (a
:class:`~drivers.errors.DeviceMismatch` for a header of another device), never anything else;
and in a snapshot no value that is not finite, negative where the unit cannot be, or out of the
physical range passes as GOOD. Blocks of the wrong size or with values that are no 16-bit words
are refused. (Exception responses never reach a decoder: the client turns them into
:class:`~drivers.errors.DeviceException`; tests/fuzz/test_hostile_modbus.py covers them.)
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from drivers.errors import DecodeError, DeviceMismatch, DriverConfigError
from drivers.registers import (
    MAX_BANKS,
    MAX_OUTLETS,
    PROFILE_METER,
    PROFILE_PDU,
    UNIT_TO_SI,
    GenericField,
    GenericProfile,
    Quality,
    Snapshot,
    builtin_layout,
    decode_builtin,
    decode_generic,
    plan_builtin,
    plan_generic,
)

FUZZ = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
WORDS = st.integers(0, 0xFFFF)
#: Word values worth more than their share: NaN and ±inf halves, sign bits, all ones.
EDGE_WORDS = st.sampled_from([0, 1, 0x7FFF, 0x8000, 0xFFFF, 0x7F80, 0xFF80, 0x7FC0, 0x7F7F])
HOSTILE_WORDS = st.one_of(WORDS, EDGE_WORDS, st.integers(-3, 0x1_0002), st.booleans())
NON_NEGATIVE = {"A", "V", "W", "VA", "Wh", "Hz"}


def check_snapshot(snap: Snapshot) -> None:
    assert len(snap.values) == len(snap.qualities) == len(snap.layout)
    for value, quality, unit in zip(snap.values, snap.qualities, snap.layout.units,
                                    strict=True):
        if quality is Quality.GOOD:
            assert math.isfinite(value), (value, unit)
            if unit in NON_NEGATIVE:
                assert value >= 0, (value, unit)
    snap.readings()                                # every reading can be asked for
    assert snap.quality in set(Quality)


@st.composite
def builtin_shape(draw: st.DrawFn) -> tuple[str, int, int]:
    profile = draw(st.sampled_from([PROFILE_METER, PROFILE_PDU]))
    if profile == PROFILE_METER:
        return profile, 0, 0
    return profile, draw(st.integers(0, MAX_BANKS)), draw(st.integers(0, MAX_OUTLETS))


def _header(profile: str, banks: int, outlets: int) -> list[int]:
    """Registers 0-2 that claim to be the expected device: map version 1, banks, outlets."""
    return [1, banks, outlets]


@FUZZ
@given(builtin_shape(), st.data(), st.booleans())
def test_builtin_profiles_on_random_words(shape: tuple[str, int, int], data: st.DataObject,
                                          true_header: bool) -> None:
    profile, banks, outlets = shape
    blocks: dict[tuple[int, int], list[int]] = {}
    for blk in plan_builtin(profile, banks, outlets):
        regs = data.draw(st.lists(st.one_of(WORDS, EDGE_WORDS), min_size=blk.count,
                                  max_size=blk.count), label=f"block {blk.address}")
        blocks[(blk.function, blk.address)] = regs
    if true_header:
        blocks[(4, 0)][0:3] = _header(profile, banks, outlets)
    try:
        snap = decode_builtin(profile, blocks, banks=banks, outlets=outlets, t_mono_s=0.0,
                              t_wall_s=0.0)
    except DeviceMismatch:
        assert not true_header
        return
    except DecodeError:
        return
    check_snapshot(snap)
    assert len(snap.outlets_on) == outlets and len(snap.bank_breaker_open) == banks


@FUZZ
@given(builtin_shape(), st.dictionaries(
    st.tuples(st.sampled_from([1, 2, 3, 4, 5, 43]), st.integers(0, 3000)),
    st.lists(HOSTILE_WORDS, max_size=130), max_size=6), st.booleans())
def test_builtin_profiles_on_hostile_blocks(shape: tuple[str, int, int],
                                            blocks: dict[tuple[int, int], list[Any]],
                                            keep_plan: bool) -> None:
    profile, banks, outlets = shape
    if keep_plan:      # the planned blocks, of random sizes and contents
        plan = plan_builtin(profile, banks, outlets)
        sizes = [len(v) for v in blocks.values()] or [0]
        blocks = {(b.function, b.address): list(blocks.get((b.function, b.address), []))
                  or [0] * sizes[k % len(sizes)] for k, b in enumerate(plan)}
    try:
        snap = decode_builtin(profile, blocks, banks=banks, outlets=outlets, t_mono_s=0.0,
                              t_wall_s=0.0)
    except DecodeError:
        return
    check_snapshot(snap)
    assert snap.layout == builtin_layout(profile, banks, outlets)


# ============================================================================================
# Generic profiles
# ============================================================================================
SCALES = st.one_of(st.sampled_from([1.0, 0.1, 0.01, -1.0, 1e-300, 1e300, -1e300, 5e-324]),
                   st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: x != 0))


@st.composite
def generic_profiles(draw: st.DrawFn) -> GenericProfile:
    n = draw(st.integers(1, 12))
    names = draw(st.lists(st.sampled_from(["current_l1", "current_l2", "current_l3",
                                           "voltage_l1", "power_total", "energy", "frequency",
                                           "temperature", "sequence", "pf", "status", "x"]),
                          min_size=n, max_size=n, unique=True))
    fields = []
    for name in names:
        fields.append(GenericField(
            quantity=name, address=draw(st.integers(0, 400)),
            type=draw(st.sampled_from(["int16", "uint16", "int32", "uint32", "float32"])),
            unit=draw(st.sampled_from(sorted(UNIT_TO_SI))),
            word_order=draw(st.sampled_from(["big", "little"])), scale=draw(SCALES)))
    return GenericProfile(id="fuzz", fields=tuple(fields),
                          function=draw(st.sampled_from([3, 4])),
                          max_gap=draw(st.integers(0, 10)))


@FUZZ
@given(generic_profiles(), st.data())
def test_generic_profiles_on_random_words(profile: GenericProfile, data: st.DataObject) -> None:
    blocks = {}
    for blk in plan_generic(profile):
        assert 1 <= blk.count <= 125
        blocks[(blk.function, blk.address)] = data.draw(
            st.lists(st.one_of(WORDS, EDGE_WORDS), min_size=blk.count, max_size=blk.count))
    snap = decode_generic(profile, blocks, t_mono_s=0.0, t_wall_s=0.0)
    check_snapshot(snap)
    if "sequence" in snap.layout.index and math.isfinite(snap["sequence"].value):
        assert snap.sequence is not None


@FUZZ
@given(generic_profiles(), st.data())
def test_generic_profiles_on_hostile_blocks(profile: GenericProfile, data: st.DataObject
                                            ) -> None:
    blocks: dict[tuple[int, int], list[Any]] = {}
    for blk in plan_generic(profile):
        op = data.draw(st.sampled_from(["missing", "short", "long", "bad_word", "fine"]))
        if op == "missing":
            continue
        n = blk.count + {"short": -1, "long": 1}.get(op, 0)
        regs: list[Any] = data.draw(st.lists(WORDS, min_size=max(n, 0), max_size=max(n, 0)))
        if op == "bad_word" and regs:
            regs[data.draw(st.integers(0, len(regs) - 1))] = data.draw(
                st.sampled_from([-1, 0x10000, 2**70, 1.5, None, "1"]))
        blocks[(blk.function, blk.address)] = regs
    try:
        snap = decode_generic(profile, blocks, t_mono_s=0.0, t_wall_s=0.0)
    except DecodeError:
        return
    check_snapshot(snap)


@settings(FUZZ, max_examples=100)
@given(st.text(max_size=10), st.integers(-5, 70_000), st.sampled_from(
    ["int16", "uint16", "int32", "uint32", "float32", "float64", ""]), st.text(max_size=4),
    st.sampled_from(["big", "little", "middle"]), st.floats(), st.integers(-2, 130),
    st.integers(0, 6))
def test_a_bad_generic_profile_is_a_config_error(quantity: str, address: int, type_: str,
                                                 unit: str, order: str, scale: float,
                                                 max_gap: int, function: int) -> None:
    try:
        profile = GenericProfile("p", (GenericField(quantity, address, type_, unit,  # type: ignore[arg-type]
                                                    order, scale),),  # type: ignore[arg-type]
                                 function=function, max_gap=max_gap)
    except DriverConfigError:
        return
    assume(profile.fields)
    assert plan_generic(profile)
