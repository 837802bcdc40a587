"""What the plant reports: breaker trips, limit violations and notable events.

Plain frozen values with units in their field names; ``to_dict`` gives the JSON form used by the
dry-run verdict (DESIGN.md: ``trips`` as {node, t_s, cause}, ``violations`` as
{node, kind, t_s, duration_s, peak}).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

#: Trip causes: the breaker element that opened. ``inrush`` is the magnetic element opened by
#: the inrush of PSUs switched on together.
TRIP_CAUSES = ("inrush", "magnetic", "short-time", "thermal")
#: Violation kinds: ``overload`` (above the continuous limit past the shed deadline), ``ramp``
#: (source/UPS load rising faster than its ramp limit over the ramp window), ``step`` (source/UPS
#: load changing by more than its largest load step within one plant step), ``inlet`` (zone
#: inlet above the allowable temperature).
VIOLATION_KINDS = ("overload", "ramp", "step", "inlet")


def _round(value: float, digits: int = 6) -> float:
    return float(round(value, digits))


@dataclass(frozen=True, slots=True)
class Trip:
    """A breaker that opened: node id, kind of node, time (s), cause, and how far over."""

    node: str
    node_kind: str
    t_s: float
    cause: str
    current_a: float
    threshold_a: float
    detail: str

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("t_s", "current_a", "threshold_a"):
            out[key] = _round(out[key], 4)
        return out


@dataclass(frozen=True, slots=True)
class Violation:
    """A limit broken: ``peak`` is in ``unit`` (×limit for overload, W/s for ramp, W for step,
    °C for inlet) against ``limit`` in the same unit; ``t_s`` when it began, ``duration_s`` how
    long it lasted (to the end of the run if it had not ended)."""

    node: str
    node_kind: str
    kind: str
    t_s: float
    duration_s: float
    peak: float
    limit: float
    unit: str
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("t_s", "duration_s", "peak", "limit"):
            out[key] = _round(out[key], 4)
        return out


@dataclass(frozen=True, slots=True)
class PlantEvent:
    """Something worth a line in the report: a fault applied or cleared, GPUs slowing down or
    shutting down, servers lost."""

    t_s: float
    kind: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"t_s": _round(self.t_s, 4), "kind": self.kind, "detail": self.detail}
