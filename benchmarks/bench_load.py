"""Load benchmark: the controller service on a whole hall, over the real broker and loopback Modbus.

    python benchmarks/bench_load.py [--config configs/hall-32k.toml] [--duration-s 600]
                                    [--sample-s 5] [--warmup-s 60] [--mqtt URL]
                                    [--port-offset N] [--no-ramp] [--profile [service|both]]
                                    [--freeze-sim-at-s T [--sim-run-share F]] [--out PATH]

Starts two processes as an operator would: ``rampguard sim serve CONFIG --mqtt URL`` (the
plant behind every Modbus meter and switched PDU of the config, and its simulated node agents
publishing telemetry once a second on the broker) and ``rampguard run CONFIG`` (the service:
every Modbus device polled once a second, the agents' telemetry taken over MQTT, a control tick
every ``tick_s``), the operator API and the metrics on free ports, the API behind a bearer token
read from a file. Once both print their ready lines it starts the ramp through the operator API
(``POST /ramp/start``) and, every ``--sample-s`` for ``--duration-s``, samples:

* the resident set (``VmRSS``) and CPU time (user + system) of the service, the simulator and the
  broker (every process named ``mosquitto``: shared with whoever else uses it), from ``/proc``;
* the service's ``GET /status``: mode, servers energized, the exact durations of its latest
  ticks (``tick_durations``, with their phases: ``drain``, ``decide`` as the loop waited for it,
  ``decide_cpu``, ``act``), the telemetry store's accepted and rejected counts, and the
  drivers' totals (Modbus polls ok / failed / overrun, MQTT messages received / accepted);
* its metrics: ``rampguard_stale_readings`` (readings stale or unknown now);
* the simulator's counter lines (``--stats-s``): its plant steps that overran, its lag, the
  telemetry messages it published.

The report (JSON, default ``benchmarks/results/load.json``) gives the tick durations (median,
p99, maximum, how many overran the period; all ticks, and after ``--warmup-s``), the memory of
each process (first, last, largest, and the slope in MB per minute by least squares over the
samples after the warm-up, and over the samples in steady state: every server energized), each
process's CPU as a share of one core over the measured span, the machine's load average, stale
and dropped readings, and the MQTT messages published against received. Progress goes to
stderr. ``targets`` says whether the tick p99 is within the tick period and the memory slope
after the warm-up is under ``MEMORY_SLOPE_LIMIT_MB_PER_MIN``.

``--freeze-sim-at-s T`` stops the simulator with SIGSTOP ``T`` seconds into the sampling and
lets it go on (SIGCONT) only to stop it at the end: the whole plant hangs, as a hall's gateways
and agents would behind a dead switch. Its Modbus connections stay open and answer nothing, so
every poll times out, and the agents fall silent: the service goes SAFE, and the run measures
what it costs in that state (CPU, memory over time, tick durations). With ``--sim-run-share F``
(0 < F < 1) the simulator is not stopped for good but runs F of every second from then on
(SIGCONT, SIGSTOP): a plant that keeps answering, late, and falls behind real time, as the
simulator itself does on a machine too small for the hall.

The config is copied with its Modbus ports moved by ``--port-offset`` (default: the first
multiple of 1,000 at which every port is free, 0 when the config's own are) and its agents' topic
prefix made unique to the run, so a run shares the broker with others without cross-talk on the
agents' topics. Needs Linux (``/proc``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
#: Memory slope (MB per minute, after the warm-up) under which a run shows no growth.
MEMORY_SLOPE_LIMIT_MB_PER_MIN = 0.5
_AGENT_PREFIX = re.compile(r'topic_prefix\s*=\s*"([^"{]*)\{server\}"')
_PORT = re.compile(r"\bport\s*=\s*(\d+)")
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def progress(message: str) -> None:
    print(f"[bench_load {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ============================================================================================
# The config of the run
# ============================================================================================
def modbus_ports(config: Path) -> list[int]:
    """Every TCP port the config's Modbus devices are dealt to."""
    from controller.bindings import resolve_bindings
    from controller.config import load_hall_config
    from controller.topology import compile_hall

    cfg = load_hall_config(config)
    return sorted({d.port for d in resolve_bindings(cfg, compile_hall(cfg)).modbus})


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def choose_offset(ports: Sequence[int], requested: int | None) -> int:
    """``requested``, or the first offset (0, 1000, 2000, ...) at which every port is free."""
    candidates = [requested] if requested is not None else range(0, 40_000, 1000)
    for offset in candidates:
        moved = [p + offset for p in ports]
        if max(moved) <= 65535 and all(port_free(p) for p in moved):
            return offset
    raise SystemExit(f"bench_load: the config's Modbus ports {ports[0]}-{ports[-1]} are busy "
                     f"at offset {requested if requested is not None else '0-39000'}; "
                     "pass a free --port-offset")


def run_config(config: Path, workdir: Path, offset: int, prefix: str) -> Path:
    """A copy of ``config`` whose Modbus ports are moved by ``offset`` and whose agents
    publish under ``prefix/{server}``."""
    text = config.read_text(encoding="utf-8")
    text = _PORT.sub(lambda m: f"port = {int(m.group(1)) + offset}", text)
    text, n = _AGENT_PREFIX.subn(f'topic_prefix = "{prefix}/{{server}}"', text)
    if n == 0:
        progress("note: the config has no agents' topic_prefix to make unique")
    path = workdir / config.name
    path.write_text(text, encoding="utf-8")
    return path


# ============================================================================================
# Processes
# ============================================================================================
@dataclass
class Proc:
    """A ``rampguard`` subprocess whose stdout JSON lines are collected by a thread."""

    name: str
    popen: subprocess.Popen[str]
    lines: list[dict[str, Any]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read(self, stream: IO[str]) -> None:
        for raw in stream:
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if isinstance(line, dict):
                with self.cond:
                    self.lines.append(line)
                    self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_line(self, pred: Callable[[dict[str, Any]], bool], timeout_s: float,
                  stderr_path: Path) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while True:
                for line in self.lines:
                    if pred(line):
                        return line
                if self.popen.poll() is not None:
                    raise SystemExit(f"bench_load: {self.name} exited "
                                     f"({self.popen.returncode}) before it was ready:\n"
                                     + _tail(stderr_path))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SystemExit(f"bench_load: {self.name} not ready within {timeout_s} "
                                     f"s:\n" + _tail(stderr_path))
                self.cond.wait(min(left, 1.0))

    def stop(self, timeout_s: float = 120.0) -> dict[str, Any]:
        """SIGTERM; how long it took to exit and its exit code (SIGKILL after
        ``timeout_s``)."""
        t0 = time.monotonic()
        killed = False
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
                killed = True
        if self.reader is not None:
            self.reader.join(10.0)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        return {"stopped_s": None if killed else round(time.monotonic() - t0, 2),
                "killed": killed, "rc": self.popen.returncode}


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def start(name: str, args: Sequence[str], stderr_path: Path, env: dict[str, str],
          profile: Path | None = None) -> Proc:
    """``rampguard ARGS`` (under cProfile, writing ``profile``, when given)."""
    prof = ["-m", "cProfile", "-o", str(profile)] if profile is not None else []
    with stderr_path.open("w") as err:
        popen = subprocess.Popen(
            [sys.executable, *prof, "-m", "controller.cli", *args], cwd=ROOT, env=env,
            text=True, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
    proc = Proc(name, popen)
    assert popen.stdout is not None
    proc.reader = threading.Thread(target=proc._read, args=(popen.stdout,), daemon=True,
                                   name=f"{name} stdout")
    proc.reader.start()
    return proc


# ============================================================================================
# /proc
# ============================================================================================
def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process (its threads included)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    except (OSError, ValueError, IndexError):
        return None


def pids_named(name: str) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() == name:
                        out.append(int(entry))
            except OSError:
                continue
    return out


def machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return (total - idle) / _CLK_TCK, total / _CLK_TCK


def loadavg() -> list[float]:
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


# ============================================================================================
# HTTP
# ============================================================================================
def http(url: str, token: str, method: str = "GET", timeout_s: float = 15.0) -> bytes:
    req = urllib.request.Request(url, method=method,
                                 headers={"Authorization": f"Bearer {token}"},
                                 data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        return bytes(resp.read())


def metric_value(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{}"):
            try:
                return float(line.rsplit(" ", 1)[1])
            except ValueError:
                return None
    return None


# ============================================================================================
# Statistics
# ============================================================================================
def slope_per_min(t_s: Sequence[float], y: Sequence[float]) -> float | None:
    """Least-squares slope of ``y`` against ``t_s``, per minute (None under 3 points)."""
    if len(t_s) < 3:
        return None
    mt, my = statistics.fmean(t_s), statistics.fmean(y)
    sxx = sum((t - mt) ** 2 for t in t_s)
    if sxx == 0:
        return None
    return 60.0 * sum((t - mt) * (v - my) for t, v in zip(t_s, y, strict=True)) / sxx


def tick_summary(durations_s: Sequence[float], period_s: float) -> dict[str, Any]:
    if not durations_s:
        return {"n": 0, "median_ms": None, "p99_ms": None, "max_ms": None, "over_period": 0}
    ordered = sorted(durations_s)
    k = min(len(ordered) - 1, max(0, math.ceil(0.99 * len(ordered)) - 1))  # nearest rank
    return {"n": len(ordered), "median_ms": round(statistics.median(ordered) * 1e3, 2),
            "p99_ms": round(ordered[k] * 1e3, 2), "max_ms": round(ordered[-1] * 1e3, 2),
            "over_period": sum(d > period_s for d in ordered)}


def memory_summary(samples: Sequence[dict[str, Any]], key: str, t0_s: float,
                   steady_from_s: float | None) -> dict[str, Any]:
    pts = [(s["t_s"], s[key]) for s in samples if s.get(key) is not None]
    if not pts:
        return {"samples": 0}
    after = [(t, v) for t, v in pts if t >= t0_s]
    steady = [(t, v) for t, v in pts if steady_from_s is not None and t >= steady_from_s]

    def slope(points: list[tuple[float, float]]) -> float | None:
        s = slope_per_min([t for t, _ in points], [v for _, v in points])
        return None if s is None else round(s, 3)

    return {"samples": len(pts), "first_mb": round(pts[0][1], 1), "last_mb": round(pts[-1][1], 1),
            "max_mb": round(max(v for _, v in pts), 1),
            "after_warmup_first_mb": round(after[0][1], 1) if after else None,
            "slope_mb_per_min": slope(after),
            "steady_samples": len(steady), "steady_slope_mb_per_min": slope(steady)}


def cpu_share(samples: Sequence[dict[str, Any]], key: str, t0_s: float) -> float | None:
    """CPU of one process as % of one core between the first sample at or after ``t0_s`` and
    the last one."""
    pts = [(s["t_s"], s[key]) for s in samples if s.get(key) is not None and s["t_s"] >= t0_s]
    if len(pts) < 2 or pts[-1][0] <= pts[0][0]:
        return None
    return round(100.0 * (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0]), 1)


# ============================================================================================
# The run
# ============================================================================================
def run(config: Path, *, duration_s: float = 600.0, sample_s: float = 5.0,
        warmup_s: float = 60.0, mqtt_url: str = "mqtt://127.0.0.1:1883",
        port_offset: int | None = None, ramp: bool = True,
        ready_timeout_s: float = 600.0, workdir: Path | None = None,
        profile: str | None = None, freeze_sim_at_s: float | None = None,
        sim_run_share: float = 0.0) -> dict[str, Any]:
    """Run the benchmark (see the module docstring); returns the report. ``profile``
    ("service" or "both"): those processes run under cProfile and write ``service.prof`` (and
    ``sim.prof``) in the work directory when they stop (the figures are then not
    representative)."""
    tmp = Path(workdir or tempfile.mkdtemp(prefix="rampguard-load-"))
    tmp.mkdir(parents=True, exist_ok=True)
    offset = choose_offset(modbus_ports(config), port_offset)
    prefix = f"rampguard-load-{uuid.uuid4().hex[:8]}/agents"
    cfg = run_config(config, tmp, offset, prefix)
    from controller.config import load_hall_config

    tick_s = float(load_hall_config(cfg).controller.tick_s)
    token = secrets.token_urlsafe(24)
    token_file = tmp / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    # the project first; a PYTHONPATH of the caller's after it (a probe's sitecustomize)
    paths = (str(ROOT), os.environ.get("PYTHONPATH"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    env.pop("RAMPGUARD_API_TOKEN", None)
    progress(f"{config.name}: ports moved by {offset}, agents under {prefix}/, files in {tmp}")
    started = time.monotonic()
    sim = start("sim serve", ["sim", "serve", str(cfg), "--mqtt", mqtt_url, "--stats-s", "5"],
                tmp / "sim.err", env, tmp / "sim.prof" if profile == "both" else None)
    service: Proc | None = None
    throttle = (SimThrottle(sim.pid, freeze_sim_at_s, sim_run_share)
                if freeze_sim_at_s is not None else None)
    try:
        serving = sim.wait_line(lambda x: x.get("event") == "serving", ready_timeout_s,
                                tmp / "sim.err")
        progress(f"sim serve ready after {time.monotonic() - started:.1f} s: "
                 f"{serving.get('devices')} Modbus devices, {serving.get('agents')} agents")
        t_service = time.monotonic()
        service = start("rampguard run", [
            "run", str(cfg), "--mqtt", mqtt_url, "--http", "127.0.0.1:0",
            "--metrics", "127.0.0.1:0", "--audit", str(tmp / "audit.jsonl"),
            "--token-file", str(token_file), "--issuer", f"load-{prefix.split('-')[2][:8]}"],
            tmp / "service.err", env,
            tmp / "service.prof" if profile else None)
        ready = service.wait_line(lambda x: x.get("event") == "ready", ready_timeout_s,
                                  tmp / "service.err")
        service_ready_s = time.monotonic() - t_service
        progress(f"service ready after {service_ready_s:.1f} s: api {ready['api']}, "
                 f"metrics {ready['metrics']}")
        api = str(ready["api"]).rstrip("/")
        if ramp:
            answer = json.loads(http(f"{api}/ramp/start", token, "POST", timeout_s=60))
            progress(f"ramp started: {answer}")
        report = _sample(sim, service, api, ready.get("metrics"), token, duration_s=duration_s,
                         sample_s=sample_s, warmup_s=warmup_s, tick_s=tick_s,
                         service_log=tmp / "service.err", throttle=throttle)
        report["service_ready_s"] = round(service_ready_s, 1)
    finally:
        stops = {}
        if service is not None:
            stops["service"] = service.stop()
        if throttle is not None and sim.popen.poll() is None:
            throttle.release()                  # a stopped process cannot take SIGTERM
        stops["sim"] = sim.stop()
    report["stop"] = stops
    report["service_log"] = _log_counts(tmp / "service.err")
    report.update(config=str(config), port_offset=offset, agent_prefix=prefix, workdir=str(tmp),
                  mqtt=mqtt_url)
    return report


class SimThrottle:
    """The simulator stopped (SIGSTOP) from :meth:`start` on (the sampling calls it ``at_s``
    into the run): for good (``share`` 0), or let run ``share`` of every ``period_s`` (SIGCONT,
    then SIGSTOP again) by a thread."""

    def __init__(self, pid: int, at_s: float, share: float, period_s: float = 1.0) -> None:
        self.pid, self.at_s, self.share, self.period_s = pid, at_s, share, period_s
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def _signal(self, sig: signal.Signals) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            self._done.set()                # it exited: nothing left to throttle

    def start(self) -> None:
        self._signal(signal.SIGSTOP)
        if self.share > 0:
            self._thread = threading.Thread(target=self._run, daemon=True, name="sim throttle")
            self._thread.start()

    def _run(self) -> None:
        stopped_s = (1.0 - self.share) * self.period_s
        while not self._done.wait(stopped_s):
            self._signal(signal.SIGCONT)
            if self._done.wait(self.share * self.period_s):
                break
            self._signal(signal.SIGSTOP)

    def release(self) -> None:
        """Let it run again, for good."""
        self._done.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self._signal(signal.SIGCONT)


_TICK_LINE = re.compile(r"tick durations (\d+)-(\d+) \(ms\): ([\d. ]*)")


class TickLog:
    """The exact tick durations the service logs every ``TICK_LOG_EVERY`` ticks, read from its
    JSON log as it grows (they arrive even when its API is too busy to answer)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def read(self, into: dict[int, float]) -> None:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return
        end = data.rfind(b"\n") + 1
        self.offset += end
        for raw in data[:end].decode(errors="replace").splitlines():
            m = _TICK_LINE.search(raw)
            if m is None:
                continue
            first = int(m.group(1))
            for k, value in enumerate(m.group(3).split()):
                into[first + k] = float(value) / 1e3


def _sample(sim: Proc, service: Proc, api: str, metrics_url: str | None, token: str, *,
            duration_s: float, sample_s: float, warmup_s: float,
            tick_s: float, service_log: Path,
            throttle: SimThrottle | None = None) -> dict[str, Any]:
    ticks: dict[int, float] = {}
    phases: dict[str, dict[int, float]] = {}    # phase -> tick -> s (metrics.TICK_PHASES)
    tick_log = TickLog(service_log)
    samples: list[dict[str, Any]] = []
    failed_samples = 0
    broker = pids_named("mosquitto")
    t_start = time.monotonic()
    busy0, total0 = machine_cpu_s()
    load_start = loadavg()
    warm_tick_from: int | None = None
    steady_from_s: float | None = None
    status: dict[str, Any] = {}
    frozen_at_s: float | None = None
    next_s = t_start
    while True:
        now = time.monotonic() - t_start
        if throttle is not None and frozen_at_s is None and now >= throttle.at_s:
            throttle.start()
            frozen_at_s = round(now, 2)
            progress(f"t={now:5.0f} s simulator stopped (SIGSTOP): " + (
                "the plant hangs" if throttle.share == 0 else
                f"from now on it runs {throttle.share:.0%} of every second"))
        s: dict[str, Any] = {"t_s": round(now, 2),
                             "service_rss_mb": rss_mb(service.pid), "sim_rss_mb": rss_mb(sim.pid),
                             "service_cpu_s": cpu_s(service.pid), "sim_cpu_s": cpu_s(sim.pid),
                             "broker_cpu_s": sum(c for c in map(cpu_s, broker) if c is not None)
                             if broker else None, "loadavg_1m": loadavg()[0]}
        s["machine_busy_cpu_s"] = machine_cpu_s()[0] - busy0
        tick_log.read(ticks)
        if warm_tick_from is None and now >= warmup_s and ticks:
            warm_tick_from = max(ticks) + 1        # refined below by the status, if it answers
        try:
            status = json.loads(http(f"{api}/status", token))
            count = int(status["tick_durations"]["count"])
            recent = status["tick_durations"]["recent_s"]
            for k, d in enumerate(recent):
                ticks[count - len(recent) + k + 1] = float(d)
            for name, values in status["tick_durations"].get("phases_s", {}).items():
                for k, d in enumerate(values):
                    if d is not None:
                        phases.setdefault(name, {})[count - len(values) + k + 1] = float(d)
            if now >= warmup_s and (warm_tick_from is None or warm_tick_from > count + 1):
                warm_tick_from = count + 1
            s.update(mode=status["mode"], ticks=count, energized=status["energized_servers"],
                     outlets_on=status["outlets_on"], telemetry=status["telemetry"],
                     drivers=status.get("drivers", {}))
            if (steady_from_s is None and status["energized_servers"] == status["total_servers"]
                    and status["mode"] in ("STEADY", "IDLE")):
                steady_from_s = now
            if metrics_url:
                text = http(str(metrics_url), token).decode()
                s["stale_readings"] = metric_value(text, "rampguard_stale_readings")
        except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
            failed_samples += 1
            s["error"] = f"{type(exc).__name__}: {exc}"
        sim_stats = [x for x in sim.lines if x.get("event") == "stats"]
        if sim_stats:
            s["sim"] = {k: v for k, v in sim_stats[-1].items() if k != "event"}
        samples.append(s)
        if service.popen.poll() is not None or sim.popen.poll() is not None:
            progress("a process exited during the run: stopping the sampling")
            break
        if len(samples) % max(1, round(30 / sample_s)) == 1:
            last_ticks = [ticks[k] for k in sorted(ticks)[-60:]]
            progress(f"t={now:5.0f} s mode={s.get('mode')} energized={s.get('energized')} "
                     f"ticks={s.get('ticks')} last-60 max {max(last_ticks, default=0):.3f} s "
                     f"rss service {s['service_rss_mb'] or 0:.0f} MB sim "
                     f"{s['sim_rss_mb'] or 0:.0f} MB stale={s.get('stale_readings')} "
                     f"load {s['loadavg_1m']}")
        if now >= duration_s:
            break
        next_s += sample_s
        time.sleep(max(0.0, next_s - time.monotonic()))
    busy1, total1 = machine_cpu_s()
    elapsed = time.monotonic() - t_start
    tick_log.read(ticks)
    durations = [ticks[k] for k in sorted(ticks)]
    warm = [ticks[k] for k in sorted(ticks) if warm_tick_from is not None and k >= warm_tick_from]
    count = max(int(status.get("tick_durations", {}).get("count", 0)) if status else 0,
                max(ticks, default=0))
    t0 = warmup_s if elapsed > warmup_s else 0.0
    tick_all = tick_summary(durations, tick_s)
    tick_warm = tick_summary(warm, tick_s)
    mem_service = memory_summary(samples, "service_rss_mb", t0, steady_from_s)
    last = next((x for x in reversed(samples) if "drivers" in x), {})
    sim_last = next((x["sim"] for x in reversed(samples) if "sim" in x), {})
    mqtt = last.get("drivers", {}).get("mqtt", {})
    slope = mem_service.get("slope_mb_per_min")
    p99 = (tick_warm if tick_warm["n"] else tick_all)["p99_ms"]
    stale = [x["stale_readings"] for x in samples
             if x.get("stale_readings") is not None and x["t_s"] >= t0]
    return {
        "benchmark": "load",
        "duration_s": round(elapsed, 1), "sample_s": sample_s, "warmup_s": warmup_s,
        "tick_period_s": tick_s,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "loadavg_start": load_start,
                    "loadavg_end": loadavg(),
                    "loadavg_1m_max": max(x["loadavg_1m"] for x in samples),
                    "busy_cores": round((busy1 - busy0) / max(elapsed, 1e-9), 2),
                    "total_cores": round((total1 - total0) / max(elapsed, 1e-9), 2)},
        "ticks": {"count": count, "durations_captured": len(durations),
                  "all": tick_all, "after_warmup": tick_warm,
                  "phases_after_warmup": {
                      name: tick_summary([d for k, d in sorted(by_tick.items())
                                          if warm_tick_from is not None and k >= warm_tick_from],
                                         tick_s)
                      for name, by_tick in phases.items()}},
        "memory": {"service": mem_service,
                   "sim": memory_summary(samples, "sim_rss_mb", t0, steady_from_s)},
        "cpu_percent_of_one_core": {
            "service": cpu_share(samples, "service_cpu_s", t0),
            "sim": cpu_share(samples, "sim_cpu_s", t0),
            "broker": cpu_share(samples, "broker_cpu_s", t0),
            "machine_busy": cpu_share(samples, "machine_busy_cpu_s", t0)},
        "readings": {
            "stale_after_warmup": {"median": statistics.median(stale) if stale else None,
                                   "max": max(stale) if stale else None},
            "telemetry": last.get("telemetry", {}),
            "modbus": last.get("drivers", {}).get("modbus", {}),
            "mqtt_received": mqtt, "sim": sim_last},
        "mode_last": last.get("mode"), "modes_seen": sorted({x["mode"] for x in samples
                                                              if "mode" in x}),
        "energized_last": last.get("energized"), "steady_from_s": steady_from_s,
        "failed_samples": failed_samples, "sim_frozen_at_s": frozen_at_s,
        "sim_run_share": None if throttle is None else throttle.share,
        "targets": {"tick_p99_within_period": p99 is not None and p99 <= tick_s * 1e3,
                    "memory_slope_limit_mb_per_min": MEMORY_SLOPE_LIMIT_MB_PER_MIN,
                    "no_memory_growth": slope is not None
                    and slope <= MEMORY_SLOPE_LIMIT_MB_PER_MIN},
        "samples": samples,
    }


def _log_counts(path: Path) -> dict[str, Any]:
    """Warnings and errors of the service's JSON log, the tick overruns among them."""
    counts: dict[str, Any] = {"tick_overruns": 0, "warnings": 0, "errors": 0}
    first: list[str] = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return counts
    for raw in lines:
        try:
            rec = json.loads(raw)
        except ValueError:
            continue
        level, message = rec.get("level"), str(rec.get("message", ""))
        if "control tick overran" in message:
            counts["tick_overruns"] += 1
        if level == "WARNING":
            counts["warnings"] += 1
        elif level in ("ERROR", "CRITICAL"):
            counts["errors"] += 1
            if len(first) < 5:
                first.append(message[:200])
    counts["first_errors"] = first
    return counts


def summary(r: dict[str, Any]) -> str:
    t = r["ticks"]["after_warmup"] if r["ticks"]["after_warmup"]["n"] else r["ticks"]["all"]
    ms, mm = r["memory"]["service"], r["memory"]["sim"]
    c = r["cpu_percent_of_one_core"]
    rd = r["readings"]
    return "\n".join([
        f"load run on {r['config']}: {r['duration_s']} s, {r['ticks']['count']} ticks "
        f"({r['ticks']['durations_captured']} durations captured), load average "
        f"{r['machine']['loadavg_start']} -> {r['machine']['loadavg_end']} "
        f"(max 1-min {r['machine']['loadavg_1m_max']})",
        f"tick after warm-up: median {t['median_ms']} ms, p99 {t['p99_ms']} ms, max "
        f"{t['max_ms']} ms, {t['over_period']} over the {r['tick_period_s']} s period",
        "tick phases after warm-up (median / p99 ms): " + ", ".join(
            f"{name} {v['median_ms']} / {v['p99_ms']}"
            for name, v in r["ticks"].get("phases_after_warmup", {}).items()),
        f"service RSS {ms.get('first_mb')} -> {ms.get('last_mb')} MB (max {ms.get('max_mb')}), "
        f"slope {ms.get('slope_mb_per_min')} MB/min after warm-up, "
        f"{ms.get('steady_slope_mb_per_min')} in steady state",
        f"sim RSS {mm.get('first_mb')} -> {mm.get('last_mb')} MB, slope "
        f"{mm.get('slope_mb_per_min')} MB/min",
        f"CPU (% of one core): service {c['service']}, sim {c['sim']}, broker {c['broker']}, "
        f"whole machine {c['machine_busy']}",
        f"stale readings after warm-up: {rd['stale_after_warmup']}; modbus {rd['modbus']}",
        f"mqtt at the service {rd['mqtt_received']}; sim {rd['sim']}",
        f"mode {r['mode_last']}, energized {r['energized_last']}, steady from "
        f"{r['steady_from_s']} s; targets {r['targets']}"
        + ("" if r.get("sim_frozen_at_s") is None
           else f"; simulator stopped (SIGSTOP) at {r['sim_frozen_at_s']} s"
           + (f", then run {r['sim_run_share']:.0%} of every second"
              if r.get("sim_run_share") else "")),
    ])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "hall-32k.toml")
    p.add_argument("--duration-s", type=float, default=600.0)
    p.add_argument("--sample-s", type=float, default=5.0)
    p.add_argument("--warmup-s", type=float, default=60.0)
    p.add_argument("--mqtt", default="mqtt://127.0.0.1:1883")
    p.add_argument("--port-offset", type=int, default=None)
    p.add_argument("--no-ramp", action="store_true", help="do not start the ramp")
    p.add_argument("--ready-timeout-s", type=float, default=600.0)
    p.add_argument("--profile", nargs="?", const="both", choices=("service", "both"),
                   default=None,
                   help="run the service (or both processes: the default) under cProfile "
                        "(.prof files in the work directory)")
    p.add_argument("--freeze-sim-at-s", type=float, default=None, metavar="T",
                   help="SIGSTOP the simulator T s into the sampling: the plant hangs (every "
                        "poll times out, the agents fall silent); use a --warmup-s past T to "
                        "measure the service in that state")
    p.add_argument("--sim-run-share", type=float, default=0.0, metavar="F",
                   help="with --freeze-sim-at-s: let the simulator run F (0 < F < 1) of every "
                        "second from T on instead of stopping it for good (a plant that lags)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "load.json")
    args = p.parse_args(argv)
    for name in ("duration_s", "sample_s", "ready_timeout_s"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            print(f"bench_load: --{name.replace('_', '-')} must be positive, got {value}",
                  file=sys.stderr)
            return 2
    if not (math.isfinite(args.warmup_s) and args.warmup_s >= 0):
        print(f"bench_load: --warmup-s must be >= 0, got {args.warmup_s}", file=sys.stderr)
        return 2
    if args.freeze_sim_at_s is not None and not (math.isfinite(args.freeze_sim_at_s)
                                                 and args.freeze_sim_at_s >= 0):
        print(f"bench_load: --freeze-sim-at-s must be >= 0, got {args.freeze_sim_at_s}",
              file=sys.stderr)
        return 2
    if not (math.isfinite(args.sim_run_share) and 0 <= args.sim_run_share < 1):
        print(f"bench_load: --sim-run-share must be in [0, 1), got {args.sim_run_share}",
              file=sys.stderr)
        return 2
    if args.sim_run_share and args.freeze_sim_at_s is None:
        print("bench_load: --sim-run-share needs --freeze-sim-at-s", file=sys.stderr)
        return 2
    if not args.config.is_file():
        print(f"bench_load: no config at {args.config}", file=sys.stderr)
        return 2
    report = run(args.config, duration_s=args.duration_s, sample_s=args.sample_s,
                 warmup_s=args.warmup_s, mqtt_url=args.mqtt, port_offset=args.port_offset,
                 ramp=not args.no_ramp, ready_timeout_s=args.ready_timeout_s,
                 profile=args.profile, freeze_sim_at_s=args.freeze_sim_at_s,
                 sim_run_share=args.sim_run_share)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(summary(report))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
