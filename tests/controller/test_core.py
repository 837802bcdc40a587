"""The decision core on hand-built situations: one test per rule (DESIGN.md "Safety rules").

The rig (configs/rig.toml): one rack PDU with two 32 A C-curve banks (L1, L2), four 8-GPU servers
with one PSU on each bank, one cooling zone; the PDU (RIG-A) and the panel are metered.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from controller import core
from controller.config import load_hall_config
from controller.core import CoreContext, Mode, Readbacks
from controller.telemetry import TelemetryStore
from controller.topology import compile_hall

RIG = Path(__file__).resolve().parents[2] / "configs" / "rig.toml"


class Rig:
    """The rig's core, store and read-backs, with a settable clock."""

    def __init__(self, **controller: object) -> None:
        cfg = load_hall_config(RIG)
        if controller:
            cfg = cfg.model_copy(update={"controller": cfg.controller.model_copy(
                update=controller)})
        self.cfg = cfg
        self.topo = compile_hall(cfg)
        self.ctx = CoreContext(self.topo, cfg.controller)
        self.now = 0.0
        self.meters = [self.topo.node_index["RIG-A"], self.topo.node_index["LAB-PANEL"]]
        self.store = TelemetryStore(self.topo, cfg.controller, self.meters,
                                    np.arange(self.topo.n_servers), clock=lambda: self.now)
        self.outlet_on = np.zeros(self.ctx.n_outlets, bool)
        self.inlet_c = 22.0
        self.state = core.initial_state(self.ctx)

    def node(self, name: str) -> int:
        return self.topo.node_index[name]

    def read_meters(self, rig_a: float | list[float] = 0.0, panel: float = 0.0) -> None:
        pdu = [rig_a, rig_a, 0.0] if isinstance(rig_a, float) else rig_a
        self.store.ingest_node(self.meters[0], pdu, self.now)
        self.store.ingest_node(self.meters[1], [panel, panel, 0.0], self.now)

    def readbacks(self) -> Readbacks:
        return Readbacks(self.outlet_on.copy(), np.ones(self.ctx.n_outlets, bool),
                         np.ones(self.topo.n_nodes, bool),
                         np.full(len(self.topo.zone_id), self.inlet_c))

    def tick(self, dt_s: float = 1.0, *, meters: bool = True, execute: bool = True
             ) -> core.Decision:
        self.now += dt_s
        if meters:
            self.read_meters()
        self.store.refresh()
        d = core.decide(self.ctx, self.store, self.readbacks(), self.state, self.now)
        self.state = d.state
        if execute:
            for a in d.actions:
                if isinstance(a, core.Energize):
                    self.outlet_on[a.outlets] = True
                elif isinstance(a, core.SwitchOff):
                    self.outlet_on[a.outlets] = False
        return d

    def start(self) -> None:
        self.read_meters()
        self.store.refresh()
        self.state = core.start_ramp(self.ctx, self.state, self.now)


def energized(d: core.Decision) -> np.ndarray:
    parts = [a.outlets for a in d.actions if isinstance(a, core.Energize)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int32)


def caps(d: core.Decision) -> dict[int, float]:
    out: dict[int, float] = {}
    for a in d.actions:
        if isinstance(a, core.SetCaps):
            out.update(zip(a.servers.tolist(), a.cap_w.tolist(), strict=True))
    return out


def run_ramp(rig: Rig, seconds: int) -> list[core.Decision]:
    return [rig.tick() for _ in range(seconds)]


# ---------------------------------------------------------------------------------- ramp
def test_a_ramp_energizes_every_outlet_once_and_reaches_steady() -> None:
    rig = Rig()
    rig.start()
    decisions = run_ramp(rig, 40)
    sent = np.concatenate([energized(d) for d in decisions])
    assert sorted(sent.tolist()) == list(range(rig.ctx.n_outlets))  # each exactly once
    # pretend every agent confirms the commanded caps: the ramp completes
    cmd = rig.state.cap_cmd_w
    assert np.isfinite(cmd).all()
    rig.store.ingest_servers(np.arange(4), np.full(4, 100.0), cmd, rig.now)
    for _ in range(400):
        d = rig.tick()
        rig.store.ingest_servers(np.arange(4), np.full(4, 100.0), rig.state.cap_cmd_w, rig.now)
        assert energized(d).size == 0
        if rig.state.mode == Mode.STEADY:
            break
    assert rig.state.mode == Mode.STEADY


def test_rule_2_switch_ons_under_one_bank_are_spaced_by_the_inrush_guard() -> None:
    rig = Rig()
    rig.start()
    times: dict[int, float] = {}
    for d in run_ramp(rig, 40):
        for a in d.actions:
            if isinstance(a, core.Energize):
                times.update(zip(a.outlets.tolist(), a.at_s.tolist(), strict=True))
    guard = float(rig.topo.inrush_guard_s[rig.node("RIG-A-1")])
    assert guard > 0
    for bank in ("RIG-A-1", "RIG-A-2"):
        b = rig.node(bank)
        under = [o for o in times if rig.topo.parent_idx[rig.ctx.outlet_node[o]] == b]
        t = sorted(times[o] for o in under)
        assert len(t) == 4
        assert np.diff(t).min() >= guard - 1e-9


def test_rule_1_a_server_counts_at_full_power_until_its_cap_is_confirmed() -> None:
    rig = Rig()
    rig.outlet_on[:] = True  # everything on since before the controller started
    d = rig.tick()
    bank = rig.node("RIG-A-1")
    full = d.worst_a[0, bank].max()
    # per server 2800 W over two PSUs: 1400 W on each bank, 4 servers, 230 V, PF 0.95
    v_ln = float(rig.topo.v_ln_v[bank])
    assert full == pytest.approx(4 * 1400.0 / (v_ln * 0.95), rel=1e-6)
    # the caps commanded and read back at 150 W per GPU: 400 + 8 × 150 = 1600 W per server
    rig.state = rig.state.replace(cap_cmd_w=np.full(4, 150.0))
    rig.store.ingest_servers(np.arange(4), np.full(4, 140.0), np.full(4, 150.0), rig.now)
    d = rig.tick()
    assert d.worst_a[0, bank].max() == pytest.approx(4 * 800.0 / (v_ln * 0.95), rel=1e-6)
    # a cap read back above the command is not a confirmation
    rig.store.ingest_servers(np.arange(4), np.full(4, 140.0), np.full(4, 300.0), rig.now)
    d = rig.tick()
    assert d.worst_a[0, bank].max() == pytest.approx(full, rel=1e-6)


def test_rule_1_admission_holds_when_measured_load_leaves_no_headroom() -> None:
    rig = Rig()
    rig.start()
    # the PDU's meter says its L1 pole already carries 25 A that nothing explains
    rig.now += 1.0
    rig.read_meters([25.0, 0.0, 0.0])
    rig.read_meters([25.0, 0.0, 0.0])  # a jump counts once the next reading confirms it
    rig.store.refresh()
    d = core.decide(rig.ctx, rig.store, rig.readbacks(), rig.state, rig.now)
    sent = energized(d)
    l1_outlets = [o for o in range(rig.ctx.n_outlets)
                  if rig.topo.parent_idx[rig.ctx.outlet_node[o]] == rig.node("RIG-A-1")]
    assert not set(sent.tolist()) & set(l1_outlets)
    # the re-plan (the meter departs from the model) leaves the servers off, and says so
    assert d.state.mode == Mode.HOLDING
    assert "do not fit" in d.state.mode_reason


def test_rule_4_no_new_heat_into_a_zone_at_its_hold_threshold() -> None:
    rig = Rig()
    rig.start()
    rig.inlet_c = float(rig.topo.zone_inlet_hold_c[0]) + 0.5
    decisions = run_ramp(rig, 10)
    assert all(energized(d).size == 0 for d in decisions)
    assert rig.state.mode == Mode.HOLDING
    assert "zone inlet at hold" in rig.state.mode_reason
    rig.inlet_c = float("nan")  # unknown is treated like hot
    assert energized(rig.tick()).size == 0
    assert "zone inlet unknown" in rig.state.mode_reason
    rig.inlet_c = 22.0
    sent = np.concatenate([energized(d) for d in run_ramp(rig, 40)])
    assert sent.size == rig.ctx.n_outlets


def test_rule_5_unknown_telemetry_holds_then_goes_safe() -> None:
    rig = Rig(telemetry_safe_s=5.0)
    rig.state = core.start_ramp(rig.ctx, rig.state, rig.now)  # meters never answered
    held = [rig.tick(meters=False) for _ in range(3)]
    assert rig.state.mode == Mode.HOLDING
    assert "telemetry unknown" in rig.state.mode_reason
    # the alarm waits until the first reading is overdue (meter_stale_s), then comes once
    assert not any(isinstance(a, core.Alarm) for d in held[:2] for a in d.actions)
    later = [rig.tick(meters=False) for _ in range(4)]
    raised = [a for d in held + later for a in d.actions
              if isinstance(a, core.Alarm) and a.code == "telemetry" and a.node == "RIG-A"]
    assert len(raised) == 1 and raised[0].active
    assert rig.state.mode == Mode.SAFE
    assert "telemetry" in rig.state.safe_reason
    assert sum(energized(d).size for d in held + later) == 0
    with pytest.raises(core.CommandRefusedError, match="not trusted"):
        core.resume(rig.ctx, rig.state, rig.store)
    d = rig.tick()  # meters answer again; SAFE is sticky
    assert rig.state.mode == Mode.SAFE and energized(d).size == 0
    assert any(isinstance(a, core.Alarm) and not a.active for a in d.actions)
    rig.state = core.resume(rig.ctx, rig.state, rig.store)
    sent = np.concatenate([energized(rig.tick()) for _ in range(10)])
    assert sorted(sent.tolist()) == list(range(rig.ctx.n_outlets))


def test_rule_6_shedding_caps_lowest_priority_and_highest_drawing_first() -> None:
    rig = Rig()
    rig.outlet_on[:] = True
    rig.state = rig.state.replace(cap_cmd_w=np.full(4, 300.0))
    # server 3 has the lowest priority; server 1 draws the most of the others
    prio = np.array([5, 5, 5, 1], dtype=np.int32)
    object.__setattr__(rig.topo, "server_priority", prio)
    gpu_w = np.array([250.0, 290.0, 200.0, 280.0])
    rig.store.ingest_servers(np.arange(4), gpu_w, np.full(4, 300.0), rig.now)
    limit = float(rig.topo.limit_a[rig.node("RIG-A"), 0])
    rig.now += 1.0
    rig.read_meters([limit * 1.02, limit * 1.02, 0.0])
    rig.read_meters([limit * 1.02, limit * 1.02, 0.0])
    rig.store.ingest_servers(np.arange(4), gpu_w, np.full(4, 300.0), rig.now)
    rig.store.refresh()
    d = core.decide(rig.ctx, rig.store, rig.readbacks(), rig.state, rig.now)
    rig.state = d.state
    assert rig.state.mode == Mode.SHEDDING
    c = caps(d)
    assert 3 in c and c[3] < 300.0
    # need: 1 − 0.96/1.02 ≈ 5.9 % of ~11 kW ≈ 650 W: server 3 alone can give 8 × 150 W
    assert set(c) == {3}
    assert all(a.reason.rule == "shed" for a in d.actions if isinstance(a, core.SetCaps))


def test_rule_6_shed_caps_are_released_in_steps_below_the_uncapping_threshold() -> None:
    rig = Rig()
    rig.outlet_on[:] = True
    rig.state = rig.state.replace(cap_cmd_w=np.full(4, 200.0), shed_cap_w=np.full(4, 200.0))
    raised: list[float] = []
    for _ in range(120):
        rig.now += 1.0
        rig.read_meters(5.0, 5.0)
        # the servers work at their caps: what the release raises, they draw (an idle server
        # would bring in the ramp guard: test_ramp_guard_*)
        rig.store.ingest_servers(np.arange(4), rig.ctx.work_w(rig.state.cap_cmd_w),
                                 rig.state.cap_cmd_w, rig.now)
        rig.store.refresh()
        d = core.decide(rig.ctx, rig.store, rig.readbacks(), rig.state, rig.now)
        rig.state = d.state
        raised.extend(c for s, c in caps(d).items() if s == 0)
    assert len(raised) >= 2                         # in steps, not at once
    assert raised == sorted(raised)
    assert raised[-1] == pytest.approx(300.0)       # back to the plan's cap (uncapped)
    assert not np.isfinite(rig.state.shed_cap_w).any()


def test_rule_6_outlets_off_only_where_policy_allows_and_after_half_the_deadline() -> None:
    for policy, expect in (("never", False), ("any", True)):
        cfg_shed = load_hall_config(RIG).controller.shedding.model_copy(
            update={"outlet_off": policy})
        rig = Rig(shedding=cfg_shed)
        rig.outlet_on[:] = True
        rig.state = rig.state.replace(cap_cmd_w=np.full(4, 150.0))
        limit = float(rig.topo.limit_a[rig.node("RIG-A"), 0])
        off = False
        for _ in range(120):
            rig.now += 1.0
            rig.read_meters([limit * 1.5, limit * 1.5, 0.0])
            rig.read_meters([limit * 1.5, limit * 1.5, 0.0])
            rig.store.refresh()
            d = core.decide(rig.ctx, rig.store, rig.readbacks(), rig.state, rig.now)
            rig.state = d.state
            offs = [a for a in d.actions if isinstance(a, core.SwitchOff)]
            if offs:
                off = True
                assert offs[0].reason.rule == "shed-deadline"
                break
        assert off is expect, policy
    # the PDU inlet has no breaker of its own: the unprotected deadline; its branch breaker's
    # guard curve gives a finite one, shorter for a larger overload
    assert core.shed_deadline_s(rig.topo, rig.node("RIG-A"), 1.5) == core.UNPROTECTED_DEADLINE_S
    branch = rig.node("RIG-A-BR")
    assert 0 < core.shed_deadline_s(rig.topo, branch, 2.0) < core.shed_deadline_s(
        rig.topo, branch, 1.5) < math.inf


# ---------------------------------------------------------------------------------- state
def test_operator_pause_holds_the_whole_plan_and_shifts_it() -> None:
    rig = Rig()
    rig.start()
    t0 = rig.state.plan_t0_s
    rig.state = core.pause(rig.state)
    decisions = run_ramp(rig, 5)
    assert all(energized(d).size == 0 for d in decisions)
    assert rig.state.mode == Mode.HOLDING and "operator pause" in rig.state.mode_reason
    assert rig.state.plan_t0_s == pytest.approx(t0 + 4.0)
    rig.state = core.resume(rig.ctx, rig.state)
    sent = np.concatenate([energized(d) for d in run_ramp(rig, 40)])
    assert sent.size == rig.ctx.n_outlets
    with pytest.raises(core.CommandRefusedError):
        core.resume(rig.ctx, rig.state)


def test_never_energizes_twice_even_when_a_read_back_says_off() -> None:
    rig = Rig()
    rig.start()
    first = energized(rig.tick())
    assert first.size
    rig.outlet_on[first] = False   # the PDU reports them off (a trip, a manual switch)
    later = np.concatenate([energized(rig.tick()) for _ in range(40)] + [np.zeros(0, int)])
    assert not set(first.tolist()) & set(later.tolist())


def test_restart_rebuilds_from_read_backs_and_energizes_nothing_already_on() -> None:
    rig = Rig()
    rig.outlet_on[:4] = True  # a previous run had switched these on
    rig.start()
    sent = np.concatenate([energized(rig.tick()) for _ in range(40)])
    assert not set(sent.tolist()) & {0, 1, 2, 3}
    assert sorted(sent.tolist()) == list(range(4, rig.ctx.n_outlets))


def test_abort_stops_the_ramp_and_commands_refused_as_they_should_be() -> None:
    rig = Rig()
    with pytest.raises(core.CommandRefusedError):
        core.pause(rig.state)
    rig.start()
    with pytest.raises(core.CommandRefusedError, match="already"):
        core.start_ramp(rig.ctx, rig.state, rig.now)
    rig.state = core.abort(rig.state)
    assert energized(rig.tick()).size == 0
    assert rig.state.mode == Mode.IDLE
    rig.state = core.enter_safe(rig.state, "test", rig.now)
    with pytest.raises(core.CommandRefusedError, match="SAFE"):
        core.start_ramp(rig.ctx, rig.state, rig.now)
    assert rig.state.transitions[-1][2] == "SAFE"


# ---------------------------------------------------------------------------------- faults
def test_rule_1_gpus_drawing_above_their_reported_cap_count_at_full_power_and_alarm() -> None:
    rig = Rig()
    rig.outlet_on[:] = True
    rig.state = rig.state.replace(cap_cmd_w=np.full(4, 150.0))
    bank = rig.node("RIG-A-1")
    v_ln = float(rig.topo.v_ln_v[bank])
    # server 2's agent says 150 W per GPU is in force, but its GPUs draw 300 W each
    gpu_w = np.array([8 * 140.0, 8 * 140.0, 8 * 300.0, 8 * 140.0]) / 8
    rig.store.ingest_servers(np.arange(4), gpu_w, np.full(4, 150.0), rig.now)
    d = rig.tick()
    per_bank_w = 3 * 800.0 + 1400.0       # three at 1600 W over two PSUs, one at 2800 W
    assert d.worst_a[0, bank].max() == pytest.approx(per_bank_w / (v_ln * 0.95), rel=1e-6)
    alarms = [a for a in d.actions if isinstance(a, core.Alarm) and a.code == "cap-ignored"]
    assert [a.node for a in alarms] == [rig.topo.server_id[2]]
    assert d.state.cap_overdraw is not None and d.state.cap_overdraw.tolist() == [
        False, False, True, False]


def test_a_server_whose_other_psu_is_held_is_not_energized_at_all() -> None:
    rig = Rig()
    rig.start()
    # the L2 bank's outlets cannot be read back: their servers' L1 PSUs wait with them
    l2 = [o for o in range(rig.ctx.n_outlets)
          if rig.topo.parent_idx[rig.ctx.outlet_node[o]] == rig.node("RIG-A-2")]
    known = np.ones(rig.ctx.n_outlets, bool)
    known[l2] = False
    sent: list[int] = []
    for _ in range(30):
        rig.now += 1.0
        rig.read_meters()
        rig.store.refresh()
        rb = rig.readbacks()
        rb = core.Readbacks(rb.outlet_on, known, rb.breaker_closed, rb.zone_inlet_c)
        d = core.decide(rig.ctx, rig.store, rb, rig.state, rig.now)
        rig.state = d.state
        sent.extend(energized(d).tolist())
    assert sent == []
    assert "outlet state unknown" in rig.state.mode_reason


def test_a_lost_feed_moves_the_load_to_the_other_psus_without_background() -> None:
    rig = Rig()
    rig.outlet_on[:] = True
    rig.state = rig.state.replace(cap_cmd_w=np.full(4, 300.0))
    rig.store.ingest_servers(np.arange(4), np.full(4, 300.0), np.full(4, 300.0), rig.now)
    b1, b2 = rig.node("RIG-A-1"), rig.node("RIG-A-2")
    live = np.ones(rig.topo.n_nodes, bool)
    live[b2] = False            # the L2 bank reads no voltage
    rb = rig.readbacks()
    rig.now += 1.0
    rig.store.ingest_servers(np.arange(4), np.full(4, 300.0), np.full(4, 300.0), rig.now)
    rig.store.refresh()
    d = core.decide(rig.ctx, rig.store, core.Readbacks(
        rb.outlet_on, rb.outlet_known, rb.breaker_closed, rb.zone_inlet_c, live),
        rig.state, rig.now)
    w = rig.topo.server_max_w[0]                       # 2800 W (confirmed at the maximum)
    v_ln = float(rig.topo.v_ln_v[b1])
    assert d.worst_a[0, b1].max() == pytest.approx(4 * w / (v_ln * 0.95), rel=1e-6)
    assert d.worst_a[0, b2].max() == pytest.approx(0.0, abs=1e-9)
    assert any(isinstance(a, core.Alarm) and a.code == "supply" and a.node == "RIG-A-2"
               for a in d.actions)


def test_rule_4_a_zone_past_its_thermal_threshold_is_capped_to_the_minimum_then_released() -> None:
    rig = Rig()
    rig.outlet_on[:] = True
    rig.state = rig.state.replace(cap_cmd_w=np.full(4, 300.0))
    rig.inlet_c = float(rig.ctx.thermal_cap_c[0]) + 0.1
    rig.store.ingest_servers(np.arange(4), np.full(4, 290.0), np.full(4, 300.0), rig.now)
    d = rig.tick()
    floor = float(rig.topo.server_gpu_min_cap_w[0])
    assert caps(d) == {s: pytest.approx(floor) for s in range(4)}
    assert all(a.reason.rule == "thermal" for a in d.actions if isinstance(a, core.SetCaps))
    assert any(isinstance(a, core.Alarm) and a.code == "thermal" for a in d.actions)
    assert d.state.mode == Mode.SHEDDING
    rig.inlet_c = float(rig.topo.zone_inlet_hold_c[0]) - 1.0
    released: list[float] = []
    for _ in range(200):
        rig.store.ingest_servers(np.arange(4), rig.ctx.work_w(rig.state.cap_cmd_w),
                                 rig.state.cap_cmd_w, rig.now)
        released.extend(c for s, c in caps(rig.tick()).items() if s == 0)
    assert released and released == sorted(released) and released[-1] == pytest.approx(300.0)


def _panel_with_step_budget(budget_w: float) -> core.CoreContext:
    """The rig's context with a cap-change budget of ``budget_w`` (drop and rise) at its panel
    alone: 0.9 × a largest load step of ``budget_w / 0.9``."""
    rig = Rig()
    ctx = rig.ctx
    panel = rig.node("LAB-PANEL")
    ctx.step_nodes = np.array([panel])
    ctx.step_pairs = np.flatnonzero(ctx.below_node == panel)
    ctx.drop_budget_w = np.full(rig.topo.n_nodes, np.inf)
    ctx.drop_budget_w[panel] = budget_w
    ctx.rise_budget_w = ctx.drop_budget_w.copy()
    return ctx


def test_shed_cap_changes_stay_within_the_largest_load_step_per_tick() -> None:
    # give the panel a largest load step of 1 kW: four servers dropping 8 × 100 W each (3.2 kW)
    # move by 0.9 kW / 3.2 kW of their change in one tick
    ctx = _panel_with_step_budget(900.0)
    servers = np.arange(4, dtype=np.int64)
    old = np.full(4, 300.0)
    new = np.full(4, 200.0)
    got = core._limit_cap_change(ctx, servers, old, new, np.full(4, 8 * 300.0 + 400.0))
    assert got == pytest.approx(300.0 - 100.0 * 900.0 / 3200.0)
    up = core._limit_cap_change(ctx, servers, new, old, np.full(4, 8 * 200.0 + 400.0))
    assert up == pytest.approx(200.0 + 100.0 * 900.0 / 3200.0)


def test_a_rise_no_cap_controls_uses_the_budget_first() -> None:
    """The ramp guard's servers idle below their minimum cap: their non-GPU power and their
    GPUs up to the minimum come back whatever the caps, so that rise takes the budget first and
    only what is left is shared out as cap headroom; when it alone passes the budget, the caps
    stay where they are (the minimum)."""
    ctx = _panel_with_step_budget(900.0)
    servers = np.arange(4, dtype=np.int64)
    low, high = np.full(4, 200.0), np.full(4, 300.0)      # 8 GPUs: 3.2 kW of cap headroom
    draw = np.full(4, 8 * 200.0 + 400.0)
    free = core._limit_cap_change(ctx, servers, low, high, draw)
    assert free == pytest.approx(200.0 + 100.0 * 900.0 / 3200.0)
    some = core._limit_cap_change(ctx, servers, low, high, draw, fixed_rise_w=np.full(4, 100.0))
    assert some == pytest.approx(200.0 + 100.0 * 500.0 / 3200.0)
    none = core._limit_cap_change(ctx, servers, low, high, draw, fixed_rise_w=np.full(4, 300.0))
    assert none == pytest.approx(200.0)


# ---------------------------------------------------------------------- POST calibration
def _post_meters(rig: Rig, factor: float) -> None:
    """Meter readings of every powered server in POST at ``factor`` × its model's POST power
    (the aggregation kernel carries them up the tree, as the plant's meters see them)."""
    from kernels import tree_current_a
    t = rig.topo
    powered = rig.state.psu_on_s <= rig.now
    p_w = np.full(t.n_servers, t.server_post_w * factor)
    i_a = tree_current_a(p_w, t.server_pf, t.psu_server, t.psu_node, t.psu_phase, powered,
                         t.parent_idx, t.v_ln_v)
    for m in rig.meters:
        rig.store.ingest_node(m, i_a[m], rig.now)


def _energize_all_then_reach_post(rig: Rig) -> None:
    from controller.prediction import server_times_s
    rig.start()
    for _ in range(15):   # every outlet within the BMC delay: nobody in POST yet
        rig.tick()
    assert (rig.state.psu_on_s <= rig.now).all()
    assert not rig.state.post_measured
    times = server_times_s(rig.topo, rig.state.psu_on_s)
    lo, hi = times[:, 1].max() + 1.0, times[:, 2].min() - 1.0
    assert lo < hi
    rig.now = lo


def test_post_power_is_planned_with_a_margin_until_the_meters_measure_it() -> None:
    rig = Rig(boot_power_margin=0.4)
    assert rig.state.post_x == pytest.approx(1.4)
    assert rig.ctx.model(1.4).floor_w.max() == pytest.approx(1.4 * rig.topo.server_post_w.max())
    _energize_all_then_reach_post(rig)
    _post_meters(rig, 1.3)
    rig.store.refresh()
    d = core.decide(rig.ctx, rig.store, rig.readbacks(), rig.state, rig.now)
    st = d.state
    assert st.post_measured and st.post_x == pytest.approx(1.3, rel=1e-3)
    alarms = [a for a in d.actions if isinstance(a, core.Alarm)]
    assert [a.code for a in alarms] == ["post-power-above-model"]
    assert "1.30x" in alarms[0].message
    # measured once: a later, different reading changes nothing
    rig.state = st
    rig.now += 1.0
    _post_meters(rig, 2.0)
    rig.store.refresh()
    assert core.decide(rig.ctx, rig.store, rig.readbacks(), rig.state,
                       rig.now).state.post_x == pytest.approx(1.3, rel=1e-3)


def test_post_power_below_the_model_is_planned_at_the_model_and_a_lying_meter_is_ignored(
) -> None:
    rig = Rig(boot_power_margin=0.4)
    _energize_all_then_reach_post(rig)
    _post_meters(rig, 0.2)   # far below any real POST draw: not believed, still unmeasured
    rig.store.refresh()
    d = core.decide(rig.ctx, rig.store, rig.readbacks(), rig.state, rig.now)
    assert not d.state.post_measured and d.state.post_x == pytest.approx(1.4)
    rig.state = d.state
    rig.now += 1.0
    _post_meters(rig, 0.9)
    rig.store.refresh()
    d = core.decide(rig.ctx, rig.store, rig.readbacks(), rig.state, rig.now)
    assert d.state.post_measured and d.state.post_x == 1.0
    assert not [a for a in d.actions if isinstance(a, core.Alarm)
                and a.code == "post-power-above-model"]


def test_ramp_guard_caps_move_in_steps_and_a_wobbling_draw_sends_no_command_per_tick() -> None:
    rng = np.random.default_rng(0)
    min_cap = np.full(64, 200.0)
    allowed = 412.0 + rng.uniform(-4.0, 4.0, size=(200, 64))   # the budget wobbles with the draw
    prev = None
    changes = 0
    for row in allowed:
        cap = core._guard_steps(row, prev, min_cap)
        assert (cap <= np.maximum(row, min_cap) + 1e-9).all()   # never above what is allowed
        assert np.allclose(cap % core.GUARD_STEP_W, 0.0) or (cap == min_cap).any()
        if prev is not None:
            changes += int((cap != prev).sum())
        prev = cap
    # 200 ticks × 64 servers: the grid and the hysteresis leave only the crossings down
    assert changes <= 64 * 3
    # a real rise is followed, a step at a time, and a fall at once
    up = core._guard_steps(np.full(64, 470.0), prev, min_cap)
    assert (up == 450.0).all()
    down = core._guard_steps(np.full(64, 330.0), up, min_cap)
    assert (down == 325.0).all()
    assert (core._guard_steps(np.full(64, 150.0), down, min_cap) == 200.0).all()


def test_rule_4_a_hot_zone_still_gets_the_missing_psus_of_a_server_already_booting() -> None:
    rig = Rig()
    t = rig.topo
    first = np.flatnonzero(t.psu_server == 0)
    assert first.size == 2 and t.server_psus_to_boot[0] == 1
    rig.outlet_on[rig.ctx.psu_outlet[first[0]]] = True   # found on: server 0 boots on it
    rig.start()
    rig.inlet_c = float(t.zone_inlet_hold_c[0]) + 0.5
    sent = np.concatenate([energized(d) for d in run_ramp(rig, 10)])
    # its other PSU adds no heat and goes on; nothing else does
    assert sent.tolist() == [int(rig.ctx.psu_outlet[first[1]])]
    assert "zone inlet at hold" in rig.state.hold_reasons


def test_kept_decisions_keep_their_worst_case_and_each_is_the_full_computation() -> None:
    """The worst case is computed from the last one (only where servers changed) or reused
    when nothing changed: every decision's ``worst_a`` is still, ticks later, the full kernel's
    result for its own tick, and nobody can write into it."""
    from kernels.aggregate import _worst_case_current_into

    rig = Rig()
    rig.start()
    seen: list[tuple[core.Decision, np.ndarray]] = []
    calls: list[np.ndarray] = []
    inner = core._worst_currents_a

    def recording(ctx, w_normal, w_contingency, alive, out=None):
        if out is None:   # the tick's own worst case: what the full kernel gives for it
            k = ctx.kernel_args
            full = np.empty((3, ctx.topo.n_nodes, 3))
            _worst_case_current_into(np.ascontiguousarray(w_normal, float),
                                     np.ascontiguousarray(w_contingency, float), k[0], k[1],
                                     k[2], k[3], k[4], np.ascontiguousarray(alive, bool),
                                     k[5], k[6], full, np.empty(1, bool))
            calls.append(full)
        return inner(ctx, w_normal, w_contingency, alive, out)

    core._worst_currents_a = recording
    try:
        for t in range(60):
            if t == 45:   # confirm the caps: servers' worst cases change, the others' not
                rig.store.ingest_servers(np.arange(4), np.full(4, 100.0), rig.state.cap_cmd_w,
                                         rig.now)
            d = rig.tick()
            seen.append((d, calls[-1]))
    finally:
        core._worst_currents_a = inner
    distinct = {id(d.worst_a) for d, _ in seen}
    assert 1 < len(distinct) < len(seen)   # recomputed when something changed, else reused
    for d, full in seen:
        np.testing.assert_array_equal(d.worst_a.view(np.uint64), full.view(np.uint64))
        assert not d.worst_a.flags.writeable
        with pytest.raises(ValueError):
            d.worst_a[0, 0, 0] = 1.0


def test_state_replace_is_dataclasses_replace():
    """CoreState.replace, written for speed, gives what dataclasses.replace gives, leaves the
    original as it was, and refuses a field the state does not have."""
    import dataclasses

    rig = Rig()
    st = core.start_ramp(rig.ctx, rig.state, 0.0)
    changes = {"ticks": 7, "mode_reason": "x", "paused": True, "post_x": 1.3,
               "alarms_active": frozenset({"telemetry:RIG-A"})}
    fast, generic = st.replace(**changes), dataclasses.replace(st, **changes)
    assert type(fast) is core.CoreState
    for f in dataclasses.fields(core.CoreState):
        a, b = getattr(fast, f.name), getattr(generic, f.name)
        if isinstance(a, np.ndarray):
            assert a is b
        else:
            assert a == b, f.name
    assert st.ticks == 0 and not st.paused and fast.ticks == 7
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.ticks = 8   # type: ignore[misc]
    with pytest.raises(TypeError, match=r"no field.*tick_count"):
        st.replace(tick_count=1)
