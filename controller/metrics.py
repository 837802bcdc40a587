"""The controller service's Prometheus metrics, in a registry of their own.

:class:`ServiceMetrics` never touches prometheus_client's global registry, so two services (or
two tests) in one process do not collide. The per-node series come from one custom collector
that holds a snapshot of the arrays the caller passes: a tick costs one copy of a few arrays, the
text is built in the exporter's thread when Prometheus scrapes, and nodes that are no longer
passed disappear from the output.

====================================================  ======================================
Besides the histogram, :meth:`ServiceMetrics.recent_ticks` keeps the exact durations of the
last ``RECENT_TICKS`` ticks (``GET /status`` shows the latest of them; the load benchmark
computes its median, p99 and maximum from them), and :meth:`ServiceMetrics.recent_tick_phases`
the durations of their phases (``TICK_PHASES``; also the histogram
``rampguard_tick_phase_seconds{phase}``), which say whether a long tick did work or waited.

Values that are not finite (NaN, ±inf) in loads, limits, headrooms and utilizations are
exported as NaN: "unknown" (Prometheus accepts NaN samples; comparisons with NaN are false, so
alert on ``rampguard_stale_readings`` as well).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self
from wsgiref.simple_server import WSGIServer

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

MODES = ("IDLE", "RAMPING", "HOLDING", "STEADY", "SHEDDING", "SAFE")
PHASES = ("L1", "L2", "L3")
#: Tick duration buckets, s: dense around the 2 ms target, up to the seconds of a stuck tick.
TICK_BUCKETS_S = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                  2.5, 5.0)
#: Exact durations kept of the latest ticks (a bounded ring: memory does not grow).
RECENT_TICKS = 1024
#: The phases of a tick the service times (s): ``drain`` (the readings since the last tick into
#: the store, its refresh, the read-backs), ``decide`` (the core in its worker thread, as the
#: event loop waited for it), ``decide_cpu`` (the CPU time that thread spent in it: far below
#: ``decide`` when the thread waited for the interpreter), ``act`` (the actions, the export).
TICK_PHASES = ("drain", "decide", "decide_cpu", "act")


@dataclass(frozen=True, slots=True)
class _NodeSnapshot:
    node_ids: tuple[str, ...]
    load_a: np.ndarray          # (N, 3) float64
    limit_a: np.ndarray         # (N,)
    headroom_a: np.ndarray      # (N,)


class _SnapshotCollector(Collector):
    """Series rebuilt from the latest snapshot at each scrape. Each attribute is replaced
    whole (one reference assignment), so the exporter thread always sees a consistent one."""

    def __init__(self) -> None:
        self.nodes = _NodeSnapshot((), np.zeros((0, 3)), np.zeros(0), np.zeros(0))
        self.utilization: Mapping[str, float] = {}
        self.rejected: Mapping[str, int] = {}
        self.inputs_rejected: Mapping[tuple[str, str], int] = {}

    def describe(self) -> Iterable[Metric]:
        return self._families(_NodeSnapshot((), np.zeros((0, 3)), np.zeros(0), np.zeros(0)),
                              {}, {}, {})

    def collect(self) -> Iterable[Metric]:
        return self._families(self.nodes, self.utilization, self.rejected, self.inputs_rejected)

    @staticmethod
    def _families(nodes: _NodeSnapshot, utilization: Mapping[str, float],
                  rejected: Mapping[str, int],
                  inputs_rejected: Mapping[tuple[str, str], int]) -> list[Metric]:
        load = GaugeMetricFamily("rampguard_node_load_a",
                                 "Measured load per phase of a watched node, A (NaN: unknown)",
                                 labels=["node", "phase"])
        limit = GaugeMetricFamily("rampguard_node_limit_a",
                                  "Continuous limit of a watched node, A", labels=["node"])
        headroom = GaugeMetricFamily("rampguard_node_headroom_a",
                                     "Headroom of a watched node, A (NaN: unknown)",
                                     labels=["node"])
        loads = nodes.load_a.tolist()
        limits = nodes.limit_a.tolist()
        headrooms = nodes.headroom_a.tolist()
        for i, node in enumerate(nodes.node_ids):
            for phase, value in zip(PHASES, loads[i], strict=True):
                load.add_metric([node, phase], value)
            limit.add_metric([node], limits[i])
            headroom.add_metric([node], headrooms[i])
        util = GaugeMetricFamily("rampguard_max_utilization",
                                 "Highest load / continuous limit among the nodes of a kind",
                                 labels=["kind"])
        for kind, value in sorted(utilization.items()):
            util.add_metric([kind], value)
        rejects = CounterMetricFamily("rampguard_telemetry_rejected",
                                      "Telemetry readings or messages rejected, by reason",
                                      labels=["reason"])
        for reason, count in sorted(rejected.items()):
            rejects.add_metric([reason], count)
        inputs = CounterMetricFamily("rampguard_inputs_rejected",
                                     "Inputs refused, by source (mqtt, telemetry, modbus, http) "
                                     "and reason", labels=["source", "reason"])
        for (source, reason), count in sorted(inputs_rejected.items()):
            inputs.add_metric([source, reason], count)
        return [load, limit, headroom, util, rejects, inputs]


class ServiceMetrics:
    """The service's metrics (see the module docstring); :attr:`registry` is its own."""

    def __init__(self, modes: Sequence[str] = MODES) -> None:
        self.registry = CollectorRegistry()
        self._mode = Gauge("rampguard_mode", "1 for the controller's current mode, else 0",
                           ["mode"], registry=self.registry)
        self._modes: list[str] = []
        for mode in modes:
            self._add_mode(mode)
        self._tick = Histogram("rampguard_tick_seconds", "Duration of a control tick, s",
                               buckets=TICK_BUCKETS_S, registry=self.registry)
        self._tick_max = Gauge("rampguard_tick_max_seconds",
                               "The longest control tick since start, s", registry=self.registry)
        self._ticks_seen = 0
        self._tick_max_s = 0.0
        self._recent: deque[float] = deque(maxlen=RECENT_TICKS)
        self._phase = Histogram("rampguard_tick_phase_seconds",
                                "Duration of a phase of a control tick, s", ["phase"],
                                buckets=TICK_BUCKETS_S, registry=self.registry)
        self._recent_phases: deque[tuple[int, dict[str, float]]] = deque(maxlen=RECENT_TICKS)
        self._stale = Gauge("rampguard_stale_readings", "Readings stale or unknown now",
                            registry=self.registry)
        self._actions = Counter("rampguard_actions", "Actions by type and outcome",
                                ["type", "outcome"], registry=self.registry)
        self._alarms = Gauge("rampguard_alarms_active", "Alarms active now",
                             registry=self.registry)
        self._energized = Gauge("rampguard_servers_energized", "Servers energized",
                                registry=self.registry)
        self._servers_total = Gauge("rampguard_servers_total", "Servers in the hall",
                                    registry=self.registry)
        self._snapshot = _SnapshotCollector()
        self.registry.register(self._snapshot)
        self._lock = threading.Lock()

    # -- setters ----------------------------------------------------------------------------
    def set_mode(self, mode: str) -> None:
        """Make ``mode`` the one mode at 1 (a mode not seen before is added)."""
        mode = str(mode)
        with self._lock:
            if mode not in self._modes:
                self._add_mode(mode)
            for known in self._modes:
                self._mode.labels(mode=known).set(1.0 if known == mode else 0.0)

    def _add_mode(self, mode: str) -> None:
        self._modes.append(mode)
        self._mode.labels(mode=mode).set(0.0)

    def observe_tick(self, duration_s: float) -> None:
        """One control tick took ``duration_s``; a value that is not a finite non-negative
        number is ignored (logged at DEBUG), never recorded."""
        if not (isinstance(duration_s, int | float | np.floating) and math.isfinite(duration_s)
                and duration_s >= 0):
            log.debug("ignored a tick duration of %r", duration_s)
            return
        d = float(duration_s)
        self._tick.observe(d)
        self._recent.append(d)
        self._ticks_seen += 1
        if d > self._tick_max_s:
            self._tick_max_s = d
            self._tick_max.set(d)

    def observe_tick_phases(self, phases_s: Mapping[str, float]) -> None:
        """The phases of the tick :meth:`observe_tick` saw last (call it after that). Phases
        not in ``TICK_PHASES`` and values that are not finite non-negative numbers are ignored
        (logged at DEBUG)."""
        kept: dict[str, float] = {}
        for name, value in phases_s.items():
            if name not in TICK_PHASES or not (
                    isinstance(value, int | float | np.floating) and math.isfinite(value)
                    and value >= 0):
                log.debug("ignored a tick phase %r of %r", name, value)
                continue
            kept[name] = float(value)
            self._phase.labels(phase=name).observe(kept[name])
        self._recent_phases.append((self._ticks_seen, kept))

    def recent_tick_phases(self, n: int = RECENT_TICKS) -> dict[str, list[float | None]]:
        """For each of ``TICK_PHASES``, its durations (s) in the ticks of
        ``recent_ticks(n)``, in the same order; ``None`` where a tick's phase was not seen."""
        count, recent = self.recent_ticks(n)
        first = count - len(recent) + 1
        by_tick = {k: p for k, p in self._recent_phases if k >= first}
        return {name: [by_tick.get(first + j, {}).get(name) for j in range(len(recent))]
                for name in TICK_PHASES}

    def recent_ticks(self, n: int = RECENT_TICKS) -> tuple[int, list[float]]:
        """``(count, durations)``: how many ticks were observed since start, and the exact
        durations (s) of the latest ``n`` of them (at most ``RECENT_TICKS``), oldest first.
        Tick ``count - len(durations) + k`` took ``durations[k]``."""
        recent = list(self._recent)
        return self._ticks_seen, recent[max(0, len(recent) - max(0, int(n))):]

    def set_node_loads(self, node_ids: Sequence[str], load_a: np.ndarray, limit_a: np.ndarray,
                       headroom_a: np.ndarray) -> None:
        """The watched nodes (upstream levels only) and their per-phase loads ``(N, 3)``,
        continuous limits ``(N,)`` and headrooms ``(N,)``, A. Replaces the previous set; the
        arrays are copied (the caller may reuse them)."""
        ids = tuple(str(n) for n in node_ids)
        n = len(ids)
        load = _finite_or_nan(load_a, (n, 3), "load_a")
        limit = _finite_or_nan(limit_a, (n,), "limit_a")
        headroom = _finite_or_nan(headroom_a, (n,), "headroom_a")
        self._snapshot.nodes = _NodeSnapshot(ids, load, limit, headroom)

    def set_utilization_by_kind(self, utilization: Mapping[str, float]) -> None:
        """Highest utilization (load / continuous limit) per node kind; replaces the set."""
        self._snapshot.utilization = {str(k): _finite_float(v) for k, v in utilization.items()}

    def set_stale(self, n: int) -> None:
        self._stale.set(int(n))

    def set_telemetry_counters(self, rejected: Mapping[str, int]) -> None:
        """The drivers' rejection counters by reason (monotonic; replaces the set)."""
        counts: dict[str, int] = {}
        for reason, count in rejected.items():
            value = int(count)
            if value < 0:
                raise ValueError(f"a rejection counter is never negative: {reason}={count}")
            counts[str(reason)] = value
        self._snapshot.rejected = counts

    def set_input_rejections(self, rejected: Mapping[tuple[str, str], int]) -> None:
        """Every input refused so far by ``(source, reason)`` (monotonic counts kept by their
        owners: the MQTT link, the telemetry store, the poller, the operator API; replaces the
        set)."""
        counts: dict[tuple[str, str], int] = {}
        for (source, reason), count in rejected.items():
            value = int(count)
            if value < 0:
                raise ValueError(f"a rejection counter is never negative: "
                                 f"{source}/{reason}={count}")
            counts[(str(source), str(reason))] = value
        self._snapshot.inputs_rejected = counts

    def count_action(self, kind: str, outcome: str, n: int = 1) -> None:
        """``n`` more actions of type ``kind`` (switch_outlet, set_caps, ...) that ended with
        ``outcome`` (ok, failed, refused, ...)."""
        if n < 0:
            raise ValueError(f"an action count is never negative: {n}")
        self._actions.labels(type=str(kind), outcome=str(outcome)).inc(n)

    def set_alarms(self, n: int) -> None:
        self._alarms.set(int(n))

    def set_servers(self, energized: int, total: int) -> None:
        self._energized.set(int(energized))
        self._servers_total.set(int(total))

    # -- output -----------------------------------------------------------------------------
    def render(self) -> bytes:
        """The text exposition format, as Prometheus scrapes it."""
        return generate_latest(self.registry)

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> MetricsExporter:
        """An exporter for these metrics: ``with metrics.serve() as exporter:`` (or
        ``async with``) starts prometheus_client's HTTP server and stops it on exit."""
        return MetricsExporter(self.registry, host, port)


def _finite_or_nan(values: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    array = np.array(values, dtype=np.float64, copy=True)
    if array.shape != shape:
        raise ValueError(f"{name} has shape {array.shape}, expected {shape}")
    array[~np.isfinite(array)] = np.nan
    return array


def _finite_float(value: float) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out if math.isfinite(out) else math.nan


class MetricsExporter:
    """prometheus_client's exporter thread serving one registry at ``http://host:port/``.

    Bound to 127.0.0.1 unless told otherwise; port 0 takes a free one (:attr:`port` says which).
    """

    def __init__(self, registry: CollectorRegistry, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self._registry = registry
        self._host = host
        self._port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the metrics exporter is not started")
        return int(self._server.server_port)

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the metrics exporter is already started")
        self._server, self._thread = start_http_server(self._port, addr=self._host,
                                                       registry=self._registry)
        log.info("metrics on %s", self.url)

    def close(self) -> None:
        """Stop serving, close the socket and join the thread (blocks up to about 0.5 s, the
        server's poll interval)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5.0)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await asyncio.to_thread(self.close)
