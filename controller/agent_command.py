"""``rampguard agent``: the node agent of one GPU server (docs/agent.md).

It applies the controller's GPU power caps (NVML, or the fake backend of tests and rigs), reads
them back and acknowledges them over MQTT (docs/mqtt.md), publishes GPU telemetry every period,
keeps the last commanded caps on disk and restores them after a restart, a reboot or a driver
reload. With --config it learns its topics, GPU count and cap range from the hall config's agent
bindings. It takes only cap commands signed with its own key (--command-key-file or
RAMPGUARD_COMMAND_KEY; `rampguard agent-key` derives it from the hall's key) and issued by
--issuer (docs/security.md); a --read-only agent, which changes nothing, needs no key. It prints
one JSON line per event on stdout, the first {"event": "ready", ...} once it is connected to the
broker. SIGTERM or Ctrl-C stops it cleanly; with --backend fake, SIGUSR1 simulates a driver
reload (every limit back to its default).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_BAD_INPUT = 0, 2
DEFAULT_STATE_DIR = "/var/lib/rampguard/agent"
_NAME = re.compile(r"^[A-Za-z0-9_.:\-]{1,120}$")


def add_command(sub: Any) -> None:
    from controller.credentials import add_command_key_argument, add_mqtt_arguments

    agent = sub.add_parser("agent", help="the node agent: GPU power caps over NVML and MQTT",
                           description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    agent.add_argument("--node", required=True, metavar="ID",
                       help="this server's id (as in the hall config)")
    agent.add_argument("--config", metavar="CONFIG", default=None,
                       help="hall config (TOML): topics, GPU count and cap range from its "
                            "agent bindings")
    agent.add_argument("--mqtt", metavar="URL", default="mqtt://127.0.0.1:1883",
                       help="broker (default mqtt://127.0.0.1:1883)")
    agent.add_argument("--backend", choices=("nvml", "fake"), default="nvml",
                       help="GPU backend (default nvml)")
    agent.add_argument("--read-only", action="store_true",
                       help="report everything, change nothing (commands are refused)")
    agent.add_argument("--state-dir", metavar="DIR", default=DEFAULT_STATE_DIR,
                       help=f"where the last commanded caps are kept (default "
                            f"{DEFAULT_STATE_DIR})")
    agent.add_argument("--period-s", type=float, default=1.0,
                       help="telemetry and reconcile period (default 1 s)")
    agent.add_argument("--topic-prefix", default=None,
                       help="topic prefix without --config (default rampguard/agents/{server})")
    agent.add_argument("--issuer", default="rampguard",
                       help="the controller's name: the only issuer whose commands are taken "
                            "(default rampguard, as `rampguard run --issuer`)")
    add_command_key_argument(agent, required_for="required unless --read-only or "
                             "--insecure-accept-unsigned")
    agent.add_argument("--insecure-accept-unsigned", action="store_true",
                       help="take unsigned cap commands (a test rig on a closed network only)")
    add_mqtt_arguments(agent)
    fake = agent.add_argument_group("fake backend (without --config)")
    fake.add_argument("--fake-gpus", type=int, default=None, help="GPUs (default 8)")
    fake.add_argument("--fake-min-w", type=float, default=None,
                      help="lowest limit (default 200 W)")
    fake.add_argument("--fake-max-w", type=float, default=None,
                      help="highest and default limit (default 700 W)")
    agent.set_defaults(handler=_cmd_agent)


def add_key_command(sub: Any) -> None:
    from controller.credentials import add_command_key_argument

    cmd = sub.add_parser(
        "agent-key", help="print the cap-command key of one node's agent",
        description="Print the key that signs the cap commands of one server's agent, derived "
                    "from the hall's command key (HMAC-SHA256 of the server id; "
                    "docs/security.md): give each agent only its own key (its "
                    "--command-key-file), keep the hall's key on the controller. Example: "
                    "rampguard agent-key --node S1 --command-key-file hall.key > S1.key")
    cmd.add_argument("--node", required=True, metavar="ID",
                     help="the server's id (as in the hall config)")
    add_command_key_argument(cmd, required_for="required here: the hall's key")
    cmd.set_defaults(handler=_cmd_agent_key)


def _cmd_agent_key(args: argparse.Namespace) -> int:
    from controller.credentials import command_key
    from controller.errors import CredentialError
    from drivers.payloads import agent_command_key

    if not _NAME.match(args.node):
        return _bad(f"--node must be 1 to 120 letters, digits or _ . : -, got {args.node!r}",
                    "agent-key")
    try:
        key = command_key(args.command_key_file)
    except CredentialError as exc:
        return _bad(str(exc), "agent-key")
    if key is None:
        return _bad("the hall's command key is needed: --command-key-file FILE or "
                    "RAMPGUARD_COMMAND_KEY", "agent-key")
    print(agent_command_key(key, args.node).decode("ascii"))
    return EXIT_OK


def _bad(message: str, command: str = "agent") -> int:
    print(f"rampguard {command}: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _cmd_agent(args: argparse.Namespace) -> int:
    from controller.agent import AgentConfig
    from controller.agent_state import state_path
    from controller.credentials import command_key, mqtt_config
    from controller.errors import CredentialError
    from drivers.caps import AgentSpec
    from drivers.payloads import AgentTopics

    server = args.node
    if not _NAME.match(server):
        return _bad(f"--node must be 1 to 120 letters, digits or _ . : -, got {server!r}")
    if not (math.isfinite(args.period_s) and 0.05 <= args.period_s <= 3600):
        return _bad(f"--period-s must be between 0.05 and 3600, got {args.period_s}")
    if not args.mqtt.startswith(("mqtt://", "mqtts://")):
        return _bad(f"--mqtt must be mqtt://HOST[:PORT] or mqtts://..., got {args.mqtt!r}")
    if not _NAME.match(args.issuer):
        return _bad(f"--issuer must be 1 to 120 letters, digits or _ . : -, got {args.issuer!r}")
    try:
        mqtt = mqtt_config(args.mqtt, args, client_id=f"rampguard-agent-{server}")
        key = command_key(args.command_key_file)
    except CredentialError as exc:
        return _bad(str(exc))
    expected: AgentSpec | None = None
    if args.config is not None:
        if args.topic_prefix is not None:
            return _bad("--topic-prefix and --config exclude each other (the config's "
                        "bindings give the prefix)")
        expected = _spec_from_config(args.config, server)
        topics = expected.topics
    else:
        try:
            topics = AgentTopics.for_server(args.topic_prefix or "rampguard/agents/{server}",
                                            server)
        except ValueError as exc:
            return _bad(f"--topic-prefix: {exc}")
    backend = _backend(args, expected)
    if isinstance(backend, str):
        return _bad(backend)
    state = _state_dir(Path(args.state_dir), read_only=args.read_only)
    if isinstance(state, str):
        return _bad(state)
    if key is None and not (args.read_only or args.insecure_accept_unsigned):
        return _bad("the cap-command key is needed: --command-key-file FILE or "
                    "RAMPGUARD_COMMAND_KEY (or --insecure-accept-unsigned on a test rig)")
    if key is None and args.insecure_accept_unsigned:
        print("rampguard agent: warning: taking unsigned cap commands "
              "(--insecure-accept-unsigned)", file=sys.stderr)
    config = AgentConfig(server=server, topics=topics, mqtt=mqtt,
                         state_path=state_path(state, server), read_only=args.read_only,
                         period_s=args.period_s, expected=expected, command_key=key,
                         issuer=args.issuer)
    return asyncio.run(_run(config, backend))


def _spec_from_config(path: str, server: str) -> Any:
    """The agent binding of ``server`` in the hall config (ConfigError: exit 2 by the CLI)."""
    from controller.bindings import resolve_bindings
    from controller.config import load_hall_config
    from controller.errors import ConfigError, ConfigIssue
    from controller.topology import compile_hall

    config = load_hall_config(path)
    topo = compile_hall(config, source=path)
    bindings = resolve_bindings(config, topo, source=path)
    for spec in bindings.agents:
        if spec.server == server:
            return spec
    known = [s.server for s in bindings.agents]
    hint = ", ".join(known[:5]) + (" ..." if len(known) > 5 else "") if known else "none"
    where = "" if server in topo.server_id else " (no such server)"
    raise ConfigError(path, [ConfigIssue("bindings.agents", f"no agent binding for server "
                                         f"{server!r}{where}; bound servers: {hint}")])


def _backend(args: argparse.Namespace, expected: Any) -> Any:
    from drivers.gpus import FakeGpuBackend, NvmlBackend

    fake_args = (args.fake_gpus, args.fake_min_w, args.fake_max_w)
    if args.backend == "nvml":
        if any(v is not None for v in fake_args):
            return "--fake-* options need --backend fake"
        return NvmlBackend()
    if expected is not None and any(v is not None for v in fake_args):
        return "--fake-* options and --config exclude each other (the config gives the GPUs)"
    if expected is not None:
        gpus, lo, hi = expected.gpus, expected.gpu_min_cap_w, expected.gpu_max_w
    else:
        gpus = 8 if args.fake_gpus is None else args.fake_gpus
        lo = 200.0 if args.fake_min_w is None else args.fake_min_w
        hi = 700.0 if args.fake_max_w is None else args.fake_max_w
    if not 1 <= gpus <= 64:
        return f"--fake-gpus must be 1 to 64, got {gpus}"
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi <= 1e5):
        return f"need 0 < --fake-min-w <= --fake-max-w <= 100000, got {lo:g} and {hi:g}"
    return FakeGpuBackend(gpus=gpus, min_w=lo, max_w=hi)


def _state_dir(path: Path, *, read_only: bool) -> Path | str:
    """The state directory, created if needed (not in read-only mode, which writes nothing)."""
    if read_only:
        if path.exists() and not path.is_dir():
            return f"--state-dir {path} is not a directory"
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot use --state-dir {path}: {exc.strerror or exc}"
    if not path.is_dir():
        return f"--state-dir {path} is not a directory"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"cannot write to --state-dir {path} (permission denied)"
    return path


def _print_event(event: dict[str, object]) -> None:
    print(json.dumps(event), flush=True)


async def _run(config: Any, backend: Any) -> int:
    from controller.agent import NodeAgent
    from controller.errors import StateFileError
    from drivers.errors import GpuError
    from drivers.gpus import FakeGpuBackend

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = [signal.SIGTERM, signal.SIGINT]
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    if isinstance(backend, FakeGpuBackend):
        loop.add_signal_handler(signal.SIGUSR1, backend.simulate_reload)
        signals.append(signal.SIGUSR1)
    try:
        async with NodeAgent(config, backend, on_event=_print_event) as agent:
            # a stop request ends the wait, then the agent leaves normally: offline status,
            # backend closed (cancelling it instead would cut the goodbye short)
            running = asyncio.create_task(agent.wait(), name="agent")
            stopping = asyncio.create_task(stop.wait(), name="agent stop")
            try:
                await asyncio.wait((running, stopping), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (running, stopping):
                    task.cancel()
                await asyncio.gather(running, stopping, return_exceptions=True)
            if running.done() and not running.cancelled() and running.exception():
                raise running.exception()  # type: ignore[misc]
    except GpuError as exc:
        return _bad(f"cannot use the {backend.name} backend: {exc}")
    except StateFileError as exc:
        return _bad(f"state file {exc}")
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    _print_event({"event": "stopped", "server": config.server})
    return EXIT_OK
