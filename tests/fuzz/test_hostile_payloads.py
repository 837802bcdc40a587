"""Hostile bytes for every MQTT payload schema of drivers/payloads.py, and for the link that
validates them as they arrive.

Structure-aware: each model starts from a valid document, which is mutated (a field deleted,
a value swapped for another type, NaN/Infinity literals, huge and over-long numbers, huge and
odd unicode strings, deep nesting, a key written twice, an unknown key), serialized as JSON
text with those hostile fragments in place, and then optionally garbled at the byte level
(truncated, invalid UTF-8 spliced in). Plus JSON bombs and 1 MB payloads.

Only two outcomes are allowed from :func:`drivers.payloads.parse`: a
:class:`~drivers.errors.PayloadError` with one of the documented reasons, or a model whose
every number is finite and which serializes and parses back to itself (so nothing out of its
bounds got in). Through :class:`~drivers.mqtt.MqttLink`'s dispatch every message is counted:
``received == accepted + rejected + unmatched``, and a handler sees only valid payloads.
"""

from __future__ import annotations

import json
import math
from typing import Any

import aiomqtt
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers import MqttConfig, MqttLink, Subscription
from drivers.errors import PayloadError
from drivers.payloads import (
    MAX_PAYLOAD_BYTES,
    AgentStatus,
    AgentTelemetry,
    CapAck,
    CapCommand,
    ControllerStatus,
    MeterTelemetry,
    Payload,
    SimStatus,
    ZoneTelemetry,
    dumps,
    parse,
)
from tests.fuzz.mutation import FUZZ, Raw, Twice, mutate, truncated

NOW = 1_795_000_010.0
REASONS = {"json", "schema", "future", "too_large"}

GPU = {"index": 0, "power_w": 310.5, "temp_c": 61.0, "limit_w": 700.0, "throttle": ["power"]}
VALID: dict[type[Payload], dict[str, Any]] = {
    AgentTelemetry: {"v": 1, "t": NOW, "server": "RIG-S01", "seq": 17,
                     "gpus": [GPU, {**GPU, "index": 1, "throttle": []}],
                     "server_power_w": 1200.0, "cap_restores": 0},
    CapCommand: {"v": 1, "t": NOW, "id": "ctl:000001", "issuer": "ctl", "seq": 1,
                 "server": "RIG-S01", "cap_w": [450.0, 450.0], "valid_s": 30.0},
    CapAck: {"v": 1, "t": NOW, "id": "ctl:000001", "server": "RIG-S01", "ok": False,
             "enforced_w": [450.0], "reason": "below the minimum cap"},
    AgentStatus: {"v": 1, "t": NOW, "server": "RIG-S01", "state": "online", "backend": "fake",
                  "read_only": False},
    SimStatus: {"v": 1, "t": NOW, "state": "running", "speed": 20.0, "sim_t_s": 12.5},
    ZoneTelemetry: {"v": 1, "t": NOW, "zone": "Z1", "inlet_c": 24.5, "it_load_kw": 10.0,
                    "cooling_kw": 30.0, "units_ok": 2},
    ControllerStatus: {"v": 1, "t": NOW, "state": "RAMPING", "issuer": "ctl"},
    MeterTelemetry: {"v": 1, "t": NOW, "node": "LAB-PANEL", "seq": 3,
                     "current_a": [1.0, 2.0, 3.0], "voltage_v": [230.0, 231.0, 229.0],
                     "power_w": [230.0, 460.0, 690.0], "energy_wh": 10.0, "breaker_open": False},
}
MODELS = sorted(VALID, key=lambda m: m.__name__)

# ============================================================================================
# JSON with hostile fragments
# ============================================================================================
def to_json(v: Any) -> str:
    if isinstance(v, Raw):
        return v.text
    if isinstance(v, Twice):
        return to_json(v.first)
    if isinstance(v, dict):
        parts = []
        for k, x in v.items():
            if isinstance(x, Twice):
                parts.append(f"{json.dumps(k)}:{to_json(x.first)}")
                parts.append(f"{json.dumps(k)}:{to_json(x.second)}")
            else:
                parts.append(f"{json.dumps(k)}:{to_json(x)}")
        return "{" + ",".join(parts) + "}"
    if isinstance(v, list):
        return "[" + ",".join(to_json(x) for x in v) + "]"
    return json.dumps(v, ensure_ascii=False, allow_nan=True)


def test_every_base_document_is_valid() -> None:
    for model, doc in VALID.items():
        assert parse(model, to_json(doc).encode(), now_s=NOW) == model.model_validate(doc)


HOSTILE = st.one_of(
    st.builds(Raw, st.sampled_from([
        "NaN", "Infinity", "-Infinity", "nan", "1e400", "-1e400", "1" + "0" * 5000,
        "0." + "0" * 5000 + "1", "-0", "1E+2", "0x10", "01", ".5", "+1", '"\\ud800"',
        '"\\u0000"', "[" * 10_000 + "]" * 10_000, '{"a":' * 5000 + "1" + "}" * 5000,
        "[" * 30_000, "null", "true", "[]", "{}", '"1"']),
    ),
    st.sampled_from([None, True, False, 0, -1, 2**53 + 1, 2**64, -(2**63), 1e308, 5e-324,
                     1_483_228_799.0, NOW + 301, "", "online", "OFFLINE", "\u202e", "𝔘𝔫𝔦",
                     "a" * 121, "x" * 10_000]),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=70),
    st.dictionaries(st.text(max_size=8), st.integers(), max_size=3),
)


def mutated(data: st.DataObject, model: type[Payload]) -> bytes:
    doc = mutate(data, VALID[model], HOSTILE, min_mutations=0,
                 unknown_keys=st.text(max_size=10))
    raw = to_json(doc).encode("utf-8", "surrogatepass")
    garble = data.draw(st.sampled_from(["none", "none", "truncate", "splice"]), label="garble")
    if garble == "truncate":
        raw = truncated(data, raw)
    elif garble == "splice":
        at = data.draw(st.integers(0, len(raw)), label="at")
        bad = data.draw(st.sampled_from([b"\xff", b"\xc3", b"\xc0\xaf", b"\xed\xa0\x80",
                                         b"\xf4\x90\x80\x80", b"\x00", b"\xef\xbb\xbf"]))
        raw = raw[:at] + bad + raw[at:]
    return raw


def _all_finite(tree: Any) -> bool:
    if isinstance(tree, float):
        return math.isfinite(tree)
    if isinstance(tree, dict):
        return all(_all_finite(v) for v in tree.values())
    if isinstance(tree, list | tuple):
        return all(_all_finite(v) for v in tree)
    return True


def check(model: type[Payload], raw: bytes) -> str | None:
    """Parse ``raw``: the PayloadError's reason, or None for a payload that is truly valid."""
    try:
        payload = parse(model, raw, now_s=NOW, topic="fuzz")
    except PayloadError as exc:
        assert exc.reason in REASONS, exc
        assert exc.message
        return exc.reason
    assert isinstance(payload, model)
    assert _all_finite(payload.model_dump())
    assert parse(model, dumps(payload), now_s=NOW) == payload   # nothing out of bounds got in
    return None


@FUZZ
@given(st.sampled_from(MODELS), st.data())
def test_mutated_documents(model: type[Payload], data: st.DataObject) -> None:
    check(model, mutated(data, model))


@settings(FUZZ, max_examples=100)
@given(st.sampled_from(MODELS), st.binary(max_size=512))
def test_random_bytes(model: type[Payload], raw: bytes) -> None:
    assert check(model, raw) is not None or raw.strip()


def test_bombs_and_huge_payloads_are_rejected_by_reason() -> None:
    cases: list[tuple[bytes, str]] = [
        (b"[" * (MAX_PAYLOAD_BYTES - 1), "json"),                   # nesting bomb, under size
        (b'{"a":' * 5_000 + b"1" + b"}" * 5_000, "json"),
        (b"[" * (1 << 20), "too_large"),                             # 1 MB
        (b'{"v":1,"t":' + b"1" * (1 << 20) + b"}", "too_large"),
        (b" " * (MAX_PAYLOAD_BYTES + 1), "too_large"),
        (b'{"v":1,"t":NaN}', "schema"),         # the parser reads NaN; the model refuses it
        (b'{"v":1,"t":Infinity}', "schema"),
        (b"\xff\xfe{\x00}\x00", "json"),
        (b"", "json"),
        (b"null", "json"),
        (b"[]", "json"),
    ]
    for model in MODELS:
        for raw, reason in cases:
            assert check(model, raw) == reason, (model.__name__, raw[:40])
        doc = dict(VALID[model])
        doc["t"] = NOW + 3600
        assert check(model, to_json(doc).encode()) == "future"


# ============================================================================================
# Through the link's dispatch: every message counted, handlers see only valid ones
# ============================================================================================
@settings(FUZZ, max_examples=60)
@given(st.lists(st.tuples(st.sampled_from([*MODELS, None]), st.data()), min_size=1,
                max_size=20))
def test_the_link_counts_every_message(messages: list[tuple[type[Payload] | None, Any]]) -> None:
    seen: list[Any] = []
    subs = [Subscription(f"fuzz/{m.__name__}", m, lambda _t, p: seen.append(p)) for m in MODELS]
    link = MqttLink(MqttConfig(), subscriptions=subs, clock=lambda: NOW)
    expected_rejected = 0
    for model, data in messages:
        if model is None:                       # a topic nobody subscribed to
            link._dispatch(aiomqtt.Message("fuzz/other", b"{}", 0, False, 1, None))
            continue
        raw = mutated(data, model)
        expected_rejected += check(model, raw) is not None
        link._dispatch(aiomqtt.Message(f"fuzz/{model.__name__}", raw, 0, False, 1, None))
    c = link.counters
    assert c.received == len(messages)
    assert c.received == c.accepted + c.rejected_total + c.unmatched
    assert c.rejected_total == expected_rejected
    assert len(seen) == c.accepted
    assert all(isinstance(p, Payload) for p in seen)
    assert set(c.rejected) <= REASONS
