"""Properties of the staged planner on random halls (tests/planner_halls.py): the plan never
predicts a violation, its time to full power is never below the lower bound, and re-planning
from any moment of its execution (with the past kept, and with zones put on hold or extra load
appearing) keeps every rule."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from controller.planner import PlannerContext, PlannerSettings, PlanState, plan
from controller.prediction import predict, server_times_s
from tests.planner_halls import compile_random_hall

seeds = st.integers(0, 100_000)
cases = settings(deadline=None, max_examples=30)


def _setup(seed: int):  # type: ignore[no-untyped-def]
    topo, config = compile_random_hall(seed)
    s = PlannerSettings.from_controller(config.controller)
    return topo, s, PlannerContext(topo, s)


def _check(topo, s, ctx, result, **kw):  # type: ignore[no-untyped-def]
    pred = predict(topo, result.schedule, admission_margin=s.admission_margin,
                   magnetic_margin=s.magnetic_margin, anc=ctx.anc, **kw)
    assert not pred.violations, [v.to_dict() for v in pred.violations[:5]]
    if result.servers_on:
        assert result.makespan_s >= result.lower_bound.total_s - 1e-6
    return pred


@given(seed=seeds)
@cases
def test_staged_plan_never_predicts_a_violation(seed):
    topo, s, ctx = _setup(seed)
    result = plan(topo, "staged", context=ctx)
    _check(topo, s, ctx, result)
    # servers switched on are exactly those the planner placed
    on = np.isfinite(server_times_s(topo, result.schedule.psu_on_s)[:, 0])
    assert on.sum() == result.servers_on


@given(seed=seeds, cut=st.floats(0.0, 1.2))
@cases
def test_replanning_after_partial_execution_keeps_every_rule(seed, cut):
    topo, s, ctx = _setup(seed)
    first = plan(topo, "staged", context=ctx)
    horizon = first.makespan_s if math.isfinite(first.makespan_s) else 100.0
    now = cut * max(horizon, 1.0)
    second = plan(topo, "staged", context=ctx,
                  state=PlanState(now_s=now, history=first.schedule))
    past = first.schedule.psu_on_s <= now
    np.testing.assert_array_equal(second.schedule.psu_on_s[past], first.schedule.psu_on_s[past])
    assert (second.schedule.psu_on_s[~past] >= now).all()
    assert (second.schedule.cap_t_s[second.schedule.cap_t_s > now] > now).all()
    _check(topo, s, ctx, second)
    # every server placed before is still on in the re-plan
    was_on = np.isfinite(server_times_s(topo, first.schedule.psu_on_s)[:, 0])
    assert second.servers_on >= int(was_on[
        np.isfinite(server_times_s(topo, np.where(past, first.schedule.psu_on_s, np.inf))[:, 0])
    ].sum())


@given(seed=seeds, cut=st.floats(0.0, 1.0), hold=st.integers(0, 1))
@example(seed=6324, cut=0.0, hold=0)  # a held zone's servers at cut 0 (see docs/planner.md)
@cases
def test_replanning_with_a_zone_on_hold(seed, cut, hold):
    topo, s, ctx = _setup(seed)
    first = plan(topo, "staged", context=ctx)
    now = cut * (first.makespan_s if math.isfinite(first.makespan_s) else 100.0)
    zone_hold = np.zeros(len(topo.zone_id), bool)
    zone_hold[hold % len(topo.zone_id)] = True
    second = plan(topo, "staged", context=ctx,
                  state=PlanState(now_s=now, history=first.schedule, zone_hold=zone_hold))
    _check(topo, s, ctx, second)
    # no server of the held zone is switched on after now, and no cap there rises after now;
    # only a server partly on whose POST is certain already (psus_to_boot PSUs on) gets its
    # other PSUs (no heat added: its load is only shared by more PSUs)
    held = zone_hold[topo.server_zone]
    on_now = np.bincount(topo.psu_server, weights=first.schedule.psu_on_s <= now,
                         minlength=topo.n_servers)
    posting = on_now >= np.minimum(np.maximum(topo.server_psus_to_boot, 1),
                                   np.bincount(topo.psu_server, minlength=topo.n_servers))
    new_on = (second.schedule.psu_on_s > now) & np.isfinite(second.schedule.psu_on_s)
    assert not (held & ~posting)[topo.psu_server[new_on]].any()
    sched = second.schedule
    later = sched.cap_t_s > now
    assert not held[sched.cap_server[later]].any()


@given(seed=seeds, fraction=st.floats(0.0, 0.5))
@cases
def test_plan_with_unexplained_load_keeps_every_rule(seed, fraction):
    topo, s, ctx = _setup(seed)
    background = np.broadcast_to(topo.limit_a * fraction, (3, topo.n_nodes, 3)).copy()
    zone_bg = topo.zone_capacity_n1_w * fraction
    result = plan(topo, "staged", context=ctx,
                  state=PlanState(background_a=background, zone_background_w=zone_bg))
    _check(topo, s, ctx, result, background_a=background, zone_background_w=zone_bg)
