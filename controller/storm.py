"""Whether a hall survives a synchronous workload swing (the ``workload-storm`` scenario).

When every working server goes idle at once, and later all restart in the same instant, the
load of every source and UPS moves by the sum of their swings within one plant step. No GPU cap
prevents either:

* the drop is the workload's own: from each server's working power at its planned cap
  (``other_max_w + gpus × cap``) to its idle power (``idle_w``, GPUs at ``gpu_idle_w``);
* the restart's rise is at least the rise with every GPU at its minimum cap
  (``other_max_w + gpus × gpu_min_cap_w − idle_w``): the non-GPU power is not capped and the
  minimum cap lies above the GPU's idle power (on every reference model).

Both are shared between the feeds the way the plant shares a server's power: equally among its
powered PSUs, per phase with the split of :mod:`kernels.aggregate`, summed up the tree. A
server left with fewer PSUs than it needs to carry its load (after the loss of a feed) is held
to ``powered PSUs × psu_rating_w`` (the power brake), its idle power too.

The swings are judged as the plant judges them (``sim/plant.py``, ``_check_ramps``): a *step*
is the change of a node's power within one plant step, up or down, against ``max_step_w``; a
*ramp* is the rise over the ramp window, ``(p(t) − p(t − span − dt_s)) / span`` with
``span = max(1, round(ramp_window_s / dt_s)) × dt_s`` (the plant's ring of samples reaches one
step further back than it divides by), against ``ramp_limit_w_per_s``. Both
swings happen within one step, so the drop is a step of ``drop_w`` (a fall is no ramp) and the
restart a step of ``rise_w`` and a ramp of ``rise_w / span``; a limit is passed when the value
exceeds it by more than one part in 10⁹, as in the plant.

A hall with a finding cannot ride the storm with GPU caps alone: it needs power smoothing (a
GPU power floor and ramp rates, as NVIDIA GB300 power smoothing), a battery or UPS energy
storage that carries the step, or a scheduler that paces job restarts (PHYSICS.md section 4).
``rampguard validate`` reports the findings as warnings; the dry run decides
``scenario_survivable`` of a scenario with a ``workload-storm`` fault by them.

:func:`node_swing_w` and :func:`judge_swing` are array in, array out; :func:`analyze_storm`
names the nodes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

import kernels
from controller.model import HallConfig
from controller.topology import FEED_NAMES, KIND_NAMES, Topology

F64 = npt.NDArray[np.float64]
Bool = npt.NDArray[np.bool_]

#: feed states analysed: every PSU powered, or the PSUs of one feed dead
STATE_NORMAL = "normal"
STATE_NAMES = (STATE_NORMAL, *(f"feed {f} lost" for f in FEED_NAMES))
#: what prevents a swing the caps cannot (named in every warning and reason)
PREVENTION = ("power smoothing (a GPU power floor and ramp rates, as NVIDIA GB300 power "
              "smoothing), a battery that carries the step, or a scheduler that paces job "
              "restarts")
#: the plant's tolerance on a limit (sim/plant.py)
_TOLERANCE_X = 1e-9


def ramp_span_s(ramp_window_s: float, dt_s: float) -> float:
    """The span (s) over which the plant measures a ramp: ``max(1, round(window / dt)) × dt``."""
    return max(1, round(ramp_window_s / dt_s)) * dt_s


def server_psu_rating_w(config: HallConfig, topo: Topology) -> F64:
    """Each server's PSU rating (W), (S,), from its model in ``config``."""
    rating = {m.id: float(m.psu_rating_w) for m in config.server_models}
    per_model = np.asarray([rating[m] for m in topo.server_model_id], dtype=np.float64)
    return per_model[topo.server_model] if topo.n_servers else np.zeros(0)


def psu_alive_for(topo: Topology, state: str) -> Bool:
    """The PSUs powered in one of :data:`STATE_NAMES`, (K,) bool."""
    if state == STATE_NORMAL:
        return np.ones(topo.n_psus, dtype=np.bool_)
    if state not in STATE_NAMES:
        raise ValueError(f"unknown feed state {state!r}; expected one of {STATE_NAMES}")
    lost = FEED_NAMES.index(state.split()[1])
    return np.asarray(topo.psu_feed != lost)


def held_power_w(p_w: F64, alive_psus: npt.NDArray[np.integer], psus_to_carry: npt.NDArray[
        np.integer], psu_rating_w: F64) -> F64:
    """A server's input power (W) after the plant's power brake, (S,): 0 with no PSU powered,
    ``min(p_w, alive × psu_rating_w)`` with fewer than ``psus_to_carry`` powered, else
    ``p_w``."""
    braked = (alive_psus > 0) & (alive_psus < psus_to_carry)
    out = np.where(braked, np.minimum(p_w, alive_psus * psu_rating_w), p_w)
    return np.where(alive_psus > 0, out, 0.0)


def node_swing_w(topo: Topology, working_cap_w: F64, working: Bool, psu_rating_w: F64,
                 psu_alive: Bool) -> tuple[F64, F64]:
    """The drop and the restart's rise (W) at every node, each (n,).

    ``working_cap_w`` (S,) W per GPU: the caps the servers work at before the drop (clipped to
    the model's range as the plant does); ``working`` (S,) bool: the servers that go idle and
    restart; ``psu_rating_w`` (S,) W; ``psu_alive`` (K,) bool: the powered PSUs. The drop is
    the node's power with the working servers at their caps minus with them idle; the rise is
    with them at their minimum caps minus idle. Real power, summed over the phases as the
    plant's ramp and step checks sum it.
    """
    gpus = topo.server_gpus.astype(np.float64)
    cap_w = np.clip(np.asarray(working_cap_w, dtype=np.float64), topo.server_gpu_min_cap_w,
                    topo.server_gpu_max_w)
    alive_psus = np.bincount(topo.psu_server, weights=psu_alive.astype(np.float64),
                             minlength=topo.n_servers).astype(np.int64)

    def held(p_w: F64) -> F64:
        return held_power_w(p_w, alive_psus, topo.server_psus_to_carry, psu_rating_w)

    idle_w = held(topo.server_idle_w)
    at_cap_w = held(topo.server_other_max_w + gpus * cap_w)
    at_min_w = held(topo.server_other_max_w + gpus * topo.server_gpu_min_cap_w)
    mask = np.asarray(working, dtype=np.bool_)
    drop = _tree_power_w(topo, np.where(mask, at_cap_w, idle_w), psu_alive) \
        - _tree_power_w(topo, idle_w, psu_alive)
    rise = _tree_power_w(topo, np.where(mask, at_min_w, idle_w), psu_alive) \
        - _tree_power_w(topo, idle_w, psu_alive)
    return drop, rise


def _tree_power_w(topo: Topology, server_p_w: F64, psu_alive: Bool) -> F64:
    """Real power (W) at every node, (n,), summed over its phases."""
    w = kernels.psu_load_va(server_p_w, np.ones(topo.n_servers), topo.psu_server, topo.psu_node,
                            topo.psu_phase, psu_alive, topo.n_nodes)
    kernels.aggregate_tree_into(topo.parent_idx, w)
    out: F64 = w.sum(axis=1)
    return out


def judge_swing(drop_w: F64, rise_w: F64, max_step_w: F64, ramp_limit_w_per_s: F64,
                span_s: float) -> tuple[Bool, Bool, Bool]:
    """Which nodes the swing breaks, as the plant judges (each (n,) bool): the drop as a step,
    the rise as a step, the rise as a ramp of ``rise_w / span_s``. Infinite limits never
    break."""
    tol = 1.0 + _TOLERANCE_X
    drop_step = np.abs(drop_w) > max_step_w * tol
    rise_step = np.abs(rise_w) > max_step_w * tol
    rise_ramp = rise_w / span_s > ramp_limit_w_per_s * tol
    return drop_step, rise_step, rise_ramp


@dataclass(frozen=True, slots=True)
class StormFinding:
    """One limit the storm passes: at ``node`` in feed ``state``, the ``event`` ("drop" when
    every GPU idles, "restart" when all restart at their minimum caps) breaks its ``check``
    ("step" or "ramp") by ``swing`` against ``limit`` (both in ``unit``: kW or kW/s)."""

    node: str
    node_kind: str
    state: str
    event: str
    check: str
    swing: float
    limit: float
    unit: str
    prevention: str = PREVENTION

    def sentence(self) -> str:
        what = ("steps down" if self.event == "drop" else "steps up") if self.check == "step" \
            else "rises"
        when = ("when every working server goes idle at once" if self.event == "drop"
                else "when all restart at once with every GPU at its minimum cap")
        limit = "largest load step" if self.check == "step" else "ramp limit"
        where = ("" if self.state == STATE_NORMAL
                 else f" (after the {self.state.removesuffix(' lost')} loss)")
        return (f"{self.node} {what} {self.swing:,.1f} {self.unit} {when}{where}, against a "
                f"{limit} of {self.limit:,.1f} {self.unit}")


@dataclass(frozen=True, slots=True)
class NodeSwing:
    """The swing at one ramp- or step-limited node with every PSU powered (kW, kW/s)."""

    node: str
    node_kind: str
    drop_kw: float
    rise_kw: float
    rise_kw_per_s: float
    max_step_kw: float | None
    ramp_limit_kw_per_s: float | None


@dataclass(frozen=True, slots=True)
class StormAnalysis:
    """The storm at every limited node (:class:`NodeSwing`, feeds normal) and every limit it
    passes in each analysed feed state (:class:`StormFinding`)."""

    states: tuple[str, ...]
    ramp_span_s: float
    nodes: list[NodeSwing] = field(default_factory=list)
    findings: list[StormFinding] = field(default_factory=list)

    @property
    def survivable(self) -> bool:
        return not self.findings

    def reason(self, limit: int = 3) -> str | None:
        """Why the storm is unsurvivable (``None`` when it is not): the largest findings, how
        many there are, and what would prevent them."""
        if not self.findings:
            return None
        worst = sorted(self.findings, key=lambda f: (STATE_NAMES.index(f.state),
                                                     -f.swing / f.limit if f.limit else 0.0))
        shown = "; ".join(f.sentence() for f in worst[:limit])
        more = len(self.findings) - min(limit, len(self.findings))
        return (f"workload-storm: {shown}" + (f"; and {more} more" if more else "")
                + f". No GPU cap prevents it; it needs {PREVENTION}.")


def analyze_storm(topo: Topology, working_cap_w: F64, psu_rating_w: F64, *,
                  working: Bool | None = None, states: Iterable[str] = (STATE_NORMAL,),
                  ramp_window_s: float = 1.0, dt_s: float = 0.1) -> StormAnalysis:
    """The storm's findings at every ramp- or step-limited node of ``topo``.

    ``working_cap_w`` (S,) W per GPU; ``working`` (S,) bool (default every server); ``states``
    a subset of :data:`STATE_NAMES`; ``ramp_window_s`` and ``dt_s`` the plant's ramp window and
    step (``ramp_span_s``).
    """
    if not (math.isfinite(dt_s) and dt_s > 0 and math.isfinite(ramp_window_s)
            and ramp_window_s > 0):
        raise ValueError(f"dt_s and ramp_window_s must be positive, got {dt_s!r}, "
                         f"{ramp_window_s!r}")
    span = ramp_span_s(ramp_window_s, dt_s)
    mask = np.ones(topo.n_servers, np.bool_) if working is None else np.asarray(working, bool)
    step_w = np.asarray(topo.max_step_w, dtype=np.float64)
    ramp_w = np.asarray(topo.ramp_limit_w_per_s, dtype=np.float64)
    limited = np.flatnonzero(np.isfinite(step_w) | np.isfinite(ramp_w))
    states = tuple(s for s in dict.fromkeys(states) if _applies(topo, s))
    nodes: list[NodeSwing] = []
    findings: list[StormFinding] = []
    for state in states:
        alive = psu_alive_for(topo, state)
        drop, rise = node_swing_w(topo, working_cap_w, mask, psu_rating_w, alive)
        bad = judge_swing(drop, rise, step_w, ramp_w, span)
        if state == STATE_NORMAL:
            nodes = [NodeSwing(topo.node_id[i], KIND_NAMES[int(topo.node_kind[i])],
                               _round_kw(drop[i]), _round_kw(rise[i]), _round_kw(rise[i] / span),
                               _kilo(step_w[i]), _kilo(ramp_w[i]))
                     for i in limited]
        for i in limited:
            kind = KIND_NAMES[int(topo.node_kind[i])]
            checks = (("drop", "step", drop[i], step_w[i], "kW"),
                      ("restart", "step", rise[i], step_w[i], "kW"),
                      ("restart", "ramp", rise[i] / span, ramp_w[i], "kW/s"))
            for broken, (event, check, value, limit, unit) in zip(
                    (b[i] for b in bad), checks, strict=True):
                if broken:
                    findings.append(StormFinding(topo.node_id[i], kind, state, event, check,
                                                 _round_kw(value), float(limit) / 1e3, unit))
    return StormAnalysis(states, span, nodes, findings)


def _applies(topo: Topology, state: str) -> bool:
    """A lost-feed state matters only in a hall with PSUs on that feed and on another one."""
    if state == STATE_NORMAL:
        return True
    alive = psu_alive_for(topo, state)
    return bool(alive.any() and not alive.all())


def _round_kw(value_w: float) -> float:
    """kW (or kW/s) from W, rounded to the watt: the sums carry float noise."""
    return round(float(value_w) / 1e3, 3)


def _kilo(value: float) -> float | None:
    return float(value) / 1e3 if math.isfinite(value) else None


def steady_caps_w(config: HallConfig, topo: Topology) -> tuple[F64, Bool]:
    """The caps (W per GPU, (S,)) the planner allocates for steady full load, and the servers
    it admits ((S,) bool): what the hall works at when a storm comes."""
    from controller.planner import PlannerContext, PlannerSettings, allocate

    context = PlannerContext(topo, PlannerSettings.from_controller(config.controller))
    caps, admitted = allocate(context)
    return np.asarray(caps, dtype=np.float64), np.asarray(admitted, dtype=np.bool_)


def analyze_hall_storm(config: HallConfig, topo: Topology, *,
                       working_cap_w: F64 | None = None, servers: Sequence[int] | None = None,
                       states: Iterable[str] = STATE_NAMES, ramp_window_s: float = 1.0,
                       dt_s: float = 0.1) -> StormAnalysis:
    """:func:`analyze_storm` for a hall: the servers the planner's steady allocation admits
    work, at ``working_cap_w`` (default the allocation's caps); the storm on ``servers``
    (indices, default all); in ``states`` (default normal and either feed lost)."""
    allocated_w, working = steady_caps_w(config, topo)
    if working_cap_w is None:
        working_cap_w = allocated_w
    if servers is not None:
        chosen = np.zeros(topo.n_servers, np.bool_)
        chosen[np.asarray(list(servers), dtype=np.int64)] = True
        working = working & chosen
    return analyze_storm(topo, working_cap_w, server_psu_rating_w(config, topo),
                         working=working, states=states, ramp_window_s=ramp_window_s,
                         dt_s=dt_s)


__all__ = [
    "PREVENTION",
    "STATE_NAMES",
    "STATE_NORMAL",
    "NodeSwing",
    "StormAnalysis",
    "StormFinding",
    "analyze_hall_storm",
    "analyze_storm",
    "held_power_w",
    "judge_swing",
    "node_swing_w",
    "psu_alive_for",
    "ramp_span_s",
    "server_psu_rating_w",
    "steady_caps_w",
]
