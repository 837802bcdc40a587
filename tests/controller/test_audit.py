"""The audit log: records, seq across restarts, crash semantics (torn tails, corrupt lines,
SIGKILL mid-loop), and write failures on a real full disk, a file size limit, a read-only file
system and a read-only directory."""

from __future__ import annotations

import enum
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.audit import (
    MAX_LINE_BYTES,
    AuditLog,
    AuditReader,
    pending_intents,
    read_audit,
)
from controller.errors import AuditReadError, AuditWriteError, RampguardError

ROOT = Path(__file__).resolve().parents[2]

ACTION = {"type": "switch_outlet", "targets": ["R1-PDU-o3"], "on": True}
REASON = {"rule": "admission", "node": "R1-PDU-B1", "measured_a": 12.3, "predicted_a": 20.1,
          "limit_a": 25.6}


class _Clock:
    def __init__(self, start: float) -> None:
        self.t = start

    def __call__(self) -> float:
        self.t += 0.5
        return self.t


def _open(path: Path, **kwargs: object) -> AuditLog:
    kwargs.setdefault("clock", _Clock(100.0))
    kwargs.setdefault("wall_clock", _Clock(1.7e9))
    return AuditLog.open(path, **kwargs)  # type: ignore[arg-type]


def _strict_lines(path: Path) -> list[dict[str, object]]:
    """Every line of the file parsed as strict JSON (NaN refused); the file ends with \\n."""
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n")

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} written to the audit log")

    return [json.loads(line, parse_constant=refuse) for line in data.splitlines()]


# ============================================================================================
# records
# ============================================================================================
def test_records_have_seq_clocks_kind_and_fields(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with _open(path, record_open=False) as audit:
        action_id = audit.intent(ACTION, REASON)
        audit.result(action_id, True, {"on": True}, "read back after 0.2 s")
        audit.state("IDLE", "RAMPING", "operator start")
        alarm_seq = audit.event("alarm", code="meter-stale", node="R1-PDU")
    assert (action_id, alarm_seq) == (0, 3)
    records = list(read_audit(path))
    assert [r.seq for r in records] == [0, 1, 2, 3]
    assert [r.kind for r in records] == ["intent", "result", "state", "alarm"]
    assert [r.t_mono_s for r in records] == [100.5, 101.0, 101.5, 102.0]
    assert [r.t_wall_s for r in records] == [1.7e9 + 0.5 * k for k in (1, 2, 3, 4)]
    assert records[0].fields == {"action": ACTION, "reason": REASON}
    assert records[1].fields == {"action_id": 0, "ok": True, "readback": {"on": True},
                                 "detail": "read back after 0.2 s"}
    assert records[2].fields == {"from": "IDLE", "to": "RAMPING", "reason": "operator start"}
    assert records[3].get("code") == "meter-stale"
    assert [r.line_no for r in records] == [1, 2, 3, 4]
    assert records[0].to_dict()["action"] == ACTION
    # the seq comes first on every line: how a torn record is told from junk
    assert all(line.startswith(b'{"seq":') for line in path.read_bytes().splitlines())


def test_seq_resumes_across_restarts_and_open_is_recorded(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with _open(path) as audit:
        assert audit.intent(ACTION, REASON) == 1       # seq 0 is the open record
    with _open(path) as audit:
        assert audit.next_seq == 3
        assert audit.intent(ACTION, REASON) == 3
    records = list(read_audit(path))
    assert [r.seq for r in records] == [0, 1, 2, 3]
    assert [r.kind for r in records] == ["open", "intent", "open", "intent"]
    assert records[2].fields == {"pid": os.getpid(), "torn_records": 0, "corrupt_records": 0}


class _Mode(enum.Enum):
    RAMPING = "RAMPING"


class _Hostile:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


def test_values_are_made_json_safe(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    cyclic: list[object] = [1]
    cyclic.append(cyclic)
    reason = {
        "nan": float("nan"), "inf": float("inf"), "ninf": -np.inf, "np_nan": np.float64("nan"),
        "f32": np.float32(12.3), "i64": np.int64(7), "b": np.bool_(True),
        "array": np.array([[1.0, np.nan], [np.inf, 2.0]]), "tuple": (1, 2), "set": {3, 1, 2},
        "mode": _Mode.RAMPING, "path": Path("/x/y"), "bytes": b"\xff\x00", "cycle": cyclic,
        "hostile": _Hostile(), 5: "int key", "deep": [[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]],
        "text": "ünïcode \x1b[31m \ud800",
    }
    with _open(path, record_open=False) as audit:
        audit.intent({"type": "set_caps", "targets": ["s1", "s2"],
                      "cap_w": np.array([500.0, np.nan], dtype=np.float32)}, reason)
    (line,) = _strict_lines(path)
    got = line["reason"]
    assert isinstance(got, dict)
    assert got["nan"] is None and got["inf"] is None and got["ninf"] is None
    assert got["np_nan"] is None
    assert got["f32"] == 12.3 and got["i64"] == 7 and got["b"] is True
    assert got["array"] == [[1.0, None], [None, 2.0]]
    assert got["tuple"] == [1, 2] and got["set"] == [1, 2, 3]
    assert got["mode"] == "RAMPING" and got["path"] == "/x/y"
    assert got["bytes"] == "\xff\x00" and got["5"] == "int key"
    assert got["cycle"][0] == 1 and isinstance(got["cycle"][1], str)
    assert got["hostile"] == "<unrepresentable _Hostile>"
    assert got["text"] == "ünïcode \x1b[31m \ud800"
    assert line["action"] == {"type": "set_caps", "targets": ["s1", "s2"], "cap_w": [500.0, None]}
    assert path.read_bytes().isascii()


def test_reserved_fields_and_bad_kinds_are_refused(tmp_path: Path) -> None:
    with _open(tmp_path / "audit.jsonl", record_open=False) as audit:
        with pytest.raises(ValueError, match="reserved"):
            audit.event("alarm", seq=5)
        with pytest.raises(ValueError, match="kind"):
            audit.event("")
        assert audit.next_seq == 0


def test_a_record_too_long_to_read_back_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with _open(path, record_open=False) as audit:
        with pytest.raises(AuditWriteError, match="longer than"):
            audit.intent({"type": "set_caps", "targets": ["x" * MAX_LINE_BYTES]}, {})
        assert audit.intent(ACTION, REASON) == 0
    assert len(list(read_audit(path))) == 1


def test_concurrent_appends_keep_lines_whole_and_seqs_unique(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with _open(path, record_open=False, fsync=False) as audit:
        def writer(k: int) -> None:
            for i in range(200):
                audit.event("alarm", thread=k, i=i, pad="p" * (i % 50))

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    records = list(read_audit(path))
    assert sorted(r.seq for r in records) == list(range(800))
    assert [r.seq for r in records] == list(range(800))     # file order is seq order


def test_pending_intents_are_intents_without_result(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with _open(path) as audit:
        a = audit.intent(ACTION, REASON)
        b = audit.intent({"type": "set_caps", "targets": ["s1"], "cap_w": [500.0]}, REASON)
        c = audit.intent(ACTION, REASON)
        audit.result(b, False, {"cap_w": [700.0]}, "cap not enforced")
        audit.result(999, True, {})            # names no intent: ignored
    assert [r.seq for r in pending_intents(path)] == [a, c]
    assert pending_intents(path)[0].fields["action"] == ACTION


def test_closed_log_refuses_appends(tmp_path: Path) -> None:
    audit = _open(tmp_path / "audit.jsonl")
    audit.close()
    audit.close()
    assert audit.closed
    with pytest.raises(AuditWriteError, match="closed"):
        audit.intent(ACTION, REASON)


# ============================================================================================
# crash semantics on open
# ============================================================================================
def _write_log(path: Path, n: int) -> bytes:
    with _open(path, record_open=False) as audit:
        for _ in range(n):
            audit.intent(ACTION, REASON)
    return path.read_bytes()


@pytest.mark.parametrize("tail", [
    b"{", b'{"se', b'{"seq":3,"t_wall_s":17000', b'{"seq":3,"t_wall_s":1.7e9,"t_mono_s":1,"ki',
    b"\0" * 4096, b'{"seq":3,' + b"\0" * 100,
], ids=["brace", "seq-prefix", "mid-number", "mid-record", "nul-block", "prefix-then-nul"])
def test_a_torn_last_line_is_truncated_counted_and_warned(
    tmp_path: Path, tail: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.jsonl"
    good = _write_log(path, 3)
    with path.open("ab") as f:
        f.write(tail)
    reader = AuditReader(path)
    assert [r.seq for r in reader] == [0, 1, 2]
    assert reader.torn_tail is not None and reader.torn_tail.size_bytes == len(tail)
    assert reader.corrupt == []
    with caplog.at_level(logging.WARNING, logger="controller.audit"):
        audit = _open(path, record_open=False)
    with audit:
        assert audit.torn_records == 1 and audit.corrupt_records == 0
        assert path.read_bytes() == good                       # every complete line kept
        assert audit.intent(ACTION, REASON) == 3               # its seq was never durable
    assert "torn last record" in caplog.text and "never sent" in caplog.text
    assert [r.seq for r in read_audit(path)] == [0, 1, 2, 3]


def test_a_foreign_unterminated_last_line_is_kept_and_terminated(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    good = _write_log(path, 2)
    with path.open("ab") as f:
        f.write(b"operator was here")
    with _open(path, record_open=False) as audit:
        assert audit.torn_records == 0 and audit.corrupt_records == 1
        assert "no newline" in audit.corrupt[0].reason
        assert audit.intent(ACTION, REASON) == 3      # the junk line might have held seq 2
    data = path.read_bytes()
    assert data.startswith(good + b"operator was here\n")
    reader = AuditReader(path)
    assert [r.seq for r in reader] == [0, 1, 3]
    assert [c.line_no for c in reader.corrupt] == [3]


def test_corrupt_middle_lines_are_kept_skipped_counted_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.jsonl"
    lines = _write_log(path, 4).splitlines(keepends=True)
    lines[1] = b'{"seq":1,"t_wall_s":1.7e9,"t_mono_s":1,"kind":"intent","act\xff\n'
    lines.insert(3, b"[1, 2, 3]\n")
    damaged = b"".join(lines)
    path.write_bytes(damaged)
    reader = AuditReader(path)
    assert [r.seq for r in reader] == [0, 2, 3]
    assert [(c.line_no, c.reason) for c in reader.corrupt] == [
        (2, "not UTF-8 text"), (4, "a JSON list, not an object")]
    with caplog.at_level(logging.WARNING, logger="controller.audit"):
        list(read_audit(path))
    assert "2 corrupt line(s) kept in the file and skipped: line 2: not UTF-8 text" in caplog.text
    with _open(path, record_open=False) as audit:
        assert audit.corrupt_records == 2 and audit.torn_records == 0
        assert audit.intent(ACTION, REASON) == 4
    assert path.read_bytes().startswith(damaged)             # nothing rewritten


def test_seq_stays_unique_when_the_last_complete_line_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    lines = _write_log(path, 3).splitlines(keepends=True)
    lines[2] = b'{"seq":2,"t_wall_s":1.7e9,"t_mono_s":1,"kind":"intent"}\n'   # lost its action
    path.write_bytes(b"".join(lines))
    with _open(path, record_open=False) as audit:
        assert audit.corrupt_records == 1
        assert audit.intent(ACTION, REASON) == 3      # not 2: the corrupt line may have had it


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.binary(max_size=600), extra=st.lists(st.binary(max_size=80), max_size=5))
def test_opening_any_file_keeps_its_lines_and_appends_readable_records(
    tmp_path: Path, junk: bytes, extra: list[bytes]
) -> None:
    path = tmp_path / "fuzz.jsonl"
    original = junk + b"\n".join(extra)
    path.write_bytes(original)
    with _open(path, record_open=False, fsync=False) as audit:
        seq = audit.intent(ACTION, REASON)
    data = path.read_bytes()
    kept = data[: data.rindex(b'{"seq":%d,' % seq)]
    # what was in the file is still there, but for a torn tail (cut) or a newline (added)
    if audit.torn_records:
        assert original.startswith(kept) and b"\n" not in original[len(kept):]
    else:
        assert kept in (original, original + b"\n")
    records = list(AuditReader(path))
    assert records[-1].seq == seq and records[-1].fields["action"] == ACTION
    assert all(r.seq < seq for r in records[:-1])


# ============================================================================================
# refusing what is not an appendable log
# ============================================================================================
def test_a_second_writer_is_refused_while_the_log_is_open(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with _open(path):
        with pytest.raises(AuditWriteError, match="held by another process"):
            _open(path)
        script = ("import sys; from controller.audit import AuditLog\n"
                  "from controller.errors import AuditWriteError\n"
                  "try: AuditLog.open(sys.argv[1])\n"
                  "except AuditWriteError as e: print(e); sys.exit(7)\n")
        proc = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                              text=True, timeout=60, cwd=ROOT)
        assert proc.returncode == 7, proc.stderr
        assert "held by another process" in proc.stdout
    with _open(path):
        pass


@pytest.mark.parametrize("kind", ["directory", "fifo", "missing-parent"])
def test_what_is_not_a_regular_file_is_refused(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "log"
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path = tmp_path / "no" / "such" / "audit.jsonl"
    with pytest.raises(AuditWriteError) as info:
        AuditLog.open(path)
    assert isinstance(info.value, RampguardError)
    assert info.value.path == str(path) and str(path) in str(info.value)
    with pytest.raises(AuditReadError):
        list(read_audit(path))


# ============================================================================================
# write failures, for real
# ============================================================================================
_FSIZE_CHILD = textwrap.dedent("""
    import json, resource, signal, sys
    from controller.audit import AuditLog
    from controller.errors import AuditWriteError

    path, limit = sys.argv[1], int(sys.argv[2])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)      # writes past the limit fail with EFBIG
    audit = AuditLog.open(path, record_open=False)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    done = []
    errors = []
    for i in range(10_000):
        try:
            done.append(audit.intent({"type": "switch_outlet", "targets": [f"o{i}"], "on": True},
                                     {"rule": "admission"}))
        except AuditWriteError as exc:
            errors.append({"msg": str(exc), "errno": exc.os_error.errno, "path": exc.path})
            if len(errors) == 2:
                break
    print(json.dumps({"done": done, "errors": errors}))
""")


def test_a_file_size_limit_refuses_the_intent_and_leaves_no_partial_line(
    tmp_path: Path
) -> None:
    """RLIMIT_FSIZE makes the kernel cut the write that crosses it short (a real partial
    write, as on a disk filling up) and fail the next with EFBIG."""
    path = tmp_path / "audit.jsonl"
    limit = 2000       # not on a line boundary: the crossing write is cut short
    proc = subprocess.run([sys.executable, "-c", _FSIZE_CHILD, str(path), str(limit)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["done"] == list(range(len(out["done"]))) and len(out["done"]) > 5
    assert len(out["errors"]) == 2           # it stays refused, and never crashes
    for error in out["errors"]:
        assert error["path"] == str(path) and str(path) in error["msg"]
        assert "cannot write the intent record" in error["msg"]
        assert error["errno"] == 27 and "File too large" in error["msg"]
    records = [r.seq for r in read_audit(path)]
    assert records == out["done"]            # exactly the intents whose call returned
    assert len(path.read_bytes()) < limit and path.read_bytes().endswith(b"\n")


def _can_mount(tmp: Path) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = tmp / "probe"
    probe.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(probe)],
                        capture_output=True).returncode == 0
    if ok:
        subprocess.run(["umount", str(probe)], check=True)
    return ok


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 32 KiB tmpfs (only where this process may mount: root with the capability)."""
    if not _can_mount(tmp_path):
        pytest.skip("cannot mount a tmpfs here; the file size limit test covers a full disk")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_a_full_disk_refuses_the_intent(tiny_tmpfs: Path) -> None:
    path = tiny_tmpfs / "audit.jsonl"
    returned: list[int] = []
    with _open(path) as audit:
        big = {"type": "set_caps", "targets": ["s"] * 20, "cap_w": [500.0] * 20}
        # the write that crosses the end is cut short by the kernel, the rest refused
        with pytest.raises(AuditWriteError, match="No space left on device") as info:
            for _ in range(100_000):
                returned.append(audit.intent(big, REASON))
        assert info.value.os_error is not None and info.value.os_error.errno == 28
        with pytest.raises(AuditWriteError, match="No space left on device"):
            audit.intent(big, REASON)
        assert audit.next_seq == returned[-1] + 1
    assert [r.seq for r in read_audit(path) if r.kind == "intent"] == returned
    assert path.read_bytes().endswith(b"\n")


def test_a_read_only_file_system_refuses_the_log_and_still_reads_it(tiny_tmpfs: Path) -> None:
    """Linux refuses to remount read-only while a file is open for writing, so the log is
    closed first: opening it again for appending must fail, reading it must not."""
    path = tiny_tmpfs / "audit.jsonl"
    with _open(path) as audit:
        first = audit.intent(ACTION, REASON)
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True)
    with pytest.raises(AuditWriteError, match="cannot open the audit log for appending: "
                                              "Read-only file system"):
        AuditLog.open(path)
    with pytest.raises(AuditWriteError, match="Read-only file system"):
        AuditLog.open(tiny_tmpfs / "new.jsonl")
    assert [r.seq for r in read_audit(path) if r.kind == "intent"] == [first]


_READ_ONLY_CHILD = textwrap.dedent("""
    import os, sys
    from controller.audit import AuditLog
    from controller.errors import AuditWriteError
    if os.geteuid() == 0:       # root ignores permissions: drop to nobody once imported
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    for target in sys.argv[1:]:
        try:
            AuditLog.open(target)
        except AuditWriteError as exc:
            print(exc)
        else:
            print("opened", target)
""")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory an unprivileged user can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="rampguard-audit-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_a_read_only_directory_and_file_are_refused(shared_dir: Path) -> None:
    """As root permissions are not enforced, so the child drops to user nobody; a
    writable directory beside them shows that the child could otherwise open a log."""
    ro_dir = shared_dir / "ro"
    rw_dir = shared_dir / "rw"
    ro_dir.mkdir()
    rw_dir.mkdir()
    existing = shared_dir / "existing.jsonl"
    _write_log(existing, 1)
    existing.chmod(0o444)
    ro_dir.chmod(0o555)
    rw_dir.chmod(0o777)
    proc = subprocess.run(
        [sys.executable, "-c", _READ_ONLY_CHILD, str(ro_dir / "audit.jsonl"), str(existing),
         str(rw_dir / "audit.jsonl")],
        capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"{ro_dir / 'audit.jsonl'}: cannot open the audit log for appending: Permission denied",
        f"{existing}: cannot open the audit log for appending: Permission denied",
        f"opened {rw_dir / 'audit.jsonl'}",
    ]


def test_a_failed_fsync_refuses_this_and_every_later_append(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsync EIO cannot be provoked without a faulty device: injected here. After it the
    record may or may not be on disk, so the log refuses to go on (the service goes SAFE)."""
    path = tmp_path / "audit.jsonl"
    with _open(path, record_open=False) as audit:
        audit.intent(ACTION, REASON)

        def eio(fd: int) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(os, "fsync", eio)
        with pytest.raises(AuditWriteError, match="cannot make the intent record durable: "
                                                  "Input/output error"):
            audit.intent(ACTION, REASON)
        monkeypatch.undo()
        with pytest.raises(AuditWriteError, match=r"unusable .*fsync failed"):
            audit.intent(ACTION, REASON)
        assert audit.next_seq == 2
    with _open(path, record_open=False) as audit:     # reopened: seq goes on after both
        assert audit.intent(ACTION, REASON) == 2


# ============================================================================================
# SIGKILL mid-loop
# ============================================================================================
_LOOP_CHILD = textwrap.dedent("""
    import sys
    from controller.audit import AuditLog
    audit = AuditLog.open(sys.argv[1])
    i = 0
    while True:
        seq = audit.intent({"type": "switch_outlet", "targets": [f"o{i}"], "on": True},
                           {"rule": "admission", "i": i})
        if i % 3 == 0:
            audit.result(seq, True, {"on": True})
        sys.stdout.write(f"{seq}\\n")
        sys.stdout.flush()
        i += 1
""")


@pytest.mark.parametrize("kill_after", [1, 40, 150])
def test_sigkill_loses_no_record_whose_intent_returned(tmp_path: Path, kill_after: int) -> None:
    path = tmp_path / "audit.jsonl"
    seen: list[int] = []
    for _round in range(2):
        proc = subprocess.Popen([sys.executable, "-c", _LOOP_CHILD, str(path)],
                                stdout=subprocess.PIPE, text=True, cwd=ROOT)
        assert proc.stdout is not None
        got = [int(proc.stdout.readline()) for _ in range(kill_after)]
        proc.send_signal(signal.SIGKILL)
        seen += got + [int(line) for line in proc.stdout.read().split()]
        proc.wait(timeout=30)
        proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
    intents = {r.seq: r for r in read_audit(path) if r.kind == "intent"}
    assert set(seen) <= set(intents)        # every intent whose call returned is on disk
    assert max(intents) >= max(seen)
    with _open(path) as audit:
        assert audit.torn_records in (0, 1)
        assert audit.corrupt_records == 0
        last = max(r.seq for r in read_audit(path))
        assert audit.next_seq == last + 1
        assert audit.intent(ACTION, REASON) == last + 1
    all_seqs = [r.seq for r in read_audit(path)]
    assert all_seqs == sorted(set(all_seqs))       # strictly increasing across the restarts
    # the intents still open are those the loop had not yet answered
    pending = {r.seq for r in pending_intents(path)}
    answered = {r.fields["action_id"] for r in read_audit(path) if r.kind == "result"}
    assert pending == set(intents) - answered | {last + 1}


def test_a_batch_writes_every_record_and_fsyncs_once(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog.open(path) as audit:
        calls: list[int] = []
        real_fsync = os.fsync
        monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd))[1])
        with audit.batch():
            ids = [audit.intent({"type": "set_caps", "targets": [f"s{k}"], "cap_w": 500.0},
                                {"rule": "ramp"}) for k in range(50)]
            assert calls == []                          # deferred to the end of the block
        assert len(calls) == 1
        audit.result(ids[0], True, {})
        assert len(calls) == 2                          # outside a batch: one per record
    kinds = [r.kind for r in read_audit(path)]
    assert kinds.count("intent") == 50 and kinds.count("result") == 1


def test_a_batch_whose_fsync_fails_raises_at_its_end(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with AuditLog.open(tmp_path / "audit.jsonl") as audit:
        def broken(fd: int) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(os, "fsync", broken)
        with pytest.raises(AuditWriteError, match="durable"), audit.batch():
            audit.intent({"type": "set_caps", "targets": ["s1"], "cap_w": 500.0},
                         {"rule": "ramp"})
        with pytest.raises(AuditWriteError, match="unusable"):
            audit.event("state", to="SAFE")
