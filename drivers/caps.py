"""The rules by which an agent takes a cap command (docs/mqtt.md), shared by the simulator's
stand-in agents and the real node agent so the two cannot drift.

An agent *ignores* (no ack) a command that is not for its server, whose ``seq`` is not above
the last one it took from that issuer (a replay), or whose ``t + valid_s`` has passed. It
*refuses* (ack with ``ok = false``, the caps enforced now, and a reason) a command whose number of
caps is neither 1 nor its GPU count, or whose caps fall outside the GPUs' [minimum, maximum].
Otherwise it applies the caps and acks with the caps read back.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from drivers.payloads import AgentTopics, CapAck, CapCommand

__all__ = ["AgentSpec", "CapDecision", "CapGate", "CapResult", "CapStats", "make_ack"]


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """One node agent as the bindings describe it: its server, topics and GPU limits (W)."""

    server: str
    topics: AgentTopics
    gpus: int
    gpu_min_cap_w: float
    gpu_max_w: float


@dataclass(frozen=True, slots=True)
class CapResult:
    """What applying caps gave: ``ok``, the per-GPU caps enforced now (read back), why not."""

    ok: bool
    enforced_w: tuple[float, ...]
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class CapDecision:
    """``ignore`` (no ack, with the reason to count), or the per-GPU caps to apply, or a
    refusal reason to ack with."""

    ignore: str | None = None
    caps_w: tuple[float, ...] = ()
    refuse: str | None = None


@dataclass
class CapGate:
    """Replay, staleness and range checks of one agent's cap commands (wall clock, s)."""

    spec: AgentSpec
    clock: Callable[[], float] = time.time
    last_seq: dict[str, int] = field(default_factory=dict)
    ignored: dict[str, int] = field(default_factory=dict)

    def decide(self, cmd: CapCommand) -> CapDecision:
        """Judge a command that parsed; call :meth:`taken` once it has been acked."""
        reason = None
        if cmd.server != self.spec.server:
            reason = "other_server"
        elif cmd.seq <= self.last_seq.get(cmd.issuer, -1):
            reason = "replay"
        elif cmd.expires_s < self.clock():
            reason = "expired"
        if reason is not None:
            self.ignored[reason] = self.ignored.get(reason, 0) + 1
            return CapDecision(ignore=reason)
        n = self.spec.gpus
        caps = cmd.cap_w
        if len(caps) == 1:
            caps = caps * n
        elif len(caps) != n:
            return CapDecision(refuse=f"expected 1 or {n} caps, got {len(cmd.cap_w)}")
        lo, hi = self.spec.gpu_min_cap_w, self.spec.gpu_max_w
        for k, cap in enumerate(caps):
            if not (math.isfinite(cap) and lo <= cap <= hi):
                return CapDecision(refuse=f"cap {cap:g} W for GPU {k} is outside "
                                   f"[{lo:g}, {hi:g}] W")
        return CapDecision(caps_w=tuple(caps))

    def taken(self, cmd: CapCommand) -> None:
        """Record that ``cmd`` was acked (applied or refused): its seq cannot be replayed."""
        self.last_seq[cmd.issuer] = max(cmd.seq, self.last_seq.get(cmd.issuer, -1))


@dataclass
class CapStats:
    """An agent's cap-command counters (the real agent's and the simulator's stand-ins')."""

    commands: int = 0
    applied: int = 0
    refused: int = 0
    ignored: dict[str, int] = field(default_factory=dict)
    acks: int = 0
    ack_failures: int = 0

    def count_ignored(self, reason: str) -> None:
        self.ignored[reason] = self.ignored.get(reason, 0) + 1

    def count_result(self, result: CapResult) -> None:
        if result.ok:
            self.applied += 1
        else:
            self.refused += 1


def make_ack(cmd: CapCommand, result: CapResult, *, t: float) -> CapAck:
    return CapAck(v=1, id=cmd.id, server=cmd.server, t=t, ok=result.ok,
                  enforced_w=list(result.enforced_w),
                  reason=None if result.ok else (result.reason or "refused"))

