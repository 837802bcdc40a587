"""Benchmark the ramp planner on the demo hall, the 32k hall and a generated 262,144-GPU site.

    PYTHONPATH=. python benchmarks/bench_planner.py [--runs 21] [--ref-halls demo-hall,hall-32k]
        [--skip-site] [--out benchmarks/results/planner.json]

For each hall: the staged plan's time (allocation + scheduler + schedule + lower bound, with the
per-hall context built once, as a re-plan sees it; median after warm-up), the time of the
planner's two kernels against their plain-Python twins in ``kernels.reference_planner`` on the
same inputs (one run of the reference: it is slow), and for the staged plan and every baseline:
the time to full power against the lower bound, the predicted violations and the prediction's
time. The kernels run on one core (``NUMBA_NUM_THREADS=1``; they are not parallel anyway).

The 262,144-GPU site is the 32k hall eight times over (``site_config``): eight blocks, each
with its own two utility sources, 2 × 16 UPSs, 2 × 64 floor PDUs and 1,024 racks in 8 cooling
zones. Times are noisy on shared machines: compare medians and ratios.
"""

from __future__ import annotations

import os

os.environ.setdefault("NUMBA_NUM_THREADS", "1")  # before numba loads: one core

import argparse
import copy
import json
import platform
import statistics
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import numpy as np

from controller.config import load_hall_config, validate_hall_dict
from controller.planner import (
    STRATEGIES,
    PlannerContext,
    PlannerSettings,
    PlanState,
    allocation_arguments,
    plan,
    staged_kernel_arguments,
)
from controller.prediction import predict
from controller.topology import Topology, compile_hall
from kernels import caps, planner, reference_planner

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "planner.json"
BLOCKS = 8


def site_config(blocks: int = BLOCKS) -> dict[str, Any]:
    """The 32k hall repeated ``blocks`` times as one site (a config dict)."""
    with (ROOT / "configs" / "hall-32k.toml").open("rb") as fh:
        base = tomllib.load(fh)
    out = copy.deepcopy(base)
    out["hall"] = {"name": f"site-{blocks * 32_768 // 1000}k",
                   "description": f"{blocks} blocks of the 32k hall"}
    out["nodes"], out["racks"], out["zones"] = [], [], []
    out.pop("bindings", None)

    def pre(b: int, ident: str) -> str:
        return f"B{b}-{ident}"

    for b in range(1, blocks + 1):
        for node in base["nodes"]:
            n = copy.deepcopy(node)
            n["id"] = pre(b, n["id"])
            if isinstance(n.get("parent"), str):
                n["parent"] = pre(b, n["parent"])
            elif isinstance(n.get("parent"), dict):
                n["parent"] = dict(n["parent"], pattern=pre(b, n["parent"]["pattern"]))
            out["nodes"].append(n)
        for rack in base["racks"]:
            r = copy.deepcopy(rack)
            r["id"] = pre(b, r["id"])
            r["zone"] = pre(b, r["zone"])
            r["parents"] = {slot: dict(p, pattern=pre(b, p["pattern"]))
                            for slot, p in r["parents"].items()}
            out["racks"].append(r)
        for zone in base["zones"]:
            out["zones"].append(dict(zone, id=pre(b, zone["id"])))
    return out


def median_s(func: Callable[[], object], runs: int, warmup: int = 2) -> tuple[float, int]:
    for _ in range(warmup):
        func()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        func()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples), runs


def bench_hall(name: str, topo: Topology, settings: PlannerSettings, runs: int,
               reference: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    ctx = PlannerContext(topo, settings)
    context_s = time.perf_counter() - t0
    out: dict[str, Any] = {
        "hall": {"name": name, "nodes": topo.n_nodes, "servers": topo.n_servers,
                 "psus": topo.n_psus, "gpus": topo.n_gpus},
        "context_seconds": context_s,
    }
    staged_runs = max(5, runs if topo.n_servers <= 8192 else runs // 3)
    plan_s, n = median_s(lambda: plan(topo, "staged", context=ctx), staged_runs)
    result = plan(topo, "staged", context=ctx)
    out["staged_plan_median_s"] = plan_s
    out["staged_plan_runs"] = n
    out["staged_timings_s"] = {k: v for k, v in result.timings_s.items() if k != "horizon_s"}

    # the kernels alone against the plain-Python references, on identical inputs
    state = PlanState()
    alloc_args = allocation_arguments(ctx, state)
    cap_f, admitted = caps.allocate_caps(**alloc_args)
    staged_args = staged_kernel_arguments(ctx, state, cap_f, admitted)
    k_alloc, _ = median_s(lambda: caps.allocate_caps(**alloc_args), staged_runs)
    k_sched, _ = median_s(lambda: planner.plan_staged(**staged_args), staged_runs)
    kernels_entry: dict[str, Any] = {"allocate_caps_median_s": k_alloc,
                                     "plan_staged_median_s": k_sched}
    if reference:
        t0 = time.perf_counter()
        ref_caps = reference_planner.allocate_caps(**alloc_args)
        r_alloc = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref_plan = reference_planner.plan_staged(**staged_args)
        r_sched = time.perf_counter() - t0
        same = (np.array_equal(ref_caps[0], cap_f) and all(
            np.array_equal(a, b) for a, b in zip(ref_plan, planner.plan_staged(**staged_args),
                                                 strict=True)))
        kernels_entry.update(
            reference_allocate_caps_s=r_alloc, reference_plan_staged_s=r_sched,
            speedup_allocate_caps=r_alloc / k_alloc, speedup_plan_staged=r_sched / k_sched,
            speedup_planner=(r_alloc + r_sched) / (k_alloc + k_sched),
            reference_identical=bool(same),
        )
    out["kernels"] = kernels_entry

    strategies: dict[str, Any] = {}
    for strategy in STRATEGIES:
        res = result if strategy == "staged" else plan(topo, strategy, context=ctx)
        pred_s, _ = median_s(lambda res=res: predict(topo, res.schedule, anc=ctx.anc,
                                                     admission_margin=settings.admission_margin,
                                                     magnetic_margin=settings.magnetic_margin),
                             max(3, staged_runs // 3), warmup=1)
        pred = predict(topo, res.schedule, anc=ctx.anc,
                       admission_margin=settings.admission_margin,
                       magnetic_margin=settings.magnetic_margin)
        lb = res.lower_bound
        strategies[strategy] = {
            "makespan_s": res.makespan_s,
            "lower_bound_s": lb.total_s,
            "binding": lb.binding,
            "makespan_over_lower_bound": res.makespan_s / lb.total_s,
            "violations": pred.violation_counts(),
            "ok": not pred.violations,
            "servers_on": res.servers_on,
            "final_cap_w": {"min": float(res.schedule.final_cap_w().min()),
                            "max": float(res.schedule.final_cap_w().max())},
            "plan_seconds": res.plan_seconds,
            "predict_median_s": pred_s,
        }
    out["strategies"] = strategies
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21, help="timed runs per measurement")
    parser.add_argument("--ref-halls", default="demo-hall,hall-32k",
                        help="halls on which to time the plain-Python reference (slow)")
    parser.add_argument("--skip-site", action="store_true", help="skip the 262k-GPU site")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    ref_halls = {h for h in args.ref_halls.split(",") if h}
    results: dict[str, Any] = {}
    halls: list[tuple[str, Callable[[], Any]]] = [
        ("demo-hall", lambda: load_hall_config(ROOT / "configs" / "demo-hall.toml")),
        ("hall-32k", lambda: load_hall_config(ROOT / "configs" / "hall-32k.toml")),
    ]
    if not args.skip_site:
        halls.append((f"site-{BLOCKS * 32_768 // 1000}k",
                      lambda: validate_hall_dict(site_config())))
    for name, load in halls:
        t0 = time.perf_counter()
        config = load()
        topo = compile_hall(config, source=name)
        compile_s = time.perf_counter() - t0
        settings = PlannerSettings.from_controller(config.controller)
        entry = bench_hall(name, topo, settings, args.runs, reference=name in ref_halls)
        entry["load_and_compile_seconds"] = compile_s
        results[name] = entry
        k = entry["kernels"]
        print(f"{name}: {topo.n_gpus:,} GPUs, {topo.n_nodes:,} nodes, {topo.n_psus:,} PSUs")
        print(f"  staged plan median {entry['staged_plan_median_s'] * 1e3:8.1f} ms "
              f"(kernels: caps {k['allocate_caps_median_s'] * 1e3:.1f} ms, "
              f"schedule {k['plan_staged_median_s'] * 1e3:.1f} ms)")
        if "speedup_planner" in k:
            print(f"  reference: caps {k['reference_allocate_caps_s']:.2f} s, schedule "
                  f"{k['reference_plan_staged_s']:.2f} s -> speed-up "
                  f"{k['speedup_planner']:.0f}x (identical: {k['reference_identical']})")
        for strategy, s in entry["strategies"].items():
            v = ", ".join(f"{r} {n}" for r, n in s["violations"].items()) or "none"
            print(f"  {strategy:<12} full power {s['makespan_s']:8.1f} s = "
                  f"{s['makespan_over_lower_bound']:.3f} x bound {s['lower_bound_s']:.1f} s "
                  f"({s['binding']}); predicted violations: {v}")
    payload = {
        "benchmark": "planner",
        "command": " ".join(["PYTHONPATH=. python benchmarks/bench_planner.py",
                             *(argv if argv is not None else sys.argv[1:])]),
        "results": results,
        "environment": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "numba": numba.__version__,
            "numba_threads": numba.config.NUMBA_NUM_THREADS,
            "machine": platform.machine(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
        },
        "wall_s": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
