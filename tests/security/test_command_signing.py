"""Agents take cap commands only from the controller: HMAC-SHA256 signatures over the canonical
payload, checked with the issuer by the shared gate, in the real agent (over the real broker)
and in the simulator's stand-ins; rejections are counted (telemetry ``commands_rejected``) and
logged without the key; the replay and expiry checks still hold for signed commands."""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from drivers.caps import AgentSpec, CapGate, CapResult
from drivers.payloads import (
    AgentTopics,
    CapCommand,
    agent_command_key,
    canonical_command,
    command_signature_error,
    dumps,
    parse,
    sign_command,
)
from sim.endpoints import AgentState, GpuState, MqttEndpoints
from tests.controller.test_agent import (
    KEY,
    SERVER,
    agent_config,
    controller,
    fake,
    mqtt_config,
    running,
    until,
)

SECRET = KEY.encode()


def _command(**kw: Any) -> CapCommand:
    fields: dict[str, Any] = {"v": 1, "t": time.time(), "id": f"ctl-1:{uuid.uuid4().hex[:8]}",
                              "issuer": "ctl-1", "seq": 1, "server": SERVER,
                              "cap_w": [212.5, 199.99999999999997], "valid_s": 30.0}
    fields.update(kw)
    return CapCommand(**fields)


def test_a_signature_covers_every_field_and_survives_the_wire() -> None:
    cmd = sign_command(_command(), SECRET)
    assert cmd.sig is not None and len(cmd.sig) == 64
    assert command_signature_error(cmd, SECRET) is None
    wire = parse(CapCommand, dumps(cmd), now_s=time.time())     # JSON floats round-trip
    assert command_signature_error(wire, SECRET) is None
    assert b'"sig"' not in canonical_command(cmd)
    assert command_signature_error(_command(), SECRET) == "unsigned"
    assert command_signature_error(cmd, b"another-key-0123456789") == "bad_signature"
    for change in ({"cap_w": [300.0]}, {"seq": 2}, {"server": "RIG-S02"}, {"issuer": "x"},
                   {"valid_s": 3600.0}, {"t": cmd.t + 1}, {"id": "ctl-1:other"}):
        forged = cmd.model_copy(update=change)
        assert command_signature_error(forged, SECRET) == "bad_signature", change
    with pytest.raises(ValueError):
        sign_command(cmd, b"")


def test_the_gate_rejects_what_is_not_the_controllers() -> None:
    topics = AgentTopics(f"t/{SERVER}")
    spec = AgentSpec(SERVER, topics, gpus=2, gpu_min_cap_w=150.0, gpu_max_w=300.0)
    gate = CapGate(spec, key=SECRET, issuer="ctl-1")
    assert "agent-test" not in repr(gate)                      # the key is not in its repr
    cases = {
        "unsigned": _command(),
        "bad_signature": sign_command(_command(), b"a-key-that-is-not-ours"),
        "wrong_issuer": sign_command(_command(issuer="ctl-2"), SECRET),
    }
    for reason, cmd in cases.items():
        assert gate.decide(cmd).ignore == reason
    good = sign_command(_command(seq=5), SECRET)
    assert gate.decide(good).caps_w == (212.5, 199.99999999999997)
    gate.taken(good)
    assert gate.decide(good).ignore == "replay"                 # the replay check stays
    old = sign_command(_command(seq=6, t=time.time() - 100, valid_s=10.0), SECRET)
    assert gate.decide(old).ignore == "expired"                 # and the expiry check
    assert gate.ignored == {"unsigned": 1, "bad_signature": 1, "wrong_issuer": 1,
                            "replay": 1, "expired": 1}


async def test_the_agent_acks_only_signed_commands_of_its_issuer(
        mqtt_broker: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    topics = AgentTopics(f"rgtest/sec/{uuid.uuid4().hex}/{SERVER}")
    gpus = fake()
    config = agent_config(mqtt_broker, topics, tmp_path, command_key=SECRET, issuer="ctl-1")
    assert KEY not in repr(config)
    with caplog.at_level(logging.DEBUG):
        async with controller(mqtt_broker, topics) as ctl, running(config, gpus) as agent:
            unsigned = ctl.make([200.0]).model_copy(update={"sig": None})
            forged = ctl.make([150.0]).model_copy(update={"sig": "0" * 64})
            other = sign_command(ctl.make([160.0]).model_copy(update={"issuer": "ctl-2"}),
                                 SECRET)
            for cmd in (unsigned, forged, other):
                await ctl.send(cmd)
            good = ctl.make([250.0])
            ack = await ctl.ack(good)                   # published after the three above
            assert ack.ok and gpus.limits_w() == (250.0,) * 4
            assert {a.id for a in ctl.acks} == {good.id}
            assert agent.stats.ignored == {"unsigned": 1, "bad_signature": 1,
                                           "wrong_issuer": 1}
            assert agent.stats.rejected_total == 3
            msg = await ctl.next_telemetry(lambda m: m.commands_rejected == 3)
            assert msg.commands_rejected == 3
            await ctl.send(good)                        # a replay of a signed command
            await until(lambda: agent.stats.ignored.get("replay") == 1)
            assert len(ctl.acks) == 1
    text = caplog.text
    assert "rejected cap command" in text and "no signature" in text
    assert "wrong signature" in text and "another issuer" in text
    assert KEY not in text


async def test_the_simulators_agents_verify_when_given_the_key(mqtt_broker: Any) -> None:
    prefix = f"rgtest/sec/{uuid.uuid4().hex}"
    spec = AgentSpec(SERVER, AgentTopics(f"{prefix}/{SERVER}"), gpus=2, gpu_min_cap_w=150.0,
                     gpu_max_w=300.0)
    applied: list[tuple[float, ...]] = []

    def state(server: str) -> AgentState:
        return AgentState(gpus=(GpuState(100.0, 40.0, 300.0),) * 2)

    def apply(server: str, caps: tuple[float, ...]) -> CapResult:
        applied.append(caps)
        return CapResult(True, caps)

    async with MqttEndpoints(mqtt_config(mqtt_broker), [spec], state, apply, period_s=None,
                             status_topic=f"{prefix}/sim/status", command_key=SECRET) as ep:
        await ep.wait_connected(10)
        assert await ep.handle_command(SERVER, _command(seq=1)) is None
        assert await ep.handle_command(
            SERVER, sign_command(_command(seq=2), b"not-the-key-0123456789")) is None
        # the hall's key itself is not this stand-in's key: only the key derived for it is
        assert await ep.handle_command(SERVER, sign_command(_command(seq=3), SECRET)) is None
        result = await ep.handle_command(
            SERVER, sign_command(_command(seq=4), agent_command_key(SECRET, SERVER)))
        assert result is not None and result.ok
    assert applied == [(212.5, 199.99999999999997)]
    assert ep.ignored == {"unsigned": 1, "bad_signature": 2}


def test_each_agent_has_its_own_key_derived_from_the_halls() -> None:
    """A node that reads its own key can sign commands for itself alone: another agent's gate
    refuses them, and the key does not give away the hall's key or another agent's."""
    k1, k2 = agent_command_key(SECRET, "S1"), agent_command_key(SECRET, "S2")
    assert k1 != k2 and SECRET not in (k1, k2)
    assert len(k1) == 64 and int(k1, 16) >= 0                # 64 hex digits, ASCII
    assert k1 == agent_command_key(SECRET, "S1")              # deterministic
    assert agent_command_key(b"another-hall-key-0123", "S1") != k1
    spec = AgentSpec("S2", AgentTopics("rgtest/S2"), gpus=2, gpu_min_cap_w=150.0,
                     gpu_max_w=300.0)
    gate = CapGate(spec, key=k2, issuer="ctl-1")
    forged = sign_command(_command(server="S2", seq=1), k1)   # S1's key, S2's command
    assert gate.decide(forged).ignore == "bad_signature"
    good = sign_command(_command(server="S2", seq=2), k2)
    assert gate.decide(good).ignore is None and gate.decide(good).caps_w is not None
    with pytest.raises(ValueError, match="empty hall key"):
        agent_command_key(b"", "S1")
