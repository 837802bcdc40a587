"""Fault campaign, dry-run half: every simulator scenario and every pair of them, many seeds,
under the staged controller, in dry runs (docs/campaign.md).

Each run is :func:`controller.dryrun.run_dry_run` of the staged strategy (the decision core,
closed loop) on a hall under one scenario and one seed (the plant's randomness: boot and POST
durations, meter noise, the agents a fault picks; the core gets the same seed). The scenarios:
``none``, each of :data:`sim.NAMED_SCENARIOS`, and each unordered pair ``a+b`` of them (the
faults of both, each at its own time: :func:`sim.faults.combine_scenarios`; survivable only if
both are; a scenario with ``workload-storm`` is survivable or not per hall, as the run's
``scenario_survivable`` says: :func:`controller.dryrun.scenario_verdict`). On the demo hall
every scenario and pair runs with every seed; on the 32k hall a subset: ``none`` and the
single scenarios, with the first two seeds (``--subset-seeds``).

The report (JSON, default ``benchmarks/results/campaign.json``) gives, apart for survivable and
unsurvivable scenarios: runs, faults injected, trips, limit-seconds beyond the shed deadline,
double energizations (the first three must be 0), violations by kind, whether the core reached
SAFE or HOLDING after every observation fault, time to full power against the run's physical
lower bound; per scenario the same; a row for every run whose figures are not all zero (with
its trips, violations and late overloads) and a compact row for every run. A short summary goes
to stdout, progress to stderr.

Exit codes: 0 every survivable run had zero trips, zero limit-seconds beyond the deadline, zero
double energizations, reached SAFE or HOLDING after every loss of telemetry, and no run failed;
3 otherwise (ramp, step and inlet violations are reported, not judged here); 2 bad input; 130
interrupted (Ctrl-C or SIGTERM: the report of the runs done so far is written, marked
``"complete": false``, as it is every minute while the campaign runs).

Usage::

    .venv/bin/python benchmarks/campaign.py [--seeds 10] [--jobs 1] [--halls demo,32k]
        [--subset-seeds 2] [--quick] [--scenarios LIST] [--strategy staged] [--max-sim-s S]
        [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import platform
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from controller.dryrun import (  # noqa: E402
    STRATEGIES,
    DryRunOptions,
    run_dry_run,
    scenario_verdict,
)
from sim.faults import (  # noqa: E402
    NAMED_SCENARIOS,
    OBSERVATION_FAULTS,
    Scenario,
    ScenarioError,
    resolve_scenario,
    scenario_pairs,
)

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_UNSAFE = 3
EXIT_INTERRUPTED = 130

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "campaign.json"
#: Halls by short name; any other ``--halls`` entry is a path to a hall config.
HALLS = {"demo": ROOT / "configs" / "demo-hall.toml", "32k": ROOT / "configs" / "hall-32k.toml"}
#: Halls that run the subset (``none`` and the single scenarios, the first seeds) by default.
SUBSET_HALLS = frozenset({"32k"})
SUBSET_SEEDS = 2
#: Modes that count as having reacted to lost telemetry.
HELD_MODES = ("SAFE", "HOLDING")
#: Nonzero rows keep this many trips, violations and late overload episodes each.
DETAIL_LIMIT = 5


class CampaignInputError(ValueError):
    """Bad campaign input (unknown hall, scenario or strategy; bad counts): exit 2."""


# ============================================================================== the runs
@dataclass(frozen=True, slots=True)
class RunSpec:
    """One dry run of the campaign: hall (short name and config path), scenario, seed."""

    hall: str
    config: str
    scenario: str
    seed: int
    strategy: str = "staged"
    max_sim_s: float = 6 * 3600.0


def all_scenario_names(pairs: bool = True) -> list[str]:
    """``none``, every named scenario, then (``pairs``) every unordered pair ``a+b``."""
    names = ["none", *NAMED_SCENARIOS]
    if pairs:
        names += [s.name for s in scenario_pairs()]
    return names


def scenario_of(name: str) -> Scenario:
    """The scenario for a campaign name: ``none``, a named scenario or ``a+b``."""
    return resolve_scenario(None if name == "none" else name)


def plan_runs(halls: Sequence[str], seeds: int, scenarios: Sequence[str] | None = None,
              strategy: str = "staged", max_sim_s: float = 6 * 3600.0,
              subset_seeds: int = SUBSET_SEEDS) -> list[RunSpec]:
    """The runs of a campaign. ``halls``: short names of :data:`HALLS` or config paths;
    ``scenarios``: campaign names (default: all, with pairs; on the subset halls the single
    scenarios only). Raises :class:`CampaignInputError`."""
    if seeds < 1:
        raise CampaignInputError(f"--seeds must be >= 1, got {seeds}")
    if not (math.isfinite(max_sim_s) and max_sim_s > 0):
        raise CampaignInputError(f"--max-sim-s must be a positive number, got {max_sim_s!r}")
    if strategy not in STRATEGIES:
        raise CampaignInputError(f"unknown strategy {strategy!r}; choose one of: "
                                 + ", ".join(sorted(STRATEGIES)))
    for name in scenarios or ():
        try:
            scenario_of(name)
        except ScenarioError as exc:
            raise CampaignInputError(str(exc).splitlines()[0] + " " + " ".join(
                str(i) for i in exc.issues)) from None
    if not halls:
        raise CampaignInputError("--halls names no hall")
    plans = []
    for hall in halls:
        path = HALLS.get(hall, Path(hall))
        if not path.is_file():
            raise CampaignInputError(f"hall {hall!r}: no such config (expected "
                                     f"{', '.join(HALLS)} or a path to a TOML file)")
        subset = hall in SUBSET_HALLS
        names = list(scenarios) if scenarios else all_scenario_names(pairs=not subset)
        plans.append((hall, path, names, min(seeds, subset_seeds) if subset else seeds))
    # seed-major: a campaign stopped early has covered every scenario the same number of times
    return [RunSpec(hall, str(path), name, seed, strategy, max_sim_s)
            for seed in range(seeds) for hall, path, names, n_seeds in plans
            if seed < n_seeds for name in names]


_TOPOLOGIES: dict[str, Any] = {}


def run_one(spec: RunSpec) -> dict[str, Any]:
    """Run one dry run and reduce it to its campaign row (:func:`row_of`); a run that raises
    becomes a row with ``error`` (counted, never hidden)."""
    started = time.perf_counter()
    try:
        from controller.config import load_hall_config
        from controller.topology import compile_hall

        if spec.config not in _TOPOLOGIES:  # one compile per hall and process
            cfg = load_hall_config(spec.config)
            _TOPOLOGIES[spec.config] = (cfg, compile_hall(cfg, source=spec.config))
        cfg, topo = _TOPOLOGIES[spec.config]
        scenario = scenario_of(spec.scenario)
        result = run_dry_run(cfg, spec.strategy, scenario, seed=spec.seed, topo=topo,
                             options=DryRunOptions(max_sim_s=spec.max_sim_s))
        return row_of(spec, result.summary)
    except Exception as exc:  # a failed run is a campaign figure, never dropped
        return {"hall": spec.hall, "scenario": spec.scenario, "seed": spec.seed,
                "strategy": spec.strategy, "survivable": _survivable(spec),
                "error": f"{type(exc).__name__}: {exc}",
                "wall_s": round(time.perf_counter() - started, 2)}


def _survivable(spec: RunSpec) -> bool | None:
    """The verdict of a run that failed: for this hall (:func:`controller.dryrun.
    scenario_verdict`, at the planner's steady caps) when its config compiled, else the
    scenario's flag."""
    try:
        scenario = scenario_of(spec.scenario)
    except ScenarioError:
        return None
    if spec.config in _TOPOLOGIES:
        cfg, topo = _TOPOLOGIES[spec.config]
        try:
            return scenario_verdict(cfg, topo, scenario)[0]
        except Exception:  # the verdict of a failed run must not fail the campaign
            return scenario.survivable
    return scenario.survivable


def telemetry_loss(summary: dict[str, Any]) -> dict[str, Any] | None:
    """For a run with an observation fault (meter stale, stuck, lying, dead; Modbus
    unreachable): the first fault's time, and the first transition of the core into SAFE or
    HOLDING at or after it, other than the start-up hold out of IDLE (``None`` when there is
    none: the loss went unnoticed). ``None`` for runs without such a fault."""
    times = [f["t_s"] for f in summary.get("faults", []) if f["kind"] in OBSERVATION_FAULTS]
    if not times:
        return None
    t0 = min(times)
    ctl = summary.get("controller") or {}
    first = next((tr for tr in ctl.get("transitions", [])
                  if tr["to"] in HELD_MODES and tr["from"] != "IDLE" and tr["t_s"] >= t0),
                 None)
    return {"fault_t_s": t0,
            "held": first is not None,
            "mode": None if first is None else first["to"],
            "after_s": None if first is None else round(first["t_s"] - t0, 3),
            "reason": None if first is None else first["reason"],
            "final_mode": ctl.get("mode")}


def row_of(spec: RunSpec, s: dict[str, Any]) -> dict[str, Any]:
    """The campaign's figures of one dry run's summary (see the module docstring)."""
    ttfp, bound = s["time_to_full_power_s"], s["lower_bound_s"]
    late = [ep for ep in s.get("overload_episodes", []) if ep["beyond_deadline_s"] > 0]
    ctl = s.get("controller") or {}
    row: dict[str, Any] = {
        "hall": spec.hall, "scenario": spec.scenario, "seed": spec.seed,
        "strategy": spec.strategy, "survivable": s["scenario_survivable"],
        "faults_scheduled": len(s["faults"]), "faults_injected": s["faults_applied"],
        "trips": s["trips_total"],
        "limit_s_beyond_deadline": s["limit_s_beyond_deadline"],
        "overload_episodes": s["overload_episodes_total"],
        "overloads_past_deadline": len(late),
        "double_energizations": s["double_energizations"],
        "controller_energized_twice": ctl.get("energized_twice"),
        "violations": s["violations_total"],
        "violations_by_kind": s["violations_by_kind"],
        "telemetry_loss": telemetry_loss(s),
        "time_to_full_power_s": ttfp, "lower_bound_s": bound,
        "full_power_x_bound": None if ttfp is None or not bound else round(ttfp / bound, 4),
        "final_mode": ctl.get("mode"),
        "servers_at_min_cap": s["servers_at_min_cap"], "total_servers": s["total_servers"],
        "sim_s": s["sim_seconds"], "wall_s": s["wall_seconds"], "error": None,
    }
    if _nonzero(row):
        row["detail"] = {
            "trips": s["trips"][:DETAIL_LIMIT],
            "violations": s["violations"][:DETAIL_LIMIT],
            "overloads_past_deadline": late[:DETAIL_LIMIT],
            "fault_effects": s["fault_effects"],
        }
    return row


def _nonzero(row: dict[str, Any]) -> bool:
    """A row worth listing: an error, a trip, a late overload, a double energization, a
    violation, or an observation fault the core did not react to."""
    loss = row.get("telemetry_loss")
    return bool(row.get("error") or row["trips"] or row["limit_s_beyond_deadline"] > 0
                or row["double_energizations"] or row["violations"]
                or (loss is not None and not loss["held"]))


def _run_indexed(item: tuple[int, RunSpec]) -> tuple[int, dict[str, Any]]:
    return item[0], run_one(item[1])


def execute(specs: Sequence[RunSpec], jobs: int = 1,
            progress: Callable[[str], None] | None = None,
            on_row: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
    """Run ``specs`` in their order (in this process when ``jobs`` is 1, else on a pool of
    ``jobs`` spawned processes, terminated on the way out, interrupted or not); rows in the order
    of ``specs``. ``on_row(rows so far)`` after each run (checkpoints)."""
    if jobs < 1:
        raise CampaignInputError(f"--jobs must be >= 1, got {jobs}")
    started = time.perf_counter()
    rows: list[dict[str, Any] | None] = [None] * len(specs)

    def report(i: int, row: dict[str, Any], done: int) -> None:
        rows[i] = row
        if on_row is not None:
            on_row([r for r in rows if r is not None])
        if progress is not None:
            el = time.perf_counter() - started
            eta = el / done * (len(specs) - done)
            progress(f"[{done}/{len(specs)}] {row['hall']} {row['scenario']} seed {row['seed']}: "
                     f"{_verdict(row)} ({row.get('wall_s', 0):.1f} s; {el:.0f} s elapsed, "
                     f"~{eta:.0f} s left)")

    if jobs == 1:
        for i, spec in enumerate(specs):
            report(i, run_one(spec), i + 1)
    else:
        with multiprocessing.get_context("spawn").Pool(jobs) as pool:  # exit: terminate()
            for done, (i, row) in enumerate(
                    pool.imap_unordered(_run_indexed, list(enumerate(specs))), 1):
                report(i, row, done)
    return [r for r in rows if r is not None]


def _verdict(row: dict[str, Any]) -> str:
    if row.get("error"):
        return "ERROR " + row["error"]
    parts = []
    if row["trips"]:
        parts.append(f"{row['trips']} trips")
    if row["limit_s_beyond_deadline"] > 0:
        parts.append(f"{row['limit_s_beyond_deadline']:.1f} limit-s beyond deadline")
    if row["double_energizations"]:
        parts.append(f"{row['double_energizations']} double energizations")
    if row["violations"]:
        parts.append(", ".join(f"{n} {k}" for k, n in row["violations_by_kind"].items()))
    loss = row["telemetry_loss"]
    if loss is not None and not loss["held"]:
        parts.append("telemetry lost, not held")
    return "ok" if not parts else "; ".join(parts)


# ============================================================================== the report
def _stats(values: Iterable[float]) -> dict[str, float] | None:
    v = sorted(values)
    if not v:
        return None
    return {"n": len(v), "min": round(v[0], 4), "median": round(statistics.median(v), 4),
            "max": round(v[-1], 4)}


def totals(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The campaign's figures over ``rows``."""
    good = [r for r in rows if not r.get("error")]
    by_kind: dict[str, int] = {}
    for r in good:
        for kind, n in r["violations_by_kind"].items():
            by_kind[kind] = by_kind.get(kind, 0) + n
    losses = [r["telemetry_loss"] for r in good if r["telemetry_loss"] is not None]
    held_after = [x["after_s"] for x in losses if x["held"]]
    ratios = [r["full_power_x_bound"] for r in good if r["full_power_x_bound"] is not None]
    return {
        "runs": len(rows),
        "errors": len(rows) - len(good),
        "faults_injected": sum(r["faults_injected"] for r in good),
        "faults_scheduled": sum(r["faults_scheduled"] for r in good),
        "trips": sum(r["trips"] for r in good),
        "runs_with_trips": sum(1 for r in good if r["trips"]),
        "limit_s_beyond_deadline": round(sum(r["limit_s_beyond_deadline"] for r in good), 3),
        "overload_episodes": sum(r["overload_episodes"] for r in good),
        "overloads_past_deadline": sum(r["overloads_past_deadline"] for r in good),
        "double_energizations": sum(r["double_energizations"] for r in good),
        "violations": sum(r["violations"] for r in good),
        "violations_by_kind": dict(sorted(by_kind.items())),
        "runs_with_violations": sum(1 for r in good if r["violations"]),
        "telemetry_loss": {"runs": len(losses), "held": len(held_after),
                           "not_held": len(losses) - len(held_after),
                           "held_after_s": _stats(held_after)},
        "full_power": {"runs_reached": len(ratios), "runs_not_reached": len(good) - len(ratios),
                       "x_lower_bound": _stats(ratios)},
        "runs_all_caps_at_min_at_end": sum(1 for r in good
                                           if r["servers_at_min_cap"] == r["total_servers"]),
        "sim_s": round(sum(r["sim_s"] for r in good), 1),
        "wall_s": round(sum(r["wall_s"] for r in rows), 1),
    }


def must_be_zero(t: dict[str, Any]) -> dict[str, int | float]:
    """The figures the campaign requires to be zero (over the survivable runs)."""
    return {"trips": t["trips"], "limit_s_beyond_deadline": t["limit_s_beyond_deadline"],
            "double_energizations": t["double_energizations"],
            "telemetry_loss_not_held": t["telemetry_loss"]["not_held"], "errors": t["errors"]}


def build_report(rows: Sequence[dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    """The JSON report: survivable and unsurvivable runs apart, per hall and per scenario."""
    def split(rs: Sequence[dict[str, Any]]) -> dict[str, Any]:
        return {"survivable": totals([r for r in rs if r["survivable"] is not False]),
                "unsurvivable": totals([r for r in rs if r["survivable"] is False])}

    survivable = [r for r in rows if r["survivable"] is not False]
    zeros = must_be_zero(totals(survivable))
    halls = sorted({r["hall"] for r in rows}, key=lambda h: [r["hall"] for r in rows].index(h))
    by_scenario: dict[str, dict[str, Any]] = {}
    for hall in halls:
        names: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            if r["hall"] == hall:
                names.setdefault(r["scenario"], []).append(r)
        by_scenario[hall] = {name: _scenario_line(rs) for name, rs in names.items()}
    return {
        "campaign": "dry-run fault campaign (docs/campaign.md)",
        "settings": settings,
        "ok": all(v == 0 for v in zeros.values()),
        "must_be_zero": zeros,
        **split(rows),
        "by_hall": {hall: split([r for r in rows if r["hall"] == hall]) for hall in halls},
        "by_scenario": by_scenario,
        "nonzero_runs": [r for r in rows if _nonzero(r)],
        "runs": [{k: v for k, v in r.items() if k != "detail"} for r in rows],
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def _scenario_line(rs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    t = totals(rs)
    fp = t["full_power"]["x_lower_bound"]
    return {"survivable": rs[0]["survivable"], "runs": t["runs"], "errors": t["errors"],
            "faults_injected": t["faults_injected"], "trips": t["trips"],
            "limit_s_beyond_deadline": t["limit_s_beyond_deadline"],
            "double_energizations": t["double_energizations"],
            "violations_by_kind": t["violations_by_kind"],
            "telemetry_loss_held": None if not t["telemetry_loss"]["runs"] else
            f"{t['telemetry_loss']['held']}/{t['telemetry_loss']['runs']}",
            "full_power_x_bound_median": None if fp is None else fp["median"],
            "full_power_x_bound_max": None if fp is None else fp["max"],
            "full_power_reached": f"{t['full_power']['runs_reached']}/{t['runs']}",
            "runs_all_caps_at_min_at_end": t["runs_all_caps_at_min_at_end"]}


def summary_text(report: dict[str, Any]) -> str:
    """The short human summary printed on stdout."""
    lines = []
    for part in ("survivable", "unsurvivable"):
        t = report[part]
        if not t["runs"]:
            continue
        fp = t["full_power"]["x_lower_bound"]
        tl = t["telemetry_loss"]
        lines += [
            f"{part}: {t['runs']} runs ({t['errors']} failed), {t['faults_injected']} faults "
            f"injected, {t['trips']} trips, {t['limit_s_beyond_deadline']:g} limit-s beyond the "
            f"shed deadline ({t['overload_episodes']} overload episodes, "
            f"{t['overloads_past_deadline']} past their deadline), "
            f"{t['double_energizations']} double energizations",
            f"  violations by kind: {t['violations_by_kind'] or 'none'} "
            f"(in {t['runs_with_violations']} runs)",
            f"  telemetry lost in {tl['runs']} runs: SAFE/HOLDING in {tl['held']}"
            + ("" if tl["held_after_s"] is None else
               f" (after {tl['held_after_s']['min']:g}-{tl['held_after_s']['max']:g} s)"),
            f"  full power in {t['full_power']['runs_reached']} runs"
            + ("" if fp is None else f": {fp['median']:.3f}x the lower bound (median), "
                                     f"{fp['min']:.3f}-{fp['max']:.3f}x"),
        ]
        if part == "unsurvivable":
            lines.append(f"  every GPU capped to its minimum at the end in "
                         f"{t['runs_all_caps_at_min_at_end']} of {t['runs']} runs")
    bad: dict[str, list[int]] = {}
    for r in report["nonzero_runs"]:
        bad.setdefault(f"{r['hall']} {r['scenario']}: {_verdict(r)}", []).append(r["seed"])
    if bad:
        lines.append(f"runs with nonzero figures ({len(report['nonzero_runs'])}):")
        for i, (what, seeds) in enumerate(sorted(bad.items())):
            if i == 30:
                lines.append(f"  ... {len(bad) - 30} more")
                break
            lines.append(f"  {what} (seeds {','.join(map(str, seeds))})")
    zeros = report["must_be_zero"]
    settings = report.get("settings", {})
    if settings.get("complete") is False:
        lines.append(f"PARTIAL: {len(report['runs'])} of {settings.get('runs_planned')} "
                     "planned runs")
    lines.append(("OK" if report["ok"] else "NOT OK") + ": must be zero: "
                 + ", ".join(f"{k} {v:g}" for k, v in zeros.items()))
    return "\n".join(lines)


# ============================================================================== CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="campaign.py", description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=None,
                    help="seeds 0..N-1 per scenario (default 10; 1 with --quick)")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    ap.add_argument("--halls", default=None,
                    help="comma-separated: demo, 32k or config paths (default demo,32k; "
                         "demo with --quick)")
    ap.add_argument("--subset-seeds", type=int, default=SUBSET_SEEDS,
                    help=f"seeds on the subset halls (32k; default {SUBSET_SEEDS}, at most "
                         "--seeds)")
    ap.add_argument("--quick", action="store_true",
                    help="none and the single scenarios on the demo hall, one seed")
    ap.add_argument("--scenarios", default=None,
                    help="comma-separated campaign names (none, NAME, A+B) instead of all")
    ap.add_argument("--strategy", default="staged", help="dry-run strategy (default staged)")
    ap.add_argument("--max-sim-s", type=float, default=6 * 3600.0,
                    help="longest run in virtual seconds (default 21600)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help=f"report path (default {DEFAULT_OUT})")
    args = ap.parse_args(argv)
    seeds = args.seeds if args.seeds is not None else (1 if args.quick else 10)
    halls = [h.strip() for h in (args.halls or ("demo" if args.quick else "demo,32k")).split(",")
             if h.strip()]
    scenarios = None
    if args.scenarios:
        scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    elif args.quick:
        scenarios = all_scenario_names(pairs=False)
    try:
        if args.subset_seeds < 1:
            raise CampaignInputError(f"--subset-seeds must be >= 1, got {args.subset_seeds}")
        specs = plan_runs(halls, seeds, scenarios, args.strategy, args.max_sim_s,
                          args.subset_seeds)
        if args.jobs < 1:
            raise CampaignInputError(f"--jobs must be >= 1, got {args.jobs}")
    except CampaignInputError as exc:
        print(f"campaign: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    out = Path(args.out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"campaign: cannot write into {str(out.parent)!r}: {exc.strerror or exc}",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    started = time.perf_counter()
    command = "benchmarks/campaign.py " + " ".join(sys.argv[1:] if argv is None else argv)
    settings = {"command": command.strip(), "strategy": args.strategy, "seeds": seeds,
                "halls": {h: str(HALLS.get(h, h)) for h in halls},
                "subset_halls": {h: f"none and the single scenarios, seeds "
                                    f"0..{min(seeds, args.subset_seeds) - 1}"
                                 for h in halls if h in SUBSET_HALLS and not scenarios},
                "scenarios": len({s.scenario for s in specs}), "runs_planned": len(specs),
                "jobs": args.jobs, "max_sim_s": args.max_sim_s}
    last_write = [time.perf_counter()]

    def write(rows: Sequence[dict[str, Any]], complete: bool) -> dict[str, Any]:
        settings["complete"] = complete
        settings["wall_s"] = round(time.perf_counter() - started, 1)
        report = build_report(rows, settings)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=1) + "\n")
        tmp.replace(out)
        last_write[0] = time.perf_counter()
        return report

    def checkpoint(rows: list[dict[str, Any]]) -> None:
        if time.perf_counter() - last_write[0] >= 60.0:
            write(rows, complete=False)

    done_rows: list[dict[str, Any]] = []

    def keep(rows: list[dict[str, Any]]) -> None:
        done_rows[:] = rows
        checkpoint(rows)

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    print(f"campaign: {len(specs)} dry runs ({args.strategy}) on {', '.join(halls)}, "
          f"{args.jobs} job(s)", file=sys.stderr, flush=True)
    try:
        rows = execute(specs, args.jobs, on_row=keep,
                       progress=lambda m: print(m, file=sys.stderr, flush=True))
    except KeyboardInterrupt:
        report = write(done_rows, complete=False)
        print(summary_text(report))
        print(f"campaign: interrupted after {len(done_rows)} of {len(specs)} runs; partial "
              f"report: {out}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    report = write(rows, complete=True)
    print(summary_text(report))
    print(f"report: {out} ({settings['wall_s']:.0f} s wall)")
    return EXIT_OK if report["ok"] else EXIT_UNSAFE


if __name__ == "__main__":
    sys.exit(main())
