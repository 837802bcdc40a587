"""``rampguard dry-run``: a strategy against the simulated plant, in virtual time.

Registered in :func:`controller.cli._command_adders` through :func:`add_command`. Exit codes
(DESIGN.md): 0 nothing tripped and nothing violated, 3 something tripped or a limit was
violated, 2 bad input (config, scenario, strategy, options), 1 internal error.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_UNSAFE = 3

_DESCRIPTION = """\
Run a bring-up strategy against the simulated plant of a hall in virtual time (no network),
optionally under a fault scenario, and print a verdict: breakers that tripped (with the cause),
limits violated (overload past the shed deadline, source/UPS ramp and load step, inlet above
allowable), time to full power, peak utilization per level, peak inlet temperature.
With no CONFIG it uses configs/demo-hall.toml.

strategies: staged (the default: the planner's staged plan, executed open loop until the
closed-loop controller lands), and the open-loop baselines operators use today: all-at-once,
fixed-delay (PDU outlet sequencing) and fixed-rate (Slurm's ResumeRate).

exit codes: 0 safe, 3 a trip or a violation, 2 bad input, 1 internal error
"""


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``dry-run`` sub-command to the CLI."""
    from controller.dryrun import DEFAULT_STRATEGY

    p = sub.add_parser(
        "dry-run",
        help="run a strategy against the simulated plant and judge it",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", metavar="CONFIG", nargs="?", default=None,
                   help="hall config (TOML); default configs/demo-hall.toml")
    p.add_argument("--strategy", default=DEFAULT_STRATEGY,
                   help=f"bring-up strategy (default {DEFAULT_STRATEGY})")
    p.add_argument("--scenario", metavar="NAME|FILE", default=None,
                   help="a named fault scenario (see --list-scenarios) or a scenario TOML file")
    p.add_argument("--list-scenarios", action="store_true",
                   help="print the named scenarios and whether the plant can survive them")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--report", metavar="DIR", default=None,
                   help="write an HTML report, PNG plots and the JSON verdict into DIR")
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")
    p.add_argument("--delay-s", type=float, default=None,
                   help="fixed-delay: seconds between outlets (default: [controller] "
                        "fixed_delay_s)")
    p.add_argument("--rate-per-min", type=float, default=None,
                   help="fixed-rate: servers per minute (default: [controller] "
                        "fixed_rate_per_min)")
    p.add_argument("--dt-s", type=float, default=0.1, help="plant step (default 0.1 s)")
    p.add_argument("--max-sim-s", type=float, default=6 * 3600.0,
                   help="stop after this much virtual time (default 21600 s)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(handler=_cmd_dry_run)


def _err(message: str) -> int:
    print(f"rampguard dry-run: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _cmd_dry_run(args: argparse.Namespace) -> int:
    from controller.dryrun import (
        STRATEGIES,
        DryRunOptions,
        UnknownStrategyError,
        default_config_path,
        run_dry_run,
    )
    from sim import ScenarioError, list_scenarios, resolve_scenario

    if args.list_scenarios:
        for line in list_scenarios():
            print(line)
        return EXIT_OK
    if args.strategy not in STRATEGIES:
        known = ", ".join(sorted(STRATEGIES))
        return _err(f"unknown strategy {args.strategy!r}; choose one of: {known}")
    try:
        scenario = resolve_scenario(args.scenario)
    except ScenarioError as exc:
        return _err(str(exc))
    if args.seed < 0:
        return _err(f"--seed must be >= 0, got {args.seed}")
    try:
        options = DryRunOptions(dt_s=args.dt_s, max_sim_s=args.max_sim_s, delay_s=args.delay_s,
                                rate_per_min=args.rate_per_min,
                                progress=None if args.quiet else _progress)
    except ValueError as exc:
        return _err(str(exc))
    config = args.config if args.config is not None else str(default_config_path())
    try:
        result = run_dry_run(config, args.strategy, scenario, seed=args.seed, options=options)
    except UnknownStrategyError:  # pragma: no cover - checked above
        return _err(f"unknown strategy {args.strategy!r}")
    summary = result.to_json()
    if args.report:
        from controller.report import write_report

        try:
            write_report(result, args.report)
        except OSError as exc:
            return _err(f"cannot write the report into {args.report!r}: {exc}")
        summary["report"] = str(args.report)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(_text(summary))
    return EXIT_OK if summary["ok"] else EXIT_UNSAFE


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _text(s: dict[str, Any]) -> str:
    lines = [
        f"{s['config']}: {s['strategy']}, scenario {s['scenario']}, seed {s['seed']}",
        "verdict: " + ("OK (no trip, no violation)" if s["ok"] else
                       f"UNSAFE ({s['trips_total']} trips, {s['violations_total']} violations)"),
        *([f"scenario unsurvivable on this hall: {s['scenario_unsurvivable_reason']}"]
          if s.get("scenario_unsurvivable_reason") else []),
        f"time to full power: {s['time_to_full_power_s']} s (physical lower bound for this run "
        f"{s['lower_bound_s']} s)",
        f"energized servers: {s['energized_servers']} of {s['total_servers']}; peak inlet "
        f"{s['peak_inlet_c']:.1f} °C",
        "peak utilization: " + ", ".join(f"{k} {v:.2f}" for k, v in
                                         s["peak_utilization"].items()),
    ]
    for trip in s["trips"][:20]:
        lines.append(f"  trip {trip['node']} at {trip['t_s']:.3f} s: {trip['cause']} "
                     f"({trip['detail']})")
    if s["trips_total"] > 20:
        lines.append(f"  ... {s['trips_total'] - 20} more trips")
    for v in s["violations"][:20]:
        lines.append(f"  {v['kind']} {v['node']} at {v['t_s']:.1f} s for {v['duration_s']:.1f} "
                     f"s: {v['detail']}")
    if s["violations_total"] > 20:
        lines.append(f"  ... {s['violations_total'] - 20} more violations")
    lines.append(f"simulated {s['sim_seconds']:.0f} s in {s['wall_seconds']:.2f} s")
    return "\n".join(lines)
