"""The kernels' reference-free sub-arrays against NumPy's indexing."""

import numpy as np
import pytest
from numba import njit

from numbanorm.kernels.cpu.subarrays import sub, sub2


@njit(cache=False)
def _sub_copy(a, i):
    return sub(a, i).copy()


@njit(cache=False)
def _sub2_copy(a, i, j):
    return sub2(a, i, j).copy()


@njit(cache=False)
def _fill_sub2(a, i, j, value):
    view = sub2(a, i, j)
    view[:] = value


@njit(cache=False)
def _sum_rows(a):
    # Views passed to a loop and reduced, as the kernels use them.
    total = 0.0
    for i in range(a.shape[0]):
        row = sub(a, i)
        for j in range(row.size):
            total += row[j]
    return total


def _layouts():
    base = np.arange(3 * 4 * 5, dtype=np.float64).reshape(3, 4, 5) * 0.5 - 7.0
    return {
        "C": base,
        "F": np.asfortranarray(base),
        "transposed": base.transpose(1, 0, 2),
        "strided": np.arange(3 * 8 * 5, dtype=np.float32).reshape(3, 8, 5)[:, ::2, :],
        "reversed": base[::-1],
    }


@pytest.mark.parametrize("name", list(_layouts()))
def test_sub_and_sub2_are_numpy_indexing(name):
    a = _layouts()[name]
    for i in range(a.shape[0]):
        np.testing.assert_array_equal(_sub_copy(a, i), a[i])
        for j in range(a.shape[1]):
            np.testing.assert_array_equal(_sub2_copy(a, i, j), a[i, j])


def test_sub_of_a_2d_array_and_narrow_indices():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    for i in range(3):
        np.testing.assert_array_equal(_sub_copy(a, np.int32(i)), a[i])
    assert _sum_rows(a) == a.sum()


def test_sub_of_a_read_only_array():
    a = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    a.flags.writeable = False
    np.testing.assert_array_equal(_sub2_copy(a, 1, 2), a[1, 2])
    assert _sum_rows(a.reshape(6, 4)) == a.sum()


def test_sub2_writes_into_its_parent_only():
    a = np.zeros((3, 4, 5))
    _fill_sub2(a, 1, 2, 3.5)
    expected = np.zeros((3, 4, 5))
    expected[1, 2] = 3.5
    np.testing.assert_array_equal(a, expected)
    b = np.zeros((4, 3, 5)).transpose(1, 0, 2)  # not contiguous
    _fill_sub2(b, 2, 3, -1.0)
    assert (b[2, 3] == -1.0).all() and np.count_nonzero(b) == 5


def test_sub_rejects_what_it_does_not_take():
    with pytest.raises(Exception, match="sub"):
        _sub_copy(np.zeros(4), 0)
    with pytest.raises(Exception, match="sub2"):
        _sub2_copy(np.zeros((3, 4)), 0, 1)
