"""The node agent against the real broker with the fake GPU backend, seen from a controller-side
MqttLink: caps applied, read back and acked; refusals; replays; restart, reboot and driver
reload restored from disk; broker restart; hostile command payloads; read-only; the state
file; and ``rampguard agent`` as a real process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from controller.agent import AgentConfig, NodeAgent
from controller.agent_state import SavedState, load_state, save_state, state_path
from controller.cli import main
from controller.errors import StateFileCorrupt, StateFileError
from drivers.caps import AgentSpec
from drivers.errors import GpuError
from drivers.gpus import FakeGpuBackend
from drivers.mqtt import MqttConfig, MqttLink, Subscription
from drivers.payloads import (
    AgentStatus,
    AgentTelemetry,
    AgentTopics,
    CapAck,
    CapCommand,
    dumps,
    sign_command,
)
from tests.serve_helpers import read_event

ROOT = Path(__file__).resolve().parents[2]
SERVER = "RIG-S01"
#: the cap-command key of the `rampguard agent` processes (RAMPGUARD_COMMAND_KEY), which the
#: test controller signs with
KEY = "agent-test-command-key-0123456789"


def mqtt_config(broker: Any) -> MqttConfig:
    return MqttConfig(host=broker.host, port=broker.port, connect_timeout_s=2.0,
                      publish_timeout_s=2.0, backoff_initial_s=0.05, backoff_max_s=0.3,
                      keepalive_s=5)


async def until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 (polls state nobody signals)
            await asyncio.sleep(0.01)


def fake(**kw: Any) -> FakeGpuBackend:
    return FakeGpuBackend(**{"gpus": 4, "min_w": 150.0, "max_w": 300.0, **kw})


@dataclass
class Controller:
    """The controller's side of one agent's topics."""

    topics: AgentTopics
    link: MqttLink | None = None
    acks: list[CapAck] = field(default_factory=list)
    telemetry: list[AgentTelemetry] = field(default_factory=list)
    statuses: list[AgentStatus] = field(default_factory=list)
    seq: int = 0

    def subscriptions(self) -> list[Subscription]:
        return [
            Subscription(self.topics.caps_ack, CapAck, lambda t, p: self.acks.append(p), qos=1),
            Subscription(self.topics.telemetry, AgentTelemetry,
                         lambda t, p: self.telemetry.append(p)),
            Subscription(self.topics.status, AgentStatus,
                         lambda t, p: self.statuses.append(p), qos=1),
        ]

    def make(self, caps: list[float], *, seq: int | None = None, **kw: Any) -> CapCommand:
        if seq is None:
            self.seq += 1
            seq = self.seq
        fields: dict[str, Any] = {"v": 1, "id": f"ctl-1:{seq:06d}:{uuid.uuid4().hex[:6]}",
                                  "issuer": "ctl-1", "seq": seq, "t": time.time(),
                                  "server": SERVER, "cap_w": caps, "valid_s": 30.0}
        fields.update(kw)
        return sign_command(CapCommand(**fields), KEY.encode())

    async def send(self, cmd: CapCommand | bytes) -> None:
        assert self.link is not None
        await self.link.publish(self.topics.caps_set, cmd, qos=1)

    async def ack(self, cmd: CapCommand, timeout_s: float = 10.0) -> CapAck:
        await self.send(cmd)
        await until(lambda: any(a.id == cmd.id for a in self.acks), timeout_s)
        return next(a for a in self.acks if a.id == cmd.id)

    async def next_telemetry(self, predicate: Callable[[AgentTelemetry], bool] = lambda m: True,
                             timeout_s: float = 10.0) -> AgentTelemetry:
        start = len(self.telemetry)
        await until(lambda: any(predicate(m) for m in self.telemetry[start:]), timeout_s)
        return next(m for m in self.telemetry[start:] if predicate(m))


@pytest.fixture
def topics() -> AgentTopics:
    return AgentTopics(f"rgtest/agent/{uuid.uuid4().hex}/{SERVER}")


@contextlib.asynccontextmanager
async def controller(broker: Any, topics: AgentTopics) -> AsyncIterator[Controller]:
    ctl = Controller(topics)
    async with MqttLink(mqtt_config(broker), subscriptions=ctl.subscriptions()) as link:
        ctl.link = link
        await link.wait_connected(5.0)
        try:
            yield ctl
        finally:
            # leave the shared broker clean: clear the agent's retained status
            with contextlib.suppress(Exception):
                await link.publish(topics.status, b"", qos=1, retain=True)


def agent_config(broker: Any, topics: AgentTopics, state_dir: Path | None, **kw: Any
                 ) -> AgentConfig:
    return AgentConfig(server=SERVER, topics=topics, mqtt=mqtt_config(broker),
                       state_path=state_path(state_dir, SERVER) if state_dir else None,
                       period_s=0.1, reopen_initial_s=0.05, reopen_max_s=0.2, **kw)


@contextlib.asynccontextmanager
async def running(config: AgentConfig, backend: FakeGpuBackend,
                  events: list[dict[str, object]] | None = None) -> AsyncIterator[NodeAgent]:
    sink = events.append if events is not None else None
    async with NodeAgent(config, backend, on_event=sink) as agent:
        await agent.wait_connected(5.0)
        yield agent


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------
async def test_caps_applied_read_back_and_acked(mqtt_broker: Any, topics: AgentTopics,
                                                tmp_path: Path) -> None:
    gpus = fake()
    events: list[dict[str, object]] = []
    async with controller(mqtt_broker, topics) as ctl, \
            running(agent_config(mqtt_broker, topics, tmp_path), gpus, events) as agent:
        await until(lambda: any(s.state == "online" for s in ctl.statuses))
        status = next(s for s in ctl.statuses if s.state == "online")
        assert (status.server, status.backend, status.read_only) == (SERVER, "fake", False)
        assert events[0]["event"] == "ready" and len(events[0]["gpus"]) == 4  # type: ignore
        ack = await ctl.ack(ctl.make([250.0]))
        assert ack.ok and ack.reason is None and ack.enforced_w == [250.0] * 4
        assert gpus.limits_w() == (250.0,) * 4
        per_gpu = [160.0, 200.0, 240.0, 300.0]
        ack = await ctl.ack(ctl.make(per_gpu))
        assert ack.ok and ack.enforced_w == per_gpu and gpus.limits_w() == tuple(per_gpu)
        msg = await ctl.next_telemetry(lambda m: [g.limit_w for g in m.gpus] == per_gpu)
        assert [g.power_w for g in msg.gpus] == per_gpu         # demand 300 W: at the cap
        assert [g.throttle for g in msg.gpus] == [["power_cap"]] * 3 + [[]]
        assert msg.server == SERVER and msg.cap_restores == 0
        assert agent.stats.applied == 2 and agent.stats.acks == 2
    saved = load_state(state_path(tmp_path, SERVER), SERVER)
    assert saved is not None and saved.caps_w == per_gpu and saved.last_seq == {"ctl-1": 2}
    assert os.listdir(tmp_path) == [f"{SERVER}.json"]                  # no temp file left
    assert ctl.statuses[-1].state == "offline"                          # clean goodbye


async def test_out_of_range_and_wrong_count_refused(mqtt_broker: Any, topics: AgentTopics,
                                                    tmp_path: Path) -> None:
    gpus = fake()
    async with controller(mqtt_broker, topics) as ctl, \
            running(agent_config(mqtt_broker, topics, tmp_path), gpus) as agent:
        for caps, why in [([100.0], "cap 100 W for GPU 0 is outside [150, 300] W"),
                          ([200.0, 200.0, 200.0, 301.0], "GPU 3 is outside"),
                          ([200.0, 200.0, 200.0], "expected 1 or 4 caps, got 3")]:
            ack = await ctl.ack(ctl.make(caps))
            assert not ack.ok and why in (ack.reason or "")
            assert ack.enforced_w == [300.0] * 4                 # what the GPUs enforce now
        assert gpus.sets == [] and agent.stats.refused == 3
        assert agent.desired_w is None
        ack = await ctl.ack(ctl.make([150.0]))                   # the edge is allowed
        assert ack.ok and gpus.limits_w() == (150.0,) * 4


async def test_bindings_range_narrows_the_gpus_range(mqtt_broker: Any, topics: AgentTopics
                                                     ) -> None:
    spec = AgentSpec(server=SERVER, topics=topics, gpus=4, gpu_min_cap_w=180.0,
                     gpu_max_w=280.0)
    async with controller(mqtt_broker, topics) as ctl, \
            running(agent_config(mqtt_broker, topics, None, expected=spec), fake()) as agent:
        assert (agent.spec.gpu_min_cap_w, agent.spec.gpu_max_w) == (180.0, 280.0)
        ack = await ctl.ack(ctl.make([290.0]))
        assert not ack.ok and "outside [180, 280] W" in (ack.reason or "")


async def test_bindings_that_disagree_with_the_gpus_stop_the_start(mqtt_broker: Any,
                                                                   topics: AgentTopics) -> None:
    spec = AgentSpec(server=SERVER, topics=topics, gpus=8, gpu_min_cap_w=150.0,
                     gpu_max_w=300.0)
    with pytest.raises(GpuError, match="bindings give RIG-S01 8 GPUs, the fake backend "
                                       "finds 4"):
        async with NodeAgent(agent_config(mqtt_broker, topics, None, expected=spec), fake()):
            pass


async def test_replayed_stale_and_foreign_commands_ignored(mqtt_broker: Any,
                                                           topics: AgentTopics,
                                                           tmp_path: Path) -> None:
    gpus = fake()
    async with controller(mqtt_broker, topics) as ctl, \
            running(agent_config(mqtt_broker, topics, tmp_path), gpus) as agent:
        first = ctl.make([200.0], seq=5)
        assert (await ctl.ack(first)).ok
        await ctl.send(first)                                         # the same again
        await ctl.send(ctl.make([300.0], seq=5))                      # new id, old seq
        await ctl.send(ctl.make([300.0], seq=3))                      # older seq
        await ctl.send(ctl.make([300.0], seq=9, t=time.time() - 100))  # expired (30 s)
        await ctl.send(ctl.make([300.0], seq=10, server="RIG-S02"))   # not ours
        last = await ctl.ack(ctl.make([210.0], seq=11))               # in order: after them
        assert last.ok
        assert agent.stats.ignored == {"replay": 3, "expired": 1, "other_server": 1}
        assert [a.id for a in ctl.acks] == [first.id, last.id]
        assert gpus.limits_w() == (210.0,) * 4
        other = ctl.make([300.0], seq=1, issuer="ctl-2")               # seqs are per issuer
        assert (await ctl.ack(other)).ok


async def test_hostile_command_payloads_counted_and_ignored(mqtt_broker: Any,
                                                            topics: AgentTopics,
                                                            tmp_path: Path) -> None:
    gpus = fake()
    async with controller(mqtt_broker, topics) as ctl, \
            running(agent_config(mqtt_broker, topics, tmp_path), gpus) as agent:
        good = dumps(ctl.make([200.0], seq=50))
        hostile = [
            b"{not json", b"", b"[]", b"null", b'"caps"', b"\xff\xfe\x00",
            good.replace(b'"valid_s":30.0', b'"valid_s":30.0,"force":true'),   # unknown
            good.replace(b'"seq":50', b'"seq":"50"'),                           # str
            good.replace(b'"seq":50', b'"seq":50.0'),                           # float
            good.replace(b'"cap_w":[200.0]', b'"cap_w":[true]'),                # bool
            good.replace(b'"cap_w":[200.0]', b'"cap_w":[NaN]'),
            good.replace(b'"cap_w":[200.0]', b'"cap_w":[1e999]'),
            good.replace(b'"cap_w":[200.0]', b'"cap_w":[-5.0]'),
            good.replace(b'"cap_w":[200.0]', b'"cap_w":[]'),
            good.replace(b'"cap_w":[200.0]', b'"cap_w":' + b"[200.0," * 64 + b"200.0"
                         + b"]" * 1),
            good.replace(b'"cap_w":[200.0]', b'"cap_w":' + b"[" * 5000 + b"]" * 5000),
            good.replace(b'"v":1', b'"v":2'),
            good.replace(b'"server":"RIG-S01"', b'"server":"RIG S01/#"'),
            good[:-1] + b',"pad":"' + b"x" * 70_000 + b'"}',                 # too large
            dumps(ctl.make([200.0], seq=51, t=time.time() + 3600)),           # future
        ]
        for data in hostile:
            await ctl.send(data)
        await until(lambda: agent.link.counters.received == len(hostile))
        assert agent.link.counters.accepted == 0
        rejected = agent.link.counters.rejected
        assert sum(rejected.values()) == len(hostile)
        assert rejected["too_large"] == 1 and rejected["future"] == 1
        assert rejected["json"] >= 5 and rejected["schema"] >= 10
        assert ctl.acks == [] and gpus.sets == [] and agent.stats.commands == 0
        ack = await ctl.ack(ctl.make([220.0], seq=60))                  # still listening
        assert ack.ok and gpus.limits_w() == (220.0,) * 4


async def test_backend_failure_refuses_with_a_reason(mqtt_broker: Any, topics: AgentTopics,
                                                     tmp_path: Path) -> None:
    gpus = fake()
    async with controller(mqtt_broker, topics) as ctl, \
            running(agent_config(mqtt_broker, topics, tmp_path), gpus) as agent:
        gpus.read_only = True                   # e.g. not root: NVML says NO_PERMISSION
        ack = await ctl.ack(ctl.make([200.0]))
        assert not ack.ok and "cannot apply the caps" in (ack.reason or "")
        assert ack.enforced_w == [300.0] * 4
        gpus.read_only = False                  # fixed: the next reconcile applies them
        await until(lambda: gpus.limits_w() == (200.0,) * 4)
        assert agent.stats.cap_restores == 4


async def test_a_gpu_that_does_not_take_the_cap_is_reported(mqtt_broker: Any,
                                                            topics: AgentTopics) -> None:
    class Stubborn(FakeGpuBackend):
        def set_power_limit_w(self, index: int, limit_w: float) -> None:
            super().set_power_limit_w(index, limit_w + (25.0 if index == 2 else 0.0))

    gpus = Stubborn(gpus=4, min_w=150.0, max_w=300.0)
    async with controller(mqtt_broker, topics) as ctl, \
            running(agent_config(mqtt_broker, topics, None), gpus):
        ack = await ctl.ack(ctl.make([200.0]))
        assert not ack.ok and ack.reason == "GPU 2 enforces 225 W after being set to 200 W"
        assert ack.enforced_w == [200.0, 200.0, 225.0, 200.0]


# --------------------------------------------------------------------------------------------
# Restarts, reboots, driver reloads, broker restarts
# --------------------------------------------------------------------------------------------
async def test_restart_reapplies_caps_from_disk(mqtt_broker: Any, topics: AgentTopics,
                                                tmp_path: Path) -> None:
    config = agent_config(mqtt_broker, topics, tmp_path)
    async with controller(mqtt_broker, topics) as ctl:
        async with running(config, fake()):
            first = ctl.make([180.0, 190.0, 200.0, 210.0])
            assert (await ctl.ack(first)).ok
        rebooted = fake()                          # a reboot: every GPU back at 300 W
        events: list[dict[str, object]] = []
        async with NodeAgent(config, rebooted, on_event=events.append) as agent:
            # restored on entering, before the broker is reached
            assert rebooted.limits_w() == (180.0, 190.0, 200.0, 210.0)
            assert agent.stats.cap_restores == 4
            await agent.wait_connected(5.0)
            msg = await ctl.next_telemetry()
            assert msg.cap_restores == 4
            assert [g.limit_w for g in msg.gpus] == [180.0, 190.0, 200.0, 210.0]
            await ctl.send(first)                  # a replay after the restart: still ignored
            ack = await ctl.ack(ctl.make([250.0]))
            assert ack.ok and agent.stats.ignored == {"replay": 1}
        names = [e["event"] for e in events]
        assert names[:3] == ["state_loaded", "caps_restored", "ready"]
        restored = events[1]
        assert restored["found_w"] == [300.0] * 4 and restored["ok"] is True


async def test_driver_reload_detected_restored_and_reported(mqtt_broker: Any,
                                                            topics: AgentTopics,
                                                            tmp_path: Path) -> None:
    gpus = fake()
    events: list[dict[str, object]] = []
    async with controller(mqtt_broker, topics) as ctl, \
            running(agent_config(mqtt_broker, topics, tmp_path), gpus, events) as agent:
        assert (await ctl.ack(ctl.make([220.0]))).ok
        gpus.simulate_reload()                     # stale handles, limits back to 300 W
        await until(lambda: agent.stats.cap_restores == 4)
        assert gpus.limits_w() == (220.0,) * 4 and agent.stats.reopens == 1
        names = [e["event"] for e in events]
        assert names.index("backend_lost") < names.index("backend_reopened") \
            < names.index("caps_restored")
        msg = await ctl.next_telemetry(lambda m: m.cap_restores == 4)
        assert all(g.limit_w == 220.0 for g in msg.gpus)
        gpus.simulate_reload(stale_handles=False)  # someone's reset under a live library
        await until(lambda: agent.stats.cap_restores == 8)
        assert gpus.limits_w() == (220.0,) * 4
        errors = agent.stats.backend_errors
        gpus.fail_reads = GpuError("sensor fault", code=999)  # reads fail: no telemetry
        # A reading taken just before the fault may still be on its way out: count from the
        # first failed read on.
        await until(lambda: agent.stats.backend_errors > errors)
        sent = agent.stats.telemetry_sent
        await until(lambda: agent.stats.backend_errors >= errors + 3)
        assert agent.stats.telemetry_sent == sent
        gpus.fail_reads = None
        await until(lambda: agent.stats.telemetry_sent > sent)


async def test_broker_restart_survived(private_broker: Any, topics: AgentTopics,
                                       tmp_path: Path) -> None:
    gpus = fake()
    config = agent_config(private_broker.broker, topics, tmp_path)
    async with running(config, gpus) as agent:
        async with controller(private_broker.broker, topics) as ctl:
            assert (await ctl.ack(ctl.make([200.0]))).ok
        private_broker.kill()
        await agent.link.wait_disconnected(5.0)
        dropped = agent.stats.telemetry_dropped
        await until(lambda: agent.stats.telemetry_dropped > dropped)
        gpus.simulate_reload()                     # the GPUs lose their caps meanwhile
        await until(lambda: gpus.limits_w() == (200.0,) * 4 and agent.stats.cap_restores == 4)
        private_broker.start()
        await agent.wait_connected(10.0)
        async with controller(private_broker.broker, topics) as ctl:
            await until(lambda: any(s.state == "online" for s in ctl.statuses))  # retained
            ack = await ctl.ack(ctl.make([260.0], seq=2))
            assert ack.ok and ack.enforced_w == [260.0] * 4
            msg = await ctl.next_telemetry()
            assert msg.cap_restores == 4
        assert agent.link.counters.connects == 2


# --------------------------------------------------------------------------------------------
# Read-only and the state file
# --------------------------------------------------------------------------------------------
async def test_read_only_reports_and_changes_nothing(mqtt_broker: Any, topics: AgentTopics,
                                                     tmp_path: Path) -> None:
    path = state_path(tmp_path, SERVER)
    save_state(path, SavedState(server=SERVER, saved_t=time.time(), caps_w=[200.0] * 4,
                                last_seq={"ctl-1": 3}))
    before = path.read_bytes()
    gpus = fake()
    events: list[dict[str, object]] = []
    config = agent_config(mqtt_broker, topics, tmp_path, read_only=True)
    async with controller(mqtt_broker, topics) as ctl, running(config, gpus, events) as agent:
        await until(lambda: any(s.state == "online" for s in ctl.statuses))
        assert next(s for s in ctl.statuses if s.state == "online").read_only is True
        ack = await ctl.ack(ctl.make([250.0], seq=4))
        assert not ack.ok and ack.reason == "read-only agent: no setting is changed"
        assert ack.enforced_w == [300.0] * 4
        await ctl.send(ctl.make([250.0], seq=2))           # replay of the saved seq
        await ctl.ack(ctl.make([250.0], seq=5))
        assert agent.stats.ignored == {"replay": 1}
        msg = await ctl.next_telemetry()
        assert [g.limit_w for g in msg.gpus] == [300.0] * 4
    assert gpus.sets == [] and path.read_bytes() == before
    differ = [e for e in events if e["event"] == "caps_differ"]
    assert len(differ) == 1 and differ[0]["found_w"] == [300.0] * 4   # reported once


async def test_corrupt_state_file_reported_moved_aside_and_ignored(
        mqtt_broker: Any, topics: AgentTopics, tmp_path: Path) -> None:
    path = state_path(tmp_path, SERVER)
    path.write_bytes(b'{"v": 1, "server": "RIG-S01", "caps_w": [200.0')   # torn write
    gpus = fake()
    events: list[dict[str, object]] = []
    async with controller(mqtt_broker, topics) as ctl, \
            running(agent_config(mqtt_broker, topics, tmp_path), gpus, events) as agent:
        assert agent.desired_w is None and gpus.sets == []
        assert events[0]["event"] == "state_corrupt"
        assert (await ctl.ack(ctl.make([230.0]))).ok
    moved = [tmp_path / n for n in os.listdir(tmp_path) if ".corrupt-" in n]
    assert len(moved) == 1 and moved[0].read_bytes().endswith(b"[200.0")
    saved = load_state(path, SERVER)
    assert saved is not None and saved.caps_w == [230.0] * 4


async def test_unusable_state_files_stop_the_start(mqtt_broker: Any, topics: AgentTopics,
                                                   tmp_path: Path) -> None:
    path = state_path(tmp_path, SERVER)
    path.mkdir()
    with pytest.raises(StateFileError, match="is a directory"):
        async with NodeAgent(agent_config(mqtt_broker, topics, tmp_path), fake()):
            pass
    path.rmdir()
    save_state(path, SavedState(server="RIG-S02", saved_t=time.time()))
    with pytest.raises(StateFileError, match="state of server 'RIG-S02', not of 'RIG-S01'"):
        async with NodeAgent(agent_config(mqtt_broker, topics, tmp_path), fake()):
            pass


async def test_saved_caps_that_do_not_fit_are_not_applied(mqtt_broker: Any,
                                                          topics: AgentTopics,
                                                          tmp_path: Path) -> None:
    save_state(state_path(tmp_path, SERVER),
               SavedState(server=SERVER, saved_t=time.time(), caps_w=[200.0] * 8))
    gpus = fake()
    events: list[dict[str, object]] = []
    async with running(agent_config(mqtt_broker, topics, tmp_path), gpus, events) as agent:
        assert agent.desired_w is None and gpus.sets == []
        assert events[0]["event"] == "state_mismatch"


@pytest.mark.parametrize("data", [
    b"", b"{", b"[]", b"null", b"\xff\xfe", b'{"v": 2, "server": "S", "saved_t": 1.0}',
    b'{"v": 1, "server": "S", "saved_t": 1.0, "extra": 1}',
    b'{"v": 1, "server": "S", "saved_t": 1.0, "caps_w": [NaN]}',
    b'{"v": 1, "server": "S", "saved_t": 1.0, "caps_w": ["200"]}',
    b'{"v": 1, "server": "S", "saved_t": 1.0, "caps_w": [0.0]}',
    b'{"v": 1, "server": "S", "saved_t": 1.0, "caps_w": []}',
    b'{"v": 1, "server": "S", "saved_t": 1.0, "last_seq": {"a": -1}}',
    b'{"v": 1, "server": "S", "saved_t": 1.0, "last_seq": {"a b": 1}}',
    b'{"v": 1, "server": "../x", "saved_t": 1.0}',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"v": 1, "server": "S", "saved_t": 1.0, "pad": "' + b"x" * (1 << 20) + b'"}',
])
def test_hostile_state_files_are_corrupt(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "S.json"
    path.write_bytes(data)
    with pytest.raises(StateFileCorrupt) as err:
        load_state(path, "S")
    assert str(path) in str(err.value)


def test_state_round_trip_and_atomic_replace(tmp_path: Path) -> None:
    path = state_path(tmp_path, "S")
    assert load_state(path, "S") is None
    for k in range(3):
        save_state(path, SavedState(server="S", saved_t=1.0 + k, caps_w=[200.0 + k],
                                    last_seq={"ctl-1": k}))
    saved = load_state(path, "S")
    assert saved is not None and saved.caps_w == [202.0] and saved.last_seq == {"ctl-1": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["S.json"]
    with pytest.raises(OSError):
        save_state(tmp_path / "missing" / "S.json", SavedState(server="S", saved_t=1.0))


# --------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("argv", "message"), [
    (["--node", "bad id"], "--node must be"),
    (["--node", "S1", "--period-s", "0"], "--period-s must be"),
    (["--node", "S1", "--period-s", "nan"], "--period-s must be"),
    (["--node", "S1", "--mqtt", "http://x"], "--mqtt must be"),
    (["--node", "S1", "--mqtt", "mqtt://h:99999"], "bad port"),
    (["--node", "S1", "--fake-gpus", "2"], "--fake-* options need --backend fake"),
    (["--node", "S1", "--backend", "fake", "--fake-gpus", "0"], "--fake-gpus must be"),
    (["--node", "S1", "--backend", "fake", "--fake-min-w", "500", "--fake-max-w", "400"],
     "need 0 < --fake-min-w"),
    (["--node", "S1", "--topic-prefix", "a/+/b"], "--topic-prefix"),
    (["--node", "RIG-S09", "--config", str(ROOT / "configs" / "rig.toml")],
     "no agent binding for server 'RIG-S09'"),
    (["--node", "S1", "--config", "/nonexistent.toml"], "nonexistent"),
    (["--node", "S1", "--backend", "nope"], "invalid choice"),
    (["--backend", "fake"], "--node"),
    (["--node", "S1", "--backend", "fake"], "the cap-command key is needed"),
    (["--node", "S1", "--backend", "fake", "--command-key-file", "/nonexistent/key"],
     "--command-key-file /nonexistent/key"),
    (["--node", "S1", "--issuer", "a b"], "--issuer must be"),
    (["--node", "S1", "--mqtt", "mqtt://u:pw@127.0.0.1"], "a password in the URL is refused"),
])
def test_bad_arguments_exit_2(argv: list[str], message: str, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAMPGUARD_COMMAND_KEY", raising=False)
    assert cli(["agent", "--state-dir", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def cli(argv: list[str]) -> int | str | None:
    try:
        return main(argv)
    except SystemExit as exc:          # argparse's own usage errors
        return exc.code


def test_bad_state_dir_and_state_file_exit_2(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAMPGUARD_COMMAND_KEY", KEY)
    not_dir = tmp_path / "file"
    not_dir.write_text("x")
    assert main(["agent", "--node", "S1", "--backend", "fake", "--state-dir",
                 str(not_dir)]) == 2
    assert "cannot use --state-dir" in capsys.readouterr().err
    (tmp_path / "S1.json").mkdir()
    assert main(["agent", "--node", "S1", "--backend", "fake", "--state-dir", str(tmp_path),
                 "--mqtt", "mqtt://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "S1.json: is a directory" in err and "Traceback" not in err


async def _start(*args: str) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "controller.cli", "agent", "--issuer", "ctl-1", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "RAMPGUARD_COMMAND_KEY": KEY})
    return proc, await _event(proc, "ready")


async def _event(proc: asyncio.subprocess.Process, name: str,
                 timeout_s: float = 60.0) -> dict[str, Any]:
    return await read_event(proc, name, timeout_s)


async def test_rampguard_agent_process_end_to_end(mqtt_broker: Any, tmp_path: Path) -> None:
    prefix = f"rgtest/agent/{uuid.uuid4().hex}/{SERVER}"
    topics = AgentTopics(prefix)
    args = ["--node", SERVER, "--backend", "fake", "--mqtt", mqtt_broker.url,
            "--state-dir", str(tmp_path), "--period-s", "0.2", "--topic-prefix", prefix,
            "--fake-gpus", "8", "--fake-min-w", "150", "--fake-max-w", "300"]
    async with controller(mqtt_broker, topics) as ctl:
        proc, ready = await _start(*args)
        try:
            assert ready["server"] == SERVER and len(ready["gpus"]) == 8
            assert ready["limits_w"] == [300.0] * 8 and ready["desired_w"] is None
            ack = await ctl.ack(ctl.make([200.0]))
            assert ack.ok and ack.enforced_w == [200.0] * 8
            proc.send_signal(signal.SIGUSR1)                  # fake driver reload
            restored = await _event(proc, "caps_restored")
            assert restored["found_w"] == [300.0] * 8 and restored["ok"] is True
            await ctl.next_telemetry(lambda m: m.cap_restores == 8)
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
        assert proc.returncode == 0, err.decode()
        assert b'"event": "stopped"' in out, (out, err)
        await until(lambda: ctl.statuses[-1].state == "offline")
        # a crash (SIGKILL) and a new process, as after a reboot: caps from disk, last will
        proc, ready = await _start(*args)
        try:
            assert ready["desired_w"] == [200.0] * 8 and ready["limits_w"] == [200.0] * 8
            await until(lambda: ctl.statuses[-1].state == "online")
        finally:
            proc.kill()
            await proc.wait()
        await until(lambda: ctl.statuses[-1].state == "offline")      # the last will


async def test_rampguard_agent_for_a_rig_server(mqtt_broker: Any, tmp_path: Path) -> None:
    """As the controller's rig test starts it: topics and GPUs from the config's bindings."""
    proc, ready = await _start("--node", "RIG-S03", "--config",
                               str(ROOT / "configs" / "rig.toml"), "--backend", "fake",
                               "--mqtt", mqtt_broker.url, "--state-dir", str(tmp_path))
    try:
        assert ready["topic_prefix"] == "rampguard/agents/RIG-S03"
        assert len(ready["gpus"]) == 8 and ready["cap_range_w"] == [150.0, 300.0]
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), timeout=30)
        async with MqttLink(mqtt_config(mqtt_broker)) as link:   # leave the broker clean
            await link.wait_connected(5.0)
            await link.publish("rampguard/agents/RIG-S03/status", b"", qos=1, retain=True)
    assert proc.returncode == 0


async def test_cancelled_agent_still_says_goodbye(mqtt_broker: Any, topics: AgentTopics
                                                  ) -> None:
    gpus = fake()
    async with controller(mqtt_broker, topics) as ctl:
        entered = asyncio.Event()

        async def run() -> None:
            async with NodeAgent(agent_config(mqtt_broker, topics, None), gpus) as agent:
                await agent.wait_connected(5.0)
                entered.set()
                await agent.wait()

        task = asyncio.create_task(run())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: bool(ctl.statuses) and ctl.statuses[-1].state == "offline")
    with pytest.raises(GpuError):
        gpus.count()                               # the backend was closed


def _nvml_error() -> str | None:
    from drivers.gpus import NvmlBackend

    backend = NvmlBackend()
    try:
        backend.open()
    except GpuError as exc:
        return str(exc)
    backend.close()
    return None


NVML_ERROR = _nvml_error()


@pytest.mark.skipif(NVML_ERROR is None, reason="NVML initialises here: a GPU is present")
def test_nvml_agent_without_a_driver_exits_2(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["agent", "--node", "S1", "--backend", "nvml", "--read-only",
                 "--state-dir", str(tmp_path), "--mqtt", "mqtt://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "cannot use the nvml backend" in err and "cannot initialise NVML" in err
    assert "Traceback" not in err


@pytest.mark.skipif(NVML_ERROR is not None,
                    reason=f"no usable NVIDIA GPU here (NVML cannot initialise: {NVML_ERROR})")
async def test_nvml_agent_read_only_reports_real_gpus(mqtt_broker: Any, tmp_path: Path) -> None:
    """The must-show: real GPUs' power, temperature and limits, nothing changed."""
    prefix = f"rgtest/agent/{uuid.uuid4().hex}/gpu-host"
    topics = AgentTopics(prefix)
    async with controller(mqtt_broker, topics) as ctl:
        proc, ready = await _start("--node", "gpu-host", "--backend", "nvml", "--read-only",
                                   "--mqtt", mqtt_broker.url, "--state-dir", str(tmp_path),
                                   "--topic-prefix", prefix, "--period-s", "0.5")
        try:
            assert ready["read_only"] is True and len(ready["gpus"]) >= 1
            before = ready["limits_w"]
            msg = await ctl.next_telemetry()
            assert len(msg.gpus) == len(ready["gpus"])
            assert all(0 <= g.power_w and -50 <= g.temp_c <= 200 for g in msg.gpus)
            cmd = ctl.make([min(g["max_w"] for g in ready["gpus"])])
            ack = await ctl.ack(cmd)
            assert not ack.ok and ack.reason == "read-only agent: no setting is changed"
            assert ack.enforced_w == before
            msg = await ctl.next_telemetry()
            assert [g.limit_w for g in msg.gpus] == before
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0
    assert os.listdir(tmp_path) == []                  # read-only writes no state


def test_agent_key_prints_the_key_derived_for_one_node(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from drivers.payloads import agent_command_key

    monkeypatch.delenv("RAMPGUARD_COMMAND_KEY", raising=False)
    hall = tmp_path / "hall.key"
    hall.write_text(KEY + "\n")
    hall.chmod(0o600)
    assert cli(["agent-key", "--node", "S1", "--command-key-file", str(hall)]) == 0
    out = capsys.readouterr().out.strip()
    assert out == agent_command_key(KEY.encode(), "S1").decode() and len(out) == 64
    monkeypatch.setenv("RAMPGUARD_COMMAND_KEY", KEY)            # or from the environment
    assert cli(["agent-key", "--node", "S2"]) == 0
    assert capsys.readouterr().out.strip() == agent_command_key(KEY.encode(), "S2").decode()
    monkeypatch.delenv("RAMPGUARD_COMMAND_KEY")
    short = tmp_path / "short.key"
    short.write_text("too-short\n")
    short.chmod(0o600)
    for argv, message in ((["--node", "S1"], "the hall's command key is needed"),
                          (["--node", "a b", "--command-key-file", str(hall)], "--node must"),
                          (["--node", "S1", "--command-key-file", str(short)], "shorter than"),
                          (["--node", "S1", "--command-key-file", "/nonexistent"],
                           "/nonexistent")):
        assert cli(["agent-key", *argv]) == 2, argv
        captured = capsys.readouterr()
        assert message in captured.err and "Traceback" not in captured.err
        assert captured.out == ""
