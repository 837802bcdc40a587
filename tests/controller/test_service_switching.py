"""How the service carries out outlet switches (controller/service.py, docs/operations.md).

A tick queues its switches to one worker per device and returns: it never waits for the plan's
switch-on times nor for a slow device (the load run on the 32k hall had ticks of 45 s while 276
switch-ons went out one after another). The intents are durable before anything is sent; a
device's switch-ons are spaced by its PDU's inrush guard counted from the *reply* to the
previous one; a failed switch-on is undone in the core's state at the next drain; a stop sends
nothing more and says so in the audit log.

The device here is a stand-in with a set latency (the real Modbus path is covered end to end in
test_service.py and the HIL campaign); what is under test is the service's scheduling.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np

from controller import core
from controller.audit import AuditLog, read_audit
from controller.config import load_hall_config
from controller.core import Mode
from controller.service import Service, ServiceOptions
from controller.topology import compile_hall
from drivers import DeviceUnreachable
from tests.serve_helpers import rig_on_free_ports

ROOT = Path(__file__).resolve().parents[2]


class SlowPdu:
    """Answers each coil write after ``latency_s``; remembers when each was asked and answered."""

    def __init__(self, latency_s: float, fail: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self.latency_s = latency_s
        self.fail = fail
        self.calls: list[tuple[int, bool, float, float]] = []   # (outlet, on, sent, answered)
        self.busy = 0
        self.most_busy = 0

    async def switch_outlet(self, n: int, on: bool) -> bool:
        sent = time.monotonic()
        self.busy += 1
        self.most_busy = max(self.most_busy, self.busy)
        try:
            await asyncio.sleep(self.latency_s)
        finally:
            self.busy -= 1
        self.calls.append((n, on, sent, time.monotonic()))
        if n in self.fail:
            raise DeviceUnreachable(f"outlet {n}: no answer")
        return on


def _service(tmp_path: Path) -> tuple[Service, AuditLog]:
    config = load_hall_config(ROOT / "configs" / "rig.toml")
    svc = Service(config, compile_hall(config), ServiceOptions(
        mqtt_url=None, metrics_port=None, audit_path=tmp_path / "audit.jsonl", fsync=False))
    audit = AuditLog.open(tmp_path / "audit.jsonl", fsync=False)
    svc._audit = audit
    return svc, audit


def _device_outlets(svc: Service) -> tuple[str, list[int]]:
    key, outlets = next(iter(svc._outlets_of_device.items()))
    return key, outlets


def _records(path: Path, kind: str) -> list[dict]:
    return [r.to_dict() for r in read_audit(path) if r.kind == kind]


async def _until(pred, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_tick_queues_its_switches_and_does_not_wait_for_them(tmp_path: Path) -> None:
    svc, audit = _service(tmp_path)
    key, outlets = _device_outlets(svc)
    pdu = SlowPdu(latency_s=0.05)
    svc._actuators = {key: pdu}                                    # type: ignore[dict-item]
    now = svc.clock()
    picked = np.asarray(outlets[:4], np.int32)
    t0 = time.monotonic()
    await svc._act((core.Energize(picked, np.full(4, now), core.Reason("plan")),))
    assert time.monotonic() - t0 < 0.05 and not pdu.calls         # queued, nothing awaited
    # every intent is in the log before the first write went out
    intents = _records(tmp_path / "audit.jsonl", "intent")
    assert len(intents) == 4 and all(r["action"]["on"] for r in intents)
    await _until(lambda: len(pdu.calls) == 4)
    guard = float(svc.topo.inrush_guard_s[svc.ctx.outlet_node[picked[0]]])
    assert guard > 0
    for (_n0, _on0, _s0, answered), (_n1, _on1, sent, _a1) in zip(pdu.calls,
                                                                  pdu.calls[1:], strict=False):
        assert sent - answered >= guard - 1e-3                   # spaced from the reply
    assert pdu.most_busy == 1                                     # one write at a time
    assert not _records(tmp_path / "audit.jsonl", "result")       # results wait for the drain
    svc._drain()
    results = _records(tmp_path / "audit.jsonl", "result")
    assert sorted(r["action_id"] for r in results) == sorted(r["seq"] for r in intents)
    assert all(r["ok"] and r["readback"]["on"] for r in results)
    assert svc._outlet_on[picked].all()
    audit.close()


async def test_switch_ons_keep_their_planned_times_and_devices_run_side_by_side(
        tmp_path: Path) -> None:
    svc, audit = _service(tmp_path)
    key, outlets = _device_outlets(svc)
    other = "another-pdu"
    pdu_a, pdu_b = SlowPdu(0.3), SlowPdu(0.3)
    svc._actuators = {key: pdu_a, other: pdu_b}                   # type: ignore[dict-item]
    svc._outlet_addr[outlets[1]] = (other, 2)                     # one outlet moved to PDU b
    now = svc.clock()
    picked = np.asarray([outlets[0], outlets[1]], np.int32)
    t0 = time.monotonic()
    await svc._act((core.Energize(picked, np.array([now + 0.2, now + 0.2]),
                                  core.Reason("plan")),))
    await _until(lambda: len(pdu_a.calls) == 1 and len(pdu_b.calls) == 1)
    sent = [pdu_a.calls[0][2] - t0, pdu_b.calls[0][2] - t0]
    assert min(sent) >= 0.19                                     # not before the planned time
    assert time.monotonic() - t0 < 0.2 + 0.3 * 2                 # the two went in parallel
    audit.close()


async def test_a_failed_switch_on_is_undone_in_the_core_state_at_the_next_drain(
        tmp_path: Path) -> None:
    svc, audit = _service(tmp_path)
    key, outlets = _device_outlets(svc)
    bad = outlets[0]
    n_bad = svc._outlet_addr[bad][1]
    pdu = SlowPdu(0.01, fail={n_bad})
    svc._actuators = {key: pdu}                                   # type: ignore[dict-item]
    psus = np.flatnonzero(svc.ctx.psu_outlet == bad)
    now = svc.clock()
    svc.state = svc.state.replace(
        psu_commanded=np.where(np.isin(np.arange(svc.topo.n_psus), psus), True,
                               svc.state.psu_commanded),
        psu_on_s=np.where(np.isin(np.arange(svc.topo.n_psus), psus), now,
                          svc.state.psu_on_s))
    await svc._act((core.Energize(np.asarray([bad], np.int32), np.array([now]),
                                  core.Reason("plan")),))
    await _until(lambda: len(pdu.calls) == 1)
    assert svc.state.psu_commanded[psus].all()      # untouched while a decision may be running
    svc._drain()
    assert not svc.state.psu_commanded[psus].any() and np.isinf(svc.state.psu_on_s[psus]).all()
    (result,) = _records(tmp_path / "audit.jsonl", "result")
    assert not result["ok"] and "no answer" in result["detail"]
    assert not svc._outlet_on[bad]
    audit.close()


async def test_a_stop_sends_nothing_more_and_logs_what_was_not_sent(tmp_path: Path) -> None:
    svc, audit = _service(tmp_path)
    key, outlets = _device_outlets(svc)
    pdu = SlowPdu(0.01)
    svc._actuators = {key: pdu}                                   # type: ignore[dict-item]
    now = svc.clock()
    picked = np.asarray(outlets[:3], np.int32)
    await svc._act((core.Energize(picked, np.array([now, now + 5.0, now + 6.0]),
                                  core.Reason("plan")),))
    await _until(lambda: len(pdu.calls) == 1)
    svc.stop()
    await svc._stop_switching()
    svc._drain()
    assert len(pdu.calls) == 1
    results = _records(tmp_path / "audit.jsonl", "result")
    assert [r["ok"] for r in results].count(True) == 1
    not_sent = [r for r in results if not r["ok"]]
    assert len(not_sent) == 2 and all("service stopped" in r["detail"] for r in not_sent)
    audit.close()


async def test_a_queued_switch_on_is_not_sent_once_the_controller_is_safe(
        tmp_path: Path) -> None:
    svc, audit = _service(tmp_path)
    key, outlets = _device_outlets(svc)
    pdu = SlowPdu(0.01)
    svc._actuators = {key: pdu}                                   # type: ignore[dict-item]
    now = svc.clock()
    await svc._act((core.Energize(np.asarray(outlets[:1], np.int32), np.array([now + 0.3]),
                                  core.Reason("plan")),))
    svc.state = core.enter_safe(svc.state, "test", now)
    assert svc.state.mode == Mode.SAFE
    await asyncio.sleep(0.5)
    svc._drain()
    assert not pdu.calls
    (result,) = _records(tmp_path / "audit.jsonl", "result")
    assert not result["ok"] and "SAFE" in result["detail"]
    audit.close()


async def test_a_stop_ends_the_control_loop_even_if_a_tick_swallowed_the_cancellation(
        tmp_path: Path) -> None:
    """The tick awaits MQTT publishes, and on Python 3.11 the wait_for inside aiomqtt's publish
    returns normally when the cancellation lands as the publish completes: the control loop
    must still end on the stop (it used to tick on, and the service never stopped)."""
    config_path, _pdu_port, _meter_port = rig_on_free_ports(tmp_path)
    config = load_hall_config(config_path)
    svc = Service(config, compile_hall(config), ServiceOptions(
        mqtt_url=None, http_port=0, metrics_port=None, audit_path=tmp_path / "audit.jsonl",
        token="switching-test-T0ken", startup_wait_s=0.0, fsync=False))
    ticks: list[float] = []
    swallowed: list[bool] = []

    async def tick() -> None:
        ticks.append(time.monotonic())
        if swallowed:
            return
        try:
            await asyncio.sleep(0.5)
        except asyncio.CancelledError:
            swallowed.append(True)          # as that wait_for does: the tick carries on

    svc.tick = tick                                               # type: ignore[method-assign]
    runner = asyncio.create_task(svc.run())
    await _until(lambda: len(ticks) >= 1)
    svc.stop()
    await asyncio.wait_for(runner, timeout=10)
    assert swallowed == [True]
    stopped = time.monotonic()
    await asyncio.sleep(2 * svc.settings.tick_s)
    assert not [t for t in ticks if t > stopped]
