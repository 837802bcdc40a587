"""Turn any value into one that :func:`json.dumps` accepts with ``allow_nan=False``.

The audit log and the operator API write what the controller hands them: numpy scalars and
arrays, NaN headrooms of unknown nodes, enums, paths. Neither may crash on such a value nor
write invalid JSON (``NaN`` is not JSON). The rules:

* ``NaN``, ``inf`` and ``-inf`` (Python or numpy floats) become ``null``;
* numpy scalars become Python numbers (``np.bool_`` a bool), numpy arrays nested lists;
* tuples, lists, sets and frozensets become lists (sets sorted when they can be);
* mapping keys become strings (``str(key)``; an enum key its value);
* an :class:`enum.Enum` becomes its value, a :class:`pathlib.PurePath` its string, ``bytes``
  their ``latin-1`` text (lossless for every byte);
* anything else, and any container nested deeper than :data:`MAX_DEPTH` or seen again inside
  itself (a cycle), becomes its ``repr`` text, so the result is always finite.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import numpy as np

#: Containers nested deeper than this are written as their ``repr`` text.
MAX_DEPTH = 64


def json_safe(value: Any) -> Any:
    """A copy of ``value`` made only of dict, list, str, int, float (finite), bool and None."""
    return _safe(value, 0, set())


def dumps_safe(value: Any, **kwargs: Any) -> str:
    """``json.dumps(json_safe(value), allow_nan=False, ...)``: never raises for any value."""
    return json.dumps(json_safe(value), allow_nan=False, **kwargs)


def _safe(value: Any, depth: int, seen: set[int]) -> Any:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)           # int subclasses (IntEnum handled below) become plain ints
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, enum.Enum):
        return _safe(value.value, depth, seen)
    if isinstance(value, np.floating) and value.itemsize < 8:
        return _safe(float(str(value)), depth, seen)   # float32(12.3) -> 12.3, not 12.300000190
    if isinstance(value, np.generic):
        return _safe(value.item(), depth, seen)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("latin-1")
    if depth >= MAX_DEPTH or id(value) in seen:
        return _repr(value)
    if isinstance(value, np.ndarray):
        return _safe(value.tolist(), depth, seen)
    if isinstance(value, Mapping | list | tuple | set | frozenset):
        seen.add(id(value))
        try:
            if isinstance(value, Mapping):
                return {_key(k): _safe(v, depth + 1, seen) for k, v in value.items()}
            items = value
            if isinstance(value, set | frozenset):
                try:
                    items = sorted(value)
                except TypeError:
                    items = list(value)
            return [_safe(v, depth + 1, seen) for v in items]
        finally:
            seen.discard(id(value))
    return _repr(value)


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, enum.Enum):
        key = key.value
    if isinstance(key, np.generic):
        key = key.item()
    try:
        return str(key)
    except Exception:   # a hostile __str__
        return _repr(key)


def _repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:   # a hostile __repr__ must not crash the audit log
        return f"<unrepresentable {type(value).__name__}>"
