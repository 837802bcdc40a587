"""The rules by which an agent takes a cap command (docs/mqtt.md), shared by the simulator's
stand-in agents and the real node agent so the two cannot drift.

An agent given the controller's command key *rejects* (no ack, counted by reason) a command
that is ``unsigned``, whose signature is wrong (``bad_signature``), or whose issuer is not the
controller it answers to (``wrong_issuer``): docs/security.md. Then it *ignores* (no ack) a
command that is not for its server, whose ``seq`` is not above the last one it took from that
issuer (a replay), or whose ``t + valid_s`` has passed. It *refuses* (ack with ``ok = false``,
the caps enforced now, and a reason) a command whose number of caps is neither 1 nor its GPU
count, or whose caps fall outside the GPUs' [minimum, maximum].
Otherwise it applies the caps and acks with the caps read back.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from drivers.payloads import AgentTopics, CapAck, CapCommand, command_signature_error

__all__ = ["REJECTIONS", "AgentSpec", "CapDecision", "CapGate", "CapResult", "CapStats",
           "make_ack"]

#: The reasons for which a command is rejected as not the controller's (no ack, counted).
REJECTIONS = ("unsigned", "bad_signature", "wrong_issuer")


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
    """Identity, replay, staleness and range checks of one agent's cap commands (wall clock,
    s). ``key``: the command key (None: signatures are not checked); ``issuer``: the only
    issuer taken (None: any)."""

    spec: AgentSpec
    clock: Callable[[], float] = time.time
    last_seq: dict[str, int] = field(default_factory=dict)
    ignored: dict[str, int] = field(default_factory=dict)
    key: bytes | None = field(default=None, repr=False)
    issuer: str | None = None

    def decide(self, cmd: CapCommand) -> CapDecision:
        """Judge a command that parsed; call :meth:`taken` once it has been acked."""
        reason = self.rejection(cmd)
        if reason is not None:
            pass                                    # not the controller's: judged no further
        elif cmd.server != self.spec.server:
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

    def rejection(self, cmd: CapCommand) -> str | None:
        """One of :data:`REJECTIONS` when ``cmd`` is not the controller's, else None."""
        if self.key is not None:
            reason = command_signature_error(cmd, self.key)
            if reason is not None:
                return reason
        if self.issuer is not None and cmd.issuer != self.issuer:
            return "wrong_issuer"
        return None

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

