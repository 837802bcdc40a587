"""Time one audit-log append (``AuditLog.intent``) with and without fsync, and reopening a log.

    python benchmarks/bench_audit.py [--records N] [--dir DIR] [--out PATH]

An intent returns only after its fsync: this is the time the service's tick spends per action
(batch the targets of one tick into one action). ``--dir`` chooses the file system measured
(the default is the system's temporary directory). Writes JSON (default
benchmarks/results/audit.json) and prints the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from controller.audit import AuditLog

ROOT = Path(__file__).resolve().parents[1]
ACTION = {"type": "set_caps", "targets": [f"R{i:02d}-S{j}" for i in range(4) for j in range(8)],
          "cap_w": [561.0] * 32}
REASON = {"rule": "shed", "node": "UPS-A", "measured_a": 412.3, "predicted_a": 398.0,
          "limit_a": 400.0}


def _time_appends(path: Path, records: int, fsync: bool) -> list[float]:
    out = []
    with AuditLog.open(path, fsync=fsync) as audit:
        for _ in range(records):
            t0 = time.perf_counter()
            audit.intent(ACTION, REASON)
            out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "audit.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        log = Path(tmp) / "audit.jsonl"
        with_fsync = _time_appends(log, args.records, fsync=True)
        without = _time_appends(Path(tmp) / "nofsync.jsonl", args.records, fsync=False)
        size_bytes = log.stat().st_size
        reopen_s = []
        for _ in range(5):
            t0 = time.perf_counter()
            AuditLog.open(log, record_open=False).close()
            reopen_s.append(time.perf_counter() - t0)
    results = {
        "records": args.records,
        "record_bytes": round(size_bytes / (args.records + 1)),
        "intent_fsync_median_ms": statistics.median(with_fsync) * 1e3,
        "intent_fsync_p99_ms": sorted(with_fsync)[int(0.99 * len(with_fsync))] * 1e3,
        "intent_no_fsync_median_ms": statistics.median(without) * 1e3,
        "reopen_median_ms": statistics.median(reopen_s) * 1e3,
        "reopen_log_bytes": size_bytes,
    }
    for key, value in results.items():
        print(f"{key:<28}{value:>12.3f}" if isinstance(value, float) else f"{key:<28}{value:>12}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
