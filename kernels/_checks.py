"""Input and output checks shared by the public wrappers.

numba kernels run without bounds checks and hide NaN, so every public wrapper validates its
arguments here before calling a kernel and checks the outputs after. A failed check raises
:class:`KernelInputError` or :class:`KernelOutputError` (both ``ValueError``) naming the argument
and, where there is one, the first offending index.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "KernelError",
    "KernelInputError",
    "KernelOutputError",
]


class KernelError(ValueError):
    """Root of the kernel package's errors.

    KernelError(ValueError)
    ├── KernelInputError   an argument has the wrong shape, dtype or a bad value
    └── KernelOutputError  a kernel produced a NaN or an infinity where none may be

    ``argument`` names the offending array; ``index`` is the first offending index (a tuple) or
    ``None`` when the whole array is wrong (shape, dtype).
    """

    def __init__(self, message: str, *, argument: str, index: tuple[int, ...] | None = None):
        super().__init__(message)
        self.argument = argument
        self.index = index


class KernelInputError(KernelError):
    """An argument of a kernel wrapper is invalid."""


class KernelOutputError(KernelError):
    """A kernel produced a value that must not occur (NaN, or an infinity where none may be)."""


@lru_cache(maxsize=8)
def _arange(n: int) -> npt.NDArray[np.int64]:
    """0 .. n-1, read-only and cached: the parent-order check runs on every call."""
    index = np.arange(n)
    index.flags.writeable = False
    return index


def _first_index(mask: npt.NDArray[np.bool_]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(mask)[0])


def _fmt_index(index: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(i) for i in index) + "]"


def _shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _check_shape(name: str, arr: np.ndarray, shape: tuple[int, ...]) -> None:
    if arr.shape != shape:
        raise KernelInputError(
            f"{name} has shape {_shape_text(arr.shape)}, expected {_shape_text(shape)}",
            argument=name,
        )


def _to_array(name: str, value: Any) -> np.ndarray:
    try:
        return np.asarray(value)
    except Exception as exc:
        raise KernelInputError(f"{name} cannot be read as an array: {exc}", argument=name) from exc


def float_array(
    name: str,
    value: Any,
    shape: tuple[int, ...],
    *,
    allow_inf: bool = False,
    min_value: float | None = None,
    min_exclusive: bool = False,
    max_value: float | None = None,
) -> npt.NDArray[np.float64]:
    """Return ``value`` as a C-contiguous float64 array after checking shape and values.

    Integer and floating inputs are accepted (converted to float64); bool, complex and object
    arrays are refused. NaN is always refused; infinities only where ``allow_inf``.
    """
    arr = _to_array(name, value)
    if arr.dtype.kind not in "iuf":
        raise KernelInputError(
            f"{name} must hold real numbers (float64), got dtype {arr.dtype}", argument=name
        )
    _check_shape(name, arr, shape)
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if arr.size == 0:
        return arr
    # fast path: two SIMD reductions, no temporary arrays (min and max propagate NaN)
    lo = float(arr.min())
    hi = float(arr.max())
    ok = lo == lo and hi == hi and (allow_inf or (math.isfinite(lo) and math.isfinite(hi)))
    if min_value is not None:
        ok = ok and (lo > min_value if min_exclusive else lo >= min_value)
    if max_value is not None:
        ok = ok and hi <= max_value
    if ok:
        return arr
    bad = np.isnan(arr) if allow_inf else ~np.isfinite(arr)
    if bad.any():
        idx = _first_index(bad)
        what = "NaN" if allow_inf else "not finite"
        raise KernelInputError(
            f"{name}{_fmt_index(idx)} = {float(arr[idx])!r} is {what}", argument=name, index=idx
        )
    if min_value is not None:
        bad = arr <= min_value if min_exclusive else arr < min_value
        if bad.any():
            idx = _first_index(bad)
            rel = ">" if min_exclusive else ">="
            raise KernelInputError(
                f"{name}{_fmt_index(idx)} = {float(arr[idx])!r} must be {rel} {min_value}",
                argument=name,
                index=idx,
            )
    if max_value is None:  # unreachable: the fast path failed on a check made above
        raise KernelInputError(f"{name} holds an invalid value", argument=name)
    idx = _first_index(arr > max_value)  # the only check left that can have failed
    raise KernelInputError(
        f"{name}{_fmt_index(idx)} = {float(arr[idx])!r} must be <= {max_value}",
        argument=name,
        index=idx,
    )


def float_scalar(name: str, value: Any, *, min_value: float = 0.0) -> float:
    """Return ``value`` as a finite Python float that is at least ``min_value``."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.number):
        raise KernelInputError(f"{name} must be a real number, got {value!r}", argument=name)
    if isinstance(value, complex | np.complexfloating):
        raise KernelInputError(f"{name} must be a real number, got {value!r}", argument=name)
    out = float(value)
    if not np.isfinite(out) or out < min_value:
        raise KernelInputError(f"{name} = {out!r} must be finite and >= {min_value}", argument=name)
    return out


def int_array(
    name: str,
    value: Any,
    shape: tuple[int, ...],
    dtype: type[np.integer[Any]],
    low: int,
    high: int,
    what: str,
) -> np.ndarray:
    """Return ``value`` as a C-contiguous array of ``dtype`` with every entry in [low, high).

    Any integer dtype is accepted; floats and bools are refused. ``what`` describes the valid
    range in the error message.
    """
    arr = _to_array(name, value)
    if arr.dtype.kind not in "iu":
        raise KernelInputError(
            f"{name} must hold integers ({np.dtype(dtype).name}), got dtype {arr.dtype}",
            argument=name,
        )
    _check_shape(name, arr, shape)
    if arr.size and (int(arr.min()) < low or int(arr.max()) >= high):
        bad = (arr < low) | (arr >= high)
        idx = _first_index(bad)
        raise KernelInputError(
            f"{name}{_fmt_index(idx)} = {int(arr[idx])} is not {what}",
            argument=name,
            index=idx,
        )
    return np.ascontiguousarray(arr, dtype=dtype)


def bool_array(name: str, value: Any, shape: tuple[int, ...]) -> npt.NDArray[np.bool_]:
    """Return ``value`` as a C-contiguous bool array; only bool dtype is accepted."""
    arr = _to_array(name, value)
    if arr.dtype != np.bool_:
        raise KernelInputError(f"{name} must have dtype bool, got {arr.dtype}", argument=name)
    _check_shape(name, arr, shape)
    return np.ascontiguousarray(arr)


def parent_array(value: Any, name: str = "parent_idx") -> npt.NDArray[np.int32]:
    """Check a parent index array: 1-D integers with ``-1 <= parent_idx[i] < i``."""
    arr = _to_array(name, value)
    if arr.ndim != 1:
        raise KernelInputError(
            f"{name} must be 1-D (one parent per node), got shape {_shape_text(arr.shape)}",
            argument=name,
        )
    if arr.dtype.kind not in "iu":
        raise KernelInputError(
            f"{name} must hold integers (int32), got dtype {arr.dtype}", argument=name
        )
    n = arr.shape[0]
    if n:
        bad_range = int(arr.min()) < -1 or int(arr.max()) >= n
        if bad_range or not bool(np.all(arr < _arange(n))):
            bad = (arr >= np.arange(n)) | (arr < -1)
            i = int(np.argmax(bad))
            raise KernelInputError(
                f"{name}[{i}] = {int(arr[i])}: nodes must be sorted parents first "
                f"(-1 for a root, else 0 <= parent_idx[i] < i)",
                argument=name,
                index=(i,),
            )
    return np.ascontiguousarray(arr, dtype=np.int32)


def out_array(name: str, value: Any, shape: tuple[int, ...], dtype: type[np.generic]) -> np.ndarray:
    """Check an array that a kernel writes in place: exact dtype, shape, C order, writeable."""
    if not isinstance(value, np.ndarray):
        raise KernelInputError(
            f"{name} must be a preallocated numpy array, got {type(value).__name__}",
            argument=name,
        )
    if value.dtype != np.dtype(dtype):
        raise KernelInputError(
            f"{name} must have dtype {np.dtype(dtype).name}, got {value.dtype}", argument=name
        )
    _check_shape(name, value, shape)
    if not value.flags.c_contiguous:
        raise KernelInputError(f"{name} must be C-contiguous", argument=name)
    if not value.flags.writeable:
        raise KernelInputError(f"{name} must be writeable", argument=name)
    return value


def finite_state(name: str, arr: np.ndarray, *, min_value: float = 0.0) -> None:
    """Check an in-place state array holds finite values of at least ``min_value``."""
    if arr.size == 0:
        return
    lo = float(arr.min())
    hi = float(arr.max())
    if lo >= min_value and math.isfinite(lo) and math.isfinite(hi):
        return
    bad = ~np.isfinite(arr) | (arr < min_value)
    idx = _first_index(bad)
    raise KernelInputError(
        f"{name}{_fmt_index(idx)} = {float(arr[idx])!r} must be finite and >= {min_value}",
        argument=name,
        index=idx,
    )


def output_finite(name: str, arr: np.ndarray) -> None:
    """Raise KernelOutputError when a kernel output holds NaN or an infinity."""
    if arr.size == 0 or (math.isfinite(float(arr.min())) and math.isfinite(float(arr.max()))):
        return
    idx = _first_index(~np.isfinite(arr))
    raise KernelOutputError(
        f"kernel output {name}{_fmt_index(idx)} = {float(arr[idx])!r} is not finite "
        f"(inputs too large?)",
        argument=name,
        index=idx,
    )


def output_not_nan(name: str, arr: np.ndarray) -> None:
    """Raise KernelOutputError when a kernel output holds NaN (infinities are allowed)."""
    if arr.size == 0 or not math.isnan(float(arr.min())):
        return
    idx = _first_index(np.isnan(arr))
    raise KernelOutputError(
        f"kernel output {name}{_fmt_index(idx)} is NaN", argument=name, index=idx
    )
