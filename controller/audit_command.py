"""``rampguard audit PATH [--json] [--kind K] [--since-seq N] [--tail N]``: print an audit log.

One line per record: seq, wall time (ISO 8601, UTC), kind, then for an intent the action and
its targets, the reason and the result (``-> ok (seq 13)``, or ``NO RESULT (crash?)`` when no
result record names it); for a result the action id, ok, the read-back and the detail; for a
state change ``FROM -> TO`` and the reason. ``--json`` prints the records as JSON lines instead
(an intent gets ``result_seq``: the seq of its result, or null). The command only reads: it
never repairs the file (the service does that when it opens the log).

Exit codes: 0 when every line is a record (a torn last record, the trace of a crash, is reported
and ignored); 2 when the file is missing, unreadable or not an audit log, or some of its lines
are corrupt (they are reported on stderr with their line numbers; the good records are still
printed).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import deque
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from controller.audit import KINDS, AuditReader, AuditRecord
from controller.errors import AuditReadError

EXIT_OK = 0
EXIT_BAD_INPUT = 2

#: Longest text printed for one value in the human format, and how many list items are shown.
_MAX_VALUE_CHARS = 120
_MAX_ITEMS = 3
#: Corrupt lines named one by one on stderr before the rest are only counted.
_MAX_CORRUPT_SHOWN = 20


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``audit`` on the CLI's sub-parsers."""
    cmd = sub.add_parser(
        "audit",
        help="print the controller's audit log",
        description=(
            "Print an audit log written by the controller: every action with its reason and "
            "read-back result, state changes and alarms, one line per record. Intents without "
            "a result (the controller stopped between sending and confirming: reconciled "
            "against read-backs at restart) are marked NO RESULT (crash?). Exit 0, or 2 when "
            "the file is missing, not an audit log, or has corrupt lines (reported on stderr)."
        ),
    )
    cmd.add_argument("path", metavar="PATH", help="the audit log (JSON Lines)")
    cmd.add_argument("--json", action="store_true", help="print the records as JSON lines")
    cmd.add_argument("--kind", choices=KINDS, help="only records of this kind")
    cmd.add_argument("--since-seq", type=_non_negative, metavar="N",
                     help="only records with seq >= N")
    cmd.add_argument("--tail", type=_non_negative, metavar="N",
                     help="only the last N records (after the other filters)")
    cmd.set_defaults(handler=run)


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {value}")
    return value


def run(args: argparse.Namespace) -> int:
    reader = AuditReader(args.path)
    try:
        results = _results_by_action(reader)
        if reader.records == 0 and reader.corrupt:
            first = reader.corrupt[0]
            print(f"rampguard audit: {args.path}: not an audit log ({len(reader.corrupt)} "
                  f"line(s), none a record; {first})", file=sys.stderr)
            return EXIT_BAD_INPUT
        shown: Iterable[AuditRecord] = _selected(reader, args)
        if args.tail is not None:
            shown = deque(shown, maxlen=args.tail)
        count = 0
        for record in shown:
            print(_json_line(record, results) if args.json else _human_line(record, results))
            count += 1
    except AuditReadError as exc:
        print(f"rampguard audit: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    pending = sum(1 for result in results.values() if result is None)
    torn = ""
    if reader.torn_tail is not None:
        torn = (f"a torn last record ({reader.torn_tail.size_bytes} bytes, the trace of a crash "
                f"mid-write: its action was never sent) ignored")
    if args.json:
        if torn:
            print(f"rampguard audit: {args.path}: {torn}", file=sys.stderr)
    else:
        print(f"{count} record(s) shown of {reader.records}; {pending} intent(s) without a "
              f"result" + (f"; {torn}" if torn else ""))
    for problem in reader.corrupt[:_MAX_CORRUPT_SHOWN]:
        print(f"rampguard audit: {args.path}: {problem} (skipped)", file=sys.stderr)
    if len(reader.corrupt) > _MAX_CORRUPT_SHOWN:
        print(f"rampguard audit: {args.path}: ... and "
              f"{len(reader.corrupt) - _MAX_CORRUPT_SHOWN} more corrupt line(s)", file=sys.stderr)
    if reader.corrupt:
        print(f"rampguard audit: {args.path}: {len(reader.corrupt)} corrupt line(s) skipped",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


#: action id -> (the seq of its result record, ok), or None while none was seen (intents only).
_Results = dict[int, tuple[int, bool] | None]


def _results_by_action(reader: AuditReader) -> _Results:
    results: _Results = {}
    for record in reader:
        if record.kind == "intent":
            results.setdefault(record.seq, None)
        elif record.kind == "result":
            action_id = record.fields["action_id"]
            if action_id in results and results[action_id] is None:
                results[action_id] = (record.seq, bool(record.fields["ok"]))
    return results


def _selected(reader: AuditReader, args: argparse.Namespace) -> Iterable[AuditRecord]:
    for record in reader:
        if args.kind is not None and record.kind != args.kind:
            continue
        if args.since_seq is not None and record.seq < args.since_seq:
            continue
        yield record


def _json_line(record: AuditRecord, results: _Results) -> str:
    out = record.to_dict()
    if record.kind == "intent":
        result = results.get(record.seq)
        out["result_seq"] = None if result is None else result[0]
    return _dumps(out)


def _dumps(value: Any) -> str:
    try:
        return json.dumps(value, separators=(",", ":"))
    except (RecursionError, ValueError):     # nesting json.loads took but dumps cannot
        return json.dumps({"unprintable": type(value).__name__})


def _human_line(record: AuditRecord, results: _Results) -> str:
    head = f"{record.seq:>8}  {_iso(record.t_wall_s)}  {_clean(record.kind):<6}"
    fields = dict(record.fields)
    if record.kind == "intent":
        body = f"{_action(fields.pop('action'))}  {_pairs(fields.pop('reason'))}"
        result = results.get(record.seq)
        if result is None:
            body += "  NO RESULT (crash?)"
        else:
            body += f"  -> {'ok' if result[1] else 'FAILED'} (seq {result[0]})"
    elif record.kind == "result":
        ok = fields.pop("ok")
        body = (f"action {fields.pop('action_id')} {'ok' if ok else 'FAILED'}  "
                f"readback {_pairs(fields.pop('readback'))}")
        detail = fields.pop("detail", "")
        if detail:
            body += f"  {_value(detail)}"
    elif record.kind == "state" and "from" in fields and "to" in fields:
        body = f"{_value(fields.pop('from'))} -> {_value(fields.pop('to'))}"
    else:
        body = ""
    rest = _pairs(fields)
    return " ".join(part for part in (head, body, rest) if part).rstrip()


def _action(action: Mapping[str, Any]) -> str:
    action = dict(action)
    kind = _value(action.pop("type"))
    targets = action.pop("targets", None)
    parts = [kind, _pairs(action)]
    if targets is not None:
        parts.append(_value(targets))
    return " ".join(p for p in parts if p)


def _pairs(mapping: Any) -> str:
    if not isinstance(mapping, Mapping):
        return _value(mapping)
    return " ".join(f"{_clean(str(k))}={_value(v)}" for k, v in mapping.items())


def _value(value: Any) -> str:
    if isinstance(value, list):
        items = [_value(v) for v in value[:_MAX_ITEMS]]
        more = f",+{len(value) - _MAX_ITEMS} more" if len(value) > _MAX_ITEMS else ""
        return "[" + ",".join(items) + more + "]"
    if isinstance(value, str):
        text = value
    else:
        text = _dumps(value)
    if len(text) > _MAX_VALUE_CHARS:
        text = text[:_MAX_VALUE_CHARS] + "…"
    return _clean(text)


def _clean(text: str) -> str:
    """The text with every non-printable character (terminal escapes, newlines, bidi
    overrides) written as a Python escape, so a hostile log cannot drive the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _iso(t_wall_s: float) -> str:
    try:
        return datetime.fromtimestamp(t_wall_s, tz=UTC).isoformat(timespec="milliseconds")
    except (OverflowError, OSError, ValueError):
        return f"t_wall_s={t_wall_s!r}"
