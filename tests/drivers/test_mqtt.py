"""MqttLink against a real broker: validation and counting of every payload, a flood, publish
while disconnected, broker restart, last will and clean goodbye."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import aiomqtt
import pytest

from drivers import LinkState
from drivers.errors import DeviceTimeout, DriverConfigError, NotConnected
from drivers.mqtt import (
    MqttConfig,
    MqttLink,
    StatusSpec,
    Subscription,
    TlsConfig,
    aiomqtt_client,
    topic_matches,
)
from drivers.payloads import AgentTelemetry, ControllerStatus, GpuTelemetry, Payload, dumps

ROOT = Path(__file__).resolve().parents[2]


def config_for(broker: Any, **kw: Any) -> MqttConfig:
    return MqttConfig(host=broker.host, port=broker.port, connect_timeout_s=2.0,
                      publish_timeout_s=2.0, backoff_initial_s=0.05, backoff_max_s=0.3,
                      keepalive_s=5, **kw)


def telemetry(server: str = "S1", seq: int = 1, t: float | None = None) -> AgentTelemetry:
    return AgentTelemetry(v=1, server=server, t=t or time.time(), seq=seq, gpus=[
        GpuTelemetry(index=0, power_w=612.5, temp_c=61.0, limit_w=650.0)])


def status_spec(topic: str) -> StatusSpec:
    return StatusSpec(
        topic,
        lambda: ControllerStatus(v=1, t=time.time(), state="IDLE", issuer="ctl-1"),
        lambda: ControllerStatus(v=1, t=time.time(), state="OFFLINE", issuer="ctl-1"))


class Inbox:
    """What a subscription's handler got."""

    def __init__(self) -> None:
        self.items: list[tuple[str, Any]] = []
        self.event = asyncio.Event()

    def __call__(self, topic: str, payload: Any) -> None:
        self.items.append((topic, payload))
        self.event.set()

    async def wait_for(self, n: int, timeout_s: float = 5.0) -> None:
        async with asyncio.timeout(timeout_s):
            while len(self.items) < n:
                self.event.clear()
                await self.event.wait()


@pytest.fixture
def root() -> str:
    return f"rgtest/{uuid.uuid4().hex}"


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 (polls counters nobody signals)
            await asyncio.sleep(0.01)


async def test_valid_payloads_reach_the_handler_invalid_ones_are_counted(
    mqtt_broker: Any, root: str, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="drivers.mqtt")
    inbox = Inbox()
    subs = [Subscription(f"{root}/+/telemetry", AgentTelemetry, inbox, qos=1)]
    cfg = config_for(mqtt_broker)
    async with MqttLink(cfg, subscriptions=subs) as rx, MqttLink(cfg) as tx:
        await rx.wait_connected(5.0)
        await tx.wait_connected(5.0)
        good = dumps(telemetry())
        bad: list[bytes] = [
            b"{not json",                                              # json
            good.replace(b'"seq":1', b'"seq":1,"extra":true'),         # schema: unknown field
            good.replace(b'"seq":1', b'"seq":"1"'),                    # schema: wrong type
            good.replace(b'"power_w":612.5', b'"power_w":NaN'),        # schema: NaN
            dumps(telemetry(t=time.time() + 3600)),                    # future
            good[:-1] + b',"pad":"' + b"x" * 70_000 + b'"}',           # too_large
            good.replace(b'"seq":1', b'"seq":2,"extra":1'),            # schema again
        ]
        for data in [good, *bad, good]:
            await tx.publish(f"{root}/S1/telemetry", data, qos=1)
        await until(lambda: rx.counters.received == 9)
    assert [t for t, _ in inbox.items] == [f"{root}/S1/telemetry"] * 2
    assert all(isinstance(p, AgentTelemetry) and p.gpus[0].power_w == 612.5
               for _, p in inbox.items)
    assert rx.counters.accepted == 2
    assert rx.counters.rejected == {"json": 1, "schema": 4, "future": 1, "too_large": 1}
    rejections = [r for r in caplog.records if "rejected on" in r.getMessage()]
    assert [r.levelno for r in rejections].count(logging.ERROR) == 4   # once per fault
    assert [r.levelno for r in rejections].count(logging.DEBUG) == 3   # its repeats
    assert any("recovered from payload" in r.getMessage() for r in caplog.records)


async def test_flood_of_10000_messages_on_one_topic(mqtt_broker: Any, root: str) -> None:
    inbox = Inbox()
    topic = f"{root}/S1/telemetry"
    cfg = config_for(mqtt_broker)
    good, bad = dumps(telemetry()), b'{"v": 1, "oops": true}'
    async with MqttLink(cfg, subscriptions=[Subscription(topic, AgentTelemetry, inbox,
                                                         qos=1)]) as rx, MqttLink(cfg) as tx:
        await rx.wait_connected(5.0)
        await tx.wait_connected(5.0)
        for k in range(0, 10_000, 500):      # paced so that no broker queue limit drops any
            await asyncio.gather(*(tx.publish(topic, good if (k + j) % 2 else bad, qos=1)
                                   for j in range(500)))
            def received(n: int = k + 500) -> bool:
                return rx.counters.received >= n

            await until(received, timeout_s=10.0)
        assert rx.connected
        await tx.publish(topic, dumps(telemetry(seq=99)), qos=1)
        await inbox.wait_for(5_001)
    assert rx.counters.received == 10_001
    assert rx.counters.accepted == 5_001 and rx.counters.rejected == {"schema": 5_000}
    assert inbox.items[-1][1].seq == 99


async def test_publish_while_disconnected(unused_tcp_port: int, root: str) -> None:
    cfg = MqttConfig(port=unused_tcp_port, backoff_initial_s=0.05, backoff_max_s=0.1,
                     connect_timeout_s=0.5)
    async with MqttLink(cfg, status=status_spec(f"{root}/status")) as link:
        with pytest.raises(DeviceTimeout):
            await link.wait_connected(0.3)
        with pytest.raises(NotConnected) as err:
            await link.publish(f"{root}/caps/set", telemetry())
        assert err.value.topic == f"{root}/caps/set" and isinstance(err.value, ConnectionError)
        assert await link.publish_telemetry(f"{root}/telemetry", telemetry()) is False
        assert await link.publish_status() is False
        await until(lambda: link.counters.connect_failures >= 2)
    assert link.counters.dropped == 1 and link.counters.publish_failures == 2
    assert link.counters.published == 0 and link.state is LinkState.CLOSED


async def test_broker_restart(private_broker: Any, root: str) -> None:
    inbox = Inbox()
    topic = f"{root}/S1/telemetry"
    status_topic = f"{root}/status"
    cfg = config_for(private_broker.broker)
    states: list[LinkState] = []
    async with MqttLink(cfg, subscriptions=[Subscription(topic, AgentTelemetry, inbox, qos=1)],
                        status=status_spec(status_topic)) as link:
        link.add_listener(states.append)
        await link.wait_connected(5.0)
        private_broker.kill()
        await link.wait_disconnected(5.0)
        with pytest.raises(NotConnected):
            await link.publish(topic, telemetry())
        assert await link.publish_telemetry(topic, telemetry()) is False
        private_broker.start()
        await link.wait_connected(10.0)
        async with MqttLink(cfg) as tx:
            await tx.wait_connected(5.0)
            await tx.publish(topic, telemetry(seq=7), qos=1)
            await inbox.wait_for(1)
        seen = Inbox()
        async with MqttLink(cfg, subscriptions=[Subscription(status_topic, ControllerStatus,
                                                             seen, qos=1)]) as obs:
            await obs.wait_connected(5.0)
            await seen.wait_for(1)       # the retained status was republished after restart
    assert inbox.items[0][1].seq == 7
    assert seen.items[0][1].state == "IDLE"
    assert link.counters.disconnects == 1 and link.counters.connects == 2
    assert link.counters.dropped == 1
    assert states == [LinkState.CONNECTING, LinkState.CONNECTED, LinkState.BACKOFF,
                      LinkState.CONNECTING, LinkState.CONNECTED, LinkState.CLOSED]


async def test_clean_exit_publishes_offline(mqtt_broker: Any, root: str) -> None:
    status_topic = f"{root}/status"
    cfg = config_for(mqtt_broker)
    async with MqttLink(cfg, status=status_spec(status_topic)) as link:
        await link.wait_connected(5.0)
    seen = Inbox()
    async with MqttLink(cfg, subscriptions=[Subscription(status_topic, ControllerStatus, seen,
                                                         qos=1)]) as obs:
        await obs.wait_connected(5.0)
        await seen.wait_for(1)
        await obs.publish(status_topic, b"", qos=1, retain=True)      # clear the retained
    assert seen.items[0][1].state == "OFFLINE"



def controller_status(state: Literal["IDLE", "OFFLINE"]) -> ControllerStatus:
    return ControllerStatus(v=1, t=time.time(), state=state, issuer="ctl-1")


async def retained(cfg: MqttConfig, topics: list[str]) -> dict[str, str]:
    """The retained controller states on ``topics`` (then cleared, to leave the broker clean)."""
    seen: dict[str, str] = {}
    subs = [Subscription(t, ControllerStatus, lambda t, p: seen.__setitem__(t, p.state), qos=1)
            for t in topics]
    async with MqttLink(cfg, subscriptions=subs) as obs:
        await obs.wait_connected(5.0)
        await until(lambda: len(seen) == len(topics))
        for topic in topics:
            await obs.publish(topic, b"", qos=1, retain=True)
    return seen


async def test_close_during_the_connect_waits_for_it_then_says_goodbye(mqtt_broker: Any,
                                                                       root: str) -> None:
    """A close while ``on_connect`` still runs (what it published already on the broker,
    retained) lets the connect finish, then runs ``on_close`` and sends the offline status:
    it used to skip both, as the link was not CONNECTED yet, and leave everything online."""
    status_topic, hello_topic = f"{root}/status", f"{root}/hello"
    order: list[str] = []
    hello_sent = asyncio.Event()

    async def on_connect() -> None:
        await link.publish(hello_topic, controller_status("IDLE"), qos=1, retain=True)
        order.append("hello")
        hello_sent.set()
        await asyncio.sleep(0.3)            # the rest of the connect, still under way
        order.append("hello done")

    async def on_close() -> None:
        assert link.connected
        await link.publish(hello_topic, controller_status("OFFLINE"), qos=1, retain=True)
        order.append("goodbye")

    cfg = config_for(mqtt_broker)
    link = MqttLink(cfg, status=status_spec(status_topic), on_connect=on_connect,
                    on_close=on_close)
    async with link:
        await hello_sent.wait()
        assert link.state is LinkState.CONNECTING
    assert order == ["hello", "hello done", "goodbye"] and link.state is LinkState.CLOSED
    assert await retained(cfg, [status_topic, hello_topic]) == {status_topic: "OFFLINE",
                                                                 hello_topic: "OFFLINE"}


async def test_close_waits_for_a_stuck_connect_a_bounded_time(mqtt_broker: Any,
                                                              root: str) -> None:
    entered = asyncio.Event()
    closed: list[str] = []

    async def stuck() -> None:
        entered.set()
        await asyncio.Event().wait()

    async def on_close() -> None:
        closed.append("on_close")

    cfg = replace(config_for(mqtt_broker), connect_timeout_s=0.2, publish_timeout_s=0.2)
    async with MqttLink(cfg, on_connect=stuck, on_close=on_close) as link:
        await entered.wait()
        t0 = time.monotonic()
    assert 0.35 <= time.monotonic() - t0 < 3.0
    assert link.state is LinkState.CLOSED and closed == []     # never connected: no goodbye


async def test_close_stops_a_link_whose_connect_swallowed_the_cancellation(
        mqtt_broker: Any) -> None:
    """On Python 3.11 the ``asyncio.wait_for`` inside aiomqtt's connect and subscribe returns
    normally when the cancellation lands as the answer arrives. The close must stop the link
    anyway: it used to carry on into the message wait, and nobody was left to cancel it."""
    entered = asyncio.Event()
    swallowed: list[bool] = []

    async def on_connect() -> None:
        entered.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            swallowed.append(True)          # as that wait_for does: the connect goes on

    cfg = replace(config_for(mqtt_broker), connect_timeout_s=0.2, publish_timeout_s=0.2)
    link = MqttLink(cfg, on_connect=on_connect)
    async with asyncio.timeout(10):
        async with link:
            await entered.wait()
    assert swallowed == [True]
    assert link.state is LinkState.CLOSED and link.counters.connects == 0


class _DisconnectAckTimesOut(aiomqtt.Client):
    """aiomqtt's ``__aexit__`` raises ``MqttError("Operation timed out")`` when the broker's
    side of the disconnect does not come within the client's timeout: here the first time only,
    so that a link that failed the test can still be stopped by the next cancellation."""

    async def __aexit__(self, *exc: Any) -> None:
        await super().__aexit__(*exc)
        if not getattr(self, "raised", False):
            self.raised = True
            raise aiomqtt.MqttError("Operation timed out")


async def test_close_stops_a_link_whose_disconnect_raised_instead_of_the_cancellation(
        mqtt_broker: Any) -> None:
    """A disconnect that fails while the link is being stopped replaces the cancellation with
    an MqttError: the link must stop, not take it for a lost connection and connect again."""

    def factory(config: MqttConfig, will: aiomqtt.Will | None, queue: Any) -> aiomqtt.Client:
        client = aiomqtt_client(config, will, queue)
        client.__class__ = _DisconnectAckTimesOut
        return client

    link = MqttLink(config_for(mqtt_broker), client_factory=factory)
    async with asyncio.timeout(10):
        async with link:
            await link.wait_connected(5.0)
    assert link.state is LinkState.CLOSED
    assert link.counters.connects == 1 and link.counters.disconnects == 1


async def test_on_close_runs_while_connected_then_the_status_goes_offline(
        mqtt_broker: Any, root: str) -> None:
    status_topic = f"{root}/status"
    cfg = config_for(mqtt_broker)
    seen: list[str] = []

    async def on_close() -> None:
        seen.append(link.state.value)

    link = MqttLink(cfg, status=status_spec(status_topic), on_close=on_close)
    async with link:
        await link.wait_connected(5.0)
    assert seen == ["connected"]
    assert await retained(cfg, [status_topic]) == {status_topic: "OFFLINE"}


_CRASHER = textwrap.dedent("""
    import asyncio, sys, time
    from drivers.mqtt import MqttConfig, MqttLink, StatusSpec
    from drivers.payloads import ControllerStatus

    async def main(port, topic):
        spec = StatusSpec(topic,
                          lambda: ControllerStatus(v=1, t=time.time(), state="RAMPING",
                                                   issuer="crasher"),
                          lambda: ControllerStatus(v=1, t=time.time(), state="OFFLINE",
                                                   issuer="crasher"))
        async with MqttLink(MqttConfig(port=port), status=spec) as link:
            await link.wait_connected(10)
            print("ready", flush=True)
            await asyncio.sleep(60)

    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
""")


async def test_last_will_fires_when_the_process_dies(private_broker: Any, root: str) -> None:
    status_topic = f"{root}/status"
    cfg = config_for(private_broker.broker)
    seen = Inbox()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CRASHER, str(private_broker.port), status_topic,
        stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            assert (await proc.stdout.readline()).strip() == b"ready"
        async with MqttLink(cfg, subscriptions=[Subscription(status_topic, ControllerStatus,
                                                             seen, qos=1)]) as obs:
            await obs.wait_connected(5.0)
            await seen.wait_for(1)
            proc.send_signal(signal.SIGKILL)
            await seen.wait_for(2)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    assert [p.state for _, p in seen.items] == ["RAMPING", "OFFLINE"]


async def test_handler_failure_stops_the_link(mqtt_broker: Any, root: str) -> None:
    def broken(topic: str, payload: Payload) -> None:
        raise RuntimeError("consumer bug")

    cfg = config_for(mqtt_broker)
    topic = f"{root}/S1/telemetry"
    with pytest.raises(RuntimeError, match="consumer bug"):
        async with MqttLink(cfg, subscriptions=[Subscription(topic, AgentTelemetry,
                                                             broken)]) as link:
            await link.wait_connected(5.0)
            async with MqttLink(cfg) as tx:
                await tx.wait_connected(5.0)
                await tx.publish(topic, telemetry())
            await asyncio.wait_for(link.wait(), 5.0)


def test_config_from_url_and_validation() -> None:
    cfg = MqttConfig.from_url("mqtts://ops:s%40cret@broker.example:8884")
    assert (cfg.host, cfg.port, cfg.username, cfg.password) == (
        "broker.example", 8884, "ops", "s@cret")
    assert cfg.tls == TlsConfig() and "s@cret" not in repr(cfg)
    assert MqttConfig.from_url("mqtt://10.0.0.5").port == 1883
    assert MqttConfig.from_url("mqtts://h").port == 8883
    for url in ("http://h", "mqtt://", "mqtt://h:99999"):
        with pytest.raises(DriverConfigError):
            MqttConfig.from_url(url)
    with pytest.raises(DriverConfigError, match="password needs a username"):
        MqttConfig(password="x")
    with pytest.raises(DriverConfigError, match="backoff"):
        MqttConfig(backoff_initial_s=10, backoff_max_s=1)
    with pytest.raises(DriverConfigError, match="wildcard"):
        Subscription("a/#/b", AgentTelemetry, print)
    assert replace(cfg, port=1) .port == 1


@pytest.mark.parametrize(("topic_filter", "topic", "match"), [
    ("a/+/c", "a/b/c", True), ("a/+/c", "a/b/d", False), ("a/#", "a/b/c", True),
    ("a/#", "a", True), ("#", "$SYS/x", False), ("+/x", "$SYS/x", False), ("a/b", "a/b", True),
    ("a/+", "a/b/c", False), ("a/b/c", "a/b", False),
])
def test_topic_matching(topic_filter: str, topic: str, match: bool) -> None:
    assert topic_matches(topic_filter, topic) is match


def test_payload_json_is_compact() -> None:
    assert json.loads(dumps(telemetry(t=1.8e9)))["t"] == 1.8e9



