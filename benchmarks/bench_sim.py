"""Benchmark the simulated plant on the 32k hall at 0.1 s steps: how many times faster than
real time does it run?

    PYTHONPATH=. python benchmarks/bench_sim.py [--config configs/hall-32k.toml] [--runs 3]
        [--dt-s 0.1] [--out benchmarks/results/sim.json]

Workloads (each on a fresh :class:`sim.Plant`, compiled hall shared, kernels warm):

- ``bring-up all-at-once``: every outlet at t = 0, 900 s of virtual time (the whole hall
  starts, POSTs, boots and loads within it, then runs steady); the busiest case per step;
- ``bring-up fixed-rate``: Slurm-like 300 servers/min, 1,500 s (a burst every 10 s);
- ``steady``: 600 s at full power after an all-at-once bring-up (nothing but the thermal
  zones, GPU temperatures, meters and checks);
- ``closed-loop tick``: the all-at-once bring-up with an :meth:`~sim.Plant.observe` every
  second, as a controller would take;
- ``register refresh`` (``--refresh-rounds``, 0 skips it): what ``rampguard sim serve`` does
  once a second for its Modbus endpoints, on the hall at full power: every device's registers
  refreshed one snapshot at a time (``PlantView.snapshot``) and from arrays
  (``PlantView.arrays``), the two alternating, one plant second apart, each timed in CPU
  (``time.process_time``; the plant's read-out, shared by both, is taken before the clock
  starts). Reported: both medians, the median of the per-round ratios, and the devices whose
  registers differed between the two (must be 0).

Each workload is run ``--runs`` times; the median wall time is reported with µs per step and the
real-time factor (virtual seconds per wall second; DESIGN.md asks for 500× or better). Times are
``time.perf_counter``; machines are noisy, compare ratios.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numba
import numpy as np

from controller.config import load_hall_config
from controller.model import HallConfig
from controller.schedule import baseline
from controller.topology import Topology, compile_hall
from sim import Plant, SetGpuCaps, SwitchOutlets

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "sim.json"


def _start(plant: Plant, topo: Topology, config: HallConfig, strategy: str) -> None:
    sch = baseline(topo, strategy, config.controller.fixed_delay_s,
                   config.controller.fixed_rate_per_min)
    plant.submit(SetGpuCaps(np.arange(topo.n_servers), sch.gpu_cap_w, t_s=0.0))
    on = sch.psu_on_s
    for t in np.unique(on[np.isfinite(on)]):
        plant.submit(SwitchOutlets(topo.psu_node[on == t], True, t_s=float(t)))


def _run(config: HallConfig, topo: Topology, workload: str, dt: float) -> dict[str, Any]:
    plant = Plant(config, topo, seed=0)
    if workload == "steady":
        _start(plant, topo, config, "all-at-once")
        plant.run_until(900.0, dt)
        span, observe = 600.0, False
    elif workload == "bring-up fixed-rate":
        _start(plant, topo, config, "fixed-rate")
        span, observe = 1500.0, False
    else:
        _start(plant, topo, config, "all-at-once")
        span, observe = 900.0, workload == "closed-loop tick"
    steps = round(span / dt)
    every = max(1, round(1.0 / dt))
    start = time.perf_counter()
    for k in range(steps):
        plant.step(dt)
        if observe and k % every == 0:
            plant.observe()
    wall = time.perf_counter() - start
    return {"wall_s": wall, "steps": steps, "virtual_s": span,
            "working_servers": plant.working_servers(), "trips": len(plant.trips),
            "violations": len(plant.violations)}


def _refresh(config: HallConfig, topo: Topology, rounds: int) -> dict[str, Any]:
    from controller.bindings import resolve_bindings
    from sim.endpoints import ModbusEndpoints
    from sim.hil import PlantView

    plant = Plant(config, topo, seed=0)
    _start(plant, topo, config, "all-at-once")
    plant.run_until(600.0, 0.1)
    view = PlantView(plant)
    devices = resolve_bindings(config, topo).modbus
    one = ModbusEndpoints(devices, view.snapshot, view.write, refresh_period_s=None,
                          clock=lambda: 1.0)
    many = ModbusEndpoints(devices, view.snapshot, view.write, refresh_period_s=None,
                           clock=lambda: 1.0, arrays=view.arrays)
    one_s: list[float] = []
    many_s: list[float] = []
    differ = 0
    for k in range(rounds):
        plant.run_until(plant.t_s + 1.0, 0.1)
        view._read()
        pairs = ((one, one_s), (many, many_s)) if k % 2 == 0 else ((many, many_s), (one, one_s))
        for ep, spent in pairs:
            t0 = time.process_time()
            ep.refresh()
            spent.append(time.process_time() - t0)
        differ += sum(
            (a.image.inputs, a.image.coils, a.image.discrete_inputs, a.image.silent,
             a.image.exception) != (b.image.inputs, b.image.coils, b.image.discrete_inputs,
                                    b.image.silent, b.image.exception)
            for a, b in zip(one._devices, many._devices, strict=True))
    return {"workload": "register refresh", "devices": len(one._devices), "rounds": rounds,
            "snapshot_cpu_s_median": round(statistics.median(one_s), 4),
            "arrays_cpu_s_median": round(statistics.median(many_s), 4),
            "ratio_median": round(statistics.median(m / o for m, o in zip(many_s, one_s,
                                                                          strict=True)), 3),
            "snapshot_cpu_s_runs": [round(x, 4) for x in one_s],
            "arrays_cpu_s_runs": [round(x, 4) for x in many_s],
            "array_fallbacks": many.stats.array_fallbacks, "devices_differing": differ}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "hall-32k.toml"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dt-s", type=float, default=0.1)
    parser.add_argument("--refresh-rounds", type=int, default=7,
                        help="rounds of the register refresh comparison (0: skip it)")
    parser.add_argument("--only-refresh", action="store_true",
                        help="run the register refresh comparison alone")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)
    config = load_hall_config(args.config)
    t0 = time.perf_counter()
    topo = compile_hall(config, source=args.config)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    Plant(config, topo).step(args.dt_s)  # warm-up: kernels loaded from numba's cache
    init_s = time.perf_counter() - t0
    results = []
    print(f"{topo.name}: {topo.n_nodes:,} nodes, {topo.n_servers:,} servers, "
          f"{topo.n_psus:,} PSUs; dt {args.dt_s} s; {args.runs} runs each")
    print(f"{'workload':<22} {'median wall s':>14} {'µs/step':>9} {'× real time':>12}")
    for workload in (() if args.only_refresh else (
            "bring-up all-at-once", "bring-up fixed-rate", "steady", "closed-loop tick")):
        runs = [_run(config, topo, workload, args.dt_s) for _ in range(args.runs)]
        walls = [r["wall_s"] for r in runs]
        median = statistics.median(walls)
        steps = runs[0]["steps"]
        entry = {
            "workload": workload, "virtual_s": runs[0]["virtual_s"], "steps": steps,
            "wall_s_median": round(median, 4), "wall_s_runs": [round(w, 4) for w in walls],
            "us_per_step_median": round(median / steps * 1e6, 1),
            "real_time_factor_median": round(runs[0]["virtual_s"] / median, 1),
            "working_servers_at_end": runs[0]["working_servers"],
            "trips": runs[0]["trips"], "violations": runs[0]["violations"],
        }
        results.append(entry)
        print(f"{workload:<22} {median:>14.3f} {entry['us_per_step_median']:>9.1f} "
              f"{entry['real_time_factor_median']:>11.0f}×")
    if args.refresh_rounds > 0:
        entry = _refresh(config, topo, args.refresh_rounds)
        results.append(entry)
        print(f"register refresh of {entry['devices']:,} devices, CPU median of "
              f"{entry['rounds']}: one snapshot at a time {entry['snapshot_cpu_s_median']:.4f} s,"
              f" from arrays {entry['arrays_cpu_s_median']:.4f} s (ratio "
              f"{entry['ratio_median']:.3f}); devices differing: {entry['devices_differing']}")
    out = {
        "benchmark": "simulator",
        "command": "PYTHONPATH=. python benchmarks/bench_sim.py " + " ".join(argv or sys.argv[1:]),
        "config": args.config, "hall": topo.name, "nodes": topo.n_nodes,
        "servers": topo.n_servers, "psus": topo.n_psus, "dt_s": args.dt_s, "runs": args.runs,
        "compile_s": round(compile_s, 3), "plant_init_s": round(init_s, 3),
        "target_real_time_factor": 500.0, "results": results,
        "machine": {"python": platform.python_version(), "numpy": np.__version__,
                    "numba": numba.__version__, "processor": platform.processor() or
                    platform.machine()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
