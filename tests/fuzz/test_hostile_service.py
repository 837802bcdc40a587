"""End to end: hostile input against a running `rampguard run`, and every rejection counted.

`rampguard run` against `rampguard sim serve` (the rig, over real loopback Modbus and a broker
of the test's own, so nobody else's messages land in the counts), with a token file. The test
publishes a fixed hostile corpus on every topic the service subscribes to (agent telemetry,
cap acks, zone telemetry): malformed JSON, invalid UTF-8, JSON bombs, 1 MB payloads, NaN
literals, wrong types, timestamps from the future, valid payloads naming another server or
zone, acks of no command, and telemetry that fits its schema but not the hall. It sends hostile
HTTP to the operator API, a slowloris client among them. Then:

* the service is still up and still ticking (``/status`` and ``/metrics`` answer, the tick
  count advances, the mode is not SAFE);
* ``rejected`` in ``/status`` and ``rampguard_inputs_rejected_total`` grew by exactly the
  number of hostile inputs sent, per source and reason;
* good telemetry published after the barrage (the simulator stopped, so only the test's own
  messages arrive) still gets in: the link accepts exactly those, and nothing more is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter, deque
from pathlib import Path
from random import Random
from typing import Any

import aiomqtt
import pytest

from controller.config import loads_hall_config
from controller.service import SWITCH_INTERVAL_S, Service, ServiceOptions
from controller.topology import compile_hall
from drivers.registers import PROFILE_METER
from tests.conftest import BrokerProcess
from tests.fuzz.hostile_servers import HostileServer
from tests.serve_helpers import (
    RIG,
    free_port,
    rig_on_free_ports,
    start_rampguard,
    start_sim,
    stop_sim,
)

pytestmark = pytest.mark.slow

SPEED = "20"
TOKEN = "hostile-test-T0ken"
SERVERS = ("RIG-S01", "RIG-S02", "RIG-S03", "RIG-S04")
ZONE = "LAB"
GPUS = 8
RIG_TEXT = RIG.read_text()


def _gpus(n: int = GPUS, power_w: float = 40.0) -> list[dict[str, Any]]:
    return [{"index": k, "power_w": power_w, "temp_c": 30.0, "limit_w": 300.0}
            for k in range(n)]


def telemetry(name: str, **over: Any) -> dict[str, Any]:
    return {"v": 1, "t": time.time(), "server": name, "seq": 1, "gpus": _gpus(), **over}


def ack(name: str, **over: Any) -> dict[str, Any]:
    return {"v": 1, "t": time.time(), "id": f"nobody:{uuid.uuid4().hex[:8]}", "server": name,
            "ok": True, "enforced_w": [250.0] * GPUS, **over}


def zone(name: str = ZONE, **over: Any) -> dict[str, Any]:
    return {"v": 1, "t": time.time(), "zone": name, "inlet_c": 24.0, "it_load_kw": 1.0,
            "cooling_kw": 5.0, "units_ok": 1, **over}


def j(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


#: Refused by the payload parser on any topic: (payload, reason).
GENERIC: list[tuple[bytes, str]] = [
    (b"", "json"), (b"\xff\xfe\xfd", "json"), (b"{", "json"), (b"null", "json"),
    (b"[]", "json"), (b"42", "json"), (b'"text"', "json"), (b"{'v': 1}", "json"),
    (b"[" * 60_000, "json"), (b'{"a":' * 5000 + b"1" + b"}" * 5000, "json"),
    (b"\xc3\x28{}", "json"), (b"\x00" * 100, "json"),
    (b"[" * (1 << 20), "too_large"), (b" " * 70_000, "too_large"),
    (b'{"v":1,"t":NaN}', "schema"), (b'{"v":1,"t":Infinity}', "schema"),
    (b'{"v":2,"t":1795000000}', "schema"), (b'{"v":1,"t":"now"}', "schema"),
    (b'{"v":1,"t":1e400}', "schema"), (b'{"v":1,"t":100}', "schema"),
    (b"{}", "schema"), (b'{"v":1}', "schema"), (b"true", "json"), (b"[1,2,3]", "json"),
    (b'{"v":1,"t":1795000000,"unknown":1}', "schema"), (b"{" * 30_000, "json"),
    (b'"\\ud800"', "json"), (b"1e400", "json"), (b"-", "json"),
    (b'{"v":true,"t":1795000000}', "schema"), (b'{"v":"1","t":1795000000}', "schema"),
    (b'{"v":1,"t":1795000000', "json"), (b'{"v":1,"t":1795000000}}', "json"),
    (b'{"v":1,"t":[1795000000]}', "schema"), (b'{"v":1,"t":{"$gt":0}}', "schema"),
]


def corpus() -> list[tuple[str, bytes, str, str]]:
    """(topic kind, payload, source, reason); topics are filled in by the caller."""
    out: list[tuple[str, bytes, str, str]] = []
    for kind in ("telemetry", "ack", "zone"):
        out += [(kind, p, "mqtt", r) for p, r in GENERIC]
    for server in SERVERS:
        t = f"telemetry:{server}"
        other = SERVERS[(SERVERS.index(server) + 1) % len(SERVERS)]
        out += [
            (t, j(telemetry(server))[:-7], "mqtt", "json"),                   # truncated
            (t, j(telemetry(server, gpus=_gpus(power_w=-1.0))), "mqtt", "schema"),
            (t, j(telemetry(server, seq="1")), "mqtt", "schema"),
            (t, j(telemetry(server, seq=2**64)), "mqtt", "schema"),
            (t, j(telemetry(server, server="x" * 5000)), "mqtt", "schema"),
            (t, j(telemetry(server, server="RIG-S01\u202e")), "mqtt", "schema"),
            (t, j(telemetry(server, extra=1)), "mqtt", "schema"),
            (t, j(telemetry(server, gpus=_gpus(65))), "mqtt", "schema"),
            (t, j(telemetry(server, t=time.time() + 3600)), "mqtt", "future"),
            (t, j(telemetry(server, gpus="x" * (1 << 20))), "mqtt", "too_large"),
            (t, j(telemetry(other)), "mqtt", "wrong_server"),
            (t, j(telemetry(server, gpus=_gpus(1))), "telemetry", "implausible_agent"),
            (t, j(telemetry(server, gpus=_gpus(power_w=50_000.0))), "telemetry",
             "implausible_agent"),
        ]
        a = f"ack:{server}"
        out += [
            (a, j(ack(server, ok=False)), "mqtt", "schema"),                  # no reason
            (a, j(ack(server, enforced_w=[math_nan()])), "mqtt", "schema"),
            (a, j(ack(server, id="bad id with spaces")), "mqtt", "schema"),
            (a, j(ack(server)), "mqtt", "unknown_ack"),
            (a, j(ack(server, server=other)), "mqtt", "unknown_ack"),
        ]
    out += [
        ("zone", j(zone(inlet_c=500.0)), "mqtt", "schema"),
        ("zone", j(zone(units_ok=-1)), "mqtt", "schema"),
        ("zone", j(zone(t=time.time() + 3600)), "mqtt", "future"),
        ("zone", j(zone("NOT-LAB")), "mqtt", "wrong_zone"),
    ]
    return out


def math_nan() -> float:
    return float("nan")


HOST = b"Host: x\r\n"
AUTH = f"Authorization: Bearer {TOKEN}\r\n".encode()
#: (raw request, expected status)
HTTP: list[tuple[bytes, int]] = [
    (b"GET /status HTTP/1.1\r\n" + HOST + b"\r\n", 401),
    (b"GET /status HTTP/1.1\r\n" + HOST + b"Authorization: Bearer nope\r\n\r\n", 401),
    (b"GET /plan HTTP/1.1\r\n" + HOST + b"Authorization: Basic eDp5\r\n\r\n", 401),
    (b"GET /nope HTTP/1.1\r\n" + HOST + AUTH + b"\r\n", 404),
    (b"GET /status/../plan HTTP/1.1\r\n" + HOST + AUTH + b"\r\n", 404),
    (b"DELETE /status HTTP/1.1\r\n" + HOST + AUTH + b"\r\n", 405),
    (b"GET /ramp/start HTTP/1.1\r\n" + HOST + AUTH + b"\r\n", 405),
    (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400),
    (bytes(range(256)) + b"\n\n", 400),
    (b"GET /st\xc3\xa4tus HTTP/1.1\r\n" + HOST + AUTH + b"\r\n", 400),
    (b"GET /status HTTP/1.1\r\n\r\n", 400),
    (b"GET /status HTTP/1.1\r\n" + HOST + b"X-A: a\x00b\r\n\r\n", 400),
    (b"POST /ramp/abort HTTP/1.1\r\n" + HOST + AUTH + b"Content-Length: -1\r\n\r\n", 400),
    (b"POST /ramp/abort HTTP/1.1\r\n" + HOST + AUTH + b"Content-Length: 1\r\n"
     b"Content-Length: 2\r\n\r\nab", 400),
    (b"GET /status HTTP/1.1\r\nHost", 400),
    (b"POST /ramp/abort HTTP/1.1\r\n" + HOST + AUTH + b"Content-Length: 100000\r\n\r\n"
     + b"{" * 1000, 413),                  # a 413 at the head: the rest is never sent
    (b"POST /ramp/abort HTTP/1.1\r\n" + HOST + AUTH + b"Transfer-Encoding: chunked\r\n\r\n"
     b"zz\r\ngarbage\r\n", 501),
    (b"GET /status HTTP/1.1\r\n" + HOST + b"X-A: " + b"a" * 9000 + b"\r\n\r\n", 431),
    (b"GET /status HTTP/1.1\r\n" + HOST + b"".join(b"X-%d: a\r\n" % i for i in range(80))
     + b"\r\n", 431),
    (b"GET /status HTTP/2.0\r\n" + HOST + b"\r\n", 505),
]
SLOWLORIS = b"GET /status HTTP/1.1\r\nHost: x\r\nX-Slow: "


# ============================================================================================
# Helpers
# ============================================================================================
def _get(port: int, path: str) -> bytes:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return bytes(resp.read())


async def status(port: int) -> dict[str, Any]:
    return dict(json.loads(await asyncio.to_thread(_get, port, "/status")))


async def metrics(port: int) -> dict[tuple[str, str], float]:
    text = (await asyncio.to_thread(_get, port, "/metrics")).decode()
    return {(m["source"], m["reason"]): float(m["n"]) for m in re.finditer(
        r'^rampguard_inputs_rejected_total\{reason="(?P<reason>[^"]*)",'
        r'source="(?P<source>[^"]*)"\} (?P<n>\S+)$', text, re.M)}


def flat(rejected: dict[str, dict[str, int]]) -> Counter[tuple[str, str]]:
    return Counter({(s, r): n for s, reasons in rejected.items() for r, n in reasons.items()})


async def raw_http(port: int, data: bytes, *, half_close: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        try:
            writer.write(data)
            await writer.drain()
            if half_close:
                writer.write_eof()
        except ConnectionError:
            pass                    # the server answered and closed before all was sent
        async with asyncio.timeout(30):
            return await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def wait_for(what: str, check: Any, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last[0]:
            return last[1]
        await asyncio.sleep(0.25)
    raise AssertionError(f"{what}: last {last}")


async def _stop(proc: asyncio.subprocess.Process) -> tuple[int, str]:
    if proc.returncode is None:
        proc.terminate()
    _out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    return proc.returncode or 0, err.decode()


# ============================================================================================
# The test
# ============================================================================================
async def test_hostile_input_never_stops_the_service_and_every_rejection_is_counted(
        tmp_path: Path, private_broker: BrokerProcess) -> None:
    broker = private_broker.broker
    prefix = f"rampguard-test/{uuid.uuid4().hex[:8]}"
    config, _pdu, _meter = rig_on_free_ports(tmp_path, agent_prefix=prefix)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    sim, _ = await start_sim(config, "--speed", SPEED, "--mqtt", broker.url)
    api_port, metrics_port = free_port(), free_port()
    run = await start_rampguard("run", str(config), "--mqtt", broker.url, "--http",
                                f"127.0.0.1:{api_port}", "--metrics",
                                f"127.0.0.1:{metrics_port}", "--audit",
                                str(tmp_path / "audit.jsonl"), "--token-file", str(token_file),
                                "--issuer", "ctl-hostile", "--clock-speed", SPEED)
    try:
        assert run.stdout is not None
        line = await asyncio.wait_for(run.stdout.readline(), timeout=60)
        assert line, (await run.stderr.read()).decode() if run.stderr else "no output"
        assert json.loads(line)["event"] == "ready"

        async def ticking() -> tuple[bool, dict[str, Any]]:
            st = await status(api_port)
            return st["ticks"] > 0 and st["telemetry"]["accepted"] > 0, st
        before = await wait_for("the service never ticked with telemetry", ticking)
        base = flat(before["rejected"])

        # ---- hostile MQTT on every subscribed topic, through the broker
        topics = {f"telemetry:{s}": f"{prefix}/{s}/telemetry" for s in SERVERS}
        topics |= {f"ack:{s}": f"{prefix}/{s}/caps/ack" for s in SERVERS}
        topics["zone"] = f"rampguard/sim/zones/{ZONE}/telemetry"
        sent: Counter[tuple[str, str]] = Counter()
        items = corpus()
        messages: list[tuple[str, bytes]] = []
        for kind, payload, source, reason in items:
            if kind in ("telemetry", "ack"):      # a generic payload: on every such topic
                names = [k for k in topics if k.startswith(kind + ":")]
            else:
                names = [kind]
            for name in names:
                messages.append((topics[name], payload))
                sent[source, reason] += 1
        async with aiomqtt.Client(broker.host, broker.port,
                                  identifier=f"hostile-{uuid.uuid4().hex[:6]}") as client:
            for topic, payload in messages:
                await client.publish(topic, payload, qos=1)

            # ---- hostile HTTP, at once, a slowloris client among them
            slow = asyncio.create_task(raw_http(api_port, SLOWLORIS, half_close=False))
            answers = await asyncio.gather(*(raw_http(api_port, raw) for raw, _ in HTTP))
            for (raw, expected), answer in zip(HTTP, answers, strict=True):
                assert answer.startswith(b"HTTP/1.1 %d " % expected), (raw[:60], answer[:80])
                sent["http", str(expected)] += 1
            assert (await slow).startswith(b"HTTP/1.1 408 ")    # cut at the head deadline
            sent["http", "408"] += 1

            async def counted() -> tuple[bool, Counter[tuple[str, str]]]:
                now = flat((await status(api_port))["rejected"])
                now.subtract(base)
                grown = +now
                return all(grown[k] >= n for k, n in sent.items()), grown
            grown = await wait_for("the rejections were never all counted", counted)
            await asyncio.sleep(1.0)                   # nothing more trickles in afterwards
            grown = (await counted())[1]
            for key in sent:
                assert grown[key] == sent[key], (key, grown[key], sent[key])
            for (source, reason), n in grown.items():
                if source in ("mqtt", "http"):         # nothing but what was sent
                    assert sent[source, reason] == n, (source, reason, n)
            assert sum(n for (s, _), n in sent.items() if s == "mqtt") >= 300

            # ---- still up, still ticking, not SAFE
            after = await status(api_port)
            assert run.returncode is None
            assert after["mode"] != "SAFE", after
            assert after["ticks"] > before["ticks"]
            exported = await metrics(metrics_port)
            current = flat(after["rejected"])
            for key, n in sent.items():      # the exporter holds the counts of the last tick
                assert current[key] - base[key] == n
                assert exported.get(key, 0.0) >= base[key] + n - 0.5, (key, exported.get(key))

            # ---- good telemetry still gets in: with the simulator stopped, exactly ours
            await stop_sim(sim)

            async def quiet() -> tuple[bool, dict[str, Any]]:
                one = await status(api_port)
                await asyncio.sleep(1.0)
                two = await status(api_port)
                return two["mqtt"]["accepted"] == one["mqtt"]["accepted"], two
            settled = await wait_for("MQTT never went quiet after the simulator stopped", quiet)
            good = 20
            for k in range(good):
                await client.publish(topics["telemetry:RIG-S01"],
                                     j(telemetry("RIG-S01", seq=1000 + k)), qos=1)

            async def accepted() -> tuple[bool, dict[str, Any]]:
                st = await status(api_port)
                return st["mqtt"]["accepted"] >= settled["mqtt"]["accepted"] + good, st
            final = await wait_for("good telemetry never got in after the barrage", accepted)
            assert final["mqtt"]["accepted"] == settled["mqtt"]["accepted"] + good
            again = flat(final["rejected"])
            again.subtract(flat(settled["rejected"]))
            assert not any(n for (s, _), n in again.items() if s == "mqtt"), +again
            assert not again["telemetry", "implausible_agent"]
        assert final["ticks"] > after["ticks"]
        assert run.returncode is None
    finally:
        rc, err = await _stop(run)
        if sim.returncode is None:
            await stop_sim(sim)
    assert rc == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]


# ============================================================================================
# In process: a hostile Modbus meter, counted through the service
# ============================================================================================
async def test_a_hostile_modbus_meter_is_counted_by_the_service_which_keeps_ticking(
        tmp_path: Path) -> None:
    """The rig's panel meter is a hostile server (five replies of the wrong register count,
    five exception responses, then good ones); its PDU is not there at all. The service
    counts exactly those ten refused polls under ``modbus``, not the reads of the absent PDU
    (``NotConnected``: nothing was asked), keeps ticking, and exports the counts."""
    script = ["short_count"] * 5 + ["exception"] * 5
    async with HostileServer(PROFILE_METER, deque(), Random(5)) as meter:
        text = RIG_TEXT.replace("port = 15021", f"port = {meter.port}").replace(
            "port = 15020", f"port = {free_port()}")
        config = loads_hall_config(text)
        service = Service(config, compile_hall(config), ServiceOptions(
            mqtt_url=None, http_port=0, metrics_port=None, audit_path=tmp_path / "audit.jsonl",
            token=TOKEN, startup_wait_s=0.0, fsync=False))
        switch_s = sys.getswitchinterval()
        runner = asyncio.create_task(service.run())
        try:
            async def polled() -> tuple[bool, int]:
                assert not runner.done(), runner
                return meter.requests > 0 and service.ticks > 0, service.ticks
            await wait_for("the service never polled the meter", polled, 30)
            # while it runs, the decision thread is not kept waiting 5 ms for the interpreter
            assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_S)
            meter.script.extend(script)

            async def refused() -> tuple[bool, dict[str, int]]:
                assert not runner.done(), runner
                modbus = service.status()["rejected"]["modbus"]
                return not meter.script and sum(modbus.values()) >= len(script), modbus
            await wait_for("the hostile meter's replies were never counted", refused, 30)
            ticks = service.ticks
            assert service.api is not None
            answer = json.loads(await asyncio.to_thread(_get, service.api.port, "/status"))
            modbus = answer["rejected"]["modbus"]
            assert modbus.get("decode_error") == 5 and modbus.get("device_exception") == 5, modbus
            assert sum(v for k, v in modbus.items() if not k.startswith("quality_")) == 10
            assert service._poller is not None
            stats = [s for k, s in service._poller.stats.items() if k.endswith(f":{meter.port}/1")]
            assert stats and stats[0].ok > 0        # good polls after the hostile ones

            async def ticking() -> tuple[bool, int]:
                return service.ticks > ticks + 2, service.ticks
            await wait_for("the service stopped ticking", ticking, 30)
            text_metrics = service.metrics.render().decode()
            assert ('rampguard_inputs_rejected_total{reason="decode_error",source="modbus"} 5.0'
                    in text_metrics)
            # no tick failed (a tick that raises goes SAFE with "internal error"); SAFE for
            # the absent PDU's lost telemetry is the controller doing its job
            assert not any("internal error" in t["reason"]
                           for t in service.status()["transitions"])
        finally:
            service.stop()
            await asyncio.wait_for(runner, 30)
        assert sys.getswitchinterval() == pytest.approx(switch_s)     # given back on stop
