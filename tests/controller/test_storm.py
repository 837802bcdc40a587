"""The workload-storm analysis (controller/storm.py): hand-computed swings on a small A/B hall,
the reference halls' measured figures, validate's warnings, the dry run's per-hall verdict, and
one end-to-end run each way on the rig."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from controller.cli import EXIT_OK, main
from controller.config import loads_hall_config
from controller.dryrun import run_dry_run, scenario_verdict
from controller.model import HallConfig
from controller.storm import (
    PREVENTION,
    analyze_hall_storm,
    analyze_storm,
    judge_swing,
    node_swing_w,
    psu_alive_for,
    ramp_span_s,
    server_psu_rating_w,
)
from controller.topology import Topology, compile_hall
from sim import resolve_scenario

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# Two feeds, a source and a UPS on each, one rack of two servers with one PSU per feed. The
# server: 4 GPUs (cap 150-300 W), other 400 W, idle 500 W, PSUs of 1,200 W of which it needs
# both to carry full load: after a feed loss the power brake holds it to 1,200 W.
FEED_NODES = """
[[nodes]]
id = "SRC-{feed}"
kind = "source"
feed = "{feed}"
v_ll_v = 415
rating_a = 100
max_step_kw = {step}
ramp_limit_kw_per_s = {ramp}
[[nodes]]
id = "UPS-{feed}"
kind = "ups"
parent = "SRC-{feed}"
v_ll_v = 415
rating_a = 100
continuous_fraction = 1.0
ramp_limit_kw_per_s = {ups_ramp}
"""
AB_HALL = """
version = 1
[hall]
name = "ab"
{nodes}
[[pdu_models]]
id = "pdu"
v_ll_v = 415
lines = ["L1", "L2", "L3"]
inlet_rating_a = 32
banks = [{{ id = "1", connection = "L1", rating_a = 16, outlets = 4, outlet_rating_a = 16 }}]
[[server_models]]
id = "s4"
psus = 2
psu_rating_w = 1200
psus_to_boot = 1
psus_to_carry = 2
power_factor = 0.95
inrush_peak_a = 20
inrush_duration_s = 0.01
bmc_ready_s = 5
standby_w = 50
post_w = 600
post_duration_s = [10, 20]
boot_w = 550
boot_duration_s = [10, 20]
idle_w = 500
gpus = 4
gpu_idle_w = 30
gpu_min_cap_w = 150
gpu_max_w = 300
other_max_w = 400
[[rack_templates]]
id = "t"
pdus = [{{ slot = "A", model = "pdu", feed = "A" }}, {{ slot = "B", model = "pdu", feed = "B" }}]
servers = [{{ model = "s4", count = 2, placement = "spread" }}]
[[racks]]
id = "R1"
template = "t"
zone = "Z"
parents = {{ A = "UPS-A", B = "UPS-B" }}
[[zones]]
id = "Z"
units = 2
unit_capacity_kw = 20
air_heat_capacity_kj_per_k = 200
"""


def _ab(step_kw: float = 100.0, ramp_kw_per_s: float = 100.0,
        ups_ramp_kw_per_s: float = 100.0) -> tuple[HallConfig, Topology]:
    nodes = "".join(FEED_NODES.format(feed=feed, step=step_kw, ramp=ramp_kw_per_s,
                                      ups_ramp=ups_ramp_kw_per_s) for feed in "AB")
    cfg = loads_hall_config(AB_HALL.format(nodes=nodes), source="ab")
    return cfg, compile_hall(cfg, source="ab")


def _rig(max_step_kw: float, ramp_kw_per_s: float = 20.0) -> tuple[HallConfig, Topology]:
    text = (CONFIGS / "rig.toml").read_text()
    assert "max_step_kw = 8\n" in text and "ramp_limit_kw_per_s = 20\n" in text
    text = text.replace("max_step_kw = 8\n", f"max_step_kw = {max_step_kw}\n").replace(
        "ramp_limit_kw_per_s = 20\n", f"ramp_limit_kw_per_s = {ramp_kw_per_s}\n")
    cfg = loads_hall_config(text, source=f"rig-step-{max_step_kw}-ramp-{ramp_kw_per_s}")
    return cfg, compile_hall(cfg, source="rig")


def test_swing_by_hand_on_an_ab_hall_with_and_without_a_feed() -> None:
    cfg, topo = _ab()
    caps = np.full(topo.n_servers, 300.0)
    rating = server_psu_rating_w(cfg, topo)
    assert rating.tolist() == [1200.0, 1200.0]
    working = np.ones(topo.n_servers, bool)
    a, b = topo.node_index["SRC-A"], topo.node_index["SRC-B"]
    # feeds normal: each server's swing halves between its two PSUs
    drop, rise = node_swing_w(topo, caps, working, rating, psu_alive_for(topo, "normal"))
    assert drop[a] == pytest.approx(2 * (400 + 4 * 300 - 500) / 2)      # 1,100 W
    assert rise[a] == pytest.approx(2 * (400 + 4 * 150 - 500) / 2)      # 500 W
    assert drop[b] == pytest.approx(drop[a]) and rise[b] == pytest.approx(rise[a])
    assert drop[topo.node_index["UPS-A"]] == pytest.approx(drop[a])
    # feed A lost: B carries it all, the working power braked to one PSU's 1,200 W
    drop, rise = node_swing_w(topo, caps, working, rating, psu_alive_for(topo, "feed A lost"))
    assert drop[a] == 0 and rise[a] == 0
    assert drop[b] == pytest.approx(2 * (1200 - 500))                  # 1,400 W
    assert rise[b] == pytest.approx(2 * (400 + 4 * 150 - 500))         # 1,000 W
    # only the servers that work swing; caps below the minimum count as the minimum
    one = np.array([True, False])
    drop, rise = node_swing_w(topo, np.zeros(2), one, rating, psu_alive_for(topo, "normal"))
    assert drop[a] == pytest.approx(rise[a]) == pytest.approx((400 + 600 - 500) / 2)


def test_judged_as_the_plant_judges_steps_and_ramps() -> None:
    assert ramp_span_s(1.0, 0.1) == pytest.approx(1.0)
    assert ramp_span_s(1.0, 0.3) == pytest.approx(0.9)
    assert ramp_span_s(1.0, 5.0) == pytest.approx(5.0)
    inf = np.inf
    drop_step, rise_step, rise_ramp = judge_swing(
        np.array([10.0, 10.0, 10.0, 10.0]), np.array([4.0, 4.0, 4.0, 4.0]),
        np.array([10.0, 9.0, 3.0, inf]), np.array([inf, inf, 8.0, 3.9]), span_s=0.5)
    assert drop_step.tolist() == [False, True, True, False]  # exactly at the limit passes
    assert rise_step.tolist() == [False, False, True, False]
    assert rise_ramp.tolist() == [False, False, False, True]  # 4 / 0.5 = 8 kW/s


def test_findings_name_node_state_swing_and_limit() -> None:
    # 1.2 kW steps: the 1.1 kW drop fits with both feeds, the 1.4 kW drop after a loss does not
    cfg, topo = _ab(step_kw=1.2, ramp_kw_per_s=100.0, ups_ramp_kw_per_s=0.6)
    caps = np.full(topo.n_servers, 300.0)
    normal = analyze_storm(topo, caps, server_psu_rating_w(cfg, topo))
    assert normal.ramp_span_s == pytest.approx(1.0)
    # with both feeds: 1.1 kW drop within 1.2 kW, 0.5 kW/s rise within the UPS's 0.6 kW/s
    assert normal.findings == [] and normal.survivable and normal.reason() is None
    assert {n.node: (n.drop_kw, n.rise_kw) for n in normal.nodes}["SRC-A"] == (1.1, 0.5)
    both = analyze_hall_storm(cfg, topo, working_cap_w=caps)
    assert both.states == ("normal", "feed A lost", "feed B lost")
    found = {(f.node, f.state, f.event, f.check): (f.swing, f.limit, f.unit)
             for f in both.findings}
    assert found[("SRC-B", "feed A lost", "drop", "step")] == (1.4, 1.2, "kW")
    assert found[("UPS-B", "feed A lost", "restart", "ramp")] == (1.0, 0.6, "kW/s")
    assert found[("SRC-A", "feed B lost", "drop", "step")] == (1.4, 1.2, "kW")
    assert len(found) == 4 and not both.survivable
    reason = both.reason()
    assert reason is not None and PREVENTION in reason and "after the feed A loss" in reason


def test_demo_and_32k_halls_match_the_measured_dry_runs(demo: Topology,
                                                        hall32k: Topology) -> None:
    from controller.config import load_hall_config

    cfg = load_hall_config(CONFIGS / "demo-hall.toml")
    a = analyze_hall_storm(cfg, demo, states=("normal",))
    nodes = {n.node: n for n in a.nodes}
    # the staged dry run measured 2,169.6 kW and 1,145.6 kW at UTIL-A, 286.4 kW/s per UPS
    assert nodes["UTIL-A"].drop_kw == pytest.approx(2169.6)
    assert nodes["UTIL-A"].rise_kw == pytest.approx(1145.6)
    assert all(nodes[f"UPS-{f}0{i}"].rise_kw_per_s == pytest.approx(286.4)
               for f in "AB" for i in range(1, 5))
    # ... and 14 violations: the drop and the restart's step and ramp at each source, the
    # restart's ramp at each UPS (no step limit there)
    assert len(a.findings) == 14
    assert sum(f.node_kind == "ups" for f in a.findings) == 8
    big = analyze_hall_storm(load_hall_config(CONFIGS / "hall-32k.toml"), hall32k,
                             states=("normal",))
    assert len(big.findings) == 38  # the 32k hall's dry run: 38 violations


def test_validate_warns_but_exits_zero(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    rig = str(CONFIGS / "rig.toml")
    assert main(["validate", rig]) == EXIT_OK
    out = capsys.readouterr().out
    assert ("warning: LAB-UTIL steps down 8.6 kW when every working server goes idle at once, "
            "against a largest load step of 8.0 kW") in out
    assert "power smoothing" in out and "battery" in out and "paces job restarts" in out
    assert "warnings: 1 (workload storm; the config is valid)" in out
    assert main(["validate", rig, "--json"]) == EXIT_OK
    data = json.loads(capsys.readouterr().out)
    assert data["valid"] is True and data["workload_storm"]["survivable"] is False
    [warning] = data["warnings"]
    assert {k: warning[k] for k in ("kind", "node", "event", "check", "swing", "limit",
                                    "unit")} == {
        "kind": "workload-storm", "node": "LAB-UTIL", "event": "drop", "check": "step",
        "swing": 8.6, "limit": 8.0, "unit": "kW"}
    assert warning["prevention"] == PREVENTION
    # the same rig with a 20 kW largest step fits: no warning
    roomy = tmp_path / "rig-roomy.toml"
    roomy.write_text((CONFIGS / "rig.toml").read_text().replace("max_step_kw = 8\n",
                                                                "max_step_kw = 20\n"))
    assert main(["validate", str(roomy), "--json"]) == EXIT_OK
    data = json.loads(capsys.readouterr().out)
    assert data["warnings"] == [] and data["workload_storm"]["survivable"] is True
    assert main(["validate", str(roomy)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "fits every largest load step and ramp limit" in out and "warning" not in out


def test_dry_run_verdict_per_hall_and_per_scenario() -> None:
    cfg, topo = _ab(step_kw=1.2)
    caps = np.full(topo.n_servers, 300.0)

    def verdict(name: str) -> tuple[bool | None, str | None]:
        return scenario_verdict(cfg, topo, resolve_scenario(name), caps)

    assert verdict("workload-storm") == (True, None)
    assert verdict("meter-stale+workload-storm") == (True, None)
    for pair in ("feed-a-loss+workload-storm", "workload-storm+breaker-fast-tolerance"):
        flag, reason = verdict(pair)
        if pair.startswith("feed"):
            assert flag is False and reason is not None and "SRC-B steps down 1.4 kW" in reason
        else:
            assert (flag, reason) == (True, None)
    flag, reason = verdict("cooling-total-loss+workload-storm")
    assert flag is False and reason is not None and reason.startswith("cooling-total-loss")
    assert verdict("feed-a-loss") == (True, None)
    # a scenario file keeps its own flag unless the storm breaks the hall
    from sim import loads_scenario

    storm_file = ('name = "mine"\nsurvivable = true\n[[faults]]\nkind = "workload-storm"\n'
                  'servers = "R1-*"\nat_s = 100\n')
    assert scenario_verdict(cfg, topo, loads_scenario(storm_file), caps) == (True, None)
    tight, tight_topo = _ab(step_kw=1.0)
    flag, reason = scenario_verdict(tight, tight_topo, loads_scenario(storm_file), caps)
    assert flag is False and reason is not None and "SRC-A steps down 1.1 kW" in reason


def test_dry_run_prints_why_the_scenario_is_unsurvivable(
        capsys: pytest.CaptureFixture[str]) -> None:
    rig = str(CONFIGS / "rig.toml")
    # 30 s of virtual time: the verdict is the hall's, decided before the run
    argv = ["dry-run", rig, "--scenario", "workload-storm", "--max-sim-s", "30", "--quiet"]
    assert main(argv) == EXIT_OK  # nothing happened in 30 s: the storm comes later
    out = capsys.readouterr().out
    assert ("scenario unsurvivable on this hall: workload-storm: LAB-UTIL steps down 8.6 kW"
            in out) and "power smoothing" in out
    main([*argv[:3], "meter-dead", *argv[4:]])
    out = capsys.readouterr().out
    assert "scenario meter-dead" in out and "unsurvivable" not in out


@pytest.mark.parametrize(("max_step_kw", "survivable"), [(20, True), (8, False)])
def test_storm_end_to_end_on_the_rig(max_step_kw: float, survivable: bool) -> None:
    """Limits that fit the swing: the staged controller rides the storm with no violation;
    the rig's own 8 kW largest step: predicted unsurvivable, and the plant sees the steps."""
    cfg, topo = _rig(max_step_kw)
    s = run_dry_run(cfg, "staged", resolve_scenario("workload-storm"), topo=topo).summary
    assert s["scenario_survivable"] is survivable
    assert [f["kind"] for f in s["faults"]] == ["workload-storm"] and s["faults_applied"] == 1
    assert s["trips_total"] == 0
    if survivable:
        assert s["scenario_unsurvivable_reason"] is None
        assert s["violations_total"] == 0, s["violations"]
    else:
        assert "LAB-UTIL steps down 8.6 kW" in s["scenario_unsurvivable_reason"]
        steps = [v for v in s["violations"] if v["kind"] == "step"]
        assert steps and all(v["node"] == "LAB-UTIL" and v["limit"] == 8000.0 for v in steps)
        # the predicted drop is the plant's: at the fault's time, the same node, kind and peak
        t_fault = s["faults"][0]["t_s"]
        [finding] = analyze_hall_storm(cfg, topo, states=("normal",)).findings
        at_drop = [v for v in steps if abs(v["t_s"] - t_fault) < 0.15]
        assert [(v["node"], v["kind"], v["peak"] / 1e3) for v in at_drop] == [
            (finding.node, finding.check, pytest.approx(finding.swing))]


def test_the_ramp_guard_holds_idle_servers_at_their_minimum_cap_through_a_restart() -> None:
    """A ramp limit between the restart at minimum caps (3.8 kW in one step) and at the planned
    caps (8.6 kW): predicted survivable, and the staged core makes it so. While the GPUs idle,
    the ramp guard counts what no cap controls (the servers' non-GPU power, their GPUs up to the
    minimum cap) against the budget and caps them to their minimum; after the restart it counts
    the rise it has just seen before raising them again. Before, it counted only the GPUs' part
    from their minimum cap up, and the restart at the planned caps rose 8.6 kW/s against 6."""
    cfg, topo = _rig(20, ramp_kw_per_s=6)
    [node] = analyze_hall_storm(cfg, topo, states=("normal",)).nodes
    assert node.rise_kw_per_s == pytest.approx(3.8) and node.drop_kw == pytest.approx(8.6)
    s = run_dry_run(cfg, "staged", resolve_scenario("workload-storm"), topo=topo).summary
    assert s["scenario_survivable"] is True and s["faults_applied"] == 1
    assert s["trips_total"] == 0 and s["violations_total"] == 0, s["violations"]
    calm = run_dry_run(cfg, "staged", resolve_scenario(None), topo=topo).summary
    assert calm["violations_total"] == 0
    # the guard's caps down during the idle and back up after: cap commands the calm run has not
    assert s["controller"]["actions"]["set_caps"] > calm["controller"]["actions"]["set_caps"]
