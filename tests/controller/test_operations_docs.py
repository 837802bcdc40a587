"""docs/operations.md stays true: its examples run, its tables name what the code has."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from controller import operator_api
from controller.audit import AuditReader
from controller.cli import main
from controller.metrics import ServiceMetrics

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")


def test_python_examples_run(monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC, flags=re.S)
    assert len(blocks) == 3
    monkeypatch.chdir(ROOT)
    for block in blocks:
        exec(compile(block, "docs/operations.md", "exec"), {"__name__": "docs_example"})


def test_the_json_example_is_a_log_and_the_text_example_is_what_audit_prints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    json_block = re.findall(r"```json\n(.*?)```", DOC, flags=re.S)[0]
    path = tmp_path / "audit.jsonl"
    path.write_text(json_block)
    reader = AuditReader(path)
    assert [r.kind for r in reader] == ["intent", "result"] and reader.corrupt == []
    assert main(["audit", str(path)]) == 0
    printed = capsys.readouterr().out.splitlines()
    text_block = DOC.split("## `rampguard audit`")[1]
    expected = re.findall(r"```text\n(.*?)```", text_block, flags=re.S)[0].splitlines()
    assert printed[:-1] == expected


def test_the_route_table_is_the_code() -> None:
    table = DOC.split("## The operator HTTP API")[1].split("| code |")[0]
    documented = set(re.findall(r"^\| `(GET|POST) (/[a-z/]+)`", table, flags=re.M))
    assert documented == {(r.method, path) for path, r in operator_api.ROUTES.items()}


def test_the_limits_quoted_are_the_code() -> None:
    assert operator_api.MAX_BODY_BYTES == 4 * 1024 and "over 4 KiB" in DOC
    assert operator_api.MAX_LINE_BYTES == 8 * 1024 and "a line over 8 KiB" in DOC
    assert operator_api.MAX_HEAD_BYTES == 16 * 1024 and "a head over 16 KiB" in DOC
    assert operator_api.MAX_HEADERS == 64 and "more than 64 headers" in DOC
    api = operator_api.OperatorApi(_Nothing(), token="t")
    assert api.header_timeout_s == 5.0 and api.body_timeout_s == 5.0
    assert api.max_connections == 32 and "more than 32 connections" in DOC


def test_the_metrics_table_is_the_code() -> None:
    metrics = ServiceMetrics()
    metrics.count_action("switch_outlet", "ok")
    text = metrics.render().decode()
    exported = {(name, kind) for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M)
                if not name.endswith("_created")}     # prometheus_client's creation times
    table = DOC.split("## Metrics")[1]
    documented = set(re.findall(r"^\| `(rampguard_[a-z_]+)(?:\{[a-z,]+\})?` \| (\w+) \|", table,
                                flags=re.M))
    assert documented == exported


class _Nothing:
    def status(self) -> dict[str, object]:
        return {}

    plan = start_ramp = pause = resume = abort = status
