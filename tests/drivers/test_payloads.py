"""MQTT payload schemas: the examples of docs/mqtt.md, every rejection reason, hostile input,
and the cap command rules that agents share."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.caps import AgentSpec, CapGate, CapResult, make_ack
from drivers.errors import PayloadError
from drivers.payloads import (
    MAX_PAYLOAD_BYTES,
    AgentStatus,
    AgentTelemetry,
    AgentTopics,
    CapAck,
    CapCommand,
    ControllerStatus,
    GpuTelemetry,
    MeterTelemetry,
    Payload,
    SimStatus,
    ZoneTelemetry,
    command_signature_error,
    dumps,
    parse,
)

DOC = (Path(__file__).resolve().parents[2] / "docs" / "mqtt.md").read_text()
NOW = 1_795_000_010.0

#: The line before each JSON example in docs/mqtt.md names its topic; this says which model.
DOC_MODELS: dict[str, type[Payload]] = {
    "PREFIX/telemetry": AgentTelemetry,
    "PREFIX/caps/set": CapCommand,
    "PREFIX/caps/ack": CapAck,
    "PREFIX/status": AgentStatus,
    "rampguard/sim/status": SimStatus,
    "rampguard/sim/zones/{zone}/telemetry": ZoneTelemetry,
    "rampguard/controller/status": ControllerStatus,
    "rampguard/meters/{node}": MeterTelemetry,
}


def doc_examples() -> list[tuple[str, str]]:
    found = re.findall(r"^`([^`\n]+)`[^\n]*:\n\n```json\n(.*?)```", DOC, re.S | re.M)
    return [(topic, body) for topic, body in found]


def test_every_doc_example_is_covered() -> None:
    topics = [topic for topic, _ in doc_examples()]
    assert len(topics) == len(re.findall(r"```json", DOC))
    assert set(topics) == set(DOC_MODELS), "every payload of the contract has an example"


@pytest.mark.parametrize(("topic", "body"), doc_examples(), ids=[t for t, _ in doc_examples()])
def test_doc_examples_parse_and_round_trip(topic: str, body: str) -> None:
    model = DOC_MODELS[topic]
    payload = parse(model, body.encode(), now_s=NOW)
    assert json.loads(dumps(payload)) == json.loads(body)
    if isinstance(payload, CapCommand):      # signed with the key the doc names
        assert command_signature_error(payload, b"example-command-key-0123456789") is None


TELEMETRY = {"v": 1, "server": "Z1-R001-S01", "t": NOW, "seq": 812,
             "gpus": [{"index": 0, "power_w": 612.5, "temp_c": 61.0, "limit_w": 650.0,
                       "throttle": []}], "server_power_w": 8120.0}


def _reject(data: bytes | str, model: type[Payload] = AgentTelemetry) -> PayloadError:
    with pytest.raises(PayloadError) as err:
        parse(model, data, now_s=NOW, topic="t/x")
    assert err.value.topic == "t/x"
    return err.value


@pytest.mark.parametrize(("mutate", "reason", "text"), [
    (lambda d: d.update(extra=1), "schema", "extra"),
    (lambda d: d.pop("seq"), "schema", "seq: Field required"),
    (lambda d: d.update(seq="812"), "schema", "seq"),
    (lambda d: d.update(seq=812.0), "schema", "seq"),
    (lambda d: d.update(v=2), "schema", "v"),
    (lambda d: d.update(server_power_w=True), "schema", "server_power_w"),
    (lambda d: d.update(server_power_w=-1.0), "schema", "server_power_w"),
    (lambda d: d["gpus"][0].update(temp_c=1e6), "schema", "temp_c"),
    (lambda d: d["gpus"][0].update(index=3), "schema", "by index"),
    (lambda d: d["gpus"][0].update(throttle=["Power Cap!"]), "schema", "throttle"),
    (lambda d: d.update(server="a/b"), "schema", "server"),
    (lambda d: d.update(t=NOW + 301), "future", "future"),
    (lambda d: d.update(t=1.0e9), "schema", "before 2017"),
    (lambda d: d.update(gpus=[{"index": k, "power_w": 1.0, "temp_c": 1.0, "limit_w": 1.0}
                              for k in range(65)]), "schema", "gpus"),
])
def test_rejections(mutate, reason: str, text: str) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(json.dumps(TELEMETRY))
    mutate(data)
    err = _reject(json.dumps(data))
    assert err.reason == reason and text in str(err)


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b"\xff\xfe", b"[1, 2]", b"42",
                                 b"null", b'"{}"'])
def test_malformed_json(raw: bytes) -> None:
    assert _reject(raw).reason == "json"


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers(token: str) -> None:
    text = json.dumps(TELEMETRY).replace("8120.0", token)
    assert _reject(text).reason == "schema"


def test_size_limit() -> None:
    pad = json.dumps(TELEMETRY)[:-1] + ', "x": "' + "a" * MAX_PAYLOAD_BYTES + '"}'
    err = _reject(pad)
    assert err.reason == "too_large"
    fits = json.dumps(TELEMETRY)
    assert parse(AgentTelemetry, fits, now_s=NOW).seq == 812


def test_future_check_needs_the_receivers_clock() -> None:
    data = json.dumps({**TELEMETRY, "t": NOW + 10_000})
    assert parse(AgentTelemetry, data, now_s=None).t == NOW + 10_000
    assert _reject(data).reason == "future"


def test_models_refuse_bad_values_at_construction_too() -> None:
    with pytest.raises(ValueError, match="finite"):
        GpuTelemetry(index=0, power_w=math.nan, temp_c=1.0, limit_w=1.0)
    with pytest.raises(ValueError, match="reason"):
        CapAck(v=1, id="a", server="s", t=NOW, ok=False, enforced_w=[])


@given(st.binary(max_size=300))
def test_hostile_bytes(data: bytes) -> None:
    for model in (AgentTelemetry, CapCommand, CapAck, AgentStatus, ZoneTelemetry):
        try:
            parse(model, data, now_s=NOW)
        except PayloadError as err:
            assert err.reason in {"json", "schema", "future", "too_large"}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20)


@given(st.fixed_dictionaries({}, optional={k: json_values for k in TELEMETRY}))
def test_hostile_json_objects(data: dict[str, object]) -> None:
    try:
        payload = parse(AgentTelemetry, json.dumps(data), now_s=NOW)
    except PayloadError:
        return
    assert all(math.isfinite(g.power_w) for g in payload.gpus)


# --------------------------------------------------------------------------------------------
# Cap command rules
# --------------------------------------------------------------------------------------------
SPEC = AgentSpec("S1", AgentTopics("rampguard/agents/S1"), gpus=4, gpu_min_cap_w=200.0,
                 gpu_max_w=700.0)


def command(seq: int, cap_w: list[float], **kw: object) -> CapCommand:
    fields: dict[str, object] = {"v": 1, "id": f"ctl-1:{seq:06d}", "issuer": "ctl-1", "seq": seq,
                                 "t": NOW, "server": "S1", "cap_w": cap_w, "valid_s": 30.0}
    fields.update(kw)
    return CapCommand(**fields)  # type: ignore[arg-type]


def test_cap_gate_rules() -> None:
    clock = [NOW + 1]
    gate = CapGate(SPEC, clock=lambda: clock[0])
    cmd = command(42, [650.0])
    assert gate.decide(cmd).caps_w == (650.0,) * 4
    gate.taken(cmd)
    assert gate.decide(cmd).ignore == "replay"
    assert gate.decide(command(41, [650.0])).ignore == "replay"
    assert gate.decide(command(43, [650.0], server="S2")).ignore == "other_server"
    assert gate.decide(command(1, [650.0], issuer="ctl-2")).caps_w == (650.0,) * 4
    clock[0] = NOW + 31
    assert gate.decide(command(44, [650.0])).ignore == "expired"
    clock[0] = NOW + 1
    assert "expected 1 or 4 caps" in (gate.decide(command(45, [650.0, 650.0])).refuse or "")
    assert "outside [200, 700]" in (gate.decide(command(46, [100.0])).refuse or "")
    assert gate.decide(command(47, [200.0, 300.0, 400.0, 700.0])).caps_w == (
        200.0, 300.0, 400.0, 700.0)
    assert gate.ignored == {"replay": 2, "other_server": 1, "expired": 1}


def test_ack_from_result() -> None:
    cmd = command(42, [650.0])
    ok = make_ack(cmd, CapResult(True, (650.0,) * 4), t=NOW)
    assert ok.ok and ok.reason is None and ok.id == cmd.id
    refused = make_ack(cmd, CapResult(False, (700.0,) * 4, "read-only agent"), t=NOW)
    assert not refused.ok and refused.reason == "read-only agent"


def test_agent_topics() -> None:
    topics = AgentTopics.for_server("site/{server}/agent", "R1-S01")
    assert (topics.telemetry, topics.caps_set, topics.caps_ack, topics.status) == (
        "site/R1-S01/agent/telemetry", "site/R1-S01/agent/caps/set",
        "site/R1-S01/agent/caps/ack", "site/R1-S01/agent/status")
    with pytest.raises(ValueError, match="wildcards"):
        AgentTopics("a/+/b")
