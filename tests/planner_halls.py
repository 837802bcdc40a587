"""Random small halls for the planner's tests: random trees, PDUs, server mixes, zones.

``random_hall(rng)`` draws a valid hall config (as a dict) from a numpy Generator, so that a
hypothesis strategy can drive it with a seed; ``compile_random_hall(seed)`` validates and compiles
it. The halls are small (a few racks) but vary everything the planner looks at: one or two feeds,
UPSs with ramp limits and largest steps, curve and electronic breakers, L-N and L-L banks with
inrush guards, several server models (with and without GPUs, all PSU counts), priorities, zones
with tight cooling, and controller margins.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from controller.config import validate_hall_dict
from controller.topology import Topology, compile_hall

LINES = ["L1", "L2", "L3"]


def _maybe(rng: np.random.Generator, p: float, value: Any) -> Any:
    return value if rng.random() < p else None


def random_hall(rng: np.random.Generator, *, max_racks: int = 4) -> dict[str, Any]:
    """A valid hall config dict drawn from ``rng``."""
    feeds = ["A", "B"] if rng.random() < 0.6 else ["A"]
    nodes: list[dict[str, Any]] = []
    attach: dict[str, list[str]] = {}
    for f in feeds:
        src: dict[str, Any] = {
            "id": f"SRC-{f}", "kind": "source", "feed": f, "v_ll_v": 415.0,
            "rating_a": float(rng.choice([400.0, 800.0, 1600.0])),
            "exceeds_parent_ok": True,
        }
        ramp = _maybe(rng, 0.7, float(rng.choice([5.0, 10.0, 40.0, 200.0])))
        step = _maybe(rng, 0.5, float(rng.choice([4.0, 8.0, 30.0, 150.0])))
        if ramp:
            src["ramp_limit_kw_per_s"] = ramp
        if step:
            src["max_step_kw"] = step
        nodes.append(src)
        parent = f"SRC-{f}"
        if rng.random() < 0.6:
            n_ups = int(rng.integers(1, 3))
            ups: dict[str, Any] = {
                "id": f"UPS-{f}{{i}}", "kind": "ups", "count": n_ups, "parent": parent,
                "v_ll_v": 415.0, "rating_a": float(rng.choice([200.0, 400.0, 800.0])),
                "continuous_fraction": 1.0, "exceeds_parent_ok": True,
            }
            ur = _maybe(rng, 0.6, float(rng.choice([2.0, 5.0, 20.0, 100.0])))
            if ur:
                ups["ramp_limit_kw_per_s"] = ur
            us = _maybe(rng, 0.3, float(rng.choice([3.0, 6.0, 50.0])))
            if us:
                ups["max_step_kw"] = us
            nodes.append(ups)
            parents = [f"UPS-{f}{i}" for i in range(1, n_ups + 1)]
        else:
            parents = [parent]
        n_panel = int(rng.integers(1, 3))
        panel_ids = []
        for k, par in enumerate(parents):
            for j in range(n_panel):
                pid = f"PNL-{f}{k}{j}"
                panel_ids.append(pid)
                breaker: dict[str, Any]
                rating = float(rng.choice([63.0, 100.0, 250.0]))
                if rating <= 100 and rng.random() < 0.6:
                    breaker = {"kind": "curve", "curve": str(rng.choice(["B", "C", "D"]))}
                else:
                    breaker = {"kind": "electronic", "tr_s": 6.0}
                nodes.append({"id": pid, "kind": "panel", "parent": par, "v_ll_v": 415.0,
                              "rating_a": rating, "breaker": breaker,
                              "exceeds_parent_ok": True})
        attach[f] = panel_ids

    # PDU model per feed slot
    pdu_models = []
    for f in feeds:
        lines = sorted(rng.choice(LINES, size=int(rng.integers(1, 4)), replace=False).tolist())
        banks = []
        for b in range(int(rng.integers(1, 4))):
            if len(lines) >= 2 and rng.random() < 0.3:
                conn = f"{lines[0]}-{lines[1]}" if lines[:2] != ["L1", "L3"] else "L3-L1"
            else:
                conn = str(rng.choice(lines))
            banks.append({
                "id": str(b + 1), "connection": conn,
                "rating_a": float(rng.choice([16.0, 20.0, 32.0])),
                "outlets": int(rng.integers(3, 9)),
                "outlet_rating_a": 16.0,
                "breaker": {"kind": "curve", "curve": str(rng.choice(["B", "C", "D"]))},
                "exceeds_parent_ok": True,
            })
        pdu_models.append({
            "id": f"PDU-{f}", "v_ll_v": 415.0, "lines": lines,
            "inlet_rating_a": float(rng.choice([32.0, 63.0])),
            "inrush_guard_s": float(rng.choice([0.0, 0.1, 0.3])),
            "banks": banks,
        })

    server_models = []
    for m in range(int(rng.integers(1, 4))):
        psus = int(rng.integers(1, 4)) * len(feeds)
        gpus = int(rng.choice([0, 1, 2, 4]))
        gpu_max = float(rng.choice([150.0, 300.0, 500.0])) if gpus else 0.0
        other = float(rng.integers(100, 800))
        max_w = other + gpus * gpu_max
        post = float(rng.integers(20, int(max_w) + 1))
        p0 = float(rng.integers(0, 60))
        q0 = float(rng.integers(0, 120))
        server_models.append({
            "id": f"M{m}", "psus": psus, "psu_rating_w": max_w,
            "psus_to_boot": int(rng.integers(1, psus + 1)),
            "power_factor": float(rng.choice([0.9, 0.95, 1.0])),
            "inrush_peak_a": float(rng.choice([10.0, 20.0, 40.0, 65.0])),
            "inrush_duration_s": float(rng.choice([0.005, 0.01, 0.02])),
            "bmc_ready_s": float(rng.choice([0.0, 0.5, 5.0, 20.0])),
            "standby_w": float(rng.integers(10, min(200, int(max_w)) + 1)),
            "post_w": post,
            "post_duration_s": [p0, p0 + float(rng.integers(0, 60))],
            "boot_w": float(rng.integers(20, int(max_w) + 1)),
            "boot_duration_s": [q0, q0 + float(rng.integers(0, 120))],
            "idle_w": float(rng.integers(20, int(max_w) + 1)),
            "gpus": gpus, "gpu_idle_w": 0.1 * gpu_max,
            "gpu_min_cap_w": float(rng.choice([0.3, 0.5, 1.0])) * gpu_max,
            "gpu_max_w": gpu_max, "other_max_w": other,
        })

    zones = []
    n_zones = int(rng.integers(1, 3))
    for z in range(n_zones):
        zones.append({
            "id": f"Z{z}", "units": int(rng.integers(2, 5)),
            "unit_capacity_kw": float(rng.choice([10.0, 30.0, 100.0])),
            "response_tau_s": float(rng.choice([30.0, 120.0, 300.0])),
            "air_heat_capacity_kj_per_k": float(rng.choice([100.0, 400.0, 2000.0])),
            "mass_time_constant_s": 240.0,
            "inlet_hold_c": float(rng.choice([24.0, 27.0])),
        })

    templates = []
    racks = []
    n_groups = int(rng.integers(1, max_racks + 1))
    for g in range(n_groups):
        slots = [{"slot": f, "model": f"PDU-{f}", "feed": f} for f in feeds]
        for i, sl in enumerate(slots):
            if rng.random() < 0.6:
                inlet = pdu_models[i]["inlet_rating_a"]
                sl["branch"] = {"rating_a": max(inlet, float(rng.choice([32.0, 63.0]))),
                                "breaker": {"kind": "curve", "curve": "C"},
                                "exceeds_parent_ok": True}
        # servers: respect outlet capacity per slot (spread deals PSUs over slots in turn)
        cap_per_slot = min(sum(b["outlets"] for b in pdu_models[i]["banks"])
                           for i in range(len(feeds)))
        servers = []
        used = 0
        for _ in range(int(rng.integers(1, 4))):
            m = int(rng.integers(0, len(server_models)))
            psus = server_models[m]["psus"]
            per_slot = psus // len(feeds)
            count = int(rng.integers(1, 4))
            count = min(count, (cap_per_slot - used) // max(per_slot, 1))
            if count <= 0:
                break
            used += count * per_slot
            entry: dict[str, Any] = {"model": f"M{m}", "count": count}
            if rng.random() < 0.3:
                entry["priority"] = int(rng.integers(-2, 3))
            servers.append(entry)
        if not servers:
            m = 0
            servers.append({"model": "M0", "count": 1})
            if server_models[0]["psus"] // len(feeds) > cap_per_slot:
                server_models[0]["psus"] = len(feeds)
                server_models[0]["psus_to_boot"] = 1
        templates.append({"id": f"T{g}", "pdus": slots, "servers": servers})
        count = int(rng.integers(1, 3))
        parents = {f: attach[f][int(rng.integers(0, len(attach[f])))] for f in feeds}
        racks.append({"id": f"R{g}-{{i}}", "template": f"T{g}", "count": count,
                      "zone": f"Z{int(rng.integers(0, n_zones))}", "parents": parents,
                      "priority": int(rng.integers(-1, 2))})
    return {
        "version": 1,
        "hall": {"name": "random"},
        "nodes": nodes,
        "pdu_models": pdu_models,
        "server_models": server_models,
        "rack_templates": templates,
        "racks": racks,
        "zones": zones,
        "controller": {
            "admission_margin": float(rng.choice([0.0, 0.02, 0.1])),
            "magnetic_margin": float(rng.choice([0.5, 0.8, 1.0])),
        },
    }


def compile_random_hall(seed: int, **kw: Any) -> tuple[Topology, Any]:
    """(topology, config) of the random hall drawn with ``seed``."""
    raw = random_hall(np.random.default_rng(seed), **kw)
    config = validate_hall_dict(raw, source=f"random-{seed}")
    return compile_hall(config, source=f"random-{seed}"), config
