"""``rampguard probe CONFIG [--json] [--timeout S] [--mqtt URL]``: the commissioning check.

Connects once to every endpoint the config's bindings name (Modbus meters and switched rack
PDUs; the MQTT broker with the node agents and MQTT meters), reads every binding once, and
reports per device whether it answered, its latency, the decoded values and their plausibility,
the outlets' relay states read back, and which agents answered. Read-only: nothing is written
to a device and nothing is published (docs/probe.md).

Exit codes: 0 when every endpoint answered and every value is plausible; 3 otherwise (a device
down, hung, answering an exception, lying; an agent silent whose server is not known off; the
broker unreachable); 2 for a bad config, a bad ``--timeout`` or ``--mqtt``; 1 for an internal
error. It returns within ``--timeout`` seconds of starting (loading and compiling the config
included; only the Python interpreter's own start-up comes before), even when a device accepts
the connection and never answers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import sys
import time
from typing import Any

EXIT_OK, EXIT_BAD_INPUT, EXIT_UNSAFE = 0, 2, 3
DEFAULT_TIMEOUT_S = 5.0
MAX_TIMEOUT_S = 600.0
DEFAULT_MQTT_URL = "mqtt://127.0.0.1:1883"

#: Loggers whose fault lines the report already says (shown again with ``-v``).
_QUIET_LOGGERS = ("pymodbus", "drivers", "controller.telemetry")


def _timeout_s(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT_S):
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds above 0 and at most {MAX_TIMEOUT_S:g}, got {text!r}")
    return value


def add_command(sub: Any) -> None:
    cmd = sub.add_parser(
        "probe", help="commissioning check: reach and read every bound endpoint once",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmd.add_argument("config", metavar="CONFIG", help="hall config (TOML)")
    cmd.add_argument("--json", action="store_true", help="print the report as JSON")
    cmd.add_argument("--timeout", metavar="S", type=_timeout_s, default=DEFAULT_TIMEOUT_S,
                     help=f"seconds for the whole probe (default {DEFAULT_TIMEOUT_S:g})")
    cmd.add_argument("--mqtt", metavar="URL", default=DEFAULT_MQTT_URL,
                     help="broker of the node agents and MQTT meters, mqtt://HOST[:PORT] or "
                          f"mqtts://... (default {DEFAULT_MQTT_URL}; the config names none)")
    from controller.credentials import add_mqtt_arguments

    add_mqtt_arguments(cmd)
    cmd.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    started_s = time.monotonic()        # the budget includes loading and compiling the config
    from controller.bindings import resolve_bindings
    from controller.config import load_hall_config
    from controller.credentials import mqtt_config
    from controller.errors import CredentialError
    from controller.probe import format_report, probe
    from controller.topology import compile_hall

    try:
        broker = mqtt_config(args.mqtt, args)
    except CredentialError as exc:
        print(f"rampguard: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    config = load_hall_config(args.config)
    topo = compile_hall(config, source=args.config)
    bindings = resolve_bindings(config, topo, source=args.config)
    if not args.verbose:
        for name in _QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL)
    report = asyncio.run(probe(config, topo, bindings, timeout_s=args.timeout,
                               mqtt_url=args.mqtt, mqtt_config=broker,
                               started_s=started_s))
    if args.json:
        print(json.dumps({"config": args.config, **report.to_dict()}, indent=2,
                         allow_nan=False))
    else:
        print(format_report(report, config=args.config))
    return EXIT_OK if report.ok else EXIT_UNSAFE
