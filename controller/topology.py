"""The topology compiler: a validated :class:`HallConfig` → flat numpy arrays, once.

The compiler expands templates (rack groups × rack templates × PDU models × server slots) into
one electrical tree and one list of servers and PSUs, checks what only the expanded tree can show
(generated ids that collide, PSUs on missing or shared outlets, a PDU slot hanging from the other
feed, children rated above their parent), and lays everything out as arrays that the kernels and
the simulator use directly:

* nodes are sorted so that ``parent_idx[i] < i`` (a topological order: every parent before its
  children), stably by depth, so the result is deterministic for a given config;
* per-pole arrays have shape ``(n, 3)`` for lines L1, L2, L3; an absent pole has rating 0;
* units are SI throughout: A, V, W, s, J/K; kW and kVA from the config are converted here.

Nothing in the returned :class:`Topology` is writable: it is shared by the controller, the
simulator and the planner and must not drift.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt

from controller.errors import ConfigError, ConfigIssue
from controller.model import (
    CurveBreaker,
    ElectronicBreaker,
    HallConfig,
    RackPduModel,
    RackTemplate,
    ServerModel,
    block_parent,
    format_loc,
    parent_list,
)
from kernels.breaker import electronic_params, mcb_params

F64 = npt.NDArray[np.float64]
I32 = npt.NDArray[np.int32]
I8 = npt.NDArray[np.int8]

KIND_NAMES: tuple[str, ...] = (
    "source", "ups", "switchboard", "panel", "branch", "rack_pdu", "bank", "outlet",
)
KIND_CODE: dict[str, int] = {name: code for code, name in enumerate(KIND_NAMES)}
FEED_NAMES: tuple[str, ...] = ("A", "B")
LINE_CODE = {"L1": 0, "L2": 1, "L3": 2}
# PSU connection codes shared with kernels.aggregate: 0-2 L-N, 3-5 L-L, 6 balanced 3φ.
CONNECTION_CODE = {"L1": 0, "L2": 1, "L3": 2, "L1-L2": 3, "L2-L3": 4, "L3-L1": 5}
CONNECTION_POLES = {0: (0,), 1: (1,), 2: (2,), 3: (0, 1), 4: (1, 2), 5: (2, 0), 6: (0, 1, 2)}
_SQRT3 = math.sqrt(3.0)
_INF = math.inf
MCB_MAX_A = 125.0  # IEC 60898-1 covers miniature breakers up to 125 A


@dataclass(frozen=True, slots=True)
class TripArrays:
    """Trip parameters per node, relative to the node's rating ``rating_a`` (In).

    ``thermal_k`` (×In; inf = no thermal element), ``thermal_tau_s`` (s), ``magnetic_x``
    (instantaneous, ×In; inf = none), ``short_pickup_x`` (×In; inf = none), ``short_delay_s`` (s).
    """

    thermal_k: F64
    thermal_tau_s: F64
    magnetic_x: F64
    short_pickup_x: F64
    short_delay_s: F64


@dataclass(frozen=True, slots=True)
class Topology:
    """A compiled hall. See the module docstring for the conventions."""

    name: str
    # -- nodes (n) -------------------------------------------------------------------------
    node_id: tuple[str, ...]
    node_index: dict[str, int]
    node_kind: I8            # KIND_CODE
    parent_idx: I32          # -1 for sources; parent_idx[i] < i otherwise
    order: I32               # topological order (the identity, kept explicit for kernels)
    depth: I32               # 0 for sources
    node_feed: I8            # 0 = A, 1 = B: the feed of the node's source
    v_ll_v: F64
    v_ln_v: F64
    rating_a: F64            # (n, 3) per pole; 0 = absent pole
    limit_a: F64             # (n, 3) continuous limit per pole
    trip: TripArrays         # the plant's breakers as configured (the simulator's truth)
    trip_guard: TripArrays   # the controller's assumption: earliest long-time, lowest magnetic
    has_breaker: npt.NDArray[np.bool_]
    ramp_limit_w_per_s: F64  # inf where none
    max_step_w: F64          # inf where none
    inrush_guard_s: F64      # banks and outlets: their PDU's guard; 0 elsewhere
    node_rack: I32           # rack of rack-level nodes (branch, PDU, bank, outlet); -1 upstream
    # -- servers (S) ------------------------------------------------------------------------
    server_id: tuple[str, ...]
    server_model: I32        # index into server_model_id
    server_rack: I32
    server_zone: I32
    server_priority: I32     # higher is more important; lowest is capped first
    server_pf: F64
    server_max_w: F64
    server_idle_w: F64
    server_standby_w: F64
    server_post_w: F64
    server_boot_w: F64
    server_post_s: F64       # (S, 2) [min, max]
    server_boot_s: F64       # (S, 2) [min, max]
    server_bmc_ready_s: F64
    server_gpus: I32
    server_gpu_idle_w: F64
    server_gpu_min_cap_w: F64
    server_gpu_max_w: F64
    server_other_max_w: F64
    server_psus: I32
    server_psus_to_boot: I32
    server_psus_to_carry: I32
    server_inrush_peak_a: F64      # per PSU
    server_inrush_duration_s: F64
    server_model_id: tuple[str, ...]
    # -- PSUs (K) ---------------------------------------------------------------------------
    psu_server: I32
    psu_node: I32            # the outlet node
    psu_phase: I8            # connection code (0-2 L-N, 3-5 L-L)
    psu_feed: I8
    # -- racks and zones --------------------------------------------------------------------
    rack_id: tuple[str, ...]
    rack_zone: I32
    zone_id: tuple[str, ...]
    zone_capacity_w: F64
    zone_capacity_n1_w: F64
    zone_units: I32
    zone_response_tau_s: F64
    zone_air_heat_capacity_j_per_k: F64
    zone_mass_heat_capacity_j_per_k_per_w: F64
    zone_mass_time_constant_s: F64
    zone_supply_setpoint_c: F64
    zone_inlet_hold_c: F64
    zone_inlet_recommended_c: F64
    zone_inlet_allowable_c: F64

    @property
    def n_nodes(self) -> int:
        return len(self.node_id)

    @property
    def n_servers(self) -> int:
        return len(self.server_id)

    @property
    def n_psus(self) -> int:
        return int(self.psu_server.shape[0])

    @property
    def n_gpus(self) -> int:
        return int(self.server_gpus.sum())

    def nodes_of_kind(self, kind: str) -> I32:
        return np.flatnonzero(self.node_kind == KIND_CODE[kind]).astype(np.int32)

    def match_nodes(self, pattern: str) -> list[int]:
        """Indices of the nodes whose id matches a glob (or equals an exact id)."""
        if pattern in self.node_index:
            return [self.node_index[pattern]]
        return _glob(pattern, self.node_id)

    def rack_pdu_of(self) -> npt.NDArray[np.int64]:
        """For every node, its rack PDU ancestor-or-self (-1 above rack PDUs)."""
        pdu = np.full(self.n_nodes, -1, dtype=np.int64)
        is_pdu = self.node_kind == KIND_CODE["rack_pdu"]
        pdu[is_pdu] = np.flatnonzero(is_pdu)
        parent = self.parent_idx
        for d in range(1, int(self.depth.max()) + 1 if self.n_nodes else 0):
            level = np.flatnonzero((self.depth == d) & ~is_pdu)  # parents are one level up
            pdu[level] = pdu[parent[level]]
        return pdu

    def match_servers(self, pattern: str) -> list[int]:
        """Indices of the servers whose id matches a glob."""
        return _glob(pattern, self.server_id)


def _glob(pattern: str, names: tuple[str, ...]) -> list[int]:
    match = re.compile(fnmatch.translate(pattern)).match
    return [i for i, name in enumerate(names) if match(name)]


# ============================================================================================
# Expansion
# ============================================================================================
class _Issues:
    def __init__(self) -> None:
        self.items: list[ConfigIssue] = []
        self._seen: set[tuple[str, str]] = set()

    def add(self, loc: tuple[str | int, ...], message: str) -> None:
        key = (format_loc(loc), message)
        if key not in self._seen:
            self._seen.add(key)
            self.items.append(ConfigIssue(*key))


@dataclass
class _Proto:
    """One rack template laid out once: local nodes, servers and PSUs, repeated per rack."""

    kind: list[int]
    parent: list[int]        # local index, -1 = the rack group's parent for this slot
    slot: list[int]          # PDU slot index of the node
    suffix: list[str]        # id suffix appended to the rack id
    v_ll_v: list[float]
    rating: list[tuple[float, float, float]]
    cont_frac: list[float | None]
    breaker: list[CurveBreaker | ElectronicBreaker | None]
    guard_s: list[float]
    exceeds_ok: list[bool]
    origin: list[tuple[str | int, ...]]
    server_model: list[int]
    server_priority: list[int | None]
    server_suffix: list[str]
    psu_server: list[int]
    psu_node: list[int]
    psu_phase: list[int]
    psu_slot: list[int]


def _line_rating(lines: Sequence[str], rating_a: float) -> tuple[float, float, float]:
    r = [0.0, 0.0, 0.0]
    for line in lines:
        r[LINE_CODE[line]] = rating_a
    return (r[0], r[1], r[2])


def _build_proto(
    t: int,
    template: RackTemplate,
    pdu_models: dict[str, RackPduModel],
    server_index: dict[str, int],
    server_models: list[ServerModel],
    issues: _Issues,
) -> _Proto:
    p = _Proto([], [], [], [], [], [], [], [], [], [], [], [], [], [], [], [], [], [])

    def add(kind: str, parent: int, slot: int, suffix: str, v: float,
            rating: tuple[float, float, float], frac: float | None,
            breaker: CurveBreaker | ElectronicBreaker | None, guard: float, ok: bool,
            origin: tuple[str | int, ...]) -> int:
        p.kind.append(KIND_CODE[kind])
        p.parent.append(parent)
        p.slot.append(slot)
        p.suffix.append(suffix)
        p.v_ll_v.append(v)
        p.rating.append(rating)
        p.cont_frac.append(frac)
        p.breaker.append(breaker)
        p.guard_s.append(guard)
        p.exceeds_ok.append(ok)
        p.origin.append(origin)
        return len(p.kind) - 1

    # outlet local index by (slot, bank id, outlet number), and the outlets of each bank in order
    outlet_at: dict[tuple[str, str, int], int] = {}
    bank_outlets: list[list[list[int]]] = []
    outlet_conn: dict[int, int] = {}
    for s, slot in enumerate(template.pdus):
        model = pdu_models[slot.model]
        m_loc = ("rack_templates", t, "pdus", s)
        parent = -1
        if slot.branch is not None:
            br = slot.branch
            parent = add("branch", -1, s, f"-{slot.slot}-BR", model.v_ll_v,
                         _line_rating(model.lines, br.rating_a), br.continuous_fraction,
                         br.breaker, 0.0, br.exceeds_parent_ok, (*m_loc, "branch"))
        pdu = add("rack_pdu", parent, s, f"-{slot.slot}", model.v_ll_v,
                  _line_rating(model.lines, model.inlet_rating_a), model.continuous_fraction,
                  None, 0.0, False, (*m_loc, "model"))
        banks: list[list[int]] = []
        for b, bank in enumerate(model.banks):
            lines = bank.connection.split("-")
            bank_node = add("bank", pdu, s, f"-{slot.slot}-{bank.id}", model.v_ll_v,
                            _line_rating(lines, bank.rating_a), model.continuous_fraction,
                            bank.breaker, model.inrush_guard_s, bank.exceeds_parent_ok,
                            ("pdu_models", _model_pos(pdu_models, slot.model), "banks", b))
            outs: list[int] = []
            for k in range(1, bank.outlets + 1):
                o = add("outlet", bank_node, s, f"-{slot.slot}-{bank.id}-{k}", model.v_ll_v,
                        _line_rating(lines, bank.outlet_rating_a), model.continuous_fraction,
                        None, model.inrush_guard_s, False,
                        ("pdu_models", _model_pos(pdu_models, slot.model), "banks", b,
                         "outlet_rating_a"))
                outlet_at[(slot.slot, bank.id, k)] = o
                outlet_conn[o] = CONNECTION_CODE[bank.connection]
                outs.append(o)
            banks.append(outs)
        bank_outlets.append(banks)

    used: dict[int, str] = {}
    psu_counter = 0
    next_free = [[0] * len(banks) for banks in bank_outlets]
    bank_turn = [0] * len(template.pdus)
    n_server = 0
    for ss, sslot in enumerate(template.servers):
        m = server_index[sslot.model]
        model_s = server_models[m]
        s_loc = ("rack_templates", t, "servers", ss)
        for c in range(sslot.count):
            sidx = len(p.server_model)
            n_server += 1
            p.server_model.append(m)
            p.server_priority.append(sslot.priority)
            p.server_suffix.append(f"-S{n_server:02d}")
            for j in range(model_s.psus):
                if sslot.placement == "explicit":
                    assert sslot.psu_outlets is not None
                    refs = sslot.psu_outlets[c]
                    if len(refs) != model_s.psus:
                        issues.add((*s_loc, "psu_outlets", c),
                                   f"server model {model_s.id!r} has {model_s.psus} PSUs, "
                                   f"{len(refs)} outlets given")
                        break
                    ref = refs[j]
                    parts = ref.split("/")
                    key = None
                    if len(parts) == 3 and parts[2].isascii() and parts[2].isdigit():
                        key = (parts[0], parts[1], int(parts[2]))
                    if key is None or key not in outlet_at:
                        issues.add((*s_loc, "psu_outlets", c, j),
                                   f"outlet {ref!r} does not exist (expected SLOT/BANK/N with a "
                                   "slot of this template, a bank of its PDU model and N from 1 "
                                   "to the bank's outlet count)")
                        continue
                    o = outlet_at[key]
                    s_slot = [ps.slot for ps in template.pdus].index(key[0])
                else:
                    s_slot = psu_counter % len(template.pdus)
                    psu_counter += 1
                    banks = bank_outlets[s_slot]
                    o = -1
                    for _ in range(len(banks)):
                        b = bank_turn[s_slot] % len(banks)
                        bank_turn[s_slot] += 1
                        if next_free[s_slot][b] < len(banks[b]):
                            o = banks[b][next_free[s_slot][b]]
                            next_free[s_slot][b] += 1
                            break
                    if o < 0:
                        total = sum(len(x) for x in banks)
                        issues.add(s_loc, f"spread placement ran out of outlets: PDU slot "
                                   f"{template.pdus[s_slot].slot!r} has {total} outlets")
                        continue
                if o in used:
                    issues.add((*s_loc, "psu_outlets", c, j),
                               f"outlet {p.suffix[o][1:]!r} is already used by {used[o]}")
                    continue
                used[o] = f"server {n_server} PSU {j + 1}"
                p.psu_server.append(sidx)
                p.psu_node.append(o)
                p.psu_phase.append(outlet_conn[o])
                p.psu_slot.append(s_slot)
    return _prune_empty_outlets(p, set(used))


def _prune_empty_outlets(p: _Proto, used: set[int]) -> _Proto:
    """Drop outlets that no PSU plugs into: they carry no load and would be most of the nodes.

    Outlet ids keep their number on the PDU (``RACK-A1-3-2``), so an id still names the socket.
    """
    keep = [j for j in range(len(p.kind)) if p.kind[j] != KIND_CODE["outlet"] or j in used]
    new_index = {old: new for new, old in enumerate(keep)}

    def pick(values: list[Any]) -> list[Any]:
        return [values[j] for j in keep]

    return _Proto(
        kind=pick(p.kind),
        parent=[-1 if p.parent[j] < 0 else new_index[p.parent[j]] for j in keep],
        slot=pick(p.slot), suffix=pick(p.suffix), v_ll_v=pick(p.v_ll_v), rating=pick(p.rating),
        cont_frac=pick(p.cont_frac), breaker=pick(p.breaker), guard_s=pick(p.guard_s),
        exceeds_ok=pick(p.exceeds_ok), origin=pick(p.origin),
        server_model=p.server_model, server_priority=p.server_priority,
        server_suffix=p.server_suffix, psu_server=p.psu_server,
        psu_node=[new_index[o] for o in p.psu_node], psu_phase=p.psu_phase,
        psu_slot=p.psu_slot,
    )


def _model_pos(models: dict[str, RackPduModel], model_id: str) -> int:
    return list(models).index(model_id)


def _trip_arrays(
    breaker_ref: npt.NDArray[np.int64],
    table: list[CurveBreaker | ElectronicBreaker],
    rating_a: F64,
    guard: bool,
) -> TripArrays:
    """Trip parameters per node, computed once per distinct (breaker, In) and scattered."""
    n = breaker_ref.shape[0]
    k = np.full(n, _INF)
    tau = np.ones(n)
    mag = np.full(n, _INF)
    st = np.full(n, _INF)
    sd = np.zeros(n)
    nodes = np.flatnonzero(breaker_ref >= 0)
    if nodes.size:
        in_a = rating_a[nodes].max(axis=1)
        keys = np.stack([breaker_ref[nodes].astype(np.float64), in_a], axis=1)
        unique, inverse = np.unique(keys, axis=0, return_inverse=True)
        values = np.array([_one_trip(table[int(ref)], float(i_n), guard) for ref, i_n in unique])
        per_node = values[inverse.reshape(-1)]
        k[nodes], tau[nodes], mag[nodes], st[nodes], sd[nodes] = per_node.T
    arrays = TripArrays(k, tau, mag, st, sd)
    for f in fields(arrays):
        getattr(arrays, f.name).setflags(write=False)
    return arrays


def _one_trip(
    brk: CurveBreaker | ElectronicBreaker, in_a: float, guard: bool
) -> tuple[float, float, float, float, float]:
    if isinstance(brk, CurveBreaker):
        tp = mcb_params(brk.curve, in_a, magnetic="conservative" if guard else "middle")
        thermal_k = brk.thermal_k if brk.thermal_k is not None else tp.thermal_k
        tau = brk.thermal_tau_s if brk.thermal_tau_s is not None else tp.thermal_tau_s
        magnetic = tp.magnetic_x
        if brk.magnetic_x is not None:
            magnetic = min(brk.magnetic_x, tp.magnetic_x) if guard else brk.magnetic_x
        return (thermal_k, tau, magnetic, tp.short_pickup_x, tp.short_delay_s)
    tolerance = "earliest" if guard else brk.tolerance
    tp = electronic_params(
        brk.tr_s, tolerance=tolerance,
        isd_x=_INF if brk.isd_x is None else brk.isd_x, tsd_s=brk.tsd_s,
        ii_x=_INF if brk.ii_x is None else brk.ii_x,
    )
    ir = brk.ir_fraction
    # Long-time and short-time settings are multiples of Ir; the arrays are relative to In, and
    # the config gives the instantaneous setting ii_x as a multiple of In already.
    return (tp.thermal_k * ir, tp.thermal_tau_s, tp.magnetic_x, tp.short_pickup_x * ir,
            tp.short_delay_s)


class _Columns:
    """Node attributes gathered chunk by chunk (upstream nodes, then each rack group)."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.chunks: dict[str, list[np.ndarray]] = {}

    def add(self, ids: list[str], **columns: np.ndarray) -> None:
        self.ids.extend(ids)
        for name, value in columns.items():
            self.chunks.setdefault(name, []).append(value)

    def column(self, name: str) -> np.ndarray:
        return np.concatenate(self.chunks[name])


def compile_hall(config: HallConfig, source: str = "<config>") -> Topology:
    """Expand and compile ``config``; raise :class:`ConfigError` for what only expansion shows."""
    issues = _Issues()
    default_frac = config.defaults.continuous_fraction
    pdu_models = {m.id: m for m in config.pdu_models}
    server_index = {m.id: i for i, m in enumerate(config.server_models)}
    zone_index = {z.id: i for i, z in enumerate(config.zones)}
    templates = {t.id: (i, t) for i, t in enumerate(config.rack_templates)}
    breaker_table: list[CurveBreaker | ElectronicBreaker] = []
    breaker_pos: dict[CurveBreaker | ElectronicBreaker, int] = {}
    origin_table: list[tuple[str | int, ...]] = []

    def breaker_ref(brk: CurveBreaker | ElectronicBreaker | None) -> int:
        if brk is None:
            return -1
        if brk not in breaker_pos:
            breaker_pos[brk] = len(breaker_table)
            breaker_table.append(brk)
        return breaker_pos[brk]

    def origin_ref(loc: tuple[str | int, ...]) -> int:
        origin_table.append(loc)
        return len(origin_table) - 1

    cols = _Columns()
    # --- upstream nodes: few, built one by one -------------------------------------------
    up_names: list[str] = []
    up_parent_name: list[str | None] = []
    for g, group in enumerate(config.nodes):
        r_a = group.rating_per_pole_a()
        poles = (r_a, r_a, r_a) if group.phases == 3 else _line_rating([group.phase or "L1"], r_a)
        parents = parent_list(group.parent)
        group_ids = group.expanded_ids()
        c = len(group_ids)
        up_names.extend(group_ids)
        up_parent_name.extend(block_parent(parents, k, c) if parents else None for k in range(c))
        cols.add(
            group_ids,
            kind=np.full(c, KIND_CODE[group.kind], np.int8),
            v_ll=np.full(c, group.v_ll_v),
            rating=np.tile(np.asarray(poles, np.float64), (c, 1)),
            frac=np.full(c, group.continuous_fraction or default_frac),
            brk=np.full(c, breaker_ref(group.breaker), np.int64),
            guard=np.zeros(c),
            ok=np.full(c, group.exceeds_parent_ok),
            origin=np.full(c, origin_ref(("nodes", g)), np.int64),
            ramp=np.full(c, group.ramp_limit_kw_per_s * 1e3 if group.ramp_limit_kw_per_s
                         else _INF),
            step=np.full(c, group.max_step_kw * 1e3 if group.max_step_kw else _INF),
            feed=np.full(c, FEED_NAMES.index(group.feed) if group.feed else -1, np.int8),
            rack=np.full(c, -1, np.int32),
        )
    n_up = len(up_names)
    up_index: dict[str, int] = {}
    for i, name in enumerate(up_names):
        if name in up_index:  # pragma: no cover - the model validator refuses duplicates
            issues.add(origin_table[int(cols.chunks["origin"][0][0])], f"duplicate {name!r}")
        up_index[name] = i
    up_parent = np.array([-1 if p is None else up_index[p] for p in up_parent_name], np.int64)
    up_depth = np.full(n_up, -1, np.int64)
    up_root = np.full(n_up, -1, np.int64)
    for i in range(n_up):
        chain: list[int] = []
        j = i
        while j >= 0 and up_depth[j] < 0 and len(chain) <= n_up:
            chain.append(j)
            j = int(up_parent[j])
        d = -1 if j < 0 else int(up_depth[j])
        rt = -1 if j < 0 else int(up_root[j])
        for c_i in reversed(chain):
            d += 1
            up_depth[c_i] = d
            if up_parent[c_i] < 0:
                rt = c_i
            up_root[c_i] = rt

    # --- racks: each template laid out once, then tiled -----------------------------------
    protos: dict[str, tuple[_Proto, dict[str, Any]]] = {}
    parents_chunks: list[np.ndarray] = [up_parent]
    depth_chunks: list[np.ndarray] = [up_depth]
    root_chunks: list[np.ndarray] = [up_root]
    rack_ids: list[str] = []
    rack_zone: list[int] = []
    s_ids: list[str] = []
    s_chunks: dict[str, list[np.ndarray]] = {"model": [], "rack": [], "prio": []}
    p_chunks: dict[str, list[np.ndarray]] = {"server": [], "node": [], "phase": [], "feed": []}
    for r, rack_group in enumerate(config.racks):
        t, template = templates[rack_group.template]
        if template.id not in protos:
            proto = _build_proto(t, template, pdu_models, server_index, config.server_models,
                                 issues)
            local_parent = np.asarray(proto.parent, np.int64)
            local_depth = np.zeros(len(proto.kind), np.int64)
            for j, local_par in enumerate(proto.parent):  # parents precede children in a proto
                local_depth[j] = 0 if local_par < 0 else local_depth[local_par] + 1
            arrays = {
                "kind": np.asarray(proto.kind, np.int8),
                "parent": local_parent,
                "depth": local_depth,
                "slot": np.asarray(proto.slot, np.int64),
                "v_ll": np.asarray(proto.v_ll_v, np.float64),
                "rating": np.asarray(proto.rating, np.float64).reshape(-1, 3),
                "frac": np.asarray([f or default_frac for f in proto.cont_frac], np.float64),
                "brk": np.asarray([breaker_ref(b) for b in proto.breaker], np.int64),
                "guard": np.asarray(proto.guard_s, np.float64),
                "ok": np.asarray(proto.exceeds_ok, bool),
                "origin": np.asarray([origin_ref(o) for o in proto.origin], np.int64),
                "psu_server": np.asarray(proto.psu_server, np.int64),
                "psu_node": np.asarray(proto.psu_node, np.int64),
                "psu_phase": np.asarray(proto.psu_phase, np.int8),
                "psu_slot": np.asarray(proto.psu_slot, np.int64),
                "server_model": np.asarray(proto.server_model, np.int32),
            }
            protos[template.id] = (proto, arrays)
        proto, a = protos[template.id]
        if issues.items:
            continue
        racks_here = rack_group.expanded_ids()
        count = len(racks_here)
        m = a["kind"].shape[0]
        base = len(cols.ids)
        rack0 = len(rack_ids)
        rack_ids.extend(racks_here)
        rack_zone.extend([zone_index[rack_group.zone]] * count)
        slot_names = [s.slot for s in template.pdus]
        slot_feed = np.asarray([FEED_NAMES.index(s.feed) for s in template.pdus], np.int8)
        # attach[k, slot]: the upstream node that rack k's PDU slot hangs from
        attach = np.empty((count, len(slot_names)), np.int64)
        for s, slot in enumerate(slot_names):
            parents = parent_list(rack_group.parents[slot])
            attach[:, s] = [up_index[block_parent(parents, k, count)] for k in range(count)]
        offsets = base + np.arange(count, dtype=np.int64)[:, None] * m
        node_attach = attach[:, a["slot"]]                      # (count, m)
        parent = np.where(a["parent"] >= 0, offsets + a["parent"], node_attach)
        parents_chunks.append(parent.reshape(-1))
        depth_chunks.append((up_depth[node_attach] + 1 + a["depth"]).reshape(-1))
        root_chunks.append(up_root[node_attach].reshape(-1))
        origin = np.tile(a["origin"], count)
        pdu_local = np.flatnonzero(a["kind"] == KIND_CODE["rack_pdu"])
        for jp in pdu_local:  # point a PDU's feed problems at the rack group's parents
            origin[jp::m] = origin_ref(("racks", r, "parents", slot_names[a["slot"][jp]]))
        cols.add(
            [rack + suffix for rack in racks_here for suffix in proto.suffix],
            kind=np.tile(a["kind"], count),
            v_ll=np.tile(a["v_ll"], count),
            rating=np.tile(a["rating"], (count, 1)),
            frac=np.tile(a["frac"], count),
            brk=np.tile(a["brk"], count),
            guard=np.tile(a["guard"], count),
            ok=np.tile(a["ok"], count),
            origin=origin,
            ramp=np.full(count * m, _INF),
            step=np.full(count * m, _INF),
            feed=np.tile(slot_feed[a["slot"]], count),
            rack=np.repeat(np.arange(rack0, rack0 + count, dtype=np.int32), m),
        )
        n_srv = len(proto.server_suffix)
        s_base = len(s_ids)
        s_ids.extend(rack + suffix for rack in racks_here for suffix in proto.server_suffix)
        s_chunks["model"].append(np.tile(a["server_model"], count))
        s_chunks["rack"].append(np.repeat(np.arange(rack0, rack0 + count, dtype=np.int32),
                                          n_srv))
        s_chunks["prio"].append(np.tile(np.asarray(
            [rack_group.priority if p is None else p for p in proto.server_priority], np.int32),
            count))
        k_psu = a["psu_server"].shape[0]
        p_chunks["server"].append(
            (s_base + np.arange(count)[:, None] * n_srv + a["psu_server"]).reshape(-1))
        p_chunks["node"].append((offsets + a["psu_node"]).reshape(-1))
        p_chunks["phase"].append(np.tile(a["psu_phase"], count))
        p_chunks["feed"].append(np.tile(slot_feed[a["psu_slot"]], count)
                                if k_psu else np.zeros(0, np.int8))
    if issues.items:
        raise ConfigError(source, issues.items)

    # --- ids --------------------------------------------------------------------------------
    ids = cols.ids
    n = len(ids)
    origin_all = cols.column("origin")
    index: dict[str, int] = dict(zip(ids, range(n), strict=True))
    if len(index) != n:
        seen: set[str] = set()
        for i, node_id in enumerate(ids):
            if node_id in seen:
                first = ids.index(node_id)
                issues.add(origin_table[int(origin_all[i])],
                           f"generated node id {node_id!r} collides with "
                           f"{format_loc(origin_table[int(origin_all[first])])}")
            seen.add(node_id)
    if len(set(s_ids)) != len(s_ids):
        dup = sorted({s for s in s_ids if s_ids.count(s) > 1})
        issues.add(("racks",), f"generated server ids collide: {dup[:3]}")
    if issues.items:
        raise ConfigError(source, issues.items)

    parent = np.concatenate(parents_chunks)
    depth = np.concatenate(depth_chunks)
    root = np.concatenate(root_chunks)
    kind = cols.column("kind")
    rating = cols.column("rating")
    frac = cols.column("frac")
    brk = cols.column("brk")

    # --- per-node arrays in topological order ---------------------------------------------
    perm = np.argsort(depth, kind="stable")
    inv = np.empty(n, dtype=np.int64)
    inv[perm] = np.arange(n)
    parent_sorted = np.where(parent[perm] >= 0, inv[np.maximum(parent[perm], 0)], -1)
    ids_sorted = tuple(ids[i] for i in perm)
    rating_a = rating[perm]
    frac_a = frac[perm]
    kind_a = kind[perm]
    brk_sorted = brk[perm]
    root_sorted = inv[root[perm]]
    feed_src = cols.column("feed").astype(np.int64)[perm]
    node_feed = feed_src[root_sorted].astype(np.int8)
    origin_sorted = origin_all[perm]
    v_ll_v = cols.column("v_ll")[perm]

    def where(i: int) -> tuple[str | int, ...]:
        return origin_table[int(origin_sorted[i])]

    # A rack PDU declared on one feed must hang from that feed's tree.
    bad_feed = np.flatnonzero((kind_a == KIND_CODE["rack_pdu"]) & (feed_src >= 0)
                              & (feed_src != node_feed))
    for i in bad_feed[:20]:
        issues.add(where(i), f"PDU {ids_sorted[i]!r} is declared on feed "
                   f"{FEED_NAMES[feed_src[i]]} but hangs from the feed "
                   f"{FEED_NAMES[node_feed[i]]} tree")
    is_mcb = np.array([isinstance(b, CurveBreaker) for b in breaker_table] + [False])
    big_mcb = np.flatnonzero(is_mcb[brk_sorted] & (rating_a.max(axis=1) > MCB_MAX_A))
    for i in big_mcb[:20]:
        issues.add(where(i), f"{ids_sorted[i]!r} is rated {rating_a[i].max():g} A: "
                   f"curve (miniature) breakers go up to {MCB_MAX_A:g} A; use a breaker of "
                   "kind = 'electronic' above that")
    if issues.items:
        raise ConfigError(source, issues.items)
    trip = _trip_arrays(brk_sorted, breaker_table, rating_a, guard=False)
    trip_guard = _trip_arrays(brk_sorted, breaker_table, rating_a, guard=True)
    has_breaker = brk_sorted >= 0
    ir_table = np.array([b.ir_fraction if isinstance(b, ElectronicBreaker) else 1.0
                         for b in breaker_table] + [1.0])
    limit_a = rating_a * (frac_a * ir_table[brk_sorted])[:, None]

    # Children rated above their parent: compare per-pole current at equal voltage, else kVA.
    child = np.flatnonzero(parent_sorted >= 0)
    par = parent_sorted[child]
    same_v = np.isclose(v_ll_v[child], v_ll_v[par])
    child_kva = rating_a[child].sum(axis=1) * v_ll_v[child] / _SQRT3
    par_kva = rating_a[par].sum(axis=1) * v_ll_v[par] / _SQRT3
    above = np.where(same_v,
                     rating_a[child].max(axis=1) > rating_a[par].max(axis=1) * (1 + 1e-9),
                     child_kva > par_kva * (1 + 1e-9))
    ok = cols.column("ok")[perm][child]
    # Outlets are receptacles, not protective devices: their bank breaker protects them.
    flag = above & ~ok & (kind_a[child] != KIND_CODE["outlet"])
    for c_n, p_i in zip(child[flag][:50], par[flag][:50], strict=True):
        issues.add(where(c_n),
                   f"{KIND_NAMES[kind_a[c_n]]} {ids_sorted[c_n]!r} ({rating_a[c_n].max():g} A at "
                   f"{v_ll_v[c_n]:g} V) is rated above its parent {ids_sorted[p_i]!r} "
                   f"({rating_a[p_i].max():g} A at {v_ll_v[p_i]:g} V); set "
                   "exceeds_parent_ok = true if that is deliberate")
    if issues.items:
        raise ConfigError(source, issues.items)

    def cat(chunks: list[np.ndarray], dtype: Any) -> np.ndarray:
        return np.concatenate(chunks).astype(dtype) if chunks else np.zeros(0, dtype)

    s_model = cat(s_chunks["model"], np.int32)
    s_rack = cat(s_chunks["rack"], np.int32)
    s_prio = cat(s_chunks["prio"], np.int32)
    psu_server = cat(p_chunks["server"], np.int32)
    psu_node = cat(p_chunks["node"], np.int64)
    psu_phase = cat(p_chunks["phase"], np.int8)
    psu_feed = cat(p_chunks["feed"], np.int8)
    guard = cols.column("guard")
    ramp = cols.column("ramp")
    step = cols.column("step")
    node_rack = cols.column("rack")

    # --- servers and PSUs ------------------------------------------------------------------
    models = config.server_models
    sm = s_model

    def per_model(fn: Any) -> F64:
        return np.asarray([fn(m) for m in models], dtype=np.float64)[sm]

    zones = config.zones
    rack_zone_a = np.asarray(rack_zone, dtype=np.int32)
    s_rack_a = s_rack
    inv32 = inv.astype(np.int32)
    topo = Topology(
        name=config.hall.name,
        node_id=ids_sorted,
        node_index={node_id: i for i, node_id in enumerate(ids_sorted)},
        node_kind=kind_a,
        parent_idx=parent_sorted.astype(np.int32),
        order=np.arange(n, dtype=np.int32),
        depth=depth[perm].astype(np.int32),
        node_feed=node_feed,
        v_ll_v=v_ll_v,
        v_ln_v=v_ll_v / _SQRT3,
        rating_a=rating_a,
        limit_a=limit_a,
        trip=trip,
        trip_guard=trip_guard,
        has_breaker=has_breaker,
        ramp_limit_w_per_s=ramp[perm],
        max_step_w=step[perm],
        inrush_guard_s=guard[perm],
        node_rack=node_rack[perm],
        server_id=tuple(s_ids),
        server_model=sm,
        server_rack=s_rack_a,
        server_zone=rack_zone_a[s_rack_a] if len(s_rack_a) else np.zeros(0, np.int32),
        server_priority=s_prio,
        server_pf=per_model(lambda m: m.power_factor),
        server_max_w=per_model(lambda m: m.max_w),
        server_idle_w=per_model(lambda m: m.idle_w),
        server_standby_w=per_model(lambda m: m.standby_w),
        server_post_w=per_model(lambda m: m.post_w),
        server_boot_w=per_model(lambda m: m.boot_w),
        server_post_s=np.asarray([models[i].post_duration_s for i in sm],
                                 dtype=np.float64).reshape(-1, 2),
        server_boot_s=np.asarray([models[i].boot_duration_s for i in sm],
                                 dtype=np.float64).reshape(-1, 2),
        server_bmc_ready_s=per_model(lambda m: m.bmc_ready_s),
        server_gpus=per_model(lambda m: m.gpus).astype(np.int32),
        server_gpu_idle_w=per_model(lambda m: m.gpu_idle_w),
        server_gpu_min_cap_w=per_model(lambda m: m.gpu_min_cap_w),
        server_gpu_max_w=per_model(lambda m: m.gpu_max_w),
        server_other_max_w=per_model(lambda m: m.other_max_w),
        server_psus=per_model(lambda m: m.psus).astype(np.int32),
        server_psus_to_boot=per_model(lambda m: m.psus_to_boot).astype(np.int32),
        server_psus_to_carry=per_model(lambda m: m.psus_to_carry or m.psus).astype(np.int32),
        server_inrush_peak_a=per_model(lambda m: m.inrush_peak_a),
        server_inrush_duration_s=per_model(lambda m: m.inrush_duration_s),
        server_model_id=tuple(m.id for m in models),
        psu_server=psu_server,
        psu_node=inv32[psu_node],
        psu_phase=psu_phase,
        psu_feed=psu_feed,
        rack_id=tuple(rack_ids),
        rack_zone=rack_zone_a,
        zone_id=tuple(z.id for z in zones),
        zone_capacity_w=np.asarray([z.capacity_kw * 1e3 for z in zones]),
        zone_capacity_n1_w=np.asarray([z.capacity_n_minus_1_kw * 1e3 for z in zones]),
        zone_units=np.asarray([z.units for z in zones], dtype=np.int32),
        zone_response_tau_s=np.asarray([z.response_tau_s for z in zones]),
        zone_air_heat_capacity_j_per_k=np.asarray(
            [z.air_heat_capacity_kj_per_k * 1e3 for z in zones]),
        zone_mass_heat_capacity_j_per_k_per_w=np.asarray(
            [z.mass_heat_capacity_kj_per_k_per_kw for z in zones]),  # kJ/K per kW = J/K per W
        zone_mass_time_constant_s=np.asarray([z.mass_time_constant_s for z in zones]),
        zone_supply_setpoint_c=np.asarray([z.supply_setpoint_c for z in zones]),
        zone_inlet_hold_c=np.asarray([z.inlet_hold_c for z in zones]),
        zone_inlet_recommended_c=np.asarray([z.inlet_recommended_c for z in zones]),
        zone_inlet_allowable_c=np.asarray([z.inlet_allowable_c for z in zones]),
    )
    for f in fields(topo):
        value = getattr(topo, f.name)
        if isinstance(value, np.ndarray):
            value.setflags(write=False)
    _check_bindings(config, topo, issues)
    if issues.items:
        raise ConfigError(source, issues.items)
    return topo


def _check_bindings(config: HallConfig, topo: Topology, issues: _Issues) -> None:
    """Every binding must name something that exists, of a kind it can apply to."""
    for b, meter in enumerate(config.bindings.meters):
        if not _matches_any(meter.nodes, topo.node_id, topo.node_index):
            issues.add(("bindings", "meters", b, "nodes"),
                       f"{meter.nodes!r} matches no node id")
    pdus = topo.nodes_of_kind("rack_pdu")
    pdu_ids = tuple(topo.node_id[i] for i in pdus)
    other = np.flatnonzero(topo.node_kind != KIND_CODE["rack_pdu"])
    not_pdu = tuple(topo.node_id[i] for i in other)
    for b, act in enumerate(config.bindings.actuators):
        if not _matches_any(act.pdus, pdu_ids, {}):
            issues.add(("bindings", "actuators", b, "pdus"), f"{act.pdus!r} matches no rack PDU")
        wrong = _glob(act.pdus, not_pdu)
        if wrong:
            issues.add(("bindings", "actuators", b, "pdus"),
                       f"{act.pdus!r} matches nodes that are not rack PDUs, e.g. "
                       f"{not_pdu[wrong[0]]!r}")
    for b, agent in enumerate(config.bindings.agents):
        if not _matches_any(agent.servers, topo.server_id, {}):
            issues.add(("bindings", "agents", b, "servers"),
                       f"{agent.servers!r} matches no server id")


def _matches_any(pattern: str, names: tuple[str, ...], exact: dict[str, int]) -> bool:
    if pattern in exact:
        return True
    match = re.compile(fnmatch.translate(pattern)).match
    return any(match(name) for name in names)
