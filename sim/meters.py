"""Meters and the transport devices behind them, as a controller would see them.

Meters are the nodes named by the config's ``[[bindings.meters]]`` (first binding wins when two
match one node). Each samples its node every ``update_period_s`` of its binding, at multiples of
the period: per-phase current (A), line-to-neutral voltage (V), per-phase real power (W) and
the energy counter (Wh), with Gaussian noise (``PlantOptions.meter_noise_x`` relative) and
quantization (``meter_*_quantum_*``). A controller reads the last sample, with the time it was
taken.

Transport devices: a Modbus binding deals its nodes unit ids ``unit_id_start, ...`` on ``port``
and moves to the next port after ``units_per_port`` (one device per node); an MQTT binding has
one topic per node. Outlet actuators (``[[bindings.actuators]]``) are the Modbus devices of the
rack PDUs. A device key is ``"host:port/unit"`` or ``"mqtt:topic"``.

Faults: a stale meter keeps its last value and sample time; a stuck one keeps its last value with
a fresh sample time; a lying one scales its readings; a
dead one answers nothing (quality :data:`QUALITY_NO_REPLY`, NaN values); an unreachable device
answers nothing either (:data:`QUALITY_UNREACHABLE`).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from controller.model import HallConfig
from controller.topology import Topology
from kernels import plant as kp
from sim.options import PlantOptions

QUALITY_OK = 0
QUALITY_NO_REPLY = 1
QUALITY_UNREACHABLE = 2
QUALITY_NAMES = ("ok", "no-reply", "unreachable")

F64 = npt.NDArray[np.float64]


def _modbus_key(host: str, port: int, unit_start: int, per_port: int, k: int) -> str:
    return f"{host}:{port + k // per_port}/{unit_start + k % per_port}"


class MeterBank:
    """The hall's meters: which node each measures, its device, its period, its last sample."""

    def __init__(self, config: HallConfig, topo: Topology, options: PlantOptions,
                 seed: np.random.SeedSequence) -> None:
        self._options = options
        self._rng_state = seed.generate_state(1, np.uint64)
        nodes: list[int] = []
        periods: list[float] = []
        devices: list[str] = []
        seen: set[int] = set()
        for binding in config.bindings.meters:
            matched = topo.match_nodes(binding.nodes)
            for k, i in enumerate(matched):
                if i in seen:
                    continue
                seen.add(i)
                nodes.append(i)
                periods.append(binding.update_period_s)
                if binding.modbus is not None:
                    mb = binding.modbus
                    devices.append(_modbus_key(mb.host, mb.port, mb.unit_id_start,
                                               mb.units_per_port, k))
                else:
                    topic = (binding.topic or "").replace("{node}", topo.node_id[i])
                    devices.append(f"mqtt:{topic}")
        self.node = np.asarray(nodes, dtype=np.int32)
        self.meter_index = {int(i): j for j, i in enumerate(nodes)}
        self.period_s = np.asarray(periods, dtype=np.float64)
        self.device_names: list[str] = sorted(set(devices))
        dev_index = {d: j for j, d in enumerate(self.device_names)}
        self.device = np.asarray([dev_index[d] for d in devices], dtype=np.int32)
        # actuator devices of rack PDUs, by node index
        self.pdu_device: dict[int, str] = {}
        pdus = set(topo.nodes_of_kind("rack_pdu").tolist())
        for act in config.bindings.actuators:
            matched = [i for i in topo.match_nodes(act.pdus) if i in pdus]
            mb = act.modbus
            for k, i in enumerate(matched):
                self.pdu_device.setdefault(
                    i, _modbus_key(mb.host, mb.port, mb.unit_id_start, mb.units_per_port, k))
        for d in self.pdu_device.values():
            if d not in dev_index:
                dev_index[d] = len(self.device_names)
                self.device_names.append(d)
        self.device_index = dev_index
        self.device_unreachable = np.zeros(len(self.device_names), dtype=np.bool_)
        m = self.node.shape[0]
        self.i_a = np.zeros((m, 3))
        self.v_v = np.zeros((m, 3))
        self.p_w = np.zeros((m, 3))
        self.e_wh = np.zeros(m)
        self.t_sample_s = np.full(m, -np.inf)
        self.stale = np.zeros(m, dtype=np.bool_)
        self.stuck = np.zeros(m, dtype=np.bool_)
        self.dead = np.zeros(m, dtype=np.bool_)
        self.lie_x = np.ones(m)
        self._groups = [(float(p), np.flatnonzero(self.period_s == p).astype(np.int32))
                        for p in np.unique(self.period_s)]
        self._next_s = [0.0 for _ in self._groups]
        self.next_due_s = 0.0 if m else np.inf

    @property
    def count(self) -> int:
        return int(self.node.shape[0])

    def meters_of(self, nodes: list[int]) -> npt.NDArray[np.int64]:
        """Meter indices of the given node indices (nodes without a meter are skipped)."""
        want = np.zeros(int(self.node.max()) + 1 if self.count else 0, dtype=np.bool_)
        sel = [i for i in nodes if i < want.shape[0]]
        want[sel] = True
        return np.flatnonzero(want[self.node]) if self.count else np.zeros(0, np.int64)

    def sample(self, t_s: float, node_va: F64, node_pw: F64, v_ln_v: F64,
               energized: npt.NDArray[np.bool_], energy_j: F64, t_state_s: F64) -> None:
        """Take the samples due at or before ``t_s`` from the plant's true state."""
        opts = self._options
        for g, (period, idx) in enumerate(self._groups):
            if self._next_s[g] > t_s:
                continue
            self._next_s[g] = (np.floor(t_s / period) + 1.0) * period
            self.t_sample_s[idx[self.stuck[idx] & ~self.stale[idx]]] = t_s
            take = idx[~self.stale[idx] & ~self.stuck[idx]]
            if take.size == 0:
                continue
            kp._meter_sample(t_s, take, self.node, node_va, node_pw, v_ln_v, energized,
                             energy_j, t_state_s, self.lie_x, opts.meter_noise_x,
                             opts.meter_voltage_noise_x, opts.meter_current_quantum_a,
                             opts.meter_voltage_quantum_v, opts.meter_power_quantum_w,
                             opts.meter_energy_quantum_wh, self._rng_state, self.i_a,
                             self.v_v, self.p_w, self.e_wh, self.t_sample_s)
        self.next_due_s = min(self._next_s) if self._next_s else np.inf

    def quality(self) -> npt.NDArray[np.int8]:
        q = np.full(self.count, QUALITY_OK, dtype=np.int8)
        q[self.dead] = QUALITY_NO_REPLY
        q[self.device_unreachable[self.device]] = QUALITY_UNREACHABLE
        return q


