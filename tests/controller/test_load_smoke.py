"""The load benchmark's harness, briefly, on the demo hall: `rampguard sim serve` and
`rampguard run` as processes over the test broker and loopback Modbus, the ramp started through
the token-protected operator API, the report's figures computed, then the simulator stopped
(``--freeze-sim-at-s``: the plant hangs) and the service gone SAFE. The targets (tick p99 within
the period, no memory growth) are the benchmark's business, never a timed test's: only that the
figures exist and hang together is checked here."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks" / "bench_load.py"


def _bench_module() -> Any:
    spec = importlib.util.spec_from_file_location("bench_load", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_load", module)    # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_statistics_of_the_report() -> None:
    bench = _bench_module()
    # a line through (0, 100), (60, 101), (120, 102) MB: 1 MB per minute
    assert bench.slope_per_min([0.0, 60.0, 120.0], [100.0, 101.0, 102.0]) == pytest.approx(1.0)
    assert bench.slope_per_min([0.0, 1.0], [1.0, 2.0]) is None
    ticks = bench.tick_summary([0.01] * 98 + [0.5, 2.0], period_s=1.0)
    assert ticks["n"] == 100 and ticks["median_ms"] == 10.0
    assert ticks["p99_ms"] == 500.0 and ticks["max_ms"] == 2000.0 and ticks["over_period"] == 1


@pytest.mark.timeout(300)
def test_load_harness_on_the_demo_hall(mqtt_broker: Any, tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    run = subprocess.run(
        [sys.executable, str(BENCH), "--config", str(ROOT / "configs" / "demo-hall.toml"),
         "--duration-s", "36", "--sample-s", "2", "--warmup-s", "5", "--mqtt",
         mqtt_broker.url, "--ready-timeout-s", "120", "--freeze-sim-at-s", "12",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=280, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "ramp started" in run.stderr
    report = json.loads(out.read_text())
    ticks = report["ticks"]
    assert ticks["count"] >= 1 and ticks["durations_captured"] >= 1
    summary = ticks["all"]
    assert summary["n"] == ticks["durations_captured"]
    assert 0 < summary["median_ms"] <= summary["p99_ms"] <= summary["max_ms"]
    # the phases of the ticks after the warm-up, each no longer than the ticks themselves
    phases = ticks["phases_after_warmup"]
    assert set(phases) == {"drain", "decide", "decide_cpu", "act"}
    for name, phase in phases.items():
        assert phase["n"] >= 1, name
        assert 0 <= phase["median_ms"] <= phase["max_ms"] <= ticks["after_warmup"]["max_ms"]
    memory = report["memory"]["service"]
    assert memory["samples"] >= 5
    assert memory["first_mb"] > 0 and memory["max_mb"] >= memory["last_mb"] > 0
    assert memory["slope_mb_per_min"] is not None
    assert report["memory"]["sim"]["samples"] >= 5
    cpu = report["cpu_percent_of_one_core"]
    assert cpu["service"] is not None and cpu["service"] > 0
    assert cpu["sim"] is not None and cpu["sim"] > 0
    assert report["machine"]["cpus"] >= 1 and len(report["machine"]["loadavg_start"]) == 3
    # the drivers' counters made it into the report: devices polled, telemetry taken
    assert report["readings"]["modbus"]["devices"] == 552
    assert report["readings"]["modbus"]["polls"] > 0
    assert report["readings"]["sim"]["steps"] > 0
    assert set(report["targets"]) == {"tick_p99_within_period", "memory_slope_limit_mb_per_min",
                                      "no_memory_growth"}
    assert report["stop"]["service"]["rc"] == 0 and not report["stop"]["service"]["killed"]
    # the plant hung from 12 s (SIGSTOP): its meters went stale and the service SAFE; the
    # simulator was let go on for its stop
    assert 12 <= report["sim_frozen_at_s"] < 20
    assert "simulator stopped (SIGSTOP)" in run.stdout and "plant hangs" in run.stderr
    assert report["mode_last"] == "SAFE", report["modes_seen"]
    assert report["stop"]["sim"]["rc"] == 0 and not report["stop"]["sim"]["killed"]


def test_the_simulator_throttle_stops_and_lets_go_of_a_process() -> None:
    """``--sim-run-share``: the process is stopped and let run in turn; ``--freeze-sim-at-s``
    alone (share 0): stopped for good; released at the end either way."""
    bench = _bench_module()

    def state(pid: int) -> str:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]

    child = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(0.001)"])
    try:
        throttle = bench.SimThrottle(child.pid, 0.0, 0.5, period_s=0.1)
        throttle.start()
        seen = set()
        for _ in range(400):
            seen.add(state(child.pid) == "T")
            if seen == {True, False}:
                break
            time.sleep(0.005)
        assert seen == {True, False}
        throttle.release()
        assert state(child.pid) != "T"
        frozen = bench.SimThrottle(child.pid, 0.0, 0.0)
        frozen.start()
        time.sleep(0.3)
        assert state(child.pid) == "T"
        frozen.release()
        assert state(child.pid) != "T"
    finally:
        child.kill()
        child.wait()
