"""The simulator's array refresh (sim/endpoints/_arrays.py, ModbusEndpoints(arrays=...)) gives the
registers the one-device encoders give: row by row against encode_pdu / encode_meter on random
and hostile values, device by device against the snapshot path on a plant with faults, and
through the driver over loopback TCP."""

from __future__ import annotations

import math
import struct
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.bindings import resolve_bindings
from controller.config import load_hall_config
from drivers.modbus import ModbusDevice
from drivers.registers import (
    PROFILE_PDU,
    BankSnapshot,
    MeterSnapshot,
    OutletSnapshot,
    PduSnapshot,
    Quality,
    TripCause,
    encode_meter,
    encode_pdu,
)
from sim import Plant
from sim.endpoints import ModbusEndpoints
from sim.endpoints._arrays import SnapshotArrays, encode_arrays, image_registers
from sim.endpoints._datastore import DeviceImage
from sim.faults import MeterDead, MeterStale, ModbusUnreachable
from sim.hil import PlantView

ROOT = Path(__file__).resolve().parents[2]
F32_MAX = float(np.finfo(np.float32).max)
#: values the encoders must agree on: specials, the edges of the single range, negatives
HOSTILE = np.array([math.nan, -math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-46, -1e-46,
                    F32_MAX, -F32_MAX, F32_MAX * (1 + 2 ** -30), F32_MAX * (1 + 2 ** -20),
                    3.5e38, -3.5e38, 1e300, -1e300, 1.7e308, 2 ** 32 + 0.5, 2 ** 53 + 2.0,
                    -1.0, 0.49, 123.456])


def _values(rng: np.random.Generator, shape: tuple[int, ...], hostile: float) -> np.ndarray:
    plain = rng.uniform(-50.0, 4e5, size=shape)
    picks = HOSTILE[rng.integers(len(HOSTILE), size=shape)]
    return np.where(rng.random(shape) < hostile, picks, plain)


def _random_arrays(rng: np.random.Generator, n: int, banks: int, outlets: int,
                   hostile: float, *, given: bool) -> SnapshotArrays:
    causes = np.array([int(c) for c in TripCause if c is not TripCause.UNKNOWN])
    return SnapshotArrays(
        present=rng.random(n) < 0.9,
        current_a=_values(rng, (n, 3), hostile),
        voltage_v=_values(rng, (n, 3), hostile),
        power_w=_values(rng, (n, 3), hostile),
        energy_wh=_values(rng, (n,), hostile),
        breaker_open=rng.random(n) < 0.3,
        data_valid=rng.random(n) < 0.8,
        neutral_a=_values(rng, (n,), hostile) if given else None,
        power_total_w=_values(rng, (n,), hostile) if given else None,
        trip_cause=causes[rng.integers(len(causes), size=n)] if given else None,
        meter_fault=(rng.random(n) < 0.2) if given else None,
        sequence=rng.integers(-2 ** 40, 2 ** 40, size=n) if given else None,
        uptime_s=_values(rng, (n,), hostile) if given else None,
        bank_current_a=_values(rng, (n, banks), hostile),
        bank_voltage_v=_values(rng, (n, banks), hostile),
        bank_power_w=_values(rng, (n, banks), hostile),
        bank_open=rng.random((n, banks)) < 0.3,
        bank_trip_cause=causes[rng.integers(len(causes), size=(n, banks))],
        outlet_current_a=_values(rng, (n, outlets), hostile),
        outlet_power_w=_values(rng, (n, outlets), hostile),
        outlet_relay_on=rng.random((n, outlets)) < 0.5,
        outlet_energized=rng.random((n, outlets)) < 0.5)


def _opt(values: np.ndarray | None, k: int) -> Any:
    return None if values is None else values[k].item()


def _row_snapshot(a: SnapshotArrays, k: int, banks: int, outlets: int) -> PduSnapshot:
    def three(v: np.ndarray) -> tuple[float, float, float]:
        return (float(v[k, 0]), float(v[k, 1]), float(v[k, 2]))

    inlet = MeterSnapshot(
        three(a.current_a), three(a.voltage_v), three(a.power_w),
        neutral_a=0.0 if a.neutral_a is None else float(a.neutral_a[k]),
        power_total_w=_opt(a.power_total_w, k), energy_wh=float(a.energy_wh[k]),
        breaker_open=bool(a.breaker_open[k]),
        trip_cause=TripCause(int(a.trip_cause[k])) if a.trip_cause is not None
        else TripCause.NONE,
        data_valid=bool(a.data_valid[k]),
        meter_fault=bool(a.meter_fault[k]) if a.meter_fault is not None else False,
        sequence=_opt(a.sequence, k), uptime_s=_opt(a.uptime_s, k))
    assert a.bank_current_a is not None and a.bank_voltage_v is not None
    assert a.bank_power_w is not None and a.bank_open is not None
    assert a.bank_trip_cause is not None and a.outlet_current_a is not None
    assert a.outlet_power_w is not None and a.outlet_relay_on is not None
    assert a.outlet_energized is not None
    return PduSnapshot(
        inlet,
        tuple(BankSnapshot(float(a.bank_current_a[k, b]), float(a.bank_voltage_v[k, b]),
                           float(a.bank_power_w[k, b]), bool(a.bank_open[k, b]),
                           TripCause(int(a.bank_trip_cause[k, b]))) for b in range(banks)),
        tuple(OutletSnapshot(float(a.outlet_current_a[k, o]), float(a.outlet_power_w[k, o]),
                             bool(a.outlet_relay_on[k, o]), bool(a.outlet_energized[k, o]))
              for o in range(outlets)))


@pytest.mark.parametrize("given", [False, True], ids=["endpoint-counters", "all-given"])
@pytest.mark.parametrize("hostile", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("shape", [(6, 24), (2, 16), (0, 0), (24, 96), None],
                         ids=["6x24", "2x16", "pdu-0x0", "largest", "meter"])
def test_every_row_encodes_as_the_one_device_encoders_do(
        shape: tuple[int, int] | None, hostile: float, given: bool) -> None:
    rng = np.random.default_rng(hash((shape, hostile, given)) % 2 ** 32)
    banks, outlets = shape if shape is not None else (0, 0)
    n = 60
    a = _random_arrays(rng, n, banks, outlets, hostile, given=given)
    counters = rng.integers(0, 2 ** 33, size=n)
    uptime_s = float(rng.uniform(0, 1e6))
    regs, bad = encode_arrays(a, banks=banks, outlets=outlets, sequence=counters,
                              uptime_s=uptime_s)
    assert regs.shape == (n, image_registers(banks, outlets)) and regs.dtype == np.uint16
    checked = refused = 0
    for k in range(n):
        snap = _row_snapshot(a, k, banks, outlets)
        try:
            if shape is None:
                expected = encode_meter(snap.inlet, sequence=int(counters[k]),
                                        uptime_s=uptime_s)
            else:
                expected = encode_pdu(snap, sequence=int(counters[k]),
                                      uptime_s=uptime_s).input_registers[0][1]
        except ValueError:
            assert bad[k], f"row {k}: the one-device encoder refuses it, the arrays did not"
            refused += 1
            continue
        assert not bad[k], f"row {k} flagged bad but encodes one by one"
        assert tuple(regs[k].tolist()) == tuple(expected), f"row {k} of {shape}"
        checked += 1
    assert checked >= n // 2
    if hostile == 0.0:
        assert refused == 0


def test_a_row_whose_phases_are_plus_and_minus_infinity_is_bad_as_encode_meter_says() -> None:
    a = _random_arrays(np.random.default_rng(0), 3, 0, 0, 0.0, given=False)
    a.power_w[1] = (math.inf, -math.inf, 1.0)
    _, bad = encode_arrays(a, banks=0, outlets=0, sequence=np.zeros(3, dtype=np.int64),
                           uptime_s=0.0)
    assert bad.tolist() == [False, True, False]
    with pytest.raises(ValueError):
        encode_meter(MeterSnapshot(power_w=(math.inf, -math.inf, 1.0)), sequence=0, uptime_s=0)


def test_finite_phases_summing_beyond_a_double_read_infinite_total_in_both_encoders() -> None:
    """math.fsum raises OverflowError here; both encoders send +inf (the encoder used to let
    the OverflowError out, which stopped the simulator's refresh)."""
    snap = MeterSnapshot(power_w=(1.7e308, 1.7e308, 1.0))
    regs = encode_meter(snap, sequence=0, uptime_s=0.0)
    assert struct.unpack(">f", struct.pack(">HH", *regs[28:30]))[0] == math.inf
    a = _random_arrays(np.random.default_rng(0), 1, 0, 0, 0.0, given=False)
    a.power_w[0] = snap.power_w
    arr, bad = encode_arrays(a, banks=0, outlets=0, sequence=np.zeros(1, dtype=np.int64),
                             uptime_s=0.0)
    assert not bad[0] and arr[0, 28:30].tolist() == [0x7F80, 0]       # +inf
    assert tuple(arr[0].tolist()) == encode_meter(_row_snapshot(a, 0, 0, 0).inlet, sequence=0,
                                                  uptime_s=0.0)


def test_shapes_the_arrays_do_not_have_are_refused() -> None:
    a = _random_arrays(np.random.default_rng(0), 4, 6, 24, 0.0, given=False)
    with pytest.raises(ValueError, match="bank_current_a"):
        encode_arrays(a, banks=5, outlets=24, sequence=np.zeros(4, dtype=np.int64),
                      uptime_s=0.0)
    with pytest.raises(ValueError, match="at most"):
        encode_arrays(a, banks=25, outlets=24, sequence=np.zeros(4, dtype=np.int64),
                      uptime_s=0.0)


def test_a_register_value_out_of_range_is_a_value_error_and_keeps_the_image() -> None:
    img = DeviceImage()
    img.set_inputs(((0, (1, 2, 3)),))
    with pytest.raises(ValueError, match="0 to 65535"):
        img.set_inputs(((0, (1, 65536)),))
    assert img.inputs == [(0, b"\x00\x01\x00\x02\x00\x03")]


# --------------------------------------------------------------------------------------------
# Device by device against the snapshot path, on a plant with meter faults
# --------------------------------------------------------------------------------------------
def _same_images(a: ModbusEndpoints, b: ModbusEndpoints) -> list[str]:
    differ = []
    for da, db in zip(a._devices, b._devices, strict=True):
        ia, ib = da.image, db.image
        if ((ia.inputs, ia.coils, ia.discrete_inputs, ia.silent, ia.exception, da.sequence)
                != (ib.inputs, ib.coils, ib.discrete_inputs, ib.silent, ib.exception,
                    db.sequence)):
            differ.append(da.config.node_id)
    return differ


def test_the_array_refresh_matches_the_snapshot_refresh_on_the_demo_hall_with_faults() -> None:
    config = load_hall_config(ROOT / "configs" / "demo-hall.toml")
    plant = Plant(config, seed=3)
    view = PlantView(plant)
    bindings = resolve_bindings(config, plant.topo)
    plain = ModbusEndpoints(bindings.modbus, view.snapshot, view.write, refresh_period_s=None,
                            clock=lambda: 7.5)
    fast = ModbusEndpoints(bindings.modbus, view.snapshot, view.write, refresh_period_s=None,
                           clock=lambda: 7.5, arrays=view.arrays)
    meters = [c.node_id for c in bindings.modbus if c.profile != PROFILE_PDU]
    pdus = list(view.pdus)
    plant.schedule_fault(MeterDead(kind="meter-dead", nodes=meters[0], at_s=4.0), at_s=4.0)
    plant.schedule_fault(MeterStale(kind="meter-stale", nodes=pdus[1], at_s=6.0), at_s=6.0)
    plant.schedule_fault(ModbusUnreachable(kind="modbus-unreachable", nodes=pdus[2],
                                           at_s=8.0, duration_s=4.0), at_s=8.0)
    rng = np.random.default_rng(5)
    plain.refresh()
    fast.refresh()                              # before any sample: data not valid everywhere
    assert _same_images(plain, fast) == []
    for t_s in np.arange(1.0, 16.0, 1.0):
        for _ in range(20):
            pdu = pdus[int(rng.integers(len(pdus)))]
            view.write(pdu, int(rng.integers(1, len(view.pdus[pdu][1]) + 1)), True)
        plant.run_until(float(t_s), dt_s=0.1)
        plain.refresh()
        fast.refresh()
        assert _same_images(plain, fast) == [], f"at {t_s} s"
        part = int(t_s) % 3
        plain.refresh(part=(part, 3))
        fast.refresh(part=(part, 3))
        assert _same_images(plain, fast) == [], f"part {part} at {t_s} s"
    silent = [d for d in fast._devices if d.image.silent]
    assert silent, "the dead meter and the unreachable PDU should be silent at some point"
    assert fast.stats.array_fallbacks == 0
    assert fast.stats.array_refreshed > 0 and fast.stats.refreshes == plain.stats.refreshes
    # duplicate node ids refresh the device twice, as the snapshot path does
    plain.refresh([pdus[0], pdus[0]])
    fast.refresh([pdus[0], pdus[0]])
    assert _same_images(plain, fast) == []


def test_a_failing_array_provider_falls_back_to_the_snapshot_path() -> None:
    config = load_hall_config(ROOT / "configs" / "rig.toml")
    plant = Plant(config)
    view = PlantView(plant)
    bindings = resolve_bindings(config, plant.topo)
    calls = {"n": 0}

    def broken(node_ids: Any, shape: Any) -> SnapshotArrays:
        calls["n"] += 1
        raise RuntimeError("array provider bug")

    plain = ModbusEndpoints(bindings.modbus, view.snapshot, view.write, refresh_period_s=None,
                            clock=lambda: 1.0)
    fast = ModbusEndpoints(bindings.modbus, view.snapshot, view.write, refresh_period_s=None,
                           clock=lambda: 1.0, arrays=broken)
    plant.run_until(2.0, dt_s=0.5)
    plain.refresh()
    fast.refresh()
    assert calls["n"] >= 1 and fast.stats.array_fallbacks == calls["n"]
    assert fast.stats.array_refreshed == 0
    assert _same_images(plain, fast) == []


def test_a_pdu_of_another_shape_than_its_config_answers_exception_04_on_both_paths() -> None:
    config = load_hall_config(ROOT / "configs" / "rig.toml")
    plant = Plant(config)
    view = PlantView(plant)
    bindings = resolve_bindings(config, plant.topo)
    wrong = [replace(c, outlets=c.outlets + 1) if c.profile == PROFILE_PDU else c
             for c in bindings.modbus]
    plain = ModbusEndpoints(wrong, view.snapshot, view.write, refresh_period_s=None)
    fast = ModbusEndpoints(wrong, view.snapshot, view.write, refresh_period_s=None,
                           arrays=view.arrays)
    plant.run_until(1.0, dt_s=0.5)
    plain.refresh()
    fast.refresh()
    assert fast.stats.array_fallbacks >= 1
    pdus = [d for d in fast._devices if d.config.profile == PROFILE_PDU]
    assert pdus and all(d.image.exception == 4 for d in pdus)
    assert _same_images(plain, fast) == []


# --------------------------------------------------------------------------------------------
# Through the driver, over loopback TCP
# --------------------------------------------------------------------------------------------
async def test_the_driver_reads_the_same_snapshot_from_both_paths(
        unused_tcp_port_factory: Any) -> None:
    config = load_hall_config(ROOT / "configs" / "rig.toml")
    plant = Plant(config)
    view = PlantView(plant)
    bindings = resolve_bindings(config, plant.topo)
    for outlet in plant.switchable_outlets[:3]:
        plant.switch_outlet(int(outlet), True)
    plant.run_until(30.0, dt_s=0.5)

    def on_ports(ports: dict[int, int]) -> list[Any]:
        return [replace(c, port=ports[c.port]) for c in bindings.modbus]

    plain_devs = on_ports({p: unused_tcp_port_factory() for p in bindings.ports})
    fast_devs = on_ports({p: unused_tcp_port_factory() for p in bindings.ports})
    async with ModbusEndpoints(plain_devs, view.snapshot, view.write, refresh_period_s=None,
                               clock=lambda: 3.0) as plain, \
            ModbusEndpoints(fast_devs, view.snapshot, view.write, refresh_period_s=None,
                            clock=lambda: 3.0, arrays=view.arrays) as fast:
        plain.refresh()
        fast.refresh()
        read = 0
        for a_cfg, b_cfg in zip(plain_devs, fast_devs, strict=True):
            async with ModbusDevice(a_cfg) as a, ModbusDevice(b_cfg) as b:
                await a.wait_connected(2.0)
                await b.wait_connected(2.0)
                sa, sb = await a.read(), await b.read()
            assert sa.quality is Quality.GOOD and sb.quality is Quality.GOOD
            assert sa.header == sb.header
            assert sa.values == sb.values and sa.qualities == sb.qualities
            assert (sa.breaker_open, sa.bank_breaker_open) == (sb.breaker_open,
                                                               sb.bank_breaker_open)
            assert sa.outlets_on == sb.outlets_on
            assert sa.outlets_energized == sb.outlets_energized
            read += 1
        assert read == len(bindings.modbus) and fast.stats.array_refreshed > 0
        powered = [d for d in fast._devices if any(d.image.coils)]
        assert powered, "the switched outlets should read on"
