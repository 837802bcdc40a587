"""The simulator's MQTT endpoints through a real broker, seen from a controller-side MqttLink:
agent and zone telemetry, retained statuses, and cap commands by the agents' rules."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from drivers.caps import AgentSpec, CapResult
from drivers.mqtt import MqttConfig, MqttLink, Subscription
from drivers.payloads import (
    AgentStatus,
    AgentTelemetry,
    AgentTopics,
    CapAck,
    CapCommand,
    SimStatus,
    ZoneTelemetry,
    zone_topic,
)
from sim.endpoints import AgentState, GpuState, MqttEndpoints, ZoneState


@dataclass
class Servers:
    """The plant's side: GPU caps that follow commands, servers that may be down."""

    caps: dict[str, list[float]] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)
    applied: list[tuple[str, tuple[float, ...]]] = field(default_factory=list)
    read_only: bool = False

    def state(self, server: str) -> AgentState | None:
        if server in self.down:
            return None
        caps = self.caps.setdefault(server, [700.0] * 4)
        return AgentState(tuple(GpuState(0.8 * c, 60.0, c, ("power_cap",)) for c in caps),
                          server_power_w=3000.0)

    def apply(self, server: str, caps_w: tuple[float, ...]) -> CapResult:
        if self.read_only:
            return CapResult(False, tuple(self.caps[server]), "read-only agent")
        self.applied.append((server, caps_w))
        self.caps[server] = list(caps_w)
        return CapResult(True, caps_w)


@dataclass
class Bench:
    servers: Servers
    endpoints: MqttEndpoints
    controller: MqttLink
    root: str
    got: dict[str, list[Any]]

    def topics(self, server: str) -> AgentTopics:
        return AgentTopics(f"{self.root}/{server}")

    async def expect(self, kind: str, n: int, timeout_s: float = 5.0) -> list[Any]:
        async with asyncio.timeout(timeout_s):
            while len(self.got[kind]) < n:  # noqa: ASYNC110 (polls counters nobody signals)
                await asyncio.sleep(0.01)
        return self.got[kind]

    async def command(self, server: str, seq: int, caps: list[float], **kw: Any) -> CapCommand:
        fields: dict[str, Any] = {"v": 1, "id": f"ctl-1:{seq:06d}", "issuer": "ctl-1",
                                  "seq": seq, "t": time.time(), "server": server,
                                  "cap_w": caps, "valid_s": 30.0}
        fields.update(kw)
        cmd = CapCommand(**fields)
        await self.controller.publish(self.topics(server).caps_set, cmd, qos=1)
        return cmd


@pytest.fixture
async def bench(mqtt_broker: Any) -> AsyncIterator[Bench]:
    root = f"rgtest/{uuid.uuid4().hex}"
    agents = [AgentSpec(s, AgentTopics(f"{root}/{s}"), gpus=4, gpu_min_cap_w=200.0,
                        gpu_max_w=700.0) for s in ("S1", "S2")]
    servers = Servers()
    cfg = MqttConfig(host=mqtt_broker.host, port=mqtt_broker.port, backoff_initial_s=0.05,
                     backoff_max_s=0.3)
    got: dict[str, list[Any]] = {"telemetry": [], "ack": [], "status": [], "zone": [],
                                 "sim": []}

    def sink(kind: str) -> Any:
        return lambda topic, payload: got[kind].append(payload)

    subs = [Subscription(f"{root}/+/telemetry", AgentTelemetry, sink("telemetry")),
            Subscription(f"{root}/+/caps/ack", CapAck, sink("ack"), qos=1),
            Subscription(f"{root}/+/status", AgentStatus, sink("status"), qos=1),
            Subscription(zone_topic("rgtest-zone-" + root[-8:]), ZoneTelemetry, sink("zone"))]
    zone = "rgtest-zone-" + root[-8:]
    async with MqttLink(cfg, subscriptions=subs) as controller:
        await controller.wait_connected(5.0)
        endpoints = MqttEndpoints(
            cfg, agents, servers.state, servers.apply, zones=[zone],
            zone_state=lambda z: ZoneState(24.5, 12.0, 11.8, 2), sim_clock=lambda: (10.0, 42.0),
            period_s=None, status_topic=f"{root}/sim/status")
        async with endpoints:
            await endpoints.wait_connected(5.0)
            yield Bench(servers, endpoints, controller, root, got)
        async with MqttLink(cfg) as cleaner:          # leave no retained topics behind
            await cleaner.wait_connected(5.0)
            for topic in [a.topics.status for a in agents] + [f"{root}/sim/status"]:
                await cleaner.publish(topic, b"", qos=1, retain=True)


async def test_agents_announce_and_publish_telemetry(bench: Bench) -> None:
    statuses = await bench.expect("status", 2)
    assert {(s.server, s.state, s.backend) for s in statuses} == {
        ("S1", "online", "sim"), ("S2", "online", "sim")}
    bench.servers.down.add("S2")
    assert await bench.endpoints.publish_telemetry() == 2          # S1 and the zone
    telemetry = await bench.expect("telemetry", 1)
    assert telemetry[0].server == "S1" and telemetry[0].seq == 1
    assert [g.limit_w for g in telemetry[0].gpus] == [700.0] * 4
    assert telemetry[0].gpus[3].throttle == ["power_cap"]
    zone = (await bench.expect("zone", 1))[0]
    assert (zone.inlet_c, zone.units_ok) == (24.5, 2)
    await bench.endpoints.publish_telemetry()
    assert (await bench.expect("telemetry", 2))[1].seq == 2


async def test_cap_command_applied_and_acked(bench: Bench) -> None:
    cmd = await bench.command("S1", 42, [650.0])
    ack = (await bench.expect("ack", 1))[0]
    assert (ack.id, ack.ok, ack.enforced_w, ack.reason) == (cmd.id, True, [650.0] * 4, None)
    assert bench.servers.applied == [("S1", (650.0,) * 4)]
    cmd = await bench.command("S1", 43, [300.0, 400.0, 500.0, 600.0])
    ack = (await bench.expect("ack", 2))[1]
    assert ack.enforced_w == [300.0, 400.0, 500.0, 600.0]


async def test_refused_commands_are_acked_with_the_reason(bench: Bench) -> None:
    await bench.command("S1", 1, [100.0])                      # below the minimum cap
    await bench.command("S1", 2, [650.0, 650.0])               # neither 1 nor 4 caps
    bench.servers.read_only = True
    bench.servers.state("S1")
    await bench.command("S1", 3, [650.0])
    acks = await bench.expect("ack", 3)
    assert [a.ok for a in acks] == [False, False, False]
    assert "outside [200, 700]" in (acks[0].reason or "")
    assert "expected 1 or 4 caps" in (acks[1].reason or "")
    assert acks[2].reason == "read-only agent" and acks[2].enforced_w == [700.0] * 4
    assert bench.endpoints.stats.refused == 3 and bench.servers.applied == []


async def test_ignored_commands_get_no_ack(bench: Bench) -> None:
    await bench.command("S1", 10, [650.0])
    await bench.expect("ack", 1)
    await bench.command("S1", 10, [500.0])                             # replay
    await bench.command("S1", 9, [500.0])                              # older seq
    await bench.command("S1", 11, [500.0], t=time.time() - 60)         # expired
    await bench.controller.publish(bench.topics("S1").caps_set,        # for another server
                                   CapCommand(v=1, id="x", issuer="ctl-1", seq=12,
                                              t=time.time(), server="S2", cap_w=[500.0],
                                              valid_s=30.0))
    bench.servers.down.add("S2")
    await bench.command("S2", 1, [500.0])                              # agent down
    await bench.controller.publish(bench.topics("S1").caps_set, b'{"v": 1}')   # invalid
    await bench.command("S1", 13, [600.0])                             # and a good one
    acks = await bench.expect("ack", 2)
    await asyncio.sleep(0.1)
    assert len(acks) == 2 and acks[1].id == "ctl-1:000013"
    assert bench.endpoints.ignored == {"replay": 2, "expired": 1, "other_server": 1,
                                       "agent_down": 1}
    assert bench.endpoints.link.counters.rejected == {"schema": 1}
    assert bench.servers.applied == [("S1", (650.0,) * 4), ("S1", (600.0,) * 4)]


async def test_sim_status_and_agents_offline_on_stop(private_broker: Any) -> None:
    root = "rampguard/agents"            # a broker of this test's own: the real topics
    cfg = MqttConfig(host="127.0.0.1", port=private_broker.port)
    agent = AgentSpec("S9", AgentTopics(f"{root}/S9"), 1, 100.0, 300.0)
    servers = Servers()
    async with MqttEndpoints(cfg, [agent], servers.state, servers.apply, period_s=0.05,
                             sim_clock=lambda: (2.0, 5.0)) as ep:
        await ep.wait_connected(5.0)
        await asyncio.sleep(0.2)
    assert ep.stats.telemetry_published >= 2
    seen: dict[str, Any] = {}
    subs = [Subscription(f"{root}/S9/status", AgentStatus,
                         lambda t, p: seen.__setitem__("agent", p), qos=1),
            Subscription("rampguard/sim/status", SimStatus,
                         lambda t, p: seen.__setitem__("sim", p), qos=1)]
    async with MqttLink(cfg, subscriptions=subs) as obs:
        await obs.wait_connected(5.0)
        async with asyncio.timeout(5):
            while len(seen) < 2:  # noqa: ASYNC110 (polls counters nobody signals)
                await asyncio.sleep(0.01)
    assert seen["agent"].state == "offline"
    assert seen["sim"].state == "stopped" and seen["sim"].speed == 2.0


async def test_agents_offline_when_stopped_while_they_are_announced(mqtt_broker: Any) -> None:
    """A stop that comes as the agents have just said online, the connect still under way (as
    `sim serve` stopped at once after its agents said online): they say offline after it.
    The stop used to find the link not yet CONNECTED and skip the goodbye."""
    root = f"rgtest/{uuid.uuid4().hex}"
    cfg = MqttConfig(host=mqtt_broker.host, port=mqtt_broker.port)
    agents = [AgentSpec(s, AgentTopics(f"{root}/{s}"), 1, 100.0, 300.0) for s in ("S1", "S2")]
    announced = asyncio.Event()

    class SlowToConnect(MqttEndpoints):
        async def _announce(self) -> None:
            await super()._announce()
            announced.set()
            await asyncio.sleep(0.3)        # the connect still under way when the stop comes

    servers = Servers()
    async with SlowToConnect(cfg, agents, servers.state, servers.apply, period_s=None,
                             status_topic=f"{root}/sim-status") as ep:
        await asyncio.wait_for(announced.wait(), 5.0)
        assert not ep.link.connected
    seen: dict[str, str] = {}
    topics = [a.topics.status for a in agents]
    subs = [Subscription(t, AgentStatus, lambda t, p: seen.__setitem__(t, p.state), qos=1)
            for t in topics]
    async with MqttLink(cfg, subscriptions=subs) as obs:
        await obs.wait_connected(5.0)
        async with asyncio.timeout(5):
            while len(seen) < len(topics):  # noqa: ASYNC110 (polls counters nobody signals)
                await asyncio.sleep(0.01)
        for topic in [*topics, f"{root}/sim-status"]:     # leave no retained topics behind
            await obs.publish(topic, b"", qos=1, retain=True)
    assert seen == dict.fromkeys(topics, "offline")


async def test_a_round_of_many_agents_arrives_whole_and_lets_the_loop_run(
        mqtt_broker: Any) -> None:
    """1,200 agents (more than two publish batches) in one round: every message reaches the
    subscriber once, and the event loop runs between batches (a timer set before the round
    fires while it is still going)."""
    root = f"rgtest/{uuid.uuid4().hex}"
    agents = [AgentSpec(f"S{k}", AgentTopics(f"{root}/S{k}"), gpus=4, gpu_min_cap_w=200.0,
                        gpu_max_w=700.0) for k in range(1200)]
    servers = Servers()
    cfg = MqttConfig(host=mqtt_broker.host, port=mqtt_broker.port)
    got: list[AgentTelemetry] = []
    subs = [Subscription(f"{root}/+/telemetry", AgentTelemetry,
                         lambda topic, payload: got.append(payload))]
    async with MqttLink(cfg, subscriptions=subs) as controller:
        await controller.wait_connected(5.0)
        async with MqttEndpoints(cfg, agents, servers.state, servers.apply, period_s=None,
                                 status_topic=f"{root}/sim/status") as ep:
            await ep.wait_connected(5.0)
            ran: list[int] = []
            asyncio.get_running_loop().call_soon(lambda: ran.append(len(got)))
            assert await ep.publish_telemetry() == 1200
            assert ran, "the loop never ran during the round"
            async with asyncio.timeout(10):
                while len(got) < 1200:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)
        async with MqttLink(cfg) as cleaner:
            await cleaner.wait_connected(5.0)
            for topic in [a.topics.status for a in agents] + [f"{root}/sim/status"]:
                await cleaner.publish(topic, b"", qos=1, retain=True)
    assert sorted(t.server for t in got) == sorted(a.server for a in agents)
    assert ep.stats.telemetry_published == 1200 and ep.stats.telemetry_dropped == 0
