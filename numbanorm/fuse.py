r"""Fold an inference-mode BatchNorm into the preceding Linear or Conv layer.

At test time a BatchNorm layer uses its running statistics, so it is a fixed
per-channel affine map (Ioffe & Szegedy 2015, section 3.1):

.. math::

    \mathrm{BN}(z)_c = \gamma_c \frac{z_c - \mu_c}{\sqrt{\sigma^2_c + \epsilon}} + \beta_c
                     = s_c z_c + t_c,
    \qquad s_c = \frac{\gamma_c}{\sqrt{\sigma^2_c + \epsilon}},
    \qquad t_c = \beta_c - \mu_c s_c .

When ``z = W x + b`` comes from a Linear or Conv layer whose output channel ``c``
is row ``c`` of ``W``, the composition is again a Linear/Conv layer,

.. math::

    W'_c = s_c W_c, \qquad b'_c = (b_c - \mu_c) s_c + \beta_c ,

so the normalization costs nothing at inference ("zero overhead at test time").

References
----------
S. Ioffe and C. Szegedy, "Batch Normalization: Accelerating Deep Network Training
by Reducing Internal Covariate Shift", ICML 2015, arXiv:1502.03167.
"""

import numpy as np

__all__ = ["bn_scale_shift", "fold_batchnorm"]


def _float_array(value, what):
    """Return ``value`` as a NumPy array of a real floating dtype, else raise TypeError."""
    try:
        array = np.asarray(value)
    except Exception as exc:  # e.g. a torch tensor that requires grad
        raise TypeError(
            f"{what} must be a NumPy array of float32 or float64, got {type(value).__name__}"
        ) from exc
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(
            f"{what} must have a real floating dtype (float32 or float64), got dtype {array.dtype}"
        )
    return array


def _bn_params64(bn):
    """The BatchNorm's running mean/var, gamma, beta and eps, checked, in float64."""
    running_mean = getattr(bn, "running_mean", None)
    running_var = getattr(bn, "running_var", None)
    if running_mean is None or running_var is None:
        raise ValueError(
            "cannot fold a BatchNorm without running statistics "
            "(it was built with track_running_stats=False, so even in eval mode it normalizes "
            "with batch statistics and is not a fixed affine map); "
            "use track_running_stats=True"
        )
    mean = _float_array(running_mean, "bn.running_mean").astype(np.float64).reshape(-1)
    var = _float_array(running_var, "bn.running_var").astype(np.float64).reshape(-1)
    num_features = mean.shape[0]
    if var.shape[0] != num_features:
        raise ValueError(
            f"bn.running_var has {var.shape[0]} values but bn.running_mean has {num_features}"
        )
    gamma = getattr(bn, "weight", None)
    beta = getattr(bn, "bias", None)
    gamma = (
        np.ones(num_features)
        if gamma is None
        else _float_array(gamma, "bn.weight").astype(np.float64).reshape(-1)
    )
    beta = (
        np.zeros(num_features)
        if beta is None
        else _float_array(beta, "bn.bias").astype(np.float64).reshape(-1)
    )
    for name, arr in (("bn.weight", gamma), ("bn.bias", beta)):
        if arr.shape[0] != num_features:
            raise ValueError(
                f"{name} has {arr.shape[0]} values, expected num_features={num_features}"
            )
    eps = float(bn.eps)
    return mean, var, gamma, beta, eps


def _scale(var, gamma, eps):
    """gamma / sqrt(var + eps), in float64."""
    return gamma / np.sqrt(var + eps)


def bn_scale_shift(bn):
    r"""Per-channel ``(scale, shift)`` of an inference-mode BatchNorm.

    With running mean :math:`\mu`, running variance :math:`\sigma^2`, weight
    :math:`\gamma` (1 when ``affine=False``), bias :math:`\beta` (0 when
    ``affine=False``) and ``eps`` :math:`\epsilon`, the eval-mode BatchNorm is
    ``y = x * scale + shift`` per channel (Ioffe & Szegedy 2015), with

    .. math::

        \mathrm{scale} = \frac{\gamma}{\sqrt{\sigma^2 + \epsilon}}, \qquad
        \mathrm{shift} = \beta - \mu \cdot \mathrm{scale} .

    Parameters
    ----------
    bn : BatchNorm1d, BatchNorm2d or BatchNorm3d
        A numbanorm BatchNorm (or any object with ``running_mean``,
        ``running_var``, ``weight``, ``bias`` and ``eps``) that tracks running
        statistics. Its ``training`` flag is not consulted: the running
        statistics are used, as in eval mode.

    Returns
    -------
    scale, shift : np.ndarray
        float64 arrays of shape ``(num_features,)``.

    Raises
    ------
    ValueError
        If the BatchNorm has no running statistics (``track_running_stats=False``)
        or its arrays disagree in length.
    TypeError
        If its arrays are not real floating point.

    Notes
    -----
    The numbanorm eval kernel computes ``(x - mean) * scale + bias`` rather than
    ``x * scale + shift``, which cancels for data far from zero; ``shift`` is
    meant for folding and for inspection.

    References
    ----------
    S. Ioffe and C. Szegedy, "Batch Normalization: Accelerating Deep Network
    Training by Reducing Internal Covariate Shift", ICML 2015, arXiv:1502.03167.
    """
    mean, var, gamma, beta, eps = _bn_params64(bn)
    scale = _scale(var, gamma, eps)
    shift = beta - mean * scale
    return scale, shift


def fold_batchnorm(weight, bias, bn, *, transpose=False):
    r"""Fold an inference-mode BatchNorm into the preceding Linear or Conv layer.

    For a layer ``z = W x + b`` (Linear, or Conv1d/2d/3d whose output channel
    ``c`` uses ``W[c]``) followed by an eval-mode BatchNorm with running mean
    :math:`\mu`, running variance :math:`\sigma^2`, weight :math:`\gamma`,
    bias :math:`\beta` and ``eps`` :math:`\epsilon`, the composition is the
    single layer with

    .. math::

        s_c = \frac{\gamma_c}{\sqrt{\sigma^2_c + \epsilon}}, \qquad
        W'_c = s_c W_c, \qquad
        b'_c = (b_c - \mu_c)\, s_c + \beta_c

    (Ioffe & Szegedy 2015, section 3.1). The arithmetic is done in float64
    and the results are cast back, so folding adds no float32 rounding of its
    own. The result equals PyTorch's
    ``torch.nn.utils.fusion.fuse_linear_bn_weights`` /
    ``fuse_conv_bn_weights`` (which compute in the parameters' dtype).

    Parameters
    ----------
    weight : np.ndarray
        The preceding layer's weight: ``(out_features, in_features)`` for a
        Linear layer, ``(out_channels, in_channels / groups, *kernel_size)``
        for Conv1d/2d/3d (3 to 5 dimensions). With ``transpose=True``, a
        ConvTranspose weight ``(in_channels, out_channels, *kernel_size)``
        (``groups=1``).
    bias : np.ndarray or None
        The preceding layer's bias, shape ``(out_channels,)``, or None when
        the layer has no bias (common before a BatchNorm).
    bn : BatchNorm1d, BatchNorm2d or BatchNorm3d
        A numbanorm BatchNorm with running statistics
        (``track_running_stats=True``), or any object with ``running_mean``,
        ``running_var``, ``weight``, ``bias`` (None when ``affine=False``) and
        ``eps``. The fold reproduces its eval-mode output; its ``training``
        flag is not consulted. A fused epilogue (``activation``, a residual) is
        not part of the BatchNorm's affine map and is not folded: apply it to
        the folded layer's output.
    transpose : bool, default False
        The weight is a ConvTranspose weight, whose output channels are its
        second dimension (as in ``fuse_conv_bn_weights(..., transpose=True)``).

    Returns
    -------
    new_weight : np.ndarray
        Same shape and dtype as ``weight``.
    new_bias : np.ndarray
        Shape ``(out_channels,)``; the dtype of ``bias``, or of ``weight``
        when ``bias`` is None.

    Raises
    ------
    ValueError
        If the BatchNorm has no running statistics, ``weight`` has the wrong
        number of dimensions, or the layer's output channels do not match the
        BatchNorm's ``num_features`` (or the bias length).
    TypeError
        If ``weight``, ``bias`` or the BatchNorm's arrays are not real floating
        point (int, bool or complex).

    See Also
    --------
    bn_scale_shift : the per-channel ``(scale, shift)`` used here.

    References
    ----------
    S. Ioffe and C. Szegedy, "Batch Normalization: Accelerating Deep Network
    Training by Reducing Internal Covariate Shift", ICML 2015, arXiv:1502.03167.

    Examples
    --------
    >>> import numpy as np
    >>> from numbanorm import BatchNorm1d
    >>> from numbanorm.fuse import fold_batchnorm
    >>> bn = BatchNorm1d(3).eval()
    >>> bn.running_mean[:] = [1.0, 2.0, 3.0]
    >>> w = np.ones((3, 2), dtype=np.float32)
    >>> new_w, new_b = fold_batchnorm(w, None, bn)
    >>> new_w.dtype, new_b.dtype, new_b.shape
    (dtype('float32'), dtype('float32'), (3,))
    >>> x = np.array([[0.5, -1.0]], dtype=np.float32)
    >>> bool(np.allclose(x @ new_w.T + new_b, bn(x @ w.T), atol=1e-6))
    True
    """
    weight = _float_array(weight, "weight")
    if not 2 <= weight.ndim <= 5:
        raise ValueError(
            "weight must have 2 dimensions (Linear: (out_features, in_features)) or 3 to 5 "
            "(Conv1d/2d/3d: (out_channels, in_channels, *kernel_size)), "
            f"got ndim={weight.ndim} with shape {weight.shape}"
        )
    if transpose and weight.ndim < 3:
        raise ValueError(
            "transpose=True expects a ConvTranspose weight with 3 to 5 dimensions, "
            f"got shape {weight.shape}"
        )
    channel_axis = 1 if transpose else 0
    out_channels = weight.shape[channel_axis]
    mean, var, gamma, beta, eps = _bn_params64(bn)
    scale = _scale(var, gamma, eps)
    if scale.shape[0] != out_channels:
        kind = "Linear out_features" if weight.ndim == 2 else "Conv out_channels"
        raise ValueError(
            f"channel mismatch: the BatchNorm has num_features={scale.shape[0]} but the "
            f"{kind} (weight.shape[{channel_axis}]) is {out_channels} (weight shape {weight.shape})"
        )
    if bias is None:
        bias_dtype = weight.dtype
        bias64 = np.zeros(out_channels)
    else:
        bias = _float_array(bias, "bias")
        if bias.shape != (out_channels,):
            raise ValueError(
                f"bias must have shape ({out_channels},) to match the weight's output channels, "
                f"got {bias.shape}"
            )
        bias_dtype = bias.dtype
        bias64 = bias.astype(np.float64)

    shape = [1] * weight.ndim
    shape[channel_axis] = out_channels
    new_weight = (weight.astype(np.float64) * scale.reshape(shape)).astype(weight.dtype)
    # (b - mean) * scale + beta, not b * scale + shift: that form cancels when b and mean
    # are large and close.
    new_bias = ((bias64 - mean) * scale + beta).astype(bias_dtype)
    return new_weight, new_bias
