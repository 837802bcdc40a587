"""`rampguard run` never serves the operator API without a token: without --token-file and
RAMPGUARD_API_TOKEN it generates one into a file of mode 0600 and names the file (never the
token) in the ready line and the logs; every route but /healthz refuses a request without it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.serve_helpers import ROOT, free_port

RIG = ROOT / "configs" / "rig.toml"


def _call(port: int, path: str, token: str | None, method: str = "GET") -> int:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=b"" if method == "POST" else None, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


async def _run(audit: Path, port: int, *extra: str,
               env: dict[str, str]) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "controller.cli", "run", str(RIG), "--mqtt", "none",
        "--http", f"127.0.0.1:{port}", "--metrics", "off", "--audit", str(audit),
        "--startup-wait-s", "0", *extra, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=ROOT, env=env)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
    assert line, (await proc.stderr.read()).decode() if proc.stderr else "no output"
    return proc, json.loads(line)


async def _stop(proc: asyncio.subprocess.Process) -> tuple[str, str]:
    proc.send_signal(signal.SIGTERM)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0, err.decode()
    return out.decode(), err.decode()


def _private(path: Path) -> tuple[int, str]:
    """(permission bits, stripped text) of a file."""
    return stat.S_IMODE(os.stat(path).st_mode), path.read_text().strip()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAMPGUARD_")}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


async def test_without_a_token_one_is_generated_into_a_private_file(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    port = free_port()
    proc, ready = await _run(audit, port, env=_env())
    try:
        token_file = Path(ready["token_file"])
        assert token_file == tmp_path / "audit.jsonl.token"
        mode, token = _private(token_file)
        assert mode == 0o600
        assert len(token) >= 40
        for path, method in [("/status", "GET"), ("/plan", "GET"), ("/ramp/start", "POST"),
                             ("/ramp/abort", "POST"), ("/nope", "GET")]:
            assert await asyncio.to_thread(_call, port, path, None, method) == 401
            assert await asyncio.to_thread(_call, port, path, token[:-1], method) == 401
        assert await asyncio.to_thread(_call, port, "/healthz", None) == 200
        assert await asyncio.to_thread(_call, port, "/status", token) == 200
    finally:
        out, err = await _stop(proc)
    assert token not in out + err + audit.read_text()
    assert str(token_file) in err                  # the log names the file
    # a restart writes a new token: the old one no longer opens the API
    proc, ready = await _run(audit, port, env=_env())
    try:
        _mode, new = _private(Path(ready["token_file"]))
        assert new != token
        assert await asyncio.to_thread(_call, port, "/status", token) == 401
        assert await asyncio.to_thread(_call, port, "/status", new) == 200
    finally:
        await _stop(proc)


async def test_a_token_from_a_file_or_the_environment(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    port = free_port()
    token_file = tmp_path / "api.token"
    token_file.write_text("from-a-file-0123456789\n")
    token_file.chmod(0o600)
    proc, ready = await _run(audit, port, "--token-file", str(token_file), env=_env())
    try:
        assert ready["token_file"] == str(token_file)
        assert await asyncio.to_thread(_call, port, "/status", "from-a-file-0123456789") == 200
        assert await asyncio.to_thread(_call, port, "/status", None) == 401
    finally:
        out, err = await _stop(proc)
    assert "from-a-file-0123456789" not in out + err
    assert not (tmp_path / "audit.jsonl.token").exists()
    proc, ready = await _run(audit, port, env=_env(RAMPGUARD_API_TOKEN="from-the-env-42"))
    try:
        assert ready["token_file"] is None
        assert await asyncio.to_thread(_call, port, "/status", "from-the-env-42") == 200
        assert await asyncio.to_thread(_call, port, "/status", None) == 401
    finally:
        out, err = await _stop(proc)
    assert "from-the-env-42" not in out + err
