"""The hardware-in-the-loop fault campaign's harness (docs/campaign-hil.md): `rampguard run`
against `rampguard sim serve --record` over real loopback Modbus and a real broker, faults
injected from outside the two processes, and the verdict read from the two ground truths: the
simulator's record (every coil write and cap command the plant executed, its trips and
violations) and the controller's audit log.

Used by tests/controller/test_campaign_hil.py (one short run per fault) and by
benchmarks/campaign_hil.py (many seeded runs). Everything here is a real part: processes,
sockets, a broker; the only stand-in is :class:`HangProxy`, a TCP relay in front of a Modbus
port that can stop answering while keeping its connections open (a hung gateway).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import resource
import signal
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.audit import AuditReader
from controller.run_command import WALL_OFFSET_ENV
from tests.serve_helpers import ROOT, free_port, rig_on_free_ports

#: Plant seconds per wall second for both processes (the sim's --speed, the run's --clock-speed).
SPEED = 10.0
OUTLETS = tuple(f"RIG-A-{b}-{k}" for b in (1, 2) for k in range(1, 5))


# ============================================================================== a hung device
class HangProxy:
    """A TCP relay on ``listen_port`` to ``upstream_port`` on 127.0.0.1. :meth:`hang` makes it
    a device that accepts connections (new ones too) and never answers: bytes from clients are
    read and dropped, nothing is relayed back. :meth:`release` closes the hung connections (the
    client reconnects) and relays again."""

    def __init__(self, listen_port: int, upstream_port: int) -> None:
        self.listen_port, self.upstream_port = listen_port, upstream_port
        self.hung = False
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self.accepted = 0

    async def __aenter__(self) -> HangProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.listen_port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        await self._server.wait_closed()

    def hang(self) -> None:
        self.hung = True

    def release(self) -> None:
        self.hung = False
        for task in list(self._conns):
            task.cancel()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        self.accepted += 1
        up_w: asyncio.StreamWriter | None = None
        try:
            if self.hung:
                while await reader.read(4096):      # accept, read, never answer
                    pass
                return
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)

            async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                while data := await src.read(4096):
                    if not self.hung:               # hung: swallow the bytes
                        dst.write(data)
                        await dst.drain()

            async with asyncio.TaskGroup() as tg:
                tg.create_task(pump(reader, up_w))
                tg.create_task(pump(up_r, writer))
        except (OSError, ExceptionGroup):
            pass
        finally:
            self._conns.discard(task)
            for w in (writer, up_w):
                if w is not None:
                    w.close()
                    with contextlib.suppress(Exception):
                        await w.wait_closed()


# ============================================================================== the rig
def _preexec_fsize(limit_bytes: int) -> Callable[[], None]:
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # EFBIG instead of a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return apply


@dataclass
class Rig:
    """One campaign run's processes and files in ``workdir``. ``proxied``: ports of the sim's
    config ("pdu", "meter") that the controller reaches through a :class:`HangProxy`."""

    workdir: Path
    broker_url: str
    speed: float = SPEED
    proxied: tuple[str, ...] = ()
    scenario: Path | None = None
    prefix: str = field(default_factory=lambda: f"rampguard-hil/{uuid.uuid4().hex[:8]}")
    sim: asyncio.subprocess.Process | None = None
    run: asyncio.subprocess.Process | None = None
    proxies: dict[str, HangProxy] = field(default_factory=dict)
    run_logs: list[str] = field(default_factory=list)
    kills: int = 0

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.sim_config, self.pdu_port, self.meter_port = rig_on_free_ports(
            self.workdir, agent_prefix=self.prefix)
        self.run_config = self.sim_config
        self.listen = {"pdu": self.pdu_port, "meter": self.meter_port}
        if self.proxied:
            text = self.sim_config.read_text()
            for name in self.proxied:
                port = free_port()
                text = text.replace(f"port = {self.listen[name]}", f"port = {port}")
                self.proxies[name] = HangProxy(port, self.listen[name])
            self.run_config = self.workdir / "rig-run.toml"
            self.run_config.write_text(text)
        self.audit = self.workdir / "audit.jsonl"
        self.record = self.workdir / "sim-record.jsonl"
        self.token = uuid.uuid4().hex
        self.token_file = self.workdir / "api-token"
        self.token_file.write_text(self.token + "\n")
        self.api_port = free_port()
        self.issuer = f"ctl-{uuid.uuid4().hex[:6]}"
        self.wall_offset_file = self.workdir / "wall-offset-s"

    # -- processes -------------------------------------------------------------------------
    async def __aenter__(self) -> Rig:
        for proxy in self.proxies.values():
            await proxy.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self.stop_run()
        with contextlib.suppress(Exception):
            await self.stop_sim()
        for proxy in self.proxies.values():
            await proxy.__aexit__()

    async def start_sim(self) -> dict[str, Any]:
        extra = (["--scenario", str(self.scenario), "--scenario-on-signal"] if self.scenario
                 else [])
        self.sim = await _spawn("sim", "serve", str(self.sim_config), "--speed", f"{self.speed:g}",
                                "--mqtt", self.broker_url, "--record", str(self.record), *extra)
        return await _first_line(self.sim, "sim serve")

    def arm_scenario(self) -> None:
        """Start the scenario's clock now (SIGUSR1 to `sim serve --scenario-on-signal`)."""
        assert self.sim is not None
        self.sim.send_signal(signal.SIGUSR1)

    def step_wall_clock(self, offset_s: float) -> None:
        """Set the controller's wall-clock offset (the run's test hook; see run_command)."""
        tmp = self.wall_offset_file.with_suffix(".tmp")
        tmp.write_text(f"{offset_s:g}\n")
        tmp.replace(self.wall_offset_file)

    async def start_run(self, *, env: Mapping[str, str] | None = None,
                        fsize_limit_bytes: int | None = None) -> dict[str, Any]:
        """`rampguard run` on the rig, returned once it prints its ready line. Its wall clock
        follows :meth:`step_wall_clock`."""
        env = {WALL_OFFSET_ENV: str(self.wall_offset_file), **(env or {})}
        self.run = await _spawn(
            "run", str(self.run_config), "--mqtt", self.broker_url, "--http",
            f"127.0.0.1:{self.api_port}", "--metrics", "off", "--audit", str(self.audit),
            "--token-file", str(self.token_file), "--issuer", self.issuer,
            "--clock-speed", f"{self.speed:g}", env=env,
            preexec=_preexec_fsize(fsize_limit_bytes) if fsize_limit_bytes else None)
        return await _first_line(self.run, "rampguard run")

    async def kill_run(self) -> None:
        """SIGKILL the controller (no cleanup of any kind)."""
        assert self.run is not None
        self.run.kill()
        await self._reap_run()
        self.kills += 1

    async def stop_run(self) -> int:
        """SIGTERM, then the exit code (0 after a clean stop)."""
        if self.run is None:
            return 0
        if self.run.returncode is None:
            self.run.send_signal(signal.SIGTERM)
        return await self._reap_run()

    async def _reap_run(self) -> int:
        proc, self.run = self.run, None
        assert proc is not None
        try:
            _out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
        except TimeoutError:
            proc.kill()
            _out, err = await proc.communicate()
            self.run_logs.append(err.decode(errors="replace"))
            raise AssertionError("rampguard run did not stop within 120 s of SIGTERM: "
                                 + self.run_logs[-1][-3000:]) from None
        self.run_logs.append(err.decode(errors="replace"))
        return proc.returncode or 0

    async def stop_sim(self) -> int:
        proc, self.sim = self.sim, None
        if proc is None:
            return 0
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), timeout=60)
        return proc.returncode or 0

    # -- the operator API -------------------------------------------------------------------
    def _http(self, path: str, method: str) -> dict[str, Any]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.api_port}{path}", method=method,
                                     data=b"" if method == "POST" else None,
                                     headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return dict(json.loads(resp.read()))
        except urllib.error.HTTPError as exc:
            return {"http_error": exc.code, **json.loads(exc.read() or b"{}")}

    async def api(self, path: str, method: str = "GET") -> dict[str, Any]:
        return await asyncio.to_thread(self._http, path, method)

    async def status(self) -> dict[str, Any]:
        return await self.api("/status")

    async def start_ramp(self) -> None:
        answer = await self.api("/ramp/start", "POST")
        assert answer.get("accepted") == "start", answer

    async def wait_status(self, pred: Callable[[dict[str, Any]], bool], timeout_s: float,
                          what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                status = await self.status()
                if pred(status):
                    return status
            await asyncio.sleep(0.1)
        raise AssertionError(f"{what} not reached in {timeout_s} s: last status {status}")

    async def wait_mode(self, modes: set[str], timeout_s: float) -> dict[str, Any]:
        return await self.wait_status(lambda s: s["mode"] in modes, timeout_s, f"mode {modes}")

    async def wait_steady(self, timeout_s: float = 90) -> dict[str, Any]:
        return await self.wait_status(
            lambda s: s["mode"] == "STEADY" and s["outlets_on"] == len(OUTLETS), timeout_s,
            "STEADY with every outlet on")

    async def wait_audit(self, pred: Callable[[list[dict[str, Any]]], bool],
                         timeout_s: float, what: str) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            recs = audit_records(self.audit)
            if pred(recs):
                return recs
            await asyncio.sleep(0.01)   # polling a file another process writes
        raise AssertionError(f"{what} not in the audit log within {timeout_s} s")

    def sim_record(self) -> list[dict[str, Any]]:
        return read_jsonl(self.record)


async def _spawn(*args: str, env: Mapping[str, str] | None = None,
                 preexec: Callable[[], None] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "controller.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, preexec_fn=preexec)


async def _first_line(proc: asyncio.subprocess.Process, what: str) -> dict[str, Any]:
    assert proc.stdout is not None and proc.stderr is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout=90)
    if not line:
        err = (await proc.stderr.read()).decode(errors="replace")
        raise AssertionError(f"{what} exited before it was ready: {err[-2000:]}")
    return dict(json.loads(line))


# ============================================================================== the verdict
def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):   # a line still being written
            out.append(json.loads(line))
    return out


def audit_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [r.to_dict() for r in AuditReader(path)]


def switch_on_intents(records: list[dict[str, Any]]) -> Counter[str]:
    return Counter(r["action"]["targets"][0] for r in records
                   if r.get("kind") == "intent" and r["action"].get("type") == "switch_outlet"
                   and r["action"].get("on"))


@dataclass
class Verdict:
    """A run's figures (docs/campaign-hil.md says what each counts)."""

    trips: int = 0
    breakers_open: int = 0
    limit_s_beyond_deadline: float = 0.0
    violations: int = 0
    double_energizations: int = 0
    writes: int = 0
    caps_applied: int = 0
    audit_records: int = 0
    audit_records_lost: int = 0
    audit_corrupt: int = 0
    audit_torn: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}

    @property
    def safe(self) -> bool:
        return not (self.trips or self.breakers_open or self.limit_s_beyond_deadline
                    or self.double_energizations or self.audit_records_lost
                    or self.audit_corrupt)


def verdict(rig: Rig, seen_before_crash: list[set[int]] = ()) -> Verdict:  # type: ignore[assignment]
    """Judge a finished run (the sim stopped: its summary is in the record). ``seen_before_crash``:
    the audit seqs read just after each SIGKILL; each must still be readable at the end."""
    rec = rig.sim_record()
    v = Verdict()
    summaries = [r for r in rec if r.get("event") == "summary"]
    if summaries:
        s = summaries[-1]
        v.trips = len(s["trips"])
        v.breakers_open = len(s["breakers_open"])
        overloads = [x for x in s["violations"] if x["kind"] == "overload"]
        v.violations = len(s["violations"])
        v.limit_s_beyond_deadline = round(sum(x["duration_s"] for x in overloads), 3)
        v.notes += [f"trip {t['node']} {t['cause']} at {t['t_s']} s" for t in s["trips"]]
        v.notes += [f"violation {x['kind']} {x['node']}: {x['detail']}" for x in s["violations"]]
    else:
        v.notes.append("no simulator summary (the sim did not stop cleanly)")
        v.trips = -1
    # double energizations: an outlet commanded on while it was on, seen by the relay
    writes = [r for r in rec if r.get("event") == "write"]
    v.writes = len(writes)
    v.double_energizations = sum(1 for w in writes if w["on"] and w["was_on"])
    reader = AuditReader(rig.audit) if rig.audit.exists() else None
    records = [r.to_dict() for r in reader] if reader is not None else []
    v.audit_records = len(records)
    v.audit_corrupt = len(reader.corrupt) if reader is not None else 0
    v.audit_torn = int(reader.torn_tail is not None) if reader is not None else 0
    # every write the relay saw has its intent, written before it (count per outlet and sense)
    intents = Counter((r["action"].get("outlet"), bool(r["action"].get("on"))) for r in records
                      if r.get("kind") == "intent"
                      and r["action"].get("type") == "switch_outlet")
    seen = Counter((w["outlet"], bool(w["on"])) for w in writes)
    lost = sum(max(0, n - intents[key]) for key, n in seen.items())
    # every cap command the agents executed has its intent (the command's seq is its action id)
    caps = [r for r in rec if r.get("event") == "caps" and r.get("issuer") == rig.issuer]
    v.caps_applied = len(caps)
    cap_intents = {r["seq"] for r in records if r.get("kind") == "intent"
                   and r["action"].get("type") == "set_caps"}
    lost += sum(1 for c in caps if c["seq"] not in cap_intents)
    # every record read before a crash is still there
    final = {r["seq"] for r in records}
    lost += sum(len(before - final) for before in seen_before_crash)
    v.audit_records_lost = lost
    if v.double_energizations:
        v.notes.append(f"double energizations: {v.double_energizations}")
    return v


def audit_seqs(path: Path) -> set[int]:
    return {r["seq"] for r in audit_records(path)}


def log_lines(text: str, pattern: str) -> list[str]:
    """The JSON log lines of a `rampguard run` stderr whose message matches ``pattern``."""
    out = []
    for line in text.splitlines():
        with contextlib.suppress(json.JSONDecodeError, TypeError):
            msg = json.loads(line).get("message", "")
            if re.search(pattern, msg):
                out.append(msg)
    return out


# ============================================================================== the faults
# Each procedure runs one fault on a fresh rig, from the start of the simulator to its clean
# stop, and returns what it saw: ``injected`` (faults injected), ``expected`` (the fault's safe
# outcome held), ``observed`` (what the controller did) and the run's :class:`Verdict`. The
# tests run each once; benchmarks/campaign_hil.py runs them over many seeds.
@dataclass
class Outcome:
    fault: str
    seed: int
    params: dict[str, Any]
    injected: int = 0
    expected: bool = False
    observed: dict[str, Any] = field(default_factory=dict)
    verdict: Verdict | None = None
    wall_s: float = 0.0

    @property
    def passed(self) -> bool:
        return self.expected and self.verdict is not None and self.verdict.safe

    def to_dict(self) -> dict[str, Any]:
        return {"fault": self.fault, "seed": self.seed, "params": self.params,
                "injected": self.injected, "expected": self.expected, "passed": self.passed,
                "observed": self.observed,
                "verdict": None if self.verdict is None else self.verdict.to_dict(),
                "wall_s": round(self.wall_s, 1)}


def _ons(rig: Rig) -> int:
    return sum(switch_on_intents(audit_records(rig.audit)).values())


def _acks_in(records: list[dict[str, Any]]) -> int:
    """Cap commands acknowledged by an agent (ok, with the enforced read-back)."""
    return sum(1 for x in records if x.get("kind") == "result" and x["ok"]
               and "enforced_w" in x["readback"])


def _acks(rig: Rig) -> int:
    return _acks_in(audit_records(rig.audit))


def _writes(rig: Rig) -> int:
    return sum(1 for r in rig.sim_record() if r.get("event") == "write")


async def _until_switch_ons(rig: Rig, n: int) -> None:
    await rig.wait_audit(lambda r: sum(switch_on_intents(r).values()) >= n, 120,
                         f"{n} switch-on intent(s)")


async def _finish(rig: Rig, out: Outcome, before_crash: list[set[int]] = ()) -> Outcome:  # type: ignore[assignment]
    out.observed["run_exit"] = await rig.stop_run()
    await rig.stop_sim()
    out.verdict = verdict(rig, before_crash)
    return out


async def broker_restart(workdir: Path, broker: Any, seed: int, *,
                         speed: float = SPEED) -> Outcome:
    """(a) ``broker``: a :class:`tests.conftest.BrokerProcess` this run may kill. It dies at a
    seeded point of the ramp (seed 0: before the first outlet, once the ramp is active), stays
    down a seeded while, and comes back on the same port. Expected: while it is down no outlet
    is switched on unless the controller had already admitted it (seed 0: the ramp holds on
    the lost zone inlet, alarmed); the ramp completes after it returns, and the zone reading
    reaches the controller again."""
    rng = random.Random(seed)
    delay_s = 0.0 if seed == 0 else rng.uniform(0.0, 1.5)
    down_s = 2.0 if seed == 0 else rng.uniform(1.0, 4.0)
    out = Outcome("broker-restart", seed, {"kill_after_start_s": round(delay_s, 3),
                                           "down_s": round(down_s, 3)})
    t0 = time.monotonic()
    async with Rig(workdir, broker.broker.url, speed=speed) as rig:
        await rig.start_sim()
        await rig.start_run()
        await rig.wait_status(lambda s: s["telemetry"]["accepted"] > 0, 60, "telemetry")
        if seed == 0:
            broker.kill()
            # let the zone reading go stale first (the service alarms it): a ramp started on a
            # fresh one admits every outlet of the rig in its first decision
            await rig.wait_status(lambda s: "telemetry:zone:LAB" in s["alarms"], 30,
                                  "the zone inlet alarm")
            await rig.start_ramp()
        else:
            await rig.start_ramp()
            await asyncio.sleep(delay_s)
            broker.kill()
        out.injected = 1
        ons_at_kill = _ons(rig)
        await asyncio.sleep(down_s)
        during = await rig.status()
        out.observed.update(mode_while_down=during["mode"], hold=during["hold_reasons"],
                            alarms_while_down=during["alarms"],
                            switch_ons_while_down=_ons(rig) - ons_at_kill)
        broker.start()
        steady = await rig.wait_steady(120)
        # both ends reconnected: the sim's zone sensor reaches the controller again
        back = await rig.wait_status(lambda s: not any(a.startswith("telemetry:zone")
                                                       for a in s["alarms"]), 120,
                                     "the zone reading back over the new broker")
        out.observed.update(steady=steady["mode"] == "STEADY", alarms_after=back["alarms"],
                            caps_acked=_acks(rig))
        # seed 0 kills it before any outlet is admitted: the ramp must hold (zone inlet
        # unknown); a later kill may land after the controller admitted every outlet
        out.expected = bool(out.observed["steady"]) and (
            seed != 0 or (during["mode"] == "HOLDING"
                          and out.observed["switch_ons_while_down"] == 0))
        await _finish(rig, out)
    out.wall_s = time.monotonic() - t0
    return out


async def modbus_hang(workdir: Path, broker_url: str, seed: int, *, device: str | None = None,
                      speed: float = SPEED) -> Outcome:
    """(b) The gateway of ``device`` ("meter": LAB-PANEL's, "pdu": RIG-A's, the actuator;
    seeded when None) accepts connections and never answers from a seeded point of the ramp.
    Expected: SAFE within 30 s naming the lost node, the tick keeping at least a quarter of its
    pace while the poller times out, and no outlet switched on once SAFE."""
    rng = random.Random(seed)
    device = device or rng.choice(("meter", "pdu"))
    after = rng.randint(1, 4)
    out = Outcome("modbus-hang", seed, {"device": device, "after_switch_ons": after})
    t0 = time.monotonic()
    async with Rig(workdir, broker_url, speed=speed, proxied=(device,)) as rig:
        await rig.start_sim()
        await rig.start_run()
        await rig.start_ramp()
        await _until_switch_ons(rig, after)
        rig.proxies[device].hang()
        out.injected = 1
        safe = await rig.wait_mode({"SAFE"}, 60)
        ons = _ons(rig)
        t1, ticks = time.monotonic(), safe["ticks"]
        await asyncio.sleep(3.0)
        later = await rig.status()
        rate = (later["ticks"] - ticks) / (time.monotonic() - t1)
        out.observed.update(safe_reason=safe["safe_reason"], ticks_per_s=round(rate, 1),
                            nominal_ticks_per_s=speed, switch_ons_after_safe=_ons(rig) - ons)
        node = "LAB-PANEL" if device == "meter" else "RIG-A"
        out.expected = (node in (safe["safe_reason"] or "") and rate >= speed / 4
                        and _ons(rig) == ons and later["mode"] == "SAFE")
        await _finish(rig, out)
    out.wall_s = time.monotonic() - t0
    return out


def _lying_scenario(workdir: Path, node: str, factor: float) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    scenario = workdir / "lying.toml"
    scenario.write_text(f'name = "meter-lying-{node}"\ndescription = "campaign"\n'
                        f'survivable = true\n[[faults]]\nkind = "meter-lying"\n'
                        f'nodes = "{node}"\nfactor = {factor}\nat_s = 0\n')
    return scenario


async def meter_lying(workdir: Path, broker_url: str, seed: int, *, node: str | None = None,
                      factor: float = 0.7, speed: float = SPEED) -> Outcome:
    """(c) The meter of ``node`` (RIG-A, the PDU's inlet, or LAB-PANEL; seeded when None)
    reads ``factor`` × the truth from a seeded point of the ramp. Observed: whether the
    controller held or went SAFE within 30 s, and why. Expected: no trip, no violation, and
    for RIG-A (whose banks are metered: the sum check sees it) a hold or SAFE."""
    rng = random.Random(seed)
    node = node or rng.choice(("RIG-A", "LAB-PANEL"))
    after = rng.randint(1, 6)
    out = Outcome("meter-lying", seed, {"node": node, "factor": factor,
                                        "after_switch_ons": after})
    t0 = time.monotonic()
    scenario = _lying_scenario(workdir, node, factor)
    async with Rig(workdir / "rig", broker_url, speed=speed, scenario=scenario) as rig:
        await rig.start_sim()
        await rig.start_run()
        await rig.start_ramp()
        await _until_switch_ons(rig, after)
        rig.arm_scenario()
        out.injected = 1
        reacted: dict[str, Any] | None = None
        with contextlib.suppress(AssertionError):
            reacted = await rig.wait_status(
                lambda s: s["mode"] in ("HOLDING", "SAFE"), 30, "a hold or SAFE")
        final = await rig.status()
        if reacted is not None:
            with contextlib.suppress(AssertionError):
                final = await rig.wait_mode({"SAFE"}, 30)
        first = reacted or final
        out.observed.update(reacted=reacted is not None, mode=first["mode"],
                            reason=final["safe_reason"] or first["reason"],
                            final_mode=final["mode"])
        await _finish(rig, out)
        logs = "".join(rig.run_logs)
        out.observed["sum_check_fired"] = bool(log_lines(logs, "children_sum_disagrees"))
    out.expected = out.observed["reacted"] if node == "RIG-A" else True
    out.wall_s = time.monotonic() - t0
    return out


async def sigkill(workdir: Path, broker_url: str, seed: int, *, kills: int = 3,
                  speed: float = SPEED) -> Outcome:
    """(d) SIGKILL of the controller ``kills`` times at seeded points of one ramp (the k-th
    audit record from now, k in 1..6, then a jitter up to 50 ms), restarted each time.
    Expected: the ramp completes with every outlet on, nothing energized twice, every record
    read after a kill still readable at the end, a resumed ramp in the log."""
    rng = random.Random(seed)
    plan = [(rng.randint(1, 6), round(rng.uniform(0.0, 0.05), 4)) for _ in range(kills)]
    out = Outcome("sigkill", seed, {"kill_points": plan})
    before: list[set[int]] = []
    t0 = time.monotonic()
    async with Rig(workdir, broker_url, speed=speed) as rig:
        await rig.start_sim()
        await rig.start_run()
        await rig.start_ramp()
        outlets_at_kill = []
        for k, jitter_s in plan:
            n = len(audit_records(rig.audit))
            await rig.wait_audit(lambda r, n=n, k=k: len(r) >= n + k, 120, f"{k} more records")
            await asyncio.sleep(jitter_s)
            await rig.kill_run()
            out.injected += 1
            before.append(audit_seqs(rig.audit))
            outlets_at_kill.append(_writes(rig))
            await rig.start_run()
        steady = await rig.wait_steady(120)
        records = audit_records(rig.audit)
        out.observed.update(relay_writes_at_kills=outlets_at_kill,
                            opens=sum(1 for r in records if r.get("kind") == "open"),
                            resumed=any(r.get("kind") == "ramp" and r.get("resumed")
                                        for r in records),
                            reconciled=sum(1 for r in records if r.get("kind") == "result"
                                           and r["readback"].get("reconciled")))
        out.expected = (steady["outlets_on"] == len(OUTLETS) and out.observed["resumed"]
                        and out.observed["opens"] == kills + 1)
        await _finish(rig, out, before)
    out.wall_s = time.monotonic() - t0
    return out


async def clock_jump(workdir: Path, broker_url: str, seed: int, *,
                     steps_s: tuple[float, ...] | None = None, speed: float = SPEED) -> Outcome:
    """(e) The controller's wall clock steps (``steps_s`` cumulative offsets, seeded when None:
    two steps of 1 to 10 minutes, either way) at seeded points of the ramp; the monotonic clock
    does not. Expected: the ramp completes, ticks keep coming, the audit's monotonic times never
    go back. Observed: cap commands acknowledged and ignored (expired or future) after the
    steps, and the MQTT payloads the controller rejected as from the future."""
    rng = random.Random(seed)
    if steps_s is None:
        steps_s = tuple(rng.choice((-1, 1)) * rng.uniform(60, 600) for _ in range(2))
    offsets = [round(sum(steps_s[:k + 1]), 1) for k in range(len(steps_s))]
    out = Outcome("clock-jump", seed, {"offsets_s": offsets})
    t0 = time.monotonic()
    async with Rig(workdir, broker_url, speed=speed) as rig:
        await rig.start_sim()
        await rig.start_run()
        await rig.start_ramp()
        await _until_switch_ons(rig, 1)
        first = await rig.status()
        for offset in offsets:
            rig.step_wall_clock(offset)
            out.injected += 1
            await asyncio.sleep(rng.uniform(0.5, 1.5))
        steady = await rig.wait_steady(120)
        await asyncio.sleep(3.0)          # 30 plant seconds: the agents boot, caps are retried
        last = await rig.status()
        records = audit_records(rig.audit)
        monos = [r["t_mono_s"] for r in records]
        out.observed.update(ticks_during=last["ticks"] - first["ticks"],
                            rejected=last["telemetry"])
        await _finish(rig, out)
    caps = [r for r in rig.sim_record() if r.get("event") == "caps"]
    out.observed.update(caps_applied=len(caps),
                        future_rejected=len(log_lines("".join(rig.run_logs), "future")))
    out.expected = (steady["outlets_on"] == len(OUTLETS) and monos == sorted(monos)
                    and out.observed["ticks_during"] > 0)
    out.wall_s = time.monotonic() - t0
    return out


async def disk_full(workdir: Path, broker_url: str, seed: int, *, limit_bytes: int | None = None,
                    speed: float = SPEED) -> Outcome:
    """(f) The audit log may not grow past a seeded size (RLIMIT_FSIZE in the controller,
    SIGXFSZ ignored: EFBIG, as a full disk gives ENOSPC). Expected: SAFE naming the audit log,
    nothing actuated after it, every relay write with its durable intent, and `rampguard
    audit` reading what was written (exit 0)."""
    rng = random.Random(seed)
    limit = limit_bytes or rng.randint(1500, 5000)
    out = Outcome("disk-full", seed, {"limit_bytes": limit})
    t0 = time.monotonic()
    async with Rig(workdir, broker_url, speed=speed) as rig:
        await rig.start_sim()
        await rig.start_run(fsize_limit_bytes=limit)
        await rig.start_ramp()
        out.injected = 1
        safe = await rig.wait_mode({"SAFE"}, 120)
        writes = _writes(rig)
        await asyncio.sleep(2.0)
        out.observed.update(safe_reason=safe["safe_reason"], writes_at_safe=writes,
                            writes_after_safe=_writes(rig) - writes,
                            alarms=safe["alarms"])
        await _finish(rig, out)
    listed = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "controller.cli", "audit", str(rig.audit),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT)
    stdout, _stderr = await listed.communicate()
    out.observed.update(audit_size_bytes=rig.audit.stat().st_size,
                        audit_exit=listed.returncode,
                        audit_listed=stdout.decode().count("\n"))
    out.expected = ("audit" in (out.observed["safe_reason"] or "")
                    and out.observed["writes_after_safe"] == 0 and listed.returncode == 0
                    and out.observed["audit_size_bytes"] <= limit)
    out.wall_s = time.monotonic() - t0
    return out
