"""Plain NumPy layers for the demo networks; the normalization layers are numbanorm's.

Every layer here has the same small interface as a numbanorm layer: ``layer(x)``
runs the forward pass and remembers what the backward pass needs,
``layer.backward(dy)`` returns ``dx`` and sets ``grad_weight`` / ``grad_bias``,
and ``train()`` / ``eval()`` return the layer. A :class:`Sequential` chains them,
so numbanorm layers and these ones mix freely.
"""

import numpy as np

__all__ = [
    "Conv2d",
    "Flatten",
    "Linear",
    "ReLU",
    "Sequential",
    "cross_entropy",
    "sgd_step",
]


class _Layer:
    """No parameters, no train/eval difference."""

    weight = None
    bias = None
    grad_weight = None
    grad_bias = None
    training = True

    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)


class Linear(_Layer):
    """``y = x @ weight.T + bias`` with weight ``(out_features, in_features)`` (PyTorch layout).

    Weights are drawn from N(0, (init_scale * sqrt(2 / in_features))^2) (He init times
    ``init_scale``); the bias starts at zero.
    """

    def __init__(self, in_features, out_features, *, bias=True, init_scale=1.0, rng=None,
                 dtype=np.float32):
        rng = np.random.default_rng() if rng is None else rng
        std = init_scale * np.sqrt(2.0 / in_features)
        self.weight = (rng.standard_normal((out_features, in_features)) * std).astype(dtype)
        self.bias = np.zeros(out_features, dtype) if bias else None
        self._x = None

    @classmethod
    def from_arrays(cls, weight, bias):
        layer = cls.__new__(cls)
        layer.weight, layer.bias, layer._x = weight, bias, None
        return layer

    def __call__(self, x):
        self._x = x
        y = x @ self.weight.T
        if self.bias is not None:
            y += self.bias
        return y

    def backward(self, dy):
        self.grad_weight = dy.T @ self._x
        self.grad_bias = dy.sum(axis=0) if self.bias is not None else None
        return dy @ self.weight

    def __repr__(self):
        out_features, in_features = self.weight.shape
        return f"Linear({in_features}, {out_features}, bias={self.bias is not None})"


class Conv2d(_Layer):
    """2-D convolution (cross-correlation, PyTorch's ``Conv2d``) by im2col + matmul.

    weight ``(out_channels, in_channels, k, k)``, square kernel, zero padding. The
    output is an NCHW-shaped view of NHWC memory (what the matmul produces), which
    numbanorm's BatchNorm2d takes without a copy.
    """

    def __init__(self, in_channels, out_channels, kernel_size, *, stride=1, padding=0, bias=True,
                 init_scale=1.0, rng=None, dtype=np.float32):
        rng = np.random.default_rng() if rng is None else rng
        fan_in = in_channels * kernel_size * kernel_size
        std = init_scale * np.sqrt(2.0 / fan_in)
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.weight = (rng.standard_normal(shape) * std).astype(dtype)
        self.bias = np.zeros(out_channels, dtype) if bias else None
        self.stride, self.padding = stride, padding
        self._cache = None

    @classmethod
    def from_arrays(cls, weight, bias, *, stride=1, padding=0):
        layer = cls.__new__(cls)
        layer.weight, layer.bias = weight, bias
        layer.stride, layer.padding, layer._cache = stride, padding, None
        return layer

    def _out_size(self, size):
        k = self.weight.shape[2]
        return (size + 2 * self.padding - k) // self.stride + 1

    def __call__(self, x):
        n, c, h, w = x.shape
        out_c, in_c, k, _ = self.weight.shape
        if c != in_c:
            raise ValueError(f"Conv2d expects {in_c} input channels, got {c}")
        p, s = self.padding, self.stride
        ho, wo = self._out_size(h), self._out_size(w)
        xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p))) if p else x
        # windows[n, c, i, j, di, dj] = xp[n, c, i + di, j + dj]
        windows = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))
        windows = windows[:, :, : s * (ho - 1) + 1 : s, : s * (wo - 1) + 1 : s]
        cols = windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * k * k)
        y = cols @ self.weight.reshape(out_c, -1).T
        if self.bias is not None:
            y += self.bias
        self._cache = (cols, x.shape, xp.shape)
        return y.reshape(n, ho, wo, out_c).transpose(0, 3, 1, 2)

    def backward(self, dy):
        cols, x_shape, xp_shape = self._cache
        n, c, h, w = x_shape
        out_c, _, k, _ = self.weight.shape
        p, s = self.padding, self.stride
        ho, wo = dy.shape[2], dy.shape[3]
        dy2 = dy.transpose(0, 2, 3, 1).reshape(n * ho * wo, out_c)
        self.grad_weight = (dy2.T @ cols).reshape(self.weight.shape)
        self.grad_bias = dy2.sum(axis=0) if self.bias is not None else None
        dcols = (dy2 @ self.weight.reshape(out_c, -1)).reshape(n, ho, wo, c, k, k)
        dxp = np.zeros(xp_shape, dtype=dy.dtype)
        for di in range(k):
            for dj in range(k):
                dxp[:, :, di : di + s * ho : s, dj : dj + s * wo : s] += dcols[
                    :, :, :, :, di, dj
                ].transpose(0, 3, 1, 2)
        return dxp[:, :, p : p + h, p : p + w] if p else dxp

    def __repr__(self):
        out_c, in_c, k, _ = self.weight.shape
        return (f"Conv2d({in_c}, {out_c}, kernel_size={k}, stride={self.stride}, "
                f"padding={self.padding}, bias={self.bias is not None})")


class ReLU(_Layer):
    def __call__(self, x):
        self._mask = x > 0
        return np.where(self._mask, x, 0).astype(x.dtype, copy=False)

    def backward(self, dy):
        return np.where(self._mask, dy, 0).astype(dy.dtype, copy=False)

    def __repr__(self):
        return "ReLU()"


class Flatten(_Layer):
    def __call__(self, x):
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self._shape)

    def __repr__(self):
        return "Flatten()"


class Sequential:
    """Layers applied in order; ``backward`` runs them in reverse."""

    def __init__(self, *layers):
        self.layers = list(layers)

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def backward(self, dy):
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    def train(self, mode=True):
        for layer in self.layers:
            layer.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def __iter__(self):
        return iter(self.layers)

    def __len__(self):
        return len(self.layers)

    def __repr__(self):
        inner = "".join(f"\n  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential({inner}\n)"


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy and its gradient with respect to ``logits``."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    log_p = shifted - log_z
    n = logits.shape[0]
    loss = -log_p[np.arange(n), labels].mean()
    grad = np.exp(log_p)
    grad[np.arange(n), labels] -= 1.0
    return float(loss), (grad / n).astype(logits.dtype)


def sgd_step(net, lr):
    """Plain SGD, ``p -= lr * grad`` in place, on every layer's weight and bias."""
    for layer in net:
        for name in ("weight", "bias"):
            param = getattr(layer, name, None)
            grad = getattr(layer, "grad_" + name, None)
            if param is not None and grad is not None:
                param -= (lr * grad).astype(param.dtype, copy=False)
