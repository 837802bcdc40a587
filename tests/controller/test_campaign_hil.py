"""The hardware-in-the-loop fault campaign (issue 8, docs/campaign-hil.md), one seeded run per
fault: `rampguard run` against `rampguard sim serve` over real loopback Modbus and a real
broker, each fault injected mid-ramp from outside both processes, and the safe outcome read
from the simulator's record (the relay's coil writes, the agents' applied caps, trips and
violations) and the audit log. benchmarks/campaign_hil.py runs the same procedures
(tests/hil_harness.py) over many seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests import hil_harness as hil

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _assert_safe(out: hil.Outcome) -> None:
    v = out.verdict
    assert v is not None
    assert v.trips == 0 and v.breakers_open == 0, v.notes
    assert v.limit_s_beyond_deadline == 0, v.notes
    assert v.double_energizations == 0, v.notes
    assert v.audit_records_lost == 0 and v.audit_corrupt == 0, v
    assert out.observed["run_exit"] == 0       # SIGTERM still stops it cleanly
    assert out.injected >= 1


async def test_broker_restart_mid_ramp_holds_then_resumes(tmp_path: Path,
                                                          private_broker: Any) -> None:
    out = await hil.broker_restart(tmp_path, private_broker, seed=0)
    _assert_safe(out)
    # the ramp was active and nothing was admitted: the lost zone inlet held it (rule 4)
    assert out.observed["mode_while_down"] == "HOLDING", out.observed
    assert "zone inlet unknown" in out.observed["hold"]
    assert "telemetry:zone:LAB" in out.observed["alarms_while_down"]     # rule 5, alarmed
    assert not out.observed["alarms_after"]
    assert out.observed["switch_ons_while_down"] == 0
    assert out.observed["steady"] and out.expected, out.observed


@pytest.mark.parametrize("device", ["meter", "pdu"])
async def test_hung_modbus_gateway_goes_safe_without_blocking_the_tick(
        tmp_path: Path, mqtt_broker: Any, device: str) -> None:
    out = await hil.modbus_hang(tmp_path, mqtt_broker.url, seed=1, device=device)
    _assert_safe(out)
    node = "LAB-PANEL" if device == "meter" else "RIG-A"
    assert node in out.observed["safe_reason"], out.observed
    # the tick kept a quarter of its pace or more while the poller timed out
    assert out.observed["ticks_per_s"] >= hil.SPEED / 4, out.observed
    assert out.observed["switch_ons_after_safe"] == 0
    assert out.expected


async def test_pdu_meter_lying_low_by_30_percent_is_caught(tmp_path: Path,
                                                           mqtt_broker: Any) -> None:
    out = await hil.meter_lying(tmp_path, mqtt_broker.url, seed=2, node="RIG-A")
    _assert_safe(out)
    # the PDU's inlet disagrees with the sum of its banks: inconsistent, so unknown: the
    # controller holds, then goes SAFE after telemetry_safe_s
    assert out.observed["reacted"] and out.observed["sum_check_fired"], out.observed
    assert out.observed["final_mode"] == "SAFE" and "RIG-A" in out.observed["reason"]


async def test_sigkill_at_seeded_points_of_a_ramp_energizes_nothing_twice(
        tmp_path: Path, mqtt_broker: Any) -> None:
    out = await hil.sigkill(tmp_path, mqtt_broker.url, seed=8, kills=2)
    _assert_safe(out)
    assert out.injected == 2 and out.observed["opens"] == 3 and out.observed["resumed"]
    assert out.expected, out.observed


async def test_wall_clock_steps_do_not_touch_ticks_or_the_ramp(tmp_path: Path,
                                                               mqtt_broker: Any) -> None:
    out = await hil.clock_jump(tmp_path, mqtt_broker.url, seed=3, steps_s=(+240.0, -360.0))
    _assert_safe(out)
    assert out.expected, out.observed     # ramp complete, ticks, monotonic audit times
    records = hil.audit_records(tmp_path / "audit.jsonl")
    walls = [r["t_wall_s"] for r in records]
    assert max(walls) - min(walls) > 200     # the audit's wall times show the steps


async def test_full_audit_disk_stops_actuation_and_keeps_what_was_written(
        tmp_path: Path, mqtt_broker: Any) -> None:
    out = await hil.disk_full(tmp_path, mqtt_broker.url, seed=4, limit_bytes=2600)
    _assert_safe(out)       # every write the relay saw has its durable intent
    assert "audit" in out.observed["safe_reason"], out.observed
    assert out.observed["writes_after_safe"] == 0
    assert "audit:log" in out.observed["alarms"]        # alarmed where it can be: the status
    assert out.observed["audit_exit"] == 0 and out.observed["audit_size_bytes"] <= 2600
    assert out.expected
