"""The MQTT driver over TLS with a user name and password, against a Mosquitto started by the
test (tests/security/conftest.py): it connects with the right credentials and CA, and a wrong
password, no password, an untrusted CA or a missing client certificate is refused with an
:class:`AuthenticationFailed` that says why (logged once, no traceback)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from drivers import AuthenticationFailed, DeviceTimeout, MqttConfig, MqttLink, Subscription
from drivers.mqtt import TlsConfig
from drivers.payloads import CapCommand, SimStatus
from tests.security.conftest import TlsBroker, password


def _config(broker: TlsBroker, user: str | None, pw: str | None, *, ca: Any = "ca",
            port: int | None = None, cert: bool = False) -> MqttConfig:
    ca_file = {"ca": str(broker.ca), "rogue": str(broker.rogue_ca), None: None}[ca]
    return MqttConfig(host="127.0.0.1", port=port or broker.port, username=user, password=pw,
                      client_id=f"t-{user}-{ca}", connect_timeout_s=3.0,
                      backoff_initial_s=0.2, backoff_max_s=0.5,
                      tls=TlsConfig(ca_file=ca_file,
                                    cert_file=str(broker.client_cert) if cert else None,
                                    key_file=str(broker.client_key) if cert else None))


async def test_connects_with_the_right_credentials_and_ca_and_messages_flow(
        tls_broker: TlsBroker) -> None:
    got: list[Any] = []
    arrived = asyncio.Event()
    topic = "rampguard/sim/status"
    sim = _config(tls_broker, "rampguard-sim", password("rampguard-sim"))
    reader = _config(tls_broker, "rampguard-controller", password("rampguard-controller"))
    async with MqttLink(reader, subscriptions=[
            Subscription(topic, SimStatus, lambda t, p: (got.append(p), arrived.set()))]) as sub, \
            MqttLink(sim) as pub:
        await sub.wait_connected(15)
        await pub.wait_connected(15)
        assert sub.last_error is None and pub.last_error is None
        await pub.publish(topic, SimStatus(v=1, t=time.time(), state="running", speed=1.0,
                                           sim_t_s=0.0))
        await asyncio.wait_for(arrived.wait(), 15)
    assert got[0].state == "running"


@pytest.mark.parametrize(("user", "pw", "ca", "expected"), [
    ("rampguard-controller", "wrong-password", "ca", "refused the credentials"),
    ("rampguard-controller", None, "ca", "refused the credentials"),
    (None, None, "ca", "refused the credentials of an anonymous client"),
    ("rampguard-controller", password("rampguard-controller"), "rogue", "TLS handshake failed"),
    ("rampguard-controller", password("rampguard-controller"), None, "TLS handshake failed"),
])
async def test_is_refused_with_a_clear_error(tls_broker: TlsBroker, user: str | None,
                                             pw: str | None, ca: str | None, expected: str,
                                             caplog: pytest.LogCaptureFixture) -> None:
    config = _config(tls_broker, user, pw, ca=ca)
    with caplog.at_level(logging.DEBUG, logger="drivers.mqtt"):
        async with MqttLink(config) as link:
            with pytest.raises(DeviceTimeout, match=expected):
                await link.wait_connected(3)
            assert isinstance(link.last_error, AuthenticationFailed)
            assert expected in str(link.last_error)
            assert link.counters.connects == 0 and link.counters.connect_failures >= 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "cannot connect" in errors[0].getMessage()   # once
    assert all(r.exc_info is None for r in caplog.records)                   # no traceback
    if pw is not None:
        assert pw not in caplog.text


async def test_a_listener_that_requires_a_client_certificate(tls_broker: TlsBroker) -> None:
    pw = password("rampguard-controller")
    async with MqttLink(_config(tls_broker, "rampguard-controller", pw,
                                port=tls_broker.mtls_port, cert=True)) as link:
        await link.wait_connected(15)
    async with MqttLink(_config(tls_broker, "rampguard-controller", pw,
                                port=tls_broker.mtls_port)) as link:
        # TLS 1.3: the broker's "certificate required" alert comes after the client's side of
        # the handshake; aiomqtt reports the attempt as a CONNACK timeout (paho logs the alert)
        async with asyncio.timeout(30):
            while link.last_error is None:  # noqa: ASYNC110 (a field the link sets)
                await asyncio.sleep(0.05)
        assert link.counters.connects == 0 and not link.connected


async def test_the_documented_acl_keeps_an_agent_off_another_agents_commands(
        tls_broker: TlsBroker) -> None:
    """A valid login (RIG-S02) cannot command RIG-S01; the controller can. Mosquitto drops a
    publish the ACL denies without telling the sender (MQTT 3.1.1), so the sentinel published
    after it by the controller shows that nothing else arrived."""
    seen: list[str] = []
    arrived = asyncio.Event()
    topic = "rampguard/agents/RIG-S01/caps/set"

    def on_command(t: str, p: CapCommand) -> None:
        seen.append(p.id)
        if p.id == "from-controller":
            arrived.set()

    def cmd(cid: str) -> CapCommand:
        return CapCommand(v=1, t=time.time(), id=cid, issuer="rampguard", seq=1,
                          server="RIG-S01", cap_w=[200.0], valid_s=30.0)

    agent = _config(tls_broker, "RIG-S01", password("RIG-S01"))
    rogue = _config(tls_broker, "RIG-S02", password("RIG-S02"))
    ctl = _config(tls_broker, "rampguard-controller", password("rampguard-controller"))
    async with MqttLink(agent, subscriptions=[Subscription(topic, CapCommand, on_command,
                                                           qos=1)]) as a, \
            MqttLink(rogue) as r, MqttLink(ctl) as c:
        for link in (a, r, c):
            await link.wait_connected(15)
        await r.publish(topic, cmd("from-another-agent"))     # PUBACKed, then dropped
        await r.publish("rampguard/controller/status", b"{}", qos=1)
        await c.publish(topic, cmd("from-controller"))
        await asyncio.wait_for(arrived.wait(), 15)
    assert seen == ["from-controller"]
    assert "denied" in tls_broker.log.read_text().lower()
