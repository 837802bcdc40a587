"""Hostile TOML for the hall config loader and the scenario loader: a typed error or a valid
result, never anything else.

tests/controller/test_config_fuzz.py mutates parsed dicts and edits bytes of the rig config.
This file works one level up, on TOML *documents*: a valid document (the rig config, a scenario
with every fault kind) is parsed, mutated structurally (a value swapped for one of another
type, NaN, ±inf, a huge or over-long number, a huge or odd unicode string, a deeply nested
array or table, a key written twice), written back as TOML text, and optionally truncated at
a random byte. ``loads_hall_config`` (and ``compile_hall`` when it validates) may only raise
:class:`~controller.errors.ConfigError`; ``loads_scenario`` only
:class:`~sim.faults.ScenarioError`. Each error must carry at least one issue with a message.
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.cli import main as cli_main
from controller.config import loads_hall_config
from controller.errors import ConfigError
from controller.topology import compile_hall
from sim.faults import FAULT_KINDS, Scenario, ScenarioError, loads_scenario
from tests.fuzz.mutation import FUZZ, Raw, Twice, mutate, truncated

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RIG_TEXT = (CONFIGS / "rig.toml").read_text(encoding="utf-8")
RIG = tomllib.loads(RIG_TEXT)

SCENARIO_TEXT = """\
name = "every-kind"
description = "one fault of each kind"
survivable = true
observe_s = 300
[[faults]]
kind = "feed-loss"
feed = "A"
after_bring_up_s = 60
duration_s = 30
[[faults]]
kind = "breaker-tolerance"
nodes = "*"
[[faults]]
kind = "cooling-unit-failure"
zones = "Z*"
units = 2
at_s = 10
[[faults]]
kind = "meter-stale"
nodes = "RIG-A"
[[faults]]
kind = "meter-stuck"
nodes = "RIG-A"
[[faults]]
kind = "meter-lying"
nodes = "LAB-PANEL"
factor = 4.0
[[faults]]
kind = "meter-dead"
nodes = "RIG-A"
at_s = 650
[[faults]]
kind = "modbus-unreachable"
nodes = "RIG-A"
[[faults]]
kind = "agent-ignores-caps"
servers = "*"
fraction = 0.5
[[faults]]
kind = "boot-overdraw"
factor = 1.5
[[faults]]
kind = "workload-storm"
idle_s = 20
"""
SCENARIO = tomllib.loads(SCENARIO_TEXT)

# ============================================================================================
# A small TOML writer (everything inline), with room for raw hostile fragments
# ============================================================================================
def _string(s: str) -> str:
    # JSON escapes are TOML escapes, except that TOML also forbids a raw DEL
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


def _key(k: str) -> str:
    return _string(k)


def toml_value(v: Any) -> str:
    if isinstance(v, Raw):
        return v.text
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(_pairs(v)) + "}"
    if isinstance(v, Twice):
        return toml_value(v.first)
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _pairs(d: dict[str, Any]) -> list[str]:
    out = []
    for k, v in d.items():
        if isinstance(v, Twice):
            out.append(f"{_key(k)} = {toml_value(v.first)}")
            out.append(f"{_key(k)} = {toml_value(v.second)}")
        else:
            out.append(f"{_key(k)} = {toml_value(v)}")
    return out


def to_toml(doc: dict[str, Any]) -> str:
    return "\n".join(_pairs(doc)) + "\n"


def test_the_writer_round_trips_the_base_documents() -> None:
    """The mutations below start from documents that load: the writer itself is faithful."""
    assert tomllib.loads(to_toml(RIG)) == RIG
    assert tomllib.loads(to_toml(SCENARIO)) == SCENARIO
    loads_hall_config(to_toml(RIG))
    assert len(loads_scenario(to_toml(SCENARIO)).faults) == len(FAULT_KINDS)


# ============================================================================================
# Hostile values and structural mutations
# ============================================================================================
def _nested(depth: int, kind: str) -> Raw:
    if kind == "array":
        return Raw("[" * depth + "1" + "]" * depth)
    return Raw("{a = " * depth + "1" + "}" * depth)


HOSTILE_VALUES = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308,
                     2**63, -(2**63) - 1, 2**64, 10**30, 0, -1, True, False, "", " ", "\x00",
                     "\u202e", "\ufeff", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "a/../b", "{server}", "{i}", "*", "[", "+",
                     "#"]),
    st.builds(Raw, st.sampled_from(["1" + "0" * 5000, "-" + "9" * 4400, "0x" + "f" * 5000,
                                    "1e99999", "-1e-99999", "nan", "+inf", "-nan"])),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(),
    st.text(max_size=64),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=8).map(
        lambda s: s * 2000),                              # a long unicode string
    st.just("x" * 1_000_000),                             # 1 MB
    st.builds(_nested, st.sampled_from([50, 500, 3000]), st.sampled_from(["array", "table"])),
    st.lists(st.integers(), max_size=5),
    st.dictionaries(st.text(max_size=6), st.integers(), max_size=3),
)


def _render(data: st.DataObject, doc: dict[str, Any]) -> bytes:
    raw = to_toml(doc).encode("utf-8")
    return truncated(data, raw) if data.draw(st.booleans(), label="truncate") else raw


def _check_issues(exc: ConfigError | ScenarioError) -> None:
    assert exc.issues
    for issue in exc.issues:
        assert isinstance(issue.message, str) and issue.message.strip()
    assert str(exc).strip()


def load_config(raw: bytes) -> None:
    try:
        config = loads_hall_config(raw, source="<fuzz>")
        topo = compile_hall(config, source="<fuzz>")
    except ConfigError as exc:
        _check_issues(exc)
        return
    assert topo.n_nodes > 0


def load_scenario(raw: bytes) -> None:
    try:
        scenario = loads_scenario(raw, source="<fuzz>")
    except ScenarioError as exc:
        _check_issues(exc)
        return
    assert isinstance(scenario, Scenario)
    for fault in scenario.faults:         # whatever validates has usable times
        assert math.isfinite(fault.offset_s)
        assert fault.duration_s is None or math.isfinite(fault.duration_s)


@FUZZ
@given(st.data())
def test_mutated_rig_documents(data: st.DataObject) -> None:
    load_config(_render(data, mutate(data, RIG, HOSTILE_VALUES)))


@FUZZ
@given(st.data())
def test_mutated_scenario_documents(data: st.DataObject) -> None:
    load_scenario(_render(data, mutate(data, SCENARIO, HOSTILE_VALUES)))


@settings(FUZZ, max_examples=80)
@given(st.binary(max_size=4096), st.sampled_from(["config", "scenario"]))
def test_truncated_and_garbled_bytes(tail: bytes, which: str) -> None:
    base = (RIG_TEXT if which == "config" else SCENARIO_TEXT).encode()
    cut = len(tail) % (len(base) + 1)
    raw = base[:cut] + tail
    (load_config if which == "config" else load_scenario)(raw)


# Found by this file: an integer literal over Python's 4300-digit int() limit made tomllib
# raise a bare ValueError, which escaped both loaders (a traceback from `rampguard validate`).
LONG_INT = "observe_s = 1" + "0" * 5000 + "\n"


def test_an_over_long_integer_is_a_config_error_not_a_crash() -> None:
    with pytest.raises(ConfigError, match="not usable TOML"):
        loads_hall_config(RIG_TEXT + LONG_INT.replace("observe_s", "extra"))
    with pytest.raises(ScenarioError, match="not usable TOML"):
        loads_scenario('name = "x"\n' + LONG_INT)


def test_a_huge_integer_is_refused_before_validation() -> None:
    """Found by this file: a 5000-digit hex literal reached pydantic, whose error report could
    not repr it (an "Exception ignored" traceback on stderr for each)."""
    with pytest.raises(ConfigError, match=r"hall\.name: integer of 20000 bits"):
        loads_hall_config(RIG_TEXT.replace('name = "', 'name = 0x' + "f" * 5000 + ' #', 1))
    with pytest.raises(ScenarioError, match=r"faults\[0\]\.at_s: integer of 1001 bits"):
        loads_scenario('name = "x"\n[[faults]]\nkind = "meter-dead"\nat_s = ' + str(2**1000)
                       + "\n")
    with pytest.raises(ScenarioError, match="less than or equal"):      # the range message
        loads_scenario('name = "x"\nobserve_s = ' + str(2**999) + "\n")
    assert loads_scenario('name = "x"\nobserve_s = 600\n').observe_s == 600


def test_the_cli_answers_an_over_long_integer_with_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "long.toml"
    path.write_text(RIG_TEXT + LONG_INT.replace("observe_s", "extra"))
    assert cli_main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "not usable TOML" in err and "Traceback" not in err
