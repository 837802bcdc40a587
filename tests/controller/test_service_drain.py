"""The service's drain applies a tick's snapshots at once (Service._apply_snapshots). Checked
against a plain reference, snapshot by snapshot, on the demo hall: random readings, devices
read several times in one drain (a late tick), bad qualities, opened breakers and banks, dead
feeds, and callbacks (a lost device) between the snapshots."""

from __future__ import annotations

import asyncio
import math
import random
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.config import load_hall_config
from controller.core import DEAD_VOLTAGE_FRACTION
from controller.service import EARLY_APPLY_SNAPSHOTS, Service, ServiceOptions
from controller.topology import compile_hall
from drivers import Snapshot
from drivers.errors import DeviceTimeout
from drivers.registers import Quality, builtin_layout

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hall() -> tuple[Any, Any]:
    config = load_hall_config(ROOT / "configs" / "demo-hall.toml")
    return config, compile_hall(config)


def _service(hall: tuple[Any, Any], tmp_path: Path) -> Service:
    config, topo = hall
    options = ServiceOptions(mqtt_url=None, metrics_port=None, audit_path=tmp_path / "a.jsonl")
    return Service(config, topo, options, clock=lambda: 50.0)


def _snapshot(cfg: Any, rng: random.Random) -> Snapshot:
    layout = builtin_layout(cfg.profile, cfg.banks, cfg.outlets)
    values = []
    for unit in layout.units:
        if unit == "V":
            values.append(rng.choice([230.0, 228.5, 0.0, 12.0]))
        else:
            values.append(round(rng.uniform(0.0, 40.0), 3))
    if rng.random() < 0.1:
        qualities = tuple(rng.choice([Quality.GOOD, Quality.BAD, Quality.IMPLAUSIBLE])
                          for _ in values)
    else:
        qualities = layout.all_good
    return Snapshot(
        device=cfg.key, profile=cfg.profile, t_mono_s=0.0, t_wall_s=0.0, layout=layout,
        values=tuple(values), qualities=qualities, stale=rng.random() < 0.05,
        breaker_open=rng.random() < 0.1,
        bank_breaker_open=tuple(rng.random() < 0.2 for _ in range(cfg.banks)),
        outlets_on=tuple(rng.random() < 0.5 for _ in range(cfg.outlets)))


def _reference(svc: Service, key: str, snap: Snapshot, t_s: float,
               batch: list[tuple[np.ndarray, np.ndarray, float]]) -> None:
    """One snapshot, the plain way (the service's code before it was batched)."""
    plan = svc._snapshot_plan(key, snap)
    good = snap.quality.value == 0
    values = snap.values
    if plan.row_nodes.size:
        ext = np.array([*values, 0.0])
        currents = ext[plan.row_idx] if good else np.full((plan.row_nodes.size, 3), math.nan)
        batch.append((plan.row_nodes, currents, t_s))
    for pos, k in zip(plan.outlet_pos.tolist(), plan.outlet_k.tolist(), strict=True):
        svc._outlet_on[k] = snap.outlets_on[pos]
        svc._outlet_seen_s[k] = t_s
    node = plan.node
    if node is not None and good and plan.volts:
        svc._node_live[node] = max(values[i] for i in plan.volts) >= (
            DEAD_VOLTAGE_FRACTION * float(svc.topo.v_ln_v[node]))
    if node is not None and snap.breaker_open is not None:
        svc._breaker_closed[node] = not snap.breaker_open
    pdu = svc._layout.get(svc._device_cfg[key].node_id)
    if snap.bank_breaker_open and pdu is not None:
        for bank, is_open in zip(pdu.banks, snap.bank_breaker_open, strict=False):
            svc._breaker_closed[bank] = not is_open


@pytest.mark.parametrize(("seed", "early"), [(0, False), (1, False), (2, True), (3, True)])
def test_the_batched_drain_matches_the_snapshot_by_snapshot_reference(
        hall: tuple[Any, Any], tmp_path: Path, seed: int, early: bool) -> None:
    """``early``: the snapshots at the head of the queue are also applied between ticks, at
    random points (Service._apply_early), as they are once enough have come."""
    rng = random.Random(seed)
    fast, slow = _service(hall, tmp_path / "f"), _service(hall, tmp_path / "s")
    (tmp_path / "f").mkdir()
    (tmp_path / "s").mkdir()
    cfgs = [c for c in fast.bindings.modbus]
    # one read of every device, then a late tick's second read of a third of them, with
    # devices lost between the reads
    order = cfgs + rng.sample(cfgs, len(cfgs) // 3)
    items: list[Any] = []
    lost_at = set(rng.sample(range(1, len(order)), 25))
    for j, cfg in enumerate(order):
        if j in lost_at:            # the device read just before is lost
            items.append(("lost", order[j - 1].key))
        items.append((cfg.key, _snapshot(cfg, rng), 10.0 + j * 1e-3))
    # the fast path: through the service's own drain
    for item in items:
        if item[0] == "lost":
            key = item[1]
            fast._pending.append(lambda key=key: fast._device_lost(key))
        else:
            fast._pending.append(item)
        if early and rng.random() < 0.02:
            fast._apply_early()
    fast._drain()
    # the reference: one by one, the batch handed over in the same rounds
    batch: list[tuple[np.ndarray, np.ndarray, float]] = []
    for item in items:
        if item[0] == "lost":
            slow._device_lost(item[1])
        else:
            _reference(slow, *item, batch)
    seen: dict[int, int] = {}
    rounds: list[list[tuple[int, np.ndarray, float]]] = []
    for nodes, currents, t_s in batch:
        for n, c in zip(nodes.tolist(), currents, strict=True):
            r = seen[n] = seen.get(n, -1) + 1
            while len(rounds) <= r:
                rounds.append([])
            rounds[r].append((n, c, t_s))
    for rnd in rounds:
        slow.store.ingest_nodes(np.array([n for n, _, _ in rnd]),
                                np.array([c for _, c, _ in rnd]).reshape(len(rnd), 3),
                                np.array([t for _, _, t in rnd]))
    assert len(rounds) == 2            # the devices read twice gave a second round
    for name in ("_outlet_on", "_outlet_seen_s", "_node_live", "_breaker_closed"):
        np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name), err_msg=name)
    np.testing.assert_array_equal(fast.store.node_i_a, slow.store.node_i_a)
    np.testing.assert_array_equal(fast.store.node_t_s, slow.store.node_t_s)
    assert fast.store.counters() == slow.store.counters()
    # and the readings did arrive: most nodes have a current; some outlets were lost after
    # their last read
    assert np.isfinite(fast.store.node_t_s).sum() > 0.5 * len(cfgs)
    assert np.isneginf(fast._outlet_seen_s).any() and np.isfinite(fast._outlet_seen_s).any()
    assert not np.all(fast._outlet_on) and np.any(fast._outlet_on)


async def test_snapshots_are_applied_before_the_tick_once_enough_have_come(
        hall: tuple[Any, Any], tmp_path: Path) -> None:
    svc = _service(hall, tmp_path)
    rng = random.Random(7)
    cfgs = [c for c in svc.bindings.modbus if c.outlets]
    n = EARLY_APPLY_SNAPSHOTS + 10
    assert len(cfgs) >= n
    lost = cfgs[3].key
    for j, cfg in enumerate(cfgs[:n]):
        if j == EARLY_APPLY_SNAPSHOTS - 5:      # a callback: what follows it waits for the tick
            svc._pending.append(lambda: svc._device_lost(lost))
        svc._on_snapshot(types.SimpleNamespace(config=cfg), _snapshot(cfg, rng))
    assert len(svc._pending) == n + 1          # nothing applied yet: scheduled on the loop
    await asyncio.sleep(0)
    # the snapshots before the callback were applied; the callback and the rest wait
    assert len(svc._pending) == n + 1 - (EARLY_APPLY_SNAPSHOTS - 5)
    assert not isinstance(svc._pending[0], tuple)
    assert np.isfinite(svc._outlet_seen_s[svc._outlets_of_device[cfgs[0].key]]).all()
    assert np.isneginf(svc._outlet_seen_s[svc._outlets_of_device[cfgs[n - 1].key]]).all()
    assert svc._batch and not np.isfinite(svc.store.node_t_s).any()   # the store: at the tick
    svc._drain()
    assert not svc._pending and not svc._batch
    assert np.isneginf(svc._outlet_seen_s[svc._outlets_of_device[lost]]).all()
    assert np.isfinite(svc._outlet_seen_s[svc._outlets_of_device[cfgs[n - 1].key]]).all()
    assert np.isfinite(svc.store.node_t_s).sum() >= n


def test_agents_reporting_twice_before_a_tick_take_their_readings_in_order(
        hall: tuple[Any, Any], tmp_path: Path) -> None:
    fast, slow = _service(hall, tmp_path / "f"), _service(hall, tmp_path / "s")
    rng = random.Random(11)
    bound = np.flatnonzero(fast.store.has_agent).tolist()
    n_gpus = int(fast.topo.server_gpus[bound[0]])
    rows = []
    for rnd in range(3):                      # three reports of some servers before the tick
        for server in rng.sample(bound, len(bound) // (rnd + 1)):
            power = [rng.choice([-5.0, math.nan]) if rng.random() < 0.02 else
                     rng.uniform(300.0, 450.0) for _ in range(n_gpus)]
            caps = [rng.choice([500.0, 700.0]) for _ in range(n_gpus)]
            rows.append((server, power, caps, 20.0 + rnd))
    fast._agent_rows = list(rows)
    fast._flush_agent_rows()
    for server, power, caps, t_s in rows:
        slow.store.ingest_server(server, power, caps, t_s)
    for name in ("server_power_w", "server_cap_w", "server_t_s"):
        np.testing.assert_array_equal(getattr(fast.store, name), getattr(slow.store, name),
                                      err_msg=name)
    assert fast.store.counters() == slow.store.counters()
    assert np.isfinite(fast.store.server_t_s).sum() > len(bound) // 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_repeated_failed_polls_queue_one_callback_per_device_to_the_same_end(
        hall: tuple[Any, Any], tmp_path: Path, seed: int) -> None:
    """A hall whose gateways hang fails thousands of polls a second. A device's failures queue
    one "lost" callback until it runs or a snapshot of that device comes after it, and each
    drain ends where applying every failure and snapshot one by one ends."""
    rng = random.Random(seed)
    (tmp_path / "f").mkdir()
    (tmp_path / "s").mkdir()
    fast, slow = _service(hall, tmp_path / "f"), _service(hall, tmp_path / "s")
    cfgs = [c for c in fast.bindings.modbus if c.outlets][:12]
    assert len(cfgs) == 12
    ends = set()
    for _drain in range(4):
        failures = snapshots = 0
        for _ in range(400):
            cfg = rng.choice(cfgs)
            dev = types.SimpleNamespace(config=cfg)
            if rng.random() < 0.8:
                failures += 1
                fast._on_error(dev, DeviceTimeout("no answer within 0.5 s"))  # type: ignore[arg-type]
                slow._device_lost(cfg.key)
            else:
                snapshots += 1
                snap = _snapshot(cfg, rng)
                fast._on_snapshot(dev, snap)                       # type: ignore[arg-type]
                _reference(slow, cfg.key, snap, 50.0, [])
        callbacks = sum(not isinstance(item, tuple) for item in fast._pending)
        # a callback needs a snapshot of its device before it, or none queued for it yet
        assert callbacks <= snapshots + len(cfgs) < failures
        fast._drain()
        assert not fast._lost_queued
        np.testing.assert_array_equal(fast._outlet_seen_s, slow._outlet_seen_s)
        np.testing.assert_array_equal(fast._outlet_on, slow._outlet_on)
        outlets = np.concatenate([fast._outlets_of_device[c.key] for c in cfgs])
        ends.update(np.isneginf(fast._outlet_seen_s[outlets]).tolist())
    assert ends == {True, False}         # drains that ended with devices lost and seen
