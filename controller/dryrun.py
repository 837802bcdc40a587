"""The dry run: a strategy drives the simulated plant in virtual time; a verdict comes out.

A strategy is anything with the small :class:`Strategy` protocol: at each tick it sees the time
and (if it asks for one) an :class:`~sim.Observation`, and returns actions (switch outlets, set
GPU caps, hold or release work, reset breakers) that the plant executes at their own times. The
open-loop baselines users have today are :class:`ScheduleStrategy` over a
:class:`~controller.schedule.Schedule` (all-at-once, fixed-delay, fixed-rate); the closed-loop
controller registers itself in :data:`STRATEGIES` (``register_strategy``) and runs through the
same harness, so that comparisons are fair.

The harness runs until the bring-up has settled (the strategy is done and no server is still
starting), then ``tail_s`` more, or until the scenario's faults have played out and
``observe_s`` has passed after the last one; never beyond ``max_sim_s``. Faults given
``after_bring_up_s`` are scheduled when the bring-up settles.

Verdict (DESIGN.md): ``ok`` when nothing tripped and nothing was violated. A violation is a
load above its continuous limit for longer than its shed deadline (the trip time that the
controller's guard curve, earliest tolerance, leaves at the overload's peak current from steady
state at the limit; ``unprotected_shed_deadline_s`` for nodes without a breaker; never more
than ``max_shed_deadline_s``), a source or UPS load rising faster than its ramp limit over the
ramp window (1 s), a load step beyond its largest load step within one plant step, or an inlet
above the allowable temperature.

For the fault campaign (``benchmarks/campaign.py``, docs/campaign.md) the harness also records,
at every plant step, every overload episode (a node above its continuous limit, whether or not
it outlived its deadline: :class:`OverloadRecorder`), and counts the outlets the strategy
switched on more than once (``double_energizations``).

Survivability (``scenario_survivable``, :func:`scenario_verdict`): the scenario's own flag, but
for a scenario with a ``workload-storm`` fault it is decided for the hall being run: false when
the synchronous swing passes a step or ramp limit that no GPU cap can keep it within
(:mod:`controller.storm`, with the strategy's planned caps; with the feeds a ``feed-loss`` of
the scenario leaves), and ``scenario_unsurvivable_reason`` says why (null when survivable).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from controller.config import load_hall_config
from controller.model import HallConfig
from controller.schedule import Schedule, baseline
from controller.storm import STATE_NORMAL, analyze_hall_storm
from controller.topology import KIND_NAMES, Topology, compile_hall
from sim import (
    Action,
    Observation,
    Plant,
    Scenario,
    SetGpuCaps,
    SwitchOutlets,
)

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]

DEFAULT_STRATEGY = "staged"
MAX_LISTED = 1000


# ============================================================================== strategies
class Strategy(Protocol):
    """What the harness needs of a strategy.

    ``tick_s``: how often ``on_tick`` is called (``None``: every plant step). ``on_tick``
    returns actions; an action's ``t_s`` may lie in the future (the plant queues it) and
    ``None`` means now. ``needs_observation``: build an :class:`~sim.Observation` for each tick
    (else ``None`` is passed). ``uses_transport``: its actions go through Modbus/MQTT, so they
    fail on unreachable devices (the open-loop baselines act inside the PDUs or through the
    BMCs and are not affected). ``planned_cap_w`` (S,) W per GPU: the caps at which the strategy
    means every server to work in the end (time to full power is measured against them).
    ``done(t_s)``: nothing more is planned.
    """

    name: str
    tick_s: float | None
    needs_observation: bool
    uses_transport: bool
    planned_cap_w: F64

    def on_tick(self, t_s: float, observation: Observation | None) -> Sequence[Action]: ...

    def done(self, t_s: float) -> bool: ...


class ScheduleStrategy:
    """Execute a :class:`~controller.schedule.Schedule` open loop: each outlet at its time, each
    server's first cap set at the start (its node agent applies it when the server has booted,
    and the server starts work at it at once), cap events at their times."""

    tick_s: float | None = None
    needs_observation = False
    uses_transport = False

    def __init__(self, schedule: Schedule, topo: Topology) -> None:
        if schedule.psu_on_s.shape[0] != topo.n_psus or schedule.gpu_cap_w.shape[0] != \
                topo.n_servers:
            raise ValueError("the schedule does not fit the hall (PSU or server count)")
        self.name = schedule.strategy
        self.schedule = schedule
        self._topo = topo
        self.planned_cap_w = schedule.final_cap_w()
        last_cap = float(schedule.cap_t_s.max()) if schedule.cap_t_s.size else 0.0
        self._last_s = max(schedule.last_switch_s, last_cap)
        self._sent = False

    def on_tick(self, t_s: float, observation: Observation | None) -> Sequence[Action]:
        if self._sent:
            return ()
        self._sent = True
        sch = self.schedule
        servers = np.arange(self._topo.n_servers, dtype=np.int32)
        actions: list[Action] = [SetGpuCaps(servers, sch.gpu_cap_w, t_s=t_s)]
        on = sch.psu_on_s
        finite = np.flatnonzero(np.isfinite(on))
        order = finite[np.argsort(on[finite], kind="stable")]
        times = on[order]
        cuts = np.flatnonzero(np.diff(times)) + 1
        for group in np.split(order, cuts):
            if group.size:
                outlets = self._topo.psu_node[group]
                actions.append(SwitchOutlets(outlets, True, t_s=t_s + float(on[group[0]])))
        if sch.cap_t_s.size:
            cuts = np.flatnonzero(np.diff(sch.cap_t_s)) + 1
            for group in np.split(np.arange(sch.cap_t_s.size), cuts):
                actions.append(SetGpuCaps(sch.cap_server[group], sch.cap_w[group],
                                          t_s=t_s + float(sch.cap_t_s[group[0]])))
        return actions

    def done(self, t_s: float) -> bool:
        return self._sent and t_s >= self._last_s


@dataclass(frozen=True, slots=True)
class StrategyContext:
    """What a strategy factory gets: the hall, and the baselines' parameters."""

    config: HallConfig
    topo: Topology
    seed: int
    delay_s: float
    rate_per_min: float


StrategyFactory = Callable[[StrategyContext], Strategy]


def _baseline_factory(name: str) -> StrategyFactory:
    def make(ctx: StrategyContext) -> Strategy:
        return ScheduleStrategy(baseline(ctx.topo, name, ctx.delay_s, ctx.rate_per_min),
                                ctx.topo)

    make.__doc__ = f"the {name} baseline, open loop"
    return make


def _staged_factory(ctx: StrategyContext) -> Strategy:
    """The decision core in closed loop (:class:`controller.staged.CoreStrategy`)."""
    from controller.staged import CoreStrategy

    return CoreStrategy(ctx.config, ctx.topo, seed=ctx.seed)


def _planned_factory(ctx: StrategyContext) -> Strategy:
    """The planner's staged schedule executed open loop, without the core's feedback."""
    from controller.planner import PlannerSettings, plan

    settings = PlannerSettings.from_controller(ctx.config.controller)
    return ScheduleStrategy(plan(ctx.topo, "staged", settings=settings).schedule, ctx.topo)


#: Strategies by name; :func:`register_strategy` adds more.
STRATEGIES: dict[str, StrategyFactory] = {
    "staged": _staged_factory,
    "planned-open-loop": _planned_factory,
    **{name: _baseline_factory(name) for name in ("all-at-once", "fixed-delay", "fixed-rate")},
}


def register_strategy(name: str, factory: StrategyFactory) -> None:
    """Make ``factory`` available as ``rampguard dry-run --strategy NAME``."""
    STRATEGIES[name] = factory


class UnknownStrategyError(LookupError):
    """The strategy named is not registered (CLI exit 2)."""


# ============================================================================== recording
@dataclass(frozen=True, slots=True)
class OverloadEpisode:
    """One node above its continuous limit from ``start_s`` to ``end_s`` (s), at most
    ``peak_utilization`` × the limit (worst pole); ``deadline_s``: the core's shed deadline at
    that peak (:func:`controller.core.shed_deadline_s`: the guard trip curve from steady state at
    the limit, 60 s without a breaker, at most 900 s)."""

    node: str
    start_s: float
    end_s: float
    peak_utilization: float
    deadline_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def beyond_deadline_s(self) -> float:
        """Seconds the node stayed above its limit after its shed deadline (0 if shed in time)."""
        return max(0.0, self.duration_s - self.deadline_s)

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "t_s": round(self.start_s, 3),
                "duration_s": round(self.duration_s, 3),
                "peak_utilization": round(self.peak_utilization, 4),
                "deadline_s": round(self.deadline_s, 3),
                "beyond_deadline_s": round(self.beyond_deadline_s, 3)}


class OverloadRecorder:
    """Every overload episode of a run, from the plant's table of open overloads.

    The plant opens an entry when a node's load (any pole) rises above its continuous limit and
    removes it when the load is back at or under the limit, at the exact instants (its kernel's
    overload start and end events); :meth:`sample` runs after every plant step and costs one
    dictionary test while nothing is overloaded. An episode starts at the plant's exact start
    time and ends at the end of the step in which it was seen closed (never shorter than the
    truth, at most one step longer); its peak is the largest the plant saw at a step's end.
    :meth:`observe` takes the same information from a caller (tests build histories by hand).
    """

    def __init__(self, topo: Topology) -> None:
        self._topo = topo
        self._open: dict[int, list[float]] = {}   # node -> [start_s, peak_utilization]
        self.episodes: list[OverloadEpisode] = []

    def sample(self, plant: Plant, t_s: float) -> None:
        """Record the plant's open overloads at the end of a step at ``t_s``."""
        table = plant._overloads  # the plant's own table of open overloads, read only
        if not table and not self._open:
            return
        topo = self._topo
        now = {node: (ov.start_s, ov.peak_x * float(topo.rating_a[node].max())
                      / max(float(topo.limit_a[node].max()), 1e-12))
               for node, ov in table.items()}
        self.observe(t_s, now)

    def observe(self, t_s: float, over: dict[int, tuple[float, float]]) -> None:
        """At ``t_s`` the nodes of ``over`` are above their limit: node -> (since when (s),
        peak utilization so far); the open episodes of nodes missing from it end at ``t_s``."""
        for node, (start_s, peak) in over.items():
            ep = self._open.get(node)
            if ep is None or ep[0] != start_s:
                if ep is not None:
                    self._close(node, t_s)
                self._open[node] = [start_s, peak]
            elif peak > ep[1]:
                ep[1] = peak
        for node in [n for n in self._open if n not in over]:
            self._close(node, t_s)

    def close(self, t_s: float) -> list[OverloadEpisode]:
        """End every open episode at ``t_s`` (the end of the run); return all episodes."""
        for node in list(self._open):
            self._close(node, t_s)
        return self.episodes

    def _close(self, node: int, t_s: float) -> None:
        from controller.core import shed_deadline_s

        start_s, peak = self._open.pop(node)
        self.episodes.append(OverloadEpisode(
            self._topo.node_id[node], start_s, t_s, peak,
            shed_deadline_s(self._topo, node, peak)))


def limit_s_beyond_deadline(episodes: Iterable[OverloadEpisode]) -> float:
    """Limit-seconds beyond the shed deadline: over every node and every overload episode, the
    seconds it stayed above its continuous limit after its shed deadline (docs/campaign.md)."""
    return float(sum(ep.beyond_deadline_s for ep in episodes))


# ============================================================================== the run
@dataclass(frozen=True, slots=True)
class DryRunOptions:
    """Harness settings: plant step ``dt_s``, the longest run ``max_sim_s``, how long to keep
    running after the bring-up settled when no fault is due (``tail_s``), the history period,
    and the baselines' parameters (``None``: the config's ``[controller]`` values)."""

    dt_s: float = 0.1
    max_sim_s: float = 6 * 3600.0
    tail_s: float = 300.0
    record_period_s: float = 1.0
    delay_s: float | None = None
    rate_per_min: float | None = None
    progress: Callable[[str], None] | None = None
    progress_every_s: float = 2.0

    def __post_init__(self) -> None:
        for name in ("dt_s", "max_sim_s", "record_period_s", "progress_every_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not (math.isfinite(self.tail_s) and self.tail_s >= 0):
            raise ValueError(f"tail_s must be >= 0, got {self.tail_s!r}")
        if self.delay_s is not None and not (math.isfinite(self.delay_s) and self.delay_s >= 0):
            raise ValueError(f"delay_s must be >= 0, got {self.delay_s!r}")
        if self.rate_per_min is not None and not (math.isfinite(self.rate_per_min)
                                                  and self.rate_per_min > 0):
            raise ValueError(f"rate_per_min must be > 0, got {self.rate_per_min!r}")


@dataclass
class History:
    """Sampled every ``record_period_s``: time (s), largest utilization per node kind
    (T, kinds), inlet per zone (T, Z) °C, energized and working servers, IT power (W), and the
    power of the ramp-limited nodes (T, R) W."""

    t_s: list[float] = field(default_factory=list)
    utilization: list[F64] = field(default_factory=list)
    inlet_c: list[F64] = field(default_factory=list)
    energized: list[int] = field(default_factory=list)
    working: list[int] = field(default_factory=list)
    it_w: list[float] = field(default_factory=list)
    ramp_w: list[F64] = field(default_factory=list)

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "t_s": np.asarray(self.t_s),
            "utilization": np.asarray(self.utilization).reshape(-1, len(KIND_NAMES)),
            "inlet_c": np.asarray(self.inlet_c),
            "energized": np.asarray(self.energized),
            "working": np.asarray(self.working),
            "it_w": np.asarray(self.it_w),
            "ramp_w": np.asarray(self.ramp_w),
        }


@dataclass
class DryRunResult:
    """The verdict (``to_json()``: the keys of DESIGN.md and more) and the history for the
    report."""

    summary: dict[str, Any]
    history: History
    topo: Topology
    ramp_node_ids: list[str]

    @property
    def ok(self) -> bool:
        return bool(self.summary["ok"])

    def to_json(self) -> dict[str, Any]:
        return self.summary


def default_config_path() -> Path:
    """``configs/demo-hall.toml`` of the source tree, else the copy shipped in the package."""
    repo = Path(__file__).resolve().parents[1] / "configs" / "demo-hall.toml"
    if repo.is_file():
        return repo
    return Path(__file__).resolve().parent / "data" / "demo-hall.toml"


def lower_bound_s(topo: Topology, planned_cap_w: F64, post_s: F64 | None = None,
                  boot_s: F64 | None = None) -> float:
    """A physical lower bound on this run's time to full power (s).

    The larger of: the slowest server's boot (BMC ready + POST + OS boot; with ``post_s`` and
    ``boot_s`` the durations the plant drew for this run, else the shortest of each range), and,
    at every node with a ramp limit, the final load at the planned caps divided by the ramp
    limit. No strategy can reach full power before either. It ignores load steps, cooling and
    the feed-loss rules; ``rampguard plan`` reports the planner's bound at worst-case durations.
    """
    post = topo.server_post_s[:, 0] if post_s is None else post_s
    boot_d = topo.server_boot_s[:, 0] if boot_s is None else boot_s
    boot = topo.server_bmc_ready_s + post + boot_d
    bound = float(boot.max()) if boot.size else 0.0
    cap = np.clip(planned_cap_w, topo.server_gpu_min_cap_w, topo.server_gpu_max_w)
    p_w = topo.server_other_max_w + topo.server_gpus * cap
    ramp = np.asarray(topo.ramp_limit_w_per_s)
    nodes = np.flatnonzero(np.isfinite(ramp))
    if nodes.size and topo.n_psus:
        import kernels

        alive = np.ones(topo.n_psus, dtype=np.bool_)
        w = kernels.psu_load_va(p_w, np.ones(topo.n_servers), topo.psu_server, topo.psu_node,
                                topo.psu_phase, alive, topo.n_nodes)
        kernels.aggregate_tree_into(topo.parent_idx, w)
        final_w = w.sum(axis=1)
        bound = max(bound, float((final_w[nodes] / ramp[nodes]).max()))
    return bound


def run_dry_run(
    config: HallConfig | str | Path,
    strategy: str,
    scenario: Scenario | None = None,
    *,
    seed: int = 0,
    options: DryRunOptions | None = None,
    topo: Topology | None = None,
    strategies: dict[str, StrategyFactory] | None = None,
) -> DryRunResult:
    """Run ``strategy`` against the plant of ``config`` under ``scenario``; see the module
    docstring. Raises :class:`UnknownStrategyError`, :class:`~controller.errors.ConfigError`."""
    opts = options or DryRunOptions()
    registry = STRATEGIES if strategies is None else strategies
    if strategy not in registry:
        raise UnknownStrategyError(strategy)
    scenario = scenario or Scenario(name="none", description="no faults", survivable=True)
    started = time.perf_counter()
    if isinstance(config, HallConfig):
        cfg, source = config, "<config>"
    else:
        source = str(config)
        cfg = load_hall_config(config)
    topo = topo if topo is not None else compile_hall(cfg, source=source)
    ctx = StrategyContext(
        cfg, topo, seed,
        cfg.controller.fixed_delay_s if opts.delay_s is None else opts.delay_s,
        cfg.controller.fixed_rate_per_min if opts.rate_per_min is None else opts.rate_per_min)
    strat = registry[strategy](ctx)
    plant = Plant(cfg, topo, seed=seed, options=scenario.plant)
    planned = np.asarray(strat.planned_cap_w, dtype=np.float64)
    n_servers = topo.n_servers
    survivable, unsurvivable_reason = scenario_verdict(cfg, topo, scenario, planned,
                                                       dt_s=opts.dt_s)

    fault_times: list[tuple[str, float]] = []
    relative = [f for f in scenario.faults if f.relative]
    for fault in scenario.faults:
        if not fault.relative:
            plant.schedule_fault(fault, fault.offset_s)
            fault_times.append((fault.kind, fault.offset_s))
    absolute_end = max((f.offset_s + _fault_length_s(f) for f in scenario.faults
                        if not f.relative), default=0.0)

    history = History()
    ramp_nodes = np.flatnonzero(np.isfinite(topo.ramp_limit_w_per_s)
                                | np.isfinite(topo.max_step_w))
    dt = opts.dt_s
    next_tick = 0.0
    next_record = 0.0
    settled_s: float | None = None
    full_power_s: float | None = None
    end_s: float | None = None
    last_changes = -1
    wall_next = started + opts.progress_every_s
    overloads = OverloadRecorder(topo)
    switched_on = np.zeros(topo.n_nodes, dtype=np.int32)

    while plant.t_s < opts.max_sim_s - 1e-9:
        t = plant.t_s
        if t >= next_tick - 1e-9:
            plant.process_due()
            obs = plant.observe() if strat.needs_observation else None
            actions = strat.on_tick(t, obs)
            if actions:
                sent = _reachable(plant, strat, actions)
                for action in sent:
                    if isinstance(action, SwitchOutlets) and action.on:
                        np.add.at(switched_on, np.asarray(action.outlets, dtype=np.int64), 1)
                plant.submit(sent)
            next_tick = t + (strat.tick_s if strat.tick_s else dt)
        plant.step(dt)
        t = plant.t_s
        overloads.sample(plant, t)
        if full_power_s is None and plant.server_changes != last_changes:
            last_changes = plant.server_changes
            if n_servers and plant.servers_at_cap(planned) == n_servers:
                full_power_s = t
        if t >= next_record - 1e-9:
            _record(plant, history, ramp_nodes, t)
            next_record = t + opts.record_period_s
            if settled_s is None and strat.done(t) and plant.starting_servers() == 0:
                settled_s = t
                for fault in relative:
                    plant.schedule_fault(fault, t + fault.offset_s)
                    fault_times.append((fault.kind, t + fault.offset_s))
                ends = [t + f.offset_s + _fault_length_s(f) for f in relative]
                if scenario.faults:
                    end_s = max([absolute_end, *ends]) + scenario.observe_s
                    end_s = max(end_s, t + opts.tail_s)
                else:
                    end_s = t + opts.tail_s
        if end_s is not None and t >= end_s - 1e-9:
            break
        if opts.progress is not None and time.perf_counter() >= wall_next:
            wall = time.perf_counter() - started
            opts.progress(f"dry-run: {t:,.0f} s of virtual time, {t / wall:,.0f}× real time, "
                          f"{plant.energized_servers()}/{n_servers} servers energized, "
                          f"{len(plant.trips)} trips, {len(plant.violations)} violations")
            wall_next = time.perf_counter() + opts.progress_every_s
    episodes = overloads.close(plant.t_s)
    plant.finish()
    _record(plant, history, ramp_nodes, plant.t_s)
    wall = time.perf_counter() - started

    trips = [tr.to_dict() for tr in plant.trips]
    violations = [v.to_dict() for v in sorted(plant.violations, key=lambda v: (v.t_s, v.node))]
    peak = plant.peak_utilization()
    peak_by_kind: dict[str, float] = {}
    for code, name in enumerate(KIND_NAMES):
        sel = topo.node_kind == code
        if sel.any():
            peak_by_kind[name] = round(float(peak[sel].max()), 4)
    ok = not trips and not violations
    effects = _fault_effects(plant, fault_times)
    summary: dict[str, Any] = {
        "config": source,
        "hall": topo.name,
        "strategy": strategy,
        "scenario": scenario.name,
        "scenario_survivable": survivable,
        "scenario_unsurvivable_reason": unsurvivable_reason,
        "seed": seed,
        "ok": ok,
        "trips": trips[:MAX_LISTED],
        "trips_total": len(trips),
        "violations": violations[:MAX_LISTED],
        "violations_total": len(violations),
        "violations_by_kind": _count(v["kind"] for v in violations),
        "overload_episodes": [ep.to_dict() for ep in episodes[:MAX_LISTED]],
        "overload_episodes_total": len(episodes),
        "limit_s_beyond_deadline": round(limit_s_beyond_deadline(episodes), 3),
        "double_energizations": int(np.count_nonzero(switched_on > 1)),
        "time_to_full_power_s": None if full_power_s is None else round(full_power_s, 3),
        "lower_bound_s": round(lower_bound_s(topo, planned, plant.server_post_s,
                                             plant.server_boot_s), 3),
        "lower_bound_kind": "physical for this run: max(slowest server's BMC + POST + boot as "
                            "drawn for this seed, final load / ramp limit at each ramp-limited "
                            "node)",
        "bring_up_settled_s": None if settled_s is None else round(settled_s, 3),
        "peak_utilization": peak_by_kind,
        "peak_inlet_c": round(plant.peak_inlet_c, 3),
        "energized_servers": plant.energized_servers(),
        "working_servers": plant.working_servers(),
        "total_servers": n_servers,
        "faults": [{"kind": k, "t_s": round(t, 3)} for k, t in fault_times],
        "faults_applied": sum(1 for _, t_f in fault_times if t_f <= plant.t_s + 1e-9),
        "servers_at_min_cap": int(np.count_nonzero(
            plant.server_cap_w <= topo.server_gpu_min_cap_w + 1e-6)),
        "fault_effects": effects,
        "events": [e.to_dict() for e in plant.events][:MAX_LISTED],
        "gpu_slowdowns": plant.gpu_slowdowns,
        "gpu_shutdowns": plant.gpu_shutdowns,
        "dt_s": dt,
        "sim_seconds": round(plant.t_s, 3),
        "wall_seconds": round(wall, 3),
        "real_time_factor": round(plant.t_s / wall, 1) if wall > 0 else None,
    }
    describe = getattr(strat, "summary", None)
    if callable(describe):
        summary["controller"] = describe()
    return DryRunResult(summary, history, topo, [topo.node_id[i] for i in ramp_nodes])


def scenario_verdict(config: HallConfig, topo: Topology, scenario: Scenario,
                     working_cap_w: F64 | None = None, *, dt_s: float = 0.1
                     ) -> tuple[bool | None, str | None]:
    """Whether a correct controller can keep this hall safe under ``scenario``, and why not.

    Without a ``workload-storm`` fault: the scenario's flag. With one: false when the storm's
    swing at ``working_cap_w`` (W per GPU, (S,); default the planner's steady allocation)
    passes a step or ramp limit of the hall (:func:`controller.storm.analyze_hall_storm`,
    feeds normal and, for each ``feed-loss`` fault of the scenario, that feed lost; the
    scenario's ramp window, plant step ``dt_s``); else the flag of the scenario's other parts
    (a named scenario, or a pair of them, whose storm fits: true unless another part is not).
    Returns ``(survivable, reason)``; ``reason`` is ``None`` unless ``survivable`` is false.
    """
    storms = [f for f in scenario.faults if f.kind == "workload-storm"]
    flag = _flag_of_other_parts(scenario) if storms else scenario.survivable
    if storms:
        lost = sorted({f.feed for f in scenario.faults if f.kind == "feed-loss"})
        servers = sorted({i for f in storms for i in topo.match_servers(f.servers)})
        analysis = analyze_hall_storm(
            config, topo, working_cap_w=working_cap_w, servers=servers,
            states=(STATE_NORMAL, *(f"feed {feed} lost" for feed in lost)),
            ramp_window_s=scenario.plant.ramp_window_s, dt_s=dt_s)
        if not analysis.survivable:
            return False, analysis.reason()
    if flag is False:
        return False, _flag_reason(scenario)
    return flag, None


def _named_parts(scenario: Scenario) -> list[str] | None:
    """The named scenarios ``scenario`` is made of (a name or ``a+b``), or ``None`` when it is
    not exactly their faults (a scenario file)."""
    from sim.faults import NAMED_SCENARIOS

    parts = scenario.name.split("+")
    if not all(p in NAMED_SCENARIOS for p in parts):
        return None
    faults = [f for p in parts for f in NAMED_SCENARIOS[p].scenario.faults]
    return parts if list(scenario.faults) == faults else None


def _flag_of_other_parts(scenario: Scenario) -> bool | None:
    """The flag of a scenario with a storm that fits the hall: a named scenario (or pair)
    takes its other parts' flags; a scenario file keeps its own."""
    from sim.faults import NAMED_SCENARIOS

    parts = _named_parts(scenario)
    if parts is None:
        return scenario.survivable
    flags = [NAMED_SCENARIOS[p].survivable for p in parts]
    flags = [True if f is None else f for f in flags]  # None: the storm, decided by the hall
    return False if False in flags else True


def _flag_reason(scenario: Scenario) -> str:
    from sim.faults import NAMED_SCENARIOS

    parts = _named_parts(scenario)
    if parts is None:
        return f"the scenario {scenario.name!r} is marked unsurvivable"
    bad = [p for p in parts if NAMED_SCENARIOS[p].survivable is False]
    return "; ".join(f"{p}: {NAMED_SCENARIOS[p].scenario.description} (unsurvivable for any "
                     "controller)" for p in bad)


def _fault_length_s(fault: Any) -> float:
    if fault.kind == "workload-storm":
        return float(fault.idle_s)
    return float(fault.duration_s or 0.0)


def _reachable(plant: Plant, strat: Strategy, actions: Sequence[Action]) -> list[Action]:
    """Drop the outlet commands a transport-using strategy sends to unreachable devices."""
    if not strat.uses_transport:
        return list(actions)
    out: list[Action] = []
    for action in actions:
        if isinstance(action, SwitchOutlets):
            ok = plant.outlets_reachable(action.outlets)
            if not ok.all():
                action = SwitchOutlets(action.outlets[ok], action.on, action.t_s)
        out.append(action)
    return out


def _record(plant: Plant, history: History, ramp_nodes: npt.NDArray[np.int64], t: float) -> None:
    history.t_s.append(t)
    history.utilization.append(plant.utilization_by_kind())
    history.inlet_c.append(plant.zone_inlet_c())
    history.energized.append(plant.energized_servers())
    history.working.append(plant.working_servers())
    history.it_w.append(float(plant.zone_p_it_w.sum()))
    history.ramp_w.append(plant.source_power_w(ramp_nodes))


def _count(items: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


def _fault_effects(plant: Plant, fault_times: list[tuple[str, float]]) -> list[dict[str, Any]]:
    """For each fault: when the inlet first passed the allowable temperature, and when GPUs
    first slowed down or shut down after it (s after the fault; null if never): for an
    unsurvivable cooling loss, the time it bought."""
    out = []
    for kind, t0 in fault_times:
        def after(kinds: tuple[str, ...], t0: float = t0) -> float | None:
            times = [e.t_s - t0 for e in plant.events if e.kind in kinds and e.t_s >= t0]
            return round(min(times), 3) if times else None

        out.append({
            "kind": kind, "t_s": round(t0, 3),
            "inlet_above_allowable_after_s": after(("inlet-above-allowable",)),
            "gpu_slowdown_after_s": after(("gpu-slowdown",)),
            "gpu_shutdown_after_s": after(("gpu-shutdown",)),
            "trips_after": sum(1 for tr in plant.trips if tr.t_s >= t0),
        })
    return out


__all__ = [
    "DEFAULT_STRATEGY",
    "STRATEGIES",
    "DryRunOptions",
    "DryRunResult",
    "History",
    "OverloadEpisode",
    "OverloadRecorder",
    "ScheduleStrategy",
    "Strategy",
    "StrategyContext",
    "StrategyFactory",
    "UnknownStrategyError",
    "default_config_path",
    "limit_s_beyond_deadline",
    "lower_bound_s",
    "register_strategy",
    "run_dry_run",
    "scenario_verdict",
]
