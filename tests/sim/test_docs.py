"""The examples of docs/simulator.md run, so that they stay true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "simulator.md"


def test_documentation_examples_run(monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "docs/simulator.md has no python example"
    monkeypatch.chdir(ROOT)
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), {"__name__": "docs_example"})
    capsys.readouterr()


def test_documented_scenarios_and_fault_kinds_are_the_real_ones() -> None:
    from sim import FAULT_KINDS, NAMED_SCENARIOS

    text = DOC.read_text(encoding="utf-8")
    for name in NAMED_SCENARIOS:
        assert f"`{name}" in text, name
    for kind in FAULT_KINDS:
        assert f"`{kind}`" in text, kind
