"""`rampguard probe`: against `rampguard sim serve` as a process, against a device that accepts
and never answers, against a strict Modbus server that lies, and with hostile input. Real
loopback TCP and the real broker throughout; each test has agent topics of its own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from controller.bindings import pdu_nodes, resolve_bindings
from controller.cli import main
from controller.config import load_hall_config
from controller.probe import probe
from controller.topology import compile_hall
from drivers.registers import BankSnapshot, MeterSnapshot, OutletSnapshot, PduSnapshot
from sim.endpoints import EndpointFault, ModbusEndpoints
from tests.serve_helpers import RIG, rig_on_free_ports, start_rampguard, start_sim, stop_sim

#: Python start-up, imports and compiling the rig: the part of a run before probing starts.
STARTUP_SLACK_S = 10.0

DEVICE_KEYS = {"device", "node", "host", "port", "unit_id", "profile", "roles", "ok", "status",
               "answered", "connect_ms", "latency_ms", "requests", "values", "breaker_open",
               "banks_open", "outlets", "problems"}
AGENT_KEYS = {"server", "topic_prefix", "ok", "answered", "status", "telemetry", "latency_ms",
              "gpus", "gpu_power_w", "gpu_limit_w", "gpu_temp_c", "server_power_w",
              "server_powered", "required", "problems"}
BROKER_KEYS = {"url", "connected", "connect_ms", "received", "accepted", "rejected", "problems"}
ZONE_KEYS = {"zone", "heard", "inlet_c", "it_load_kw", "cooling_kw", "units_ok"}
TOP_KEYS = {"config", "hall", "ok", "timeout_s", "probe_seconds", "counts", "devices", "broker",
            "agents", "mqtt_meters", "zones", "problems", "notes"}


def _prefix() -> str:
    return f"rgtest-probe-{uuid.uuid4().hex[:10]}"


async def _probe_cli(config: Path, *args: str) -> tuple[int, str, str, float]:
    """Run `rampguard probe` as a process: (exit code, stdout, stderr, wall seconds)."""
    started = time.monotonic()
    proc = await start_rampguard("probe", str(config), *args)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    return proc.returncode or 0, out.decode(), err.decode(), time.monotonic() - started


def _check_schema(report: dict[str, Any]) -> None:
    assert set(report) == TOP_KEYS
    assert isinstance(report["ok"], bool) and isinstance(report["problems"], list)
    assert report["probe_seconds"] <= report["timeout_s"]
    for dev in report["devices"]:
        assert set(dev) == DEVICE_KEYS
        assert dev["status"] in {"ok", "unreachable", "timeout", "exception", "mismatch",
                                 "decode_error", "implausible"}
        assert dev["ok"] == (dev["status"] == "ok" and not dev["problems"])
        for value in dev["values"].values():
            assert set(value) == {"value", "unit", "quality"}
            assert value["value"] is None or math.isfinite(value["value"])
        for outlet in dev["outlets"]:
            assert set(outlet) == {"outlet", "node", "relay_on", "energized"}
    for agent in report["agents"]:
        assert set(agent) == AGENT_KEYS
    assert report["broker"] is None or set(report["broker"]) == BROKER_KEYS
    for zone in report["zones"]:
        assert set(zone) == ZONE_KEYS
    assert set(report["counts"]) == {"devices", "devices_answered", "devices_ok", "agents",
                                     "agents_answered", "agents_ok", "mqtt_meters",
                                     "zones_heard"}


# ============================================================================================
# Against `rampguard sim serve`, both as processes (the must-show)
# ============================================================================================
async def test_probe_against_sim_serve_then_stopped(tmp_path: Path, mqtt_broker: Any) -> None:
    prefix = _prefix()
    config, pdu_port, meter_port = rig_on_free_ports(tmp_path, agent_prefix=prefix)
    commands: list[str] = []
    async with aiomqtt.Client(mqtt_broker.host, mqtt_broker.port,
                              identifier=f"{prefix}-watch") as watch:
        await watch.subscribe(f"{prefix}/+/caps/set")
        await watch.subscribe(f"{prefix}/+/status")
        online: set[str] = set()
        all_online = asyncio.Event()

        async def collect() -> None:
            async for message in watch.messages:
                topic = str(message.topic)
                if topic.endswith("/status"):
                    online.add(topic)
                    if len(online) == 4:
                        all_online.set()
                else:
                    commands.append(topic)

        watcher = asyncio.create_task(collect())
        try:
            sim, info = await start_sim(config, "--mqtt", mqtt_broker.url)
            try:
                assert info["devices"] == 2 and info["agents"] == 4
                # `serving` is printed before the agents' statuses reach the broker
                await asyncio.wait_for(all_online.wait(), timeout=30)
                # the simulated meters take their first sample one plant second after start
                # (at speed 1: one second); before it their registers read zero
                await asyncio.sleep(1.5)
                code, out, err, _ = await _probe_cli(config, "--json", "--mqtt",
                                                     mqtt_broker.url)
            finally:
                sim_code, _ = await stop_sim(sim)
            assert sim_code == 0
            assert code == 0, out + err
            report = json.loads(out)
            _check_schema(report)
            assert report["ok"] and report["problems"] == []
            devices = {d["node"]: d for d in report["devices"]}
            assert set(devices) == {"RIG-A", "LAB-PANEL"}
            pdu, meter = devices["RIG-A"], devices["LAB-PANEL"]
            assert pdu["device"] == f"127.0.0.1:{pdu_port}/1" and pdu["port"] == pdu_port
            assert meter["device"] == f"127.0.0.1:{meter_port}/1"
            assert pdu["roles"] == ["meter", "actuator"] and meter["roles"] == ["meter"]
            for dev in (pdu, meter):
                assert dev["answered"] and dev["status"] == "ok"
                assert dev["latency_ms"] > 0
                assert 200 < dev["values"]["voltage_l1"]["value"] < 260
            # two reads of the map and one of the coils; every outlet read back, all off
            assert pdu["requests"] == 3
            assert [o["outlet"] for o in pdu["outlets"]] == list(range(1, 17))
            assert pdu["outlets"][0]["node"] == "RIG-A-1-1"
            assert all(o["relay_on"] is False and o["energized"] is False
                       for o in pdu["outlets"])
            # the servers are off: their agents answered (retained status) and need no
            # telemetry
            agents = {a["server"]: a for a in report["agents"]}
            assert set(agents) == {"RIG-S01", "RIG-S02", "RIG-S03", "RIG-S04"}
            assert all(a["answered"] and a["status"] == "online" and a["server_powered"] is False
                       and not a["required"] for a in agents.values())
            assert report["broker"]["connected"] and report["broker"]["rejected"] == {}

            # the simulator stopped: exit 3, within the timeout, every device named
            code, out, err, wall_s = await _probe_cli(config, "--json", "--timeout", "3",
                                                      "--mqtt", mqtt_broker.url)
            assert code == 3, out + err
            report = json.loads(out)
            _check_schema(report)
            assert report["probe_seconds"] <= 3.0
            assert wall_s < 3.0 + STARTUP_SLACK_S
            assert not report["ok"]
            assert {d["node"]: d["status"] for d in report["devices"]} == {
                "RIG-A": "unreachable", "LAB-PANEL": "unreachable"}
            assert all("no connection" in d["problems"][0] for d in report["devices"])
            # the agents' servers are not known off any more, so a retained status (the
            # simulator's stop leaves `online` behind) is not enough: each agent is a problem
            for agent in report["agents"]:
                assert agent["required"] and not agent["ok"]
                assert agent["status"] in ("online", "offline")
                assert ("no valid telemetry" in agent["problems"][0]
                        or "reports offline" in agent["problems"][0])
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
    assert commands == []        # probe is read-only: no cap command was ever published


async def test_human_output_names_devices_agents_and_verdict(tmp_path: Path,
                                                             mqtt_broker: Any) -> None:
    config, _, _ = rig_on_free_ports(tmp_path, agent_prefix=_prefix())
    sim, _ = await start_sim(config, "--mqtt", mqtt_broker.url)
    try:
        code, out, err, _ = await _probe_cli(config, "--mqtt", mqtt_broker.url)
    finally:
        await stop_sim(sim)
    assert code == 0, out + err
    assert "Modbus devices" in out and "RIG-A" in out and "LAB-PANEL" in out
    assert "latency ms" in out and "RIG-A-1-1" in out and "RIG-S04" in out
    assert out.rstrip().endswith("verdict: OK: every endpoint answered and every value is "
                                 "plausible")
    assert err == ""


# ============================================================================================
# A device that accepts the connection and never answers
# ============================================================================================
@asynccontextmanager
async def _silent_listener(port: int) -> AsyncIterator[list[int]]:
    """Accepts TCP connections on ``port`` and reads forever without answering; yields the
    count of bytes received per connection."""
    received: list[int] = []
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        received.append(0)
        k = len(received) - 1
        while data := await reader.read(4096):
            received[k] += len(data)

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    try:
        yield received
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


async def test_hung_device_is_marked_timed_out_within_the_timeout(tmp_path: Path,
                                                                  mqtt_broker: Any) -> None:
    config, pdu_port, _ = rig_on_free_ports(tmp_path, agent_prefix=_prefix())
    async with _silent_listener(pdu_port) as received:
        code, out, err, wall_s = await _probe_cli(config, "--json", "--timeout", "2",
                                                  "--mqtt", mqtt_broker.url)
    assert code == 3, out + err
    report = json.loads(out)
    _check_schema(report)
    assert report["probe_seconds"] <= 2.0 and wall_s < 2.0 + STARTUP_SLACK_S
    devices = {d["node"]: d for d in report["devices"]}
    assert devices["RIG-A"]["status"] == "timeout" and not devices["RIG-A"]["answered"]
    assert "timed out" in devices["RIG-A"]["problems"][0]
    assert devices["LAB-PANEL"]["status"] == "unreachable"
    assert received and received[0] > 0        # the request went out and got no answer


async def test_hung_device_in_process_bounded_by_a_short_timeout(tmp_path: Path,
                                                                 mqtt_broker: Any) -> None:
    """The bound, measured in-process: a device timeout (0.5 s) above the probe's timeout
    (0.3 s) does not stretch the probe."""
    config_path, pdu_port, _ = rig_on_free_ports(tmp_path, agent_prefix=_prefix())
    config = load_hall_config(config_path)
    topo = compile_hall(config)
    bindings = resolve_bindings(config, topo)
    async with _silent_listener(pdu_port):
        loop = asyncio.get_running_loop()
        started = loop.time()
        report = await probe(config, topo, bindings, timeout_s=0.3, mqtt_url=mqtt_broker.url)
        elapsed = loop.time() - started
    assert elapsed <= 0.3 + 0.05        # the event loop's own scheduling jitter
    assert report.devices[0].status == "timeout" and not report.ok


# ============================================================================================
# A strict Modbus server (the simulator's endpoints) that lies
# ============================================================================================
def _pdu(bank1_a: float = 0.0, inlet_a: float = 0.0, **inlet: Any) -> PduSnapshot:
    volts = (230.0, 230.0, 230.0)
    return PduSnapshot(
        MeterSnapshot(current_a=(inlet_a, 0.0, 0.0), voltage_v=volts, **inlet),
        (BankSnapshot(bank1_a, 230.0, 230.0 * bank1_a), BankSnapshot(0.0, 230.0, 0.0)),
        tuple(OutletSnapshot() for _ in range(16)))


GOOD_METER = MeterSnapshot(current_a=(1.0, 1.0, 1.0), voltage_v=(230.0, 230.0, 230.0),
                           power_w=(230.0, 230.0, 230.0))

LIES: dict[str, tuple[Callable[[str], Any], str, str]] = {
    # name: (snapshot per node, device that lies, words the problem must contain)
    "nan-float": (lambda n: _pdu(bank1_a=math.nan) if n == "RIG-A" else GOOD_METER,
                  "RIG-A", "bank1.current = nan A: bad"),
    "negative": (lambda n: _pdu() if n == "RIG-A" else MeterSnapshot(
        current_a=(-5.0, 1.0, 1.0), voltage_v=(230.0,) * 3), "LAB-PANEL",
                 "current_l1 = -5 A: implausible"),
    "beyond-rating": (lambda n: _pdu(bank1_a=32.0 * 25, inlet_a=32.0 * 25)
                      if n == "RIG-A" else GOOD_METER, "RIG-A",
                      "node RIG-A-1: a current beyond the physical range"),
    "inlet-vs-banks": (lambda n: _pdu(inlet_a=20.0) if n == "RIG-A" else GOOD_METER,
                       "RIG-A", "node RIG-A: disagrees with the sum of its children"),
    "data-not-valid": (lambda n: _pdu(data_valid=False) if n == "RIG-A" else GOOD_METER,
                       "RIG-A", "readings are not valid (data-valid bit clear)"),
}


@asynccontextmanager
async def _strict_server(config_path: Path, snapshot: Callable[[str], Any]
                         ) -> AsyncIterator[ModbusEndpoints]:
    config = load_hall_config(config_path)
    topo = compile_hall(config)
    bindings = resolve_bindings(config, topo)
    writes: list[tuple[str, int, bool]] = []

    def write(node: str, outlet: int, on: bool) -> bool:
        writes.append((node, outlet, on))
        return True

    async with ModbusEndpoints(bindings.modbus, snapshot, write,
                               refresh_period_s=None) as endpoints:
        endpoints.refresh()
        yield endpoints
    assert writes == []                      # probe is read-only: no coil was written


@pytest.mark.parametrize("lie", sorted(LIES))
async def test_lying_meter_exits_3_naming_the_problem(tmp_path: Path, mqtt_broker: Any,
                                                      lie: str) -> None:
    snapshot, liar, words = LIES[lie]
    config, _, _ = rig_on_free_ports(tmp_path, agent_prefix=_prefix())
    async with _strict_server(config, snapshot) as endpoints:
        code, out, err, _ = await _probe_cli(config, "--json", "--timeout", "1.5",
                                             "--mqtt", mqtt_broker.url)
        assert endpoints.stats.writes_accepted == endpoints.stats.writes_refused == 0
    assert code == 3, out + err
    report = json.loads(out)
    _check_schema(report)
    devices = {d["node"]: d for d in report["devices"]}
    assert devices[liar]["answered"] and not devices[liar]["ok"]
    assert any(words in p for p in devices[liar]["problems"]), devices[liar]["problems"]
    assert any(words in p for p in report["problems"])
    honest = next(n for n in devices if n != liar)
    assert devices[honest]["ok"], devices[honest]["problems"]


async def test_exception_reply_names_the_exception_code(tmp_path: Path,
                                                        mqtt_broker: Any) -> None:
    config, _, _ = rig_on_free_ports(tmp_path, agent_prefix=_prefix())
    async with _strict_server(config, lambda n: _pdu() if n == "RIG-A" else GOOD_METER) as ep:
        ep.set_fault("LAB-PANEL", EndpointFault.DEVICE_FAILURE)
        code, out, err, _ = await _probe_cli(config, "--json", "--timeout", "1.5",
                                             "--mqtt", mqtt_broker.url)
    assert code == 3, out + err
    meter = next(d for d in json.loads(out)["devices"] if d["node"] == "LAB-PANEL")
    assert meter["status"] == "exception" and meter["answered"]
    assert "exception 04 (server device failure)" in meter["problems"][0]


# ============================================================================================
# Agents over the real broker
# ============================================================================================
async def test_agents_of_powered_servers_must_send_valid_telemetry(tmp_path: Path,
                                                                   mqtt_broker: Any) -> None:
    """Outlets read back energized: every agent must send telemetry. Three send valid
    telemetry, one sends 7 GPUs for an 8-GPU server, and a malformed payload is counted."""
    prefix = _prefix()
    config_path, _, _ = rig_on_free_ports(tmp_path, agent_prefix=prefix)
    config = load_hall_config(config_path)
    topo = compile_hall(config)
    bindings = resolve_bindings(config, topo)
    on = OutletSnapshot(current_a=0.5, power_w=100.0, relay_on=True, energized=True)
    outlets = tuple(on if node >= 0 else OutletSnapshot()
                    for node in pdu_nodes(config, topo)["RIG-A"].outlets)
    pdu = PduSnapshot(MeterSnapshot(current_a=(2.0, 2.0, 0.0), voltage_v=(230.0,) * 3),
                      (BankSnapshot(2.0, 230.0, 400.0), BankSnapshot(2.0, 230.0, 400.0)),
                      outlets)

    def telemetry(server: str, gpus: int, seq: int) -> bytes:
        return json.dumps({"v": 1, "server": server, "t": time.time(), "seq": seq,
                           "gpus": [{"index": k, "power_w": 100.0, "temp_c": 40.0,
                                     "limit_w": 300.0} for k in range(gpus)]}).encode()

    stop = asyncio.Event()

    async def publish(client: aiomqtt.Client) -> None:
        # ends on ``stop`` too: on Python 3.11 the wait_for inside aiomqtt's publish swallows a
        # cancellation that lands as the publish completes (a CI run hung here for 120 s)
        seq = 0
        while not stop.is_set():
            seq += 1
            for k in range(1, 5):
                server = f"RIG-S0{k}"
                await client.publish(f"{prefix}/{server}/telemetry",
                                     telemetry(server, 7 if k == 4 else 8, seq))
            await client.publish(f"{prefix}/RIG-S01/telemetry", b'{"v": 1, "server": ')
            await asyncio.sleep(0.1)

    async with _strict_server(config_path, lambda n: pdu if n == "RIG-A" else GOOD_METER), \
            aiomqtt.Client(mqtt_broker.host, mqtt_broker.port,
                           identifier=f"{prefix}-agents") as client:
        publisher = asyncio.create_task(publish(client))
        try:
            report = await probe(config, topo, bindings, timeout_s=3.0,
                                 mqtt_url=mqtt_broker.url)
        finally:
            stop.set()
            publisher.cancel()
            await asyncio.gather(publisher, return_exceptions=True)
    assert all(d.ok for d in report.devices), [d.problems for d in report.devices]
    agents = {a.server: a for a in report.agents}
    for server in ("RIG-S01", "RIG-S02", "RIG-S03"):
        a = agents[server]
        assert a.server_powered is True and a.required and a.telemetry
        assert a.gpus == 8 and a.gpu_power_w == 800.0 and a.gpu_limit_w == 300.0
        assert a.problems == [] and a.latency_s is not None
    assert agents["RIG-S04"].problems == [
        "telemetry rejected: GPU count or values implausible for this server"]
    assert report.broker is not None and report.broker.rejected.get("json", 0) >= 1
    assert any("payload(s) on probed topics rejected" in p for p in report.problems())
    assert not report.ok


async def test_broker_unreachable_is_a_problem_not_a_hang(tmp_path: Path) -> None:
    config, _, _ = rig_on_free_ports(tmp_path, agent_prefix=_prefix())
    dead = f"mqtt://127.0.0.1:{rig_on_free_ports(tmp_path)[1]}"     # nothing listens there
    code, out, err, _ = await _probe_cli(config, "--json", "--timeout", "2", "--mqtt", dead)
    assert code == 3, out + err
    report = json.loads(out)
    assert report["broker"]["connected"] is False
    assert report["broker"]["problems"] == ["cannot connect to the broker"]
    assert all("broker is not reachable" in a["problems"][0] for a in report["agents"])


# ============================================================================================
# Bad input: exit 2 with one line, never a traceback
# ============================================================================================
def test_bad_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text(RIG.read_text().replace('parent = "LAB-UTIL"', 'parent = "LAB-UTILL"'))
    assert main(["probe", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "nodes[1].parent: parent 'LAB-UTILL' is not a node id" in err
    assert "Traceback" not in err
    assert main(["probe", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml" in capsys.readouterr().err
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\x00\xff\xfe" * 100)
    assert main(["probe", str(binary)]) == 2


@pytest.mark.parametrize("timeout", ["-1", "0", "nan", "NaN", "inf", "-inf", "abc", "", "1e9",
                                     "5s", "0x10"])
def test_bad_timeout_exits_2(timeout: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["probe", str(RIG), "--timeout", timeout])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--timeout" in err and "Traceback" not in err


@pytest.mark.parametrize("url", ["127.0.0.1:1883", "http://127.0.0.1", "mqtt://",
                                 "mqtt://host:notaport", "mqtt://host:99999"])
def test_bad_mqtt_url_exits_2(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", str(RIG), "--mqtt", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rampguard: --mqtt:") and "Traceback" not in err


# ============================================================================================
# A meter bound over MQTT
# ============================================================================================
@pytest.mark.parametrize(("current_a", "problem"), [
    (10.0, None),
    (63.0 * 25, "a current beyond the physical range for its rating"),
])
async def test_mqtt_meter_is_heard_and_judged(tmp_path: Path, mqtt_broker: Any,
                                              current_a: float, problem: str | None) -> None:
    prefix = _prefix()
    path, _, meter_port = rig_on_free_ports(tmp_path, agent_prefix=prefix)
    text = path.read_text().replace(
        f'transport = "modbus"\nmodbus = {{ host = "127.0.0.1", port = {meter_port}, '
        'unit_id_start = 1, profile = "rampguard-meter-v1" }',
        f'transport = "mqtt"\ntopic = "{prefix}/meters/{{node}}"')
    assert f'topic = "{prefix}/meters/{{node}}"' in text
    path.write_text(text)
    config = load_hall_config(path)
    topo = compile_hall(config)
    bindings = resolve_bindings(config, topo)
    assert [m.node_id for m in bindings.mqtt_meters] == ["LAB-PANEL"]
    reading = json.dumps({"v": 1, "node": "LAB-PANEL", "t": time.time(), "seq": 1,
                          "current_a": [current_a, 0.0, 0.0], "voltage_v": [230.0] * 3,
                          "power_w": [230.0 * current_a, 0.0, 0.0]}).encode()

    stop = asyncio.Event()

    async def publish(client: aiomqtt.Client) -> None:
        # stopped by a flag, not a cancellation (aiomqtt's wait_for on 3.11 can swallow one)
        while not stop.is_set():
            await client.publish(f"{prefix}/meters/LAB-PANEL", reading)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)

    async with _strict_server(path, lambda n: _pdu()), \
            aiomqtt.Client(mqtt_broker.host, mqtt_broker.port,
                           identifier=f"{prefix}-meter") as client:
        publisher = asyncio.create_task(publish(client))
        try:
            report = await probe(config, topo, bindings, timeout_s=2.0,
                                 mqtt_url=mqtt_broker.url)
        finally:
            stop.set()
            await asyncio.wait_for(publisher, timeout=10)
    (meter,) = report.mqtt_meters
    assert meter.heard and meter.current_a == (current_a, 0.0, 0.0)
    assert meter.problems == ([] if problem is None else [problem])
    assert [d.node for d in report.devices] == ["RIG-A"]


def test_docs_json_example_has_the_real_keys() -> None:
    """docs/probe.md's JSON example parses and has exactly the keys the real output has (the
    key sets are checked against real runs above)."""
    text = (RIG.parents[1] / "docs" / "probe.md").read_text()
    block = text.split("<!-- probe-json-example -->")[1].split("```json\n")[1].split("```")[0]
    example = json.loads(block)
    _check_schema(example)
    assert example["devices"] and example["agents"] and example["broker"] and example["zones"]


def test_readme_probe_commands_parse() -> None:
    """The README's probe commands are real command lines (they run against `sim serve` in
    the tests above, on ports of their own)."""
    import re

    from controller.cli import build_parser

    readme = (RIG.parents[1] / "README.md").read_text()
    commands = re.findall(r"^\.venv/bin/rampguard (probe [^#\n]+)", readme, re.M)
    assert len(commands) >= 2
    for command in commands:
        args = build_parser().parse_args(command.split())
        assert args.command == "probe" and args.timeout > 0
