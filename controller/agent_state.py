"""The node agent's memory on disk: the caps it was last commanded and the last command ``seq``
it took from each issuer, so that a restart, a reboot or a driver reload re-applies the caps and
a replayed command stays ignored.

One JSON file per server (``STATE_DIR/{server}.json``), written atomically: a temporary file in
the same directory, ``fsync``, ``os.replace`` over the old one, ``fsync`` of the directory. A
reader therefore sees the old file or the new one, never half of one.

::

    {"v": 1, "server": "RIG-S01", "saved_t": 1795000001.3,
     "caps_w": [250.0, 250.0, 250.0, 250.0, 250.0, 250.0, 250.0, 250.0],
     "command": {"id": "ctl-1:000042", "issuer": "ctl-1", "seq": 42, "t": 1795000001.0},
     "last_seq": {"ctl-1": 42}}

:func:`load_state` raises :class:`~controller.errors.StateFileError` for a file that cannot be
read (permissions, a directory) or that belongs to another server, and
:class:`~controller.errors.StateFileCorrupt` for one that reads but is not a state file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from controller.errors import StateFileCorrupt, StateFileError

__all__ = ["MAX_STATE_BYTES", "SavedCommand", "SavedState", "load_state", "move_aside",
           "save_state", "state_path"]

MAX_STATE_BYTES = 1 << 20

_Name = Annotated[str, Field(min_length=1, max_length=120, pattern=r"^[A-Za-z0-9_.:\-]+$")]
_Id = Annotated[str, Field(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9_.:\-]+$")]
_Seq = Annotated[int, Field(ge=0, le=2**53)]


class SavedCommand(BaseModel):
    """The command whose caps are saved (for the operator reading the file and the reports)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    id: _Id
    issuer: _Name
    seq: _Seq
    t: float


class SavedState(BaseModel):
    """What the agent keeps across restarts (module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    v: Literal[1] = 1
    server: _Name
    saved_t: float
    caps_w: Annotated[list[Annotated[float, Field(gt=0, le=1e5)]],
                      Field(min_length=1, max_length=64)] | None = None
    command: SavedCommand | None = None
    last_seq: Annotated[dict[_Name, _Seq], Field(max_length=1000)] = Field(
        default_factory=dict)


def state_path(state_dir: str | os.PathLike[str], server: str) -> Path:
    return Path(state_dir) / f"{server}.json"


def load_state(path: Path, server: str) -> SavedState | None:
    """The saved state, or None when there is no file yet."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_STATE_BYTES + 1)
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise StateFileError(str(path), "is a directory, not a state file") from None
    except OSError as exc:
        raise StateFileError(str(path), f"cannot read: {exc.strerror or exc}") from exc
    if len(data) > MAX_STATE_BYTES:
        raise StateFileCorrupt(str(path), f"larger than {MAX_STATE_BYTES} bytes: not a state "
                               "file")
    try:
        state = SavedState.model_validate_json(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        first = errors[0]
        loc = ".".join(str(p) for p in first["loc"]) or "file"
        raise StateFileCorrupt(str(path), f"not a valid state file ({loc}: {first['msg']})"
                               ) from exc
    if state.server != server:
        raise StateFileError(str(path), f"is the state of server {state.server!r}, not of "
                             f"{server!r}: wrong --state-dir or --node?")
    return state


def save_state(path: Path, state: SavedState) -> None:
    """Write ``state`` atomically (temp file, fsync, rename, fsync of the directory).
    Raises ``OSError`` (the caller reports it)."""
    data = state.model_dump_json().encode()
    directory = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def move_aside(path: Path, t_s: float) -> Path | None:
    """Rename a corrupt state file out of the way (kept for the operator); None if it could
    not be moved."""
    target = path.with_name(f"{path.name}.corrupt-{int(t_s)}")
    try:
        os.replace(path, target)
    except OSError:
        return None
    return target
