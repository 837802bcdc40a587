"""Loading a hall config: TOML file → :class:`~controller.model.HallConfig`, or a ConfigError.

Every way a file can be wrong ends in :class:`~controller.errors.ConfigError` with one issue per
problem, each naming the field path (``racks[3].zone``) and what was expected. Nothing else
escapes: a missing file, a directory, binary data, invalid UTF-8, broken TOML, an empty file and a
structurally valid file with bad values all take this one road.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from controller.errors import ConfigError, ConfigIssue
from controller.model import HallConfig, format_loc

MAX_CONFIG_BYTES = 16 * 1024 * 1024


def load_hall_config(path: str | Path) -> HallConfig:
    """Read and validate the hall config at ``path``."""
    source = str(path)
    p = Path(path)
    try:
        with p.open("rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        problem = "file not found"
    except IsADirectoryError:
        problem = "is a directory, expected a TOML file"
    except OSError as exc:
        problem = f"cannot read: {exc.strerror or exc}"
    except ValueError as exc:  # e.g. an embedded NUL byte in the path
        problem = f"not a usable file path: {exc}"
    else:
        problem = ""
    if problem:
        raise ConfigError(source, [ConfigIssue("", problem)])
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(source, [ConfigIssue("", f"larger than {MAX_CONFIG_BYTES} bytes")])
    return loads_hall_config(data, source=source)


def loads_hall_config(data: bytes | str, source: str = "<config>") -> HallConfig:
    """Validate a hall config given as TOML text (``bytes`` must be UTF-8)."""
    if isinstance(data, bytes):
        if b"\x00" in data:
            raise ConfigError(source, [ConfigIssue("", "binary data (NUL bytes), expected TOML")])
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                source, [ConfigIssue("", f"not UTF-8 text (byte {exc.start}), expected TOML")]
            ) from None
    else:
        text = data
    if not text.strip():
        raise ConfigError(source, [ConfigIssue("", "empty file, expected a TOML hall config")])
    raw, issue = parse_toml(text, deep="not usable TOML: nested too deeply")
    if issue is not None:
        raise ConfigError(source, [issue])
    return validate_hall_dict(raw, source=source)


def parse_toml(text: str, deep: str) -> tuple[dict[str, Any], ConfigIssue | None]:
    """``text`` as a TOML document, or the one issue that makes it unusable: not TOML, nested
    too deeply (``deep`` is its message), an integer literal over Python's 4300-digit limit
    (tomllib's ``int()``), or one too large for any field (:func:`toml_integer_issue`)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return {}, ConfigIssue("", f"not valid TOML: {exc}")
    except RecursionError:
        return {}, ConfigIssue("", deep)
    except ValueError as exc:
        return {}, ConfigIssue("", f"not usable TOML: {str(exc).partition(';')[0]}")
    return raw, toml_integer_issue(raw)


#: Integers longer than this (bits) are refused before validation (about 300 digits: far beyond
#: any field's range, far below Python's 4300-digit repr limit).
MAX_INT_BITS = 1000


def toml_integer_issue(raw: Any) -> ConfigIssue | None:
    """The first integer of a parsed TOML document over :data:`MAX_INT_BITS` bits, as an issue
    naming its path; else None. tomllib reads an integer of any size, and a huge one
    (``0xfff...``, 5000 digits) makes pydantic's error report fail on its repr (an "Exception
    ignored" traceback for each); a merely large one gets the field's range message."""
    stack: list[tuple[list[str | int], Any]] = [([], raw)]
    while stack:
        loc, item = stack.pop()
        if isinstance(item, dict):
            stack.extend(([*loc, k], v) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend(([*loc, k], v) for k, v in enumerate(item))
        elif isinstance(item, int) and item.bit_length() > MAX_INT_BITS:
            return ConfigIssue(format_loc(loc), f"integer of {item.bit_length()} bits: too "
                               "large for any field")
    return None


def validate_hall_dict(raw: dict[str, Any], source: str = "<config>") -> HallConfig:
    """Validate an already parsed config mapping."""
    try:
        return HallConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(source, issues_from_validation(exc)) from None
    except RecursionError:
        raise ConfigError(source, [ConfigIssue("", "nested too deeply")]) from None


def issues_from_validation(exc: ValidationError) -> list[ConfigIssue]:
    """Turn pydantic's errors into issues with dotted paths and plain messages.

    A value that fits no member of a union (``parent`` may be an id, a list of ids or a range)
    makes pydantic report one error per member at the same place: those become one issue. When
    one member got further (an error deeper inside a table), the shallower ones are dropped.
    """
    raw: list[tuple[str, str, bool]] = []
    for err in exc.errors(include_url=False):
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key (not part of the hall config schema)"
        elif err["type"] == "missing":
            message = "required field is missing"
        elif "input" in err:
            shown = short_repr(err["input"])
            if shown is not None and not isinstance(err["input"], dict) and shown not in message:
                message = f"{message} (got {shown})"
        loc = _user_loc(err["loc"])
        union_branch = len(loc) < len(err["loc"]) and not _only_tags_dropped(err["loc"])
        raw.append((format_loc(loc), message, union_branch))
    paths = [path for path, _, _ in raw]
    merged: dict[str, list[str]] = {}
    for path, message, union_branch in raw:
        deeper = any(other != path and other.startswith(path) and other[len(path)] in ".["
                     for other in paths)
        if deeper and union_branch:
            continue
        messages = merged.setdefault(path, [])
        if message not in messages:
            messages.append(message)
    return [ConfigIssue(path, "; or ".join(messages)) for path, messages in merged.items()]


def short_repr(value: Any, limit: int = 60) -> str | None:
    """``repr(value)`` when it is at most ``limit`` characters, else None. An int too long for
    ``repr`` (over Python's 4300-digit limit: a hex literal in TOML) is None too, not a crash."""
    if isinstance(value, int) and value.bit_length() > 4 * limit:
        return None
    try:
        shown = repr(value)
    except ValueError:
        return None
    return shown if len(shown) <= limit else None


def _only_tags_dropped(loc: tuple[str | int, ...]) -> bool:
    """True when the parts dropped from ``loc`` were validator names or breaker tags only."""
    return not any(isinstance(part, str) and (part in _UNION_MEMBERS or part.startswith("list["))
                   for part in loc)


_UNION_TAGS = frozenset({"curve", "electronic"})
_UNION_MEMBERS = frozenset({"str", "constrained-str", "int", "float", "IdRange"})


def _user_loc(loc: tuple[str | int, ...]) -> list[str | int]:
    """The location as the user wrote it.

    pydantic inserts the discriminator tag of a tagged union right after the union's field
    (``breaker.curve.curve_x`` for ``breaker.curve_x``) and a validator's function name
    (``function-after[...]``) into error locations: neither is a field of the file.
    """
    return [
        part for i, part in enumerate(loc)
        if not (isinstance(part, str) and ("[" in part or part in _UNION_MEMBERS))
        and not (part in _UNION_TAGS and i > 0 and loc[i - 1] == "breaker")
    ]
