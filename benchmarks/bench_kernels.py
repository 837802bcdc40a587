"""Benchmark the numba kernels against their plain-Python references on a 32k-GPU hall.

    PYTHONPATH=. python benchmarks/bench_kernels.py [--servers N] [--seed S]
        [--config PATH] [--out benchmarks/results/kernels.json]

Times ``tree_current_a`` (PSU loads, tree aggregation, VA to A) and ``breaker_step`` through
their public, validating wrappers (``tree_current_a`` allocates its result, ``_into`` fills a
preallocated one), the same kernels called raw (no validation), and the plain-Python twins in
``kernels.reference``; also one control tick (tree current, breaker step, feed-loss currents,
worst-case headroom) through the wrappers and raw. Prints a table and writes medians and
speed-ups as JSON. The hall is synthetic (``synthetic_hall_arrays``) unless ``--config`` names a
hall config, which is then compiled by ``controller.topology.compile_hall``.

Every measurement is warmed up first, then repeated; medians are reported (shared machines are
noisy: compare ratios, not absolute times). ``time.perf_counter`` throughout.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import numpy as np

import kernels
from kernels import reference
from kernels.aggregate import _feed_loss_current_into, _tree_current_into
from kernels.breaker import _breaker_step
from kernels.headroom import _worst_case_headroom_into

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "kernels.json"

V_LN_V = 415.0 / math.sqrt(3.0)  # 415 V three-phase, 240 V line to neutral
SERVERS_PER_RACK = 16
PSUS_PER_SERVER = 6  # 3 on feed A, 3 on feed B, one per phase on each
BRANCHES_PER_FLOOR_PDU = 32
BANKS_PER_RACK_PDU = 2


def synthetic_hall_arrays(n_servers: int = 4096, seed: int = 0) -> dict[str, Any]:
    """Flat arrays of a synthetic A/B-fed GPU hall, in the topology compiler's conventions.

    Per feed: source → UPS → floor PDUs → branch breakers (one per rack) → rack PDU inlet →
    2 bank breakers → 24 outlets each. A rack holds 16 servers; each server has 6 PSUs, 3 on the
    rack's A PDU and 3 on its B PDU, one per phase, plugged line to neutral. With 4,096 servers
    (32,768 GPUs at 8 per server): 2 sources, 2 UPS, 16 floor PDUs, 512 branches, 512 inlets,
    1,024 banks and 24,576 outlets, 26,644 nodes and 24,576 PSUs. Server power is random between
    1.5 and 4.5 kW at pf 0.95-0.99, which keeps every breaker below its limit.
    """
    rng = np.random.default_rng(seed)
    n_racks = -(-n_servers // SERVERS_PER_RACK)
    n_floor = -(-n_racks // BRANCHES_PER_FLOOR_PDU)
    outlets_per_bank = SERVERS_PER_RACK * (PSUS_PER_SERVER // 2) // BANKS_PER_RACK_PDU

    parent: list[int] = []
    node_feed: list[int] = []
    kind: list[str] = []

    def add(p: int, feed: int, k: str) -> int:
        parent.append(p)
        node_feed.append(feed)
        kind.append(k)
        return len(parent) - 1

    # level by level, so that parents come first
    source = [add(-1, f, "source") for f in (0, 1)]
    ups = [add(source[f], f, "ups") for f in (0, 1)]
    floor = [[add(ups[f], f, "floor_pdu") for _ in range(n_floor)] for f in (0, 1)]
    branch = [
        [add(floor[f][r // BRANCHES_PER_FLOOR_PDU], f, "branch") for r in range(n_racks)]
        for f in (0, 1)
    ]
    inlet = [[add(branch[f][r], f, "rack_pdu") for r in range(n_racks)] for f in (0, 1)]
    bank = [
        [[add(inlet[f][r], f, "bank") for _ in range(BANKS_PER_RACK_PDU)] for r in range(n_racks)]
        for f in (0, 1)
    ]
    outlet = [
        [
            [
                add(bank[f][r][b], f, "outlet")
                for b in range(BANKS_PER_RACK_PDU)
                for _ in range(outlets_per_bank)
            ]
            for r in range(n_racks)
        ]
        for f in (0, 1)
    ]
    n = len(parent)
    kinds = np.array(kind)

    psu_server, psu_node, psu_phase, psu_feed = [], [], [], []
    for s in range(n_servers):
        r, slot = divmod(s, SERVERS_PER_RACK)
        for f in (0, 1):
            for ph in range(3):
                psu_server.append(s)
                psu_node.append(outlet[f][r][3 * slot + ph])
                psu_phase.append(ph)
                psu_feed.append(f)

    rating_a = np.zeros((n, 3))
    trips: list[kernels.TripParams] = [kernels.NO_TRIP] * n
    per_kind = {
        "source": (40_000.0, kernels.NO_TRIP),
        "ups": (32_000.0, kernels.NO_TRIP),
        "floor_pdu": (2_500.0, kernels.electronic_params(4.0, "earliest", 6.0, 0.2, 12.0)),
        "branch": (63.0, kernels.mcb_params("C", 63.0)),
        "rack_pdu": (63.0, kernels.NO_TRIP),
        "bank": (32.0, kernels.mcb_params("C", 32.0)),
    }
    for i, k in enumerate(kind):
        if k == "outlet":
            continue
        rating_a[i] = per_kind[k][0]
        trips[i] = per_kind[k][1]
    outlet_nodes = np.array(psu_node)
    rating_a[outlet_nodes, np.array(psu_phase)] = 16.0

    return {
        "parent_idx": np.array(parent, np.int32),
        "node_feed": np.array(node_feed, np.int8),
        "node_kind": kinds,
        "v_ln_v": np.full(n, V_LN_V),
        "rating_a": rating_a,
        "limit_a": 0.8 * rating_a,
        "trip": kernels.trip_param_arrays(trips),
        "server_p_w": rng.uniform(1500.0, 4500.0, n_servers),
        "server_pf": rng.uniform(0.95, 0.99, n_servers),
        "psu_server": np.array(psu_server, np.int32),
        "psu_node": np.array(psu_node, np.int32),
        "psu_phase": np.array(psu_phase, np.int8),
        "psu_feed": np.array(psu_feed, np.int8),
        "psu_alive": np.ones(len(psu_server), bool),
    }


def config_hall_arrays(path: str) -> dict[str, Any]:
    """Arrays of a real hall config, compiled by the controller's topology compiler."""
    try:
        from controller.config import load_hall_config
        from controller.topology import compile_hall
    except ImportError as exc:
        raise SystemExit(
            f"--config needs controller.config and controller.topology: {exc}"
        ) from exc
    hall = compile_hall(load_hall_config(path), source=path)

    def get(obj: Any, name: str) -> Any:
        if isinstance(obj, dict):
            return obj.get(name)
        return getattr(obj, name, None)

    names = [
        "parent_idx", "node_feed", "v_ln_v", "rating_a", "limit_a", "server_pf",
        "psu_server", "psu_node", "psu_phase", "psu_feed",
    ]  # fmt: skip
    found = {name: get(hall, name) for name in names}
    # servers at full power: the compiled hall gives the maximum input power per server
    found["server_p_w"] = next(
        (v for v in (get(hall, k) for k in ("server_p_w", "server_max_w")) if v is not None), None
    )
    # breakers as the controller assumes them (earliest trip), else as configured
    trip = get(hall, "trip_guard")
    if trip is None:
        trip = get(hall, "trip")
    if trip is None:
        trip = hall
    for field in kernels.TripParams._fields:
        found[field] = get(trip, field)
    missing = [name for name, value in found.items() if value is None]
    if missing:
        raise SystemExit(f"the compiled hall has no {', '.join(missing)}")
    arrays = {name: found[name] for name in found if name not in kernels.TripParams._fields}
    arrays["trip"] = kernels.TripParams(*(found[f] for f in kernels.TripParams._fields))
    arrays["psu_alive"] = np.ones(len(found["psu_server"]), bool)
    return arrays


def median_s(func: Callable[[], Any], runs: int, warmup: int = 1) -> tuple[float, int]:
    for _ in range(warmup):
        func()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), runs


def run(h: dict[str, Any], fast_runs: int, ref_runs: int) -> dict[str, dict[str, Any]]:
    n = h["parent_idx"].shape[0]
    psu = [h[k] for k in ("server_p_w", "server_pf", "psu_server", "psu_node", "psu_phase")]
    tree_args = (*psu, h["psu_alive"], h["parent_idx"], h["v_ln_v"])
    feed_args = (*psu, h["psu_feed"], h["psu_alive"], h["parent_idx"], h["v_ln_v"])
    trip = tuple(np.ascontiguousarray(a, dtype=np.float64) for a in h["trip"])
    rating_a = np.ascontiguousarray(h["rating_a"], dtype=np.float64)

    # correctness first: the kernels and the references agree on this hall
    i_a = kernels.tree_current_a(*tree_args)
    np.testing.assert_allclose(i_a, reference.tree_current_a(*tree_args), rtol=1e-9, atol=1e-9)

    dt_s = 0.1
    theta0 = np.minimum((i_a / np.where(rating_a > 0, rating_a, 1.0)) ** 2, 1.0)
    theta0[rating_a <= 0] = 0.0
    state = [theta0.copy(), np.zeros((n, 3)), np.zeros(n, bool), np.zeros(n, np.int8)]

    def step_wrapped() -> None:
        kernels.breaker_step(i_a, rating_a, *trip, dt_s, *state)

    def step_raw() -> None:
        _breaker_step(i_a, rating_a, *trip, dt_s, *state)

    def step_reference() -> None:
        reference.breaker_step(i_a, rating_a, *trip, dt_s, *state)

    want = reference.breaker_step(i_a, rating_a, *trip, dt_s, *state)
    check = [s.copy() for s in state]
    kernels.breaker_step(i_a, rating_a, *trip, dt_s, *check)
    np.testing.assert_allclose(check[0], want[0], rtol=1e-12)
    np.testing.assert_array_equal(check[2], want[2])

    # raw kernels take validated, typed arrays
    typed = (
        np.ascontiguousarray(h["server_p_w"], np.float64),
        np.ascontiguousarray(h["server_pf"], np.float64),
        np.ascontiguousarray(h["psu_server"], np.int32),
        np.ascontiguousarray(h["psu_node"], np.int32),
        np.ascontiguousarray(h["psu_phase"], np.int8),
    )
    alive = np.ascontiguousarray(h["psu_alive"], np.bool_)
    feed = np.ascontiguousarray(h["psu_feed"], np.int8)
    parent = np.ascontiguousarray(h["parent_idx"], np.int32)
    v = np.ascontiguousarray(h["v_ln_v"], np.float64)
    node_feed = np.ascontiguousarray(h["node_feed"], np.int8)
    limit_a = np.ascontiguousarray(h["limit_a"], np.float64)
    scratch_va = np.empty((n, 3))
    out_i_a = np.empty((n, 3))
    scratch_alive = np.empty(alive.shape[0], np.bool_)
    scen = np.empty((3, n, 3))
    worst = np.empty((n, 3))

    def tree_raw() -> None:
        _tree_current_into(*typed, alive, parent, v, scratch_va, out_i_a)

    def control_tick() -> None:
        """One control tick: tree current, breaker state, feed-loss worst-case headroom."""
        _tree_current_into(*typed, alive, parent, v, scratch_va, out_i_a)
        _breaker_step(out_i_a, rating_a, *trip, dt_s, *state)
        _feed_loss_current_into(*typed, feed, alive, parent, v, scratch_va, scratch_alive, scen)
        _worst_case_headroom_into(scen, node_feed, limit_a, worst)

    def control_tick_wrapped() -> None:
        kernels.tree_current_a_into(*tree_args, out_i_a)
        kernels.breaker_step(out_i_a, rating_a, *trip, dt_s, *state)
        kernels.feed_loss_current_a_into(*feed_args, scen)
        kernels.worst_case_headroom_a(scen, node_feed, limit_a)

    results: dict[str, dict[str, Any]] = {}
    ref_tree, ref_tree_runs = median_s(lambda: reference.tree_current_a(*tree_args), ref_runs)
    ref_step, ref_step_runs = median_s(step_reference, ref_runs)
    for name, func, ref, ref_n in [
        ("tree_current_a", lambda: kernels.tree_current_a(*tree_args), ref_tree, ref_tree_runs),
        (
            "tree_current_a_into",
            lambda: kernels.tree_current_a_into(*tree_args, out_i_a),
            ref_tree,
            ref_tree_runs,
        ),
        ("tree_current_a (raw kernel)", tree_raw, ref_tree, ref_tree_runs),
        ("breaker_step", step_wrapped, ref_step, ref_step_runs),
        ("breaker_step (raw kernel)", step_raw, ref_step, ref_step_runs),
        ("control tick (wrappers)", control_tick_wrapped, None, 0),
        ("control tick (raw kernels)", control_tick, None, 0),
    ]:
        fast, fast_n = median_s(func, fast_runs, warmup=3)
        entry: dict[str, Any] = {"numba_median_s": fast, "numba_runs": fast_n}
        if ref is not None:
            entry.update(reference_median_s=ref, reference_runs=ref_n, speedup=ref / fast)
        results[name] = entry
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=4096, help="synthetic hall size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", help="hall config to compile instead of the synthetic hall")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    parser.add_argument("--runs", type=int, default=101, help="timed runs per numba measurement")
    parser.add_argument("--ref-runs", type=int, default=5, help="timed runs per reference")
    args = parser.parse_args(argv)
    if args.runs < 5 or args.ref_runs < 1:
        parser.error("--runs must be at least 5 and --ref-runs at least 1")

    t0 = time.perf_counter()
    if args.config:
        h = config_hall_arrays(args.config)
        source = {"config": args.config}
    else:
        h = synthetic_hall_arrays(args.servers, args.seed)
        source = {"synthetic": {"servers": args.servers, "seed": args.seed}}
    hall = {
        "nodes": int(np.asarray(h["parent_idx"]).shape[0]),
        "servers": int(np.asarray(h["server_p_w"]).shape[0]),
        "psus": int(np.asarray(h["psu_server"]).shape[0]),
    }
    results = run(h, args.runs, args.ref_runs)

    print(
        f"hall: {hall['nodes']} nodes, {hall['servers']} servers, {hall['psus']} PSUs "
        f"({'config ' + args.config if args.config else 'synthetic'})"
    )
    print(f"{'measure':30} {'numba median':>14} {'reference median':>18} {'speed-up':>10}")
    for name, r in results.items():
        ref = f"{r['reference_median_s'] * 1e3:15.2f} ms" if "speedup" in r else f"{'-':>18}"
        ratio = f"{r['speedup']:9.0f}x" if "speedup" in r else f"{'-':>10}"
        print(f"{name:30} {r['numba_median_s'] * 1e6:11.1f} us {ref} {ratio}")

    payload = {
        "benchmark": "kernels",
        "command": " ".join(
            ["PYTHONPATH=. python benchmarks/bench_kernels.py", *(argv or sys.argv[1:])]
        ),
        "hall": hall,
        "source": source,
        "results": results,
        "environment": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "numba": numba.__version__,
            "machine": platform.machine(),
            "processor": platform.processor(),
        },
        "wall_s": time.perf_counter() - t0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
