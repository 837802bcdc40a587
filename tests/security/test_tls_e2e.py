"""`rampguard sim serve`, `rampguard run`, `rampguard agent` and `rampguard probe` over mqtts://
to a Mosquitto that the test starts with TLS, a password file, ``allow_anonymous false`` and
the ACL of docs/security.md: the rig ramps with signed cap commands acked over TLS, and no
password, key or token appears in any output, the audit log or the metrics. A wrong password
is refused with one clear log line and no traceback."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from controller.audit import read_audit
from drivers.payloads import agent_command_key
from tests.security.conftest import TlsBroker, password
from tests.serve_helpers import (
    free_port,
    read_event,
    rig_on_free_ports,
    start_rampguard,
    start_sim,
    stop_sim,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

SPEED = "10"
KEY = "e2e-command-key-5f0c9a1d7e3b4c2a"
TOKEN = "e2e-api-token-9d8c7b6a"
ISSUER = "ctl-sec"


def _secret_file(path: Path, text: str) -> str:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return str(path)


def _http(url: str, method: str = "GET", token: str | None = TOKEN) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(url, method=method, headers=headers,
                                 data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=10) as resp:
        body = resp.read()
    return json.loads(body) if url.rsplit("/", 1)[-1] != "metrics" else body.decode()


async def _wait_stderr(proc: asyncio.subprocess.Process, text: str,
                       timeout_s: float = 90.0) -> str:
    """Read stderr until a line holds ``text``; returns what was read."""
    assert proc.stderr is not None
    seen = ""
    async with asyncio.timeout(timeout_s):
        while text not in seen:
            line = await proc.stderr.readline()
            if not line:
                break
            seen += line.decode()
    assert text in seen, seen
    return seen


async def _stop(proc: asyncio.subprocess.Process) -> tuple[str, str]:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    return out.decode(), err.decode()


def _acked_caps(audit: Path) -> list[dict[str, Any]]:
    records = [r.to_dict() for r in read_audit(audit)]
    caps = {r["seq"] for r in records if r.get("kind") == "intent"
            and r["action"]["type"] == "set_caps"}
    return [r for r in records if r.get("kind") == "result" and r["action_id"] in caps
            and r["ok"]]


def _mqtt(broker: TlsBroker, user: str, pw_file: str) -> list[str]:
    return ["--mqtt", broker.url(user), "--mqtt-ca", str(broker.ca),
            "--mqtt-password-file", pw_file]


async def test_the_rig_over_mqtts_with_signed_commands_and_no_secret_shown(
        tls_broker: TlsBroker, tmp_path: Path) -> None:
    config, _pdu, _meter = rig_on_free_ports(tmp_path)      # default prefix: the ACL's
    key = _secret_file(tmp_path / "command.key", KEY)
    # the real agent holds only its own key, derived from the hall's (rampguard agent-key)
    agent_key_text = agent_command_key(KEY.encode(), "RIG-S01").decode()
    agent_key = _secret_file(tmp_path / "RIG-S01.key", agent_key_text)
    token = _secret_file(tmp_path / "api.token", TOKEN)
    sim_pw = str(tls_broker.password_file("rampguard-sim"))
    ctl_pw = str(tls_broker.password_file("rampguard-controller"))
    agent_pw = str(tls_broker.password_file("RIG-S01"))
    outputs: list[str] = []
    # the simulated agents boot after the plan's first caps: the panel meter over-reading from
    # plant second 460 makes the controller shed, with caps that the running agents ack
    scenario = tmp_path / "overload.toml"
    scenario.write_text('name = "sec-e2e"\ndescription = "overload"\nsurvivable = true\n'
                        '[[faults]]\nkind = "meter-lying"\nnodes = "LAB-PANEL"\nfactor = 4.0\n'
                        'at_s = 460\nduration_s = 2000\n')
    sim, info = await start_sim(config, "--speed", SPEED, "--command-key-file", key,
                                "--scenario", str(scenario),
                                *_mqtt(tls_broker, "rampguard-sim", sim_pw))
    outputs.append(json.dumps(info))
    assert info["mqtt"] == tls_broker.url("rampguard-sim")
    audit = tmp_path / "audit.jsonl"
    port, metrics = free_port(), free_port()
    run = await start_rampguard(
        "run", str(config), *_mqtt(tls_broker, "rampguard-controller", ctl_pw),
        "--command-key-file", key, "--token-file", token, "--issuer", ISSUER,
        "--http", f"127.0.0.1:{port}", "--metrics", f"127.0.0.1:{metrics}",
        "--audit", str(audit), "--clock-speed", SPEED)
    agent = None
    try:
        ready = await read_event(run)
        outputs.append(json.dumps(ready))
        assert ready["token_file"] == token
        api = f"http://127.0.0.1:{port}"
        assert (await asyncio.to_thread(_http, f"{api}/ramp/start", "POST"))["accepted"]
        # servers' caps commanded, signed, and acked by the simulated agents over TLS
        # (the stand-ins verify the signature: unsigned or forged commands get no ack)
        servers = {f"RIG-S0{k}" for k in range(1, 5)}
        deadline = time.monotonic() + 240
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = await asyncio.to_thread(_http, f"{api}/status")
            if {a["readback"]["server"] for a in _acked_caps(audit)} >= {"RIG-S01", "RIG-S02"}:
                break
            await asyncio.sleep(0.5)
        acked = {a["readback"]["server"] for a in _acked_caps(audit)}
        assert len(acked) >= 2 and acked <= servers, status
        assert status["energized_servers"] >= 1
        outputs.append(await asyncio.to_thread(_http, f"http://127.0.0.1:{metrics}/metrics"))
        # a real agent logs in as its server, over TLS, and takes the key and issuer
        agent = await start_rampguard(
            "agent", "--backend", "fake", "--config", str(config), "--node", "RIG-S01",
            "--state-dir", str(tmp_path / "agent"), "--command-key-file", agent_key,
            "--issuer", ISSUER, *_mqtt(tls_broker, "RIG-S01", agent_pw))
        agent_ready = await read_event(agent, "ready")
        assert agent_ready["server"] == "RIG-S01"
        outputs.append(json.dumps(agent_ready))
        # the commissioning check reaches the broker over TLS too
        probe = await start_rampguard(
            "probe", str(config), "--json", "--timeout", "8",
            *_mqtt(tls_broker, "rampguard-controller", ctl_pw))
        probe_out, probe_err = await asyncio.wait_for(probe.communicate(), timeout=120)
        report = json.loads(probe_out)
        assert report["broker"]["connected"] is True, probe_out
        outputs += [probe_out.decode(), probe_err.decode()]
    finally:
        if agent is not None:
            outputs += list(await _stop(agent))
        outputs += list(await _stop(run))
        _rc, sim_out = await stop_sim(sim)
        outputs.append(sim_out)
        assert sim.stderr is not None
        outputs.append((await sim.stderr.read()).decode())
    assert run.returncode == 0, outputs[-3]
    outputs.append(audit.read_text())
    everything = "\n".join(outputs)
    assert "Traceback" not in everything
    for secret in (KEY, agent_key_text, TOKEN, password("rampguard-sim"),
                   password("rampguard-controller"), password("RIG-S01")):
        assert secret not in everything, secret


@pytest.mark.parametrize("command", ["run", "agent"])
async def test_a_wrong_password_is_refused_with_one_clear_line(
        tls_broker: TlsBroker, tmp_path: Path, command: str) -> None:
    config, _pdu, _meter = rig_on_free_ports(tmp_path)
    wrong = str(tls_broker.password_file("rampguard-controller", "not-the-password"))
    args = {"run": ["run", str(config), "--token-file",
                    _secret_file(tmp_path / "t", TOKEN), "--http", f"127.0.0.1:{free_port()}",
                    "--metrics", "off", "--audit", str(tmp_path / "a.jsonl"),
                    *_mqtt(tls_broker, "rampguard-controller", wrong)],
            "agent": ["agent", "--backend", "fake", "--node", "S1", "--insecure-accept-unsigned",
                      "--state-dir", str(tmp_path / "s"),
                      *_mqtt(tls_broker, "rampguard-controller", wrong)]}[command]
    proc = await start_rampguard(*args)
    try:
        err = await _wait_stderr(proc, "refused the credentials of user 'rampguard-controller'")
    finally:
        _out, rest = await _stop(proc)
    assert proc.returncode == 0
    assert "Traceback" not in err + rest and "not-the-password" not in err + rest
