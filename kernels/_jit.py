"""The one place that sets the numba options of every kernel.

Every kernel in this package is compiled with

- ``cache=True``: the machine code is written beside the source (or under ``NUMBA_CACHE_DIR``)
  and loaded on the next start instead of being compiled again;
- ``nogil=True``: a kernel may run in a worker thread (``asyncio.to_thread``) without holding the
  interpreter lock;
- ``error_model="numpy"``: a division by zero gives inf/NaN as numpy does instead of raising, so
  no kernel carries Python exception paths; the public wrappers validate inputs before a kernel
  and check its outputs after;
- an explicit signature: the kernel is compiled (or loaded from the cache) when its module is
  imported, for exactly the array types listed, so nothing compiles in the middle of an incident
  and a wrong dtype fails at once with a ``TypeError`` instead of silently compiling again.

Signatures are built from the array types below, all C-contiguous. Inputs are declared
read-only (``IN_*``), so a kernel accepts both writeable arrays and the read-only arrays of a
compiled hall; arrays a kernel writes (``out_*``, ``scratch_*``) are declared writeable
(``OUT_*``). Every kernel returns nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import numba
import numpy as np
from numba import types

__all__ = [
    "F64",
    "I64",
    "IN_BOOL_1",
    "IN_F64_1",
    "IN_F64_2",
    "IN_F64_3",
    "IN_I8_1",
    "IN_I32_1",
    "IN_I64_1",
    "JIT_OPTIONS",
    "OUT_BOOL_1",
    "OUT_F64_1",
    "OUT_F64_2",
    "OUT_F64_3",
    "OUT_I8_1",
    "OUT_I32_1",
    "OUT_I64_1",
    "OUT_U64_1",
    "kernel",
]

F = TypeVar("F", bound=Callable[..., Any])

#: Options shared by every kernel of the package.
JIT_OPTIONS: dict[str, Any] = {"cache": True, "nogil": True, "error_model": "numpy"}


def _in(dtype: types.Type, ndim: int) -> types.Array:
    return types.Array(dtype, ndim, "C", readonly=True)


def _out(dtype: types.Type, ndim: int) -> types.Array:
    return types.Array(dtype, ndim, "C")


#: Scalar float64 argument.
F64 = types.float64
#: Scalar int64 argument.
I64 = types.int64
#: Read-only C-contiguous input arrays.
IN_F64_1 = _in(types.float64, 1)
IN_F64_2 = _in(types.float64, 2)
IN_F64_3 = _in(types.float64, 3)
IN_I32_1 = _in(types.int32, 1)
IN_I8_1 = _in(types.int8, 1)
IN_I64_1 = _in(types.int64, 1)
IN_BOOL_1 = _in(types.boolean, 1)
#: Writeable C-contiguous arrays a kernel fills.
OUT_F64_1 = _out(types.float64, 1)
OUT_F64_2 = _out(types.float64, 2)
OUT_F64_3 = _out(types.float64, 3)
OUT_I8_1 = _out(types.int8, 1)
OUT_I32_1 = _out(types.int32, 1)
OUT_I64_1 = _out(types.int64, 1)
OUT_U64_1 = _out(types.uint64, 1)
OUT_BOOL_1 = _out(types.boolean, 1)


def kernel(*arg_types: types.Type) -> Callable[[F], F]:
    """Compile a function eagerly in nopython mode with the package's jit options.

    ``arg_types`` are the numba types of the arguments, in order (the constants above); the
    kernel returns nothing (its results go into its ``out_*`` arguments).
    """
    if not arg_types or not all(isinstance(t, types.Type) for t in arg_types):
        raise TypeError(f"a kernel needs an explicit signature of numba types, got {arg_types!r}")
    signature = types.void(*arg_types)

    def decorate(func: F) -> F:
        if getattr(numba.config, "DISABLE_JIT", False):
            # NUMBA_DISABLE_JIT=1 (coverage runs): plain Python with numba's error_model="numpy"
            # semantics, where overflow and 0/0 give inf/NaN silently instead of warnings.
            @functools.wraps(func)
            def plain(*args: Any) -> Any:
                with np.errstate(all="ignore"):
                    return func(*args)

            return plain  # type: ignore[return-value]
        return numba.njit(signature, **JIT_OPTIONS)(func)  # type: ignore[return-value]

    return decorate
