"""Helpers for tests that run `rampguard` commands as processes: the rig config moved onto free
ports (and, for MQTT, onto a topic prefix of the test's own), and `rampguard sim serve` started
and stopped as a test engineer runs it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RIG = ROOT / "configs" / "rig.toml"
RIG_AGENT_PREFIX = 'topic_prefix = "rampguard/agents/{server}"'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rig_on_free_ports(tmp_path: Path, agent_prefix: str | None = None) -> tuple[Path, int, int]:
    """A copy of configs/rig.toml whose PDU and panel meter listen on free ports, and whose
    agents use ``agent_prefix/{server}`` when given: (path, PDU port, meter port)."""
    pdu_port, meter_port = free_port(), free_port()
    text = RIG.read_text()
    assert "port = 15020" in text and "port = 15021" in text and RIG_AGENT_PREFIX in text
    text = text.replace("port = 15020", f"port = {pdu_port}").replace(
        "port = 15021", f"port = {meter_port}")
    if agent_prefix is not None:
        text = text.replace(RIG_AGENT_PREFIX, f'topic_prefix = "{agent_prefix}/{{server}}"')
    path = tmp_path / "rig.toml"
    path.write_text(text)
    return path, pdu_port, meter_port


async def start_rampguard(*args: str, env: dict[str, str] | None = None
                          ) -> asyncio.subprocess.Process:
    """`rampguard ARGS...` as a process, with ``env`` added to this one's environment."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "controller.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


async def start_sim(config: Path, *extra: str) -> tuple[asyncio.subprocess.Process,
                                                        dict[str, Any]]:
    """`rampguard sim serve CONFIG ...`, returned once it prints that it listens."""
    proc = await start_rampguard("sim", "serve", str(config), *extra)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
    assert line, (await proc.stderr.read()).decode() if proc.stderr else "no output"
    return proc, json.loads(line)


async def stop_sim(proc: asyncio.subprocess.Process) -> tuple[int, str]:
    """SIGTERM, then its exit code and the rest of its output."""
    proc.send_signal(signal.SIGTERM)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    return proc.returncode or 0, out.decode()


async def read_event(proc: asyncio.subprocess.Process, name: str | None = None,
                     timeout_s: float = 90.0) -> dict[str, Any]:
    """The next JSON line ``proc`` prints on stdout whose ``event`` is ``name`` (None: the
    next line); fails with its stderr when it stops first."""
    assert proc.stdout is not None
    async with asyncio.timeout(timeout_s):
        while True:
            line = await proc.stdout.readline()
            if not line:
                err = await proc.stderr.read() if proc.stderr else b""
                raise AssertionError(f"no {name or 'line'!r} event; stderr: {err.decode()}")
            event = json.loads(line)
            if name is None or event.get("event") == name:
                return dict(event)
