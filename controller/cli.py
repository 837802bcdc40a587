"""The ``rampguard`` command line.

Exit codes, for every command (DESIGN.md): 0 success, 2 bad input (usage, config, file),
3 unsafe result, 1 internal error. A user's mistake is reported in one message naming what was
wrong and where; a traceback is printed only for our own bugs (exit code 1).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from controller.errors import ConfigError

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_UNSAFE = 3

log = logging.getLogger(__name__)

_DESCRIPTION = """\
rampguard keeps a GPU hall's breakers, PDUs, UPSs, feeds and cooling inside their limits
while the hall powers up, runs and sheds load.

exit codes: 0 success, 2 bad input (usage, config, file), 3 unsafe result, 1 internal error
"""


class _Parser(argparse.ArgumentParser):
    """argparse that exits with code 2 and a one-line hint, as it does, but never with 1."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="rampguard", description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    for add_command in _command_adders():
        add_command(sub)
    return parser


def _add_validate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    validate = sub.add_parser(
        "validate",
        help="check a hall config and summarize its capacity",
        description=(
            "Check a hall config (TOML) and print a summary: counts by kind, rated and continuous "
            "capacity per level of the electrical tree, and the worst case (every server at its "
            "maximum input, normally and after the loss of either feed) against every "
            "continuous limit, naming the worst nodes; cooling zones against their capacity "
            "with one unit lost; the least time each ramp-limited source needs; the "
            "workload-storm swing (every GPU idles at once, then all restart) at each source "
            "and UPS, with a warning for every largest load step or ramp limit it passes. A "
            "hall that is oversubscribed, or warned about, is still valid (the planner caps "
            "GPUs): exit 0. A config that "
            "cannot be used exits 2 and names each offending field."
        ),
    )
    validate.add_argument("config", metavar="CONFIG", help="path to the hall config (TOML)")
    validate.add_argument("--json", action="store_true", help="print the summary as JSON")
    validate.set_defaults(handler=_cmd_validate)


def _command_adders() -> tuple[Callable[[Any], None], ...]:
    """Every command of the CLI: each adds its own sub-parser with ``handler`` set.

    A command living in another module exposes ``add_command(sub)`` and is listed here.
    """
    from controller import (
        agent_command,
        audit_command,
        dryrun_command,
        plan_command,
        probe_command,
        run_command,
        sim_command,
    )

    return (_add_validate, plan_command.add_command, dryrun_command.add_command,
            sim_command.add_command, probe_command.add_command, audit_command.add_command,
            agent_command.add_command, agent_command.add_key_command, run_command.add_command)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("rampguard")
    except Exception:  # pragma: no cover - running from a source tree without metadata
        return "unknown"


def _cmd_validate(args: argparse.Namespace) -> int:
    from controller.config import load_hall_config
    from controller.storm import analyze_hall_storm
    from controller.summary import format_summary, summarize
    from controller.topology import compile_hall

    started = time.perf_counter()
    config = load_hall_config(args.config)
    topo = compile_hall(config, source=args.config)
    summary = summarize(topo, storm=analyze_hall_storm(config, topo))
    elapsed = time.perf_counter() - started
    if args.json:
        out = {"config": args.config, "valid": True, **summary.to_dict(),
               "validate_seconds": round(elapsed, 4)}
        print(json.dumps(out, indent=2))
    else:
        print(f"{args.config}: valid")
        print(format_summary(summary))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        print(f"rampguard: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("rampguard: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception:
        print("rampguard: internal error (a bug in rampguard, please report it):",
              file=sys.stderr)
        traceback.print_exc()
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
