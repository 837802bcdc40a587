"""Reductions of each row of a 2-D array whose rows are short: the three poles of a node, the
GPUs of a server, the depth of a PSU's ancestry.

numpy (2.x, measured with 2.4) reduces ``axis=1`` of such an array one row at a time, at some
40 ns a row whatever its length: ``v.max(axis=1)`` of the 32k hall's (4,256, 3) meter readings
takes about 180 µs, the same maximum taken column by column with ``np.maximum`` about 6 µs.
The functions here take the columns in order, which is what the row reduction does: the
results are bit for bit those of ``max``, ``sum``, ``any`` and ``all`` along ``axis=1``. Left
to numpy: the maximum of more than four columns (its SIMD lanes choose between 0.0 and -0.0
otherwise) and the sum of eight or more (its pairwise summation groups the terms otherwise).
``tests/kernels/test_rows.py`` compares them with numpy's on awkward values.

Plain numpy, no numba: array in, array out, nothing of rampguard imported.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["row_all", "row_any", "row_max", "row_sum"]

#: numpy's pairwise summation groups the terms from this many on
_PAIRWISE_FROM = 8
#: numpy's maximum of longer rows runs in SIMD lanes, whose pick between 0.0 and -0.0 differs
_MAX_CHAINED_UP_TO = 4


def _columns(a: npt.ArrayLike) -> npt.NDArray[Any]:
    arr = np.asarray(a)
    if arr.ndim != 2:
        raise ValueError(f"a row reduction needs a 2-D array, got shape {arr.shape}")
    return arr


def row_max(a: npt.ArrayLike) -> npt.NDArray[Any]:
    """``a.max(axis=1)``: NaN wins as there; an array of no columns raises as there."""
    arr = _columns(a)
    if not 0 < arr.shape[1] <= _MAX_CHAINED_UP_TO or arr.shape[0] == 0:
        return arr.max(axis=1)
    out = arr[:, 0].copy()
    for j in range(1, arr.shape[1]):
        np.maximum(out, arr[:, j], out=out)
    return out


def row_sum(a: npt.ArrayLike) -> npt.NDArray[Any]:
    """``a.sum(axis=1)``: of floats, the same bits."""
    arr = _columns(a)
    if arr.shape[1] >= _PAIRWISE_FROM or arr.shape[1] == 0 or arr.dtype.kind != "f":
        return arr.sum(axis=1)   # (integers: numpy's own, in its wider integer type)
    out = arr[:, 0] + 0.0   # numpy's sum starts from +0.0: a row of -0.0 sums to 0.0
    for j in range(1, arr.shape[1]):
        np.add(out, arr[:, j], out=out)
    return out


def _row_logical(arr: npt.NDArray[Any], combine: np.ufunc, start: bool,
                 name: str) -> npt.NDArray[np.bool_]:
    if arr.dtype != np.bool_:
        raise ValueError(f"{name} needs a boolean array, got {arr.dtype}")
    out = np.full(arr.shape[0], start, np.bool_)
    for j in range(arr.shape[1]):
        combine(out, arr[:, j], out=out)
    return out


def row_any(a: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """``a.any(axis=1)`` of a boolean array."""
    return _row_logical(_columns(a), np.logical_or, False, "row_any")


def row_all(a: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """``a.all(axis=1)`` of a boolean array."""
    return _row_logical(_columns(a), np.logical_and, True, "row_all")
