"""The fault campaign (benchmarks/campaign.py, docs/campaign.md): scenario pairs, the overload
recorder behind limit-seconds beyond the shed deadline, double energizations, and a handful of
real campaign runs whose figures are checked both ways (a safe run gives zeros; a run that
trips or overloads past its deadline gives the right nonzero figures)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller import core
from controller.config import load_hall_config
from controller.dryrun import (
    DryRunOptions,
    OverloadRecorder,
    ScheduleStrategy,
    StrategyContext,
    limit_s_beyond_deadline,
    run_dry_run,
)
from controller.schedule import all_at_once
from controller.topology import compile_hall
from sim import NAMED_SCENARIOS, Action, Observation, SwitchOutlets
from sim.faults import (
    Scenario,
    ScenarioError,
    combine_scenarios,
    resolve_scenario,
    scenario_pairs,
)

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo-hall.toml"
CASCADE = ROOT / "tests" / "data" / "sim_halls" / "cascade.toml"
INRUSH = ROOT / "tests" / "data" / "sim_halls" / "inrush.toml"

# benchmarks/ is not a package; on sys.path, the process pool's spawned workers import the
# runner by the same name as this test does
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))
import campaign  # noqa: E402

ROW_KEYS = {"hall", "scenario", "seed", "strategy", "survivable", "faults_scheduled",
            "faults_injected", "trips", "limit_s_beyond_deadline", "overload_episodes",
            "overloads_past_deadline", "double_energizations", "violations",
            "violations_by_kind", "telemetry_loss", "time_to_full_power_s", "lower_bound_s",
            "full_power_x_bound", "final_mode", "sim_s", "wall_s", "error"}
TOTAL_KEYS = {"runs", "errors", "faults_injected", "trips", "limit_s_beyond_deadline",
              "double_energizations", "violations_by_kind", "telemetry_loss", "full_power"}


# ============================================================================== pairs
def test_pairs_concatenate_the_faults_and_are_survivable_only_if_both_are() -> None:
    pairs = scenario_pairs()
    n = len(NAMED_SCENARIOS)
    assert len(pairs) == n * (n - 1) // 2 == len({p.name for p in pairs})
    a, b = NAMED_SCENARIOS["meter-dead"].scenario, NAMED_SCENARIOS["feed-a-loss"].scenario
    pair = combine_scenarios(a, b)
    assert pair.name == "meter-dead+feed-a-loss"
    assert list(pair.faults) == [*a.faults, *b.faults]
    assert pair.survivable is True
    assert resolve_scenario("meter-dead+feed-a-loss") == pair
    lost = resolve_scenario("feed-a-loss+cooling-total-loss")
    assert lost.survivable is False and len(lost.faults) == 2
    unknown = Scenario(name="x", faults=[])
    assert combine_scenarios(a, unknown).survivable is None
    longer = Scenario(name="y", observe_s=900.0)
    assert combine_scenarios(a, longer).observe_s == 900.0
    with pytest.raises(ScenarioError, match="unknown scenario"):
        resolve_scenario("meter-dead+no-such-thing")


def test_pairs_refuse_conflicting_plant_overrides() -> None:
    one = Scenario.model_validate({"name": "a", "plant": {"meter_noise_x": 0.01}})
    same = Scenario.model_validate({"name": "b", "plant": {"meter_noise_x": 0.01}})
    other = Scenario.model_validate({"name": "c", "plant": {"meter_noise_x": 0.02}})
    assert combine_scenarios(one, same).plant.meter_noise_x == 0.01
    with pytest.raises(ScenarioError, match=r"plant\.meter_noise_x"):
        combine_scenarios(one, other)


# ============================================================================== the metric
def _node(topo: Any, node_id: str) -> int:
    return list(topo.node_id).index(node_id)


def test_overload_recorder_on_a_hand_built_history() -> None:
    """Limit-seconds beyond the deadline, by hand: a bank at 1.75× its limit for 140 s (the
    guard curve leaves 95 s: 45 s beyond), the same bank later at 1.2× for 10 s (shed in time:
    0), a node without a breaker at 1.1× for 100 s (60 s deadline: 40 s beyond)."""
    topo = compile_hall(load_hall_config(CASCADE))
    bank = _node(topo, "R1-B-1")
    pdu = next(i for i in range(topo.n_nodes) if not topo.has_breaker[i])
    deadline = core.shed_deadline_s(topo, bank, 1.75)
    assert 30 < deadline < 200
    rec = OverloadRecorder(topo)
    t = 0.0
    for step in range(3000):
        t = round(step * 0.1, 1)
        over: dict[int, tuple[float, float]] = {}
        if 10.0 <= t < 150.0:
            over[bank] = (10.0, 1.5 if t < 50 else 1.75)   # the peak rises mid-episode
        if 200.0 <= t < 210.0:
            over[bank] = (200.0, 1.2)
        if 100.0 <= t < 200.0:
            over[pdu] = (100.0, 1.1)
        rec.observe(t, over)
    episodes = rec.close(t)
    assert [(ep.node, ep.start_s, ep.end_s) for ep in episodes] == [
        ("R1-B-1", 10.0, 150.0), (topo.node_id[pdu], 100.0, 200.0), ("R1-B-1", 200.0, 210.0)]
    first, unprotected, in_time = episodes
    assert first.peak_utilization == 1.75 and first.deadline_s == pytest.approx(deadline)
    assert first.beyond_deadline_s == pytest.approx(140.0 - deadline)
    assert unprotected.deadline_s == core.UNPROTECTED_DEADLINE_S
    assert unprotected.beyond_deadline_s == pytest.approx(40.0)
    assert in_time.beyond_deadline_s == 0.0 and in_time.deadline_s > 10.0
    assert limit_s_beyond_deadline(episodes) == pytest.approx(140.0 - deadline + 40.0)
    # an episode still open at the end of the run ends there
    rec2 = OverloadRecorder(topo)
    rec2.observe(5.0, {bank: (0.0, 1.75)})
    assert rec2.close(1000.0)[0].beyond_deadline_s == pytest.approx(1000.0 - deadline)


def test_a_2n_cascade_gives_the_trip_and_the_limit_seconds_the_plant_judged() -> None:
    """Feed A lost at full power on the 2N cascade hall under fixed-delay: the B bank carries
    175 % of its limit until its thermal element opens. The campaign row counts the trip, and
    limit-seconds beyond the deadline equal the plant's own overload violation (its duration
    less the deadline) to within one plant step."""
    result = run_dry_run(CASCADE, "fixed-delay", resolve_scenario("feed-a-loss"),
                         options=DryRunOptions(delay_s=0.2))
    s = result.summary
    (violation,) = [v for v in s["violations"] if v["kind"] == "overload"]
    spec = campaign.RunSpec("cascade", str(CASCADE), "feed-a-loss", 0, "fixed-delay")
    row = campaign.row_of(spec, s)
    assert ROW_KEYS <= set(row)
    deadline = core.shed_deadline_s(result.topo, _node(result.topo, "R1-B-1"),
                                    violation["peak"])
    expected = violation["duration_s"] - deadline
    assert expected > 5
    assert row["trips"] == 1 and row["overloads_past_deadline"] == 1
    assert expected <= row["limit_s_beyond_deadline"] <= expected + 0.1 + 1e-6
    assert row["faults_injected"] == 1 and row["violations_by_kind"] == {"overload": 1}
    assert row["detail"]["trips"][0]["node"] == "R1-B-1"
    report = campaign.build_report([row], {"command": "test"})
    assert report["ok"] is False
    assert report["must_be_zero"]["trips"] == 1
    assert report["must_be_zero"]["limit_s_beyond_deadline"] == row["limit_s_beyond_deadline"]
    assert report["nonzero_runs"] == [row]
    assert "NOT OK" in campaign.summary_text(report)


# ============================================================================== energizations
class _TwiceStrategy:
    """Switches the first outlet on, and on again 5 s later."""

    name = "twice"
    tick_s = 1.0
    needs_observation = False
    uses_transport = False

    def __init__(self, ctx: StrategyContext) -> None:
        self._inner = ScheduleStrategy(all_at_once(ctx.topo), ctx.topo)
        self.planned_cap_w = self._inner.planned_cap_w
        self._outlet = int(ctx.topo.psu_node[0])

    def on_tick(self, t_s: float, observation: Observation | None) -> Sequence[Action]:
        if t_s in (0.0, 5.0):
            return [SwitchOutlets(np.array([self._outlet]), True, t_s=t_s)]
        return ()

    def done(self, t_s: float) -> bool:
        return t_s >= 6.0


def test_an_outlet_switched_on_twice_is_a_double_energization() -> None:
    result = run_dry_run(INRUSH, "twice", strategies={"twice": _TwiceStrategy},
                         options=DryRunOptions(tail_s=5.0))
    assert result.summary["double_energizations"] == 1
    row = campaign.row_of(campaign.RunSpec("inrush", str(INRUSH), "none", 0, "twice"),
                          result.summary)
    assert row["double_energizations"] == 1 and "detail" in row
    assert campaign.build_report([row], {})["must_be_zero"]["double_energizations"] == 1


def test_telemetry_loss_that_goes_unnoticed_is_flagged() -> None:
    summary = {"faults": [{"kind": "meter-dead", "t_s": 30.0}],
               "controller": {"mode": "RAMPING", "transitions": [
                   {"t_s": 0.0, "from": "IDLE", "to": "HOLDING", "reason": "telemetry unknown"},
                   {"t_s": 1.0, "from": "HOLDING", "to": "RAMPING", "reason": "plan"}]}}
    assert campaign.telemetry_loss(summary)["held"] is False
    summary["controller"]["transitions"].append(
        {"t_s": 40.0, "from": "RAMPING", "to": "SAFE", "reason": "lost"})
    loss = campaign.telemetry_loss(summary)
    assert loss["held"] and loss["mode"] == "SAFE" and loss["after_s"] == 10.0
    assert campaign.telemetry_loss({"faults": [{"kind": "feed-loss", "t_s": 1.0}]}) is None


# ============================================================================== real runs
def test_quick_campaign_under_the_staged_controller_is_all_zeros() -> None:
    """One scenario and one pair, two seeds, on the demo hall, through the process pool (runs
    shortened to 60 s: the meter is lost from the start, the core goes SAFE after 10 s)."""
    specs = campaign.plan_runs(["demo"], 2, ["meter-dead", "meter-dead+breaker-fast-tolerance"],
                               max_sim_s=60.0)
    assert len(specs) == 4
    rows = campaign.execute(specs, jobs=2)
    assert [(r["scenario"], r["seed"]) for r in rows] == [(s.scenario, s.seed) for s in specs]
    for row in rows:
        assert row["error"] is None, row["error"]
        assert ROW_KEYS <= set(row)
        assert row["trips"] == row["double_energizations"] == row["violations"] == 0
        assert row["limit_s_beyond_deadline"] == 0.0
        assert row["telemetry_loss"]["held"] and row["telemetry_loss"]["mode"] == "SAFE"
        assert row["telemetry_loss"]["after_s"] <= 15.0
    assert [r["faults_injected"] for r in rows] == [1, 2, 1, 2]   # seed-major order
    report = campaign.build_report(rows, {"command": "test"})
    assert report["ok"] is True and report["nonzero_runs"] == []
    assert TOTAL_KEYS <= set(report["survivable"])
    t = report["survivable"]
    assert t["runs"] == 4 and t["faults_injected"] == 6 and t["trips"] == 0
    assert t["telemetry_loss"] == {"runs": 4, "held": 4, "not_held": 0,
                                   "held_after_s": t["telemetry_loss"]["held_after_s"]}
    assert report["unsurvivable"]["runs"] == 0
    assert set(report["by_scenario"]["demo"]) == {"meter-dead",
                                                  "meter-dead+breaker-fast-tolerance"}
    assert report["by_scenario"]["demo"]["meter-dead"]["telemetry_loss_held"] == "2/2"
    assert json.loads(json.dumps(report)) == report


def test_workload_storm_runs_are_split_by_the_hall_verdict(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """The rig's largest step (8 kW) is below its storm drop (8.6 kW): its storm runs count as
    unsurvivable, from the run's summary and, for a run that fails, from the same verdict."""
    rig = str(ROOT / "configs" / "rig.toml")
    specs = [campaign.RunSpec("rig", rig, name, 0, max_sim_s=30.0)
             for name in ("workload-storm", "meter-dead+workload-storm", "meter-dead")]
    rows = [campaign.run_one(spec) for spec in specs]
    assert [r["error"] for r in rows] == [None, None, None]
    assert [r["survivable"] for r in rows] == [False, False, True]
    report = campaign.build_report(rows, {"command": "test"})
    assert report["unsurvivable"]["runs"] == 2 and report["survivable"]["runs"] == 1
    # a run that raises: the per-hall verdict of the compiled hall, not the scenario's 'depends'
    assert NAMED_SCENARIOS["workload-storm"].survivable is None

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(campaign, "run_dry_run", broken)
    failed = campaign.run_one(specs[0])
    assert failed["error"] == "RuntimeError: boom" and failed["survivable"] is False
    missing = campaign.RunSpec("x", str(ROOT / "configs" / "no-such.toml"), "workload-storm", 0)
    assert campaign.run_one(missing)["survivable"] is None


def test_all_at_once_trips_and_the_campaign_says_so(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "c.json"
    code = campaign.main(["--halls", "demo", "--scenarios", "none", "--strategy", "all-at-once",
                          "--seeds", "1", "--max-sim-s", "30", "--out", str(out)])
    assert code == campaign.EXIT_UNSAFE
    report = json.loads(out.read_text())
    (row,) = report["runs"]
    assert row["trips"] == 48 and report["survivable"]["trips"] == 48
    assert report["must_be_zero"]["trips"] == 48 and report["ok"] is False
    assert report["nonzero_runs"][0]["detail"]["trips"][0]["cause"] == "inrush"
    stdout = capsys.readouterr().out
    assert "48 trips" in stdout and "NOT OK" in stdout


def test_bad_input_exits_2_with_one_line(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    for argv, words in ((["--seeds", "0"], "--seeds"), (["--jobs", "0"], "--jobs"),
                        (["--scenarios", "meter-dead+nope"], "unknown scenario"),
                        (["--halls", str(tmp_path / "missing.toml")], "no such config"),
                        (["--strategy", "yolo"], "unknown strategy"),
                        (["--max-sim-s", "nan"], "--max-sim-s")):
        assert campaign.main([*argv, "--out", str(tmp_path / "x.json")]) == \
            campaign.EXIT_BAD_INPUT, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err and "Traceback" not in err, err
    assert not (tmp_path / "x.json").exists()
