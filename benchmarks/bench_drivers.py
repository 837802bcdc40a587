"""Driver benchmarks: Modbus polling CPU and MQTT telemetry ingest, on loopback (medians).

    python benchmarks/bench_drivers.py [--devices 1000] [--windows 5] [--window-s 5]
                                       [--phases N] [--mqtt URL] [--mqtt-rate 20000]
                                       [--mqtt-seconds 8] [--only modbus|mqtt] [--out PATH]

Modbus: the first ``--devices`` Modbus devices of configs/hall-32k.toml (as
controller.bindings deals them: meters, then switched metered rack PDUs of 6 banks and 24
outlets), served by the simulator's endpoints in a separate process (their CPU is not counted),
polled at 1 Hz by one ModbusPoller in this process. Measured: this process's CPU time
(time.process_time, user and kernel) over wall time, per window, as a share of one core;
target ≤ 30 %.

MQTT: a publisher in a separate process (paho, QoS 0) offers agent telemetry (8 GPUs each,
valid) at ``--mqtt-rate`` messages/s (default 20,000, twice the target; 0: as fast as it can,
which on a two-core machine takes CPU from the subscriber) through the broker; one MqttLink in
this process validates every message (AgentTelemetry) and counts it. Measured: messages
accepted per second, per 1-s window while the flood runs, and the subscriber's CPU per message;
target ≥ 10,000/s. The broker is ``--mqtt`` (default mqtt://127.0.0.1:1883), or a mosquitto
this benchmark starts on a free port when that is unreachable.

Writes JSON (default benchmarks/results/drivers.json) and prints a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from controller.bindings import resolve_bindings
from controller.config import load_hall_config
from controller.topology import compile_hall
from drivers.modbus import ModbusDeviceConfig, ModbusPoller
from drivers.mqtt import MqttConfig, MqttLink, Subscription
from drivers.payloads import AgentTelemetry, GpuTelemetry, dumps
from drivers.registers import (
    PROFILE_PDU,
    BankSnapshot,
    MeterSnapshot,
    OutletSnapshot,
    PduSnapshot,
)

ROOT = Path(__file__).resolve().parents[1]


# ============================================================================================
# Modbus
# ============================================================================================
def bench_devices(n: int) -> list[ModbusDeviceConfig]:
    config = load_hall_config(ROOT / "configs" / "hall-32k.toml")
    devices = resolve_bindings(config, compile_hall(config)).modbus
    if n > len(devices):
        raise SystemExit(f"hall-32k binds {len(devices)} Modbus devices, asked for {n}")
    return list(devices[:n])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _snapshot_for(cfg: ModbusDeviceConfig) -> MeterSnapshot | PduSnapshot:
    inlet = MeterSnapshot(current_a=(31.5, 30.2, 29.8), voltage_v=(239.6, 240.1, 239.8),
                          power_w=(7180.0, 6900.0, 6810.0), energy_wh=1.2e6)
    if cfg.profile != PROFILE_PDU:
        return inlet
    return PduSnapshot(inlet, tuple(BankSnapshot(10.5, 239.9, 2400.0) for _ in range(cfg.banks)),
                       tuple(OutletSnapshot(2.6, 600.0, True, True)
                             for _ in range(cfg.outlets)))


async def serve_modbus(n: int) -> None:
    """Server mode (a child process): serve the devices, print the port map, run until stdin
    closes."""
    from sim.endpoints import ModbusEndpoints

    devices = bench_devices(n)
    ports = {p: free_port() for p in dict.fromkeys(c.port for c in devices)}
    devices = [replace(c, port=ports[c.port]) for c in devices]
    snaps = {c.node_id: _snapshot_for(c) for c in devices}
    async with ModbusEndpoints(devices, snaps.__getitem__, lambda *a: True,
                               refresh_period_s=1.0):
        print(json.dumps(ports), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def bench_modbus(n: int, windows: int, window_s: float,
                       phases: int | None = None) -> dict[str, Any]:
    server = subprocess.Popen(  # noqa: ASYNC220 (a child for the whole benchmark)
        [sys.executable, __file__, "--serve-modbus", str(n)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert server.stdout is not None
        line = await asyncio.get_running_loop().run_in_executor(None, server.stdout.readline)
        ports = {int(k): v for k, v in json.loads(line).items()}
        devices = [replace(c, port=ports[c.port]) for c in bench_devices(n)]
        shapes = {"meters": sum(c.profile != PROFILE_PDU for c in devices),
                  "pdus": sum(c.profile == PROFILE_PDU for c in devices)}
        requests_per_poll = sum(len(c.read_plan()) for c in devices)
        async with ModbusPoller(devices, period_s=1.0, phases=phases) as poller:
            await poller.wait_connected(60.0)
            await asyncio.sleep(2.0)                      # a full period of every device
            shares, user, system, rates, errors = [], [], [], [], []
            for _ in range(windows):
                ok0 = sum(s.ok for s in poller.stats.values())
                err0 = sum(s.errors for s in poller.stats.values())
                t0, c0 = time.perf_counter(), time.process_time()
                r0 = resource.getrusage(resource.RUSAGE_SELF)
                await asyncio.sleep(window_s)
                t1, c1 = time.perf_counter(), time.process_time()
                r1 = resource.getrusage(resource.RUSAGE_SELF)
                shares.append((c1 - c0) / (t1 - t0))
                user.append((r1.ru_utime - r0.ru_utime) / (t1 - t0))
                system.append((r1.ru_stime - r0.ru_stime) / (t1 - t0))
                rates.append((sum(s.ok for s in poller.stats.values()) - ok0) / (t1 - t0))
                errors.append(sum(s.errors for s in poller.stats.values()) - err0)
            latencies = sorted(s.last_latency_s for s in poller.stats.values())
            overruns = sum(s.overruns for s in poller.stats.values())
    finally:
        if server.stdin is not None:
            server.stdin.close()
        server.wait(timeout=30)
    return {
        "devices": n, **shapes, "requests_per_poll_round": requests_per_poll,
        "period_s": 1.0, "phases": poller.phases, "windows": windows, "window_s": window_s,
        "cpu_share_of_one_core_median": statistics.median(shares),
        "cpu_share_windows": shares,
        "user_share_median": statistics.median(user),
        "system_share_median": statistics.median(system),
        "reads_per_s_median": statistics.median(rates),
        "errors_in_windows": sum(errors), "overruns": overruns,
        "read_latency_s_median": statistics.median(latencies),
        "read_latency_s_p99": latencies[int(0.99 * (len(latencies) - 1))],
        "target_cpu_share": 0.30,
    }


# ============================================================================================
# MQTT
# ============================================================================================
_PUBLISHER = textwrap.dedent("""
    import sys, time
    import paho.mqtt.client as mqtt

    host, port, topic, seconds, payload_file, rate = sys.argv[1:7]
    payload = open(payload_file, "rb").read()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.max_queued_messages_set(0)
    client.connect(host, int(port))
    client.loop_start()
    sent = 0
    start = time.monotonic()
    deadline = start + float(seconds)
    rate = float(rate)                      # messages/s of this publisher, 0: flat out
    while time.monotonic() < deadline:
        for _ in range(100):
            client.publish(topic, payload, qos=0)
        sent += 100
        if rate > 0:
            ahead = start + sent / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    client.disconnect()
    client.loop_stop()
    print(sent)
""")


def _broker(url: str, workdir: Path) -> tuple[MqttConfig, subprocess.Popen[bytes] | None, str]:
    cfg = MqttConfig.from_url(url)
    try:
        with socket.create_connection((cfg.host, cfg.port), timeout=0.5):
            return cfg, None, url
    except OSError:
        pass
    mosquitto = shutil.which("mosquitto")
    if mosquitto is None:
        raise SystemExit(f"no broker at {url} and no mosquitto binary to start")
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return replace(cfg, host="127.0.0.1", port=port), proc, f"mosquitto started on {port}"


async def bench_mqtt(url: str, seconds: float, publishers: int,
                     rate: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg, broker, broker_desc = _broker(url, Path(tmp))
        root = f"rampguard-bench/{uuid.uuid4().hex}"
        payload = dumps(AgentTelemetry(
            v=1, server="Z1-R001-S01", t=time.time(), seq=1,
            gpus=[GpuTelemetry(index=k, power_w=612.5, temp_c=61.0, limit_w=650.0,
                               throttle=["power_cap"]) for k in range(8)],
            server_power_w=8120.0))
        payload_file = Path(tmp) / "payload.json"
        payload_file.write_bytes(payload)
        accepted = [0]

        def on_message(topic: str, msg: Any) -> None:
            accepted[0] += 1

        try:
            sub = Subscription(f"{root}/+/telemetry", AgentTelemetry, on_message)
            async with MqttLink(cfg, subscriptions=[sub]) as link:
                await link.wait_connected(10.0)
                procs = [subprocess.Popen(  # noqa: ASYNC220
                    [sys.executable, "-c", _PUBLISHER, cfg.host, str(cfg.port),
                     f"{root}/S{k:02d}/telemetry", str(seconds), str(payload_file),
                     str(rate / publishers)],
                    stdout=subprocess.PIPE) for k in range(publishers)]
                samples: list[tuple[float, int, float]] = []
                t_end = time.perf_counter() + seconds + 1.0
                while time.perf_counter() < t_end:
                    samples.append((time.perf_counter(), accepted[0], time.process_time()))
                    await asyncio.sleep(1.0)
                sent = 0
                for proc in procs:
                    out, _ = proc.communicate(timeout=60)
                    sent += int(out.strip() or 0)
                await asyncio.sleep(1.0)
                counters = link.counters
        finally:
            if broker is not None:
                broker.terminate()
                broker.wait(timeout=10)
    windows = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in itertools.pairwise(samples)]
    cpu = [(b[2] - a[2]) / (b[0] - a[0]) for a, b in itertools.pairwise(samples)]
    steady = windows[1:-1] or windows          # drop the ramp-up and the tail
    return {
        "broker": broker_desc, "publishers": publishers, "seconds": seconds,
        "offered_messages_per_s": rate or "flat out",
        "payload_bytes": len(payload), "sent": sent, "received": counters.received,
        "accepted": counters.accepted, "rejected": counters.rejected_total,
        "messages_per_s_median": statistics.median(steady),
        "messages_per_s_windows": windows,
        "subscriber_cpu_share_median": statistics.median(cpu[1:-1] or cpu),
        "subscriber_cpu_us_per_message": 1e6 * statistics.median(cpu[1:-1] or cpu)
        / statistics.median(steady),
        "target_messages_per_s": 10_000,
    }


# ============================================================================================
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--window-s", type=float, default=5.0)
    parser.add_argument("--mqtt", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--mqtt-seconds", type=float, default=8.0)
    parser.add_argument("--publishers", type=int, default=1)
    parser.add_argument("--mqtt-rate", type=float, default=20_000.0,
                        help="offered messages/s in all (0: as fast as the publishers can)")
    parser.add_argument("--only", choices=("modbus", "mqtt"))
    parser.add_argument("--phases", type=int, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" /
                        "drivers.json")
    parser.add_argument("--serve-modbus", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_modbus:
        asyncio.run(serve_modbus(args.serve_modbus))
        return
    results: dict[str, Any] = {"benchmark": "drivers", "python": platform.python_version(),
                               "cpus": os.cpu_count()}
    if args.only in (None, "modbus"):
        m = asyncio.run(bench_modbus(args.devices, args.windows, args.window_s, args.phases))
        results["modbus"] = m
        print(f"modbus: {m['devices']} devices ({m['pdus']} PDUs, {m['meters']} meters) at 1 Hz,"
              f" {m['requests_per_poll_round']} requests/s: CPU "
              f"{m['cpu_share_of_one_core_median']:.1%} of one core (user "
              f"{m['user_share_median']:.1%}, kernel {m['system_share_median']:.1%}; median of "
              f"{m['windows']} × {m['window_s']:g} s; target ≤ 30 %), "
              f"{m['reads_per_s_median']:.0f} reads/s, latency median "
              f"{m['read_latency_s_median'] * 1e3:.1f} ms, {m['errors_in_windows']} errors")
    if args.only in (None, "mqtt"):
        q = asyncio.run(bench_mqtt(args.mqtt, args.mqtt_seconds, args.publishers,
                                   args.mqtt_rate))
        results["mqtt"] = q
        print(f"mqtt: {q['messages_per_s_median']:,.0f} messages/s validated and dispatched "
              f"(median of 1-s windows; target ≥ 10,000), {q['accepted']:,} accepted of "
              f"{q['sent']:,} sent, subscriber CPU {q['subscriber_cpu_share_median']:.0%} "
              f"({q['subscriber_cpu_us_per_message']:.0f} µs/message), "
              f"broker: {q['broker']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
