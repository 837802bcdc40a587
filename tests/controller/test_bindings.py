"""Bindings resolved into driver configs: dealing of unit ids and ports, merging of meter and
actuator into one device, first binding wins, conflicts refused with their field path."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.bindings import pdu_models_by_node, resolve_bindings
from controller.config import loads_hall_config
from controller.errors import ConfigError
from controller.model import HallConfig
from controller.topology import Topology, compile_hall
from drivers.registers import PROFILE_METER, PROFILE_PDU, GenericProfile

RIG = (Path(__file__).resolve().parents[2] / "configs" / "rig.toml").read_text()
RIG_BINDINGS = RIG[RIG.index("[[bindings.meters]]"):RIG.index("[controller]")]


def rig_with(bindings: str, extra: str = "") -> tuple[HallConfig, Topology]:
    config = loads_hall_config(RIG.replace(RIG_BINDINGS, bindings + "\n") + extra)
    return config, compile_hall(config)


def test_rig(rig_config: HallConfig, rig: Topology) -> None:
    res = resolve_bindings(rig_config, rig)
    pdu, panel = res.modbus
    assert (pdu.node_id, pdu.port, pdu.unit_id, pdu.profile) == ("RIG-A", 15020, 1, PROFILE_PDU)
    assert pdu.meter and pdu.actuator                       # one device, both roles
    assert (pdu.banks, pdu.outlets) == (2, 16)              # the model's, not the pruned tree's
    assert (panel.node_id, panel.port, panel.profile) == ("LAB-PANEL", 15021, PROFILE_METER)
    assert panel.stale_after_s == rig_config.controller.meter_stale_s
    assert res.meter_of == {"RIG-A": "127.0.0.1:15020/1", "LAB-PANEL": "127.0.0.1:15021/1"}
    assert res.actuator_of == {"RIG-A": "127.0.0.1:15020/1"}
    assert [a.server for a in res.agents] == ["RIG-S01", "RIG-S02", "RIG-S03", "RIG-S04"]
    agent = res.agents[0]
    assert agent.topics.caps_set == "rampguard/agents/RIG-S01/caps/set"
    assert (agent.gpus, agent.gpu_min_cap_w, agent.gpu_max_w) == (8, 150.0, 300.0)
    assert res.ports == (15020, 15021) and res.notes == ()
    assert res.device("127.0.0.1:15021/1") is panel


def test_demo_hall_deals_ports(demo: Topology) -> None:
    config = loads_hall_config((Path(__file__).resolve().parents[2] / "configs" /
                                "demo-hall.toml").read_bytes())
    res = resolve_bindings(config, demo)
    pdus = [c for c in res.modbus if c.profile == PROFILE_PDU]
    assert len(pdus) == len(demo.nodes_of_kind("rack_pdu"))
    assert all(c.meter and c.actuator for c in pdus)
    keys = [c.key for c in res.modbus]
    assert len(set(keys)) == len(keys)
    assert [c.unit_id for c in pdus[:2]] == [1, 2]
    assert pdus[247].port == pdus[0].port + 1 and pdus[247].unit_id == 1
    assert len(res.agents) == int((demo.server_gpus > 0).sum())  # the 1U storage servers: none
    assert pdu_models_by_node(config)[pdus[0].node_id].id


def test_units_per_port() -> None:
    config, topo = rig_with('''
[[bindings.meters]]
nodes = "*"
transport = "modbus"
modbus = { port = 16000, unit_id_start = 10, units_per_port = 3, profile = "rampguard-meter-v1" }
''')
    res = resolve_bindings(config, topo)
    dealt = [(c.node_id, c.port, c.unit_id) for c in res.modbus]
    assert dealt[:4] == [(topo.node_id[0], 16000, 10), (topo.node_id[1], 16000, 11),
                         (topo.node_id[2], 16000, 12), (topo.node_id[3], 16001, 10)]
    assert len(dealt) == topo.n_nodes


def test_first_meter_binding_wins_and_keeps_the_dealing() -> None:
    config, topo = rig_with('''
[[bindings.meters]]
nodes = "RIG-A"
transport = "mqtt"
topic = "site/meters/{node}"

[[bindings.meters]]
nodes = "RIG-A*"
transport = "modbus"
modbus = { port = 16000, profile = "rampguard-meter-v1" }
''')
    res = resolve_bindings(config, topo)
    assert res.meter_of["RIG-A"] == "mqtt:site/meters/RIG-A"
    assert res.mqtt_meters[0].topic == "site/meters/RIG-A"
    units = {c.node_id: c.unit_id for c in res.modbus}
    assert units["RIG-A-BR"] == 1 and "RIG-A" not in units
    assert units["RIG-A-1"] == 3                            # RIG-A keeps unit 2, unused
    assert any("already metered" in n for n in res.notes)


def test_generic_profile_becomes_a_driver_profile() -> None:
    config, topo = rig_with('''
[[bindings.meters]]
nodes = "LAB-PANEL"
transport = "modbus"
modbus = { port = 16000, profile = "acme" }
''', '''
[[register_profiles]]
id = "acme"
fields = [
  { quantity = "current_l1", address = 0, type = "uint16", scale = 0.01, unit = "A" },
  { quantity = "power_total", address = 1, type = "int32", word_order = "little", unit = "kW" },
]
''')
    (cfg,) = resolve_bindings(config, topo).modbus
    assert isinstance(cfg.profile, GenericProfile) and cfg.profile.function == 4
    assert [f.quantity for f in cfg.profile.fields] == ["current_l1", "power_total"]
    assert cfg.profile.fields[1].word_order == "little"


@pytest.mark.parametrize(("bindings", "path", "message"), [
    ('''
[[bindings.meters]]
nodes = "LAB-PANEL"
transport = "modbus"
modbus = { port = 16000, profile = "rampguard-pdu-v1" }
''', "bindings.meters[0].modbus.profile", "meters rack PDUs, but 'LAB-PANEL' is a panel"),
    ('''
[[bindings.meters]]
nodes = "LAB-PANEL"
transport = "modbus"
modbus = { port = 16000, profile = "rampguard-meter-v1" }

[[bindings.actuators]]
pdus = "RIG-A"
modbus = { port = 16000, profile = "rampguard-pdu-v1" }
''', "bindings.actuators[0].modbus", "dealt to 'RIG-A' here and to 'LAB-PANEL'"),
    ('''
[[bindings.meters]]
nodes = "RIG-A"
transport = "modbus"
modbus = { port = 16000, profile = "rampguard-meter-v1" }

[[bindings.actuators]]
pdus = "RIG-A"
modbus = { port = 16000, profile = "rampguard-pdu-v1" }
''', "bindings.actuators[0].modbus", "has profile 'rampguard-pdu-v1' here"),
    ('''
[[bindings.actuators]]
pdus = "RIG-A"
modbus = { port = 16000, profile = "rampguard-meter-v1" }
''', "bindings.actuators[0].modbus.profile", "has no coils"),
    ('''
[[bindings.meters]]
nodes = "*"
transport = "modbus"
modbus = { port = 65535, units_per_port = 1, profile = "rampguard-meter-v1" }
''', "bindings.meters[0].modbus", "ports run out"),
    ('''
[[bindings.agents]]
servers = "RIG-*"
topic_prefix = "rampguard/agents/{server}/+"
''', "bindings.agents[0].topic_prefix", "wildcards"),
])
def test_conflicts_are_refused_with_their_path(bindings: str, path: str, message: str) -> None:
    try:
        config, topo = rig_with(bindings)
    except ConfigError as err:          # caught by the model already: also fine
        assert any(message in i.message or path in i.path for i in err.issues)
        return
    with pytest.raises(ConfigError) as err:
        resolve_bindings(config, topo, source="rig.toml")
    assert err.value.source == "rig.toml"
    assert any(i.path == path and message in i.message for i in err.value.issues), \
        err.value.issues


def test_unswitched_pdu_cannot_be_an_actuator() -> None:
    config = loads_hall_config(RIG.replace("inrush_guard_s = 0.1",
                                           "inrush_guard_s = 0.1\nswitched = false"))
    with pytest.raises(ConfigError, match="not switched"):
        resolve_bindings(config, compile_hall(config))
