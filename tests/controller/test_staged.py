"""The staged strategy (the decision core closed loop on the simulated plant): the must-show of
issue 6 on the demo and 32k halls, and every simulator scenario on the demo hall."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller import core
from controller.config import load_hall_config
from controller.dryrun import STRATEGIES, StrategyContext, run_dry_run
from controller.staged import CoreStrategy
from sim import NAMED_SCENARIOS, resolve_scenario

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "configs" / "demo-hall.toml"
HALL_32K = ROOT / "configs" / "hall-32k.toml"
BASELINES = ("all-at-once", "fixed-delay", "fixed-rate")

#: scenarios in which the first metered node's telemetry is lost or not trusted
TELEMETRY_LOST = {"meter-stale", "meter-dead", "modbus-unreachable", "meter-lying"}
#: known gaps (docs/controller.md, "What the core cannot prevent"): checked by their own tests
KNOWN_GAPS = {"workload-storm"}


class RecordingStrategy(CoreStrategy):
    """The staged strategy, remembering the rule of every cap command it sends."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cap_rules: list[str] = []

    def _to_plant(self, actions: Any, t_s: float) -> Any:
        self.cap_rules.extend(a.reason.rule for a in actions if isinstance(a, core.SetCaps))
        return super()._to_plant(actions, t_s)


def _staged_run(config: Path, scenario: str | None = None, seed: int = 0
                ) -> tuple[dict[str, Any], RecordingStrategy]:
    made: list[RecordingStrategy] = []

    def factory(ctx: StrategyContext) -> RecordingStrategy:
        made.append(RecordingStrategy(ctx.config, ctx.topo, seed=ctx.seed))
        return made[0]

    reg = {**STRATEGIES, "staged": factory}
    res = run_dry_run(config, "staged", resolve_scenario(scenario) if scenario else None,
                      seed=seed, strategies=reg)
    return res.to_json(), made[0]


def _must_show(config: Path) -> None:
    staged, strat = _staged_run(config)
    assert staged["ok"], staged["violations"][:3]
    assert staged["trips"] == [] and staged["violations"] == []
    assert strat.energized_twice == 0
    ttfp, bound = staged["time_to_full_power_s"], staged["lower_bound_s"]
    assert ttfp is not None and ttfp <= 1.2 * bound
    assert staged["energized_servers"] == staged["total_servers"]
    for name in BASELINES:
        base = run_dry_run(config, name).to_json()
        if base["ok"]:
            assert base["time_to_full_power_s"] is not None
            assert ttfp < base["time_to_full_power_s"], name


def test_demo_hall_staged_is_safe_near_the_bound_and_beats_every_safe_baseline() -> None:
    _must_show(DEMO)


@pytest.mark.timeout(900)   # four dry runs of the 32k hall: minutes on a loaded 2-core machine
def test_32k_hall_staged_is_safe_near_the_bound_and_beats_every_safe_baseline() -> None:
    _must_show(HALL_32K)


@pytest.mark.parametrize("scenario", sorted(NAMED_SCENARIOS))
def test_every_scenario_on_the_demo_hall(scenario: str) -> None:
    out, strat = _staged_run(DEMO, scenario)
    st = strat.state
    assert out["trips"] == [], out["trips"][:3]
    assert strat.energized_twice == 0
    codes = {code for _, a in strat.alarms for code in [a.code]}
    modes = {m for _, a, b, _ in st.transitions for m in (a, b)}
    if scenario in KNOWN_GAPS:
        return  # their own tests below say what the core does and does not achieve
    if scenario == "cooling-total-loss":
        # unsurvivable: the inlet passes the allowable temperature; nothing else is violated,
        # and the core has capped every working GPU of the hot zones to its minimum
        assert {v["kind"] for v in out["violations"]} == {"inlet"}
        assert "thermal" in codes and st.mode == core.Mode.SHEDDING
        topo = strat.topo
        gpu = topo.server_gpus > 0
        assert np.allclose(st.cap_cmd_w[gpu], topo.server_gpu_min_cap_w[gpu])
        assert out["fault_effects"][0]["inlet_above_allowable_after_s"] > 0
        return
    assert out["ok"], out["violations"][:3]
    if scenario in TELEMETRY_LOST:
        assert st.mode in (core.Mode.SAFE, core.Mode.HOLDING)
        assert "SAFE" in modes or "HOLDING" in modes
        assert "telemetry" in codes
        return
    assert out["time_to_full_power_s"] is not None
    if scenario in ("feed-a-loss", "feed-b-loss"):
        # the lost feed is seen (its meters read no voltage); the surviving side carries all
        # without any shedding: the demo hall fits at full power after a feed loss
        assert "supply" in codes
        assert "shed" not in strat.cap_rules
        assert st.mode == core.Mode.STEADY


def test_boot_overdraw_is_measured_on_the_first_wave_and_no_limit_breaks() -> None:
    """Servers drawing 1.3× their POST/boot model: the first waves are planned at 1.4× their
    model's POST power (the margin until measured), the meters measure 1.3× once the first
    servers are surely in POST, the core alarms and plans the rest with the measured factor:
    no violation, no trip, and full power within 1.2× the bound."""
    out, strat = _staged_run(DEMO, "boot-overdraw")
    assert out["ok"], out["violations"][:3]
    assert out["trips"] == [] and out["violations"] == [] and strat.energized_twice == 0
    assert "post-power-above-model" in {a.code for _, a in strat.alarms}
    post = out["controller"]["post_power"]
    assert 1.28 <= post["measured_x"] <= 1.36
    assert strat.state.post_x == pytest.approx(post["measured_x"], abs=1e-4)
    ttfp = out["time_to_full_power_s"]
    assert ttfp is not None and ttfp <= 1.2 * out["lower_bound_s"]
    # without the margin the first waves break the UPS ramp limit before any meter can show it
    cfg = load_hall_config(DEMO)
    bare = cfg.model_copy(update={"controller": cfg.controller.model_copy(
        update={"boot_power_margin": 0.0})})
    res = run_dry_run(bare, "staged", resolve_scenario("boot-overdraw")).to_json()
    assert res["trips"] == []
    assert {v["kind"] for v in res["violations"]} == {"ramp"}
    assert max(v["t_s"] for v in res["violations"]) < 60.0   # only the first waves


def test_workload_storm_ramp_guard_caps_the_restart_but_cannot_hold_non_gpu_power() -> None:
    """The demo hall cannot ride the storm (controller/storm.py): after the idle the core's ramp
    guard has the GPUs at their minimum cap and lets the caps follow the load up; the rise of
    the servers' other power (CPU, fans: idle to their maximum) stays beyond the UPS ramp
    limit: only power smoothing, a battery or holding the work could pace it."""
    out, strat = _staged_run(DEMO, "workload-storm")
    assert out["trips"] == [] and strat.energized_twice == 0
    assert "ramp-guard" in strat.cap_rules
    fixed = run_dry_run(DEMO, "fixed-delay", resolve_scenario("workload-storm")).to_json()

    def storm_peak(o: dict[str, Any]) -> float:
        t_fault = o["faults"][0]["t_s"]
        return max((v["peak"] for v in o["violations"]
                    if v["kind"] == "ramp" and v["t_s"] > t_fault), default=0.0)

    assert 0 < storm_peak(out) < 0.7 * storm_peak(fixed)
