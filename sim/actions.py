"""What a strategy, a controller or an endpoint can do to the plant.

Each action names its targets by index (into the compiled :class:`~controller.topology.Topology`
arrays: node indices for outlets and breakers, server indices for caps and work) and carries an
optional ``t_s``: the virtual time at which the plant executes it (``None``: at once, at the
plant's present time). Actions are vectorised so that a whole hall can be switched in one object.
:meth:`sim.Plant.submit` queues them; the plant executes them in time order at their exact
times, so outlets switched in the same instant see their inrush together and outlets switched
0.1 s apart do not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

I32 = npt.NDArray[np.int32]
F64 = npt.NDArray[np.float64]
#: Index arrays are accepted in any integer dtype (stored as int32).
Indices = npt.NDArray[Any]


def _index(value: object, name: str) -> I32:
    arr = np.atleast_1d(np.asarray(value))
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise ValueError(f"{name} must be integer indices")
    return arr.astype(np.int32)


def _time(t_s: float | None) -> None:
    if t_s is not None and not (isinstance(t_s, int | float) and np.isfinite(t_s) and t_s >= 0):
        raise ValueError(f"t_s must be a finite time >= 0 or None, got {t_s!r}")


@dataclass(frozen=True, slots=True)
class SwitchOutlets:
    """Switch outlet nodes on (``on=True``) or off."""

    outlets: Indices
    on: bool
    t_s: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "outlets", _index(self.outlets, "outlets"))
        _time(self.t_s)


@dataclass(frozen=True, slots=True)
class SetGpuCaps:
    """Set the per-GPU power cap (W) of servers; clamped by the node agent to the model's
    [gpu_min_cap_w, gpu_max_w] (PHYSICS §8 check 12). The agent keeps the cap across reboots
    (it re-applies it at boot)."""

    servers: Indices
    cap_w: npt.NDArray[Any]
    t_s: float | None = None

    def __post_init__(self) -> None:
        servers = _index(self.servers, "servers")
        cap = np.broadcast_to(np.asarray(self.cap_w, dtype=np.float64), servers.shape).copy()
        if not np.isfinite(cap).all() or (cap < 0).any():
            raise ValueError("cap_w must be finite and >= 0")
        object.__setattr__(self, "servers", servers)
        object.__setattr__(self, "cap_w", cap)
        _time(self.t_s)


@dataclass(frozen=True, slots=True)
class SetWork:
    """Let servers work (``on=True``: a booted server runs at its cap) or hold them idle."""

    servers: Indices
    on: bool
    t_s: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "servers", _index(self.servers, "servers"))
        _time(self.t_s)


@dataclass(frozen=True, slots=True)
class ResetBreakers:
    """Reclose tripped breakers (their thermal memory is kept). Everything below comes back at
    once: the PSUs whose outlets are on see their inrush together."""

    nodes: Indices
    t_s: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", _index(self.nodes, "nodes"))
        _time(self.t_s)


Action = SwitchOutlets | SetGpuCaps | SetWork | ResetBreakers


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What became of one action: executed (``ok``) or refused, with the reason."""

    action: Action
    t_s: float
    ok: bool
    detail: str = ""
    refused: tuple[int, ...] = field(default_factory=tuple)
