"""Time loading and compiling the reference configs (median of several runs).

    python benchmarks/bench_compile.py [--runs N] [--out PATH]

Writes JSON (default benchmarks/results/compile.json) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from controller.config import load_hall_config
from controller.topology import compile_hall

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("rig", "demo-hall", "hall-32k")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks" / "results" / "compile.json")
    args = parser.parse_args()
    results = {}
    print(f"{'config':<12}{'nodes':>9}{'load ms':>10}{'compile ms':>12}")
    for name in CONFIGS:
        path = ROOT / "configs" / f"{name}.toml"
        load_s, compile_s = [], []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            config = load_hall_config(path)
            t1 = time.perf_counter()
            topo = compile_hall(config)
            t2 = time.perf_counter()
            load_s.append(t1 - t0)
            compile_s.append(t2 - t1)
        results[name] = {
            "nodes": topo.n_nodes, "servers": topo.n_servers,
            "load_median_s": statistics.median(load_s),
            "compile_median_s": statistics.median(compile_s), "runs": args.runs,
        }
        print(f"{name:<12}{topo.n_nodes:>9,}{results[name]['load_median_s'] * 1e3:>10.1f}"
              f"{results[name]['compile_median_s'] * 1e3:>12.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "compile", "results": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
