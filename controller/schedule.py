"""A bring-up schedule, and the open-loop baselines operators use today.

A :class:`Schedule` says when each PSU's outlet is switched on, at which per-GPU power cap each
server starts working once it has booted, and how caps change later (cap events: from
``cap_t_s[e]`` on, server ``cap_server[e]`` works at ``cap_w[e]`` per GPU; a planner raises caps
in steps this way to keep the hall inside its ramp limits). It is what the planner produces,
what the baselines produce, what the simulator executes in a dry run, and what the prediction
turns into a load timeline: one currency for every strategy, so that comparisons are fair.

Times are seconds from the start of the bring-up; ``inf`` means "stays off". Caps are watts per
GPU, within the model's [gpu_min_cap_w, gpu_max_w].

The baselines (DESIGN.md):

* ``all-at-once``: every outlet at t = 0.
* ``fixed-delay``: each rack PDU switches its outlets one after another with a fixed delay (PDU
  outlet sequencing), all PDUs in parallel.
* ``fixed-rate``: N servers per minute, released in bursts at a fixed pass interval, as Slurm's
  ResumeRate does (300/min, a pass every 10 s: 50 servers per burst).

None of them caps GPUs: servers work at their maximum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from controller.topology import Topology

F64 = npt.NDArray[np.float64]

BASELINES = ("all-at-once", "fixed-delay", "fixed-rate")
SLURM_PASS_S = 10.0


def _no_events_f() -> F64:
    return np.zeros(0, dtype=np.float64)


def _no_events_i() -> npt.NDArray[np.int32]:
    return np.zeros(0, dtype=np.int32)


@dataclass(frozen=True, slots=True)
class Schedule:
    """When each outlet goes on (``psu_on_s``, (K,)), each server's first GPU cap (``gpu_cap_w``,
    (S,), W per GPU), and later cap changes (``cap_t_s``, ``cap_server``, ``cap_w``, (E,), sorted
    by time)."""

    strategy: str
    psu_on_s: F64
    gpu_cap_w: F64
    cap_t_s: F64 = field(default_factory=_no_events_f)
    cap_server: npt.NDArray[np.int32] = field(default_factory=_no_events_i)
    cap_w: F64 = field(default_factory=_no_events_f)

    def __post_init__(self) -> None:
        if self.psu_on_s.ndim != 1 or self.gpu_cap_w.ndim != 1:
            raise ValueError("psu_on_s and gpu_cap_w must be one-dimensional")
        if np.isnan(self.psu_on_s).any() or (self.psu_on_s < 0).any():
            raise ValueError("psu_on_s must be >= 0 (inf for never), without NaN")
        if not np.isfinite(self.gpu_cap_w).all() or (self.gpu_cap_w < 0).any():
            raise ValueError("gpu_cap_w must be finite and >= 0")
        e = self.cap_t_s.shape
        if self.cap_server.shape != e or self.cap_w.shape != e or len(e) != 1:
            raise ValueError("cap_t_s, cap_server and cap_w must be one-dimensional, same length")
        if not np.isfinite(self.cap_t_s).all() or (np.diff(self.cap_t_s) < 0).any():
            raise ValueError("cap_t_s must be finite and sorted")
        if not np.isfinite(self.cap_w).all() or (self.cap_w < 0).any():
            raise ValueError("cap_w must be finite and >= 0")
        if e[0] and (self.cap_server.min() < 0
                     or self.cap_server.max() >= self.gpu_cap_w.shape[0]):
            raise ValueError("cap_server out of range")

    def final_cap_w(self) -> F64:
        """The per-GPU cap each server ends at (its last cap event, else its first cap)."""
        out = self.gpu_cap_w.copy()
        out[self.cap_server] = self.cap_w  # events are sorted, so the last one wins
        return out

    def server_on_s(self, topo: Topology) -> F64:
        """When each server has enough powered PSUs to boot (inf if never)."""
        return server_boot_time_s(topo, self.psu_on_s)

    @property
    def last_switch_s(self) -> float:
        finite = self.psu_on_s[np.isfinite(self.psu_on_s)]
        return float(finite.max()) if finite.size else 0.0


def server_boot_time_s(topo: Topology, psu_on_s: F64) -> F64:
    """The time at which each server has ``psus_to_boot`` powered PSUs: the k-th earliest."""
    order = np.lexsort((psu_on_s, topo.psu_server))
    sorted_server = topo.psu_server[order]
    sorted_on = psu_on_s[order]
    first = np.searchsorted(sorted_server, np.arange(topo.n_servers))
    need = topo.server_psus_to_boot.astype(np.int64)
    idx = first + need - 1
    out = np.full(topo.n_servers, math.inf)
    has = need <= topo.server_psus
    out[has] = sorted_on[idx[has]]
    return out


def full_power_caps(topo: Topology) -> F64:
    """Every server's GPUs at their maximum: what the baselines run at."""
    return np.asarray(topo.server_gpu_max_w, dtype=np.float64).copy()


def all_at_once(topo: Topology) -> Schedule:
    return Schedule("all-at-once", np.zeros(topo.n_psus), full_power_caps(topo))


def fixed_delay(topo: Topology, delay_s: float) -> Schedule:
    """Each rack PDU switches its used outlets in outlet order, ``delay_s`` apart."""
    if not math.isfinite(delay_s) or delay_s < 0:
        raise ValueError(f"delay_s must be a finite number >= 0, got {delay_s!r}")
    pdu = topo.rack_pdu_of()[topo.psu_node]
    # outlet order on the PDU: the outlets' node order (bank by bank, outlet by outlet)
    order = np.lexsort((topo.psu_node, pdu))
    rank = np.empty(topo.n_psus, dtype=np.int64)
    sorted_pdu = pdu[order]
    starts = np.searchsorted(sorted_pdu, sorted_pdu, side="left")
    rank[order] = np.arange(topo.n_psus) - starts
    return Schedule("fixed-delay", rank.astype(np.float64) * float(delay_s),
                    full_power_caps(topo))


def fixed_rate(topo: Topology, per_min: float, pass_s: float = SLURM_PASS_S) -> Schedule:
    """``per_min`` servers a minute, in bursts every ``pass_s`` (servers in id order)."""
    if not math.isfinite(per_min) or per_min <= 0:
        raise ValueError(f"per_min must be a finite number > 0, got {per_min!r}")
    if not math.isfinite(pass_s) or pass_s <= 0:
        raise ValueError(f"pass_s must be a finite number > 0, got {pass_s!r}")
    burst = max(1, int(per_min * pass_s / 60.0))
    server_on = (np.arange(topo.n_servers) // burst) * pass_s
    return Schedule("fixed-rate", server_on[topo.psu_server].astype(np.float64),
                    full_power_caps(topo))


def baseline(topo: Topology, name: str, delay_s: float, per_min: float) -> Schedule:
    """The named baseline with the controller settings' parameters."""
    if name == "all-at-once":
        return all_at_once(topo)
    if name == "fixed-delay":
        return fixed_delay(topo, delay_s)
    if name == "fixed-rate":
        return fixed_rate(topo, per_min)
    raise ValueError(f"unknown baseline {name!r}; expected one of {', '.join(BASELINES)}")
