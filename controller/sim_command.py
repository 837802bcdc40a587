"""``rampguard sim serve``: the simulated hall behind real Modbus TCP and MQTT endpoints.

The hardware-in-the-loop stand-in: the plant runs paced to the wall clock at ``--speed``, its
meters and switched PDUs answer Modbus TCP on the ports of the config's bindings (bound to
127.0.0.1 unless ``--bind`` says otherwise), and with ``--mqtt`` its node agents and zone
sensors publish on the broker and accept cap commands exactly as real agents do. SIGTERM or
Ctrl-C stops it cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import sys
from typing import Any

EXIT_OK, EXIT_BAD_INPUT = 0, 2


def add_command(sub: Any) -> None:
    from controller.cli import _Parser
    from controller.credentials import add_command_key_argument, add_mqtt_arguments

    sim = sub.add_parser("sim", help="the simulator's hardware-in-the-loop endpoints",
                         description=__doc__)
    simsub = sim.add_subparsers(dest="sim_command", metavar="SIM_COMMAND", required=True,
                                parser_class=_Parser)
    serve = simsub.add_parser(
        "serve", help="serve a simulated hall over Modbus TCP and MQTT",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("config", metavar="CONFIG", help="hall config (TOML)")
    serve.add_argument("--speed", type=float, default=1.0,
                       help="plant seconds per wall second (default 1)")
    serve.add_argument("--bind", default="127.0.0.1",
                       help="address the Modbus servers listen on (default 127.0.0.1)")
    serve.add_argument("--mqtt", metavar="URL", default=None,
                       help="broker for the simulated agents, e.g. mqtt://127.0.0.1:1883")
    serve.add_argument("--dt-s", type=float, default=0.1, help="plant step (default 0.1 s)")
    serve.add_argument("--seed", type=int, default=0, help="seed of the plant's draws")
    serve.add_argument("--duration-s", type=float, default=None,
                       help="stop after this many wall seconds (default: run until stopped)")
    serve.add_argument("--scenario", metavar="NAME|FILE", default=None,
                       help="inject a fault scenario (named, or a TOML file) at its times, "
                            "counted in plant seconds from the start")
    serve.add_argument("--external-agents", action="store_true",
                       help="run no simulated node agents: real `rampguard agent` processes "
                            "answer, and the plant follows the caps they acknowledge")
    serve.add_argument("--scenario-on-signal", action="store_true",
                       help="count the scenario's times from when the simulator receives "
                            "SIGUSR1, not from the start (inject faults mid-ramp)")
    serve.add_argument("--record", metavar="PATH", default=None,
                       help="append what the plant was made to do to PATH, one JSON line "
                            "each: every coil write, every cap command applied, and a summary "
                            "(trips, violations, open breakers) when it stops")
    serve.add_argument("--stats-s", type=float, default=None, metavar="SECONDS",
                       help="print a JSON line of counters (steps, overruns, lag, telemetry "
                            "published) every SECONDS of plant time (default: none)")
    add_command_key_argument(serve, required_for="when given, the simulated agents take only "
                             "commands signed with it (default: any)")
    add_mqtt_arguments(serve)
    serve.set_defaults(handler=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    from controller.config import load_hall_config
    from controller.topology import compile_hall

    for name in ("speed", "dt_s", "stats_s"):
        value = getattr(args, name)
        if name == "stats_s" and value is None:
            continue
        if not (math.isfinite(value) and value > 0):
            print(f"rampguard: --{name.replace('_', '-')} must be a positive number, "
                  f"got {value}", file=sys.stderr)
            return EXIT_BAD_INPUT
    if args.mqtt is not None and not args.mqtt.startswith(("mqtt://", "mqtts://")):
        print(f"rampguard: --mqtt must be mqtt://HOST[:PORT] or mqtts://..., got {args.mqtt!r}",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    from controller.credentials import command_key, mqtt_config
    from controller.errors import CredentialError

    try:
        args.mqtt_config = None if args.mqtt is None else mqtt_config(args.mqtt, args)
        args.key = command_key(args.command_key_file)
    except CredentialError as exc:
        print(f"rampguard: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from sim import ScenarioError, resolve_scenario

    try:
        args.scenario_obj = resolve_scenario(args.scenario) if args.scenario else None
    except ScenarioError as exc:
        print(f"rampguard: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    config = load_hall_config(args.config)
    topo = compile_hall(config, source=args.config)
    record_file = None
    if args.record is not None:
        try:
            record_file = open(args.record, "a", encoding="utf-8")
        except OSError as exc:
            print(f"rampguard: --record {args.record}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
    try:
        return asyncio.run(_serve(args, config, topo, record_file))
    finally:
        if record_file is not None:
            record_file.close()


async def _serve(args: argparse.Namespace, config: Any, topo: Any,
                 record_file: Any = None) -> int:
    from controller import heap
    from sim.hil import serve

    def record(event: dict[str, Any]) -> None:
        record_file.write(json.dumps(event) + "\n")
        record_file.flush()     # each line reaches the file as it happens (a test reads it)

    def ready(info: dict[str, object]) -> None:
        heap.settle()           # the plant and the endpoints live as long as the process
        print(json.dumps({"event": "serving", **info}), flush=True)

    def stats(info: dict[str, object]) -> None:
        print(json.dumps({"event": "stats", **info}), flush=True)

    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    assert task is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    armed = asyncio.Event() if args.scenario_on_signal else None
    if armed is not None:
        loop.add_signal_handler(signal.SIGUSR1, armed.set)
    try:
        work = serve(config, topo, source=args.config, speed=args.speed, dt_s=args.dt_s,
                     bind=args.bind, mqtt_url=args.mqtt, seed=args.seed, ready=ready,
                     scenario=getattr(args, "scenario_obj", None),
                     external_agents=args.external_agents,
                     record=record if record_file is not None else None,
                     scenario_armed=armed,
                     stats=stats if args.stats_s is not None else None,
                     stats_every_s=args.stats_s or 10.0,
                     mqtt_config=getattr(args, "mqtt_config", None),
                     command_key=getattr(args, "key", None))
        if args.duration_s is not None:
            try:
                await asyncio.wait_for(work, timeout=args.duration_s)
            except TimeoutError:
                pass
        else:
            await work
    except asyncio.CancelledError:
        if task.cancelling() == 0:  # pragma: no cover - cancelled by someone else
            raise
        task.uncancel()
    except OSError as exc:
        print(f"rampguard: cannot serve: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            loop.remove_signal_handler(sig)
    print(json.dumps({"event": "stopped"}), flush=True)
    return EXIT_OK
