"""Faults and scenarios: what goes wrong in the plant, and when.

A :class:`Scenario` is a list of faults, each with a time: ``at_s`` (seconds of virtual time
from the start of the run) or ``after_bring_up_s`` (seconds after the bring-up has settled:
the strategy has nothing left to do and no server is still starting). A fault may clear after
``duration_s``. Faults of the meter and Modbus kinds change only what a controller observes
(:class:`sim.Observation`); the others change the plant.

Scenarios come by name (:data:`NAMED_SCENARIOS`, ``rampguard dry-run --list-scenarios``) or
from a TOML file (:func:`load_scenario`), validated like hall configs: frozen pydantic models
with ``extra="forbid"``, and every mistake reported with its field path (:class:`ScenarioError`).
Scenarios combine (:func:`combine_scenarios`): ``"a+b"`` names the scenario whose faults are
those of ``a`` then those of ``b``, each at its own time (the fault campaign runs every pair,
:func:`scenario_pairs`).

Scenario file format (docs/simulator.md has the full reference)::

    name = "a-bad-afternoon"
    description = "feed A lost at full power, then a cooling unit"
    observe_s = 900            # keep running this long after the last fault (default 600)

    [plant]                    # optional: override PlantOptions estimates
    meter_noise_x = 0.01

    [[faults]]
    kind = "feed-loss"
    feed = "A"
    after_bring_up_s = 60

    [[faults]]
    kind = "cooling-unit-failure"
    zones = "Z1"
    units = 1
    at_s = 1200
    duration_s = 600
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from controller.config import parse_toml, short_repr
from controller.errors import ConfigIssue, RampguardError
from controller.model import format_loc
from sim.options import PlantOptions

MAX_SCENARIO_BYTES = 1024 * 1024
MAX_FAULTS = 1000

Glob = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:\-*?\[\]!]+$")]
Seconds = Annotated[float, Field(ge=0, le=30 * 24 * 3600, allow_inf_nan=False)]
PositiveSeconds = Annotated[float, Field(gt=0, le=30 * 24 * 3600, allow_inf_nan=False)]


class ScenarioError(RampguardError, ValueError):
    """A scenario that cannot be used: unknown name, unreadable file, invalid content (exit 2).

    ``issues`` lists each problem with its field path, as :class:`ConfigIssue`.
    """

    def __init__(self, source: str, issues: list[ConfigIssue]) -> None:
        self.source = source
        self.issues = tuple(issues)
        lines = "\n".join(f"  - {issue}" for issue in self.issues)
        super().__init__(f"{source}: invalid scenario ({len(self.issues)} problem(s)):\n{lines}")


class _Fault(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    at_s: Seconds | None = None
    after_bring_up_s: Seconds | None = None
    duration_s: PositiveSeconds | None = Field(
        default=None, description="the fault clears after this long (default: it stays)")

    @model_validator(mode="after")
    def _one_time(self) -> _Fault:
        if self.at_s is not None and self.after_bring_up_s is not None:
            raise ValueError("give at most one of at_s and after_bring_up_s")
        return self

    @property
    def relative(self) -> bool:
        """True when the fault's time counts from the end of the bring-up."""
        return self.after_bring_up_s is not None

    @property
    def offset_s(self) -> float:
        if self.after_bring_up_s is not None:
            return self.after_bring_up_s
        return self.at_s or 0.0


class FeedLoss(_Fault):
    """Every source of one feed is lost: its whole tree goes dead; A/B servers carry on on the
    other feed (within the PSU hold-up time), single-fed ones go off."""

    kind: Literal["feed-loss"]
    feed: Literal["A", "B"]


class BreakerTolerance(_Fault):
    """Breakers whose real trip curve sits at the fast end of the band: the plant uses the
    controller's guard parameters (earliest long-time, lowest magnetic threshold)."""

    kind: Literal["breaker-tolerance"]
    nodes: Glob = "*"
    end: Literal["fast"] = "fast"


class CoolingUnitFailure(_Fault):
    """Cooling units fail in the zones matching ``zones`` (default: the first zone)."""

    kind: Literal["cooling-unit-failure"]
    zones: Glob | None = None
    units: Annotated[int, Field(ge=1, le=1000)] | Literal["all"] = 1


class MeterStale(_Fault):
    """Meters keep answering with their last value and sample time (default: the first metered
    node)."""

    kind: Literal["meter-stale"]
    nodes: Glob | None = None


class MeterStuck(_Fault):
    """Meters that keep answering one frozen value with a fresh sample time (a stuck register:
    only an implausibly constant reading gives it away)."""

    kind: Literal["meter-stuck"]
    nodes: Glob | None = None


class MeterLying(_Fault):
    """Meters answer fresh readings scaled by ``factor`` (default 0.5: reading half the load)."""

    kind: Literal["meter-lying"]
    nodes: Glob | None = None
    factor: Annotated[float, Field(ge=0, le=10, allow_inf_nan=False)] = 0.5


class MeterDead(_Fault):
    """Meters stop answering."""

    kind: Literal["meter-dead"]
    nodes: Glob | None = None


class ModbusUnreachable(_Fault):
    """The Modbus devices serving the matching nodes (meters and outlet actuators) do not answer:
    readings are missing and, for a strategy that actuates through the transports, outlet
    commands to them fail."""

    kind: Literal["modbus-unreachable"]
    nodes: Glob | None = None


class AgentIgnoresCaps(_Fault):
    """Node agents that acknowledge caps but do not apply them: the GPUs run at their maximum.
    ``fraction`` of the matching servers, chosen with the run's seed."""

    kind: Literal["agent-ignores-caps"]
    servers: Glob = "*"
    fraction: Annotated[float, Field(gt=0, le=1)] = 0.1


class BootOverdraw(_Fault):
    """Servers whose POST and OS boot draw ``factor`` times what their model says."""

    kind: Literal["boot-overdraw"]
    servers: Glob = "*"
    fraction: Annotated[float, Field(gt=0, le=1)] = 1.0
    factor: Annotated[float, Field(gt=1, le=5, allow_inf_nan=False)] = 1.3


class WorkloadStorm(_Fault):
    """A synchronous job restart: every working GPU drops to idle for ``idle_s``, then all of
    them step to their cap in the same instant."""

    kind: Literal["workload-storm"]
    servers: Glob = "*"
    idle_s: PositiveSeconds = 30.0


Fault = Annotated[
    FeedLoss | BreakerTolerance | CoolingUnitFailure | MeterStale | MeterStuck | MeterLying
    | MeterDead
    | ModbusUnreachable | AgentIgnoresCaps | BootOverdraw | WorkloadStorm,
    Field(discriminator="kind"),
]

FAULT_KINDS = ("feed-loss", "breaker-tolerance", "cooling-unit-failure", "meter-stale",
               "meter-stuck", "meter-lying", "meter-dead", "modbus-unreachable",
               "agent-ignores-caps", "boot-overdraw", "workload-storm")
OBSERVATION_FAULTS = frozenset({"meter-stale", "meter-stuck", "meter-lying", "meter-dead",
                                "modbus-unreachable"})


class Scenario(BaseModel):
    """Faults with their times, the window to observe after them, and plant overrides."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    name: Annotated[str, Field(min_length=1, max_length=250, pattern=r"^[A-Za-z0-9_.+\-]+$")]
    description: Annotated[str, Field(max_length=2000)] = ""
    survivable: bool | None = Field(
        default=None, description="whether a correct controller can keep the plant safe")
    observe_s: Annotated[float, Field(ge=0, le=7 * 24 * 3600, allow_inf_nan=False)] = 600.0
    plant: PlantOptions = Field(default_factory=PlantOptions)
    faults: Annotated[list[Fault], Field(max_length=MAX_FAULTS)] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class NamedScenario:
    """A named scenario and whether a correct controller survives it: ``True``, ``False``, or
    ``None`` when it depends on the hall (``workload-storm``: the dry run decides it per hall,
    :mod:`controller.storm`)."""

    scenario: Scenario
    survivable: bool | None

    @property
    def word(self) -> str:
        if self.survivable is None:
            return "depends"
        return "survivable" if self.survivable else "unsurvivable"


def _named(name: str, survivable: bool | None, description: str, *faults: dict[str, Any]) -> \
        tuple[str, NamedScenario]:
    scenario = Scenario.model_validate({"name": name, "description": description,
                                        "survivable": survivable, "faults": list(faults)})
    return name, NamedScenario(scenario, survivable)


#: The scenarios of DESIGN.md, by name, in the order ``--list-scenarios`` prints them.
NAMED_SCENARIOS: dict[str, NamedScenario] = dict([
    _named("feed-a-loss", True, "feed A lost 60 s after the bring-up settles; B carries all",
           {"kind": "feed-loss", "feed": "A", "after_bring_up_s": 60}),
    _named("feed-b-loss", True, "feed B lost 60 s after the bring-up settles; A carries all",
           {"kind": "feed-loss", "feed": "B", "after_bring_up_s": 60}),
    _named("cooling-unit-loss", True,
           "one cooling unit of the first zone fails 60 s after the bring-up settles",
           {"kind": "cooling-unit-failure", "units": 1, "after_bring_up_s": 60}),
    _named("cooling-total-loss", False,
           "every cooling unit of every zone fails 60 s after the bring-up settles",
           {"kind": "cooling-unit-failure", "zones": "*", "units": "all",
            "after_bring_up_s": 60}),
    _named("meter-stale", True, "the first metered node's meter freezes from the start",
           {"kind": "meter-stale", "at_s": 0}),
    _named("meter-lying", True, "the first metered node's meter reads half the load",
           {"kind": "meter-lying", "factor": 0.5, "at_s": 0}),
    _named("meter-dead", True, "the first metered node's meter stops answering",
           {"kind": "meter-dead", "at_s": 0}),
    _named("modbus-unreachable", True,
           "the Modbus device of the first metered node stops answering",
           {"kind": "modbus-unreachable", "at_s": 0}),
    _named("agent-ignores-caps", True, "10 % of the node agents ignore GPU caps",
           {"kind": "agent-ignores-caps", "fraction": 0.1, "at_s": 0}),
    _named("boot-overdraw", True, "every server's POST and boot draw 1.3× their model",
           {"kind": "boot-overdraw", "factor": 1.3, "at_s": 0}),
    _named("workload-storm", None,
           "60 s after the bring-up every GPU idles for 30 s, then all step to their cap at "
           "once; survivable only where the sources' and UPSs' step and ramp limits fit the "
           "swing (rampguard validate tells per hall)",
           {"kind": "workload-storm", "idle_s": 30, "after_bring_up_s": 60}),
    _named("breaker-fast-tolerance", True,
           "every breaker trips at the fast end of its tolerance band",
           {"kind": "breaker-tolerance", "nodes": "*", "at_s": 0}),
])


def list_scenarios() -> list[str]:
    """One line per named scenario: name, 'survivable', 'unsurvivable' or 'depends' (on the
    hall), description."""
    width = max(len(name) for name in NAMED_SCENARIOS)
    return [f"{name:<{width}}  {entry.word:<12}  {entry.scenario.description}"
            for name, entry in NAMED_SCENARIOS.items()]


def combine_scenarios(*scenarios: Scenario) -> Scenario:
    """One scenario with the faults of all of ``scenarios``, in order, each at its own time.

    Name ``"a+b"``; description the parts' joined; survivable when every part is (unsurvivable
    when one is not, else unknown); ``observe_s`` the longest; plant overrides merged (the same
    estimate overridden to two different values raises :class:`ScenarioError`). At most
    :data:`MAX_FAULTS` faults in all.
    """
    if not scenarios:
        raise ValueError("combine_scenarios needs at least one scenario")
    name = "+".join(s.name for s in scenarios)
    plant: dict[str, Any] = {}
    for s in scenarios:
        for key, value in s.plant.model_dump(exclude_unset=True).items():
            if key in plant and plant[key] != value:
                raise ScenarioError(name, [ConfigIssue(
                    f"plant.{key}", f"the scenarios set it to {plant[key]!r} and {value!r}")])
            plant[key] = value
    flags = [s.survivable for s in scenarios]
    survivable = False if False in flags else (None if None in flags else True)
    faults = [f for s in scenarios for f in s.faults]
    if len(faults) > MAX_FAULTS:
        raise ScenarioError(name, [ConfigIssue("faults", f"more than {MAX_FAULTS} faults")])
    try:
        return Scenario(name=name, survivable=survivable,
                        description="; ".join(s.description or s.name for s in scenarios)[:2000],
                        observe_s=max(s.observe_s for s in scenarios),
                        plant=PlantOptions.model_validate(plant), faults=faults)
    except ValidationError as exc:
        raise ScenarioError(name, _issues(exc)) from None


def scenario_pairs(names: list[str] | None = None) -> list[Scenario]:
    """Every unordered pair of distinct named scenarios (of ``names``, default all of
    :data:`NAMED_SCENARIOS`, in their order): ``"a+b"`` with ``a`` listed before ``b``."""
    names = list(NAMED_SCENARIOS) if names is None else names
    return [combine_scenarios(NAMED_SCENARIOS[a].scenario, NAMED_SCENARIOS[b].scenario)
            for i, a in enumerate(names) for b in names[i + 1:]]


def resolve_scenario(spec: str | None) -> Scenario:
    """A named scenario, named scenarios joined by ``+`` (:func:`combine_scenarios`), or one
    loaded from a TOML file; ``None``: no faults."""
    if spec is None:
        return Scenario(name="none", description="no faults", survivable=True)
    if spec in NAMED_SCENARIOS:
        return NAMED_SCENARIOS[spec].scenario
    parts = spec.split("+")
    if len(parts) > 1 and all(part in NAMED_SCENARIOS for part in parts):
        return combine_scenarios(*(NAMED_SCENARIOS[part].scenario for part in parts))
    looks_like_file = spec.endswith(".toml") or "/" in spec or Path(spec).exists()
    if not looks_like_file:
        raise ScenarioError(spec, [ConfigIssue("", "unknown scenario; expected a file or one of: "
                                               + ", ".join(NAMED_SCENARIOS))])
    return load_scenario(spec)


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario TOML file; raise :class:`ScenarioError`."""
    source = str(path)
    try:
        with Path(path).open("rb") as handle:
            data = handle.read(MAX_SCENARIO_BYTES + 1)
    except FileNotFoundError:
        raise ScenarioError(source, [ConfigIssue("", "file not found")]) from None
    except IsADirectoryError:
        raise ScenarioError(source, [ConfigIssue("", "is a directory, expected a TOML file")]) \
            from None
    except OSError as exc:
        raise ScenarioError(source, [ConfigIssue("", f"cannot read: {exc.strerror or exc}")]) \
            from None
    if len(data) > MAX_SCENARIO_BYTES:
        raise ScenarioError(source, [ConfigIssue("", f"larger than {MAX_SCENARIO_BYTES} bytes")])
    return loads_scenario(data, source)


def loads_scenario(data: bytes | str, source: str = "<scenario>") -> Scenario:
    """Validate a scenario given as TOML text."""
    if isinstance(data, bytes):
        if b"\x00" in data:
            raise ScenarioError(source, [ConfigIssue("", "binary data (NUL bytes), expected TOML")])
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ScenarioError(source, [ConfigIssue(
                "", f"not UTF-8 text (byte {exc.start}), expected TOML")]) from None
    else:
        text = data
    if not text.strip():
        raise ScenarioError(source, [ConfigIssue("", "empty file, expected a TOML scenario")])
    raw, issue = parse_toml(text, deep="nested too deeply")
    if issue is not None:
        raise ScenarioError(source, [issue])
    try:
        return Scenario.model_validate(raw)
    except ValidationError as exc:
        raise ScenarioError(source, _issues(exc)) from None
    except RecursionError:
        raise ScenarioError(source, [ConfigIssue("", "nested too deeply")]) from None


def _issues(exc: ValidationError) -> list[ConfigIssue]:
    out: list[ConfigIssue] = []
    seen: set[tuple[str, str]] = set()
    for err in exc.errors(include_url=False):
        loc = [part for part in err["loc"]
               if not (isinstance(part, str) and (part in FAULT_KINDS or "[" in part))]
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key (not part of the scenario schema)"
        elif err["type"] == "missing":
            message = "required field is missing"
        elif err["type"] == "union_tag_invalid":
            message = "unknown fault kind; expected one of: " + ", ".join(FAULT_KINDS)
        elif "input" in err:
            shown = short_repr(err["input"])
            if shown is not None and not isinstance(err["input"], dict):
                message = f"{message} (got {shown})"
        key = (format_loc(loc), message)
        if key not in seen:
            seen.add(key)
            out.append(ConfigIssue(*key))
    return out
