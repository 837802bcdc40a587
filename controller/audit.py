"""The audit log: every actuation written before it is sent, and its read-back after.

DESIGN.md safety rule 7. The log is a JSON Lines file, one record per line, appended by one
process at a time (an exclusive ``flock`` held while it is open). Every record has:

``seq``
    an integer that increases by one per record, across restarts (it resumes after the highest
    one in the file when the log is opened again);
``t_wall_s``, ``t_mono_s``
    the unix time and the controller's monotonic clock (injected) when the record was written;
``kind``
    ``intent``, ``result``, ``state``, ``alarm``, ``open`` or another word the caller chose;

and the caller's fields. An ``intent`` carries ``action`` (an object with a ``type``) and
``reason`` (rule, node, measured and predicted values); its ``seq`` is the action id that the
matching ``result`` (``action_id``, ``ok``, ``readback``, ``detail``) names.

Crash semantics:

* an append is one ``write`` of one complete line, then ``fsync``; :meth:`AuditLog.intent`
  returns only after both, so an action whose intent call returned is on disk;
* a crash during an append leaves at most a *torn* last line (a prefix of a record, or NUL bytes
  after a power loss, with no newline). Its ``fsync`` never returned, so its action was never
  sent: :meth:`AuditLog.open` truncates it away, counts it (:attr:`AuditLog.torn_records`) and
  logs a warning; readers ignore it and say so;
* a line that is not a record (corrupt, foreign or hand-edited) is never dropped: it is kept in
  the file, skipped by readers, counted and reported. A foreign last line without a newline is
  terminated (one ``\\n`` appended) so that the next record does not merge into it;
* when a write or an ``fsync`` fails (disk full, EIO, read-only file system, a file size limit),
  the call raises :class:`~controller.errors.AuditWriteError` and the caller must not send the
  action. A partial line is truncated away; after a failed ``fsync`` (whose data may or may not
  have reached the disk) the log refuses every later append.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Self

from controller.errors import AuditReadError, AuditWriteError
from controller.jsonsafe import dumps_safe

log = logging.getLogger(__name__)

#: Fields that every record has; a caller's field may not take one of these names.
RESERVED_FIELDS = frozenset({"seq", "t_wall_s", "t_mono_s", "kind"})
#: The longest line a reader accepts and a writer writes (a record longer is refused).
MAX_LINE_BYTES = 1 << 20
#: How every record line starts (the writer puts ``seq`` first): tells a torn record from junk.
_RECORD_PREFIX = b'{"seq":'

KINDS = ("intent", "result", "state", "alarm", "open")


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One record read back from the log; ``fields`` holds everything but the four common
    fields. ``line_no`` is its 1-based line in the file."""

    seq: int
    t_wall_s: float
    t_mono_s: float
    kind: str
    fields: Mapping[str, Any]
    line_no: int

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "t_wall_s": self.t_wall_s, "t_mono_s": self.t_mono_s,
                "kind": self.kind, **self.fields}


@dataclass(frozen=True, slots=True)
class CorruptLine:
    """A line that is not a record: where it is and why it was refused."""

    line_no: int
    offset: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line_no}: {self.reason}"


@dataclass(frozen=True, slots=True)
class TornTail:
    """The unfinished last record of a crash: ``size_bytes`` bytes at ``offset``, no newline."""

    offset: int
    size_bytes: int


@dataclass
class _ScanStats:
    corrupt: list[CorruptLine] = field(default_factory=list)
    torn: TornTail | None = None
    #: a last line without newline that is not a torn record (it is also in ``corrupt``)
    unterminated_foreign: bool = False
    max_seq: int = -1
    #: corrupt lines after the last good record: each may have held a seq we cannot read
    corrupt_after_last_good: int = 0
    records: int = 0
    size_bytes: int = 0


class AuditReader:
    """Iterate the records of an audit log without changing it.

    Each iteration reads the file again; afterwards :attr:`corrupt` lists the lines that were
    skipped and :attr:`torn_tail` the unfinished last record, if any. Opening problems raise
    :class:`~controller.errors.AuditReadError` (missing, a directory, not a regular file,
    unreadable).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._stats = _ScanStats()

    @property
    def corrupt(self) -> list[CorruptLine]:
        return self._stats.corrupt

    @property
    def torn_tail(self) -> TornTail | None:
        return self._stats.torn

    @property
    def records(self) -> int:
        return self._stats.records

    @property
    def size_bytes(self) -> int:
        return self._stats.size_bytes

    def __iter__(self) -> Iterator[AuditRecord]:
        self._stats = _ScanStats()
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise AuditReadError(str(self.path), "cannot open the audit log", exc) from exc
        try:
            _require_regular(fd, str(self.path), AuditReadError)
        except BaseException:
            os.close(fd)
            raise
        with os.fdopen(fd, "rb", buffering=1 << 16) as f:
            try:
                yield from _scan(f, self._stats)
            except OSError as exc:
                raise AuditReadError(str(self.path), "cannot read the audit log", exc) from exc


def read_audit(path: str | os.PathLike[str]) -> Iterator[AuditRecord]:
    """The records of the log at ``path`` in file order; corrupt lines are skipped and logged
    as one warning at the end (use :class:`AuditReader` to get them)."""
    reader = AuditReader(path)
    yield from reader
    _warn_problems(reader.path, reader.corrupt, reader.torn_tail, kept=True)


def pending_intents(path: str | os.PathLike[str]) -> list[AuditRecord]:
    """Intents without a result record, in seq order: actions that may or may not have been
    sent before a crash. The restart logic reconciles them against read-backs."""
    open_intents: dict[int, AuditRecord] = {}
    for record in read_audit(path):
        if record.kind == "intent":
            open_intents[record.seq] = record
        elif record.kind == "result":
            open_intents.pop(record.fields["action_id"], None)
    return [open_intents[seq] for seq in sorted(open_intents)]


class AuditLog:
    """The append side of the audit log (see the module docstring); a context manager.

    Open it with :meth:`open`. ``clock`` is the monotonic clock written as ``t_mono_s``
    (``wall_clock`` the unix time). With ``fsync=False`` records are written but not forced to
    the disk (for tests and dry runs only: a crash may then lose records).
    """

    def __init__(self, path: Path, fd: int, *, fsync: bool, clock: Callable[[], float],
                 wall_clock: Callable[[], float], stats: _ScanStats) -> None:
        self.path = path
        self._fd: int | None = fd
        self._fsync = fsync
        self._clock = clock
        self._wall_clock = wall_clock
        self._size_bytes = stats.size_bytes
        self._next_seq = stats.max_seq + 1 + stats.corrupt_after_last_good
        self._broken: str | None = None
        self._lock = threading.Lock()
        self._batch_depth = 0          # inside batch(): records are written, fsync deferred
        self._batch_written = False
        #: torn last records removed when the log was opened (0 or 1)
        self.torn_records = 1 if stats.torn is not None else 0
        #: lines kept in the file that are not records
        self.corrupt: tuple[CorruptLine, ...] = tuple(stats.corrupt)

    @property
    def corrupt_records(self) -> int:
        return len(self.corrupt)

    @property
    def next_seq(self) -> int:
        """The seq the next record will get."""
        return self._next_seq

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, fsync: bool = True,
             clock: Callable[[], float] = time.monotonic,
             wall_clock: Callable[[], float] = time.time,
             record_open: bool = True) -> AuditLog:
        """Open (or create) the log for appending, repair a torn last line, resume ``seq``.

        Raises :class:`~controller.errors.AuditWriteError` when the file cannot be opened for
        appending, is not a regular file, is held by another process, or cannot be repaired.
        With ``record_open`` an ``open`` record (pid, torn and corrupt counts) is appended.
        """
        path = Path(path)
        where = str(path)
        created = not path.exists()
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
                         | os.O_NONBLOCK, 0o640)
        except OSError as exc:
            raise AuditWriteError(where, "cannot open the audit log for appending", exc) from exc
        try:
            _require_regular(fd, where, AuditWriteError)
            os.set_blocking(fd, True)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                raise AuditWriteError(where, "the audit log is held by another process",
                                      exc) from exc
            stats = _ScanStats()
            try:
                with os.fdopen(os.dup(fd), "rb", buffering=1 << 16) as f:
                    for _ in _scan(f, stats):
                        pass
            except OSError as exc:
                raise AuditWriteError(where, "cannot read the audit log", exc) from exc
            _repair_tail(fd, where, stats)
            if created:
                _fsync_dir(path.parent, where)
        except BaseException:
            os.close(fd)
            raise
        _warn_problems(path, stats.corrupt, stats.torn, kept=False)
        audit = cls(path, fd, fsync=fsync, clock=clock, wall_clock=wall_clock, stats=stats)
        if record_open:
            try:
                audit.event("open", pid=os.getpid(), torn_records=audit.torn_records,
                            corrupt_records=audit.corrupt_records)
            except BaseException:
                audit.close()
                raise
        return audit

    # -- writing ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Many records, one ``fsync``: inside the block each record is written as always and
        its ``fsync`` is deferred to the end of the block, where one ``fsync`` makes them all
        durable. An intent written inside is durable only once the block has exited without
        error: send its action after the block (a tick that commands 4,096 caps then costs one
        ``fsync``, not 4,096 of about 5 ms each). A failed ``fsync`` raises
        :class:`~controller.errors.AuditWriteError` from the block's end (and the log is
        unusable after, as for a single record)."""
        self._batch_depth += 1
        try:
            yield
        finally:
            self._batch_depth -= 1
            if self._batch_depth == 0 and self._batch_written:
                self._batch_written = False
                self._sync("batch")

    def _sync(self, kind: str) -> None:
        fd = self._fd
        if not self._fsync or fd is None:
            return
        try:
            os.fsync(fd)
        except OSError as exc:
            # Linux may have dropped the dirty pages: what is on disk is unknown.
            self._broken = f"fsync failed: {exc.strerror or exc}"
            raise AuditWriteError(str(self.path), f"cannot make the {kind} record durable",
                                  exc) from exc

    def intent(self, action: Mapping[str, Any], reason: Mapping[str, Any]) -> int:
        """Write an ``intent`` record and make it durable; return the action id (its seq).

        Raises :class:`~controller.errors.AuditWriteError` if it could not be made durable:
        the caller must then not send the action.
        """
        return self._append("intent", {"action": action, "reason": reason})

    def result(self, action_id: int, ok: bool, readback: Mapping[str, Any],
               detail: str = "") -> None:
        """Write the ``result`` of the action ``action_id``: whether the read-back confirmed it,
        what was read back, and a free text detail."""
        self._append("result", {"action_id": int(action_id), "ok": bool(ok),
                                "readback": readback, "detail": str(detail)})

    def state(self, from_state: str, to_state: str, reason: str, **fields: Any) -> int:
        """A controller state change (a ``state`` record with ``from``, ``to``, ``reason``)."""
        return self.event("state", **{"from": from_state, "to": to_state, "reason": reason},
                          **fields)

    def event(self, kind: str, **fields: Any) -> int:
        """Any other record (``state``, ``alarm``, ...); returns its seq."""
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"an audit record kind is a non-empty string, not {kind!r}")
        return self._append(kind, fields)

    def _append(self, kind: str, fields: Mapping[str, Any]) -> int:
        clash = RESERVED_FIELDS.intersection(fields)
        if clash:
            raise ValueError(f"audit fields {sorted(clash)} are reserved")
        where = str(self.path)
        with self._lock:
            fd = self._fd
            if fd is None:
                raise AuditWriteError(where, "the audit log is closed")
            if self._broken is not None:
                raise AuditWriteError(where, f"the audit log is unusable ({self._broken})")
            seq = self._next_seq
            record = {"seq": seq, "t_wall_s": self._wall_clock(), "t_mono_s": self._clock(),
                      "kind": kind, **fields}
            line = (dumps_safe(record, separators=(",", ":")) + "\n").encode("ascii")
            if len(line) > MAX_LINE_BYTES:
                raise AuditWriteError(where, f"a {kind} record of {len(line)} bytes is longer "
                                             f"than the {MAX_LINE_BYTES} a reader accepts")
            try:
                written = _write_line(fd, line)
            except OSError as exc:
                self._roll_back(fd, exc)
                raise AuditWriteError(where, f"cannot write the {kind} record", exc) from exc
            self._next_seq = seq + 1
            self._size_bytes += written
            if self._batch_depth:
                self._batch_written = True
            else:
                self._sync(kind)
            return seq

    def _roll_back(self, fd: int, exc: OSError) -> None:
        """Cut a partial line away after a failed write, or refuse every later append."""
        try:
            if os.fstat(fd).st_size != self._size_bytes:
                os.ftruncate(fd, self._size_bytes)
        except OSError as trunc_exc:
            self._broken = (f"a failed write ({exc.strerror or exc}) left a partial line that "
                            f"could not be removed ({trunc_exc.strerror or trunc_exc})")
            log.error("%s: %s", self.path, self._broken)

    # -- lifetime ---------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)            # releases the flock

    @property
    def closed(self) -> bool:
        return self._fd is None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - a forgotten close still releases the fd
        with contextlib.suppress(Exception):
            self.close()


def _write_line(fd: int, line: bytes) -> int:
    """One ``write`` of the whole line. When the kernel writes only part of it (the disk or a
    file size limit reached mid-line), the rest is tried once: that either completes the line
    or raises the real error (ENOSPC, EFBIG) for the caller to roll back."""
    written = os.write(fd, line)
    if written < len(line):
        written += os.write(fd, line[written:])
        if written < len(line):
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (short write: {written} "
                                        f"of {len(line)} bytes)")
    return written


# -- scanning ------------------------------------------------------------------------------
def _scan(f: BinaryIO, stats: _ScanStats) -> Iterator[AuditRecord]:
    """Yield the records of ``f``, recording corrupt lines and a torn tail in ``stats``."""
    offset = 0
    line_no = 0
    while True:
        chunk = f.readline(MAX_LINE_BYTES + 1)
        if not chunk:
            break
        line_no += 1
        start = offset
        offset += len(chunk)
        terminated = chunk.endswith(b"\n")
        too_long = not terminated and len(chunk) > MAX_LINE_BYTES
        while too_long and not terminated:       # skip the rest of an over-long line
            more = f.readline(1 << 16)
            if not more:
                break
            offset += len(more)
            terminated = more.endswith(b"\n")
        if not terminated:                       # the last line, with no newline
            if not too_long and _is_torn_record(chunk):
                stats.torn = TornTail(start, offset - start)
                break
            stats.unterminated_foreign = True
        if too_long:
            reason = f"line longer than {MAX_LINE_BYTES} bytes"
        else:
            parsed = _parse(chunk[:-1] if terminated else chunk, line_no)
            if isinstance(parsed, AuditRecord):
                stats.records += 1
                stats.max_seq = max(stats.max_seq, parsed.seq)
                stats.corrupt_after_last_good = 0
                yield parsed
                continue
            reason = parsed
        if not terminated:
            reason += " (last line, no newline)"
        stats.corrupt.append(CorruptLine(line_no, start, reason))
        stats.corrupt_after_last_good += 1
    stats.size_bytes = offset


def _is_torn_record(segment: bytes) -> bool:
    """A last line our writer left unfinished: a prefix of a record line (printable ASCII
    starting like one), possibly followed by NUL bytes, or only NUL bytes (a power loss after
    the file grew but before its data reached the disk)."""
    text = segment.rstrip(b"\0")
    if not text:
        return True
    head = text[:len(_RECORD_PREFIX)]
    return _RECORD_PREFIX.startswith(head) and all(0x20 <= b < 0x7F for b in text)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _parse(raw: bytes, line_no: int) -> AuditRecord | str:
    """A record, or why the line is not one."""
    if not raw.strip():
        return "empty line"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "not UTF-8 text"
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        return "JSON nested too deeply"
    except ValueError as exc:   # JSONDecodeError, and ints too long to convert
        return f"not JSON ({str(exc).splitlines()[0][:80]})"
    if not isinstance(obj, dict):
        return f"a JSON {type(obj).__name__}, not an object"
    seq = obj.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        return "'seq' is missing or not a non-negative integer"
    for key in ("t_wall_s", "t_mono_s"):
        if not _is_number(obj.get(key)):
            return f"{key!r} is missing or not a number"
    kind = obj.get("kind")
    if not isinstance(kind, str) or not kind:
        return "'kind' is missing or not a non-empty string"
    problem = _check_kind(kind, obj)
    if problem:
        return problem
    fields = {k: v for k, v in obj.items() if k not in RESERVED_FIELDS}
    return AuditRecord(seq, float(obj["t_wall_s"]), float(obj["t_mono_s"]), kind, fields,
                       line_no)


def _check_kind(kind: str, obj: dict[str, Any]) -> str | None:
    if kind == "intent":
        action = obj.get("action")
        if not isinstance(action, dict) or not isinstance(action.get("type"), str):
            return "intent without an 'action' object with a 'type' string"
        if not isinstance(obj.get("reason"), dict):
            return "intent without a 'reason' object"
    elif kind == "result":
        if not _is_int(obj.get("action_id")):
            return "result without an integer 'action_id'"
        if not isinstance(obj.get("ok"), bool):
            return "result without a boolean 'ok'"
        if not isinstance(obj.get("readback"), dict):
            return "result without a 'readback' object"
        if not isinstance(obj.get("detail", ""), str):
            return "result 'detail' is not a string"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# -- opening helpers ------------------------------------------------------------------------
def _require_regular(fd: int, where: str, error: type[AuditReadError | AuditWriteError]) -> None:
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise error(where, "cannot stat the audit log", exc) from exc
    if not stat.S_ISREG(mode):
        raise error(where, "not a regular file")


def _repair_tail(fd: int, where: str, stats: _ScanStats) -> None:
    """Truncate a torn last record; terminate a foreign last line; make either durable."""
    try:
        if stats.torn is not None:
            os.ftruncate(fd, stats.torn.offset)
            stats.size_bytes = stats.torn.offset
        elif stats.unterminated_foreign:
            if os.write(fd, b"\n") != 1:
                raise OSError(errno.ENOSPC, "short write")
            stats.size_bytes += 1
        else:
            return
        os.fsync(fd)
    except OSError as exc:
        raise AuditWriteError(where, "cannot repair the last line of the audit log",
                              exc) from exc


def _fsync_dir(directory: Path, where: str) -> None:
    """Make a new file's directory entry durable."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise AuditWriteError(where, "cannot make the new audit log's directory entry durable",
                              exc) from exc


def _warn_problems(path: Path, corrupt: list[CorruptLine], torn: TornTail | None, *,
                   kept: bool) -> None:
    if torn is not None:
        log.warning("%s: %s a torn last record (%d bytes at offset %d): a crash interrupted "
                    "its write before it was durable, so its action was never sent", path,
                    "ignored" if kept else "removed", torn.size_bytes, torn.offset)
    if corrupt:
        shown = "; ".join(str(c) for c in corrupt[:5])
        more = f"; and {len(corrupt) - 5} more" if len(corrupt) > 5 else ""
        log.warning("%s: %d corrupt line(s) kept in the file and skipped: %s%s", path,
                    len(corrupt), shown, more)
