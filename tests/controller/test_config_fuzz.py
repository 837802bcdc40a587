"""Fuzzing the config loader and the topology compiler: a ConfigError or a valid hall, nothing else.

Raw fuzz throws bytes and text (random, and byte-level edits of the rig config) at
``loads_hall_config``. Structured fuzz parses a shipped config, mutates the dict (deletes a key,
replaces a value with one of another type, adds an unknown key, duplicates a list item, moves a
value to another place) and runs ``validate_hall_dict`` and, when that succeeds, ``compile_hall``.
Any exception other than :class:`ConfigError` is a bug; so is a ConfigError whose issue paths name
something that is neither a schema field nor a key of the input (a pydantic union tag, say).
"""

from __future__ import annotations

import copy
import datetime as dt
import math
import re
import tomllib
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import controller.model as model_module
from controller.config import loads_hall_config, validate_hall_dict
from controller.errors import ConfigError
from controller.topology import compile_hall

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RIG_TEXT = (CONFIGS / "rig.toml").read_text(encoding="utf-8")
RIG_BYTES = RIG_TEXT.encode("utf-8")
RIG = tomllib.loads(RIG_TEXT)
DEMO = tomllib.loads((CONFIGS / "demo-hall.toml").read_text(encoding="utf-8"))

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

FIELD_NAMES: set[str] = set()
for _obj in vars(model_module).values():
    if isinstance(_obj, type) and issubclass(_obj, BaseModel) and _obj is not BaseModel:
        FIELD_NAMES.update(_obj.model_fields)


def _keys_and_strings(tree: Any) -> tuple[set[str], set[str]]:
    keys: set[str] = set()
    strings: set[str] = set()
    stack = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            keys.update(k for k in item if isinstance(k, str))
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            strings.add(item)
    return keys, strings


_, _RIG_STRINGS = _keys_and_strings(RIG)
_, _DEMO_STRINGS = _keys_and_strings(DEMO)
BASE_STRINGS = sorted(_RIG_STRINGS | _DEMO_STRINGS)

# ---------------------------------------------------------------------------------------------
# Checking the outcome
# ---------------------------------------------------------------------------------------------


def _path_parts(path: str) -> list[str]:
    return [part for part in re.sub(r"\[\d+\]", ".", path).split(".") if part]


def check_error(exc: ConfigError, raw: Any = None) -> None:
    assert exc.issues, "a ConfigError needs at least one issue"
    raw_keys, _ = _keys_and_strings(raw)
    for issue in exc.issues:
        assert isinstance(issue.path, str)
        assert isinstance(issue.message, str) and issue.message.strip()
        for part in _path_parts(issue.path):
            # dict keys the user wrote may contain dots; accept any key that occurs in the path
            if part in FIELD_NAMES or part in raw_keys:
                continue
            assert any(key in issue.path for key in raw_keys if "." in key), (
                f"issue path {issue.path!r}: {part!r} is neither a schema field nor a key of the "
                f"input ({issue.message!r})"
            )
    str(exc)  # the message renders


def validate_and_compile(raw: Any) -> None:
    """Only ConfigError or success may come out; anything else fails the test."""
    try:
        config = validate_hall_dict(raw, source="<fuzz>")
    except ConfigError as exc:
        check_error(exc, raw)
        return
    try:
        topo = compile_hall(config, source="<fuzz>")
    except ConfigError as exc:
        check_error(exc, raw)
        return
    assert topo.n_nodes > 0


def _parsed(data: bytes | str) -> Any:
    """The TOML mapping behind ``data``, for checking paths against its keys (None if none)."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return tomllib.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        return None


def loads_and_compile(data: bytes | str) -> None:
    try:
        config = loads_hall_config(data, source="<fuzz>")
    except ConfigError as exc:
        check_error(exc, _parsed(data))
        return
    try:
        compile_hall(config, source="<fuzz>")
    except ConfigError as exc:
        check_error(exc, _parsed(data))


# ---------------------------------------------------------------------------------------------
# (a) raw bytes and text
# ---------------------------------------------------------------------------------------------
@FUZZ
@given(st.binary(max_size=2048))
def test_arbitrary_bytes(data: bytes) -> None:
    loads_and_compile(data)


@FUZZ
@given(st.text(max_size=1024))
def test_arbitrary_text(text: str) -> None:
    loads_and_compile(text)


@FUZZ
@given(st.text(max_size=512).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_arbitrary_text_as_bytes(data: bytes) -> None:
    loads_and_compile(data)


_EDIT = st.tuples(
    st.sampled_from(["insert", "delete", "replace"]),
    st.integers(min_value=0, max_value=len(RIG_BYTES)),
    st.integers(min_value=1, max_value=8),
    st.binary(min_size=1, max_size=8)
    | st.sampled_from([b"=", b"[", b"]", b"{", b"}", b'"', b"\n", b"#", b",", b"-", b"nan",
                       b"inf", b"1e400", b"\x00", b"\xff", b"[[nodes]]\n", b"9" * 30]),
)


@FUZZ
@given(st.lists(_EDIT, min_size=1, max_size=6))
def test_byte_edits_of_rig(edits: list[tuple[str, int, int, bytes]]) -> None:
    data = bytearray(RIG_BYTES)
    for op, pos, length, blob in edits:
        pos = min(pos, len(data))
        if op == "insert":
            data[pos:pos] = blob
        elif op == "delete":
            del data[pos:pos + length]
        else:
            data[pos:pos + len(blob)] = blob
    loads_and_compile(bytes(data))


_RIG_LINES = RIG_TEXT.splitlines()


@FUZZ
@given(st.lists(st.sampled_from(_RIG_LINES), max_size=80))
def test_shuffled_rig_lines(lines: list[str]) -> None:
    loads_and_compile("\n".join(lines))


# ---------------------------------------------------------------------------------------------
# (b) structured mutations of a parsed config
# ---------------------------------------------------------------------------------------------
SPECIAL_STRINGS = [
    "", " ", "\t", "\x00", "é", "{i}", "{i:02d}", "R{j}", "R{i:q}", "{}", "{i", "{{i}}",
    "P{i.__class__.__name__}", "P{i:099999999999999}", "A/1/1", "A/1/99", "A/2/\u00b2",
    "A/\u0661/1", "A-1-1", "L1", "L4", "L1-L2", "L3-L1", "*", "**", "[", "[!", "?", "curve",
    "electronic", "source", "branch", "modbus", "mqtt", "hall/+/{node}", "hall/{node}/#",
    "{node}", "{server}", "x" * 121, "nan", "inf", "1e400", "63",
]
SPECIAL_NUMBERS: list[Any] = [
    0, 1, -1, 2, 3, 16, 125, 126, 247, 248, 65535, 65536, 100_000, 100_001, 10**9, 2**63 - 1,
    2**64, -(2**63), 0.0, -0.0, 0.5, 1.0, 1.0000001, 125.0, 1e-300, 5e-324, 1e307, 1e308,
    math.nan, math.inf, -math.inf,
]

LEAVES = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(SPECIAL_NUMBERS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=16),
    st.sampled_from(SPECIAL_STRINGS),
    st.sampled_from(BASE_STRINGS),
    st.booleans(),
    st.dates(),
    st.datetimes(),
    st.times(),
)
KEYS = st.sampled_from(sorted(FIELD_NAMES)) | st.text(max_size=10) | st.sampled_from(
    ["colour", "A", "B", "Z", "kind", "id", "count", "parent", "rating_a", "rating_kva"])
VALUES = st.recursive(
    LEAVES,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(KEYS, children, max_size=3),
    max_leaves=6,
)


def _slots(tree: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) pair in the tree, depth first."""
    out: list[tuple[Any, Any]] = []
    stack = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                out.append((item, key))
                stack.append(value)
        elif isinstance(item, list):
            for index, value in enumerate(item):
                out.append((item, index))
                stack.append(value)
    return out


def _containers(tree: Any, kind: type) -> list[Any]:
    found = [tree] if isinstance(tree, kind) else []
    found += [c[k] for c, k in _slots(tree) if isinstance(c[k], kind)]
    return found


def mutate(data: st.DataObject, base: dict[str, Any]) -> dict[str, Any]:
    raw = copy.deepcopy(base)
    for _ in range(data.draw(st.integers(min_value=1, max_value=3), label="n_mutations")):
        op = data.draw(st.sampled_from(
            ["delete", "replace", "add_key", "duplicate", "move", "retarget", "renumber"]),
            label="op")
        slots = _slots(raw)
        if op == "delete" and slots:
            container, key = data.draw(st.sampled_from(slots), label="delete")
            del container[key]
        elif op == "replace" and slots:
            container, key = data.draw(st.sampled_from(slots), label="replace")
            container[key] = data.draw(VALUES, label="value")
        elif op == "add_key":
            target = data.draw(st.sampled_from(_containers(raw, dict)), label="into")
            target[data.draw(KEYS, label="key")] = data.draw(VALUES, label="value")
        elif op == "duplicate":
            lists = [c for c in _containers(raw, list) if c]
            if lists:
                target = data.draw(st.sampled_from(lists), label="list")
                item = data.draw(st.sampled_from(target), label="item")
                target.append(copy.deepcopy(item))
        elif op == "retarget":
            # a string (an id, a reference, a pattern) swapped for another id or a nasty string
            strings = [(c, k) for c, k in slots if isinstance(c[k], str)]
            if strings:
                container, key = data.draw(st.sampled_from(strings), label="string")
                container[key] = data.draw(
                    st.sampled_from(BASE_STRINGS + SPECIAL_STRINGS), label="new string")
        elif op == "renumber":
            # a number swapped for an edge value (zero, negative, huge, NaN, inf, a bool)
            numbers = [(c, k) for c, k in slots if isinstance(c[k], int | float)]
            if numbers:
                container, key = data.draw(st.sampled_from(numbers), label="number")
                container[key] = data.draw(
                    st.sampled_from([*SPECIAL_NUMBERS, True, False]), label="new number")
        elif op == "move" and len(slots) > 1:
            src_c, src_k = data.draw(st.sampled_from(slots), label="from")
            dst_c, dst_k = data.draw(st.sampled_from(slots), label="to")
            value = copy.deepcopy(src_c[src_k])
            dst_c[dst_k] = value
    return raw


@FUZZ
@given(st.data())
def test_mutated_rig(data: st.DataObject) -> None:
    validate_and_compile(mutate(data, RIG))


@settings(FUZZ, max_examples=80)
@given(st.data())
def test_mutated_demo_hall(data: st.DataObject) -> None:
    validate_and_compile(mutate(data, DEMO))


@FUZZ
@given(VALUES)
def test_arbitrary_value_as_whole_config(value: Any) -> None:
    if not isinstance(value, dict):
        value = {"hall": value}
    validate_and_compile(value)


def test_non_dict_config_is_a_config_error() -> None:
    for raw in ([], None, 1, "hall", [RIG], dt.date(2024, 1, 1)):
        validate_and_compile(raw)
