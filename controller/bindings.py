"""Bindings resolved: a :class:`HallConfig` and its :class:`Topology` → plain driver configs.

This is where the controller meets the drivers. The drivers know nothing of configs; this
module deals the config's ``[bindings]`` out to concrete devices and topics, once, and both the
simulator's endpoints (``rampguard sim serve``) and the controller (``rampguard run``) use the
result, so the two sides cannot disagree about who is at which address.

Rules (docs/registers.md, docs/configuration.md):

* A Modbus binding deals unit ids to the nodes its glob matches, in the compiled node order:
  ``unit_id_start``, ``unit_id_start + 1``, …; after ``units_per_port`` devices the next TCP
  port. A node matched by an earlier meter binding keeps that one (first binding wins, as in
  the plant's meters) but still takes its place in the later binding's dealing.
* A meter binding and an actuator binding that deal the same host, port and unit id to the same
  rack PDU describe one device (meter and actuator); the same address dealt to two different
  nodes, or with two different profiles, is an error.
* ``rampguard-pdu-v1`` meters only rack PDUs (banks and outlets from its PDU model, counted in
  config order before unused outlets are pruned); ``rampguard-meter-v1`` meters any node; a
  generic profile (``[[register_profiles]]``) is read with function 04, without bridging gaps.
  Actuators switch outlets of switched rack PDUs (coil n − 1 for outlet n), with
  ``rampguard-pdu-v1`` or a generic profile.
* Agents: the first agent binding whose glob matches a server gives its topic prefix.

Actuation allowlists (docs/security.md): :func:`coil_allowlist` names every coil the config's
actuator bindings switch (outlets with a node behind them), :func:`command_allowlist` every
agent's ``caps/set`` topic; the controller hands them to the drivers, which refuse any other
write or command publish before anything is sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from controller.errors import ConfigError, ConfigIssue
from controller.model import HallConfig, ModbusAddressing, RackPduModel
from controller.topology import KIND_CODE, KIND_NAMES, Topology
from drivers.caps import AgentSpec
from drivers.modbus import CoilAllowlist, ModbusDeviceConfig
from drivers.mqtt import TopicAllowlist
from drivers.payloads import AgentTopics
from drivers.registers import (
    PROFILE_METER,
    PROFILE_PDU,
    GenericField,
    GenericProfile,
    Snapshot,
)

__all__ = [
    "MeterTarget",
    "MqttMeter",
    "PduNodes",
    "ResolvedBindings",
    "coil_allowlist",
    "command_allowlist",
    "meter_targets",
    "pdu_models_by_node",
    "pdu_nodes",
    "resolve_bindings",
    "target_currents",
]


@dataclass(frozen=True, slots=True)
class MqttMeter:
    """A meter read over MQTT: the node it measures and its topic (``{node}`` filled in)."""

    node_id: str
    topic: str
    update_period_s: float


@dataclass(frozen=True, slots=True)
class ResolvedBindings:
    """Every device, topic and agent the config binds.

    ``modbus``: one config per device (host, port, unit id), in binding order; ``meter_of``
    maps a metered node to its device key (``host:port/unit``) or ``mqtt:TOPIC``;
    ``actuator_of`` a switched PDU to its device key; ``agents`` one spec per bound server;
    ``notes`` says which bindings were shadowed by earlier ones.
    """

    modbus: tuple[ModbusDeviceConfig, ...]
    mqtt_meters: tuple[MqttMeter, ...]
    agents: tuple[AgentSpec, ...]
    meter_of: dict[str, str]
    actuator_of: dict[str, str]
    notes: tuple[str, ...] = ()

    def device(self, key: str) -> ModbusDeviceConfig:
        for cfg in self.modbus:
            if cfg.key == key:
                return cfg
        raise KeyError(key)

    @property
    def ports(self) -> tuple[int, ...]:
        """The distinct TCP ports of the Modbus devices, in order."""
        return tuple(dict.fromkeys(cfg.port for cfg in self.modbus))


def pdu_models_by_node(config: HallConfig) -> dict[str, RackPduModel]:
    """The PDU model of every rack PDU node id (``RACK-SLOT``)."""
    models = {m.id: m for m in config.pdu_models}
    templates = {t.id: t for t in config.rack_templates}
    out: dict[str, RackPduModel] = {}
    for group in config.racks:
        template = templates[group.template]
        for rack_id in group.expanded_ids():
            for slot in template.pdus:
                out[f"{rack_id}-{slot.slot}"] = models[slot.model]
    return out


@dataclass(frozen=True, slots=True)
class PduNodes:
    """The nodes behind one rack PDU's register map: its banks in config order, and outlet n
    (1-based, numbered through the banks in config order, as docs/registers.md counts them) at
    ``outlets[n - 1]``, -1 where the compiled tree has no node (no PSU plugs into it)."""

    banks: tuple[int, ...]
    outlets: tuple[int, ...]


def pdu_nodes(config: HallConfig, topology: Topology) -> dict[str, PduNodes]:
    """:class:`PduNodes` of every rack PDU node id."""
    index = topology.node_index
    return {
        pdu: PduNodes(tuple(index[f"{pdu}-{b.id}"] for b in model.banks),
                      tuple(index.get(f"{pdu}-{b.id}-{k}", -1)
                            for b in model.banks for k in range(1, b.outlets + 1)))
        for pdu, model in pdu_models_by_node(config).items()}


def coil_allowlist(bindings: ResolvedBindings, layout: dict[str, PduNodes]) -> CoilAllowlist:
    """``(host, port, unit id, coil)`` of every outlet an actuator binding switches and the
    compiled tree has a node behind (outlet n is coil n − 1); nothing else may be written."""
    allowed: set[tuple[str, int, int, int]] = set()
    for cfg in bindings.modbus:
        if not cfg.actuator or cfg.node_id not in layout:
            continue
        for n, node in enumerate(layout[cfg.node_id].outlets[:cfg.outlets], 1):
            if node >= 0:
                allowed.add((cfg.host, cfg.port, cfg.unit_id, n - 1))
    return frozenset(allowed)


def command_allowlist(bindings: ResolvedBindings) -> TopicAllowlist:
    """The topics the controller may publish commands to: each bound agent's ``caps/set``
    (its own retained status is allowed by the link itself)."""
    return TopicAllowlist(exact=frozenset(a.topics.caps_set for a in bindings.agents))


def _generic_profiles(config: HallConfig) -> dict[str, GenericProfile]:
    return {
        p.id: GenericProfile(
            id=p.id,
            fields=tuple(GenericField(quantity=f.quantity, address=f.address, type=f.type,
                                      unit=f.unit, word_order=f.word_order, scale=f.scale)
                         for f in p.fields),
        )
        for p in config.register_profiles
    }


def resolve_bindings(config: HallConfig, topology: Topology, *,
                     source: str = "<config>") -> ResolvedBindings:
    """Resolve ``config.bindings`` against ``topology``; :class:`ConfigError` lists every
    conflict (with the binding's field path)."""
    issues: list[ConfigIssue] = []
    notes: list[str] = []
    generic = _generic_profiles(config)
    pdu_model = pdu_models_by_node(config)
    is_pdu = topology.node_kind == KIND_CODE["rack_pdu"]
    stale_s = config.controller.meter_stale_s
    devices: dict[tuple[str, int, int], ModbusDeviceConfig] = {}
    origin: dict[tuple[str, int, int], str] = {}
    meter_of: dict[str, str] = {}
    actuator_of: dict[str, str] = {}
    mqtt_meters: list[MqttMeter] = []

    def deal(where: str, addressing: ModbusAddressing, nodes: Iterable[int]
             ) -> Iterable[tuple[int, int, int]]:
        for k, i in enumerate(nodes):
            port = addressing.port + k // addressing.units_per_port
            unit = addressing.unit_id_start + k % addressing.units_per_port
            if port > 65535:
                issues.append(ConfigIssue(where, f"node {topology.node_id[i]!r} would need TCP "
                                          f"port {port} (ports run out above 65535)"))
                return
            yield i, port, unit

    def add(where: str, cfg: ModbusDeviceConfig) -> None:
        addr = (cfg.host, cfg.port, cfg.unit_id)
        known = devices.get(addr)
        if known is None:
            devices[addr] = cfg
            origin[addr] = where
            return
        if known.node_id != cfg.node_id:
            issues.append(ConfigIssue(where, f"{cfg.key} is dealt to {cfg.node_id!r} here and "
                                      f"to {known.node_id!r} by {origin[addr]}"))
            return
        if known.profile != cfg.profile:
            issues.append(ConfigIssue(where, f"{cfg.key} ({cfg.node_id}) has profile "
                                      f"{cfg.profile_id!r} here and {known.profile_id!r} by "
                                      f"{origin[addr]}"))
            return
        devices[addr] = replace(known, meter=known.meter or cfg.meter,
                                actuator=known.actuator or cfg.actuator,
                                outlets=max(known.outlets, cfg.outlets),
                                banks=max(known.banks, cfg.banks),
                                timeout_s=min(known.timeout_s, cfg.timeout_s))

    def profile_of(where: str, name: str) -> str | GenericProfile | None:
        if name in (PROFILE_PDU, PROFILE_METER):
            return name
        if name in generic:
            return generic[name]
        issues.append(ConfigIssue(where, f"unknown register profile {name!r}"))
        return None

    for b, meter in enumerate(config.bindings.meters):
        where = f"bindings.meters[{b}]"
        matched = topology.match_nodes(meter.nodes)
        if meter.transport == "mqtt":
            assert meter.topic is not None
            for i in matched:
                node = topology.node_id[i]
                if node in meter_of:
                    notes.append(f"{where}: {node} is already metered ({meter_of[node]})")
                    continue
                topic = meter.topic.replace("{node}", node)
                mqtt_meters.append(MqttMeter(node, topic, meter.update_period_s))
                meter_of[node] = f"mqtt:{topic}"
            continue
        assert meter.modbus is not None
        addressing = meter.modbus
        profile = profile_of(f"{where}.modbus.profile", addressing.profile)
        if profile is None:
            continue
        for i, port, unit in deal(f"{where}.modbus", addressing, matched):
            node = topology.node_id[i]
            if node in meter_of:
                notes.append(f"{where}: {node} is already metered ({meter_of[node]}); its unit "
                             f"{unit} on port {port} stays unused")
                continue
            banks = outlets = 0
            if profile == PROFILE_PDU:
                if not is_pdu[i]:
                    issues.append(ConfigIssue(f"{where}.modbus.profile", f"{PROFILE_PDU} meters "
                                              f"rack PDUs, but {node!r} is a "
                                              f"{_kind(topology, i)}"))
                    continue
                model = pdu_model[node]
                banks, outlets = len(model.banks), sum(bk.outlets for bk in model.banks)
            cfg = ModbusDeviceConfig(
                node_id=node, host=addressing.host, port=port, unit_id=unit, profile=profile,
                banks=banks, outlets=outlets, meter=True, actuator=False,
                timeout_s=addressing.timeout_s, stale_after_s=stale_s)
            add(f"{where}.modbus", cfg)
            meter_of[node] = cfg.key

    for b, act in enumerate(config.bindings.actuators):
        where = f"bindings.actuators[{b}]"
        addressing = act.modbus
        profile = profile_of(f"{where}.modbus.profile", addressing.profile)
        if profile is None:
            continue
        if profile == PROFILE_METER:
            issues.append(ConfigIssue(f"{where}.modbus.profile",
                                      f"{PROFILE_METER} has no coils: an actuator needs "
                                      f"{PROFILE_PDU} or a generic profile"))
            continue
        matched = [i for i in topology.match_nodes(act.pdus) if is_pdu[i]]
        for i, port, unit in deal(f"{where}.modbus", addressing, matched):
            node = topology.node_id[i]
            model = pdu_model[node]
            if not model.switched:
                issues.append(ConfigIssue(f"{where}.pdus", f"{node!r} is a {model.id!r}, which "
                                          "is not switched (switched = false)"))
                continue
            if node in actuator_of:
                notes.append(f"{where}: {node} is already switched by {actuator_of[node]}")
                continue
            outlets = sum(bk.outlets for bk in model.banks)
            banks = len(model.banks) if profile == PROFILE_PDU else 0
            cfg = ModbusDeviceConfig(
                node_id=node, host=addressing.host, port=port, unit_id=unit, profile=profile,
                banks=banks, outlets=outlets, meter=False, actuator=True,
                timeout_s=addressing.timeout_s, stale_after_s=stale_s)
            add(f"{where}.modbus", cfg)
            actuator_of[node] = cfg.key

    agents: dict[str, AgentSpec] = {}
    for b, agent in enumerate(config.bindings.agents):
        where = f"bindings.agents[{b}]"
        for s in topology.match_servers(agent.servers):
            server = topology.server_id[s]
            if server in agents:
                notes.append(f"{where}: {server} already has its agent topics "
                             f"({agents[server].topics.prefix})")
                continue
            try:
                topics = AgentTopics.for_server(agent.topic_prefix, server)
            except ValueError as exc:
                issues.append(ConfigIssue(f"{where}.topic_prefix", str(exc)))
                break
            agents[server] = AgentSpec(
                server=server, topics=topics, gpus=int(topology.server_gpus[s]),
                gpu_min_cap_w=float(topology.server_gpu_min_cap_w[s]),
                gpu_max_w=float(topology.server_gpu_max_w[s]))
    prefixes: dict[str, str] = {}
    for spec in agents.values():
        other = prefixes.setdefault(spec.topics.prefix, spec.server)
        if other != spec.server:
            issues.append(ConfigIssue("bindings.agents", f"servers {other!r} and "
                                      f"{spec.server!r} share the topic prefix "
                                      f"{spec.topics.prefix!r}"))
    if issues:
        raise ConfigError(source, _dedupe(issues))
    return ResolvedBindings(
        modbus=tuple(devices.values()), mqtt_meters=tuple(mqtt_meters),
        agents=tuple(agents.values()), meter_of=meter_of, actuator_of=actuator_of,
        notes=tuple(notes))


def _kind(topo: Topology, i: int) -> str:
    return KIND_NAMES[int(topo.node_kind[i])]


def _dedupe(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    seen: set[tuple[str, str]] = set()
    out = []
    for issue in issues:
        key = (issue.path, issue.message)
        if key not in seen:
            seen.add(key)
            out.append(issue)
    return out


# ------------------------------------------------------------------ meter readings → nodes
@dataclass(frozen=True, slots=True)
class MeterTarget:
    """Node ``node`` gets its per-pole currents from quantity ``name`` (one value spread over
    the node's poles) or from ``current_l1..l3`` (``name`` None)."""

    node: int
    name: str | None


def meter_targets(cfg: ModbusDeviceConfig, topo: Topology,
             pdus: dict[str, Any]) -> tuple[MeterTarget, ...]:
    if not cfg.meter:
        return ()
    node = topo.node_index.get(cfg.node_id)
    if node is None:
        return ()
    if isinstance(cfg.profile, str):
        out = [MeterTarget(node, None)]
    else:
        names = {f.quantity for f in cfg.profile.fields}
        phases = {"current_l1", "current_l2", "current_l3"}
        out = [MeterTarget(node, None)] if names & phases else []
    if cfg.profile == PROFILE_PDU and cfg.node_id in pdus:
        layout = pdus[cfg.node_id]
        out += [MeterTarget(b, f"bank{k}.current") for k, b in enumerate(layout.banks, 1)]
        out += [MeterTarget(o, f"outlet{n}.current") for n, o in enumerate(layout.outlets, 1)
                if o >= 0 and n <= cfg.outlets]
    return tuple(out)


def target_currents(snap: Snapshot, target: MeterTarget, topo: Topology) -> list[float] | None:
    if target.name is None:
        names = ("current_l1", "current_l2", "current_l3")
        if not any(n in snap for n in names):
            return None
        return [snap[n].value if n in snap else 0.0 for n in names]
    if target.name not in snap:
        return None
    value = snap[target.name].value
    poles = topo.rating_a[target.node] > 0
    return [value if p else 0.0 for p in poles]
