"""The hall model: frozen pydantic models for everything a hall config describes.

A config describes the electrical tree (sources, UPSs, switchboards, panels, branch breakers as
explicit nodes; rack PDUs with banks and outlets generated from rack templates), the servers that
plug into it, the cooling zones, the bindings of meters, outlet actuators and node agents to the
tree, and the controller's settings. Racks and upstream nodes carry a ``count`` so that a
32,768-GPU hall fits in a few hundred lines.

Every quantity carries its unit in its name (``rating_a``, ``v_ll_v``, ``ramp_limit_kw_per_s``).
Units are converted once, when the topology compiler turns this model into flat arrays (kW to W,
kVA to A); nothing downstream converts again.

This module checks what one model can check about itself (ranges, exactly-one-of fields) and, in
:class:`HallConfig`'s after-validator, the cross-references that are visible before expansion
(parents, templates, models, zones, duplicate ids, cycles). Checks that need the expanded tree
(generated ids, outlet placement) live in :mod:`controller.topology`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

Phase = Literal["L1", "L2", "L3"]
Connection = Literal["L1", "L2", "L3", "L1-L2", "L2-L3", "L3-L1"]
Feed = Literal["A", "B"]
UpstreamKind = Literal["source", "ups", "switchboard", "panel", "branch"]

# Physical quantities are bounded far above any real hall (1e9 A, W, s, ...) so that arithmetic on
# them can never overflow to infinity.
MAX_QUANTITY = 1e9
PositiveFloat = Annotated[float, Field(gt=0, le=MAX_QUANTITY, allow_inf_nan=False)]
NonNegFloat = Annotated[float, Field(ge=0, le=MAX_QUANTITY, allow_inf_nan=False)]
Fraction = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
Identifier = Annotated[str, Field(min_length=1, max_length=120, pattern=r"^[A-Za-z0-9_.:{}\-]+$")]

_SQRT3 = math.sqrt(3.0)


class _Frozen(BaseModel):
    # strict: TOML has real types, so `rating_a = true` or `rating_a = "63"` is a mistake to
    # report, not a value to coerce (integers are still accepted where a float is expected).
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True, strict=True)


class IdRange(_Frozen):
    """A run of ids written as a pattern: ``{pattern = "UPS-A{i:02d}", start = 1, count = 16}``."""

    pattern: PatternId
    start: Annotated[int, Field(ge=0, le=1_000_000)] = 1
    count: Annotated[int, Field(ge=1, le=100_000)]

    @model_validator(mode="after")
    def _formats(self) -> IdRange:
        if "{" not in self.pattern:
            raise PydanticCustomError("pattern", "pattern needs an {i} field, e.g. 'P{i:02d}'")
        _check_pattern(self.pattern, self.start, self.count)
        return self

    def ids(self) -> list[str]:
        return [self.pattern.format(i=i) for i in range(self.start, self.start + self.count)]


ParentRef = Identifier | list[Identifier] | IdRange


def parent_list(ref: ParentRef | None) -> list[str]:
    """The parent ids a reference names, in order."""
    if ref is None:
        return []
    if isinstance(ref, str):
        return [ref]
    if isinstance(ref, IdRange):
        return ref.ids()
    return list(ref)


def block_parent(parents: list[str], k: int, count: int) -> str:
    """The parent of the ``k``-th of ``count`` children spread over ``parents`` in equal blocks."""
    return parents[k * len(parents) // count]


def _range_s(value: tuple[float, float]) -> tuple[float, float]:
    low, high = value
    if low > high:
        raise ValueError(f"range must be [low, high] with low <= high, got [{low}, {high}]")
    return value


def _list_to_tuple(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value


DurationRange = Annotated[
    tuple[NonNegFloat, NonNegFloat],
    BeforeValidator(_list_to_tuple),
    AfterValidator(_range_s),
    Field(description="[min, max] in s"),
]


# --------------------------------------------------------------------------------------------
# Breaker trip models
# --------------------------------------------------------------------------------------------
class CurveBreaker(_Frozen):
    """A miniature breaker (IEC 60898-1) with a B, C or D curve.

    The thermal element follows the thermal-image law with ``thermal_k`` and ``thermal_tau_s``
    (defaults k = 1.30, τ = 60 s for In <= 32 A, 120 s above); the magnetic element trips at once
    at ``magnetic_x`` × In (defaults: band middles B 4, C 7.5, D 15).
    """

    kind: Literal["curve"] = "curve"
    curve: Literal["B", "C", "D"]
    magnetic_x: PositiveFloat | None = None
    thermal_k: Annotated[float, Field(gt=1.0, le=2.0)] | None = None
    thermal_tau_s: PositiveFloat | None = None


class ElectronicBreaker(_Frozen):
    """An MCCB/ACB with an electronic LSI trip unit.

    ``ir_fraction`` sets the long-time pickup Ir as a fraction of the frame rating In; ``tr_s`` is
    the long-time band, labelled in seconds at 6·Ir (0.5 to 24 s). Short-time pickup
    ``isd_x`` × Ir after ``tsd_s``; instantaneous at ``ii_x`` × In. ``tolerance`` picks which end
    of the published long-time band the model uses (the controller assumes the earliest).
    """

    kind: Literal["electronic"] = "electronic"
    ir_fraction: Annotated[float, Field(ge=0.4, le=1.0)] = 1.0
    tr_s: Annotated[float, Field(ge=0.5, le=24.0)] = 12.0
    isd_x: Annotated[float, Field(ge=1.5, le=10.0)] | None = 6.0
    tsd_s: Annotated[float, Field(ge=0.0, le=0.5)] = 0.2
    ii_x: Annotated[float, Field(ge=2.0, le=15.0)] | None = 12.0
    tolerance: Literal["earliest", "latest"] = "earliest"


TripModel = Annotated[CurveBreaker | ElectronicBreaker, Field(discriminator="kind")]


# --------------------------------------------------------------------------------------------
# Upstream electrical nodes
# --------------------------------------------------------------------------------------------
class _Rated(_Frozen):
    """Shared rating fields: exactly one of ``rating_a`` and ``rating_kva``."""

    v_ll_v: Annotated[float, Field(gt=0, le=50_000, allow_inf_nan=False)] = Field(
        description="line-to-line system voltage at the node"
    )
    phases: Literal[1, 3] = 3
    phase: Phase | None = Field(default=None, description="the line a single-phase node sits on")
    rating_a: PositiveFloat | None = None
    rating_kva: PositiveFloat | None = None
    continuous_fraction: Fraction | None = Field(
        default=None, description="continuous limit as a fraction of the rating (default 0.80)"
    )
    exceeds_parent_ok: bool = Field(
        default=False, description="set when the node is deliberately rated above its parent"
    )

    @model_validator(mode="after")
    def _one_rating(self) -> _Rated:
        if (self.rating_a is None) == (self.rating_kva is None):
            raise PydanticCustomError(
                "rating", "give exactly one of rating_a and rating_kva (both positive numbers)"
            )
        if self.phases == 1 and self.phase is None:
            raise PydanticCustomError("phase", "a single-phase node needs phase = L1, L2 or L3")
        if self.phases == 3 and self.phase is not None:
            raise PydanticCustomError("phase", "phase is only for single-phase nodes (phases = 1)")
        return self

    def rating_per_pole_a(self) -> float:
        """Rated current per pole, converting a kVA rating at the node's voltage."""
        if self.rating_a is not None:
            return self.rating_a
        assert self.rating_kva is not None
        if self.phases == 3:
            return self.rating_kva * 1000.0 / (_SQRT3 * self.v_ll_v)
        return self.rating_kva * 1000.0 / (self.v_ll_v / _SQRT3)


class NodeGroup(_Rated):
    """One upstream node, or ``count`` alike ones.

    With ``count`` > 1 the ``id`` is a pattern formatted with the 1-based index ``i``
    (``"FPDU-A{i:02d}"``), and ``parent`` may be a list: the children are spread over the
    parents in equal consecutive blocks.
    """

    id: PatternId
    kind: UpstreamKind
    count: Annotated[int, Field(ge=1, le=100_000)] = 1
    parent: ParentRef | None = None
    feed: Feed | None = Field(default=None, description="for sources: the feed this source is")
    source_type: Literal["utility", "generator"] | None = None
    breaker: TripModel | None = None
    ramp_limit_kw_per_s: PositiveFloat | None = None
    max_step_kw: PositiveFloat | None = None

    @model_validator(mode="after")
    def _kind_rules(self) -> NodeGroup:
        if self.kind == "source":
            if self.parent is not None:
                raise PydanticCustomError("source", "a source has no parent")
            if self.feed is None:
                raise PydanticCustomError("source", "a source needs feed = 'A' or 'B'")
        else:
            if self.parent is None:
                raise PydanticCustomError("parent", f"a {self.kind} needs a parent")
            if self.feed is not None or self.source_type is not None:
                raise PydanticCustomError("feed", "feed and source_type are only for sources")
        if self.kind not in ("source", "ups") and (
            self.ramp_limit_kw_per_s is not None or self.max_step_kw is not None
        ):
            raise PydanticCustomError(
                "ramp", "ramp_limit_kw_per_s and max_step_kw apply to sources and UPSs only"
            )
        if self.count > 1 and "{" not in self.id:
            raise PydanticCustomError(
                "pattern", "with count > 1 the id must be a pattern such as 'PDU-{i:02d}'"
            )
        _check_pattern(self.id, 1, self.count)
        if len(parent_list(self.parent)) > self.count:
            raise PydanticCustomError(
                "parents", "more parents than nodes: each parent needs at least one child"
            )
        return self

    def expanded_ids(self) -> list[str]:
        """The ids this group stands for, in order."""
        return expand_pattern(self.id, self.count)


_PATTERN_FIELD = re.compile(r"\{i(?::0?[1-9]?d)?\}")


def _check_pattern(pattern: str, first: int = 1, count: int = 1) -> None:
    """An id pattern may hold only ``{i}`` fields, optionally ``{i:Nd}``/``{i:0Nd}`` with N <= 9,
    and must give ids that are valid identifiers."""
    _check_pattern_syntax(pattern)
    for i in (first, first + count - 1):
        formatted = pattern.format(i=i)
        if len(formatted) > 120 or not _ID.fullmatch(formatted):
            raise PydanticCustomError(
                "pattern", "id pattern gives {id!r}, not an id of up to 120 letters, digits, "
                "'_', '.', ':' or '-'", {"id": formatted[:130]},
            )


_ID = re.compile(r"[A-Za-z0-9_.:\-]+")


def _check_pattern_syntax(pattern: str) -> str:
    rest = _PATTERN_FIELD.sub("", pattern)
    if "{" in rest or "}" in rest:
        raise PydanticCustomError(
            "pattern", "id pattern may only contain fields like {example}",
            {"example": "{i} or {i:03d} (the index i, width up to 9)"},
        )
    return pattern


PatternId = Annotated[Identifier, AfterValidator(_check_pattern_syntax)]


def expand_pattern(pattern: str, count: int) -> list[str]:
    """Format ``pattern`` with ``i`` = 1..count (a plain id when count is 1 and no braces)."""
    if "{" not in pattern:
        return [pattern]
    return [pattern.format(i=i) for i in range(1, count + 1)]


# --------------------------------------------------------------------------------------------
# Rack PDUs, servers, rack templates
# --------------------------------------------------------------------------------------------
class Bank(_Frozen):
    """An outlet bank of a rack PDU, on one line (L-N) or two lines (L-L), with its breaker."""

    id: Identifier
    connection: Connection
    rating_a: PositiveFloat
    breaker: TripModel | None = Field(default_factory=lambda: CurveBreaker(curve="C"))
    outlets: Annotated[int, Field(ge=1, le=96)]
    outlet_rating_a: PositiveFloat = 16.0
    exceeds_parent_ok: bool = False


class RackPduModel(_Frozen):
    """A switched, metered rack PDU: inlet rating, the lines it carries, and its banks."""

    id: Identifier
    v_ll_v: Annotated[float, Field(gt=0, le=1_000, allow_inf_nan=False)]
    lines: list[Phase] = Field(min_length=1, max_length=3)
    inlet_rating_a: PositiveFloat
    continuous_fraction: Fraction | None = None
    banks: list[Bank] = Field(min_length=1, max_length=24)
    inrush_guard_s: NonNegFloat = Field(
        default=0.1, description="minimum time between two outlet switch-ons under one breaker"
    )
    switched: bool = True

    @field_validator("lines")
    @classmethod
    def _distinct_lines(cls, lines: list[str]) -> list[str]:
        if len(set(lines)) != len(lines):
            raise ValueError("each line may be listed once")
        return lines


class ServerModel(_Frozen):
    """The power profile of one server type (PHYSICS.md §3)."""

    id: Identifier
    psus: Annotated[int, Field(ge=1, le=16)]
    psu_rating_w: PositiveFloat
    psus_to_boot: Annotated[int, Field(ge=1, le=16)] = 1
    psus_to_carry: Annotated[int, Field(ge=1, le=16)] | None = Field(
        default=None, description="PSUs that must be alive to carry full power (default all)"
    )
    power_factor: Annotated[float, Field(gt=0.5, le=1.0)] = 0.95
    inrush_peak_a: PositiveFloat = 65.0
    inrush_duration_s: Annotated[float, Field(gt=0, le=1.0)] = 0.01
    bmc_ready_s: NonNegFloat = 20.0
    standby_w: NonNegFloat
    post_w: NonNegFloat
    post_duration_s: DurationRange = (60.0, 120.0)
    boot_w: NonNegFloat
    boot_duration_s: DurationRange = (120.0, 600.0)
    idle_w: NonNegFloat
    gpus: Annotated[int, Field(ge=0, le=64)]
    gpu_idle_w: NonNegFloat = 0.0
    gpu_min_cap_w: NonNegFloat = 0.0
    gpu_max_w: NonNegFloat = 0.0
    other_max_w: NonNegFloat = Field(description="CPU, memory, fans, NICs at their maximum")

    @property
    def max_w(self) -> float:
        """Worst-case input power: every GPU at its maximum plus everything else at maximum."""
        return self.other_max_w + self.gpus * self.gpu_max_w

    @model_validator(mode="after")
    def _consistent(self) -> ServerModel:
        if self.gpus > 0 and not (self.gpu_idle_w <= self.gpu_max_w and
                                  self.gpu_min_cap_w <= self.gpu_max_w):
            raise PydanticCustomError(
                "gpu_power", "need gpu_idle_w <= gpu_max_w and gpu_min_cap_w <= gpu_max_w"
            )
        if self.gpus > 0 and self.gpu_max_w <= 0:
            raise PydanticCustomError("gpu_power", "a server with GPUs needs gpu_max_w > 0")
        if self.psus_to_boot > self.psus:
            raise PydanticCustomError("psus", "psus_to_boot cannot exceed psus")
        carry = self.psus_to_carry or self.psus
        if carry > self.psus:
            raise PydanticCustomError("psus", "psus_to_carry cannot exceed psus")
        if carry * self.psu_rating_w < self.max_w:
            raise PydanticCustomError(
                "psus",
                "psus_to_carry × psu_rating_w = {cap} W cannot carry the maximum input {max} W",
                {"cap": carry * self.psu_rating_w, "max": self.max_w},
            )
        for name in ("standby_w", "post_w", "boot_w", "idle_w"):
            if getattr(self, name) > self.max_w:
                raise PydanticCustomError(
                    "power", "{name} exceeds the maximum input {max} W",
                    {"name": name, "max": self.max_w},
                )
        return self


class BranchCircuit(_Frozen):
    """The branch breaker (in a panel or RPP) that feeds one rack PDU."""

    rating_a: PositiveFloat
    breaker: TripModel = Field(default_factory=lambda: CurveBreaker(curve="C"))
    continuous_fraction: Fraction | None = None
    exceeds_parent_ok: bool = False


class PduSlot(_Frozen):
    """A rack PDU position in a rack template, with the branch circuit that feeds it."""

    slot: Identifier
    model: Identifier
    feed: Feed
    branch: BranchCircuit | None = None


class ServerSlot(_Frozen):
    """``count`` servers of one model in a rack, and how their PSUs plug in.

    ``placement = "spread"`` deals PSUs over the PDU slots in turn (alternating feeds), and within a
    PDU over its banks in turn, taking the next free outlet. ``psu_outlets`` instead names every
    PSU's outlet as ``"SLOT/BANK/N"`` (N from 1): one list per server, one entry per PSU.
    """

    model: Identifier
    count: Annotated[int, Field(ge=1, le=64)] = 1
    placement: Literal["spread", "explicit"] = "spread"
    psu_outlets: list[list[str]] | None = None
    priority: int | None = Field(default=None, ge=-1000, le=1000)

    @model_validator(mode="after")
    def _placement(self) -> ServerSlot:
        if self.placement == "explicit":
            if self.psu_outlets is None:
                raise PydanticCustomError("placement", "explicit placement needs psu_outlets")
            if len(self.psu_outlets) != self.count:
                raise PydanticCustomError(
                    "placement", "psu_outlets needs one list per server ({count})",
                    {"count": self.count},
                )
        elif self.psu_outlets is not None:
            raise PydanticCustomError("placement", "psu_outlets needs placement = 'explicit'")
        return self


class RackTemplate(_Frozen):
    id: Identifier
    pdus: list[PduSlot] = Field(min_length=1, max_length=8)
    servers: list[ServerSlot] = Field(min_length=1, max_length=64)


class RackGroup(_Frozen):
    """``count`` racks of one template. ``id`` is a pattern with ``i`` when count > 1.

    ``parents`` maps each PDU slot of the template to the upstream node (or list of nodes, spread
    in equal consecutive blocks) its branch circuit hangs from.
    """

    id: PatternId
    template: Identifier
    count: Annotated[int, Field(ge=1, le=100_000)] = 1
    zone: Identifier
    parents: dict[Identifier, ParentRef]
    priority: int = Field(default=0, ge=-1000, le=1000)

    @model_validator(mode="after")
    def _pattern(self) -> RackGroup:
        if self.count > 1 and "{" not in self.id:
            raise PydanticCustomError(
                "pattern", "with count > 1 the id must be a pattern such as 'R{i:03d}'"
            )
        _check_pattern(self.id, 1, self.count)
        for slot, parent in self.parents.items():
            if not 1 <= len(parent_list(parent)) <= self.count:
                raise PydanticCustomError(
                    "parents", "parents of slot {slot}: between 1 and count entries",
                    {"slot": slot},
                )
        return self

    def expanded_ids(self) -> list[str]:
        return expand_pattern(self.id, self.count)


# --------------------------------------------------------------------------------------------
# Cooling
# --------------------------------------------------------------------------------------------
class CoolingZone(_Frozen):
    """A cooling zone: units of equal capacity (N+1 means one may fail), and the two-node model."""

    id: Identifier
    units: Annotated[int, Field(ge=1, le=1000)]
    unit_capacity_kw: PositiveFloat
    response_tau_s: Annotated[float, Field(gt=0, le=3600)] = 120.0
    air_heat_capacity_kj_per_k: PositiveFloat = Field(
        description="C_air of the zone's air volume (about 4.8 MJ/K for 1,000 m² × 4 m)"
    )
    mass_heat_capacity_kj_per_k_per_kw: PositiveFloat = Field(
        default=8.0, description="equipment thermal mass per kW of IT (6 to 10 kJ/K per kW)"
    )
    mass_time_constant_s: PositiveFloat = Field(
        default=240.0, description="C_mass / G (3 to 5 min)"
    )
    supply_setpoint_c: Annotated[float, Field(ge=5, le=35)] = 20.0
    inlet_hold_c: Annotated[float, Field(ge=10, le=45)] = 27.0
    inlet_recommended_c: Annotated[float, Field(ge=10, le=45)] = 27.0
    inlet_allowable_c: Annotated[float, Field(ge=10, le=45)] = 32.0

    @model_validator(mode="after")
    def _ordered(self) -> CoolingZone:
        if not self.supply_setpoint_c < self.inlet_recommended_c <= self.inlet_allowable_c:
            raise PydanticCustomError(
                "inlet", "need supply_setpoint_c < inlet_recommended_c <= inlet_allowable_c"
            )
        if self.inlet_hold_c > self.inlet_allowable_c:
            raise PydanticCustomError("inlet", "inlet_hold_c must not exceed inlet_allowable_c")
        return self

    @property
    def capacity_kw(self) -> float:
        return self.units * self.unit_capacity_kw

    @property
    def capacity_n_minus_1_kw(self) -> float:
        """Capacity left after the loss of one unit."""
        return (self.units - 1) * self.unit_capacity_kw


# --------------------------------------------------------------------------------------------
# Bindings
# --------------------------------------------------------------------------------------------
class RegisterField(_Frozen):
    """One quantity in a generic Modbus register profile."""

    quantity: Annotated[str, Field(pattern=r"^[a-z0-9_]+$")]
    address: Annotated[int, Field(ge=0, le=65535)]
    type: Literal["int16", "uint16", "int32", "uint32", "float32"]
    word_order: Literal["big", "little"] = "big"
    scale: Annotated[float, Field(allow_inf_nan=False)] = 1.0
    unit: Literal["A", "V", "W", "kW", "VA", "kVA", "Wh", "kWh", "C", "Hz", "1"]

    @field_validator("scale")
    @classmethod
    def _nonzero(cls, scale: float) -> float:
        if scale == 0:
            raise ValueError("scale must not be zero")
        return scale


class RegisterProfile(_Frozen):
    id: Identifier
    fields: list[RegisterField] = Field(min_length=1)


class ModbusAddressing(_Frozen):
    """Where the Modbus devices of a binding live: one device per node, unit ids dealt in order.

    Devices take unit ids ``unit_id_start``, ``unit_id_start + 1``, ... on ``port``; after
    ``units_per_port`` devices the next port is used.
    """

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 502
    unit_id_start: Annotated[int, Field(ge=1, le=247)] = 1
    units_per_port: Annotated[int, Field(ge=1, le=247)] = 247
    profile: Identifier = "rampguard-pdu-v1"
    timeout_s: Annotated[float, Field(gt=0, le=30)] = 0.5

    @model_validator(mode="after")
    def _fits(self) -> ModbusAddressing:
        if self.unit_id_start + self.units_per_port - 1 > 247:
            raise PydanticCustomError(
                "unit_id", "unit_id_start + units_per_port - 1 must not exceed 247"
            )
        return self


class MeterBinding(_Frozen):
    """Meters for the nodes whose ids match ``nodes`` (an exact id or a glob such as ``R*-A``)."""

    nodes: Annotated[str, Field(min_length=1, max_length=200)]
    transport: Literal["modbus", "mqtt"]
    modbus: ModbusAddressing | None = None
    topic: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        default=None, description="MQTT topic with a {node} placeholder"
    )
    update_period_s: Annotated[float, Field(gt=0, le=60)] = 1.0

    @model_validator(mode="after")
    def _transport(self) -> MeterBinding:
        _check_transport(self.transport, self.modbus, self.topic, "{node}")
        return self


class ActuatorBinding(_Frozen):
    """Switched outlets of the rack PDUs matching ``pdus``: Modbus coils, outlet N = coil N-1."""

    pdus: Annotated[str, Field(min_length=1, max_length=200)]
    modbus: ModbusAddressing


class AgentBinding(_Frozen):
    """Node agents that cap the GPUs of the servers matching ``servers``, over MQTT."""

    servers: Annotated[str, Field(min_length=1, max_length=200)] = "*"
    topic_prefix: Annotated[str, Field(min_length=1, max_length=200)] = "rampguard/agents/{server}"

    @field_validator("topic_prefix")
    @classmethod
    def _placeholder(cls, topic: str) -> str:
        if "{server}" not in topic:
            raise ValueError("topic_prefix needs a {server} placeholder")
        if "+" in topic or "#" in topic:
            raise ValueError("topic_prefix must not contain MQTT wildcards")
        return topic


class Bindings(_Frozen):
    meters: list[MeterBinding] = Field(default_factory=list)
    actuators: list[ActuatorBinding] = Field(default_factory=list)
    agents: list[AgentBinding] = Field(default_factory=list)


def _check_transport(transport: str, modbus: object, topic: str | None, placeholder: str) -> None:
    if transport == "modbus" and (modbus is None or topic is not None):
        raise PydanticCustomError("transport", "a modbus binding needs [modbus] and no topic")
    if transport == "mqtt":
        if topic is None or modbus is not None:
            raise PydanticCustomError("transport", "an mqtt binding needs topic and no [modbus]")
        if placeholder not in topic or "+" in topic or "#" in topic:
            raise PydanticCustomError(
                "topic", "topic needs a {placeholder} placeholder and no wildcards",
                {"placeholder": placeholder},
            )


# --------------------------------------------------------------------------------------------
# Controller settings
# --------------------------------------------------------------------------------------------
class SheddingPolicy(_Frozen):
    """Three bands against oscillation, as fractions of the continuous limit."""

    capping_threshold: Annotated[float, Field(gt=0.5, le=1.0)] = 0.98
    capping_target: Annotated[float, Field(gt=0.5, le=1.0)] = 0.96
    uncapping_threshold: Annotated[float, Field(gt=0.5, le=1.0)] = 0.90
    unthrottle_delay_s: DurationRange = (1.0, 10.0)
    unthrottle_step_fraction: Annotated[float, Field(gt=0, le=1)] = 0.1
    outlet_off: Literal["never", "lowest_priority", "any"] = "never"

    @model_validator(mode="after")
    def _bands(self) -> SheddingPolicy:
        if not self.uncapping_threshold < self.capping_target < self.capping_threshold:
            raise PydanticCustomError(
                "bands", "need uncapping_threshold < capping_target < capping_threshold"
            )
        return self


class ControllerSettings(_Frozen):
    tick_s: Annotated[float, Field(gt=0, le=10)] = 1.0
    meter_stale_s: Annotated[float, Field(gt=0, le=600)] = 3.0
    agent_stale_s: Annotated[float, Field(gt=0, le=600)] = 5.0
    admission_margin: Annotated[float, Field(ge=0, lt=0.5)] = 0.02
    magnetic_margin: Annotated[float, Field(gt=0, le=1)] = 0.5
    max_jump_fraction: Annotated[float, Field(gt=0)] = 0.5
    # a metered node whose reading stays untrusted this long moves the controller to SAFE
    telemetry_safe_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    # the least time between two re-plans (s); starting and resuming re-plan at once
    replan_min_s: Annotated[float, Field(ge=0, le=600)] = 5.0
    # POST power above the server model assumed until the meters have measured it (0.4: the
    # first servers are planned at 1.4x their model's POST draw; docs/controller.md)
    boot_power_margin: Annotated[float, Field(ge=0, le=2)] = 0.4
    fixed_delay_s: NonNegFloat = 2.0
    fixed_rate_per_min: PositiveFloat = 300.0
    shedding: SheddingPolicy = Field(default_factory=SheddingPolicy)


class Defaults(_Frozen):
    continuous_fraction: Fraction = 0.80


class HallInfo(_Frozen):
    name: Identifier
    description: str = ""


# --------------------------------------------------------------------------------------------
# The whole hall
# --------------------------------------------------------------------------------------------
class HallConfig(_Frozen):
    """A whole hall config, as read from TOML."""

    version: Literal[1] = 1
    hall: HallInfo
    defaults: Defaults = Field(default_factory=Defaults)
    nodes: list[NodeGroup] = Field(min_length=1)
    pdu_models: list[RackPduModel] = Field(min_length=1)
    server_models: list[ServerModel] = Field(min_length=1)
    rack_templates: list[RackTemplate] = Field(min_length=1)
    racks: list[RackGroup] = Field(min_length=1)
    zones: list[CoolingZone] = Field(min_length=1)
    register_profiles: list[RegisterProfile] = Field(default_factory=list)
    bindings: Bindings = Field(default_factory=Bindings)
    controller: ControllerSettings = Field(default_factory=ControllerSettings)

    @model_validator(mode="after")
    def _references(self) -> HallConfig:
        errors: list[InitErrorDetails] = []

        def bad(loc: tuple[str | int, ...], kind: str, msg: str, value: object) -> None:
            errors.append(
                InitErrorDetails(type=PydanticCustomError(kind, msg), loc=loc, input=value)
            )

        _check_unique(bad, "pdu_models", [m.id for m in self.pdu_models])
        _check_unique(bad, "server_models", [m.id for m in self.server_models])
        _check_unique(bad, "rack_templates", [t.id for t in self.rack_templates])
        _check_unique(bad, "zones", [z.id for z in self.zones])
        _check_unique(bad, "register_profiles", [p.id for p in self.register_profiles])
        pdu_models = {m.id: m for m in self.pdu_models}
        server_models = {m.id for m in self.server_models}
        templates = {t.id: t for t in self.rack_templates}
        zones = {z.id for z in self.zones}

        # Upstream nodes: unique ids, parents that exist, no cycle.
        node_kind: dict[str, str] = {}
        node_parent: dict[str, str | None] = {}
        node_loc: dict[str, tuple[str | int, ...]] = {}
        for g, group in enumerate(self.nodes):
            try:
                ids = group.expanded_ids()
            except (KeyError, IndexError, ValueError) as exc:
                bad(("nodes", g, "id"), "pattern", f"id pattern cannot be formatted ({exc})",
                    group.id)
                continue
            parents = parent_list(group.parent)
            for k, node_id in enumerate(ids):
                if node_id in node_kind:
                    bad(("nodes", g, "id"), "duplicate",
                        f"duplicate node id {node_id!r} (first at {format_loc(node_loc[node_id])})",
                        node_id)
                    continue
                node_kind[node_id] = group.kind
                node_parent[node_id] = block_parent(parents, k, len(ids)) if parents else None
                node_loc[node_id] = ("nodes", g)
        for g, group in enumerate(self.nodes):
            for p, parent in enumerate(parent_list(group.parent)):
                loc: tuple[str | int, ...] = ("nodes", g, "parent")
                if not isinstance(group.parent, str):
                    loc = (*loc, p)
                if parent not in node_kind:
                    bad(loc, "reference", f"parent {parent!r} is not a node id", parent)
                elif node_kind[parent] == "branch":
                    bad(loc, "reference", f"parent {parent!r} is a branch circuit: only rack "
                        "PDUs hang from branch circuits", parent)
        cycle = _find_cycle(node_parent)
        if cycle:
            bad(node_loc[cycle[0]] + ("parent",), "cycle",
                "the tree has a cycle: " + " -> ".join([*cycle, cycle[0]]), cycle[0])

        for t, template in enumerate(self.rack_templates):
            _check_unique(bad, f"rack_templates.{t}.pdus", [s.slot for s in template.pdus],
                          field="slot")
            for s, slot in enumerate(template.pdus):
                model = pdu_models.get(slot.model)
                if model is None:
                    bad(("rack_templates", t, "pdus", s, "model"), "reference",
                        f"pdu model {slot.model!r} is not defined in pdu_models", slot.model)
            for s, server in enumerate(template.servers):
                if server.model not in server_models:
                    bad(("rack_templates", t, "servers", s, "model"), "reference",
                        f"server model {server.model!r} is not defined in server_models",
                        server.model)
        for m, pdu_model in enumerate(self.pdu_models):
            _check_unique(bad, f"pdu_models.{m}.banks", [b.id for b in pdu_model.banks])
            for b, bank in enumerate(pdu_model.banks):
                lines = bank.connection.split("-")
                missing = [line for line in lines if line not in pdu_model.lines]
                if missing:
                    bad(("pdu_models", m, "banks", b, "connection"), "phase",
                        f"bank on {bank.connection} but the PDU carries only "
                        f"{', '.join(pdu_model.lines)} (missing {', '.join(missing)})",
                        bank.connection)

        for r, rack in enumerate(self.racks):
            rack_template = templates.get(rack.template)
            if rack_template is None:
                bad(("racks", r, "template"), "reference",
                    f"rack template {rack.template!r} is not defined", rack.template)
            if rack.zone not in zones:
                bad(("racks", r, "zone"), "reference",
                    f"cooling zone {rack.zone!r} is not defined in zones", rack.zone)
            if rack_template is not None:
                slots = {s.slot for s in rack_template.pdus}
                for slot_id in sorted(slots - set(rack.parents)):
                    bad(("racks", r, "parents"), "missing_parent",
                        f"no parent given for PDU slot {slot_id!r}", slot_id)
                for slot_id in sorted(set(rack.parents) - slots):
                    bad(("racks", r, "parents", slot_id), "reference",
                        f"template {rack_template.id!r} has no PDU slot {slot_id!r}", slot_id)
            for slot_id, rack_parent in rack.parents.items():
                for p, pid in enumerate(parent_list(rack_parent)):
                    ploc: tuple[str | int, ...] = ("racks", r, "parents", slot_id)
                    if not isinstance(rack_parent, str):
                        ploc = (*ploc, p)
                    if pid not in node_kind:
                        bad(ploc, "reference", f"parent {pid!r} is not a node id", pid)
                    elif node_kind[pid] == "source":
                        bad(ploc, "reference",
                            f"parent {pid!r} is a source: a rack PDU needs a panel, "
                            "switchboard, UPS or branch between", pid)
        if not any(group.kind == "source" for group in self.nodes):
            bad(("nodes",), "missing_source", "the tree needs at least one source", None)

        profiles = {p.id for p in self.register_profiles} | BUILTIN_REGISTER_PROFILES
        modbus_uses: list[tuple[str, int, ModbusAddressing | None]] = [
            ("meters", b, m.modbus) for b, m in enumerate(self.bindings.meters)
        ] + [("actuators", b, a.modbus) for b, a in enumerate(self.bindings.actuators)]
        for kind, b, modbus in modbus_uses:
            if modbus is not None and modbus.profile not in profiles:
                bad(("bindings", kind, b, "modbus", "profile"), "reference",
                    f"register profile {modbus.profile!r} is neither built in "
                    f"({', '.join(sorted(BUILTIN_REGISTER_PROFILES))}) nor defined in "
                    "register_profiles", modbus.profile)
        if errors:
            raise ValidationError.from_exception_data("HallConfig", errors)
        return self


BUILTIN_REGISTER_PROFILES = frozenset({"rampguard-pdu-v1", "rampguard-meter-v1"})


def _check_unique(bad, where: str, ids: Iterable[str], field: str = "id") -> None:  # type: ignore[no-untyped-def]
    seen: set[str] = set()
    loc_prefix: tuple[str | int, ...] = tuple(
        int(part) if part.isdigit() else part for part in where.split(".")
    )
    for k, item in enumerate(ids):
        if item in seen:
            bad((*loc_prefix, k, field), "duplicate", f"duplicate {field} {item!r}", item)
        seen.add(item)


def _find_cycle(parent: dict[str, str | None]) -> list[str] | None:
    """Return one cycle in the parent map (as a list of ids), or None."""
    state: dict[str, int] = {}
    for start in parent:
        path: list[str] = []
        node: str | None = start
        while node is not None and node in parent and state.get(node, 0) == 0:
            state[node] = 1
            path.append(node)
            node = parent[node]
        if node is not None and state.get(node) == 1 and node in path:
            return path[path.index(node):]
        for visited in path:
            state[visited] = 2
    return None


def format_loc(loc: Iterable[str | int]) -> str:
    """``("racks", 3, "zone")`` → ``racks[3].zone``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out

