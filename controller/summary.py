"""What ``rampguard validate`` reports about a compiled hall.

Counts by kind, rated and continuous capacity per level of the tree, and the worst case: every
server at its maximum input at once, in normal operation and after the loss of either feed,
against every node's continuous limit. Also the cooling zones' worst-case heat against their
capacity with and without one unit, and the time each ramp-limited source needs at least to
carry the full hall. With a storm analysis (:func:`controller.storm.analyze_hall_storm`), the
``workload-storm`` swing at every source and UPS, and a warning for every step or ramp limit it
passes (a warning, not an error: the config is valid; no GPU cap can prevent the swing).

Nothing here changes the hall; it reads the :class:`~controller.topology.Topology` and calls the
headroom kernels.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from controller.storm import PREVENTION, STATE_NORMAL, StormAnalysis
from controller.topology import FEED_NAMES, KIND_NAMES, Topology
from kernels import (
    SCENARIO_FEED_A_LOST,
    SCENARIO_FEED_B_LOST,
    SCENARIO_NORMAL,
    feed_loss_current_a,
    worst_case_utilization,
)

SCENARIO_NAMES = {
    SCENARIO_NORMAL: "normal",
    SCENARIO_FEED_A_LOST: "feed A lost",
    SCENARIO_FEED_B_LOST: "feed B lost",
}


@dataclass(frozen=True, slots=True)
class WorstNode:
    node: str
    utilization: float
    scenario: str
    load_a: float
    limit_a: float


@dataclass(frozen=True, slots=True)
class LevelSummary:
    kind: str
    count: int
    rated_kva: float
    continuous_kva: float
    worst_utilization: float
    over_limit: int
    worst: list[WorstNode] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ZoneSummary:
    zone: str
    racks: int
    worst_case_heat_kw: float
    capacity_kw: float
    capacity_n_minus_1_kw: float
    utilization_n_minus_1: float


@dataclass(frozen=True, slots=True)
class SourceSummary:
    node: str
    feed: str
    ramp_limit_kw_per_s: float | None
    max_step_kw: float | None
    worst_case_kw: float
    min_ramp_time_s: float | None


@dataclass(frozen=True, slots=True)
class HallSummary:
    hall: str
    counts: dict[str, int]
    levels: list[LevelSummary]
    zones: list[ZoneSummary]
    sources: list[SourceSummary]
    fits: bool
    verdict: str
    storm: StormAnalysis | None = None

    @property
    def warnings(self) -> list[dict[str, object]]:
        """One per limit the workload storm passes: node, swing, limit, what prevents it."""
        if self.storm is None:
            return []
        return [{"kind": "workload-storm", **asdict(f), "message": f.sentence()}
                for f in self.storm.findings]

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        storm = data.pop("storm")
        if storm is not None:
            storm = {"survivable": not storm["findings"], **storm}
            storm.pop("findings")
        data["workload_storm"] = storm
        data["warnings"] = self.warnings
        out = _finite(data)
        assert isinstance(out, dict)
        return out


def summarize(topo: Topology, worst_per_level: int = 3,
              storm: StormAnalysis | None = None) -> HallSummary:
    """Summarize ``topo`` with every server at its maximum input; ``storm``: the hall's
    workload-storm analysis, reported with its warnings."""
    scen = feed_loss_current_a(
        topo.server_max_w, topo.server_pf, topo.psu_server, topo.psu_node, topo.psu_phase,
        topo.psu_feed, np.ones(topo.n_psus, dtype=bool), topo.parent_idx, topo.v_ln_v,
    )
    util = worst_case_utilization(scen, topo.node_feed, topo.limit_a)
    rated_kva = (topo.rating_a * topo.v_ln_v[:, None]).sum(axis=1) / 1e3
    cont_kva = (topo.limit_a * topo.v_ln_v[:, None]).sum(axis=1) / 1e3

    counts: dict[str, int] = {kind: 0 for kind in KIND_NAMES}
    for code, cnt in zip(*np.unique(topo.node_kind, return_counts=True), strict=True):
        counts[KIND_NAMES[int(code)]] = int(cnt)
    counts.update(racks=len(topo.rack_id), servers=topo.n_servers, psus=topo.n_psus,
                  gpus=topo.n_gpus, zones=len(topo.zone_id))

    levels: list[LevelSummary] = []
    for code, kind in enumerate(KIND_NAMES):
        nodes = np.flatnonzero(topo.node_kind == code)
        if nodes.size == 0:
            continue
        u = util[nodes]
        top = nodes[np.argsort(-u, kind="stable")[:worst_per_level]]
        levels.append(LevelSummary(
            kind=kind,
            count=int(nodes.size),
            rated_kva=float(rated_kva[nodes].sum()),
            continuous_kva=float(cont_kva[nodes].sum()),
            worst_utilization=float(u.max()),
            over_limit=int((u > 1.0 + 1e-9).sum()),
            worst=[_worst_node(topo, scen, int(i)) for i in top if util[i] > 0],
        ))

    heat_w = np.bincount(topo.server_zone, weights=topo.server_max_w,
                         minlength=len(topo.zone_id))
    racks_per_zone = np.bincount(topo.rack_zone, minlength=len(topo.zone_id))
    zones = [
        ZoneSummary(
            zone=z,
            racks=int(racks_per_zone[k]),
            worst_case_heat_kw=float(heat_w[k] / 1e3),
            capacity_kw=float(topo.zone_capacity_w[k] / 1e3),
            capacity_n_minus_1_kw=float(topo.zone_capacity_n1_w[k] / 1e3),
            utilization_n_minus_1=float(heat_w[k] / topo.zone_capacity_n1_w[k])
            if topo.zone_capacity_n1_w[k] > 0 else math.inf,
        )
        for k, z in enumerate(topo.zone_id)
    ]

    # Real power through each source in its worst scenario: the same aggregation at unity power
    # factor, so that V_LN × I summed over the phases is watts (exact for L-N connected PSUs).
    scen_pf1 = feed_loss_current_a(
        topo.server_max_w, np.ones(topo.n_servers), topo.psu_server, topo.psu_node,
        topo.psu_phase, topo.psu_feed, np.ones(topo.n_psus, dtype=bool), topo.parent_idx,
        topo.v_ln_v,
    )
    p_node_w = (scen_pf1 * topo.v_ln_v[None, :, None]).sum(axis=2)
    sources = []
    for i in topo.nodes_of_kind("source"):
        feed = int(topo.node_feed[i])
        alive = [s for s in SCENARIO_NAMES if s != (SCENARIO_FEED_A_LOST if feed == 0
                                                    else SCENARIO_FEED_B_LOST)]
        worst_w = float(max(p_node_w[s, i] for s in alive))
        ramp = float(topo.ramp_limit_w_per_s[i])
        step = float(topo.max_step_w[i])
        sources.append(SourceSummary(
            node=topo.node_id[i],
            feed=FEED_NAMES[feed],
            ramp_limit_kw_per_s=ramp / 1e3 if math.isfinite(ramp) else None,
            max_step_kw=step / 1e3 if math.isfinite(step) else None,
            worst_case_kw=worst_w / 1e3,
            min_ramp_time_s=worst_w / ramp if math.isfinite(ramp) else None,
        ))

    electrical_fits = all(level.over_limit == 0 for level in levels)
    cooling_fits = all(z.utilization_n_minus_1 <= 1.0 for z in zones)
    if electrical_fits and cooling_fits:
        verdict = ("fits: every server at full power stays within every continuous limit, "
                   "also after the loss of either feed, and within cooling with one unit lost")
    else:
        parts = []
        if not electrical_fits:
            over = [f"{lv.kind} ({lv.over_limit})" for lv in levels if lv.over_limit]
            parts.append("electrically oversubscribed at " + ", ".join(over))
        if not cooling_fits:
            parts.append("cooling oversubscribed in " + ", ".join(
                z.zone for z in zones if z.utilization_n_minus_1 > 1.0))
        verdict = ("oversubscribed: " + "; ".join(parts)
                   + " — full power needs GPU caps (a valid config: the planner allocates them)")
    return HallSummary(
        hall=topo.name, counts=counts, levels=levels, zones=zones, sources=sources,
        fits=electrical_fits and cooling_fits, verdict=verdict, storm=storm,
    )


def _worst_node(topo: Topology, scen: np.ndarray, i: int) -> WorstNode:
    best = (-1.0, SCENARIO_NORMAL, 0.0, 0.0)
    lost_own = SCENARIO_FEED_A_LOST if topo.node_feed[i] == 0 else SCENARIO_FEED_B_LOST
    for s in SCENARIO_NAMES:
        if s == lost_own:
            continue
        for pole in range(3):
            limit = float(topo.limit_a[i, pole])
            if limit <= 0:
                continue
            load = float(scen[s, i, pole])
            if load / limit > best[0]:
                best = (load / limit, s, load, limit)
    return WorstNode(node=topo.node_id[i], utilization=best[0],
                     scenario=SCENARIO_NAMES[best[1]], load_a=best[2], limit_a=best[3])


def _finite(value: object) -> object:
    """JSON has no infinity: replace non-finite floats by None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def format_summary(summary: HallSummary) -> str:
    """The human-readable report of ``rampguard validate``."""
    c = summary.counts
    lines = [
        f"hall {summary.hall}: {c['gpus']:,} GPUs in {c['servers']:,} servers, "
        f"{c['racks']:,} racks, {c['zones']} cooling zones, {c['psus']:,} PSUs",
        "",
        "nodes by kind: " + ", ".join(f"{k} {c[k]:,}" for k in KIND_NAMES if c.get(k)),
        "",
        "worst case: every server at its maximum input, normal and after the loss of either feed",
        f"  {'level':<12}{'count':>8}{'rated kVA':>14}{'cont. kVA':>14}{'worst util':>12}"
        f"{'over':>6}  worst node (scenario)",
    ]
    for lv in summary.levels:
        worst = lv.worst[0] if lv.worst else None
        where = (f"{worst.node} {worst.load_a:,.1f} A / {worst.limit_a:,.1f} A ({worst.scenario})"
                 if worst else "no load")
        lines.append(
            f"  {lv.kind:<12}{lv.count:>8,}{lv.rated_kva:>14,.0f}{lv.continuous_kva:>14,.0f}"
            f"{lv.worst_utilization:>11.1%}{lv.over_limit:>7}  {where}"
        )
    lines += ["", "cooling (worst-case heat against the capacity left after losing one unit)"]
    for z in summary.zones:
        lines.append(
            f"  {z.zone:<12}{z.racks:>5} racks {z.worst_case_heat_kw:>10,.0f} kW of "
            f"{z.capacity_n_minus_1_kw:,.0f} kW (N-1) = {z.utilization_n_minus_1:.1%}"
        )
    ramped = [s for s in summary.sources if s.ramp_limit_kw_per_s]
    if ramped:
        lines += ["", "sources (time to carry the worst case at the ramp limit)"]
        for s in ramped:
            lines.append(
                f"  {s.node:<12} feed {s.feed}  {s.worst_case_kw:>10,.0f} kW at "
                f"{s.ramp_limit_kw_per_s:,.0f} kW/s >= {s.min_ramp_time_s:,.0f} s"
                + (f", largest step {s.max_step_kw:,.0f} kW" if s.max_step_kw else "")
            )
    if summary.storm is not None:
        lines += ["", *_storm_lines(summary.storm)]
    lines += ["", f"verdict: {summary.verdict}"]
    if summary.warnings:
        lines.append(f"warnings: {len(summary.warnings)} (workload storm; the config is valid)")
    return "\n".join(lines)


#: warnings the human report lists before it counts the rest (``--json`` lists all)
MAX_WARNING_LINES = 12


def _storm_lines(storm: StormAnalysis) -> list[str]:
    """The workload-storm part of the human report: the largest swing, then the warnings."""
    lines = ["workload storm (every working GPU idles at once, then all restart at once at "
             "their minimum caps)"]
    if storm.nodes:
        top = max(storm.nodes, key=lambda n: n.drop_kw)
        lines.append(f"  largest swing, feeds normal: {top.node} drop {top.drop_kw:,.1f} kW, "
                     f"restart {top.rise_kw:,.1f} kW in one step")
    if storm.survivable:
        lines.append("  fits every largest load step and ramp limit"
                     + (", also after the loss of either feed" if len(storm.states) > 1 else ""))
        return lines
    normal = [f for f in storm.findings if f.state == STATE_NORMAL]
    seen = {(f.node, f.event, f.check) for f in normal}
    others = [f for f in storm.findings if f.state != STATE_NORMAL]
    new = [f for f in others if (f.node, f.event, f.check) not in seen]
    shown = (normal + new)[:MAX_WARNING_LINES]
    lines += [f"  warning: {f.sentence()}" for f in shown]
    rest = len(normal) + len(new) - len(shown)
    if rest:
        lines.append(f"  warning: ... and {rest} more (--json lists every one)")
    again = len(others) - len(new)
    if again:
        lines.append(f"  warning: after the loss of a feed, {again} of these limits are passed "
                     "again with the whole swing on the other feed")
    which = ("workload-storm" if normal else
             " and ".join(f"feed-{f.state.split()[1].lower()}-loss+workload-storm"
                          for f in {f.state: f for f in others}.values()))
    lines.append(f"  no GPU cap prevents these swings; the hall needs {PREVENTION} "
                 f"(dry-run --scenario {which}: unsurvivable on this hall)")
    return lines
