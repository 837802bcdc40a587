"""The controller service (``rampguard run``): the decision core wired to the hall.

One :class:`Service` owns, for its life (``async with``):

* a :class:`~drivers.modbus.ModbusPoller` over every bound Modbus device (meters and switched
  rack PDUs) and one :class:`~drivers.modbus.ModbusDevice` per actuator for coil writes;
* one :class:`~drivers.mqtt.MqttLink`: node agents' telemetry and acks, zone sensors, MQTT
  meters; cap commands out; the controller's retained status with its last will;
* the audit log (:class:`~controller.audit.AuditLog`), the operator API
  (:class:`~controller.operator_api.OperatorApi`) and the Prometheus exporter
  (:class:`~controller.metrics.ServiceMetrics`).

Every ``tick_s`` on the monotonic clock it drains what the drivers delivered since the last tick
into the :class:`~controller.telemetry.TelemetryStore` (drivers' callbacks only queue: nothing
touches the store while the core runs), refreshes it, runs :func:`controller.core.decide` off
the event loop (``asyncio.to_thread``), and carries out the actions: each one is written to the
audit log and made durable before it is sent, and its read-back is written after (DESIGN rule 7).
A write the audit log refuses is not sent: the controller goes SAFE. An unexpected error in a
tick moves the controller to SAFE (rule 9) and the service keeps serving status and alarms.

Restart (rule 8): the state comes from read-backs, never from memory. The first decision waits
(up to ``startup_wait_s``) for every actuator's outlet states; outlets found on are on (their
time unknown: the core counts their servers at full power until their caps are confirmed) and
are never switched on again; caps in force come from the agents' telemetry; intents the audit
log holds without a result are reconciled against the read-backs and their results written. A
ramp the log shows active when the service stopped resumes.

SIGTERM and Ctrl-C stop the service cleanly and leave the hardware as it is.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import heapq
import itertools
import json
import logging
import math
import operator
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from controller import core, heap
from controller.audit import AuditLog, pending_intents, read_audit
from controller.bindings import (
    ResolvedBindings,
    coil_allowlist,
    command_allowlist,
    meter_targets,
    pdu_nodes,
    resolve_bindings,
)
from controller.core import (
    DEAD_VOLTAGE_FRACTION,
    CoreContext,
    CoreState,
    Mode,
    Readbacks,
)
from controller.errors import AuditWriteError
from controller.metrics import ServiceMetrics
from controller.model import HallConfig
from controller.operator_api import CommandRefused, OperatorApi
from controller.telemetry import Q_STALE, TelemetryStore
from controller.topology import KIND_CODE, Topology
from drivers import (
    AgentTelemetry,
    CapAck,
    CapCommand,
    ControllerStatus,
    DriverError,
    ModbusDevice,
    ModbusPoller,
    MqttConfig,
    MqttLink,
    Snapshot,
    StatusSpec,
    Subscription,
    ZoneTelemetry,
)
from drivers.payloads import (
    CONTROLLER_STATUS_TOPIC,
    agent_command_key,
    sign_command,
    zone_topic,
)
from kernels.rows import row_max

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]

#: How long a cap command stays valid at the agent (s).
CAP_VALID_S = 30.0
#: A cap command unacknowledged this long after it left (wall clock, s) is written off: its
#: result "no acknowledgement" goes to the audit log and it is forgotten (an agent refuses
#: a command older than ``CAP_VALID_S``; the grace covers clock offsets and a slow broker).
CAP_ACK_WAIT_S = CAP_VALID_S + 10.0
#: Alarms per tick written out in full in the audit log, and logged.
MAX_ALARMS_LISTED = 1000
MAX_ALARMS_LOGGED = 5
#: Least time between two commands of the same cap to one server (s).
CAP_RETRY_S = 5.0
#: What an unread pole of a metered node reads (appended to each snapshot's values).
_UNREAD_POLE = (0.0,)
#: Upstream node kinds whose loads are exported as metrics (not the thousands of outlets).
_WATCHED_KINDS = ("source", "ups", "switchboard", "panel")
#: Latest tick durations shown by ``GET /status``.
STATUS_TICKS = 120
#: Every this many ticks one INFO line lists their exact durations (the load benchmark reads
#: them from the log: it needs no answer from a busy event loop).
TICK_LOG_EVERY = 60
#: The interpreter's switch interval while the service runs (s; CPython's default is 0.005).
#: The decision runs in a worker thread and gives the interpreter up at each of its kernels;
#: with the event loop busy with replies and messages, each time it waits up to a whole
#: interval to get it back. Measured on the 32k hall under load (benchmarks/bench_load.py,
#: the ``decide`` and ``decide_cpu`` phases): at 5 ms a decision of 4 ms CPU took 32 ms
#: (median) and 250 ms (p99) of the tick.
SWITCH_INTERVAL_S = 0.0005
#: Snapshots waiting for the next tick beyond which they are applied at once, between ticks
#: (:meth:`Service._apply_early`; about a twentieth of the 32k hall's devices).
EARLY_APPLY_SNAPSHOTS = 256
#: On stop, how long a switch being sent may take to finish before it is cancelled (s).
SWITCH_STOP_WAIT_S = 2.0


@dataclass(frozen=True, slots=True)
class ServiceOptions:
    """How the service is wired: broker URL (None: no MQTT), operator API and metrics
    addresses (port 0: any free port), the audit log path, the operator token, the issuer name
    of its commands, and how long the first decision waits for the outlets' read-backs.

    ``token`` is required (the API refuses to start without one); ``token_file`` only names
    where it came from in the ready line. ``mqtt`` (credentials, TLS) replaces ``mqtt_url``
    when given. ``command_key``: the hall's cap-command key; each agent's commands are signed
    with the key derived from it for that agent (``drivers.payloads.agent_command_key``; None:
    unsigned, and agents that verify ignore them). Secrets are hidden from ``repr``."""

    mqtt_url: str | None = "mqtt://127.0.0.1:1883"
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = 9108
    audit_path: Path = Path("rampguard-audit.jsonl")
    token: str | None = field(default=None, repr=False)
    token_file: str | None = None
    mqtt: MqttConfig | None = None
    command_key: bytes | None = field(default=None, repr=False)
    issuer: str = "rampguard"
    startup_wait_s: float = 10.0
    fsync: bool = True
    #: the controller's clock runs this many times faster than the wall clock: only for a
    #: hardware-in-the-loop simulator served at the same ``--speed`` (1 for real hardware)
    clock_speed: float = 1.0
    #: once built, freeze the heap and raise the collector's thresholds (controller.heap):
    #: for the process that runs only this service (``rampguard run``), not for a test or a
    #: program that embeds it
    settle_heap: bool = False


@dataclass(frozen=True, slots=True, order=True)
class _Switch:
    """One outlet switch queued to its device's worker, in time order (``action_id``, the
    audit intent's sequence number, breaks ties in the order they were planned)."""

    at_s: float
    action_id: int
    outlet: int = field(compare=False)
    on: bool = field(compare=False)
    key: str = field(compare=False)        # the device
    n: int = field(compare=False)          # its 1-based outlet
    node_id: str = field(compare=False)


@dataclass(frozen=True, slots=True)
class _CapSend:
    """One cap command whose intent is durable, queued to the cap sender."""

    action_id: int
    cmd_id: str
    topic: str
    payload: CapCommand


@dataclass(frozen=True, slots=True)
class _SnapshotPlan:
    """Where a device's readings go (see :meth:`Service._snapshot_plan`)."""

    layout: object
    node: int | None
    volts: tuple[int, ...]
    # the nodes the device reads, and per pole the index into the snapshot's values with one
    # 0.0 appended (a pole not read points at it)
    row_nodes: npt.NDArray[np.int64]
    row_idx: npt.NDArray[np.int64]
    # the outlets read back that the controller switches: their positions and indices
    outlet_pos: npt.NDArray[np.int64]
    outlet_k: npt.NDArray[np.int64]
    n_rows: int
    # the voltages of the inlet's phases out of the values (a tuple), and the voltage at or
    # above which the feed is live
    volts_of: Callable[[Sequence[float]], tuple[float, ...]]
    live_v: float
    # the nodes of the PDU's banks, in its order (empty: no banks)
    bank_nodes: npt.NDArray[np.int64]


class Service:
    """The controller service; see the module docstring. ``on_ready(info)`` is called once
    when every endpoint is up (``rampguard run`` prints it as one JSON line)."""

    def __init__(self, config: HallConfig, topo: Topology, options: ServiceOptions, *,
                 source: str = "<config>", clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time,
                 on_ready: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.config = config
        self.topo = topo
        self.options = options
        self.source = source
        speed = options.clock_speed
        if speed == 1.0:
            self.clock = clock
        else:
            origin = clock()
            self.clock = lambda: origin + (clock() - origin) * speed
        self._speed = speed
        #: unix time: audit timestamps, cap commands' ``t`` (their expiry at the agent), the
        #: status payload and the MQTT receiver's future-timestamp check; never a deadline
        self.wall_clock = wall_clock
        self.on_ready = on_ready
        self.settings = config.controller
        self.bindings: ResolvedBindings = resolve_bindings(config, topo, source=source)
        layout = pdu_nodes(config, topo)
        self._layout = layout
        self._device_cfg = {cfg.key: cfg for cfg in self.bindings.modbus}
        # outlets the controller can switch: the actuators' coils
        outlet_nodes: list[int] = []
        self._outlet_addr: list[tuple[str, int]] = []       # (device key, 1-based outlet)
        for cfg in self.bindings.modbus:
            if not cfg.actuator or cfg.node_id not in layout:
                continue
            for n, node in enumerate(layout[cfg.node_id].outlets[:cfg.outlets], 1):
                if node >= 0:
                    outlet_nodes.append(node)
                    self._outlet_addr.append((cfg.key, n))
        self._outlet_of_addr = {a: k for k, a in enumerate(self._outlet_addr)}
        self._outlets_of_device: dict[str, list[int]] = {}
        for k, (key, _n) in enumerate(self._outlet_addr):
            self._outlets_of_device.setdefault(key, []).append(k)
        self.ctx = CoreContext(topo, self.settings, outlet_nodes=outlet_nodes)
        # meters: which node each device's readings belong to
        self._targets = {cfg.key: meter_targets(cfg, topo, layout) for cfg in self.bindings.modbus}
        metered = sorted({t.node for ts in self._targets.values() for t in ts}
                         | {topo.node_index[m.node_id] for m in self.bindings.mqtt_meters
                            if m.node_id in topo.node_index})
        self._server_of = {a.server: topo.server_id.index(a.server)
                           for a in self.bindings.agents if a.server in topo.server_id}
        self._agent_specs = {a.server: a for a in self.bindings.agents}
        self.store = TelemetryStore(topo, self.settings, metered,
                                    sorted(self._server_of.values()), clock=self.clock)
        self.state: CoreState = core.initial_state(self.ctx, now_s=self.clock())
        self.metrics = ServiceMetrics()
        self._watched = np.flatnonzero(np.isin(topo.node_kind,
                                               [KIND_CODE[k] for k in _WATCHED_KINDS]))
        n_out = self.ctx.n_outlets
        self._outlet_on = np.zeros(n_out, bool)
        self._outlet_seen_s = np.full(n_out, -math.inf)
        self._breaker_closed = np.ones(topo.n_nodes, bool)
        self._node_live = np.ones(topo.n_nodes, bool)
        self._zone_inlet_c = np.full(len(topo.zone_id), math.nan)
        self._zone_t_s = np.full(len(topo.zone_id), -math.inf)
        # driver callbacks queue here: closures, or (device key, snapshot, arrival time)
        self._pending: list[Callable[[], object] | tuple[str, Snapshot, float]] = []
        #: devices whose "lost" callback is in ``_pending`` with no snapshot of theirs after it
        self._lost_queued: set[str] = set()
        self._plans: dict[str, _SnapshotPlan] = {}
        # node currents since the last tick, one array per snapshot: (nodes, (k, 3) A, time)
        self._batch: list[tuple[npt.NDArray[np.int64], F64, F64]] = []
        self._early_due = False      # an _apply_early is scheduled
        self._phases: dict[str, float] = {}     # the current tick's (tick, metrics.TICK_PHASES)
        # agents' readings since the last tick: (server, per-GPU power W, per-GPU cap W, t)
        self._agent_rows: list[tuple[int, list[float], list[float], float]] = []
        self._commands: list[Callable[[CoreState], CoreState]] = []
        # command id -> (audit action id, wall time it left), in the order they left
        self._cap_action: dict[str, tuple[int, float]] = {}
        self._cap_outbox: collections.deque[list[_CapSend]] = collections.deque()
        self._cap_task: asyncio.Task[None] | None = None
        self._cap_sent_s = np.full(topo.n_servers, -math.inf)
        self._audit: AuditLog | None = None
        self._link: MqttLink | None = None
        self._poller: ModbusPoller | None = None
        self._actuators: dict[str, ModbusDevice] = {}
        # outlet switches waiting for their time, per device, and each device's worker
        self._switch_queue: dict[str, list[_Switch]] = {}
        self._switch_workers: dict[str, asyncio.Task[None]] = {}
        self._switch_wake: dict[str, asyncio.Event] = {}
        self._last: core.Decision | None = None
        self._stop = asyncio.Event()
        self._reconciled = False
        self._telemetry_alarms: set[str] = set()    # raised by the service (rule 5), below
        self._started_s = self.clock()
        self._audit_failed = False      # the audit log refused a record: alarm "audit:log"
        self.ticks = 0
        self.api: OperatorApi | None = None
        self.exporter: Any = None
        #: inputs the service itself refuses, by (source, reason): a valid payload on the
        #: topic of another server or zone than the one it names
        self._rejected: Counter[tuple[str, str]] = Counter()
        self._agent_keys: dict[str, bytes] = {}     # derived from the hall's command key

    def _agent_key(self, server: str) -> bytes:
        """The key that signs ``server``'s commands (drivers.payloads.agent_command_key)."""
        key = self._agent_keys.get(server)
        if key is None:
            assert self.options.command_key is not None
            key = self._agent_keys[server] = agent_command_key(self.options.command_key, server)
        return key

    # ================================================================== driver callbacks
    def _on_snapshot(self, dev: ModbusDevice, snap: Snapshot) -> None:
        # when it arrived, on the controller's clock; applied at the next tick (_drain), or
        # before it once enough have come (_apply_early)
        key = dev.config.key
        self._pending.append((key, snap, self.clock()))
        if self._lost_queued:
            self._lost_queued.discard(key)      # a failed poll after this one is news again
        if len(self._pending) >= EARLY_APPLY_SNAPSHOTS and not self._early_due:
            self._early_due = True
            asyncio.get_running_loop().call_soon(self._apply_early)

    def _apply_early(self) -> None:
        """Apply the snapshots waiting at the head of the queue now, between ticks, so that a
        tick's drain is left with the last few (thousands of devices report every second).
        Only snapshots: what they change (read-backs of outlets and breakers, feeds, the node
        currents' batch) is copied or handed to the store at the tick, never read by a
        decision being computed meanwhile. Callbacks (results, state changes) wait for the
        tick's drain, and so does every snapshot queued after one, to keep their order."""
        self._early_due = False
        pending = self._pending
        head: list[tuple[str, Snapshot, float]] = []
        for item in pending:
            if not isinstance(item, tuple):
                break
            head.append(item)
        if not head:
            return
        del pending[:len(head)]
        try:
            self._apply_snapshots([(self._snapshot_plan(key, snap), snap, t_s)
                                   for key, snap, t_s in head])
        except Exception as exc:  # rule 9: an unexpected error moves to SAFE
            log.exception("applying snapshots failed: going SAFE")
            self._safe_at_drain(f"internal error applying snapshots: {exc!r}")

    def _safe_at_drain(self, reason: str) -> None:
        """Go SAFE at the next tick's drain (never under a decision being computed)."""
        self._pending.append(lambda: setattr(
            self, "state", core.enter_safe(self.state, reason, self.clock())))

    def _on_error(self, dev: ModbusDevice, error: DriverError) -> None:
        """A failed poll: the device's outlets are unknown from the next drain on. One callback
        per device until it runs or a snapshot of the device comes after it: the callback only
        marks the outlets unknown, so a second one before either would change nothing (a hall
        whose gateways hang fails thousands of polls a second, and a slow tick would drain
        tens of thousands of them)."""
        key = dev.config.key
        if key in self._lost_queued:
            return
        self._lost_queued.add(key)
        self._pending.append(lambda: self._device_lost(key))

    def _snapshot_plan(self, key: str, snap: Snapshot) -> _SnapshotPlan:
        """How one device's snapshots map to nodes, built once per device and layout: the
        value indices of each target's three poles (-1: 0 A), the outlets it reads back, its
        voltage indices and its node's nominal voltage."""
        plan = self._plans.get(key)
        if plan is not None and plan.layout is snap.layout:
            return plan
        index = snap.layout.index
        rows: list[tuple[int, int, int, int]] = []   # (node, value index of L1, L2, L3 or -1)
        for target in self._targets.get(key, ()):
            if target.name is None:
                names = ("current_l1", "current_l2", "current_l3")
                if not any(n in index for n in names):
                    continue
                i1, i2, i3 = (index.get(n, -1) for n in names)
            else:
                i = index.get(target.name)
                if i is None:
                    continue
                i1, i2, i3 = (i if pole else -1 for pole in self.topo.rating_a[target.node] > 0)
            rows.append((target.node, i1, i2, i3))
        cfg = self._device_cfg[key]
        node = self.topo.node_index.get(cfg.node_id)
        volts = tuple(index[n] for n in ("voltage_l1", "voltage_l2", "voltage_l3")
                      if n in index) if "voltage_l1" in index else ()
        outlets = tuple(self._outlet_of_addr.get((key, n), -1)
                        for n in range(1, len(snap.outlets_on) + 1))
        n_values = len(snap.values)
        row_idx = np.asarray([[i if i >= 0 else n_values for i in r[1:]] for r in rows],
                             dtype=np.int64).reshape(len(rows), 3)
        out = np.asarray(outlets, dtype=np.int64)
        nominal_v = float(self.topo.v_ln_v[node]) if node is not None else math.nan
        pdu = self._layout.get(cfg.node_id)
        plan = _SnapshotPlan(snap.layout, node, volts,
                             np.asarray([r[0] for r in rows], dtype=np.int64), row_idx,
                             np.flatnonzero(out >= 0).astype(np.int64), out[out >= 0],
                             len(rows),
                             # itemgetter of two or more indices returns a tuple
                             operator.itemgetter(*volts, *volts[:1]) if volts else tuple,
                             DEAD_VOLTAGE_FRACTION * nominal_v,
                             np.asarray(pdu.banks if pdu is not None else (), dtype=np.int64))
        self._plans[key] = plan
        return plan

    def _apply_snapshots(self, segment: list[tuple[_SnapshotPlan, Snapshot, float]]) -> None:
        """The snapshots of a stretch of the drain, in the order they came: outlet, breaker and
        feed states now; the node currents into the batch that :meth:`_flush_node_batch`
        hands the store. One pass collects, then a few array operations apply everything (a
        tick drains thousands of snapshots: the work per snapshot is a few appends). A device
        read twice in the stretch (a tick that came late) ends with its latest read-backs."""
        vals: list[tuple[float, ...]] = []          # values, then the 0.0 of an unread pole
        rows: list[_SnapshotPlan] = []
        row_off: list[int] = []
        row_t: list[float] = []
        row_good: list[bool] = []
        outs: list[_SnapshotPlan] = []
        out_on: list[tuple[bool, ...]] = []
        out_off: list[int] = []
        out_t: list[float] = []
        banks: list[_SnapshotPlan] = []
        bank_open: list[tuple[bool, ...]] = []
        v_off = o_off = 0
        live, closed = self._node_live, self._breaker_closed
        for plan, snap, t_s in segment:
            values = snap.values
            good = snap.quality == 0                # drivers.Quality.GOOD
            if plan.n_rows:
                rows.append(plan)
                row_off.append(v_off)
                row_t.append(t_s)
                row_good.append(good)
                vals.append(values)
                vals.append(_UNREAD_POLE)
                v_off += len(values) + 1
            if plan.outlet_k.size:      # the plan was built from this layout's outlet count
                outs.append(plan)
                out_on.append(snap.outlets_on)
                out_off.append(o_off)
                out_t.append(t_s)
                o_off += len(snap.outlets_on)
            inlet_node = plan.node
            if inlet_node is not None:
                if good and plan.volts:
                    # a lost feed shows as no voltage on any phase (as in the dry run)
                    live[inlet_node] = max(plan.volts_of(values)) >= plan.live_v
                if snap.breaker_open is not None:
                    closed[inlet_node] = not snap.breaker_open
            if snap.bank_breaker_open and plan.bank_nodes.size:
                banks.append(plan)
                bank_open.append(snap.bank_breaker_open)
        if rows:
            counts = np.fromiter((p.n_rows for p in rows), np.int64, len(rows))
            flat = np.fromiter(itertools.chain.from_iterable(vals), np.float64, v_off)
            idx = np.concatenate([p.row_idx for p in rows])
            idx += np.repeat(np.asarray(row_off, dtype=np.int64), counts)[:, None]
            currents = flat[idx]
            currents[~np.repeat(np.asarray(row_good, dtype=bool), counts)] = math.nan
            self._batch.append((np.concatenate([p.row_nodes for p in rows]), currents,
                                np.repeat(np.asarray(row_t), counts)))
        if outs:
            counts = np.fromiter((p.outlet_k.size for p in outs), np.int64, len(outs))
            on = np.fromiter(itertools.chain.from_iterable(out_on), bool, o_off)
            pos = np.concatenate([p.outlet_pos for p in outs])
            pos += np.repeat(np.asarray(out_off, dtype=np.int64), counts)
            k = np.concatenate([p.outlet_k for p in outs])
            t = np.repeat(np.asarray(out_t), counts)
            if len({id(p) for p in outs}) < len(outs):      # a device read twice
                last = _last_of(k)
                k, pos, t = k[last], pos[last], t[last]
            self._outlet_on[k] = on[pos]
            self._outlet_seen_s[k] = t
        if banks:
            # a bank's breaker as its PDU read it last (a PDU that reads fewer banks than its
            # layout has leaves the others as they were)
            nodes = np.concatenate([p.bank_nodes[:len(b)] for p, b in zip(
                banks, bank_open, strict=True)])
            is_open = np.fromiter(itertools.chain.from_iterable(
                b[:p.bank_nodes.size] for p, b in zip(banks, bank_open, strict=True)), bool,
                nodes.size)
            if len({id(p) for p in banks}) < len(banks):
                last = _last_of(nodes)
                nodes, is_open = nodes[last], is_open[last]
            closed[nodes] = ~is_open

    def _flush_node_batch(self) -> None:
        """Hand the store the node currents collected since the last tick, vectorized. A node
        read twice (a tick that came late) is offered its readings in order, one round each."""
        batch, self._batch = self._batch, []
        if not batch:
            return
        idx = np.concatenate([b[0] for b in batch])
        i_a = np.concatenate([b[1] for b in batch])
        t_s = np.concatenate([b[2] for b in batch])
        for sel in _rounds(idx, self.topo.n_nodes):
            self.store.ingest_nodes(idx[sel], i_a[sel], t_s[sel])

    def _device_lost(self, key: str) -> None:
        self._lost_queued.discard(key)
        self._outlet_seen_s[self._outlets_of_device.get(key, [])] = -math.inf

    def _on_agent(self, server: int) -> Callable[[str, Any], None]:
        name = self.topo.server_id[server]

        def handle(topic: str, p: AgentTelemetry) -> None:
            if p.server != name:
                self._rejected["mqtt", "wrong_server"] += 1
                return
            gpus = p.gpus
            self._agent_rows.append((server, [g.power_w for g in gpus],
                                     [g.limit_w for g in gpus], self.clock()))
        return handle

    def _on_ack(self, topic: str, ack: CapAck) -> None:
        sent = self._cap_action.pop(ack.id, None)
        if sent is None:
            # not a command in flight (never sent, or written off: _expire_caps): dropped
            self._rejected["mqtt", "unknown_ack"] += 1
            return
        action = sent[0]
        if self._audit is None:
            return
        audit = self._audit

        def record() -> None:
            with contextlib.suppress(AuditWriteError):
                audit.result(action, ack.ok, {"server": ack.server,
                                              "enforced_w": list(ack.enforced_w)},
                             ack.reason or "")
        self._pending.append(record)

    def _on_zone(self, zone: int) -> Callable[[str, Any], None]:
        name = self.topo.zone_id[zone]

        def handle(topic: str, p: ZoneTelemetry) -> None:
            if p.zone != name:
                self._rejected["mqtt", "wrong_zone"] += 1
                return
            t = self.clock()

            def apply() -> None:
                self._zone_inlet_c[zone] = p.inlet_c
                self._zone_t_s[zone] = t
            self._pending.append(apply)
        return handle

    def _subscriptions(self) -> list[Subscription]:
        subs: list[Subscription] = []
        for spec in self.bindings.agents:
            s = self._server_of.get(spec.server)
            if s is None:
                continue
            subs.append(Subscription(spec.topics.telemetry, AgentTelemetry, self._on_agent(s)))
            subs.append(Subscription(spec.topics.caps_ack, CapAck, self._on_ack, qos=1))
        for z, zone in enumerate(self.topo.zone_id):
            subs.append(Subscription(zone_topic(zone), ZoneTelemetry, self._on_zone(z)))
        return subs

    # ================================================================== operator commands
    def status(self) -> dict[str, Any]:
        st = self.state
        t = self.topo
        energized = self._energized()
        ticks, recent = self.metrics.recent_ticks(STATUS_TICKS)
        return {
            "mode": st.mode.value, "reason": st.mode_reason, "ramp_active": st.ramp_active,
            "paused": st.paused, "safe_reason": st.safe_reason or None,
            "hold_reasons": list(st.hold_reasons),
            "alarms": sorted(st.alarms_active | self._telemetry_alarms
                             | ({"audit:log"} if self._audit_failed else set())),
            "energized_servers": energized, "total_servers": t.n_servers,
            "outlets_on": int(self._outlet_on.sum()), "outlets": self.ctx.n_outlets,
            "ticks": self.ticks, "hall": t.name, "config": self.source,
            "telemetry": self.store.counters(),
            "rejected": self.rejections(),
            "mqtt": None if self._link is None else {
                "received": self._link.counters.received,
                "accepted": self._link.counters.accepted},
            "transitions": [{"t_s": round(a, 3), "from": b, "to": c, "reason": r}
                            for a, b, c, r in st.transitions[-20:]],
            "tick_durations": {
                "count": ticks, "recent_s": [round(d, 6) for d in recent],
                "phases_s": {name: [None if d is None else round(d, 6) for d in values]
                             for name, values in
                             self.metrics.recent_tick_phases(STATUS_TICKS).items()}},
            "drivers": self._driver_counters(),
        }

    def _energized(self) -> int:
        """Servers with at least one PSU energized now."""
        on = self.state.psu_on_s <= self.clock()
        return int(np.unique(self.topo.psu_server[on]).size) if on.any() else 0

    def _driver_counters(self) -> dict[str, Any]:
        """The drivers' totals: Modbus polls (ok, errors, overruns: polls that could not run
        on time) and MQTT messages (received, accepted, rejected, published, dropped)."""
        out: dict[str, Any] = {}
        poller = self._poller
        if poller is not None:
            stats = poller.stats.values()
            out["modbus"] = {
                "devices": len(poller.devices),
                "connected": sum(d.connected for d in poller.devices.values()),
                "polls": sum(x.polls for x in stats), "ok": sum(x.ok for x in stats),
                "errors": sum(x.errors for x in stats),
                "overruns": sum(x.overruns for x in stats)}
        if self._link is not None:
            c = self._link.counters
            out["mqtt"] = {"received": c.received, "accepted": c.accepted,
                           "rejected": c.rejected_total, "unmatched": c.unmatched,
                           "published": c.published, "dropped": c.dropped}
        return out

    def rejections(self) -> dict[str, dict[str, int]]:
        """Every input refused so far, by source and reason (monotonic counts): ``mqtt``
        (payloads that break their schema, by :class:`~drivers.errors.PayloadError` reason,
        or name another server or zone than their topic), ``telemetry`` (readings the store
        found implausible), ``modbus`` (reads refused by the poller) and ``http`` (operator
        API requests answered with an error, by status)."""
        out: dict[str, dict[str, int]] = {"mqtt": {}, "telemetry": dict(self.store.rejected),
                                          "modbus": {}, "http": {}}
        if self._link is not None:
            out["mqtt"].update(self._link.counters.rejected)
        for (source, reason), n in self._rejected.items():
            out[source][reason] = out[source].get(reason, 0) + n
        if self._poller is not None:
            out["modbus"].update(self._poller.rejections())
        if self.api is not None:
            out["http"].update(self.api.rejected)
        return out

    def plan(self) -> dict[str, Any]:
        p = self.state.plan
        if p is None:
            return {"plan": None}
        return {"plan": {"strategy": p.strategy, "makespan_s": _finite(p.makespan_s),
                         "lower_bound_s": _finite(p.lower_bound.total_s),
                         "servers_on": p.servers_on, "status": p.status_counts(),
                         "t0_s": self.state.plan_t0_s,
                         "final_cap_w_min": float(p.final_cap_w.min(initial=math.nan)),
                         "final_cap_w_max": float(p.final_cap_w.max(initial=math.nan))}}

    def _command(self, name: str, fn: Callable[[CoreState], CoreState]) -> dict[str, Any]:
        try:
            fn(self.state)  # refuse now what cannot be done (the tick applies it)
        except core.CommandRefusedError as exc:
            raise CommandRefused(str(exc)) from None
        self._commands.append(fn)
        self._audit_event("operator", command=name)
        return {"accepted": name, "mode": self.state.mode.value}

    def start_ramp(self) -> dict[str, Any]:
        return self._command("start", lambda s: core.start_ramp(self.ctx, s, self.clock()))

    def pause(self) -> dict[str, Any]:
        return self._command("pause", core.pause)

    def resume(self) -> dict[str, Any]:
        return self._command("resume", lambda s: core.resume(self.ctx, s, self.store))

    def abort(self) -> dict[str, Any]:
        return self._command("abort", core.abort)

    # ================================================================== life
    async def run(self) -> None:
        """Run until :meth:`stop` (SIGTERM, Ctrl-C) or a driver failure."""
        o = self.options
        meter_cfgs = [c for c in self.bindings.modbus]
        with AuditLog.open(o.audit_path, fsync=o.fsync, clock=self.clock,
                           wall_clock=self.wall_clock) as audit:
            self._audit = audit
            link = None
            if o.mqtt is not None or o.mqtt_url is not None:
                mqtt = o.mqtt or MqttConfig.from_url(o.mqtt_url or "",
                                                     client_id=f"{o.issuer}-controller")
                link = MqttLink(mqtt, allowed_topics=command_allowlist(self.bindings),
                                subscriptions=self._subscriptions(),
                                status=StatusSpec(CONTROLLER_STATUS_TOPIC,
                                                  lambda: self._status_payload(),
                                                  lambda: self._status_payload("OFFLINE")),
                                clock=self.wall_clock)
            async with contextlib.AsyncExitStack() as stack:
                poller = await stack.enter_async_context(ModbusPoller(
                    meter_cfgs, period_s=min(self.settings.tick_s, 1.0) / self._speed,
                    on_snapshot=self._on_snapshot, on_error=self._on_error,
                    allowed_coils=coil_allowlist(self.bindings, self._layout)))
                self._poller = poller
                # coil writes go through the poller's own client of each device (one client
                # per device: its requests run one at a time)
                self._actuators = {cfg.key: poller.devices[cfg.key]
                                   for cfg in self.bindings.modbus if cfg.actuator}
                if link is not None:
                    self._link = await stack.enter_async_context(link)
                self.api = await stack.enter_async_context(
                    OperatorApi(self, o.http_host, o.http_port, token=o.token or ""))
                if o.metrics_port is not None:
                    self.exporter = stack.enter_context(
                        self.metrics.serve(o.metrics_host, o.metrics_port))
                self._resume_from_log()
                if o.settle_heap:       # what is built now lives as long as the service
                    heap.settle()
                switch_s = sys.getswitchinterval()
                sys.setswitchinterval(SWITCH_INTERVAL_S)
                stack.callback(sys.setswitchinterval, switch_s)
                if self.on_ready is not None:
                    self.on_ready({"event": "ready", "api": self.api.url,
                                   "metrics": None if self.exporter is None
                                   else self.exporter.url,
                                   "audit": str(o.audit_path), "mqtt": o.mqtt_url,
                                   "token_file": o.token_file,
                                   "devices": len(meter_cfgs), "outlets": self.ctx.n_outlets})
                try:
                    async with asyncio.TaskGroup() as tg:
                        loop_task = tg.create_task(self._loop(), name="control loop")
                        watch = [tg.create_task(poller.wait(), name="poller")]
                        if self._link is not None:
                            watch.append(tg.create_task(self._link.wait(), name="mqtt"))
                        await self._stop.wait()
                        loop_task.cancel()
                        for w in watch:
                            w.cancel()
                finally:
                    self._stop.set()
                    await self._stop_switching()
                    await self._stop_caps()
                    self._drain()       # the last switches' and caps' results
            self._audit_event("stop", mode=self.state.mode.value)
            self._audit = None

    def stop(self) -> None:
        self._stop.set()

    async def _loop(self) -> None:
        tick = self.settings.tick_s
        started = self._started_s = self.clock()
        # rule 8: wait for every actuator's outlet states before the first decision
        while self.options.startup_wait_s > 0 and self.ctx.n_outlets:
            self._drain()
            if np.isfinite(self._outlet_seen_s).all() or \
                    self.clock() - started >= self.options.startup_wait_s:
                break
            await asyncio.sleep(0.05)
        next_s = self.clock()
        # ends on ``_stop`` as well as on the cancellation: the tick awaits MQTT publishes, and
        # on Python 3.11 the wait_for inside aiomqtt's publish can swallow a cancellation
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # rule 9: an unexpected error moves to SAFE
                log.exception("control tick failed: going SAFE")
                self.state = core.enter_safe(self.state, f"internal error: {exc!r}",
                                             self.clock())
                self._audit_event("state", to="SAFE", reason=f"internal error: {exc!r}")
            self.metrics.observe_tick(time.perf_counter() - t0)
            self.metrics.observe_tick_phases(self._phases)
            self._phases = {}
            count, recent = self.metrics.recent_ticks(TICK_LOG_EVERY)
            if count % TICK_LOG_EVERY == 0:
                log.info("tick durations %d-%d (ms): %s", count - len(recent) + 1, count,
                         " ".join(f"{d * 1e3:.1f}" for d in recent))
            next_s += tick
            delay = next_s - self.clock()
            if delay < 0:
                log.warning("control tick overran by %.3f s", -delay)
                next_s = self.clock()
                delay = 0.0
            await asyncio.sleep(delay / self._speed)

    def _drain(self) -> None:
        pending, self._pending = self._pending, []
        audit = self._audit
        try:
            # the acks' results of a tick in one audit batch (one fsync)
            with audit.batch() if audit is not None else contextlib.nullcontext():
                segment: list[tuple[_SnapshotPlan, Snapshot, float]] = []
                for item in pending:
                    if isinstance(item, tuple):
                        key, snap, t_s = item
                        segment.append((self._snapshot_plan(key, snap), snap, t_s))
                        continue
                    if segment:     # what came before this callback, applied before it
                        self._apply_snapshots(segment)
                        segment = []
                    item()
                if segment:
                    self._apply_snapshots(segment)
                self._expire_caps()
        except AuditWriteError as exc:
            log.error("audit log refused a record: %s; going SAFE", exc)
            self.state = core.enter_safe(self.state, f"audit log: {exc}", self.clock())
        self._flush_node_batch()
        self._flush_agent_rows()

    def _flush_agent_rows(self) -> None:
        """Hand the store the agents' readings since the last tick, vectorized per GPU count
        (:meth:`TelemetryStore.ingest_server_rows`), in the order they came within a count."""
        rows, self._agent_rows = self._agent_rows, []
        if not rows:
            return
        groups: dict[tuple[int, int], list[tuple[int, list[float], list[float], float]]] = {}
        for row in rows:
            groups.setdefault((len(row[1]), len(row[2])), []).append(row)
        for (n_power, n_caps), group in groups.items():
            # ragged caps (n_power != n_caps) take the store's reading-by-reading path
            servers = np.fromiter((r[0] for r in group), np.int64, len(group))
            power = np.array([r[1] for r in group], dtype=np.float64).reshape(len(group), n_power)
            caps = np.array([r[2] for r in group], dtype=np.float64).reshape(len(group), n_caps)
            t_s = np.fromiter((r[3] for r in group), np.float64, len(group))
            # a server that reported twice since the last tick (a late tick): its readings in
            # order, one round each, every round on the store's array path
            for sel in _rounds(servers, self.topo.n_servers):
                self.store.ingest_server_rows(servers[sel], power[sel], caps[sel], t_s[sel])

    def _readbacks(self, now: float) -> Readbacks:
        known = now - self._outlet_seen_s <= self.settings.meter_stale_s
        inlet = np.where(now - self._zone_t_s <= self.settings.meter_stale_s,
                         self._zone_inlet_c, math.nan)
        return Readbacks(self._outlet_on.copy(), known, self._breaker_closed.copy(), inlet,
                         node_live=self._node_live.copy())

    async def tick(self) -> None:
        """One control step: drain, refresh, decide (off the loop), act; the phases' durations
        in :attr:`_phases` (``metrics.TICK_PHASES``)."""
        t_drain = time.perf_counter()
        self._drain()
        now = self.clock()
        self.store.refresh()
        st = self.state
        # rule 8: the cap in force on a server found on that we did not command (after a
        # restart) counts as commanded
        on = np.zeros(self.topo.n_servers, bool)
        np.logical_or.at(on, self.topo.psu_server, st.psu_on_s <= now)
        adopt = on & ~np.isfinite(st.cap_cmd_w) & np.isfinite(self.store.server_cap_w)
        if adopt.any():
            cmd = st.cap_cmd_w.copy()
            cmd[adopt] = self.store.server_cap_w[adopt]
            st = st.replace(cap_cmd_w=cmd)
        for fn in self._commands:
            try:
                st = fn(st)
            except core.CommandRefusedError as exc:
                log.warning("operator command refused at the tick: %s", exc)
        self._commands.clear()
        rb = self._readbacks(now)
        if not self._reconciled:
            self._reconcile(rb)
        before = st.mode
        t_decide = time.perf_counter()
        phases = self._phases = {"drain": t_decide - t_drain}
        decision = await asyncio.to_thread(self._decide, rb, st, now)
        t_act = time.perf_counter()
        phases["decide"] = t_act - t_decide
        self.state = decision.state
        self._last = decision
        self.ticks += 1
        if self.state.mode != before:
            self._audit_event("state", **{"from": before.value, "to": self.state.mode.value,
                                          "reason": self.state.mode_reason})
            if self._link is not None:
                await self._link.publish_status()
        await self._act(decision.actions + self._lost_telemetry_alarms(now))
        await self._act(self._reissue_caps(now))
        self._export(decision)
        phases["act"] = time.perf_counter() - t_act

    def _decide(self, rb: Readbacks, st: CoreState, now: float) -> core.Decision:
        """:func:`core.decide` in the worker thread; its CPU time into the tick's phases."""
        t0 = time.thread_time()
        try:
            return core.decide(self.ctx, self.store, rb, st, now)
        finally:
            self._phases["decide_cpu"] = time.thread_time() - t0

    def _lost_telemetry_alarms(self, now: float) -> tuple[core.Alarm, ...]:
        """Rule 5 for what comes over MQTT (the core alarms the meters): node agents of
        energized servers that reported and went silent, and zone inlets silent for longer
        than ``meter_stale_s`` (a lost broker, a dead agent or sensor). The core already counts
        such servers at full power and holds the ramp on an unknown inlet; this says so, once
        per fault, until the readings come back."""
        on = np.zeros(self.topo.n_servers, bool)
        np.logical_or.at(on, self.topo.psu_server, self.state.psu_on_s <= now)
        silent = on & self.store.has_agent & (self.store.server_quality == Q_STALE)
        # a zone sensor that never reported is as unknown as one gone silent
        stale_s = self.settings.meter_stale_s
        zone_lost = now - np.maximum(self._zone_t_s, self._started_s) > stale_s
        want = {f"telemetry:zone:{z}" for z, lost in zip(self.topo.zone_id, zone_lost,
                                                         strict=True) if lost}
        if silent.any():
            want.add("telemetry:agents")
        out = []
        for code in sorted(want - self._telemetry_alarms):
            if code == "telemetry:agents":
                names = [self.topo.server_id[k] for k in np.flatnonzero(silent)]
                out.append(core.Alarm("telemetry", f"{len(names)} node agent(s) silent "
                                      f"({', '.join(names[:5])}): their servers count at full "
                                      "power", names[0]))
            else:
                zone = code.rsplit(":", 1)[1]
                out.append(core.Alarm("telemetry", f"zone {zone} inlet reading lost: no heat "
                                      "added to it", zone))
        for code in sorted(self._telemetry_alarms - want):
            what = "node agents report" if code == "telemetry:agents" else (
                f"zone {code.rsplit(':', 1)[1]} inlet reads")
            out.append(core.Alarm("telemetry", f"{what} again", None, active=False))
        self._telemetry_alarms = want
        return tuple(out)

    def _reissue_caps(self, now: float) -> tuple[core.CoreAction, ...]:
        """Reconcile desired against observed: a cap the agent reads back other than the one
        commanded (the command came while the agent was down, a reboot, a driver reload) is
        commanded again, at most every ``CAP_RETRY_S``."""
        cmd = self.state.cap_cmd_w
        seen = self.store.server_cap_w
        good = self.store.has_agent & (self.store.server_quality == 0)
        with np.errstate(invalid="ignore"):
            off = good & np.isfinite(cmd) & (np.abs(seen - cmd) > core.CAP_CONFIRM_TOLERANCE_W)
        due = off & (now - self._cap_sent_s >= CAP_RETRY_S)
        if not due.any():
            return ()
        servers = np.flatnonzero(due).astype(np.int32)
        self._cap_sent_s[servers] = now
        return (core.SetCaps(servers, cmd[servers],
                             core.Reason("cap-readback", None, float(seen[servers[0]]),
                                         float(cmd[servers[0]]), None, "W")),)

    # ================================================================== acting
    async def _act(self, actions: tuple[core.CoreAction, ...]) -> None:
        """Carry out a tick's actions in their order. Cap commands are published here; outlet
        switches are queued to their device's worker (:meth:`_switch_worker`), so that a tick
        never waits for the switch-on times of its plan nor for slow devices."""
        alarms = [a for a in actions if isinstance(a, core.Alarm)]
        if alarms:
            self._alarms(alarms)
        for a in actions:
            if isinstance(a, core.Alarm):
                continue
            if self._stop.is_set():
                return  # stopping: leave the hardware as it is
            if self.state.mode == Mode.SAFE and isinstance(a, core.Energize):
                continue
            try:
                if isinstance(a, core.Energize):
                    self._queue_switches(a.outlets, a.at_s, True, a.reason)
                elif isinstance(a, core.SwitchOff):
                    self._queue_switches(a.outlets, np.full(a.outlets.size, self.clock()),
                                         False, a.reason)
                elif isinstance(a, core.SetCaps):
                    self._caps(a)
            except AuditWriteError as exc:
                log.error("audit log refused a record: %s; going SAFE, nothing sent", exc)
                self.state = core.enter_safe(self.state, f"audit log: {exc}", self.clock())
                self._audit_failed = True   # alarmed in the status: the log cannot say it
                return

    def _alarms(self, alarms: list[core.Alarm]) -> None:
        """One audit record and at most a few log lines per tick, however many nodes raise or
        clear an alarm at once (a dead gateway takes thousands of metered nodes with it)."""
        listed = [{"code": a.code, "node": a.node, "active": a.active, "message": a.message}
                  for a in alarms[:MAX_ALARMS_LISTED]]
        self._audit_event("alarm", count=len(alarms), alarms=listed,
                          node=alarms[0].node, code=alarms[0].code)
        for a in alarms[:MAX_ALARMS_LOGGED]:
            log.warning("alarm %s %s: %s", a.code, "raised" if a.active else "cleared",
                        a.message)
        if len(alarms) > MAX_ALARMS_LOGGED:
            log.warning("... and %d more alarms this tick (all in the audit log up to %d)",
                        len(alarms) - MAX_ALARMS_LOGGED, MAX_ALARMS_LISTED)

    def _queue_switches(self, outlets: npt.NDArray[np.int32], at_s: F64, on: bool,
                        reason: core.Reason) -> None:
        """Write the intents of ``outlets`` in one audit batch (durable before anything is
        sent: rule 7), then hand each to its device's worker, which sends it at its time.

        A refused batch raises :class:`AuditWriteError` and nothing is queued."""
        assert self._audit is not None
        items: list[_Switch] = []
        with self._audit.batch():
            for k in np.argsort(at_s, kind="stable").tolist():
                outlet = int(outlets[k])
                key, n = self._outlet_addr[outlet]
                node_id = self.topo.node_id[self.ctx.outlet_node[outlet]]
                action_id = self._audit.intent(
                    {"type": "switch_outlet", "targets": [node_id], "on": on,
                     "device": key, "outlet": n}, reason.to_dict())
                items.append(_Switch(float(at_s[k]), action_id, outlet, on, key, n, node_id))
        for item in items:
            queue = self._switch_queue.setdefault(item.key, [])
            heapq.heappush(queue, item)
            worker = self._switch_workers.get(item.key)
            if worker is None or worker.done():
                self._switch_workers[item.key] = asyncio.create_task(
                    self._switch_worker(item.key), name=f"switch {item.key}")
            else:
                self._switch_wake.setdefault(item.key, asyncio.Event()).set()

    async def _switch_worker(self, key: str) -> None:
        """Send the queued switches of one device in time order, one at a time.

        A switch-on is sent at its planned time and never sooner than its PDU's inrush guard
        after the previous switch-on of this device *completed* (the outlet switched somewhere
        between send and reply, so that spacing holds whatever the device's latency). Results
        are written at the next tick's drain (one ``fsync`` for all), as are the state changes
        of a switch-on that failed; nothing here touches the core's state directly, which a
        decision may be computing off the event loop meanwhile."""
        queue = self._switch_queue.setdefault(key, [])
        wake = self._switch_wake.setdefault(key, asyncio.Event())
        guard = self.topo.inrush_guard_s
        last_on_s = -math.inf
        try:
            while queue and not self._stop.is_set():
                item = queue[0]
                due_s = item.at_s
                if item.on:
                    due_s = max(due_s, last_on_s + float(guard[self.ctx.outlet_node[item.outlet]]))
                wait_s = due_s - self.clock()
                if wait_s > 0:
                    wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait_s / self._speed):
                            await wake.wait()   # an earlier switch was queued: look again
                    continue
                heapq.heappop(queue)
                if item.on and self.state.mode == Mode.SAFE:
                    self._switch_done(item, None, "not sent: the controller is SAFE")
                    continue
                dev = self._actuators.get(key)
                try:
                    if dev is None:
                        raise RuntimeError(f"no actuator for {key}")
                    state = await dev.switch_outlet(item.n, item.on)
                except (DriverError, RuntimeError) as exc:
                    self._switch_done(item, None, str(exc))
                else:
                    self._switch_done(item, state, "")
                if item.on:
                    last_on_s = self.clock()
        except Exception as exc:  # rule 9: a bug here moves the controller to SAFE
            log.exception("outlet switching on %s failed: going SAFE", key)
            self._safe_at_drain(f"internal error switching on {key}: {exc!r}")

    def _switch_done(self, item: _Switch, state: bool | None, error: str, *,
                     quiet: bool = False) -> None:
        """Record what a switch did (``state``: the outlet read back, None: not done)."""
        what = "switch_on" if item.on else "switch_off"
        audit = self._audit
        if state is not None:
            self._outlet_on[item.outlet] = state
            self._outlet_seen_s[item.outlet] = self.clock()
            self.metrics.count_action(what, "ok")
            if audit is not None:
                self._pending.append(lambda: audit.result(item.action_id, True, {"on": state}))
            return
        self.metrics.count_action(what, "failed")
        if not quiet:
            log.error("switching %s %s failed: %s", item.node_id, "on" if item.on else "off",
                      error)
        if audit is not None:
            self._pending.append(lambda: audit.result(item.action_id, False, {}, error))
        if item.on:
            outlet = item.outlet
            self._pending.append(lambda: self._not_energized(outlet))

    async def _stop_switching(self) -> None:
        """On stop: a switch being sent finishes (briefly), the queued ones are not sent."""
        workers = [w for w in self._switch_workers.values() if not w.done()]
        for wake in self._switch_wake.values():
            wake.set()
        await _finish_or_cancel(workers)
        for queue in self._switch_queue.values():
            while queue:
                item = heapq.heappop(queue)
                self._switch_done(item, None, "not sent: the service stopped", quiet=True)
        self._switch_workers.clear()

    def _not_energized(self, outlet: int) -> None:
        """A switch-on that was refused or not confirmed: the outlet is off, so it may be
        switched on again later (never twice: it is not on)."""
        psus = np.flatnonzero(self.ctx.psu_outlet == outlet)
        st = self.state
        cmd = st.psu_commanded.copy()
        cmd[psus] = False
        on_s = st.psu_on_s.copy()
        on_s[psus] = math.inf
        self.state = st.replace(psu_commanded=cmd, psu_on_s=on_s)

    def _caps(self, a: core.SetCaps) -> None:
        """Every cap of ``a``: the intents written in one audit batch (one ``fsync`` for the
        tick, not one per server), then, once they are durable, the commands handed to the
        cap sender (:meth:`_cap_sender`), so that the tick never waits for the broker."""
        assert self._audit is not None
        link = self._link
        ready: list[_CapSend] = []
        with self._audit.batch():
            for s, cap in zip(a.servers.tolist(), a.cap_w.tolist(), strict=True):
                self._cap_sent_s[s] = self.clock()
                server = self.topo.server_id[s]
                spec = self._agent_specs.get(server)
                action_id = self._audit.intent(
                    {"type": "set_caps", "targets": [server], "cap_w": cap},
                    a.reason.to_dict())
                if spec is None or link is None:
                    self._audit.result(action_id, False, {}, "no agent bound or no broker")
                    self.metrics.count_action("set_caps", "failed")
                    continue
                cmd_id = f"{self.options.issuer}:{action_id:06d}"
                payload = CapCommand(v=1, t=self.wall_clock(), id=cmd_id,
                                     issuer=self.options.issuer, seq=action_id, server=server,
                                     cap_w=[float(cap)], valid_s=CAP_VALID_S)
                if self.options.command_key is not None:
                    payload = sign_command(payload, self._agent_key(server))
                ready.append(_CapSend(action_id, cmd_id, spec.topics.caps_set, payload))
        # the block has exited: every intent above is durable (a failed fsync raised instead)
        if not ready:
            return
        self._cap_outbox.append(ready)
        if self._cap_task is None or self._cap_task.done():
            self._cap_task = asyncio.create_task(self._cap_sender(), name="cap sender")

    async def _cap_sender(self) -> None:
        """Publish the queued cap commands, a tick's batch after the one before. A batch's
        publishes go out at once, in its order (each leaves for the broker when its task first
        runs, and those run in order), and are then awaited together: a tick's caps cost one
        round trip to the broker, not one per server, and a slow broker delays the next batch,
        never a tick. The command is registered before it leaves, so that an agent's
        acknowledgement cannot come before it is known; one not sent is unregistered and its
        failure written at the next tick's drain."""
        try:
            while self._cap_outbox and not self._stop.is_set():
                batch = self._cap_outbox.popleft()
                link = self._link
                if link is None:
                    self._caps_not_sent(batch, "not sent: no broker")
                    continue
                sent_s = self.wall_clock()
                for item in batch:
                    self._cap_action[item.cmd_id] = (item.action_id, sent_s)
                try:
                    results = await asyncio.gather(
                        *(link.publish(item.topic, item.payload, qos=1) for item in batch),
                        return_exceptions=True)
                except asyncio.CancelledError:     # stopping: their fate is not known
                    self._caps_not_sent(batch, "unconfirmed: the service stopped before the "
                                        "broker acknowledged it")
                    raise
                for item, result in zip(batch, results, strict=True):
                    if result is None:
                        self.metrics.count_action("set_caps", "sent")
                    elif isinstance(result, DriverError):
                        self._cap_action.pop(item.cmd_id, None)
                        self._caps_not_sent([item], f"not sent: {result}")
                    else:
                        raise result
        except Exception as exc:  # rule 9: a bug here moves the controller to SAFE
            log.exception("publishing caps failed: going SAFE")
            self._safe_at_drain(f"internal error publishing caps: {exc!r}")

    def _expire_caps(self) -> None:
        """Write off the cap commands unacknowledged for ``CAP_ACK_WAIT_S`` (an agent that was
        down, a lost message): each gets its result, so that no intent stays open and the
        table of commands in flight stays bounded. The core never relied on the ack: it counts
        the server at full power until a read-back shows the cap, and commands it again."""
        if not self._cap_action:
            return
        oldest_s = self.wall_clock() - CAP_ACK_WAIT_S
        audit = self._audit
        expired: list[tuple[str, int]] = []
        for cmd_id, (action_id, sent_s) in self._cap_action.items():
            if sent_s > oldest_s:
                break                 # in the order they left: the rest are younger
            expired.append((cmd_id, action_id))
        for cmd_id, action_id in expired:
            del self._cap_action[cmd_id]
            self.metrics.count_action("set_caps", "unacknowledged")
            if audit is not None:
                audit.result(action_id, False, {},
                             f"no acknowledgement within {CAP_ACK_WAIT_S:g} s")

    def _caps_not_sent(self, batch: list[_CapSend], error: str) -> None:
        """Caps whose intents are durable but that never left: each one's failure recorded at
        the next drain. Not confirmed, the core counts the server at full power until a
        read-back shows the cap; it is commanded again when it changes."""
        audit = self._audit
        for item in batch:
            self.metrics.count_action("set_caps", "failed")
            if audit is not None:
                self._pending.append(functools.partial(
                    audit.result, item.action_id, False, {}, error))

    async def _stop_caps(self) -> None:
        """On stop: a batch being published finishes (briefly), the queued ones are not sent."""
        if self._cap_task is not None and not self._cap_task.done():
            await _finish_or_cancel([self._cap_task])
        while self._cap_outbox:
            self._caps_not_sent(self._cap_outbox.popleft(), "not sent: the service stopped")
        self._cap_task = None

    # ================================================================== restart
    def _resume_from_log(self) -> None:
        """A ramp the audit log shows active when the service stopped resumes."""
        path = self.options.audit_path
        active = False
        with contextlib.suppress(Exception):
            for rec in read_audit(path):
                if rec.kind == "operator":
                    cmd = rec.get("command")
                    if cmd in ("start", "resume"):
                        active = True
                    elif cmd == "abort":
                        active = False
                elif rec.kind == "ramp":
                    active = bool(rec.get("active"))
        if active:
            log.warning("the audit log shows a ramp in progress: resuming it from read-backs")
            self._commands.append(lambda s: core.start_ramp(self.ctx, s, self.clock())
                                  if not s.ramp_active else s)
            self._audit_event("ramp", active=True, resumed=True)

    def _reconcile(self, rb: Readbacks) -> None:
        """Write the results of intents a crash left without one, from the read-backs."""
        self._reconciled = True
        if self._audit is None:
            return
        try:
            pending = pending_intents(self.options.audit_path)
        except Exception:
            log.exception("could not read pending intents")
            return
        names = {self.topo.node_id[n]: k for k, n in enumerate(self.ctx.outlet_node)}
        for rec in pending:
            action = rec.get("action") or {}
            targets = action.get("targets") or []
            if action.get("type") == "switch_outlet" and targets:
                k = names.get(targets[0])
                if k is None:
                    continue
                known = bool(rb.outlet_known[k])
                state = bool(rb.outlet_on[k]) if known else None
                self._audit.result(rec.seq, known and state == action.get("on"),
                                   {"on": state, "reconciled": True},
                                   "reconciled after restart from the read-back")
            elif action.get("type") == "set_caps":
                self._audit.result(rec.seq, False, {"reconciled": True},
                                   "unknown after restart: caps read back from agents")

    # ================================================================== outputs
    def _status_payload(self, state: str | None = None) -> ControllerStatus:
        return ControllerStatus.model_validate(
            {"v": 1, "t": self.wall_clock(), "state": state or self.state.mode.value,
             "issuer": self.options.issuer})

    def _audit_event(self, kind: str, **fields: Any) -> None:
        if self._audit is None:
            return
        try:
            self._audit.event(kind, **fields)
        except AuditWriteError as exc:
            log.error("audit log refused an event: %s", exc)
            self.state = core.enter_safe(self.state, f"audit log: {exc}", self.clock())
            self._audit_failed = True

    def _export(self, d: core.Decision) -> None:
        m = self.metrics
        m.set_mode(self.state.mode.value)
        w = self._watched
        load = np.take(d.measured_a, w, axis=0)
        limit = row_max(np.take(self.topo.limit_a, w, axis=0))
        m.set_node_loads([self.topo.node_id[i] for i in w], load, limit,
                         limit - row_max(load))
        m.set_stale(int(self.store.unknown_nodes().sum()))
        m.set_telemetry_counters({k: v for k, v in self.store.counters().items()
                                  if k != "accepted"})
        m.set_alarms(len(self.state.alarms_active))
        m.set_servers(self._energized(), self.topo.n_servers)
        m.set_input_rejections({(source, reason): n
                                for source, reasons in self.rejections().items()
                                for reason, n in reasons.items()})


async def _finish_or_cancel(tasks: list[asyncio.Task[None]]) -> None:
    """Let ``tasks`` finish for up to ``SWITCH_STOP_WAIT_S``, then cancel the rest and wait."""
    if not tasks:
        return
    _done, late = await asyncio.wait(tasks, timeout=SWITCH_STOP_WAIT_S)
    for task in late:
        task.cancel()
    await asyncio.gather(*late, return_exceptions=True)


def _last_of(idx: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """The positions of each value's last occurrence in ``idx`` (fancy assignment with
    repeated indices promises no order, so a value read twice is assigned from here)."""
    _, rev = np.unique(idx[::-1], return_index=True)
    return np.asarray(idx.size - 1 - rev, dtype=np.int64)


def _rounds(idx: npt.NDArray[np.int64], n: int) -> list[npt.NDArray[np.bool_] | slice]:
    """Selections of ``idx`` (values in ``[0, n)``) in which each value appears at most once:
    the first reading of each, then the second of those read twice, and so on, each in the
    order they came. One selection of everything when no value repeats."""
    if idx.size == 0 or np.bincount(idx, minlength=n).max() <= 1:
        return [slice(None)]
    order = np.argsort(idx, kind="stable")
    ordered = idx[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    rounds = np.empty(idx.size, dtype=np.int64)
    rounds[order] = np.arange(idx.size) - np.repeat(starts, np.diff(np.r_[starts, idx.size]))
    return [rounds == k for k in range(int(rounds.max()) + 1)]


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def install_signal_handlers(service: Service) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, service.stop)


def ready_line(info: dict[str, Any]) -> str:
    return json.dumps(info, sort_keys=True)
