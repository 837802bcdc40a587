"""``rampguard plan CONFIG [--strategy ...] [--json]``: a bring-up plan and what it predicts.

The command compiles the hall, plans it with the chosen strategy (the staged planner, or one of
the baselines expressed as a plan), predicts the plan's worst-case timeline, and reports: the
stages, the time to full power against the physical lower bound and the constraint that binds
it, the peak predicted utilization per level, the caps, and every predicted violation. Unless
``--no-compare`` is given it also predicts the other strategies, side by side.

Exit codes: 0 when the requested strategy's plan predicts no violation; 3 when it predicts one
(so the baselines exit 3 on halls they would overload); 2 for a bad config or usage; 1 for an
internal error. A staged plan that must leave servers off (they do not fit even at their minimum
caps, or one of their own steps exceeds a limit) is still a plan: exit 0, and the report names
them.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from controller.planner import (
    STRATEGIES,
    PlannerContext,
    PlannerSettings,
    PlanResult,
    plan,
)
from controller.prediction import Prediction, predict, server_times_s, zone_deficit_limit_w
from controller.topology import Topology
from kernels.planner import STATUS_NAMES

EXIT_OK = 0
EXIT_UNSAFE = 3

#: Switch-ons (or cap events) less than this far apart belong to one stage.
STAGE_GAP_S = 10.0


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``plan`` on the CLI's sub-parsers."""
    cmd = sub.add_parser(
        "plan",
        help="compute a bring-up plan and predict its worst case",
        description=(
            "Plan the bring-up of a hall: when each server's outlets are switched on and at "
            "which GPU caps it works, so that every continuous limit (normally and after the "
            "loss of either feed), the inrush rules, the ramp and step limits of sources and "
            "UPSs and the cooling of every zone hold in the predicted worst case. Prints the "
            "stages, the time to full power against the physical lower bound, the peak "
            "predicted utilization per level, the caps and the predicted violations, with the "
            "baselines side by side. Exit 0 when the chosen strategy predicts no violation, "
            "3 when it does, 2 for a bad config."
        ),
    )
    cmd.add_argument("config", metavar="CONFIG", help="path to the hall config (TOML)")
    cmd.add_argument("--strategy", choices=STRATEGIES, default="staged",
                     help="staged (default) or one of the baselines")
    cmd.add_argument("--json", action="store_true", help="print the report as JSON")
    cmd.add_argument("--no-compare", action="store_true",
                     help="do not predict the other strategies")
    cmd.set_defaults(handler=run)


@dataclass
class _Outcome:
    result: PlanResult
    prediction: Prediction
    predict_seconds: float


def run(args: argparse.Namespace) -> int:
    from controller.config import load_hall_config
    from controller.topology import compile_hall

    started = time.perf_counter()
    config = load_hall_config(args.config)
    topo = compile_hall(config, source=args.config)
    settings = PlannerSettings.from_controller(config.controller)
    t_ctx = time.perf_counter()
    context = PlannerContext(topo, settings)
    context_s = time.perf_counter() - t_ctx
    chosen = _run_strategy(topo, context, settings, args.strategy)
    others: list[_Outcome] = []
    if not args.no_compare:
        others = [_run_strategy(topo, context, settings, name)
                  for name in STRATEGIES if name != args.strategy]
    report = build_report(topo, chosen.result, chosen.prediction, settings,
                          [(o.result, o.prediction) for o in others])
    report["config"] = args.config
    report["predict_seconds"] = round(chosen.predict_seconds, 4)
    report["context_seconds"] = round(context_s, 4)
    report["wall_seconds"] = round(time.perf_counter() - started, 3)
    if args.json:
        print(json.dumps(_finite(report), indent=2))
    else:
        print(format_report(report))
    return EXIT_OK if report["ok"] else EXIT_UNSAFE


def _run_strategy(topo: Topology, context: PlannerContext, settings: PlannerSettings,
                  name: str) -> _Outcome:
    result = plan(topo, name, context=context)
    t0 = time.perf_counter()
    pred = predict(topo, result.schedule, admission_margin=settings.admission_margin,
                   magnetic_margin=settings.magnetic_margin, window_s=settings.window_s,
                   anc=context.anc)
    return _Outcome(result, pred, time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------
def build_report(
    topo: Topology,
    result: PlanResult,
    pred: Prediction,
    settings: PlannerSettings,
    comparison: list[tuple[PlanResult, Prediction]] | None = None,
) -> dict[str, Any]:
    """Everything ``rampguard plan`` reports, as a JSON-ready dict (DESIGN.md keys first)."""
    sched = result.schedule
    lb = result.lower_bound
    util = pred.utilization_by_kind(topo)
    times = server_times_s(topo, sched.psu_on_s)
    on = np.isfinite(times[:, 0])
    counts = result.status_counts()
    left_off = np.flatnonzero(~on)
    final = sched.final_cap_w()
    report: dict[str, Any] = {
        "strategy": result.strategy,
        "hall": topo.name,
        "servers": int(on.sum()),
        "servers_total": topo.n_servers,
        "servers_left_off": int(left_off.shape[0]),
        "left_off": [{"server": topo.server_id[s],
                      "why": STATUS_NAMES[int(result.status[s])]} for s in left_off[:20]],
        "status_counts": counts,
        "stages": stages(topo, result),
        "makespan_s": _round(result.makespan_s),
        "lower_bound_s": _round(lb.total_s),
        "makespan_over_lower_bound": _round(_ratio(result.makespan_s, lb.total_s), 4),
        "lower_bound": {"binding": lb.binding, "where": lb.binding_where,
                        "terms_s": {k: _round(v) for k, v in lb.terms_s.items()}},
        "peak_predicted_utilization": {k: round(v, 4) for k, v in util.items()},
        "ramp": _ramp(topo, pred, settings),
        "cooling": _cooling(topo, pred, settings),
        "caps": _caps(topo, final, on),
        "ok": not pred.violations,
        "violation_counts": pred.violation_counts(),
        "violations": [v.to_dict() for v in _worst(pred, 50)],
        "plan_seconds": round(result.plan_seconds, 4),
        "plan_timings_s": {k: round(v, 4) for k, v in result.timings_s.items()
                           if k != "horizon_s"},
    }
    if comparison:
        rows = [(result, pred), *comparison]
        report["comparison"] = [{
            "strategy": r.strategy,
            "makespan_s": _round(r.makespan_s),
            "lower_bound_s": _round(r.lower_bound.total_s),
            "makespan_over_lower_bound": _round(_ratio(r.makespan_s, r.lower_bound.total_s), 4),
            "ok": not p.violations,
            "violation_counts": p.violation_counts(),
            "peak_predicted_utilization": {k: round(v, 4)
                                           for k, v in p.utilization_by_kind(topo).items()},
            "plan_seconds": round(r.plan_seconds, 4),
        } for r, p in sorted(rows, key=lambda rp: STRATEGIES.index(rp[0].strategy))]
    return report


def stages(topo: Topology, result: PlanResult) -> list[dict[str, Any]]:
    """The plan's stages: runs of switch-ons (by server, at its first PSU), then runs of cap
    raises and cap lowerings, a new stage wherever STAGE_GAP_S passes without an event or the
    priority changes."""
    sched = result.schedule
    times = server_times_s(topo, sched.psu_on_s)
    first = times[:, 0]
    out: list[dict[str, Any]] = []
    idx = np.flatnonzero(np.isfinite(first) & (first >= result.now_s))
    idx = idx[np.argsort(first[idx], kind="stable")]
    out += _runs(topo, idx, first[idx], "switch-on", sched.gpu_cap_w[idx], None)
    ev = np.flatnonzero(sched.cap_t_s >= result.now_s)
    if ev.size:
        prev = _cap_before(sched, ev)
        up = sched.cap_w[ev] > prev
        for kind, mask in (("cap-raise", up), ("cap-lower", ~up)):
            sel = ev[mask]
            out += _runs(topo, sched.cap_server[sel], sched.cap_t_s[sel], kind,
                         prev[mask], sched.cap_w[sel])
    out.sort(key=lambda st: (st["start_s"], st["kind"]))
    for i, st in enumerate(out, start=1):
        st["stage"] = i
    return out


def _cap_before(sched: Any, ev: np.ndarray) -> np.ndarray:
    caps = sched.gpu_cap_w.copy()
    before = np.empty(ev.shape[0])
    j = 0
    for e in range(sched.cap_t_s.shape[0]):
        if j < ev.shape[0] and ev[j] == e:
            before[j] = caps[sched.cap_server[e]]
            j += 1
        caps[sched.cap_server[e]] = sched.cap_w[e]
    return before


def _runs(topo: Topology, servers: np.ndarray, t: np.ndarray, kind: str,
          cap_from: np.ndarray, cap_to: np.ndarray | None) -> list[dict[str, Any]]:
    if servers.size == 0:
        return []
    prio = topo.server_priority[servers]
    cut = np.flatnonzero((np.diff(t) > STAGE_GAP_S) | (np.diff(prio) != 0)) + 1
    out = []
    for part in np.split(np.arange(servers.size), cut):
        s = servers[part]
        uniq = np.unique(s)
        entry: dict[str, Any] = {
            "kind": kind,
            "start_s": _round(float(t[part].min())),
            "end_s": _round(float(t[part].max())),
            "servers": int(uniq.shape[0]),
            "events": int(part.shape[0]),
            "gpus": int(topo.server_gpus[uniq].sum()),
            "priority": int(prio[part[0]]),
        }
        if kind == "switch-on":
            entry["psus"] = int(np.isin(topo.psu_server, uniq).sum())
            entry["first_cap_w"] = _cap_range(cap_from[part], topo.server_gpus[s])
        else:
            entry["cap_from_w"] = _cap_range(cap_from[part], topo.server_gpus[s])
            assert cap_to is not None
            entry["cap_to_w"] = _cap_range(cap_to[part], topo.server_gpus[s])
        out.append(entry)
    return out


def _cap_range(caps: np.ndarray, gpus: np.ndarray) -> list[float] | None:
    c = caps[gpus > 0]
    if c.size == 0:
        return None
    return [_round(float(c.min()), 1), _round(float(c.max()), 1)]


def _ramp(topo: Topology, pred: Prediction, settings: PlannerSettings) -> list[dict[str, Any]]:
    rows = []
    for j, i in enumerate(pred.ramp_nodes):
        ramp = float(topo.ramp_limit_w_per_s[i]) * settings.window_s
        step = float(topo.max_step_w[i])
        limit = min(ramp, step)
        rows.append({
            "node": topo.node_id[i],
            "peak_rise_kw_per_window": round(float(pred.ramp_rise_w[j]) / 1e3, 3),
            "limit_kw_per_window": _round(limit / 1e3, 3),
            "utilization": _round(_ratio(float(pred.ramp_rise_w[j]), limit), 4),
        })
    rows.sort(key=lambda r: -(r["utilization"] or 0.0))
    return rows


def _cooling(topo: Topology, pred: Prediction, settings: PlannerSettings
             ) -> list[dict[str, Any]]:
    cap = topo.zone_capacity_n1_w
    dmax = zone_deficit_limit_w(topo)
    return [{
        "zone": z,
        "peak_heat_kw": round(float(pred.zone_peak_w[k]) / 1e3, 1),
        "capacity_n_minus_1_kw": round(float(cap[k]) / 1e3, 1),
        "utilization": _round(_ratio(float(pred.zone_peak_w[k]), float(cap[k])), 4),
        "peak_deficit_kw": round(float(pred.zone_deficit_w[k]) / 1e3, 1),
        "deficit_limit_kw": round(float(dmax[k]) / 1e3, 1),
        "deficit_utilization": _round(_ratio(float(pred.zone_deficit_w[k]), float(dmax[k])), 4),
    } for k, z in enumerate(topo.zone_id)]


def _caps(topo: Topology, final: np.ndarray, on: np.ndarray) -> dict[str, Any]:
    gpu = on & (topo.server_gpus > 0)
    capped = gpu & (final < topo.server_gpu_max_w - 1e-9)
    out: dict[str, Any] = {
        "servers_capped": int(capped.sum()),
        "servers_uncapped": int((gpu & ~capped).sum()),
        "gpus_capped": int(topo.server_gpus[capped].sum()),
    }
    if gpu.any():
        out.update(min_w=float(final[gpu].min()), max_w=float(final[gpu].max()),
                   mean_w=round(float(np.average(final[gpu], weights=topo.server_gpus[gpu])), 1))
        by_prio: dict[str, Any] = {}
        for p in np.unique(topo.server_priority[gpu])[::-1]:
            sel = gpu & (topo.server_priority == p)
            by_prio[str(int(p))] = {"servers": int(sel.sum()),
                                    "min_w": float(final[sel].min()),
                                    "max_w": float(final[sel].max())}
        out["by_priority"] = by_prio
    return out


def _worst(pred: Prediction, n: int) -> list[Any]:
    def severity(v: Any) -> float:
        return -(v.peak / v.limit) if v.limit else -math.inf

    return sorted(pred.violations, key=severity)[:n]


def _ratio(a: float, b: float) -> float:
    if not (math.isfinite(a) and math.isfinite(b)) or b <= 0:
        return math.nan if b <= 0 and a <= 0 else math.inf
    return a / b


def _round(x: float, nd: int = 2) -> float:
    return round(x, nd) if math.isfinite(x) else x


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------
def format_report(r: dict[str, Any]) -> str:
    """The human-readable report of ``rampguard plan``."""
    lines = [
        f"{r.get('config', r['hall'])}: {r['strategy']} plan for {r['hall']} "
        f"({r['servers']:,} of {r['servers_total']:,} servers brought up)",
        "",
        "stages",
        f"  {'#':>3}  {'from':>9} {'to':>9}  {'what':<10}{'servers':>9}{'GPUs':>9}  caps (W/GPU)",
    ]
    for st in r["stages"][:40]:
        if st["kind"] == "switch-on":
            caps = _fmt_caps(st.get("first_cap_w"))
        else:
            caps = f"{_fmt_caps(st.get('cap_from_w'))} -> {_fmt_caps(st.get('cap_to_w'))}"
        lines.append(f"  {st['stage']:>3}  {_fmt_s(st['start_s']):>9} {_fmt_s(st['end_s']):>9}  "
                     f"{st['kind']:<10}{st['servers']:>9,}{st['gpus']:>9,}  {caps}")
    if len(r["stages"]) > 40:
        lines.append(f"  ... {len(r['stages']) - 40} more stages (see --json)")
    lb = r["lower_bound"]
    ratio = r["makespan_over_lower_bound"]
    lines += [
        "",
        f"time to full power (worst-case durations): {_fmt_s(r['makespan_s'])}; lower bound "
        f"{_fmt_s(r['lower_bound_s'])} ({lb['binding']}"
        + (f": {lb['where']}" if lb["where"] else "") + ")"
        + (f", {ratio:.3f}x the bound" if ratio is not None and math.isfinite(ratio) else ""),
        "  bound terms: " + ", ".join(f"{k} {_fmt_s(v)}" for k, v in lb["terms_s"].items()),
        "",
        "peak predicted utilization (load / continuous limit; normal and after a feed loss)",
        "  " + ", ".join(f"{k} {v:.1%}" for k, v in r["peak_predicted_utilization"].items()),
    ]
    ramp = [x for x in r["ramp"] if x["utilization"] is not None]
    if ramp:
        worst = ramp[0]
        lines.append(f"  ramp: worst {worst['node']} {worst['peak_rise_kw_per_window']:,.1f} kW "
                     f"within 1 s of {worst['limit_kw_per_window']:,.1f} kW "
                     f"({worst['utilization']:.1%})")
    cool = max(r["cooling"], key=lambda c: c["deficit_utilization"] or 0.0)
    heat = max(r["cooling"], key=lambda c: c["utilization"] or 0.0)
    lines.append(f"  cooling: worst zone heat {heat['zone']} {heat['utilization']:.1%} of N-1 "
                 f"capacity; worst cooling lag {cool['zone']} {cool['peak_deficit_kw']:,.0f} kW "
                 f"of {cool['deficit_limit_kw']:,.0f} kW")
    caps = r["caps"]
    lines += ["", "caps"]
    if caps.get("servers_capped"):
        lines.append(f"  {caps['servers_capped']:,} servers ({caps['gpus_capped']:,} GPUs) capped "
                     f"at {_fmt_caps([caps['min_w'], caps['max_w']])} W/GPU "
                     f"(mean {caps['mean_w']:g} W)")
        for p, c in caps.get("by_priority", {}).items():
            lines.append(f"    priority {p}: {c['servers']:,} servers at "
                         f"{_fmt_caps([c['min_w'], c['max_w']])} W/GPU")
    else:
        lines.append("  none: every server works at its GPUs' maximum")
    if r["servers_left_off"]:
        names = ", ".join(f"{x['server']} ({x['why']})" for x in r["left_off"][:5])
        lines.append(f"  {r['servers_left_off']:,} servers left off: {names}")
    lines += ["", "predicted violations: " + (
        "none" if r["ok"] else ", ".join(f"{k} {n}" for k, n in r["violation_counts"].items()))]
    for v in r["violations"][:10]:
        lines.append(f"  {v['rule']:<17}{v['node']:<16} {_fmt_value(v)}" + (
            f" at {_fmt_s(v['t_s'])}" if v["t_s"] is not None and math.isfinite(v["t_s"])
            else ""))
    if len(r["violations"]) > 10:
        lines.append(f"  ... {sum(r['violation_counts'].values()) - 10} more (see --json)")
    if len(r.get("comparison", [])) > 1:
        lines += ["", "strategies side by side (the same prediction for each)",
                  f"  {'strategy':<13}{'full power':>11}{'x bound':>9}  predicted violations"]
        for c in r["comparison"]:
            ratio = c["makespan_over_lower_bound"]
            v = ("none" if c["ok"] else
                 ", ".join(f"{k} {n}" for k, n in c["violation_counts"].items()))
            lines.append(f"  {c['strategy']:<13}{_fmt_s(c['makespan_s']):>11}"
                         f"{(f'{ratio:.3f}' if ratio is not None else '-'):>9}  {v}")
    lines += ["", f"planned in {r['plan_seconds'] * 1e3:,.0f} ms, predicted in "
              f"{r['predict_seconds'] * 1e3:,.0f} ms"]
    return "\n".join(lines)


def _fmt_value(v: dict[str, Any]) -> str:
    peak, limit, unit = v["peak"], v["limit"], v["unit"]
    if unit.startswith("W"):
        per = " within 1 s" if "window" in unit else ""
        return f"{peak / 1e3:,.1f} kW{per} against {limit / 1e3:,.1f} kW"
    if unit == "utilization":
        return f"{peak:.1%} of the continuous limit (allowed {limit:.0%})"
    if unit == "s":
        return f"{peak:.3f} s apart (guard {limit:g} s)"
    return f"{peak:.2f} x the magnetic threshold x margin"


def _fmt_s(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "never"
    return f"{x:,.1f} s"


def _fmt_caps(c: list[float] | None) -> str:
    if not c:
        return "-"
    return f"{c[0]:g}" if c[0] == c[1] else f"{c[0]:g}-{c[1]:g}"
