"""The staged strategy of the dry run: the decision core driving the simulated plant.

:class:`CoreStrategy` is a :class:`controller.dryrun.Strategy`: every controller tick it turns
the plant's :class:`~sim.Observation` into what the service would see (meter readings into a
:class:`~controller.telemetry.TelemetryStore`, outlet/breaker/zone read-backs into
:class:`~controller.core.Readbacks`), calls :func:`controller.core.decide` on virtual time, and
turns the core's actions into the plant's (outlets at their inrush-spaced times, GPU caps). The
core is the same function the service runs (DESIGN.md: one core, three wirings).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from controller import core
from controller.core import DEAD_VOLTAGE_FRACTION, CoreContext, CoreState, Readbacks
from controller.model import HallConfig
from controller.planner import plan
from controller.telemetry import TelemetryStore
from controller.topology import Topology
from kernels.rows import row_max
from sim import Action, Observation, SetGpuCaps, SwitchOutlets

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]



class CoreStrategy:
    """The closed-loop controller as a dry-run strategy (``--strategy staged``)."""

    needs_observation = True
    uses_transport = True
    tick_s: float | None

    def __init__(self, config: HallConfig, topo: Topology, *, seed: int = 0,
                 outlet_nodes: Sequence[int] | npt.NDArray[np.integer] | None = None) -> None:
        self.name = "staged"
        self.topo = topo
        self.settings = config.controller
        self.tick_s = float(config.controller.tick_s)
        self.ctx = CoreContext(topo, config.controller, outlet_nodes=outlet_nodes)
        self.now_s = 0.0
        self.store: TelemetryStore | None = None
        self.state: CoreState = core.initial_state(self.ctx, seed=seed)
        self.state = core.start_ramp(self.ctx, self.state, 0.0)
        # the caps the bring-up aims at (time to full power is judged against them)
        first = plan(topo, "staged", context=self.ctx.planner)
        self.planned_cap_w: F64 = first.final_cap_w.astype(np.float64)
        self.alarms: list[tuple[float, core.Alarm]] = []
        self.actions_sent: dict[str, int] = {"energize": 0, "set_caps": 0, "switch_off": 0}
        self.energized_twice = 0
        self._outlet_commands = np.zeros(topo.n_nodes, np.int32)
        self.last: core.Decision | None = None

    # -- Strategy protocol ---------------------------------------------------------------------
    def on_tick(self, t_s: float, observation: Observation | None) -> Sequence[Action]:
        if observation is None:
            raise ValueError("the staged strategy needs observations")
        self.now_s = t_s
        store = self._ingest(observation)
        rb = self._readbacks(observation)
        decision = core.decide(self.ctx, store, rb, self.state, t_s)
        self.state = decision.state
        self.last = decision
        return self._to_plant(decision.actions, t_s)

    def done(self, t_s: float) -> bool:
        return self.state.mode in (core.Mode.STEADY, core.Mode.IDLE, core.Mode.SAFE) or (
            not self.state.ramp_active)

    # -- observation → store and read-backs -------------------------------------------------------
    def _ingest(self, obs: Observation) -> TelemetryStore:
        if self.store is None:
            self.store = TelemetryStore(self.topo, self.settings, obs.meter_node,
                                        np.arange(self.topo.n_servers),
                                        clock=lambda: self.now_s)
            if not np.array_equal(np.asarray(obs.outlet_node), self.ctx.outlet_node):
                self.ctx = CoreContext(self.topo, self.settings, outlet_nodes=obs.outlet_node,
                                       planner=self.ctx.planner)
                self.state = core.initial_state(self.ctx, seed=self.state.rng_seed)
                self.state = core.start_ramp(self.ctx, self.state, obs.t_s)
        store = self.store
        fresh = np.flatnonzero((obs.meter_quality == 0) & np.isfinite(obs.meter_t_sample_s))
        if fresh.size:   # (np.take: rows gathered several times faster than by indexing)
            store.ingest_nodes(obs.meter_node[fresh], np.take(obs.meter_i_a, fresh, axis=0),
                               obs.meter_t_sample_s[fresh])
        up = np.flatnonzero(obs.server_agent_up)
        if up.size:
            store.ingest_servers(up, obs.server_gpu_w[up], obs.server_cap_w[up], obs.t_s)
        store.refresh()
        return store

    def _readbacks(self, obs: Observation) -> Readbacks:
        closed = np.ones(self.topo.n_nodes, bool)
        # the open ones only: most are closed, and a scatter of every breaker costs 0.1 ms
        closed[obs.breaker_node[~np.asarray(obs.breaker_closed, bool)]] = False
        return Readbacks(outlet_on=np.asarray(obs.outlet_on, bool),
                         outlet_known=np.asarray(obs.outlet_reachable, bool),
                         breaker_closed=closed, zone_inlet_c=np.asarray(obs.zone_inlet_c),
                         node_live=self._live(obs))

    def _live(self, obs: Observation) -> npt.NDArray[np.bool_]:
        """False at metered nodes whose fresh reading shows no voltage on any phase (below
        :data:`DEAD_VOLTAGE_FRACTION` of the nominal line-to-neutral voltage): a lost feed."""
        live = np.ones(self.topo.n_nodes, bool)
        fresh = np.flatnonzero((obs.meter_quality == 0) & np.isfinite(obs.meter_t_sample_s))
        if fresh.size:
            nodes = obs.meter_node[fresh]
            v = np.take(np.asarray(obs.meter_v_v), fresh, axis=0)
            nominal = np.asarray(self.topo.v_ln_v)[nodes]
            with np.errstate(invalid="ignore"):
                dead = row_max(np.where(np.isfinite(v), v, 0.0)) < (
                    DEAD_VOLTAGE_FRACTION * nominal)
            live[nodes[dead]] = False
        return live

    # -- core actions → plant actions -------------------------------------------------------------
    def _to_plant(self, actions: Sequence[core.CoreAction], t_s: float) -> list[Action]:
        out: list[Action] = []
        for a in actions:
            if isinstance(a, core.Energize):
                nodes = self.ctx.outlet_node[a.outlets]
                self._outlet_commands[nodes] += 1
                self.energized_twice = int((self._outlet_commands > 1).sum())
                times = np.maximum(a.at_s, t_s)
                order = np.argsort(times, kind="stable")
                cuts = np.flatnonzero(np.diff(times[order])) + 1
                for group in np.split(order, cuts):
                    out.append(SwitchOutlets(nodes[group], True, t_s=float(times[group[0]])))
                self.actions_sent["energize"] += int(a.outlets.size)
            elif isinstance(a, core.SwitchOff):
                out.append(SwitchOutlets(self.ctx.outlet_node[a.outlets], False, t_s=t_s))
                self.actions_sent["switch_off"] += int(a.outlets.size)
            elif isinstance(a, core.SetCaps):
                out.append(SetGpuCaps(a.servers, a.cap_w, t_s=t_s))
                self.actions_sent["set_caps"] += int(a.servers.size)
            else:
                self.alarms.append((t_s, a))
                log.info("alarm at %.1f s: %s", t_s, a.message)
        return out

    def summary(self) -> dict[str, Any]:
        """What the controller did, for the dry run's JSON."""
        st = self.state
        return {
            "mode": st.mode.value,
            "mode_reason": st.mode_reason,
            "transitions": [{"t_s": round(t, 3), "from": a, "to": b, "reason": r}
                            for t, a, b, r in st.transitions],
            "actions": dict(self.actions_sent),
            "energized_twice": self.energized_twice,
            "alarms": [{"t_s": round(t, 3), "code": a.code, "node": a.node,
                        "message": a.message, "active": a.active} for t, a in self.alarms[:200]],
            "ticks": st.ticks,
            "post_power": {"planned_x": round(st.post_x, 4),
                           "measured_x": _rounded(st.extra.get("post_measured_x")),
                           "measured_at": st.extra.get("post_measured_at")},
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)
