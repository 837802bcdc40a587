"""The topology compiler on the reference configs and on small hand-built halls."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest

from controller.config import load_hall_config, validate_hall_dict
from controller.errors import ConfigError
from controller.topology import KIND_CODE, Topology, compile_hall
from kernels import mcb_params

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _invariants(topo: Topology) -> None:
    n = topo.n_nodes
    idx = np.arange(n)
    roots = topo.parent_idx < 0
    assert np.all(topo.parent_idx[~roots] < idx[~roots]), "parents must precede children"
    assert np.all(topo.node_kind[roots] == KIND_CODE["source"])
    assert np.all(topo.depth[roots] == 0)
    assert np.all(topo.depth[~roots] == topo.depth[topo.parent_idx[~roots]] + 1)
    assert np.array_equal(topo.order, idx)
    # the feed of a node is its parent's feed
    assert np.all(topo.node_feed[~roots] == topo.node_feed[topo.parent_idx[~roots]])
    assert np.all(topo.node_kind[topo.psu_node] == KIND_CODE["outlet"])
    # each PSU's declared feed is the feed of the tree its outlet hangs from
    assert np.array_equal(topo.psu_feed, topo.node_feed[topo.psu_node])
    # each outlet carries at most one PSU
    assert len(np.unique(topo.psu_node)) == topo.n_psus
    # each server has as many PSUs as its model says
    assert np.array_equal(np.bincount(topo.psu_server, minlength=topo.n_servers),
                          topo.server_psus)
    # the PSU sits on a line its outlet has
    for k in range(0, topo.n_psus, max(1, topo.n_psus // 50)):
        line = int(topo.psu_phase[k])
        if line < 3:
            assert topo.rating_a[topo.psu_node[k], line] > 0
    # continuous limits: 80 % of the rating by default, never above the rating
    assert np.all(topo.limit_a <= topo.rating_a + 1e-9)
    assert np.all((topo.limit_a > 0) == (topo.rating_a > 0))
    # the controller's assumed magnetic threshold is never above the plant's
    assert np.all(topo.trip_guard.magnetic_x <= topo.trip.magnetic_x)
    assert np.all(topo.trip_guard.thermal_k <= topo.trip.thermal_k)
    for name in ("parent_idx", "rating_a", "limit_a", "psu_node", "server_max_w"):
        assert not getattr(topo, name).flags.writeable, name


def test_rig_layout(rig: Topology) -> None:
    _invariants(rig)
    assert rig.n_servers == 4 and rig.n_gpus == 32 and rig.n_psus == 8
    assert rig.node_id[:4] == ("LAB-UTIL", "LAB-PANEL", "RIG-A-BR", "RIG-A")
    banks = rig.nodes_of_kind("bank")
    assert [rig.node_id[i] for i in banks] == ["RIG-A-1", "RIG-A-2"]
    # bank 1 on L1, bank 2 on L2, 32 A C curve: k 1.30, τ 60 s, magnetic 7.5 (guard 5)
    assert rig.rating_a[banks[0]].tolist() == [32.0, 0.0, 0.0]
    assert rig.rating_a[banks[1]].tolist() == [0.0, 32.0, 0.0]
    assert rig.limit_a[banks[0], 0] == pytest.approx(25.6)
    assert rig.trip.thermal_k[banks[0]] == pytest.approx(1.30)
    assert rig.trip.thermal_tau_s[banks[0]] == pytest.approx(60.0)
    assert rig.trip.magnetic_x[banks[0]] == pytest.approx(7.5)
    assert rig.trip_guard.magnetic_x[banks[0]] == pytest.approx(5.0)
    # explicit placement: server k's PSUs on outlet k of banks 1 and 2
    s1 = rig.server_id.index("RIG-S01")
    outlets = sorted(rig.node_id[rig.psu_node[k]] for k in np.flatnonzero(rig.psu_server == s1))
    assert outlets == ["RIG-A-1-1", "RIG-A-2-1"]
    assert rig.server_max_w.tolist() == [2800.0] * 4
    assert rig.zone_capacity_n1_w.tolist() == [15_000.0]
    src = rig.node_index["LAB-UTIL"]
    assert rig.ramp_limit_w_per_s[src] == 20_000.0 and rig.max_step_w[src] == 8_000.0
    assert not rig.has_breaker[src] and np.isinf(rig.trip.thermal_k[src])


def test_demo_hall_layout(demo: Topology) -> None:
    _invariants(demo)
    assert demo.n_servers == 512 + 96 and demo.n_gpus == 4096
    assert len(demo.rack_id) == 128 + 8 and demo.zone_id == ("Z1", "Z2")
    # each DGX has three PSUs on each feed, and each of its banks carries exactly one PSU; a
    # storage server one PSU per feed, four per bank
    dgx = demo.server_gpus > 0
    per_feed = np.zeros((demo.n_servers, 2), int)
    np.add.at(per_feed, (demo.psu_server, demo.psu_feed), 1)
    assert np.all(per_feed[dgx] == 3) and np.all(per_feed[~dgx] == 1)
    bank_of_psu = demo.parent_idx[demo.psu_node]
    dgx_psu = dgx[demo.psu_server]
    assert len(np.unique(bank_of_psu[dgx_psu])) == int(dgx_psu.sum())
    assert set(np.bincount(bank_of_psu[~dgx_psu]).tolist()) <= {0, 4}
    # floor PDUs hang off UPSs in blocks: FPDU-A01, A02 → UPS-A01; A07, A08 → UPS-A04
    ups_of = {demo.node_id[i]: demo.node_id[demo.parent_idx[i]]
              for i in demo.nodes_of_kind("switchboard")}
    assert ups_of["FPDU-A01"] == ups_of["FPDU-A02"] == "UPS-A01"
    assert ups_of["FPDU-A08"] == "UPS-A04" and ups_of["FPDU-B05"] == "UPS-B03"
    # racks Z2-R001.. hang off FPDU-A05..A08 in blocks of 16
    br = demo.node_index["Z2-R001-A1-BR"]
    assert demo.node_id[demo.parent_idx[br]] == "FPDU-A05"
    br = demo.node_index["Z2-R064-B2-BR"]
    assert demo.node_id[demo.parent_idx[br]] == "FPDU-B08"
    # electronic floor-PDU breaker: earliest tolerance for the controller, tr = 12 s
    f = demo.node_index["FPDU-A01"]
    assert demo.trip_guard.thermal_k[f] == pytest.approx(1.05)
    assert demo.trip_guard.thermal_tau_s[f] == pytest.approx(25.72 * 12)
    assert demo.trip.short_pickup_x[f] == pytest.approx(6.0)
    assert demo.trip.magnetic_x[f] == pytest.approx(12.0)
    zone_of = dict(zip(demo.server_id, demo.server_zone.tolist(), strict=True))
    assert {z for sid, z in zone_of.items() if sid.startswith(("Z1-", "ST1-"))} == {0}
    assert {z for sid, z in zone_of.items() if sid.startswith(("Z2-", "ST2-"))} == {1}


def test_hall_32k_layout_and_determinism(hall32k: Topology) -> None:
    _invariants(hall32k)
    assert hall32k.n_servers == 4096 and hall32k.n_gpus == 32_768
    assert len(hall32k.zone_id) == 8
    again = compile_hall(load_hall_config(CONFIGS / "hall-32k.toml"))
    assert again.node_id == hall32k.node_id
    assert again.server_id == hall32k.server_id
    for name in ("parent_idx", "rating_a", "limit_a", "psu_node", "psu_phase", "psu_feed",
                 "server_priority", "node_rack"):
        assert np.array_equal(getattr(again, name), getattr(hall32k, name)), name
    ups = hall32k.nodes_of_kind("ups")
    assert len(ups) == 32
    assert np.allclose(hall32k.limit_a[ups], 2_500_000 / (np.sqrt(3) * 415))


def _rig_dict() -> dict:
    return tomllib.loads((CONFIGS / "rig.toml").read_text())


def test_line_to_line_and_single_phase_nodes_compile() -> None:
    raw = _rig_dict()
    raw["pdu_models"][0]["banks"] = [
        {"id": "1", "connection": "L1-L2", "rating_a": 20, "outlets": 2},
        {"id": "2", "connection": "L3", "rating_a": 20, "outlets": 2},
    ]
    slot = raw["rack_templates"][0]["servers"][0]
    slot["count"] = 1
    slot["psu_outlets"] = [["A/1/1", "A/2/1"]]
    raw["nodes"].append({"id": "SUB", "kind": "panel", "parent": "LAB-PANEL", "v_ll_v": 415,
                         "phases": 1, "phase": "L2", "rating_a": 16,
                         "breaker": {"kind": "curve", "curve": "B"}})
    topo = compile_hall(validate_hall_dict(raw))
    k = topo.psu_node.tolist()
    assert topo.psu_phase[k.index(topo.node_index["RIG-A-1-1"])] == 3     # L1-L2
    assert topo.psu_phase[k.index(topo.node_index["RIG-A-2-1"])] == 2     # L3
    assert topo.rating_a[topo.node_index["RIG-A-1"]].tolist() == [20.0, 20.0, 0.0]
    assert topo.rating_a[topo.node_index["SUB"]].tolist() == [0.0, 16.0, 0.0]
    assert topo.trip.magnetic_x[topo.node_index["SUB"]] == pytest.approx(4.0)


def test_rating_kva_is_converted_to_amps_per_pole() -> None:
    raw = _rig_dict()
    raw["nodes"][0].pop("rating_a")
    raw["nodes"][0]["rating_kva"] = 100.0
    topo = compile_hall(validate_hall_dict(raw))
    assert topo.rating_a[0, 0] == pytest.approx(100_000 / (np.sqrt(3) * 415))


def test_electronic_ir_fraction_scales_limit_and_long_time() -> None:
    raw = _rig_dict()
    raw["nodes"][1]["breaker"] = {"kind": "electronic", "ir_fraction": 0.5, "tr_s": 4,
                                  "isd_x": 4, "tsd_s": 0.1, "ii_x": 10}
    topo = compile_hall(validate_hall_dict(raw))
    p = topo.node_index["LAB-PANEL"]
    assert topo.limit_a[p, 0] == pytest.approx(0.8 * 0.5 * 63)
    assert topo.trip_guard.thermal_k[p] == pytest.approx(1.05 * 0.5)
    assert topo.trip.short_pickup_x[p] == pytest.approx(4 * 0.5)
    assert topo.trip.magnetic_x[p] == pytest.approx(10.0)


def test_curve_overrides_and_continuous_fraction() -> None:
    raw = _rig_dict()
    raw["nodes"][1]["breaker"] = {"kind": "curve", "curve": "C", "magnetic_x": 9.0,
                                  "thermal_tau_s": 90.0}
    raw["nodes"][1]["continuous_fraction"] = 1.0
    topo = compile_hall(validate_hall_dict(raw))
    p = topo.node_index["LAB-PANEL"]
    assert topo.trip.magnetic_x[p] == 9.0
    assert topo.trip_guard.magnetic_x[p] == mcb_params("C", 63.0, "conservative").magnetic_x
    assert topo.trip.thermal_tau_s[p] == 90.0
    assert topo.limit_a[p, 0] == pytest.approx(63.0)


def test_spread_placement_runs_out_of_outlets() -> None:
    raw = _rig_dict()
    slot = raw["rack_templates"][0]["servers"][0]
    slot.pop("psu_outlets")
    slot["placement"] = "spread"
    slot["count"] = 9  # 18 PSUs, 16 outlets
    with pytest.raises(ConfigError) as err:
        compile_hall(validate_hall_dict(raw))
    assert any("ran out of outlets" in i.message and i.path.startswith("rack_templates[0]")
               for i in err.value.issues)


def test_match_globs(demo: Topology) -> None:
    pdus = demo.match_nodes("*-R*-[AB][12]")
    assert len(pdus) == 512
    assert all(demo.node_kind[i] == KIND_CODE["rack_pdu"] for i in pdus)
    assert demo.match_nodes("UPS-A01") == [demo.node_index["UPS-A01"]]
    assert len(demo.match_servers("Z1-*")) == 256
