"""Layout handling: contiguous and channels-last inputs need no copy; outputs keep the layout."""

import numpy as np

from numbanorm.kernels.cpu import layout as _layout


def test_contiguous_is_a_view():
    x = np.zeros((2, 3, 4, 5), np.float32)
    layout, x3 = _layout.channel_view(x)
    assert layout == "cf" and x3.shape == (2, 3, 20) and np.shares_memory(x3, x)


def test_channels_last_is_a_view_and_output_keeps_layout():
    x = np.zeros((2, 4, 5, 3), np.float32).transpose(0, 3, 1, 2)
    layout, x3 = _layout.channel_view(x)
    assert layout == "cl" and x3.shape == (2, 20, 3) and np.shares_memory(x3, x)
    y3, y = _layout.new_output(layout, x3, x.shape)
    assert y.shape == x.shape and y.strides == x.strides and np.shares_memory(y3, y)


def test_two_dim_input_is_channels_last_without_copy():
    x = np.zeros((7, 3))
    layout, x3 = _layout.channel_view(x)
    assert layout == "cl" and x3.shape == (7, 1, 3) and np.shares_memory(x3, x)


def test_odd_strides_copy_once():
    base = np.arange(2 * 6 * 4 * 5, dtype=np.float64).reshape(2, 6, 4, 5)
    x = base[:, ::2]
    layout, x3 = _layout.channel_view(x)
    assert layout == "cf" and not np.shares_memory(x3, base)
    np.testing.assert_array_equal(x3.reshape(x.shape), x)


def test_like_view_brings_dy_into_the_input_layout():
    x = np.zeros((2, 4, 5, 3)).transpose(0, 3, 1, 2)
    layout, x3 = _layout.channel_view(x)
    dy = np.arange(x.size, dtype=np.float64).reshape(x.shape)  # contiguous NCHW
    dy3 = _layout.like_view(layout, x3, dy)
    np.testing.assert_array_equal(dy3.reshape(2, 4, 5, 3).transpose(0, 3, 1, 2), dy)
