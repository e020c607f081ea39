"""Slow, obviously-correct NumPy float64 references for the numbanorm tests.

Everything here is written from the textbook formulas and never calls numbanorm.
All arithmetic is done in float64 whatever the input dtype; callers compare the
library's result (in its own dtype) against these values.

Notation: for a set S of M elements normalized together,

    mean = sum(x) / M,   var = sum((x - mean)**2) / M   (biased),
    rstd = 1 / sqrt(var + eps),   xhat = (x - mean) * rstd,
    y = xhat * weight + bias.

Backward of L with dL/dy = dy, dxhat = dy * weight:

    dx = rstd * (dxhat - mean_S(dxhat) - xhat * mean_S(dxhat * xhat)),
    dweight = sum(dy * xhat),  dbias = sum(dy)   (summed over everything but the
    parameter axis).

When the statistics are constants (eval-mode BatchNorm/InstanceNorm with running
statistics), dx = dxhat * rstd.
"""

import numpy as np

__all__ = [  # one line per family
    "bn_momentum_factor", "batch_norm", "batch_norm_backward", "RefBatchNorm",
    "layer_norm", "layer_norm_backward",
    "rms_eps", "rms_norm", "rms_norm_backward",
    "group_norm", "group_norm_backward",
    "instance_norm", "instance_norm_backward", "RefInstanceNorm",
    "fd_grads",
]


def _f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def _chan_shape(x):
    """Broadcast shape of a per-channel (axis 1) vector against x."""
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def _bn_axes(x):
    return (0,) + tuple(range(2, x.ndim))


def _channel_affine(y, weight, bias):
    """y * weight + bias with per-channel (axis 1) weight and bias, either may be None."""
    shp = _chan_shape(y)
    if weight is not None:
        y = y * _f64(weight).reshape(shp)
    if bias is not None:
        y = y + _f64(bias).reshape(shp)
    return y


def _moments(x, axes):
    """Two-pass mean and biased variance in float64, keepdims."""
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    return mean, var


def _normalized_backward(dxhat, xhat, rstd, axes):
    """dx for xhat = (x - mean(x)) * rstd(x) normalized over `axes`."""
    m1 = dxhat.mean(axis=axes, keepdims=True)
    m2 = (dxhat * xhat).mean(axis=axes, keepdims=True)
    return rstd * (dxhat - m1 - xhat * m2)


# ----------------------------------------------------------------------------
# BatchNorm
# ----------------------------------------------------------------------------


def bn_momentum_factor(momentum, num_batches_tracked):
    """PyTorch's exponential_average_factor.

    `num_batches_tracked` is the count *after* this batch was counted.
    momentum=None means cumulative moving average: 1 / num_batches_tracked.
    """
    if momentum is None:
        return 1.0 / float(num_batches_tracked)
    return float(momentum)


def batch_norm(x, running_mean=None, running_var=None, weight=None, bias=None,
               training=False, momentum=0.1, eps=1e-5):
    """Reference batch norm over axes (0, 2, 3, ...), channel axis 1.

    Returns (y, mean, invstd, new_running_mean, new_running_var): mean/invstd
    are the per-channel statistics used for normalization (batch statistics when
    training or when running stats are absent, else the running ones);
    new_running_* are the updated running statistics (None when absent).
    `momentum` must be the numeric factor (see bn_momentum_factor).
    """
    x = _f64(x)
    shp = _chan_shape(x)
    axes = _bn_axes(x)
    rm, rv = _f64(running_mean), _f64(running_var)
    new_rm, new_rv = rm, rv
    use_batch = training or rm is None
    if use_batch:
        m = x.size // x.shape[1]
        mean, var = _moments(x, axes)
        mean, var = mean.reshape(-1), var.reshape(-1)
        if training and rm is not None:
            unbiased = var * m / (m - 1)
            new_rm = (1.0 - momentum) * rm + momentum * mean
            new_rv = (1.0 - momentum) * rv + momentum * unbiased
    else:
        mean, var = rm, rv
    invstd = 1.0 / np.sqrt(var + eps)
    y = _channel_affine((x - mean.reshape(shp)) * invstd.reshape(shp), weight, bias)
    return y, mean, invstd, new_rm, new_rv


def batch_norm_backward(dy, x, mean, invstd, weight=None, bias=None, use_input_stats=True):
    """Reference (dx, dweight, dbias); use_input_stats=False treats mean/invstd as constants."""
    dy, x = _f64(dy), _f64(x)
    shp = _chan_shape(x)
    axes = _bn_axes(x)
    rstd = _f64(invstd).reshape(shp)
    xhat = (x - _f64(mean).reshape(shp)) * rstd
    dxhat = dy if weight is None else dy * _f64(weight).reshape(shp)
    if use_input_stats:
        dx = _normalized_backward(dxhat, xhat, rstd, axes)
    else:
        dx = dxhat * rstd
    dweight = None if weight is None else (dy * xhat).sum(axis=axes)
    dbias = None if bias is None else dy.sum(axis=axes)
    return dx, dweight, dbias


class _RefChannelNorm:
    """The stateful per-channel references: float64 weight and bias (ones and zeros unless
    given) with ``affine``, running statistics with ``track_running_stats``; subclasses give
    the functions and ``_step`` (whether the input's statistics are used, the momentum)."""

    def __init__(self, num_features, eps, momentum, affine, track_running_stats, weight, bias):
        self.eps = eps
        self.momentum = momentum
        self.training = True
        self.weight = self.bias = None
        if affine:
            self.weight = np.ones(num_features) if weight is None else _f64(weight).copy()
            self.bias = np.zeros(num_features) if bias is None else _f64(bias).copy()
        self.running_mean = np.zeros(num_features) if track_running_stats else None
        self.running_var = np.ones(num_features) if track_running_stats else None

    def forward(self, x):
        use_input_stats, momentum = self._step()
        y, mean, rstd, rm, rv = self._function(x, self.running_mean, self.running_var, self.weight, self.bias,
                                               use_input_stats, momentum, self.eps)
        if use_input_stats and self.running_mean is not None:
            self.running_mean, self.running_var = rm, rv
        self._saved = (_f64(x), mean, rstd, use_input_stats)
        return y

    def backward(self, dy):
        x, mean, rstd, use_input_stats = self._saved
        return self._backward_function(dy, x, mean, rstd, self.weight, self.bias, use_input_stats)


class RefBatchNorm(_RefChannelNorm):
    """Stateful reference mirroring torch.nn.BatchNormNd (float64 state)."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, weight=None, bias=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, weight, bias)
        self.num_batches_tracked = 0 if track_running_stats else None

    _function = staticmethod(batch_norm)
    _backward_function = staticmethod(batch_norm_backward)

    def _step(self):
        """(batch statistics?, momentum factor) of this forward; counts a training batch."""
        factor = 0.0
        if self.training and self.running_mean is not None:
            self.num_batches_tracked += 1
            factor = bn_momentum_factor(self.momentum, self.num_batches_tracked)
        return self.training or self.running_mean is None, factor


# ----------------------------------------------------------------------------
# LayerNorm / RMSNorm
# ----------------------------------------------------------------------------


def _norm_shape(normalized_shape):
    if isinstance(normalized_shape, (int, np.integer)):
        return (int(normalized_shape),)
    return tuple(int(s) for s in normalized_shape)


def _trailing_axes(x, normalized_shape):
    k = len(_norm_shape(normalized_shape))
    return tuple(range(x.ndim - k, x.ndim))


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Returns (y, mean, rstd); mean/rstd have shape x.shape[:-k]."""
    x = _f64(x)
    axes = _trailing_axes(x, normalized_shape)
    mean, var = _moments(x, axes)
    rstd = 1.0 / np.sqrt(var + eps)
    y = (x - mean) * rstd
    if weight is not None:
        y = y * _f64(weight)
    if bias is not None:
        y = y + _f64(bias)
    lead = x.shape[:x.ndim - len(axes)]
    return y, mean.reshape(lead), rstd.reshape(lead)


def layer_norm_backward(dy, x, normalized_shape, mean, rstd, weight=None, bias=None):
    dy, x = _f64(dy), _f64(x)
    axes = _trailing_axes(x, normalized_shape)
    kshape = x.shape[:x.ndim - len(axes)] + (1,) * len(axes)
    r = _f64(rstd).reshape(kshape)
    xhat = (x - _f64(mean).reshape(kshape)) * r
    dxhat = dy if weight is None else dy * _f64(weight)
    dx = _normalized_backward(dxhat, xhat, r, axes)
    lead_axes = tuple(range(x.ndim - len(axes)))
    dweight = None if weight is None else (dy * xhat).sum(axis=lead_axes)
    dbias = None if bias is None else dy.sum(axis=lead_axes)
    return dx, dweight, dbias


def rms_eps(dtype):
    """RMSNorm eps=None means the machine epsilon of the compute dtype."""
    return float(np.finfo(dtype).eps)


def rms_norm(x, normalized_shape, weight=None, eps=1e-6):
    """y = x / sqrt(mean(x**2) + eps) * weight. Returns (y, rstd)."""
    x = _f64(x)
    axes = _trailing_axes(x, normalized_shape)
    ms = (x * x).mean(axis=axes, keepdims=True)
    rstd = 1.0 / np.sqrt(ms + eps)
    y = x * rstd
    if weight is not None:
        y = y * _f64(weight)
    return y, rstd.reshape(x.shape[:x.ndim - len(axes)])


def rms_norm_backward(dy, x, normalized_shape, rstd, weight=None):
    """dx = r*dxhat - x * r**3 * mean(dxhat * x), dweight = sum(dy * x * r)."""
    dy, x = _f64(dy), _f64(x)
    axes = _trailing_axes(x, normalized_shape)
    kshape = x.shape[:x.ndim - len(axes)] + (1,) * len(axes)
    r = _f64(rstd).reshape(kshape)
    dxhat = dy if weight is None else dy * _f64(weight)
    dx = r * dxhat - x * r ** 3 * (dxhat * x).mean(axis=axes, keepdims=True)
    lead_axes = tuple(range(x.ndim - len(axes)))
    dweight = None if weight is None else (dy * x * r).sum(axis=lead_axes)
    return dx, dweight, None


# ----------------------------------------------------------------------------
# GroupNorm
# ----------------------------------------------------------------------------


def _grouped(x, num_groups):
    n, c = x.shape[:2]
    return x.reshape(n, num_groups, -1)


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    """Returns (y, mean, rstd) with mean/rstd of shape (N, G)."""
    x = _f64(x)
    n, c = x.shape[:2]
    assert c % num_groups == 0
    xg = _grouped(x, num_groups)
    mean, var = _moments(xg, (2,))
    rstd = 1.0 / np.sqrt(var + eps)
    y = _channel_affine(((xg - mean) * rstd).reshape(x.shape), weight, bias)
    return y, mean.reshape(n, num_groups), rstd.reshape(n, num_groups)


def group_norm_backward(dy, x, num_groups, mean, rstd, weight=None, bias=None):
    dy, x = _f64(dy), _f64(x)
    n, c = x.shape[:2]
    shp = _chan_shape(x)
    xg = _grouped(x, num_groups)
    r = _f64(rstd).reshape(n, num_groups, 1)
    xhat = ((xg - _f64(mean).reshape(n, num_groups, 1)) * r).reshape(x.shape)
    dxhat = dy if weight is None else dy * _f64(weight).reshape(shp)
    dx = _normalized_backward(_grouped(dxhat, num_groups), _grouped(xhat, num_groups),
                              r, (2,)).reshape(x.shape)
    axes = _bn_axes(x)
    dweight = None if weight is None else (dy * xhat).sum(axis=axes)
    dbias = None if bias is None else dy.sum(axis=axes)
    return dx, dweight, dbias


# ----------------------------------------------------------------------------
# InstanceNorm
# ----------------------------------------------------------------------------


def instance_norm(x, running_mean=None, running_var=None, weight=None, bias=None,
                  use_input_stats=True, momentum=0.1, eps=1e-5):
    """Reference instance norm (statistics per (n, c) over the spatial axes).

    Returns (y, mean, rstd, new_running_mean, new_running_var) with mean/rstd of
    shape (N, C). As in PyTorch (batch_norm on the (1, N*C, ...) view, then the
    per-instance running statistics averaged over the batch), the running update
    is  rm <- (1-m) rm + m * mean_n(mean_nc),  rv <- (1-m) rv + m * mean_n(uvar_nc)
    with uvar the unbiased per-instance variance.
    """
    x = _f64(x)
    n, c = x.shape[:2]
    axes = tuple(range(2, x.ndim))
    rm, rv = _f64(running_mean), _f64(running_var)
    new_rm, new_rv = rm, rv
    if use_input_stats:
        s = x[0, 0].size
        mean, var = _moments(x, axes)
        mean, var = mean.reshape(n, c), var.reshape(n, c)
        if rm is not None:
            unbiased = var * s / (s - 1)
            new_rm = (1.0 - momentum) * rm + momentum * mean.mean(axis=0)
            new_rv = (1.0 - momentum) * rv + momentum * unbiased.mean(axis=0)
    else:
        mean = np.broadcast_to(rm, (n, c)).copy()
        var = np.broadcast_to(rv, (n, c)).copy()
    rstd = 1.0 / np.sqrt(var + eps)
    kshape = (n, c) + (1,) * (x.ndim - 2)
    y = _channel_affine((x - mean.reshape(kshape)) * rstd.reshape(kshape), weight, bias)
    return y, mean, rstd, new_rm, new_rv


def instance_norm_backward(dy, x, mean, rstd, weight=None, bias=None, use_input_stats=True):
    dy, x = _f64(dy), _f64(x)
    n, c = x.shape[:2]
    kshape = (n, c) + (1,) * (x.ndim - 2)
    axes = tuple(range(2, x.ndim))
    r = np.broadcast_to(_f64(rstd), (n, c)).reshape(kshape)
    xhat = (x - np.broadcast_to(_f64(mean), (n, c)).reshape(kshape)) * r
    shp = _chan_shape(x)
    dxhat = dy if weight is None else dy * _f64(weight).reshape(shp)
    if use_input_stats:
        dx = _normalized_backward(dxhat, xhat, r, axes)
    else:
        dx = dxhat * r
    baxes = _bn_axes(x)
    dweight = None if weight is None else (dy * xhat).sum(axis=baxes)
    dbias = None if bias is None else dy.sum(axis=baxes)
    return dx, dweight, dbias


class RefInstanceNorm(_RefChannelNorm):
    """Stateful reference mirroring torch.nn.InstanceNormNd (float64 state).

    PyTorch passes momentum=None to F.instance_norm as 0.0 (running stats then
    never move) and never touches num_batches_tracked.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=False,
                 track_running_stats=False, weight=None, bias=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, weight, bias)

    _function = staticmethod(instance_norm)
    _backward_function = staticmethod(instance_norm_backward)

    def _step(self):
        """(instance statistics?, momentum); momentum None is 0 as in PyTorch."""
        return self.training or self.running_mean is None, 0.0 if self.momentum is None else self.momentum


# ----------------------------------------------------------------------------
# Finite differences
# ----------------------------------------------------------------------------


def fd_grads(f, inputs, g, h=1e-6):
    """Central-difference gradients of L = sum(f(**inputs) * g), in float64.

    `inputs` maps keyword names to arrays (None values are passed through and
    get a None gradient); `f` is called as f(**inputs) with float64 copies, each
    perturbed entry by +-h. Returns a dict name -> gradient array (same shape).
    Use tiny shapes: the cost is 2 evaluations per scalar input.
    """
    base = {k: (None if v is None else np.array(v, dtype=np.float64, copy=True))
            for k, v in inputs.items()}
    g = np.asarray(g, dtype=np.float64)

    def loss(args):
        return float(np.sum(np.asarray(f(**args), dtype=np.float64) * g))

    grads = {}
    for name, arr in base.items():
        if arr is None:
            grads[name] = None
            continue
        grad = np.zeros_like(arr)
        flat = arr.reshape(-1)  # view: base[name] is contiguous
        gflat = grad.reshape(-1)
        for i in range(flat.size):
            orig = flat[i]
            flat[i] = orig + h
            lp = loss(base)
            flat[i] = orig - h
            lm = loss(base)
            flat[i] = orig
            gflat[i] = (lp - lm) / (2.0 * h)
        grads[name] = grad
    return grads
