"""Aligned allocation (numbanorm._memory) and the arrays the layers hand to kernels."""

import numpy as np
import pytest

import numbanorm
from numbanorm import _memory, config
from numbanorm import functional as F


def _address(a):
    return a.__array_interface__["data"][0]


@pytest.mark.parametrize("shape", [(0,), (1,), (3, 5), (7, 1, 64), (1 << 16,)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_empty_is_aligned_with_the_right_shape_and_dtype(shape, dtype):
    a = _memory.empty(shape, dtype, work=1 << 20)
    assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
    if a.size:
        assert _address(a) % config.ALIGN_BYTES == 0
    a[...] = 3  # the whole array is writable memory of its own
    assert np.all(a == 3)


def test_small_work_gets_a_plain_numpy_array(monkeypatch):
    monkeypatch.setattr(config, "ALIGN_MIN_ELEMENTS", 100)
    small = _memory.empty((3, 4), np.float32)
    assert small.base is None  # np.empty, no over-allocated buffer behind it
    assert _memory.empty((3, 4), np.float32, work=100).base is not None


def test_full_and_aligned():
    f = _memory.full((5, 3), 2.5, np.float32, work=1 << 20)
    assert f.dtype == np.float32 and np.all(f == 2.5) and _address(f) % config.ALIGN_BYTES == 0
    buf = _memory.empty(40, np.float64, work=1 << 20)
    buf[:] = np.arange(40)
    odd = buf[1:33]  # 8 bytes past an aligned start
    assert _address(odd) % config.ALIGN_BYTES == 8
    got = _memory.aligned(odd, work=1 << 20)
    assert _address(got) % config.ALIGN_BYTES == 0
    np.testing.assert_array_equal(got, odd)
    assert _memory.aligned(got, work=1 << 20) is got  # already aligned: no copy
    assert _memory.aligned(odd, work=1) is odd  # small work: used as it is


def test_large_outputs_and_layer_parameters_are_aligned():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 8, 48, 48)).astype(np.float32)
    x_cl = np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1, 1)
    for arr in (x, x_cl):
        bn = numbanorm.BatchNorm2d(8)
        y = bn(arr)
        assert _address(y) % config.ALIGN_BYTES == 0
        np.testing.assert_allclose(y, F.batch_norm(arr, None, None, training=True), rtol=1e-5, atol=1e-5)
        dx = bn.backward(np.ones_like(arr))
        assert _address(dx) % config.ALIGN_BYTES == 0
        assert y.strides == arr.strides  # layout kept
    ln = numbanorm.LayerNorm(48)
    for p in (ln.weight, ln.bias):
        assert _address(p) % config.ALIGN_BYTES == 0
    assert _address(ln(x)) % config.ALIGN_BYTES == 0


def test_misaligned_user_parameters_give_the_same_result():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 1024)).astype(np.float32)
    buf = rng.standard_normal(2 * 1024 + 1).astype(np.float32)
    w, b = buf[1:1025], buf[1025:]  # 4 bytes into the buffer: misaligned views
    y = F.layer_norm(x, 1024, w, b)
    x64 = x.astype(np.float64)
    ref = (x64 - x64.mean(1, keepdims=True)) / np.sqrt(x64.var(1, keepdims=True) + 1e-5) * w + b
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


# -- recycled large buffers -------------------------------------------------------------

@pytest.fixture
def pool(monkeypatch):
    """A fresh, empty pool recycling buffers from 64 KiB, up to 1 MiB in all."""
    monkeypatch.setattr(_memory, "_POOL", [])
    monkeypatch.setattr(config, "RECYCLE_MIN_BYTES", 1 << 16)
    monkeypatch.setattr(config, "RECYCLE_BYTES", 1 << 20)
    return _memory._POOL


def _big(shape, dtype=np.float32):
    return _memory.empty(shape, dtype, work=1 << 20)


def test_a_dropped_output_buffer_is_handed_out_again(pool):
    a = _big((128, 256))
    where = _address(a)
    assert _address(a) % config.ALIGN_BYTES == 0 and len(pool) == 1
    del a
    b = _big((256, 128))  # same bytes, another shape
    assert _address(b) == where and len(pool) == 1
    c = _big((128, 256), np.float64)  # another size: a buffer of its own
    assert _address(c) != where and len(pool) == 2


def _held(a, keep):
    if keep == "view":
        return a[3:]
    if keep == "strided":
        return a[::2, ::3]
    if keep == "memoryview":
        return memoryview(a)
    if keep == "reinterpreted":
        return a.reshape(-1).view(np.int32)
    return [a]


@pytest.mark.parametrize("keep", ["view", "strided", "memoryview", "reinterpreted", "in a list"])
def test_a_buffer_is_not_reused_while_anything_refers_to_it(pool, keep):
    a = _big((128, 256))
    a[...] = 7
    held = _held(a, keep)
    del a
    b = _big((128, 256))
    b[...] = -1
    kept = np.asarray(held[0] if keep == "in a list" else held)
    assert not np.shares_memory(kept, b)
    assert np.all(kept.view(np.float32) == 7)


def test_a_torch_tensor_built_on_an_output_keeps_its_buffer(pool):
    torch = pytest.importorskip("torch")
    a = _big((128, 256))
    a[...] = 5
    t = torch.from_numpy(a)
    del a
    b = _big((128, 256))
    b[...] = 0
    assert float(t.min()) == 5 and float(t.max()) == 5


def test_layer_outputs_of_consecutive_calls_stay_intact(pool):
    rng = np.random.default_rng(2)
    x1, x2 = (rng.standard_normal((4, 8, 64, 64)).astype(np.float32) for _ in range(2))
    bn = numbanorm.BatchNorm2d(8)
    y1 = bn(x1)
    y2 = bn(x2)
    dx2 = bn.backward(np.ones_like(x2))
    for y, x in ((y1, x1), (y2, x2)):
        np.testing.assert_allclose(y, F.batch_norm(x, None, None, training=True), rtol=1e-5, atol=1e-5)
    assert not np.shares_memory(y1, y2) and not np.shares_memory(y2, dx2)
    where = _address(y1)
    del y1
    y3 = bn(x1)  # the first output's buffer again, filled anew
    assert _address(y3) == where
    np.testing.assert_allclose(y3, F.batch_norm(x1, None, None, training=True), rtol=1e-5, atol=1e-5)


def test_the_pool_stays_within_its_bytes_and_evicts_unused_buffers(pool):
    big = (1 << 20) - config.ALIGN_BYTES  # one buffer fills the pool
    a = _big(big // 4)
    assert len(pool) == 1
    b = _big(big // 4)  # the pool is full and a is in use: not pooled
    assert len(pool) == 1 and not np.shares_memory(a, b)
    del a
    c = _big(1 << 16)  # another size: the unused buffer goes
    assert len(pool) == 1 and pool[0].nbytes == c.nbytes + config.ALIGN_BYTES
    del b


def test_release_frees_unused_buffers_only(pool):
    a = _big((128, 256))
    b = _big((128, 256))
    assert len(pool) == 2
    del a
    assert numbanorm.release_memory() == 128 * 256 * 4 + config.ALIGN_BYTES
    assert len(pool) == 1 and pool[0] is b.base
    b[...] = 1  # still the caller's
    del b
    assert numbanorm.release_memory() > 0 and not pool


def test_recycling_off_and_small_arrays(pool, monkeypatch):
    monkeypatch.setattr(config, "RECYCLE_BYTES", 0)
    a = _big((128, 256))
    assert not pool and _address(a) % config.ALIGN_BYTES == 0
    monkeypatch.setattr(config, "RECYCLE_BYTES", 1 << 20)
    _memory.empty((64, 64), np.float32, work=1 << 20)  # 16 KiB: below RECYCLE_MIN_BYTES
    assert not pool


def test_threads_never_share_a_buffer(pool):
    import threading

    errors = []

    def work(tid):
        for _ in range(200):
            a = _big((128, 256))
            a[...] = tid
            a[-1, -1] = tid  # after the bulk write, another thread's write would show
            if not np.all(a == tid):
                errors.append(tid)
            del a

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
