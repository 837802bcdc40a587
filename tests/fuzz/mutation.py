"""Structure-aware mutation for the fuzz tests: a valid document (a parsed TOML config, a JSON
payload) is changed in a few places by hypothesis, then written back as text by the caller's
writer, which understands two markers: :class:`Raw` (a fragment written as is: a literal no
Python value round-trips to) and :class:`Twice` (a key written twice)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

#: Bounded runs for every fuzz test of this folder (well under a minute a file on 2 cores).
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@dataclass(frozen=True)
class Raw:
    """A fragment written as is (NaN, a 5000-digit number, a lone surrogate escape)."""

    text: str


@dataclass(frozen=True)
class Twice:
    """A member written twice, with two values (TOML forbids it; JSON leaves it open)."""

    first: Any
    second: Any


def slots(tree: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) pair in a tree of dicts and lists, depth first."""
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


def mutate(data: st.DataObject, base: Any, values: st.SearchStrategy[Any], *,
           min_mutations: int = 1, max_mutations: int = 3,
           unknown_keys: st.SearchStrategy[str] | None = None) -> Any:
    """A deep copy of ``base`` with a few of its values replaced by ``values``, written twice,
    deleted, wrapped one level deeper, or (with ``unknown_keys``) joined by an unknown key."""
    doc = copy.deepcopy(base)
    ops = ["value", "twice", "delete", "wrap"] + (["unknown"] if unknown_keys is not None else [])
    for _ in range(data.draw(st.integers(min_mutations, max_mutations), label="mutations")):
        where = slots(doc)
        if not where:
            break
        container, key = data.draw(st.sampled_from(where), label="where")
        op = data.draw(st.sampled_from(ops), label="op")
        if op == "value":
            container[key] = data.draw(values, label="value")
        elif op == "twice" and isinstance(container, dict):
            container[key] = Twice(container[key], data.draw(values, label="second"))
        elif op == "delete":
            del container[key]
        elif op == "unknown" and unknown_keys is not None and isinstance(container, dict):
            container[data.draw(unknown_keys, label="key")] = data.draw(values, label="value")
        else:
            container[key] = [container[key]]
    return doc


def truncated(data: st.DataObject, raw: bytes) -> bytes:
    """``raw`` cut at a random byte."""
    return raw[:data.draw(st.integers(0, max(len(raw) - 1, 0)), label="cut")]
