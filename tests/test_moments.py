"""The moments primitive: per-slice two-pass moments, Chan's merge, row and column drivers."""

import numpy as np
import pytest

from numbanorm import config
from numbanorm.kernels.cpu import moments as M
from numbanorm.kernels.cpu import sums as S


def _ref(x):
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean()
    return x.size, mean, ((x - mean) ** 2).sum()


@pytest.mark.parametrize("n", [1, 3, 7, 1023, 4096, 4097, 10000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_slice_moments_matches_two_pass_reference(n, dtype):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 3 + 5).astype(dtype)
    count, mean, m2 = M.slice_moments(x, 1024, config.SHIFT_RATIO_MAX, True)
    rc, rmean, rm2 = _ref(x)
    assert count == rc
    np.testing.assert_allclose(mean, rmean, rtol=1e-13)
    np.testing.assert_allclose(m2, rm2, rtol=1e-11, atol=1e-12)


def test_slice_moments_far_from_zero_float32():
    # mean 1e4, std 1e-2 in float32: E[x^2]-E[x]^2 would lose every digit here.
    rng = np.random.default_rng(0)
    x = (1e4 + 1e-2 * rng.standard_normal(9000)).astype(np.float32)
    _, mean, m2 = M.slice_moments(x, 512, config.SHIFT_RATIO_MAX, True)
    _, rmean, rm2 = _ref(x)
    assert abs(mean - rmean) < 1e-9
    np.testing.assert_allclose(m2 / x.size, rm2 / x.size, rtol=1e-9)


def test_constant_slice_has_zero_m2():
    x = np.full(5000, 1234.5, np.float32)
    count, mean, m2 = M.slice_moments(x, 1000, config.SHIFT_RATIO_MAX, True)
    assert (count, mean, m2) == (5000.0, 1234.5, 0.0)


@pytest.mark.parametrize("first", [None, 1e4 + 30.0, 1e4 - 1e3, 3e4])
def test_block_moments_with_any_first_value(first):
    # mean 1e4, std 1e-2 float32 data; an outlier first value makes the shifted sums
    # cancel (r up to n), and the check hands those blocks to the two-pass algorithm
    rng = np.random.default_rng(11)
    x = (1e4 + 1e-2 * rng.standard_normal(4096)).astype(np.float32)
    if first is not None:
        x[0] = first
    mean, m2 = M._block_moments(x, config.SHIFT_RATIO_MAX)
    _, rmean, rm2 = _ref(x)
    np.testing.assert_allclose(mean, rmean, rtol=1e-14)
    np.testing.assert_allclose(m2, rm2, rtol=1e-10)


def test_block_moments_ratio_decides_the_path():
    rng = np.random.default_rng(12)
    x = rng.standard_normal(1000) + 3.0
    x[0] = 50.0  # r = n (mean - x[0])**2 / M2 is about 560 here
    shift_mean, shift_m2 = M._block_moments(x, 1e6)
    two_mean, two_m2 = M._block_moments(x, 1.0)
    assert (two_mean, two_m2) == M._two_pass(x)
    assert (shift_mean, shift_m2) != (two_mean, two_m2)  # the shifted sums ran
    _, rmean, rm2 = _ref(x)
    for mean, m2 in [(shift_mean, shift_m2), (two_mean, two_m2)]:
        np.testing.assert_allclose(mean, rmean, rtol=1e-13)
        np.testing.assert_allclose(m2, rm2, rtol=1e-11)


def test_block_moments_never_negative_and_keeps_inf_and_nan():
    x = np.full(777, 0.1, np.float64)
    x[1::2] = np.nextafter(0.1, 1.0)  # nearly constant: M2 is ~1e-31, the sums ~1e-29
    assert M._block_moments(x, config.SHIFT_RATIO_MAX)[1] >= 0.0
    y = np.ones(10, np.float32)
    y[0] = np.inf  # a non-finite first value: two-pass semantics, mean inf and M2 NaN
    mean, m2 = M._block_moments(y, config.SHIFT_RATIO_MAX)
    assert mean == np.inf and np.isnan(m2)
    y[0], y[5] = 1.0, np.inf
    mean, m2 = M._block_moments(y, config.SHIFT_RATIO_MAX)
    assert mean == np.inf and np.isnan(m2)
    y[5] = np.nan  # NaN after a finite first value: the shifted sums keep it
    mean, m2 = M._block_moments(y, config.SHIFT_RATIO_MAX)
    assert np.isnan(mean) and np.isnan(m2)

def test_chan_merge_equals_whole():
    rng = np.random.default_rng(1)
    a = rng.standard_normal(37) + 100
    b = rng.standard_normal(101) * 5 - 3
    merged = M.chan_merge(*_ref(a), *_ref(b))
    whole = _ref(np.concatenate([a, b]))
    np.testing.assert_allclose(merged, whole, rtol=1e-12)
    # an empty side is the identity
    assert M.chan_merge(0.0, 0.0, 0.0, *_ref(a)) == _ref(a)
    assert M.chan_merge(*_ref(a), 0.0, 0.0, 0.0) == _ref(a)


def test_merge_partials_unequal_counts():
    rng = np.random.default_rng(2)
    pieces = [rng.standard_normal(n) * (i + 1) + i for i, n in enumerate([5, 1, 17, 3])]
    counts = np.array([[p.size for p in pieces]], dtype=np.float64)
    mean = np.array([[p.mean() for p in pieces]])
    m2 = np.array([[((p - p.mean()) ** 2).sum() for p in pieces]])
    count, mu, s = M.merge(counts, mean, m2)
    _, rmean, rm2 = _ref(np.concatenate(pieces))
    assert count[0] == 26
    np.testing.assert_allclose(mu[0], rmean, rtol=1e-13)
    np.testing.assert_allclose(s[0], rm2, rtol=1e-12)


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (64, 1023), (5, 20000)])
def test_row_moments(shape):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape) + 10).astype(np.float32)
    count, mean, m2 = M.row_moments(x)
    x64 = x.astype(np.float64)
    assert count == shape[1]
    np.testing.assert_allclose(mean, x64.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(m2, ((x64 - x64.mean(axis=1, keepdims=True)) ** 2).sum(axis=1), rtol=1e-9)


@pytest.mark.parametrize("shape", [(1, 1, 3), (2, 7, 5), (1, 50000, 3), (3, 1023, 64)])
def test_column_moments(shape, monkeypatch):
    # small blocks and a low threshold exercise chunking, blocking and the parallel build
    monkeypatch.setattr(config, "COLUMN_BLOCK_ELEMENTS", 64)
    monkeypatch.setattr(config, "COLUMN_MIN_ROWS", 1)
    monkeypatch.setattr(config, "PARALLEL_MIN_ELEMENTS", 1000)
    rng = np.random.default_rng(4)
    x = (rng.standard_normal(shape) * 2 - 7).astype(np.float64)
    count, mean, m2 = M.column_moments(x)
    assert count == shape[1]
    np.testing.assert_allclose(mean, x.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(m2, ((x - x.mean(axis=1, keepdims=True)) ** 2).sum(axis=1), rtol=1e-10)


def test_nan_propagates_only_to_its_slice():
    x = np.ones((3, 100), np.float32)
    x[1, 7] = np.nan
    _, mean, m2 = M.row_moments(x)
    assert np.isnan(mean[1]) and np.isnan(m2[1])
    assert np.all(np.isfinite(mean[[0, 2]])) and np.all(m2[[0, 2]] == 0)


@pytest.mark.parametrize("rows", [0, 1, 3, 7, 8, 9, 15, 16, 17, 1023])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fallback", [False, True])
def test_cols_range_moments_every_row_count(rows, dtype, fallback):
    # shifted sums over eight segments of rows // 8 rows plus a tail, and the Welford
    # fallback (two streams of rows // 8 * 4 rows plus a tail): every split is exercised
    rng = np.random.default_rng(rows)
    x = (rng.standard_normal((rows, 5)) * 3 + 5).astype(dtype)
    mean, m2, tmp = np.empty(5), np.empty(5), np.empty((2, 5))
    if fallback:
        count = M.cols_welford(x, mean, m2, tmp)
    else:
        count = M.cols_range_moments(x, mean, m2, tmp, 1024.0)
    assert count == rows
    x64 = x.astype(np.float64)
    if rows == 0:
        assert np.all(mean == 0) and np.all(m2 == 0)
        return
    np.testing.assert_allclose(mean, x64.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(m2, ((x64 - x64.mean(axis=0)) ** 2).sum(axis=0), rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("rows", [1, 7, 8, 9, 17, 1023])
def test_cols_shifted_sums_every_row_count(rows):
    rng = np.random.default_rng(rows)
    x = (rng.standard_normal((rows, 6)) * 3 + 5).astype(np.float32)
    k = rng.standard_normal(6)
    s1, s2 = np.full(6, 7.0), np.full(6, 7.0)  # overwritten, not added to
    M.cols_shifted_sums(x, k, s1, s2)
    d = x.astype(np.float64) - k
    np.testing.assert_allclose(s1, d.sum(axis=0), rtol=1e-12)
    np.testing.assert_allclose(s2, (d * d).sum(axis=0), rtol=1e-12)


def test_cols_range_moments_falls_back_to_welford():
    """A first row far out (cancellation ratio above max_ratio) or not finite: the range is
    computed by lane-wise Welford instead, and a ratio under the bound is not."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((300, 4)) + 3.0
    x[0, 2] = 1e9  # r = n (mean - x0)**2 / M2 is about 300 / 1 here, over a max_ratio of 10
    mean, m2, tmp = np.empty(4), np.empty(4), np.empty((2, 4))
    w_mean, w_m2 = np.empty(4), np.empty(4)
    M.cols_welford(x, w_mean, w_m2, np.empty((2, 4)))
    M.cols_range_moments(x, mean, m2, tmp, 10.0)
    np.testing.assert_array_equal(mean, w_mean)
    np.testing.assert_array_equal(m2, w_m2)
    M.cols_range_moments(x, mean, m2, tmp, 1024.0)  # under the bound: shifted sums, losing a few bits
    np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(m2, ((x - x.mean(axis=0)) ** 2).sum(axis=0), rtol=1e-9)
    x[0, 1] = np.nan  # a non-finite first value: Welford too; the NaN column stays NaN
    M.cols_welford(x, w_mean, w_m2, np.empty((2, 4)))
    M.cols_range_moments(x, mean, m2, tmp, 1024.0)
    np.testing.assert_array_equal(mean, w_mean)
    assert np.isnan(mean[1]) and np.isnan(m2[1]) and np.all(np.isfinite(mean[[0, 2, 3]]))



@pytest.mark.parametrize("rows", [0, 1, 2, 3, 7, 8, 1023])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cols_block_grad_sums_every_row_count(rows, dtype):
    # rows i and i + rows // 2 share a sweep and an odd count leaves a last row alone
    rng = np.random.default_rng(rows)
    x = (rng.standard_normal((rows, 5)) * 3 + 5).astype(dtype)
    dy = rng.standard_normal((rows, 5)).astype(dtype)
    mean = rng.standard_normal(5)
    s_dy, s_dyx = np.full(5, 0.5), np.full(5, -0.25)
    S.cols_block_grad_sums(x, dy, mean, s_dy, s_dyx)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    np.testing.assert_allclose(s_dy, 0.5 + dy64.sum(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(s_dyx, -0.25 + (dy64 * (x64 - mean)).sum(axis=0), rtol=1e-12, atol=1e-12)

def test_cols_range_moments_far_from_zero_float32():
    # mean 1e4, std 1e-2 in float32, 3000 rows: shifted float64 sums keep every digit that matters
    rng = np.random.default_rng(5)
    x = (1e4 + 1e-2 * rng.standard_normal((3001, 64))).astype(np.float32)
    mean, m2 = np.empty(64), np.empty(64)
    M.cols_range_moments(x, mean, m2, np.empty((2, 64)), 1024.0)
    x64 = x.astype(np.float64)
    ref_mean = x64.mean(axis=0)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-14)
    np.testing.assert_allclose(m2, ((x64 - ref_mean) ** 2).sum(axis=0), rtol=1e-9)


@pytest.mark.parametrize("n_a, n_b", [(0.0, 5.0), (7.0, 0.0), (3.0, 1e6), (1e6, 3.0)])
def test_chan_merge_into_is_chan_merge_per_entry(n_a, n_b):
    rng = np.random.default_rng(3)
    mean_a, mean_b = rng.standard_normal(37) * 100, rng.standard_normal(37) * 100
    m2_a, m2_b = rng.random(37) * 10, rng.random(37) * 10
    a, q = mean_a.copy(), m2_a.copy()
    n = M.chan_merge_into(n_a, a, q, n_b, mean_b, m2_b)
    for j in range(37):
        n_j, mu_j, s_j = M.chan_merge(n_a, mean_a[j], m2_a[j], n_b, mean_b[j], m2_b[j])
        assert n == n_j
        np.testing.assert_allclose([a[j], q[j]], [mu_j, s_j], rtol=1e-14, atol=0)  # FMA contraction may differ
