"""Scenario files: valid ones load, hostile ones are refused with the field path, never a
traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim import (
    FAULT_KINDS,
    NAMED_SCENARIOS,
    PlantOptions,
    ScenarioError,
    list_scenarios,
    load_scenario,
    loads_scenario,
    resolve_scenario,
)

GOOD = """
name = "a-bad-afternoon"
description = "feed A lost at full power, then a cooling unit"
observe_s = 900

[plant]
meter_noise_x = 0.01
gpu_temp_rise_k = 40

[[faults]]
kind = "feed-loss"
feed = "A"
after_bring_up_s = 60

[[faults]]
kind = "cooling-unit-failure"
zones = "Z1"
units = 1
at_s = 1200
duration_s = 600

[[faults]]
kind = "workload-storm"
idle_s = 15
after_bring_up_s = 300
"""


def test_a_valid_scenario_file(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(GOOD)
    scenario = load_scenario(path)
    assert scenario.name == "a-bad-afternoon" and scenario.observe_s == 900
    assert scenario.plant == PlantOptions(meter_noise_x=0.01, gpu_temp_rise_k=40)
    feed, cooling, storm = scenario.faults
    assert (feed.kind, feed.relative, feed.offset_s) == ("feed-loss", True, 60.0)
    assert (cooling.kind, cooling.relative, cooling.offset_s, cooling.duration_s) == \
        ("cooling-unit-failure", False, 1200.0, 600.0)
    assert storm.kind == "workload-storm"
    assert resolve_scenario(str(path)) == scenario


def test_every_fault_kind_can_be_written_in_a_file() -> None:
    for kind in FAULT_KINDS:
        extra = 'feed = "B"\n' if kind == "feed-loss" else ""
        scenario = loads_scenario(f'name = "k"\n[[faults]]\nkind = "{kind}"\n{extra}at_s = 5\n')
        assert scenario.faults[0].kind == kind


def test_named_scenarios_are_the_design_list() -> None:
    assert list(NAMED_SCENARIOS) == [
        "feed-a-loss", "feed-b-loss", "cooling-unit-loss", "cooling-total-loss", "meter-stale",
        "meter-lying", "meter-dead", "modbus-unreachable", "agent-ignores-caps",
        "boot-overdraw", "workload-storm", "breaker-fast-tolerance"]
    lines = list_scenarios()
    assert len(lines) == len(NAMED_SCENARIOS)
    words = {line.split()[0]: line.split()[1] for line in lines}
    assert words["cooling-total-loss"] == "unsurvivable"
    assert words["workload-storm"] == "depends"  # decided per hall: rampguard validate
    assert "validate tells per hall" in NAMED_SCENARIOS["workload-storm"].scenario.description
    assert {w for n, w in words.items()
            if n not in ("cooling-total-loss", "workload-storm")} == {"survivable"}
    for name in NAMED_SCENARIOS:
        assert resolve_scenario(name).name == name


@pytest.mark.parametrize(("text", "where", "what"), [
    ('name = "x"\n[[faults]]\nkind = "meteor"\n', "faults[0]", "unknown fault kind"),
    ('name = "x"\n[[faults]]\nkind = "feed-loss"\n', "faults[0].feed", "required"),
    ('name = "x"\n[[faults]]\nkind = "feed-loss"\nfeed = "C"\n', "faults[0].feed", "'A' or 'B'"),
    ('name = "x"\n[[faults]]\nkind = "feed-loss"\nfeed = "A"\nat_s = -1\n', "faults[0].at_s",
     "greater than or equal to 0"),
    ('name = "x"\n[[faults]]\nkind = "feed-loss"\nfeed = "A"\nat_s = nan\n', "faults[0].at_s",
     "finite"),
    ('name = "x"\n[[faults]]\nkind = "feed-loss"\nfeed = "A"\nat_s = inf\n', "faults[0].at_s",
     ""),
    ('name = "x"\n[[faults]]\nkind = "feed-loss"\nfeed = "A"\nat_s = 1\nafter_bring_up_s = 2\n',
     "faults[0]", "at most one"),
    ('name = "x"\n[[faults]]\nkind = "feed-loss"\nfeed = "A"\ncolour = "red"\n',
     "faults[0].colour", "unknown key"),
    ('name = "x"\nsurprise = 1\n', "surprise", "unknown key"),
    ('name = "x"\n[plant]\nmeter_noise_x = 7\n', "plant.meter_noise_x", "less than or equal"),
    ('name = "x"\n[plant]\ngpu_slowdown_c = 95\n', "plant", "above gpu_slowdown_c"),
    ('name = "x"\n[[faults]]\nkind = "meter-lying"\nnodes = "$(rm -rf /)"\n', "faults[0].nodes",
     "pattern"),
    ('name = "x"\n[[faults]]\nkind = "boot-overdraw"\nfactor = 0.5\n', "faults[0].factor",
     "greater than 1"),
    ('name = "x"\n[[faults]]\nkind = "cooling-unit-failure"\nunits = 0\n', "faults[0].units",
     ""),
    ('name = "x"\n[[faults]]\nkind = "agent-ignores-caps"\nfraction = 2\n',
     "faults[0].fraction", "less than or equal to 1"),
    ('name = "../../etc/passwd"\n', "name", "pattern"),
    ('faults = []\n', "name", "required"),
    ('name = "x"\nfaults = "feed-loss"\n', "faults", "list"),
    ('name = "x"\n[[faults]]\nkind = 3\n', "faults[0]", ""),
])
def test_bad_scenarios_name_the_field(text: str, where: str, what: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        loads_scenario(text, "bad.toml")
    paths = [issue.path for issue in caught.value.issues]
    assert where in paths, (paths, str(caught.value))
    assert what in str(caught.value)
    assert str(caught.value).startswith("bad.toml: invalid scenario")


@pytest.mark.parametrize(("data", "what"), [
    (b"", "empty"),
    (b"   \n", "empty"),
    (b"\x00\x01binary", "binary"),
    (b"\xff\xfe name", "not UTF-8"),
    (b"name = ", "not valid TOML"),
    (b"[[faults]\nkind=", "not valid TOML"),
    (("a = " + "[" * 5000 + "]" * 5000).encode(), None),
])
def test_hostile_bytes_are_refused(data: bytes, what: str | None) -> None:
    with pytest.raises(ScenarioError, match=what):
        loads_scenario(data, "x.toml")


def test_files_that_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="file not found"):
        load_scenario(tmp_path / "nope.toml")
    with pytest.raises(ScenarioError, match="is a directory"):
        load_scenario(tmp_path)
    big = tmp_path / "big.toml"
    big.write_bytes(b"# " + b"x" * (1024 * 1024 + 10))
    with pytest.raises(ScenarioError, match="larger than"):
        load_scenario(big)
    with pytest.raises(ScenarioError, match="unknown scenario"):
        resolve_scenario("feed-c-loss")


def test_too_many_faults() -> None:
    text = 'name = "x"\n' + '[[faults]]\nkind = "meter-dead"\n' * 1001
    with pytest.raises(ScenarioError, match="faults"):
        loads_scenario(text)


@settings(deadline=None, max_examples=150)
@given(st.text(max_size=300))
def test_arbitrary_text_never_escapes_as_another_error(text: str) -> None:
    try:
        loads_scenario(text)
    except ScenarioError:
        pass


@settings(deadline=None, max_examples=150)
@given(st.dictionaries(st.sampled_from(["kind", "feed", "at_s", "after_bring_up_s",
                                        "duration_s", "nodes", "zones", "units", "factor",
                                        "fraction", "servers", "idle_s", "end", "x"]),
                       st.one_of(st.integers(-5, 5), st.floats(allow_nan=True),
                                 st.sampled_from(FAULT_KINDS), st.text(max_size=8),
                                 st.booleans(), st.lists(st.integers(), max_size=2)),
                       max_size=6))
def test_arbitrary_fault_tables_never_escape(fault: dict[str, object]) -> None:
    from pydantic import ValidationError

    from sim.faults import Scenario, _issues

    try:
        Scenario.model_validate({"name": "x", "faults": [fault]})
    except ValidationError as exc:  # loads_scenario turns these into ScenarioError
        assert _issues(exc)
