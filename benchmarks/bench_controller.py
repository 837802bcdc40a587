"""Benchmark of the decision core on a hall (default: the 32k hall), closed loop on the plant.

Measures, on one core, over ticks of a real bring-up against the simulated plant:

* ``tick``: one control tick as the staged dry run (and the service) does it: ingest of a full
  observation into the telemetry store, ``refresh``, read-backs, :func:`controller.core.decide`
  (median / p99 over the ticks mid-ramp and in steady state);
* ``decide``: ``decide`` alone on a frozen steady-state input, repeated;
* ``reaction``: at steady state every GPU cap is raised behind the controller's back (to the
  GPUs' maximum), then feed A is lost: the surviving side is over its limit. Counted: control
  periods from the overload until the core issues a ``SetCaps``, and the time until the plant's
  load at every node is back under its continuous limit, against the shed deadline the guard trip
  curve leaves at the peak overload.

* ``baseline`` (with ``--baseline DIR``, a checkout of another revision, e.g. ``git worktree
  add /tmp/main main``): at every steady tick (those of ``tick_steady``, whose figures stay this
  checkout's) the baseline's telemetry store and core run beside this checkout's on the same
  observation, read-backs and state, in alternating order; both are timed (ingest + refresh +
  decide) and their decisions compared bit for bit (actions, next state, ``worst_a``,
  ``measured_a``). Reported: both medians and the median of the per-tick ratios, which the machine's
  load affects far less than either median.

Writes JSON (default ``benchmarks/results/controller.json``). Usage::

    .venv/bin/python benchmarks/bench_controller.py [--config configs/hall-32k.toml]
        [--decide-repeats 200] [--out PATH] [--profile] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import importlib.util
import json
import math
import os
import platform
import pstats
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from controller import core
from controller.config import load_hall_config
from controller.staged import CoreStrategy
from controller.topology import compile_hall
from sim import Plant, SetGpuCaps
from sim.faults import FeedLoss

ROOT = Path(__file__).resolve().parents[1]


def _stats_ms(samples_s: list[float]) -> dict[str, float]:
    a = np.asarray(samples_s) * 1e3
    return {"n": int(a.size), "median_ms": round(float(np.median(a)), 3),
            "p99_ms": round(float(np.percentile(a, 99)), 3),
            "max_ms": round(float(a.max()), 3)}


class Loop:
    """The dry run's harness, reduced: plant steps of ``dt_s``, a controller tick every
    ``tick_s``, each tick's phases timed."""

    def __init__(self, config: Path, seed: int = 0, dt_s: float = 0.1) -> None:
        self.cfg = load_hall_config(config)
        self.topo = compile_hall(self.cfg)
        self.strat = CoreStrategy(self.cfg, self.topo, seed=seed)
        self.plant = Plant(self.cfg, self.topo, seed=seed)
        self.dt_s = dt_s
        self.tick_s = float(self.strat.tick_s or 1.0)
        self.next_tick = 0.0
        self.ticks: list[dict[str, Any]] = []

    def run_until(self, t_end_s: float, on_tick: Any = None) -> None:
        p, s = self.plant, self.strat
        while p.t_s < t_end_s - 1e-9:
            if p.t_s >= self.next_tick - 1e-9:
                p.process_due()
                obs = p.observe()
                t0 = time.perf_counter()
                s.now_s = p.t_s
                store = s._ingest(obs)
                t1 = time.perf_counter()
                rb = s._readbacks(obs)
                t2 = time.perf_counter()
                d = core.decide(s.ctx, store, rb, s.state, p.t_s)
                t3 = time.perf_counter()
                s.state, s.last = d.state, d
                actions = s._to_plant(d.actions, p.t_s)
                t4 = time.perf_counter()
                p.submit(actions)
                rec = {"t_s": p.t_s, "mode": d.state.mode.value, "ingest_s": t1 - t0,
                       "readbacks_s": t2 - t1, "decide_s": t3 - t2, "total_s": t4 - t0,
                       "set_caps": sum(isinstance(a, core.SetCaps) for a in d.actions)}
                self.ticks.append(rec)
                if on_tick is not None:
                    on_tick(rec, d)
                self.next_tick = p.t_s + self.tick_s
            p.step(self.dt_s)


def _load_as(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _same(a: Any, b: Any) -> bool:
    """Equal, arrays bit for bit (NaN equal to NaN), dataclasses field by field."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        if a.dtype.kind == "f":
            return bool(np.array_equal(a.view(np.uint8), b.view(np.uint8)))
        return bool(np.array_equal(a, b))
    if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b):
        return type(a).__name__ == type(b).__name__ and all(
            _same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b) or (isinstance(a, float) and isinstance(b, float)
                            and math.isnan(a) and math.isnan(b))


class Baseline:
    """Another revision's telemetry store and core (``--baseline DIR``), fed what this
    checkout's get, timed against them tick by tick."""

    def __init__(self, src: Path, loop: Loop) -> None:
        # the baseline's own kernels (their signatures may differ from this checkout's): its
        # kernels package is imported in place of this checkout's while its store and core
        # load, which keep it; this checkout's is put back after
        ours = {k: v for k, v in sys.modules.items() if k == "kernels" or k.startswith("kernels.")}
        for k in ours:
            del sys.modules[k]
        sys.path.insert(0, str(src))
        try:
            self.telemetry = _load_as("baseline_telemetry", src / "controller" / "telemetry.py")
            self.core = _load_as("baseline_core", src / "controller" / "core.py")
        finally:
            sys.path.remove(str(src))
            for k in [k for k in sys.modules if k == "kernels" or k.startswith("kernels.")]:
                del sys.modules[k]
            sys.modules.update(ours)
        s = loop.strat
        self.ctx = self.core.CoreContext(s.topo, s.settings, outlet_nodes=s.ctx.outlet_node,
                                         planner=s.ctx.planner)
        self.store: Any = None
        self.loop = loop
        self.samples: list[tuple[float, float]] = []   # (this checkout, baseline) s
        self.mismatches = 0

    def _ingest(self, obs: Any) -> Any:
        s = self.loop.strat
        if self.store is None:
            # a copy of this checkout's store as it is now, in the baseline's class
            self.store = self.telemetry.TelemetryStore(
                s.topo, s.settings, obs.meter_node, np.arange(s.topo.n_servers),
                clock=lambda: s.now_s)
            for k, v in vars(s.store).items():
                if k not in ("clock",):
                    setattr(self.store, k, v.copy() if hasattr(v, "copy") else v)
        # the strategy's own ingest, on the baseline's store
        mine, s.store = s.store, self.store
        try:
            return s._ingest(obs)
        finally:
            s.store = mine

    def tick(self, obs: Any, t_s: float) -> None:
        """One steady tick of both, in alternating order; this checkout's result is kept."""
        s = self.loop.strat
        state = s.state
        s.now_s = t_s

        def ours() -> tuple[Any, float]:
            t0 = time.perf_counter()
            store = s._ingest(obs)
            t1 = time.perf_counter()
            rb = s._readbacks(obs)
            t2 = time.perf_counter()
            d = core.decide(s.ctx, store, rb, state, t_s)
            t3 = time.perf_counter()
            rec.update(ingest_s=t1 - t0, readbacks_s=t2 - t1, decide_s=t3 - t2,
                       total_s=t3 - t0)
            return d, t3 - t0

        def theirs() -> tuple[Any, float]:
            t0 = time.perf_counter()
            store = self._ingest(obs)
            d = self.core.decide(self.ctx, store, s._readbacks(obs), state, t_s)
            return d, time.perf_counter() - t0

        rec: dict[str, Any] = {"t_s": t_s}
        if len(self.samples) % 2:
            (d, t_ours), (d_base, t_base) = ours(), theirs()
        else:
            (d_base, t_base), (d, t_ours) = theirs(), ours()
        self.samples.append((t_ours, t_base))
        rec.update(mode=d.state.mode.value,
                   set_caps=sum(isinstance(a, core.SetCaps) for a in d.actions))
        self.loop.ticks.append(rec)
        if not (_same(list(d.actions), list(d_base.actions)) and _same(d.state, d_base.state)
                and _same(d.worst_a, d_base.worst_a)
                and _same(d.measured_a, d_base.measured_a)):
            self.mismatches += 1
        s.state, s.last = d.state, d
        self.loop.plant.submit(s._to_plant(d.actions, t_s))

    def run(self, t_end_s: float) -> dict[str, Any]:
        """The loop's steps until ``t_end_s`` (as :meth:`Loop.run_until`), each tick by
        :meth:`tick`."""
        loop, p = self.loop, self.loop.plant
        while p.t_s < t_end_s - 1e-9:
            if p.t_s >= loop.next_tick - 1e-9:
                p.process_due()
                self.tick(p.observe(), p.t_s)
                loop.next_tick = p.t_s + loop.tick_s
            p.step(loop.dt_s)
        a = np.asarray(self.samples)
        return {"ticks": int(a.shape[0]),
                "tick_median_ms": round(float(np.median(a[:, 0])) * 1e3, 3),
                "baseline_tick_median_ms": round(float(np.median(a[:, 1])) * 1e3, 3),
                "ratio_median": round(float(np.median(a[:, 0] / a[:, 1])), 3),
                "decisions_differ": self.mismatches}


def _phase_stats(ticks: list[dict[str, Any]]) -> dict[str, Any]:
    return {k: _stats_ms([r[f"{k}_s"] for r in ticks])
            for k in ("total", "ingest", "readbacks", "decide")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "hall-32k.toml"))
    ap.add_argument("--decide-repeats", type=int, default=200)
    ap.add_argument("--steady-ticks", type=int, default=120)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "controller.json"))
    ap.add_argument("--profile", action="store_true", help="print a cProfile of steady ticks")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="a checkout of another revision to time against, tick by tick")
    args = ap.parse_args()

    load0 = os.getloadavg()[0]
    loop = Loop(Path(args.config))
    wall0 = time.perf_counter()
    # the bring-up: until the core is STEADY (ticks before and after are kept apart)
    while loop.strat.state.mode != core.Mode.STEADY and loop.plant.t_s < 6 * 3600:
        loop.run_until(loop.plant.t_s + 10.0)
    ramp_ticks = [r for r in loop.ticks[3:] if r["mode"] in ("RAMPING", "HOLDING")]
    t_steady = loop.plant.t_s
    n_before = len(loop.ticks)
    # let the last servers settle into work, then measure the steady state
    loop.run_until(t_steady + 30.0)
    n_settled = len(loop.ticks)
    prof = cProfile.Profile() if args.profile else None
    if prof:
        prof.enable()
    baseline = None
    if args.baseline is not None:   # the steady ticks, beside the baseline's
        baseline = Baseline(args.baseline.resolve(), loop).run(
            loop.plant.t_s + args.steady_ticks * loop.tick_s)
    else:
        loop.run_until(loop.plant.t_s + args.steady_ticks * loop.tick_s)
    if prof:
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
    steady_ticks = loop.ticks[n_settled:]

    # decide alone on a frozen steady-state input
    s = loop.strat
    assert s.store is not None
    obs = loop.plant.observe()
    store = s._ingest(obs)
    rb = s._readbacks(obs)
    state, now = s.state, loop.plant.t_s
    core.decide(s.ctx, store, rb, state, now)
    samples = []
    for _ in range(args.decide_repeats):
        t0 = time.perf_counter()
        core.decide(s.ctx, store, rb, state, now)
        samples.append(time.perf_counter() - t0)
    decide_stats = _stats_ms(samples)

    # overload to cap: caps raised behind the controller's back, then feed A lost
    topo = loop.topo
    plant = loop.plant
    plant.submit(SetGpuCaps(np.arange(topo.n_servers, dtype=np.int32),
                            np.asarray(topo.server_gpu_max_w, float), t_s=None))
    loop.run_until(plant.t_s + 10.0)
    t_loss = loop.next_tick - 0.5 * loop.tick_s   # between two ticks, as a real fault comes
    plant.schedule_fault(FeedLoss(kind="feed-loss", feed="A"), t_loss)
    events: dict[str, Any] = {"first_set_caps_tick": None, "over_nodes": 0,
                              "peak_util": 0.0, "back_under_s": None}
    reaction_ticks: list[dict[str, Any]] = []

    def watch(rec: dict[str, Any], d: core.Decision) -> None:
        if rec["t_s"] < t_loss:
            return
        reaction_ticks.append(rec)
        if events["first_set_caps_tick"] is None and rec["set_caps"]:
            events["first_set_caps_tick"] = len(reaction_ticks)
            events["first_set_caps_t_s"] = rec["t_s"]

    under_since = None
    deadline_s = math.inf
    t_end = t_loss + 300.0
    while plant.t_s < t_end:
        loop.run_until(plant.t_s + loop.dt_s, watch)
        if plant.t_s < t_loss:
            continue
        u = plant.node_utilization()
        over = u > 1.0 + 1e-9
        if over.any():
            peak_node = int(np.argmax(u))
            if u[peak_node] > events["peak_util"]:
                events["peak_util"] = round(float(u[peak_node]), 4)
                events["peak_node"] = topo.node_id[peak_node]
                deadline_s = core.shed_deadline_s(topo, peak_node, float(u[peak_node]))
            events["over_nodes"] = max(events["over_nodes"], int(over.sum()))
            under_since = None
        elif events["peak_util"] > 1.0 and under_since is None:
            under_since = plant.t_s
            events["back_under_s"] = round(under_since - t_loss, 2)
            break
    events["shed_deadline_s"] = None if not math.isfinite(deadline_s) else round(deadline_s, 1)
    events["trips"] = len(plant.trips)
    events["control_period_s"] = loop.tick_s

    result = {
        "config": str(args.config), "servers": topo.n_servers, "nodes": topo.n_nodes,
        "python": platform.python_version(), "machine": platform.machine(),
        "bring_up_virtual_s": round(t_steady, 1),
        "tick_mid_ramp": _phase_stats(ramp_ticks),
        "tick_steady": _phase_stats(steady_ticks),
        "decide_alone_steady": decide_stats,
        "reaction": events,
        **({"baseline": {"src": str(args.baseline), **baseline}} if baseline else {}),
        "target_tick_ms": 2.0,
        "load_average_1min": {"start": round(load0, 2), "end": round(os.getloadavg()[0], 2)},
        "wall_s": round(time.perf_counter() - wall0, 1),
        "ticks_measured": {"ramp": len(ramp_ticks), "steady": len(steady_ticks),
                           "bring_up_total": n_before},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
