"""The telemetry store: the latest trusted reading of every bound quantity.

The controller sees the hall through this store only. Drivers hand it plain numbers with a
timestamp (the adapters in the service turn driver snapshots into calls of :meth:`ingest_node`
and :meth:`ingest_server`); the store decides whether to trust them:

* **missing**: a metered node that never reported;
* **stale**: the last accepted reading is older than ``meter_stale_s`` (``agent_stale_s`` for
  node agents) on the injected monotonic clock;
* **implausible**: NaN or infinite, negative current or power, beyond the physical range (more
  than ``range_x`` × the node's rating on a pole: its breaker would have opened), a pole the node
  does not have carrying current, a timestamp from the future, or an impossible jump (a change of
  more than ``max_jump_fraction`` × rating in one update that the next reading does not confirm:
  a real step persists, a glitch does not);
* **inconsistent**: a node whose children are all metered and fresh, and whose reading disagrees
  with their sum beyond ``sum_tolerance`` of its rating plus ``sum_tolerance_a``.

A node whose reading is not good is *unknown*: the decision core admits no new load below it and
assumes the worst case for it (DESIGN.md safety rule 5). Every rejected input is counted by
reason; a fault is logged once at WARNING when it starts and once at INFO when it clears.

Nothing here blocks: ingesting is a few array writes, :meth:`refresh` is vectorized.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import numpy.typing as npt

from controller.model import ControllerSettings
from controller.topology import Topology
from drivers import LogBudget
from kernels.rows import row_all
from kernels.tick import (
    READING_ABSENT_POLE,
    READING_FUTURE,
    READING_JUMP,
    READING_NEGATIVE,
    READING_NOT_FINITE,
    READING_OUT_OF_ORDER,
    READING_OUT_OF_RANGE,
    READING_TAKEN,
    SERVER_TAKEN,
    SERVER_UNBOUND,
    _node_quality_into,
    _screen_readings_into,
    _screen_servers_into,
)

log = logging.getLogger(__name__)

#: The store writes at most this many fault and clear lines per ``FAULT_LOG_WINDOW_S`` (wall
#: time); one summary line per window counts the rest (``drivers.LogBudget``). Every rejection
#: is still counted (``counters()``, the metrics) and every alarm is in the audit log.
FAULT_LOG_LINES = 20
FAULT_LOG_WINDOW_S = 10.0

F64 = npt.NDArray[np.float64]


class Quality(IntEnum):
    """Quality of a node's or server's latest reading. Only GOOD is trusted."""

    GOOD = 0
    MISSING = 1
    STALE = 2
    IMPLAUSIBLE = 3
    INCONSISTENT = 4


# The codes as numpy scalars, for the quality arrays: numpy compares an array with an IntEnum
# member about ten times slower than with a plain integer (57,506 nodes: 30 against 3 us), and
# the tick compares several times
Q_GOOD, Q_MISSING, Q_STALE, Q_INCONSISTENT = (
    np.int8(q) for q in (Quality.GOOD, Quality.MISSING, Quality.STALE, Quality.INCONSISTENT))

@dataclass(frozen=True, slots=True)
class PlausibilityLimits:
    """Bounds beyond which a reading cannot be true (fractions of the node's rating)."""

    range_x: float = 20.0
    max_jump_fraction: float = 0.5
    sum_tolerance: float = 0.05
    sum_tolerance_a: float = 1.0
    future_tolerance_s: float = 1.0


class TelemetryStore:
    """Latest reading per metered node (per-pole current) and per server (GPU power)."""

    def __init__(
        self,
        topo: Topology,
        settings: ControllerSettings,
        metered_nodes: Sequence[int] | npt.NDArray[np.integer],
        agent_servers: Sequence[int] | npt.NDArray[np.integer] = (),
        clock: Callable[[], float] | None = None,
        limits: PlausibilityLimits | None = None,
    ) -> None:
        import time

        self.topo = topo
        self.clock = clock or time.monotonic
        self.meter_stale_s = settings.meter_stale_s
        self.agent_stale_s = settings.agent_stale_s
        self.limits = limits or PlausibilityLimits(max_jump_fraction=settings.max_jump_fraction)
        n = topo.n_nodes
        self.metered = np.zeros(n, dtype=bool)
        self.metered[np.asarray(metered_nodes, dtype=np.int64)] = True
        self.node_i_a = np.full((n, 3), math.nan)
        self.node_t_s = np.full(n, -math.inf)
        self.node_quality = np.where(self.metered, Quality.MISSING, Quality.GOOD).astype(np.int8)
        self._rejected_now = np.zeros(n, dtype=np.int8)  # quality of the last rejected input
        self._pending_i_a = np.full((n, 3), math.nan)    # an unconfirmed jump
        s = topo.n_servers
        self.has_agent = np.zeros(s, dtype=bool)
        self.has_agent[np.asarray(agent_servers, dtype=np.int64)] = True
        self.server_power_w = np.full(s, math.nan)
        self.server_cap_w = np.full(s, math.nan)        # enforced per-GPU cap, read back
        self.server_t_s = np.full(s, -math.inf)
        self.server_quality = np.where(self.has_agent, Quality.MISSING,
                                       Quality.GOOD).astype(np.int8)
        self.rejected: Counter[str] = Counter()
        self.accepted = 0
        self._faults: dict[tuple[str, int], str] = {}
        #: the fault and clear lines, at most ``FAULT_LOG_LINES`` per ``FAULT_LOG_WINDOW_S``
        #: (wall time): a plant that answers late makes thousands of sum checks flap per tick
        self.log_budget = LogBudget(log, "telemetry store", lines=FAULT_LOG_LINES,
                                    window_s=FAULT_LOG_WINDOW_S)
        # children of each node, for the sum check: metered nodes whose children are all metered
        parent = topo.parent_idx
        self._child_count = np.bincount(parent[parent >= 0], minlength=n)
        self._metered_child_count = np.bincount(parent[(parent >= 0) & self.metered], minlength=n)
        self._sum_check = self.metered & (self._child_count > 0) & (
            self._metered_child_count == self._child_count)
        #: each node's largest pole rating (A), for the jump check
        self._rating_max_a = np.ascontiguousarray(
            topo.rating_a.max(axis=1) if n else np.zeros(0), np.float64)
        self._rating_a = np.ascontiguousarray(topo.rating_a, np.float64)
        #: the servers' GPU counts and rated power per GPU (W), for the one-pass agent ingest
        self._gpus = np.ascontiguousarray(topo.server_gpus, np.float64)
        self._gpu_max_w = np.ascontiguousarray(topo.server_gpu_max_w, np.float64)
        # for the one-pass refresh: the metered nodes, those with the sum check, and each
        # node's children in increasing order
        self._metered_idx = np.ascontiguousarray(np.flatnonzero(self.metered), np.int64)
        self._sum_idx = np.ascontiguousarray(np.flatnonzero(self._sum_check), np.int64)
        kids = np.flatnonzero(parent >= 0)
        kids = kids[np.argsort(parent[kids], kind="stable")]
        self._child_order = np.ascontiguousarray(kids, np.int64)
        self._child_start = np.ascontiguousarray(
            np.searchsorted(parent[kids], np.arange(n + 1)), np.int64)
        depth_max = int(topo.depth.max()) if n else 0
        self._levels = [np.flatnonzero(topo.depth == d) for d in range(1, depth_max + 1)]

    # ---------------------------------------------------------------------------------------
    def ingest_node(self, node: int, i_a: Sequence[float], t_s: float | None = None) -> bool:
        """Offer a per-pole current reading (A) of ``node`` taken at monotonic time ``t_s``.

        Returns True when it was accepted. A rejected reading leaves the previous one in place
        (it will go stale) and is counted by reason.
        """
        now = self.clock()
        t = now if t_s is None else float(t_s)
        if not 0 <= node < self.topo.n_nodes or not self.metered[node]:
            return self._reject("unbound_node", node, Quality.IMPLAUSIBLE)
        values = np.asarray(i_a, dtype=np.float64)
        rating = self.topo.rating_a[node]
        reason = _implausible(values, rating, t, now, self.limits)
        if reason:
            return self._reject(reason, node, Quality.IMPLAUSIBLE)
        if t < self.node_t_s[node]:
            return self._reject("out_of_order", node, Quality.GOOD)
        previous = self.node_i_a[node]
        jump_a = self.limits.max_jump_fraction * rating.max()
        if np.isfinite(previous).all() and np.abs(values - previous).max() > jump_a:
            pending = self._pending_i_a[node]
            confirmed = (np.isfinite(pending).all()
                         and np.abs(values - pending).max() <= jump_a * 0.5)
            if not confirmed:
                self._pending_i_a[node] = values
                return self._reject("impossible_jump", node, Quality.IMPLAUSIBLE)
        self._pending_i_a[node] = math.nan
        self.node_i_a[node] = values
        self.node_t_s[node] = t
        self._rejected_now[node] = Quality.GOOD
        self.accepted += 1
        self._clear_fault("node", node)
        return True

    def ingest_server(
        self, server: int, gpu_power_w: Sequence[float], enforced_cap_w: Sequence[float],
        t_s: float | None = None,
    ) -> bool:
        """Offer a node agent's reading: per-GPU power and the enforced per-GPU cap (W)."""
        now = self.clock()
        t = now if t_s is None else float(t_s)
        if not 0 <= server < self.topo.n_servers or not self.has_agent[server]:
            return self._reject("unbound_server", server, Quality.IMPLAUSIBLE, kind="server")
        power = np.asarray(gpu_power_w, dtype=np.float64)
        caps = np.asarray(enforced_cap_w, dtype=np.float64)
        gpus = int(self.topo.server_gpus[server])
        gmax = float(self.topo.server_gpu_max_w[server])
        bad = (power.shape != (gpus,) or caps.shape != (gpus,)
               or not np.isfinite(power).all() or not np.isfinite(caps).all()
               or (power < 0).any() or (caps < 0).any()
               or (power > self.limits.range_x * max(gmax, 1.0)).any()
               or t > now + self.limits.future_tolerance_s)
        if bad:
            return self._reject("implausible_agent", server, Quality.IMPLAUSIBLE, kind="server")
        self.server_power_w[server] = float(power.sum())
        self.server_cap_w[server] = float(caps.max()) if gpus else 0.0
        self.server_t_s[server] = max(self.server_t_s[server], t)
        self.accepted += 1
        self._clear_fault("server", server)
        return True

    def ingest_nodes(self, nodes: Sequence[int] | npt.NDArray[np.integer],
                     i_a: npt.ArrayLike, t_s: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """Many node readings at once, by the rules of :meth:`ingest_node` (vectorized):
        ``nodes`` (M,), ``i_a`` (M, 3) A, ``t_s`` (M,) monotonic s. Returns the accepted mask.
        A node listed twice is taken as two readings in order (the slow path)."""
        idx = np.asarray(nodes, dtype=np.int64).reshape(-1)
        vals = np.asarray(i_a, dtype=np.float64)
        times = np.broadcast_to(np.asarray(t_s, dtype=np.float64), idx.shape)
        if vals.shape != (idx.size, 3) or not _distinct(idx):
            return np.array([self.ingest_node(int(n), list(v), float(t))
                             for n, v, t in zip(idx, vals.reshape(idx.size, -1), times,
                                                strict=True)], dtype=np.bool_)
        now = self.clock()
        lim = self.limits
        ok = np.zeros(idx.size, bool)
        inside = (idx >= 0) & (idx < self.topo.n_nodes)
        bound = inside.copy()
        bound[inside] = self.metered[idx[inside]]
        for j in np.flatnonzero(~bound):
            self._reject("unbound_node", int(idx[j]), Quality.IMPLAUSIBLE)
        sel = np.flatnonzero(bound)
        if sel.size == idx.size:   # every reading bound (the usual case): nothing to gather
            node, v, t = (np.ascontiguousarray(x) for x in (idx, vals, times))
        else:   # np.take gathers rows several times faster than indexing (numpy 2.4)
            node, v, t = idx[sel], np.take(vals, sel, axis=0), times[sel]
        # one pass screens every reading and writes the good ones (and the pending jumps)
        code = np.empty(sel.size, np.int8)
        _screen_readings_into(node, v, t, self._rating_a, self._rating_max_a,
                              float(lim.max_jump_fraction),
                              float(now + lim.future_tolerance_s), float(lim.range_x),
                              float(lim.sum_tolerance_a), 0.5, self.node_i_a, self.node_t_s,
                              self._pending_i_a, self._rejected_now, code)
        take = code == READING_TAKEN
        if not take.all():
            # rejections in the order of the checks: implausible, out of order, jumps
            for j in np.flatnonzero((code != READING_TAKEN) & (code < READING_OUT_OF_ORDER)):
                self._reject(_SCREEN_REASON[int(code[j])], int(node[j]), Quality.IMPLAUSIBLE)
            for j in np.flatnonzero(code == READING_OUT_OF_ORDER):
                self._reject("out_of_order", int(node[j]), Quality.GOOD)
            for j in np.flatnonzero(code == READING_JUMP):
                self._reject("impossible_jump", int(node[j]), Quality.IMPLAUSIBLE)
        tn = node[take]
        self.accepted += int(tn.size)
        if self._faults:
            for n in tn:
                if ("node", int(n)) in self._faults:
                    self._clear_fault("node", int(n))
        ok[sel[take]] = True
        return ok

    def ingest_servers(self, servers: Sequence[int] | npt.NDArray[np.integer],
                       gpu_power_w: npt.ArrayLike, enforced_cap_w: npt.ArrayLike,
                       t_s: float) -> npt.NDArray[np.bool_]:
        """Many node agents' readings at once, by the rules of :meth:`ingest_server`, with one
        value per server: ``gpu_power_w`` (M,) W per GPU (every GPU alike) and
        ``enforced_cap_w`` (M,) W per GPU. Returns the accepted mask."""
        idx = np.ascontiguousarray(np.asarray(servers, dtype=np.int64).reshape(-1))
        p = np.ascontiguousarray(np.broadcast_to(np.asarray(gpu_power_w, dtype=np.float64),
                                                 idx.shape))
        c = np.ascontiguousarray(np.broadcast_to(np.asarray(enforced_cap_w, dtype=np.float64),
                                                 idx.shape))
        now = self.clock()
        # one pass screens every reading and writes the good ones (kernels.tick)
        code = np.empty(idx.size, np.int8)
        _screen_servers_into(idx, p, c, float(t_s), float(now + self.limits.future_tolerance_s),
                             float(self.limits.range_x), self.has_agent, self._gpu_max_w,
                             self._gpus, self.server_power_w, self.server_cap_w,
                             self.server_t_s, code)
        good = code == SERVER_TAKEN
        self._count_servers(idx, good, code != SERVER_UNBOUND)
        return good

    def _server_bounds(self, idx: npt.NDArray[np.int64]) -> tuple[
            npt.NDArray[np.bool_], npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
        """Per reading: the server exists, it has an agent, and its GPUs' rated power (W, at
        least 1)."""
        inside = (idx >= 0) & (idx < self.topo.n_servers)
        bound = inside.copy()
        bound[inside] = self.has_agent[idx[inside]]
        gmax = np.ones(idx.size)
        gmax[inside] = np.maximum(self.topo.server_gpu_max_w[idx[inside]], 1.0)
        return inside, bound, gmax

    def _take_servers(self, idx: npt.NDArray[np.int64], good: npt.NDArray[np.bool_],
                      bound: npt.NDArray[np.bool_], power_w: npt.ArrayLike,
                      cap_w: npt.ArrayLike, t_s: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """Reject the readings not ``good`` (counted, by reason), store the good ones'
        server power and cap (W) and time, and clear their faults; returns ``good``."""
        s = idx[good]
        self.server_power_w[s] = power_w
        self.server_cap_w[s] = cap_w
        self.server_t_s[s] = np.maximum(self.server_t_s[s], t_s)
        self._count_servers(idx, good, bound)
        return good

    def _count_servers(self, idx: npt.NDArray[np.int64], good: npt.NDArray[np.bool_],
                       bound: npt.NDArray[np.bool_]) -> None:
        """After agent readings were screened (and the good ones stored): the others rejected
        by reason (unbound, else implausible), the good ones counted and their faults
        cleared."""
        for j in np.flatnonzero(~good):
            reason = "unbound_server" if not bound[j] else "implausible_agent"
            self._reject(reason, int(idx[j]), Quality.IMPLAUSIBLE, kind="server")
        self.accepted += int(np.count_nonzero(good))
        if self._faults:
            for n in idx[good]:
                if ("server", int(n)) in self._faults:
                    self._clear_fault("server", int(n))

    def ingest_server_rows(self, servers: Sequence[int] | npt.NDArray[np.integer],
                           gpu_power_w: npt.ArrayLike, enforced_cap_w: npt.ArrayLike,
                           t_s: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """Many node agents' readings at once, by the rules of :meth:`ingest_server` and with
        its results: ``gpu_power_w`` and ``enforced_cap_w`` (M, G) W, one row per reading of
        G GPUs (a server with another GPU count is implausible, as its reading would be),
        ``t_s`` (M,) monotonic s. A server listed twice takes its readings in order (the
        slow path). Returns the accepted mask."""
        idx = np.asarray(servers, dtype=np.int64).reshape(-1)
        p = np.asarray(gpu_power_w, dtype=np.float64)
        c = np.asarray(enforced_cap_w, dtype=np.float64)
        times = np.broadcast_to(np.asarray(t_s, dtype=np.float64), idx.shape)
        if p.ndim != 2 or p.shape[0] != idx.size or c.shape != p.shape or not _distinct(idx):
            return np.array([self.ingest_server(int(n), list(pw), list(cw), float(t))
                             for n, pw, cw, t in zip(idx, p.reshape(idx.size, -1),
                                                     c.reshape(idx.size, -1), times,
                                                     strict=True)], dtype=np.bool_)
        now = self.clock()
        n_gpus = p.shape[1]
        inside, bound, gmax = self._server_bounds(idx)
        shaped = np.zeros(idx.size, bool)
        shaped[inside] = self.topo.server_gpus[idx[inside]] == n_gpus
        with np.errstate(invalid="ignore"):
            good = (bound & shaped & row_all(np.isfinite(p)) & row_all(np.isfinite(c))
                    & row_all(p >= 0) & row_all(c >= 0)
                    & row_all(p <= self.limits.range_x * gmax[:, None])
                    & (times <= now + self.limits.future_tolerance_s))
        return self._take_servers(idx, good, bound, p[good].sum(axis=1),
                                  c[good].max(axis=1) if n_gpus else 0.0, times[good])

    # ---------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Recompute every quality at the current time (staleness, sums). Vectorized."""
        self.log_budget.flush_due()
        now = self.clock()
        n = self.topo.n_nodes
        q = np.zeros(n, dtype=np.int8)   # Q_GOOD
        bad = np.zeros(n, np.bool_)
        # qualities (stale, missing, rejected) and the children-sum check in one pass over the
        # metered nodes
        _node_quality_into(self._metered_idx, self.node_t_s, self._rejected_now, self._sum_idx,
                           self._child_start, self._child_order, self.node_i_a,
                           self._rating_a, float(now), float(self.meter_stale_s),
                           float(self.limits.sum_tolerance), float(self.limits.sum_tolerance_a),
                           q, bad)
        if bad.any():
            for node in np.flatnonzero(bad & (self.node_quality != Q_INCONSISTENT)):
                self._note_fault("node", int(node), "children_sum_disagrees")
                self.rejected["children_sum_disagrees"] += 1
        self.node_quality = q
        sq = np.zeros(self.topo.n_servers, dtype=np.int8)   # Q_GOOD
        s_never = self.has_agent & ~np.isfinite(self.server_t_s)
        s_stale = self.has_agent & np.isfinite(self.server_t_s) & (
            now - self.server_t_s > self.agent_stale_s)
        sq[s_stale] = Q_STALE
        sq[s_never] = Q_MISSING
        self.server_quality = sq

    def unknown_nodes(self) -> npt.NDArray[np.bool_]:
        """Nodes whose own reading is not trusted, or that sit below such a node."""
        out = self.metered & (self.node_quality != Q_GOOD)
        if not out.any():   # nothing untrusted: nothing to carry down
            return out
        parent = self.topo.parent_idx
        for level in self._levels:  # depth by depth: a parent is final before its children
            out[level] |= out[parent[level]]
        return out

    def fault(self, kind: str, index: int) -> str | None:
        """The reason of the fault now open on node (``kind="node"``) or server
        (``"server"``) ``index``, e.g. ``"negative"``; None when its last input was good."""
        return self._faults.get((kind, index))

    def counters(self) -> dict[str, int]:
        """Accepted and rejected inputs, by reason (for metrics and ``probe``)."""
        return {"accepted": self.accepted, **dict(self.rejected)}

    # ---------------------------------------------------------------------------------------
    def _reject(self, reason: str, index: int, quality: Quality, kind: str = "node") -> bool:
        self.rejected[reason] += 1
        if kind == "node" and 0 <= index < self.topo.n_nodes and quality != Quality.GOOD:
            self._rejected_now[index] = quality
        self._note_fault(kind, index, reason)
        return False

    def _note_fault(self, kind: str, index: int, reason: str) -> None:
        key = (kind, index)
        if self._faults.get(key) != reason:
            self._faults[key] = reason
            if self.log_budget.allow(reason):
                log.warning("telemetry fault on %s %s: %s", kind, self._name(kind, index),
                            reason)
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("telemetry fault repeats on %s %s: %s", kind, self._name(kind, index),
                      reason)

    def _clear_fault(self, kind: str, index: int) -> None:
        reason = self._faults.pop((kind, index), None)
        if reason is not None and self.log_budget.allow(f"cleared {reason}"):
            log.info("telemetry fault cleared on %s %s (was %s)", kind,
                     self._name(kind, index), reason)

    def _name(self, kind: str, index: int) -> str:
        names = self.topo.node_id if kind == "node" else self.topo.server_id
        return names[index] if 0 <= index < len(names) else f"#{index}"


#: the reason counted for each implausible screening code of ``_screen_readings_into``
_SCREEN_REASON = {READING_NOT_FINITE: "not_finite", READING_NEGATIVE: "negative",
                  READING_ABSENT_POLE: "current_on_absent_pole",
                  READING_OUT_OF_RANGE: "out_of_range", READING_FUTURE: "future_timestamp"}


def _distinct(idx: npt.NDArray[np.int64]) -> bool:
    """No index twice (strictly increasing, the usual order, is checked without sorting)."""
    if idx.size < 2 or bool((idx[1:] > idx[:-1]).all()):
        return True
    return bool(np.unique(idx).size == idx.size)


def _implausible(values: F64, rating_a: F64, t_s: float, now_s: float,
                 limits: PlausibilityLimits) -> str:
    if values.shape != (3,):
        return "wrong_shape"
    if not np.isfinite(values).all():
        return "not_finite"
    if (values < 0).any():
        return "negative"
    if ((rating_a == 0) & (values > limits.sum_tolerance_a)).any():
        return "current_on_absent_pole"
    if ((rating_a > 0) & (values > limits.range_x * rating_a)).any():
        return "out_of_range"
    if not math.isfinite(t_s) or t_s > now_s + limits.future_tolerance_s:
        return "future_timestamp"
    return ""
