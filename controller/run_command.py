"""``rampguard run``: the controller service (controller/service.py).

Exit codes: 0 stopped cleanly (SIGTERM, Ctrl-C), 2 bad input (config, addresses, token file,
an audit log that cannot be opened), 1 internal error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.cli import EXIT_BAD_INPUT, EXIT_OK
from controller.credentials import add_command_key_argument, add_mqtt_arguments

_DESCRIPTION = """\
Run the controller service against the hall a config describes: poll every bound Modbus meter
and switched rack PDU, take node agents' telemetry over MQTT, and every control period decide
(the decision core of the dry run), act (outlets by Modbus coil writes confirmed by read-back,
GPU caps by MQTT commands) and audit (every action is made durable in the audit log before it
is sent). The operator API (GET /status, GET /plan, POST /ramp/start|pause|resume|abort) and
the Prometheus metrics listen on 127.0.0.1 unless told otherwise; the API needs a bearer token
(--token-file or RAMPGUARD_API_TOKEN; without either a random one is written, mode 0600, to
AUDIT.token, and the ready line names that file). It prints one JSON line when
every endpoint is up, logs JSON lines on stderr, and stops cleanly on SIGTERM or Ctrl-C,
leaving the hardware as it is. On start it rebuilds its state from read-backs and resumes a
ramp the audit log shows active (docs/operations.md).
"""


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run the controller service",
                       description=_DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", metavar="CONFIG", help="hall config (TOML)")
    p.add_argument("--mqtt", metavar="URL", default="mqtt://127.0.0.1:1883",
                   help="broker (default mqtt://127.0.0.1:1883; 'none': no MQTT)")
    p.add_argument("--http", metavar="ADDR:PORT", default="127.0.0.1:8080",
                   help="operator API address (default 127.0.0.1:8080; port 0: any free one)")
    p.add_argument("--metrics", metavar="ADDR:PORT", default="127.0.0.1:9108",
                   help="Prometheus exporter address (default 127.0.0.1:9108; 'off': none)")
    p.add_argument("--audit", metavar="PATH", default="rampguard-audit.jsonl",
                   help="audit log (JSON Lines, appended; default rampguard-audit.jsonl)")
    p.add_argument("--token-file", metavar="FILE", default=None,
                   help="operator API bearer token, read from this file (else the environment "
                        "variable RAMPGUARD_API_TOKEN; else a random one is written to "
                        "AUDIT.token, mode 0600)")
    p.add_argument("--issuer", default="rampguard",
                   help="the controller's name in cap commands and its status (default "
                        "rampguard)")
    p.add_argument("--startup-wait-s", type=float, default=10.0,
                   help="how long the first decision waits for the outlets' read-backs "
                        "(default 10 s)")
    p.add_argument("--clock-speed", type=float, default=1.0,
                   help="run the controller's clock this many times faster than the wall "
                        "clock: only against `rampguard sim serve --speed` with the same "
                        "factor (default 1: real hardware)")
    add_command_key_argument(p, required_for="without one, cap commands go out unsigned and "
                             "agents that verify (the default) ignore them")
    add_mqtt_arguments(p)
    p.set_defaults(handler=_cmd_run)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"t": round(record.created, 3), "level": record.levelname,
                               "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def _address(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{what} must be ADDR:PORT with a port 0-65535, got {text!r}")
    return host.strip("[]"), int(port)


def _err(message: str) -> int:
    print(f"rampguard run: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


#: Test-only hook (docs/campaign-hil.md): the name of a file holding a number of seconds
#: (signed) added to the service's wall clock, re-read whenever the file changes; a test steps
#: the wall clock as NTP would by rewriting it. The monotonic clock (ticks, deadlines,
#: staleness) is untouched. Read here and nowhere else.
WALL_OFFSET_ENV = "RAMPGUARD_TEST_WALL_OFFSET_FILE"


def _wall_clock(path: str) -> Callable[[], float]:
    """``time.time()`` plus the offset in ``path`` (0 while it is missing or unreadable)."""
    seen: list[Any] = [None, 0.0]      # (mtime_ns, size), offset

    def wall() -> float:
        try:
            st = os.stat(path)
            key = (st.st_mtime_ns, st.st_size)
            if key != seen[0]:
                seen[0], seen[1] = key, float(Path(path).read_text().strip() or 0.0)
        except (OSError, ValueError):
            pass
        return time.time() + seen[1]
    return wall


def _cmd_run(args: argparse.Namespace) -> int:
    from controller.config import load_hall_config
    from controller.credentials import command_key, mqtt_config, operator_token
    from controller.errors import AuditError, CredentialError
    from controller.operator_api import check_token
    from controller.service import Service, ServiceOptions, install_signal_handlers, ready_line
    from controller.topology import compile_hall

    try:
        http = _address(args.http, "--http")
        metrics = None if args.metrics == "off" else _address(args.metrics, "--metrics")
    except ValueError as exc:
        return _err(str(exc))
    if not (math.isfinite(args.clock_speed) and 0 < args.clock_speed <= 1000):
        return _err(f"--clock-speed must be in (0, 1000], got {args.clock_speed}")
    if not (math.isfinite(args.startup_wait_s) and args.startup_wait_s >= 0):
        return _err(f"--startup-wait-s must be >= 0, got {args.startup_wait_s}")
    mqtt = None if args.mqtt == "none" else args.mqtt
    try:
        broker = None if mqtt is None else mqtt_config(
            mqtt, args, client_id=f"{args.issuer}-controller")
        key = command_key(args.command_key_file)
    except CredentialError as exc:
        return _err(str(exc))
    wall_clock = _wall_clock(os.environ[WALL_OFFSET_ENV]) if os.environ.get(
        WALL_OFFSET_ENV) else time.time
    config = load_hall_config(args.config)
    topo = compile_hall(config, source=args.config)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # our drivers report faults once
    try:
        token = operator_token(args.token_file, Path(args.audit))
        check_token(token.token)
    except CredentialError as exc:
        return _err(str(exc))
    except ValueError as exc:
        return _err(f"{args.token_file or 'RAMPGUARD_API_TOKEN'}: {exc}")
    token_file = None if token.path is None else str(token.path)
    log = logging.getLogger(__name__)
    if token.source == "generated":
        log.warning("no --token-file and no RAMPGUARD_API_TOKEN: the operator API token was "
                    "generated into %s (mode 0600)", token_file)
    else:
        log.info("operator API token from %s", token_file or "RAMPGUARD_API_TOKEN")
    if key is None and mqtt is not None:
        log.warning("no --command-key-file and no RAMPGUARD_COMMAND_KEY: cap commands go out "
                    "unsigned, and agents that verify signatures ignore them")
    options = ServiceOptions(
        mqtt_url=mqtt, mqtt=broker, http_host=http[0], http_port=http[1],
        metrics_host=metrics[0] if metrics else "127.0.0.1",
        metrics_port=metrics[1] if metrics else None,
        audit_path=Path(args.audit), token=token.token, token_file=token_file, command_key=key,
        issuer=args.issuer, startup_wait_s=args.startup_wait_s, clock_speed=args.clock_speed,
        settle_heap=True)

    def ready(info: dict[str, Any]) -> None:
        print(ready_line(info), flush=True)

    service = Service(config, topo, options, source=args.config, wall_clock=wall_clock,
                      on_ready=ready)
    if wall_clock is not time.time:
        logging.getLogger(__name__).warning("test hook %s=%r: the wall clock may step",
                                            WALL_OFFSET_ENV, os.environ[WALL_OFFSET_ENV])

    async def main() -> None:
        install_signal_handlers(service)
        await service.run()

    started = time.monotonic()
    try:
        asyncio.run(main())
    except AuditError as exc:
        return _err(str(exc))
    except OSError as exc:  # an address in use, a port we may not bind
        return _err(f"cannot start: {exc}")
    log.info("stopped after %.1f s", time.monotonic() - started)
    return EXIT_OK
