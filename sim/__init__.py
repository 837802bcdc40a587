"""The simulated plant: servers, breakers, feeds, UPSs, cooling zones, meters and faults, in
virtual time.

Public API:

- :class:`Plant` — one hall's plant; ``step(dt_s)``, ``submit(actions)``,
  ``schedule_fault(fault, at_s)``, read-outs (``node_current_a()`` ...), ``observe()``;
- actions: :class:`SwitchOutlets`, :class:`SetGpuCaps`, :class:`SetWork`,
  :class:`ResetBreakers`, and :class:`ActionResult`;
- :class:`Observation` — what a controller sees; :class:`PlantOptions` — the estimates;
- faults and scenarios: :class:`Scenario`, :data:`NAMED_SCENARIOS`, :func:`resolve_scenario`,
  :func:`load_scenario`, :func:`loads_scenario`, :func:`list_scenarios`, :class:`ScenarioError`;
- records: :class:`Trip`, :class:`Violation`, :class:`PlantEvent`.

sim imports only the hall model, the topology, the schedule and the kernels of rampguard
(and the error root); the controller imports sim, never the other way round.
"""

from kernels.plant import SERVER_STATE_NAMES
from sim.actions import Action, ActionResult, ResetBreakers, SetGpuCaps, SetWork, SwitchOutlets
from sim.faults import (
    FAULT_KINDS,
    NAMED_SCENARIOS,
    OBSERVATION_FAULTS,
    Fault,
    NamedScenario,
    Scenario,
    ScenarioError,
    list_scenarios,
    load_scenario,
    loads_scenario,
    resolve_scenario,
)
from sim.meters import QUALITY_NAMES, QUALITY_NO_REPLY, QUALITY_OK, QUALITY_UNREACHABLE
from sim.observation import Observation
from sim.options import PlantOptions
from sim.plant import Plant
from sim.records import TRIP_CAUSES, VIOLATION_KINDS, PlantEvent, Trip, Violation

__all__ = [
    "FAULT_KINDS",
    "NAMED_SCENARIOS",
    "OBSERVATION_FAULTS",
    "QUALITY_NAMES",
    "QUALITY_NO_REPLY",
    "QUALITY_OK",
    "QUALITY_UNREACHABLE",
    "SERVER_STATE_NAMES",
    "TRIP_CAUSES",
    "VIOLATION_KINDS",
    "Action",
    "ActionResult",
    "Fault",
    "NamedScenario",
    "Observation",
    "Plant",
    "PlantEvent",
    "PlantOptions",
    "ResetBreakers",
    "Scenario",
    "ScenarioError",
    "SetGpuCaps",
    "SetWork",
    "SwitchOutlets",
    "Trip",
    "Violation",
    "list_scenarios",
    "load_scenario",
    "loads_scenario",
    "resolve_scenario",
]
