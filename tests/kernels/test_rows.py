"""kernels.rows against numpy's own reductions along axis 1, bit for bit, on awkward values
(NaN, ±inf, 0.0 and -0.0, ties) and shapes (no rows, one column, eight columns and more)."""

from __future__ import annotations

import numpy as np
import pytest

from kernels.rows import row_all, row_any, row_max, row_sum

SHAPES = [(0, 3), (1, 1), (5, 2), (200, 3), (99, 4), (64, 5), (64, 7), (64, 8), (33, 12)]


def _awkward(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    x = rng.normal(0.0, 1e3, shape)
    pick = rng.random(shape)
    x[pick < 0.05] = 0.0
    x[(pick >= 0.05) & (pick < 0.10)] = -0.0
    x[(pick >= 0.10) & (pick < 0.13)] = np.nan
    x[(pick >= 0.13) & (pick < 0.15)] = np.inf
    x[(pick >= 0.15) & (pick < 0.17)] = -np.inf
    if shape[1] > 1:
        tie = rng.random(shape[0]) < 0.2
        x[tie, 1] = x[tie, 0]
    return x


def _same_bits(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    if got.dtype.kind == "f":
        np.testing.assert_array_equal(got.view(np.uint64), want.view(np.uint64))
    else:
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", range(6))
def test_float_rows_are_numpys(shape, seed):
    rng = np.random.default_rng(seed)
    x = _awkward(rng, shape)
    with np.errstate(invalid="ignore"):
        if shape[0]:
            _same_bits(row_max(x), x.max(axis=1))
        _same_bits(row_sum(x), x.sum(axis=1))
    finite = np.where(np.isfinite(x), x, 1.5)   # sums whose rounding shows the order
    _same_bits(row_sum(finite * 1e-3 + 1e7), (finite * 1e-3 + 1e7).sum(axis=1))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", range(6))
def test_boolean_rows_are_numpys(shape, seed):
    b = np.random.default_rng(seed).random(shape) < 0.3
    _same_bits(row_any(b), b.any(axis=1))
    _same_bits(row_all(b), b.all(axis=1))
    _same_bits(row_all(~b), (~b).all(axis=1))


def test_a_view_of_columns_and_integers():
    x = np.arange(24.0).reshape(4, 6)[:, 1:4]   # not contiguous
    _same_bits(row_max(x), x.max(axis=1))
    _same_bits(row_sum(x), x.sum(axis=1))
    i = np.arange(12, dtype=np.int8).reshape(4, 3)
    _same_bits(row_sum(i), i.sum(axis=1))
    _same_bits(row_max(i), i.max(axis=1))


def test_wrong_input_is_refused():
    with pytest.raises(ValueError, match="2-D"):
        row_max(np.zeros(3))
    with pytest.raises(ValueError, match="boolean"):
        row_any(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="boolean"):
        row_all(np.zeros((2, 3)))
    with pytest.raises(ValueError):   # numpy's: no identity for the maximum of nothing
        row_max(np.zeros((2, 0)))
