"""``rampguard audit``: the human and JSON views, the filters, and a corpus of hostile files
(none may produce a traceback; corrupt lines are reported with their line numbers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.audit import AuditLog
from controller.cli import main

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0          # 2023-11-14T22:13:20Z


class _Clock:
    def __init__(self, start: float) -> None:
        self.t = start

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    """open, intent (answered), intent (failed), state, alarm, intent (no result)."""
    path = tmp_path / "audit.jsonl"
    with AuditLog.open(path, clock=_Clock(10.0), wall_clock=_Clock(T0)) as audit:
        a = audit.intent({"type": "switch_outlet", "targets": ["R1-PDU-o3"], "on": True},
                         {"rule": "admission", "node": "R1-PDU-B1", "measured_a": 12.3,
                          "predicted_a": 20.1, "limit_a": 25.6})
        audit.result(a, True, {"on": True})
        b = audit.intent({"type": "set_caps", "targets": ["s1", "s2", "s3", "s4", "s5"],
                          "cap_w": [500.0, 500.0, 600.0, 600.0, 700.0]},
                         {"rule": "shed", "node": "UPS-A", "measured_a": 410.0, "limit_a": 400.0})
        audit.result(b, False, {"cap_w": [700.0]}, "agent ignored the cap")
        audit.state("RAMPING", "SHEDDING", "UPS-A over its limit")
        audit.event("alarm", code="cap-not-enforced", server="s1")
        audit.intent({"type": "switch_outlet", "targets": ["R1-PDU-o4"], "on": True},
                     {"rule": "admission", "node": "R1-PDU-B1"})
    return path


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_human_view(log_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _run(["audit", str(log_path)], capsys)
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert lines == [
        f"       0  2023-11-14T22:13:21.000+00:00  open   pid={os.getpid()} torn_records=0 "
        "corrupt_records=0",
        "       1  2023-11-14T22:13:22.000+00:00  intent switch_outlet on=true [R1-PDU-o3]  "
        "rule=admission node=R1-PDU-B1 measured_a=12.3 predicted_a=20.1 limit_a=25.6  "
        "-> ok (seq 2)",
        "       2  2023-11-14T22:13:23.000+00:00  result action 1 ok  readback on=true",
        "       3  2023-11-14T22:13:24.000+00:00  intent set_caps cap_w=[500.0,500.0,600.0,+2 more]"
        " [s1,s2,s3,+2 more]  rule=shed node=UPS-A measured_a=410.0 limit_a=400.0  "
        "-> FAILED (seq 4)",
        "       4  2023-11-14T22:13:25.000+00:00  result action 3 FAILED  readback "
        "cap_w=[700.0]  agent ignored the cap",
        "       5  2023-11-14T22:13:26.000+00:00  state  RAMPING -> SHEDDING "
        "reason=UPS-A over its limit",
        "       6  2023-11-14T22:13:27.000+00:00  alarm  code=cap-not-enforced server=s1",
        "       7  2023-11-14T22:13:28.000+00:00  intent switch_outlet on=true [R1-PDU-o4]  "
        "rule=admission node=R1-PDU-B1  NO RESULT (crash?)",
        "8 record(s) shown of 8; 1 intent(s) without a result",
    ]


def test_json_view_and_filters(log_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _run(["audit", str(log_path), "--json"], capsys)
    assert rc == 0 and err == ""
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["seq"] for r in records] == list(range(8))
    intents = {r["seq"]: r["result_seq"] for r in records if r["kind"] == "intent"}
    assert intents == {1: 2, 3: 4, 7: None}
    assert records[1]["reason"]["limit_a"] == 25.6

    rc, out, _ = _run(["audit", str(log_path), "--json", "--kind", "intent"], capsys)
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [1, 3, 7]
    rc, out, _ = _run(["audit", str(log_path), "--json", "--since-seq", "5"], capsys)
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [5, 6, 7]
    rc, out, _ = _run(["audit", str(log_path), "--json", "--kind", "result", "--tail", "1"],
                      capsys)
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [4]
    rc, out, _ = _run(["audit", str(log_path), "--kind", "state"], capsys)
    assert rc == 0 and out.splitlines()[-1] == (
        "1 record(s) shown of 8; 1 intent(s) without a result")
    rc, out, _ = _run(["audit", str(log_path), "--tail", "0"], capsys)
    assert out.splitlines() == ["0 record(s) shown of 8; 1 intent(s) without a result"]


@pytest.mark.parametrize("argv", [["--tail", "-1"], ["--since-seq", "x"], ["--kind", "nope"]])
def test_bad_options_exit_2(log_path: Path, argv: list[str],
                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["audit", str(log_path), *argv])
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_a_torn_tail_is_reported_and_ignored(log_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    with log_path.open("ab") as f:
        f.write(b'{"seq":8,"t_wall_s":17')
    before = log_path.read_bytes()
    rc, out, err = _run(["audit", str(log_path)], capsys)
    assert rc == 0 and err == ""
    assert out.splitlines()[-1].endswith("a torn last record (22 bytes, the trace of a crash "
                                         "mid-write: its action was never sent) ignored")
    rc, out, err = _run(["audit", str(log_path), "--json"], capsys)
    assert rc == 0 and len(out.splitlines()) == 8 and "torn last record" in err
    assert log_path.read_bytes() == before          # the command never repairs


@pytest.mark.parametrize("kind", ["missing", "directory", "fifo", "unreadable"])
def test_unusable_paths_exit_2_with_one_line(tmp_path: Path, kind: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.jsonl"
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)                 # must not block waiting for a writer
    elif kind == "unreadable":
        path.symlink_to(path)           # a symlink loop: unreadable even for root
    rc, out, err = _run(["audit", str(path)], capsys)
    assert rc == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith(f"rampguard audit: {path}: ")
    expected = {"missing": "No such file", "directory": "not a regular file",
                "fifo": "not a regular file", "unreadable": "Too many levels"}[kind]
    assert expected in err


def test_an_empty_file_is_an_empty_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"")
    rc, out, err = _run(["audit", str(path)], capsys)
    assert (rc, out, err) == (0, "0 record(s) shown of 0; 0 intent(s) without a result\n", "")


GOOD = (b'{"seq":0,"t_wall_s":1700000000.0,"t_mono_s":1.0,"kind":"intent",'
        b'"action":{"type":"switch_outlet","targets":["o1"],"on":true},"reason":{"rule":"a"}}\n')
GOOD_AFTER = b'{"seq":9,"t_wall_s":1700000001.0,"t_mono_s":2.0,"kind":"alarm","code":"x"}\n'


def _rec(**fields: object) -> bytes:
    base: dict[str, object] = {"seq": 1, "t_wall_s": 1.7e9, "t_mono_s": 1.0, "kind": "alarm"}
    base.update(fields)
    return json.dumps(base).encode() + b"\n"


#: name -> (a line that is not a record, what the report says about it)
CORRUPT_LINES: dict[str, tuple[bytes, str]] = {
    "binary": (bytes(range(256)).replace(b"\n", b"") + b"\n", "not UTF-8 text"),
    "nul-line": (b"\0" * 64 + b"\n", "not JSON"),
    "empty": (b"\n", "empty line"),
    "spaces": (b"   \t \n", "empty line"),
    "huge-line": (b'{"seq":1,"pad":"' + b"x" * (2 << 20) + b'"}\n', "line longer than"),
    "deep-array": (b"[" * 200_000 + b"]" * 200_000 + b"\n", "JSON nested too deeply"),
    "deep-object": (b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"\n", "JSON nested too deeply"),
    "array": (b"[1,2,3]\n", "a JSON list, not an object"),
    "string": (b'"hello"\n', "a JSON str, not an object"),
    "null": (b"null\n", "a JSON NoneType, not an object"),
    "number": (b"42\n", "a JSON int, not an object"),
    "truncated-json": (b'{"seq":1,\n', "not JSON"),
    "nan-literal": (b'{"seq":1,"t_wall_s":NaN,"t_mono_s":1,"kind":"alarm"}\n', "not JSON"),
    "huge-int": (b'{"seq":' + b"9" * 5000 + b',"t_wall_s":1,"t_mono_s":1,"kind":"a"}\n',
                 "not JSON"),
    "seq-string": (_rec(seq="1"), "'seq' is missing"),
    "seq-negative": (_rec(seq=-1), "'seq' is missing"),
    "seq-bool": (_rec(seq=True), "'seq' is missing"),
    "seq-float": (_rec(seq=1.5), "'seq' is missing"),
    "no-seq": (b'{"t_wall_s":1,"t_mono_s":1,"kind":"alarm"}\n', "'seq' is missing"),
    "wall-string": (_rec(t_wall_s="yesterday"), "'t_wall_s' is missing or not a number"),
    "mono-null": (_rec(t_mono_s=None), "'t_mono_s' is missing or not a number"),
    "kind-number": (_rec(kind=5), "'kind' is missing"),
    "kind-empty": (_rec(kind=""), "'kind' is missing"),
    "intent-no-action": (_rec(kind="intent", reason={}), "intent without an 'action'"),
    "intent-action-list": (_rec(kind="intent", action=[1], reason={}),
                           "intent without an 'action'"),
    "intent-type-number": (_rec(kind="intent", action={"type": 1}, reason={}),
                           "intent without an 'action'"),
    "intent-reason-string": (_rec(kind="intent", action={"type": "x"}, reason="r"),
                             "intent without a 'reason'"),
    "result-id-float": (_rec(kind="result", action_id=1.5, ok=True, readback={}),
                        "result without an integer 'action_id'"),
    "result-ok-string": (_rec(kind="result", action_id=0, ok="yes", readback={}),
                         "result without a boolean 'ok'"),
    "result-readback-list": (_rec(kind="result", action_id=0, ok=True, readback=[]),
                             "result without a 'readback' object"),
    "result-detail-number": (_rec(kind="result", action_id=0, ok=True, readback={}, detail=3),
                             "result 'detail' is not a string"),
    "bom": (b"\xef\xbb\xbf" + GOOD, "not JSON"),
}

#: name -> a line that is a record but hostile to print
ODD_RECORDS: dict[str, tuple[bytes, str]] = {
    "terminal-escapes": (_rec(code="\x1b[2J\x1b[31mred\r\nfake line\u202e"),
                         r"code=\x1b[2J\x1b[31mred\r\nfake line\u202e"),
    "lone-surrogate": (b'{"seq":1,"t_wall_s":1.7e9,"t_mono_s":1,"kind":"alarm","c":"\\ud800"}\n',
                       r"c=\ud800"),
    "wall-far-future": (_rec(t_wall_s=1e300), "t_wall_s=1e+300"),
    "wall-negative": (_rec(t_wall_s=-1e20), "t_wall_s=-1e+20"),
    "odd-kind": (_rec(kind="\x07bell"), r"\x07bell"),
    "long-value": (_rec(note="n" * 5000), "n" * 120 + "…"),
    "nested-value": (_rec(readback={"a": [[[[{"b": None}]]]]}),
                     'readback={"a":[[[[{"b":null}]]]]}'),
    "intent-odd-targets": (_rec(kind="intent", action={"type": "x", "targets": "o1"},
                                reason={"r": [1, 2]}), "x o1  r=[1,2]"),
    "crlf": (_rec(code="x")[:-1] + b"\r\n", "code=x"),
}


@pytest.mark.parametrize("name", sorted(CORRUPT_LINES))
def test_corrupt_lines_are_reported_and_the_rest_printed(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    line, reason = CORRUPT_LINES[name]
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(GOOD + line + GOOD_AFTER)
    rc, out, err = _run(["audit", str(path)], capsys)
    assert rc == 2
    assert "Traceback" not in out + err
    assert f"{path}: line 2: {reason}" in err
    assert err.splitlines()[-1] == f"rampguard audit: {path}: 1 corrupt line(s) skipped"
    assert out.splitlines()[-1] == "2 record(s) shown of 2; 1 intent(s) without a result"
    rc, out, err = _run(["audit", str(path), "--json"], capsys)
    assert rc == 2 and [json.loads(x)["seq"] for x in out.splitlines()] == [0, 9]
    # alone in the file, it is not an audit log
    path.write_bytes(line)
    rc, out, err = _run(["audit", str(path)], capsys)
    assert rc == 2 and out == ""
    assert err.startswith(f"rampguard audit: {path}: not an audit log (1 line(s), none a record")
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("name", sorted(ODD_RECORDS))
def test_odd_records_print_safely(tmp_path: Path, name: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    line, shown = ODD_RECORDS[name]
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(GOOD + line)
    rc, out, err = _run(["audit", str(path)], capsys)
    assert rc == 0 and err == ""
    printed = out.splitlines()
    assert len(printed) == 3 and shown in printed[1]
    assert all(c.isprintable() for c in out.replace("\n", ""))
    rc, out, _ = _run(["audit", str(path), "--json"], capsys)
    assert rc == 0 and len(out.splitlines()) == 2 and out.isascii()


def test_many_corrupt_lines_are_counted_beyond_those_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "junk.jsonl"
    path.write_bytes(GOOD + b"junk\n" * 500)
    rc, _out, err = _run(["audit", str(path)], capsys)
    assert rc == 2
    assert len(err.splitlines()) == 22
    assert "... and 480 more corrupt line(s)" in err
    assert err.splitlines()[-1].endswith("500 corrupt line(s) skipped")


def test_binary_garbage_without_newlines(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(os.urandom(3 << 20).replace(b"\n", b"\x01"))
    rc, out, err = _run(["audit", str(path)], capsys)
    assert rc == 2 and out == ""
    assert "not an audit log" in err and "line longer than" in err


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400) | st.text(max_size=200).map(str.encode),
       prefix=st.booleans())
def test_any_file_gives_0_or_2_and_no_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data: bytes, prefix: bool
) -> None:
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes((GOOD if prefix else b"") + data)
    for argv in (["audit", str(path)], ["audit", str(path), "--json"]):
        rc, _out, err = _run(argv, capsys)
        assert rc in (0, 2)
        assert "Traceback" not in err


def test_the_installed_command(log_path: Path, tmp_path: Path) -> None:
    rampguard = Path(sys.executable).parent / "rampguard"
    proc = subprocess.run([str(rampguard), "audit", str(log_path), "--kind", "intent"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("intent ") == 3 and "NO RESULT (crash?)" in proc.stdout
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0")
    proc = subprocess.run([str(rampguard), "audit", str(junk)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "not an audit log" in proc.stderr
