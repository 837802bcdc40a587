"""The hardware-in-the-loop fault campaign: `rampguard run` against `rampguard sim serve` over
real loopback Modbus and a real broker, each fault injected mid-ramp, many seeds.

    python benchmarks/campaign_hil.py [--seeds N] [--only FAULT,...] [--kills K] [--speed X]
                                      [--out PATH] [--workdir DIR]

Faults (docs/campaign-hil.md): broker-restart, modbus-hang, meter-lying, sigkill, clock-jump,
disk-full. Each seed of each fault is one run on a fresh rig (its own ports, topics, audit log)
against one broker this runner starts itself (mosquitto, else amqtt), which broker-restart
kills and restarts. The procedures are tests/hil_harness.py's, the same the e2e tests run.

Progress on stderr, the summary on stdout, the JSON report in benchmarks/results/campaign-hil.json
(or --out). Exit status 1 when any run was unsafe (a trip, a limit past its shed deadline, a
double energization, an audit record lost) or missed its expected outcome.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import hil_harness as hil  # noqa: E402
from tests.conftest import BrokerProcess  # noqa: E402

FAULTS = ("broker-restart", "modbus-hang", "meter-lying", "sigkill", "clock-jump", "disk-full")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _one(fault: str, seed: int, workdir: Path, broker: BrokerProcess, args: Any
               ) -> hil.Outcome:
    url, speed = broker.broker.url, args.speed
    if fault == "broker-restart":
        return await hil.broker_restart(workdir, broker, seed, speed=speed)
    if fault == "modbus-hang":
        return await hil.modbus_hang(workdir, url, seed, speed=speed)
    if fault == "meter-lying":
        return await hil.meter_lying(workdir, url, seed, speed=speed)
    if fault == "sigkill":
        return await hil.sigkill(workdir, url, seed, kills=args.kills, speed=speed)
    if fault == "clock-jump":
        return await hil.clock_jump(workdir, url, seed, speed=speed)
    return await hil.disk_full(workdir, url, seed, speed=speed)


async def _campaign(args: Any, faults: list[str], workdir: Path) -> list[dict[str, Any]]:
    broker = BrokerProcess(workdir)
    broker.start()
    runs: list[dict[str, Any]] = []
    try:
        for fault in faults:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                _log(f"[{len(runs) + 1}/{len(faults) * args.seeds}] {fault} seed {seed} ...")
                if broker._proc is None:                 # a failed run left it down
                    broker.start()
                t0 = time.monotonic()
                try:
                    out = (await _one(fault, seed, workdir / f"{fault}-{seed}", broker,
                                      args)).to_dict()
                except Exception as exc:    # a run that broke is reported, not hidden
                    out = {"fault": fault, "seed": seed, "passed": False, "expected": False,
                           "injected": 0, "error": f"{type(exc).__name__}: {exc}"[:4000],
                           "verdict": None, "wall_s": round(time.monotonic() - t0, 1)}
                runs.append(out)
                v = out.get("verdict") or {}
                _log(f"    {'ok' if out['passed'] else 'FAILED'} in {out['wall_s']} s: "
                     f"{json.dumps(out.get('observed', out.get('error')))[:300]}"
                     f" trips={v.get('trips')} double={v.get('double_energizations')} "
                     f"lost={v.get('audit_records_lost')}")
    finally:
        broker.stop()
    return runs


def _totals(runs: list[dict[str, Any]]) -> dict[str, Any]:
    verdicts = [r["verdict"] for r in runs if r.get("verdict")]
    return {
        "runs": len(runs),
        "passed": sum(1 for r in runs if r["passed"]),
        "failed": sum(1 for r in runs if not r["passed"]),
        "errors": sum(1 for r in runs if "error" in r),
        "faults_injected": sum(r["injected"] for r in runs),
        "trips": sum(max(v["trips"], 0) + v["breakers_open"] for v in verdicts),
        "limit_s_beyond_shed_deadline": round(sum(v["limit_s_beyond_deadline"]
                                                  for v in verdicts), 3),
        "double_energizations": sum(v["double_energizations"] for v in verdicts),
        "audit_records_lost": sum(v["audit_records_lost"] for v in verdicts),
        "audit_corrupt_lines": sum(v["audit_corrupt"] for v in verdicts),
        "relay_writes": sum(v["writes"] for v in verdicts),
        "caps_applied": sum(v["caps_applied"] for v in verdicts),
        "audit_records": sum(v["audit_records"] for v in verdicts),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="runs per fault (default 3)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--only", default=",".join(FAULTS),
                        help=f"comma-separated faults (default all: {','.join(FAULTS)})")
    parser.add_argument("--kills", type=int, default=3,
                        help="SIGKILLs per sigkill run (default 3)")
    parser.add_argument("--speed", type=float, default=hil.SPEED,
                        help=f"plant seconds per wall second (default {hil.SPEED:g})")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results"
                        / "campaign-hil.json")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep every run's files here (default: a temporary directory)")
    args = parser.parse_args(argv)
    faults = [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown or args.seeds < 1 or args.kills < 1 or not 0 < args.speed <= 100:
        print(f"campaign_hil: bad arguments (unknown faults: {unknown or 'none'}; need "
              "--seeds >= 1, --kills >= 1, 0 < --speed <= 100)", file=sys.stderr)
        return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rampguard-hil-") as tmp:
        workdir = args.workdir or Path(tmp)
        runs = asyncio.run(_campaign(args, faults, workdir))
    totals = _totals(runs)
    report = {
        "command": "python benchmarks/campaign_hil.py " + " ".join(argv or sys.argv[1:]),
        "speed": args.speed, "seeds": args.seeds, "first_seed": args.first_seed,
        "kills_per_sigkill_run": args.kills, "faults": faults,
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "wall_s": round(time.monotonic() - started, 1),
        "totals": totals,
        "by_fault": {f: _totals([r for r in runs if r["fault"] == f]) for f in faults},
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, sort_keys=False) + "\n")
    print(f"HIL fault campaign: {totals['runs']} runs, {totals['passed']} passed, "
          f"{totals['faults_injected']} faults injected, {report['wall_s']} s")
    print(f"  trips {totals['trips']}, limit-seconds beyond the shed deadline "
          f"{totals['limit_s_beyond_shed_deadline']}, double energizations "
          f"{totals['double_energizations']}, audit records lost {totals['audit_records_lost']}")
    for fault, t in report["by_fault"].items():
        print(f"  {fault:15s} {t['passed']}/{t['runs']} passed, {t['faults_injected']} injected")
    print(f"report: {args.out}")
    unsafe = (totals["trips"] or totals["limit_s_beyond_shed_deadline"]
              or totals["double_energizations"] or totals["audit_records_lost"])
    return 1 if unsafe or totals["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
