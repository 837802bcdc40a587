"""The MQTT payloads of docs/mqtt.md as frozen, strict pydantic models, with parse and serialize.

Every model forbids unknown fields, coerces nothing (``"1"`` is not 1, ``true`` is not a
number), refuses NaN and infinities, and bounds every number and string. :func:`parse` adds
what a model alone cannot check: the 64 KiB size limit, and the sender's timestamp against the
receiver's clock (at most 300 s in the future; never before 2017). Every failure is a
:class:`~drivers.errors.PayloadError` with a short ``reason`` to count by:

==============  ================================================================
``too_large``   more than :data:`MAX_PAYLOAD_BYTES`
``json``        not UTF-8 JSON (or not an object)
``schema``      a missing, unknown or mistyped field, a value out of range
``future``      ``t`` more than :data:`MAX_FUTURE_S` ahead of the receiver's clock
==============  ================================================================

Cap commands are signed (docs/security.md): ``sig`` is the HMAC-SHA256, in hex, of
:func:`canonical_command` (every other field, as sorted compact JSON) under the key the
controller and its agents share; :func:`sign_command` makes it, :func:`command_signature_error`
checks it in constant time.

Topics: :class:`AgentTopics` derives an agent's four topics from its prefix;
:data:`SIM_STATUS_TOPIC`, :func:`zone_topic`, :data:`CONTROLLER_STATUS_TOPIC` name the others.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Annotated, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from drivers.errors import PayloadError

__all__ = [
    "AGENT_KEY_LABEL",
    "CONTROLLER_STATUS_TOPIC",
    "MAX_FUTURE_S",
    "MAX_PAYLOAD_BYTES",
    "MIN_TIMESTAMP_S",
    "SIM_STATUS_TOPIC",
    "AgentStatus",
    "AgentTelemetry",
    "AgentTopics",
    "CapAck",
    "CapCommand",
    "ControllerStatus",
    "GpuTelemetry",
    "MeterTelemetry",
    "Payload",
    "SimStatus",
    "ZoneTelemetry",
    "agent_command_key",
    "canonical_command",
    "command_signature_error",
    "dumps",
    "parse",
    "sign_command",
    "zone_topic",
]

MAX_PAYLOAD_BYTES = 64 * 1024
MAX_FUTURE_S = 300.0
MIN_TIMESTAMP_S = 1_483_228_800.0       # 2017-01-01T00:00:00Z: older is a clock that is wrong
SIM_STATUS_TOPIC = "rampguard/sim/status"
CONTROLLER_STATUS_TOPIC = "rampguard/controller/status"
MAX_GPUS = 64

Name = Annotated[str, Field(min_length=1, max_length=120, pattern=r"^[A-Za-z0-9_.:\-]+$")]
CommandId = Annotated[str, Field(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9_.:\-]+$")]
Word = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[a-z0-9_\-]+$")]
Watts = Annotated[float, Field(ge=0, le=1e5)]
ServerWatts = Annotated[float, Field(ge=0, le=1e6)]
Celsius = Annotated[float, Field(ge=-50, le=200)]
Seq = Annotated[int, Field(ge=0, le=2**53)]
Signature = Annotated[str, Field(min_length=64, max_length=64, pattern=r"^[0-9a-f]{64}$")]


class Payload(BaseModel):
    """Base of every payload: schema version ``v`` = 1 and the sender's wall time ``t``."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    v: Literal[1]
    t: float

    @field_validator("t")
    @classmethod
    def _sane_time(cls, t: float, info: ValidationInfo) -> float:
        if t < MIN_TIMESTAMP_S:
            raise ValueError(f"timestamp {t} is before 2017: the sender's clock is wrong")
        now = (info.context or {}).get("now_s")
        if now is not None and t > now + MAX_FUTURE_S:
            raise ValueError(f"timestamp is {t - now:.0f} s in the future (limit "
                             f"{MAX_FUTURE_S:.0f} s)")
        return t


# --------------------------------------------------------------------------------------------
# Node agents
# --------------------------------------------------------------------------------------------
class GpuTelemetry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    index: Annotated[int, Field(ge=0, lt=MAX_GPUS)]
    power_w: Watts
    temp_c: Celsius
    limit_w: Watts
    throttle: Annotated[list[Word], Field(max_length=16)] = Field(default_factory=list)


class AgentTelemetry(Payload):
    """``PREFIX/telemetry``: every second, per GPU power, temperature, enforced limit."""

    server: Name
    seq: Seq
    gpus: Annotated[list[GpuTelemetry], Field(max_length=MAX_GPUS)]
    server_power_w: ServerWatts | None = None
    #: how many times since it started the agent found a GPU at a limit other than the one
    #: last commanded (a reboot, a driver reload, someone else's ``nvidia-smi -pl``) and set it
    #: again; optional (the simulator's agents do not send it)
    cap_restores: Seq | None = None
    #: how many cap commands the agent rejected as not the controller's (unsigned, wrongly
    #: signed, another issuer) since it started; optional
    commands_rejected: Seq | None = None

    @field_validator("gpus")
    @classmethod
    def _indexed(cls, gpus: list[GpuTelemetry]) -> list[GpuTelemetry]:
        for k, gpu in enumerate(gpus):
            if gpu.index != k:
                raise ValueError(f"gpus must be listed by index from 0; entry {k} has index "
                                 f"{gpu.index}")
        return gpus


class CapCommand(Payload):
    """``PREFIX/caps/set``: one per-GPU cap each, or one for all; valid for ``valid_s``;
    ``sig``: the issuer's HMAC-SHA256 over the rest (:func:`sign_command`), None unsigned."""

    id: CommandId
    issuer: Name
    seq: Seq
    server: Name
    cap_w: Annotated[list[Annotated[float, Field(gt=0, le=1e5)]],
                     Field(min_length=1, max_length=MAX_GPUS)]
    valid_s: Annotated[float, Field(gt=0, le=3600)]
    sig: Signature | None = None

    @property
    def expires_s(self) -> float:
        return self.t + self.valid_s


class CapAck(Payload):
    """``PREFIX/caps/ack``: the result of a command, with the caps the GPUs enforce now."""

    id: CommandId
    server: Name
    ok: bool
    enforced_w: Annotated[list[Watts], Field(max_length=MAX_GPUS)]
    reason: Annotated[str, Field(max_length=200)] | None = None

    @model_validator(mode="after")
    def _reason(self) -> CapAck:
        if not self.ok and not self.reason:
            raise ValueError("a refused command (ok = false) needs a reason")
        return self


class AgentStatus(Payload):
    """``PREFIX/status`` (retained); the last will is the same with ``state = offline``."""

    server: Name
    state: Literal["online", "offline"]
    backend: Word
    read_only: bool


# --------------------------------------------------------------------------------------------
# Simulator, zones, controller, MQTT meters
# --------------------------------------------------------------------------------------------
class SimStatus(Payload):
    state: Literal["running", "stopped"]
    speed: Annotated[float, Field(gt=0, le=1e6)]
    sim_t_s: Annotated[float, Field(ge=0, le=1e12)]


class ZoneTelemetry(Payload):
    zone: Name
    inlet_c: Celsius
    it_load_kw: Annotated[float, Field(ge=0, le=1e6)]
    cooling_kw: Annotated[float, Field(ge=0, le=1e6)]
    units_ok: Annotated[int, Field(ge=0, le=10_000)]


class ControllerStatus(Payload):
    state: Literal["IDLE", "RAMPING", "HOLDING", "STEADY", "SHEDDING", "SAFE", "OFFLINE"]
    issuer: Name


Triple = Annotated[list[Annotated[float, Field(ge=0, le=1e9)]], Field(min_length=3, max_length=3)]


class MeterTelemetry(Payload):
    """A meter bound with ``transport = "mqtt"``: the topic's ``{node}`` is ``node``."""

    node: Name
    seq: Seq
    current_a: Triple
    voltage_v: Triple
    power_w: Triple
    energy_wh: Annotated[float, Field(ge=0)] | None = None
    breaker_open: bool = False


# --------------------------------------------------------------------------------------------
# Topics
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AgentTopics:
    """The four topics of one agent, under its binding's prefix (``{server}`` filled in)."""

    prefix: str

    def __post_init__(self) -> None:
        if not self.prefix or any(c in self.prefix for c in "+#\0") or "{" in self.prefix:
            raise ValueError(f"an agent topic prefix needs no wildcards or placeholders, got "
                             f"{self.prefix!r}")

    @classmethod
    def for_server(cls, pattern: str, server: str) -> AgentTopics:
        return cls(pattern.replace("{server}", server))

    @property
    def telemetry(self) -> str:
        return f"{self.prefix}/telemetry"

    @property
    def caps_set(self) -> str:
        return f"{self.prefix}/caps/set"

    @property
    def caps_ack(self) -> str:
        return f"{self.prefix}/caps/ack"

    @property
    def status(self) -> str:
        return f"{self.prefix}/status"


def zone_topic(zone: str) -> str:
    return f"rampguard/sim/zones/{zone}/telemetry"


# --------------------------------------------------------------------------------------------
# Parse and serialize
# --------------------------------------------------------------------------------------------
P = TypeVar("P", bound=Payload)


def parse(model: type[P], data: bytes | bytearray | str, *, now_s: float | None,
          topic: str | None = None) -> P:
    """Validate one payload against ``model``; ``now_s`` (receiver's wall clock, s) enables
    the future-timestamp check. Raises :class:`PayloadError` with a countable ``reason``."""
    size = len(data.encode() if isinstance(data, str) else data)
    if size > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"payload of {size} bytes exceeds {MAX_PAYLOAD_BYTES}",
                           reason="too_large", topic=topic)
    try:
        return model.model_validate_json(data, context={"now_s": now_s})
    except ValidationError as exc:
        raise PayloadError(_summary(model, exc), reason=_reason(exc), topic=topic) from exc


def _reason(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    if any(e["type"] in ("json_invalid", "json_type") for e in errors):
        return "json"
    if any(e["loc"] == () and e["type"] == "model_type" for e in errors):
        return "json"
    if any(e["loc"] == ("t",) and "future" in str(e.get("msg", "")) for e in errors):
        return "future"
    return "schema"


def _summary(model: type[Payload], exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    parts = []
    for e in errors[:3]:
        loc = ".".join(str(p) for p in e["loc"]) or "payload"
        parts.append(f"{loc}: {e['msg']}")
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return f"invalid {model.__name__}: " + "; ".join(parts) + more


def canonical_command(cmd: CapCommand) -> bytes:
    """The bytes a cap command's signature covers: every field but ``sig``, as JSON with sorted
    keys and no spaces. The same on both ends, since a float's JSON text round-trips."""
    fields = cmd.model_dump(mode="json", exclude={"sig"})
    return json.dumps(fields, sort_keys=True, separators=(",", ":"),
                      allow_nan=False).encode("utf-8")


def _signature(cmd: CapCommand, key: bytes) -> str:
    return hmac.new(key, canonical_command(cmd), hashlib.sha256).hexdigest()


#: the label of :func:`agent_command_key` (a new label would give every agent a new key)
AGENT_KEY_LABEL = b"rampguard agent cap-command key v1\x00"


def agent_command_key(hall_key: bytes, server: str) -> bytes:
    """The key that signs the cap commands of ``server``'s agent: HMAC-SHA256 of
    :data:`AGENT_KEY_LABEL` and the server id under the hall's command key, as 64 hex digits
    in ASCII (the text of the agent's key file, read back as these very bytes). The controller
    (and the simulator) hold the hall's key and derive each agent's; an agent holds only its
    own, so a node whose key is stolen can sign commands for itself alone (docs/security.md)."""
    if not hall_key:
        raise ValueError("an empty hall key derives nothing")
    return hmac.new(hall_key, AGENT_KEY_LABEL + server.encode("utf-8"),
                    hashlib.sha256).hexdigest().encode("ascii")


def sign_command(cmd: CapCommand, key: bytes) -> CapCommand:
    """``cmd`` with ``sig`` set: HMAC-SHA256 of :func:`canonical_command` under ``key``."""
    if not key:
        raise ValueError("an empty key signs nothing")
    return cmd.model_copy(update={"sig": _signature(cmd, key)})


def command_signature_error(cmd: CapCommand, key: bytes) -> str | None:
    """None when ``cmd`` carries the right signature for ``key``, else why not: ``unsigned``
    or ``bad_signature`` (compared in constant time)."""
    if cmd.sig is None:
        return "unsigned"
    if not hmac.compare_digest(cmd.sig, _signature(cmd, key)):
        return "bad_signature"
    return None


def dumps(payload: Payload) -> bytes:
    """Serialize a payload (compact JSON, UTF-8); refuses one above the size limit."""
    data = payload.model_dump_json().encode()
    if len(data) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"payload of {len(data)} bytes exceeds {MAX_PAYLOAD_BYTES}",
                           reason="too_large")
    return data

