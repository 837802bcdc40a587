"""`rampguard dry-run`: exit codes, JSON keys, the baselines, scenarios, strategies, report."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from controller.cli import EXIT_BAD_INPUT, EXIT_OK, EXIT_UNSAFE, main
from controller.config import load_hall_config
from controller.dryrun import (
    STRATEGIES,
    DryRunOptions,
    ScheduleStrategy,
    StrategyContext,
    UnknownStrategyError,
    default_config_path,
    run_dry_run,
)
from controller.report import FILES
from controller.schedule import all_at_once
from controller.topology import compile_hall
from sim import NAMED_SCENARIOS, Action, Observation, SwitchOutlets, resolve_scenario

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
DESIGN_KEYS = {"config", "strategy", "scenario", "seed", "ok", "trips", "violations",
               "time_to_full_power_s", "lower_bound_s", "peak_utilization", "peak_inlet_c",
               "energized_servers", "total_servers", "sim_seconds", "wall_seconds"}

HALLS = ROOT / "tests" / "data" / "sim_halls"


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_demo_all_at_once_is_unsafe_and_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    """The must-show of issue 3: all-at-once on the demo hall exits 3 and names the breakers
    that tripped, with the cause. Each storage-rack bank (20 A C curve, 150 A magnetic) feeds
    four 1U PSUs: four inrushes in the same instant trip it; besides, all POSTs start together
    and break the sources' largest load step and the ramp limits."""
    code, out, _ = run_cli(["dry-run", str(CONFIGS / "demo-hall.toml"), "--strategy",
                            "all-at-once", "--json", "--quiet"], capsys)
    assert code == EXIT_UNSAFE
    data = json.loads(out)
    assert DESIGN_KEYS <= set(data)
    assert data["ok"] is False and data["total_servers"] == 608
    tripped = {(t["node"], t["cause"]) for t in data["trips"]}
    assert ("ST1-R01-A-1", "inrush") in tripped
    assert all(node.startswith("ST") and cause == "inrush" for node, cause in tripped)
    assert data["trips_total"] == len(data["trips"]) == 48  # 8 racks × 2 PDUs × 3 banks
    for trip in data["trips"]:
        assert trip["t_s"] == 0.0 and trip["current_a"] > trip["threshold_a"] == 150.0
        assert "magnetic trip" in trip["detail"]
    kinds = {(v["node"], v["kind"]) for v in data["violations"]}
    assert {("UTIL-A", "step"), ("UTIL-B", "step"), ("UTIL-A", "ramp"),
            ("UPS-A01", "ramp")} <= kinds
    for v in data["violations"]:
        assert set(v) >= {"node", "kind", "t_s", "duration_s", "peak"}
    assert set(data["peak_utilization"]) == {"source", "ups", "switchboard", "branch",
                                             "rack_pdu", "bank", "outlet"}
    # the tripped banks' servers never come up
    assert data["energized_servers"] < data["total_servers"]
    assert data["time_to_full_power_s"] is None
    code, out, _ = run_cli(["dry-run", str(CONFIGS / "demo-hall.toml"), "--strategy",
                            "fixed-delay", "--json", "--quiet"], capsys)
    assert not json.loads(out)["trips"]  # PDU outlet sequencing avoids the trips


@pytest.mark.parametrize(("hall", "seeds"), [("demo-hall.toml", range(5)),
                                             ("hall-32k.toml", range(2))])
def test_staged_plan_open_loop_is_safe_over_seeds(hall: str, seeds: range) -> None:
    """The planner's staged plan, executed open loop with durations drawn per seed: no trip,
    no violation (the simulator counts ramp steps up to 1.1 s apart as one window)."""
    cfg = load_hall_config(CONFIGS / hall)
    topo = compile_hall(cfg)
    for seed in seeds:
        s = run_dry_run(cfg, "staged", seed=seed, topo=topo).summary
        assert s["ok"], (hall, seed, s["trips"][:3], s["violations"][:3])
        assert s["energized_servers"] == s["working_servers"] == s["total_servers"]
        assert s["time_to_full_power_s"] <= 1.15 * s["lower_bound_s"]


def test_all_at_once_names_the_breakers_that_trip_and_the_cause(
        capsys: pytest.CaptureFixture[str]) -> None:
    hall = HALLS / "inrush.toml"
    code, out, _ = run_cli(["dry-run", str(hall), "--strategy", "all-at-once", "--json"],
                           capsys)
    assert code == EXIT_UNSAFE
    data = json.loads(out)
    assert [(t["node"], t["cause"], t["t_s"]) for t in data["trips"]] == [
        ("R1-A-1", "inrush", 0.0)]
    assert "magnetic trip at 120 A" in data["trips"][0]["detail"]
    assert data["energized_servers"] == 0 and data["time_to_full_power_s"] is None
    code, out, _ = run_cli(["dry-run", str(hall), "--strategy", "all-at-once"], capsys)
    assert code == EXIT_UNSAFE and "trip R1-A-1 at 0.000 s: inrush" in out


def test_the_inrush_guard_of_fixed_delay_keeps_it_closed(
        capsys: pytest.CaptureFixture[str]) -> None:
    hall = HALLS / "inrush.toml"
    code, out, _ = run_cli(["dry-run", str(hall), "--strategy", "fixed-delay", "--delay-s",
                            "0.1", "--json"], capsys)
    data = json.loads(out)
    assert code == EXIT_OK, data["violations"]
    assert data["ok"] and data["working_servers"] == 3


def test_2n_cascade_through_the_harness() -> None:
    hall = HALLS / "cascade.toml"
    scenario = resolve_scenario("feed-a-loss")
    result = run_dry_run(hall, "fixed-delay", scenario, options=DryRunOptions(delay_s=0.2))
    s = result.summary
    assert [(t["node"], t["cause"]) for t in s["trips"]] == [("R1-B-1", "thermal")]
    effects = s["fault_effects"]
    assert effects[0]["kind"] == "feed-loss" and effects[0]["trips_after"] == 1
    assert s["trips"][0]["t_s"] - effects[0]["t_s"] > 30  # a thermal trip, not at once


def test_default_dry_run_is_the_staged_plan_on_the_demo_hall(
    capsys: pytest.CaptureFixture[str]
) -> None:
    """DESIGN: `rampguard dry-run` with no CONFIG runs the staged strategy on the demo hall."""
    code, out, _ = run_cli(["dry-run", "--json"], capsys)
    data = json.loads(out)
    assert code == EXIT_OK, (data["trips"], data["violations"])
    assert data["strategy"] == "staged" and data["config"].endswith("demo-hall.toml")
    assert data["ok"] and not data["trips"] and not data["violations"]
    assert data["energized_servers"] == data["total_servers"]
    assert data["time_to_full_power_s"] <= 1.15 * data["lower_bound_s"]


def test_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    demo = str(CONFIGS / "demo-hall.toml")
    code, _, err = run_cli(["dry-run", demo, "--strategy", "yolo"], capsys)
    assert code == EXIT_BAD_INPUT and "unknown strategy 'yolo'" in err and "fixed-rate" in err
    code, _, err = run_cli(["dry-run", demo, "--strategy", "all-at-once", "--scenario",
                            "feed-c-loss"], capsys)
    assert code == EXIT_BAD_INPUT and "unknown scenario" in err
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[[faults]]\nkind = "feed-loss"\nfeed = "Q"\n')
    code, _, err = run_cli(["dry-run", demo, "--strategy", "all-at-once", "--scenario",
                            str(bad)], capsys)
    assert code == EXIT_BAD_INPUT and "faults[0].feed" in err and "Traceback" not in err
    code, _, err = run_cli(["dry-run", str(tmp_path / "missing.toml"), "--strategy",
                            "all-at-once"], capsys)
    assert code == EXIT_BAD_INPUT and "file not found" in err
    for argv in (["--dt-s", "0"], ["--delay-s", "-1"], ["--rate-per-min", "0"],
                 ["--seed", "-3"], ["--max-sim-s", "nan"]):
        code, _, err = run_cli(["dry-run", demo, "--strategy", "fixed-delay", *argv], capsys)
        assert code == EXIT_BAD_INPUT, argv
    with pytest.raises(SystemExit) as caught:
        main(["dry-run", demo, "--seed", "x"])
    assert caught.value.code == EXIT_BAD_INPUT


def test_list_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["dry-run", "--list-scenarios"], capsys)
    assert code == EXIT_OK
    lines = out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(NAMED_SCENARIOS)
    assert all(line.split()[1] in ("survivable", "unsurvivable", "depends") for line in lines)


def test_default_config_is_the_demo_hall_and_the_packaged_copy_matches() -> None:
    assert default_config_path() == CONFIGS / "demo-hall.toml"
    packaged = ROOT / "controller" / "data" / "demo-hall.toml"
    assert packaged.read_bytes() == (CONFIGS / "demo-hall.toml").read_bytes()


def test_no_config_runs_the_demo_hall(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["dry-run", "--strategy", "fixed-rate", "--json", "--quiet"], capsys)
    data = json.loads(out)
    assert data["config"].endswith("demo-hall.toml") and data["total_servers"] == 608
    assert code == (EXIT_OK if data["ok"] else EXIT_UNSAFE)


def test_report_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "report"
    code, _, _ = run_cli(["dry-run", str(CONFIGS / "rig.toml"), "--strategy", "all-at-once",
                            "--scenario", "cooling-total-loss", "--report", str(out_dir)],
                           capsys)
    assert code == EXIT_UNSAFE
    for name in FILES:
        assert (out_dir / name).stat().st_size > 0, name
        if name.endswith(".png"):
            assert (out_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out_dir / "index.html").read_text()
    assert "UNSAFE" in page and "inlet" in page and 'src="load_vs_limit.png"' in page
    data = json.loads((out_dir / "dryrun.json").read_text())
    assert data["scenario"] == "cooling-total-loss" and data["scenario_survivable"] is False
    assert data["violations_by_kind"]["inlet"] == 1
    assert data["fault_effects"][0]["inlet_above_allowable_after_s"] > 0


def test_every_named_scenario_runs_with_every_baseline() -> None:
    cfg = load_hall_config(CONFIGS / "rig.toml")
    topo = compile_hall(cfg)
    for strategy in ("all-at-once", "fixed-delay", "fixed-rate"):
        for name in NAMED_SCENARIOS:
            result = run_dry_run(cfg, strategy, resolve_scenario(name), topo=topo)
            s = result.summary
            assert s["scenario"] == name and DESIGN_KEYS <= set(s)
            assert s["faults"], name
            assert s["sim_seconds"] > s["faults"][-1]["t_s"]
            if name == "cooling-total-loss":
                assert not s["ok"]


def test_same_seed_same_verdict() -> None:
    cfg = load_hall_config(CONFIGS / "demo-hall.toml")
    topo = compile_hall(cfg)

    def verdict(seed: int) -> dict[str, object]:
        s = dict(run_dry_run(cfg, "fixed-delay", resolve_scenario("workload-storm"), seed=seed,
                             topo=topo).summary)
        for key in ("wall_seconds", "real_time_factor"):
            s.pop(key)
        return s

    assert verdict(5) == verdict(5)
    assert verdict(5)["time_to_full_power_s"] != verdict(6)["time_to_full_power_s"]


class _OneOutletPerTick:
    """A closed-loop stand-in: one outlet per tick, stops when a meter reads any current."""

    name = "one-per-tick"
    tick_s = 1.0
    needs_observation = True
    uses_transport = True

    def __init__(self, ctx: StrategyContext) -> None:
        self.outlets = [int(o) for o in ctx.topo.psu_node]
        self.planned_cap_w = np.asarray(ctx.topo.server_gpu_max_w, dtype=np.float64)
        self.seen: list[Observation] = []

    def on_tick(self, t_s: float, observation: Observation | None) -> Sequence[Action]:
        assert observation is not None
        self.seen.append(observation)
        if not self.outlets:
            return ()
        return [SwitchOutlets(np.array([self.outlets.pop(0)]), True)]

    def done(self, t_s: float) -> bool:
        return not self.outlets


def test_a_closed_loop_strategy_plugs_in_and_transport_faults_reach_it() -> None:
    made: list[_OneOutletPerTick] = []

    def factory(ctx: StrategyContext) -> _OneOutletPerTick:
        made.append(_OneOutletPerTick(ctx))
        return made[-1]

    registry = {**STRATEGIES, "one-per-tick": factory}
    cfg = load_hall_config(CONFIGS / "rig.toml")
    result = run_dry_run(cfg, "one-per-tick", None, strategies=registry)
    assert result.summary["ok"] and result.summary["working_servers"] == 4
    seen = made[-1].seen
    assert seen[0].t_s == 0.0 and seen[1].t_s == pytest.approx(1.0)
    assert seen[-1].meter_quality.tolist() == [0, 0]
    # with the PDU's Modbus device unreachable the commands never arrive
    result = run_dry_run(cfg, "one-per-tick", resolve_scenario("modbus-unreachable"),
                         strategies=registry, options=DryRunOptions(max_sim_s=120))
    assert result.summary["energized_servers"] == 0
    assert made[-1].seen[-1].meter_quality.tolist() == [2, 0]
    with pytest.raises(UnknownStrategyError):
        run_dry_run(cfg, "one-per-tick")


def test_schedule_strategy_executes_a_schedule_open_loop() -> None:
    topo = compile_hall(load_hall_config(CONFIGS / "rig.toml"))
    sch = all_at_once(topo)
    strat = ScheduleStrategy(sch, topo)
    actions = strat.on_tick(0.0, None)
    assert strat.on_tick(0.1, None) == ()
    assert len(actions) == 2 and strat.done(0.0)
    assert (strat.planned_cap_w == topo.server_gpu_max_w).all()

