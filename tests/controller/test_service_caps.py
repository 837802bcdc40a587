"""The service's cap commands over the real broker: a tick hands them to the cap sender and
returns without waiting for the broker; a batch goes out in its order and the agents' acks are
matched to it; caps queued when the service stops, or that cannot be published, get their
failure in the audit log (no intent without a result)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np

from controller import core
from controller.audit import AuditLog, read_audit
from controller.config import load_hall_config
from controller.service import CAP_ACK_WAIT_S, Service, ServiceOptions
from controller.topology import compile_hall
from drivers import MqttConfig, MqttLink, Subscription
from drivers.payloads import CapAck, CapCommand
from tests.serve_helpers import rig_on_free_ports


def _mqtt(broker: Any, name: str) -> MqttConfig:
    return MqttConfig(host=broker.host, port=broker.port, client_id=f"{name}-{uuid.uuid4().hex}",
                      connect_timeout_s=2.0, publish_timeout_s=2.0, backoff_initial_s=0.05,
                      backoff_max_s=0.3, keepalive_s=5)


async def _until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 (polls state nobody signals)
            await asyncio.sleep(0.01)


def _service(tmp_path: Path, wall_clock: Callable[[], float] = time.time) -> Service:
    config_path, _pdu, _meter = rig_on_free_ports(tmp_path, f"rgtest/caps/{uuid.uuid4().hex}")
    config = load_hall_config(config_path)
    options = ServiceOptions(mqtt_url=None, metrics_port=None, audit_path=tmp_path / "a.jsonl")
    return Service(config, compile_hall(config), options, wall_clock=wall_clock)


def _set_caps(svc: Service, cap_w: float, servers: list[int] | None = None) -> core.SetCaps:
    chosen = list(range(svc.topo.n_servers)) if servers is None else servers
    return core.SetCaps(np.asarray(chosen, dtype=np.int32), np.full(len(chosen), cap_w),
                        core.Reason("shed", "RIG-A", 40.0, 38.0, 32.0))


class Agents:
    """Every agent of the rig on one link: records the commands, in arrival order, and acks
    each at once when ``ack`` is set."""

    def __init__(self, svc: Service, ack: bool) -> None:
        self.svc = svc
        self.ack = ack
        self.commands: list[CapCommand] = []
        self.link: MqttLink | None = None
        self.acks: list[asyncio.Task[None]] = []

    def _on_command(self, topic: str, cmd: CapCommand) -> None:
        self.commands.append(cmd)
        if self.ack and self.link is not None:
            spec = self.svc._agent_specs[cmd.server]
            ack = CapAck(v=1, t=time.time(), id=cmd.id, server=cmd.server, ok=True,
                         enforced_w=[cmd.cap_w[0]] * 8)
            self.acks.append(asyncio.get_running_loop().create_task(
                self.link.publish(spec.topics.caps_ack, ack, qos=1)))

    def subscriptions(self) -> list[Subscription]:
        return [Subscription(a.topics.caps_set, CapCommand, self._on_command, qos=1)
                for a in self.svc.bindings.agents]


@contextlib.asynccontextmanager
async def _wired(tmp_path: Path, broker: Any, *, ack: bool = True,
                 wall_clock: Callable[[], float] = time.time
                 ) -> AsyncIterator[tuple[Service, Agents]]:
    svc = _service(tmp_path, wall_clock)
    agents = Agents(svc, ack)
    async with contextlib.AsyncExitStack() as stack:
        svc._audit = stack.enter_context(AuditLog.open(svc.options.audit_path, fsync=False))
        agents.link = await stack.enter_async_context(
            MqttLink(_mqtt(broker, "agents"), subscriptions=agents.subscriptions()))
        await agents.link.wait_connected(5.0)
        svc._link = await stack.enter_async_context(
            MqttLink(_mqtt(broker, "controller"), subscriptions=svc._subscriptions()))
        await svc._link.wait_connected(5.0)
        await asyncio.sleep(0.2)        # both subscriptions in place at the broker
        yield svc, agents
        await asyncio.gather(*agents.acks)
        svc._stop.set()
        await svc._stop_caps()
        svc._drain()


def _outcomes(path: Path) -> tuple[list[int], dict[int, Any]]:
    """(set_caps intents' ids in order, results by action id)."""
    records = list(read_audit(path))
    intents = [r.seq for r in records if r.kind == "intent"
               and r.get("action", {}).get("type") == "set_caps"]
    results = {r.get("action_id"): r for r in records if r.kind == "result"}
    return intents, results


async def test_a_tick_does_not_wait_for_the_broker_and_acks_are_matched(
        tmp_path: Path, mqtt_broker: Any) -> None:
    async with _wired(tmp_path, mqtt_broker) as (svc, agents):
        first, second = _set_caps(svc, 310.0), _set_caps(svc, 290.0, [2, 0])
        assert svc._caps(first) is None and svc._caps(second) is None     # not coroutines
        assert not agents.commands and len(svc._cap_outbox) == 2        # nothing sent yet
        n = svc.topo.n_servers + 2
        await _until(lambda: len(agents.commands) == n)
        # in the order decided: the first batch server by server, then the second
        assert [(c.server, c.cap_w[0]) for c in agents.commands] == [
            *((svc.topo.server_id[s], 310.0) for s in range(svc.topo.n_servers)),
            (svc.topo.server_id[2], 290.0), (svc.topo.server_id[0], 290.0)]
        assert [c.seq for c in agents.commands] == sorted(c.seq for c in agents.commands)
        await _until(lambda: not svc._cap_action)      # every ack matched to its command
        svc._drain()
        assert svc.rejections().get("mqtt", {}).get("unknown_ack", 0) == 0
    intents, results = _outcomes(svc.options.audit_path)
    assert len(intents) == n
    assert all(results[i].get("ok") is True for i in intents)
    assert results[intents[-1]].get("readback") == {"server": svc.topo.server_id[0],
                                                   "enforced_w": [290.0] * 8}


async def test_caps_queued_at_stop_are_recorded_not_sent(tmp_path: Path,
                                                         mqtt_broker: Any) -> None:
    async with _wired(tmp_path, mqtt_broker, ack=False) as (svc, agents):
        svc._caps(_set_caps(svc, 300.0))
        svc._caps(_set_caps(svc, 280.0))
        svc._stop.set()                  # before the sender ran: both batches still queued
        await svc._stop_caps()
        svc._drain()
        await asyncio.sleep(0.3)
        assert agents.commands == []
        assert not svc._cap_outbox and not svc._cap_action
    intents, results = _outcomes(svc.options.audit_path)
    assert len(intents) == 2 * svc.topo.n_servers
    assert {(results[i].get("ok"), results[i].get("detail")) for i in intents} == {
        (False, "not sent: the service stopped")}


async def test_unacknowledged_caps_are_written_off(tmp_path: Path, mqtt_broker: Any) -> None:
    offset_s = [0.0]
    async with _wired(tmp_path, mqtt_broker, ack=False,
                      wall_clock=lambda: time.time() + offset_s[0]) as (svc, agents):
        svc._caps(_set_caps(svc, 300.0, [0, 1]))
        await _until(lambda: len(agents.commands) == 2)
        await _until(lambda: svc._cap_task is not None and svc._cap_task.done())
        offset_s[0] = 20.0
        svc._caps(_set_caps(svc, 290.0, [2]))       # leaves 20 s after the first two
        await _until(lambda: len(agents.commands) == 3)
        await _until(lambda: svc._cap_task is not None and svc._cap_task.done())
        svc._drain()
        assert len(svc._cap_action) == 3            # none old enough yet
        offset_s[0] = CAP_ACK_WAIT_S + 1.0          # the first two are past the wait
        svc._drain()
        assert [a for a, _ in svc._cap_action.values()] == [
            max(a for a, _ in svc._cap_action.values())]
        offset_s[0] = 20.0 + CAP_ACK_WAIT_S + 1.0
        svc._drain()
        assert not svc._cap_action
    intents, results = _outcomes(svc.options.audit_path)
    assert len(intents) == 3
    assert {(results[i].get("ok"), results[i].get("detail")) for i in intents} == {
        (False, f"no acknowledgement within {CAP_ACK_WAIT_S:g} s")}


async def test_caps_the_broker_cannot_take_are_recorded_as_failed(tmp_path: Path,
                                                                 mqtt_broker: Any) -> None:
    svc = _service(tmp_path)
    with AuditLog.open(svc.options.audit_path, fsync=False) as audit:
        svc._audit = audit
        svc._link = MqttLink(_mqtt(mqtt_broker, "never-connected"))     # not connected
        svc._caps(_set_caps(svc, 300.0, [1]))
        assert svc._cap_task is not None
        await svc._cap_task
        svc._drain()
        assert not svc._cap_action
        assert svc.state.mode == core.Mode.IDLE      # a refused publish is not a bug: no SAFE
    intents, results = _outcomes(svc.options.audit_path)
    assert len(intents) == 1 and results[intents[0]].get("ok") is False
    detail = results[intents[0]].get("detail", "")
    assert detail.startswith("not sent: ") and "not connected" in detail
