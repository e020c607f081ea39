"""Every normalization family described once; the generic ``test_families_*`` modules
run each of their checks over this table, on the CPU and on CUDA.

A :class:`Family` row says how to call the family in one uniform way:

- ``forward(x, case, p, **opts) -> (y, mean, rstd)`` and
  ``backward(dy, x, case, mean, rstd, p, input_stats) -> (dx, dweight, dbias)`` call
  :mod:`numbanorm.functional`; ``ref_forward`` (returning ``(y, mean, rstd, running_mean,
  running_var)``) and ``ref_backward`` call ``tests/reference.py`` the same way;
- ``p`` is a :class:`Params` (weight, bias, running_mean, running_var; None where absent);
  ``case`` a :class:`Case` (input shape, and num_groups or normalized_shape);
- ``modes`` are the functional call variants (training, evaluation with running
  statistics, ...), ``labels(case)`` numbers the groups normalized together;
- the rest lists the inputs each generic check uses: shapes, constructor kwargs, views,
  PyTorch cases. ``cuda_*`` lists are the tiny inputs the CUDA simulator also runs.
"""

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import reference as ref
from helpers import host

import numbanorm
from numbanorm import functional as F


class Case(NamedTuple):
    """An input shape and the family's argument: num_groups (GroupNorm), normalized_shape
    (LayerNorm, RMSNorm), or None (BatchNorm, InstanceNorm: the channels are shape[1])."""

    shape: tuple
    arg: Any = None

    def __str__(self):
        arg = "" if self.arg is None else f"/{self.arg}"
        return "x".join(map(str, self.shape)) + arg.replace(" ", "")


class Params(NamedTuple):
    weight: Any = None
    bias: Any = None
    running_mean: Any = None
    running_var: Any = None


@dataclass(frozen=True)
class Mode:
    """A functional call variant: keyword options, and whether running statistics are passed."""

    name: str
    opts: dict
    running: bool = False


def cfg_id(cfg):
    return ",".join(f"{k}={v}" for k, v in cfg.items()) or "default"


@dataclass(frozen=True, kw_only=True)
class Family:
    name: str
    layer_name: Any             # Case -> numbanorm / torch.nn class name
    ctor_args: Any              # Case -> positional constructor arguments
    param_shape: Any            # Case -> shape of weight and bias
    stat_shape: Any             # Case -> shape of the returned mean and rstd
    labels: Any                 # Case -> int array of x's shape: which group each element is in
    forward: Any
    backward: Any
    ref_forward: Any
    ref_backward: Any
    input_stats: Any = lambda opts, p: True  # did the forward normalize with the input's own statistics?
    ref_layer: Any = None       # the stateful reference class (per-channel families); else a RefLayer
    bias: bool = True           # has a bias (RMSNorm has none)
    running: bool = False       # has running statistics (BatchNorm, InstanceNorm)
    centered: bool = True       # subtracts the mean (RMSNorm does not)
    channels: bool = True       # channel axis 1: channels-last layouts apply
    default_eps: Any = 1e-5
    #: dx's float32 rounding scales with rstd * |dy * w|: the atol of the LayerNorm and
    #: GroupNorm checks grows with it (groups of one have dx ~ 0 and large terms)
    dx_atol_scaled: bool = False
    modes: tuple
    functional_cases: list      # CPU only
    cuda_functional_cases: list  # both backends
    layer_cases: list           # (Case, cfg), CPU only
    cuda_layer_cases: list      # (Case, cfg), both backends
    torch_cases: list           # (Case, cfg)
    batch_of_one: list          # Cases with N = 1, against PyTorch
    odd_cases: list             # odd sizes (1, 3, 7, 1023); the small ones also on CUDA
    views: list                 # (function of base array -> non-contiguous view, base shape, arg, cfg);
    #                             each family's smallest also on CUDA
    cl_cases: list = field(default_factory=list)       # (Case, cfg) run channels-last, CPU only
    cuda_cl_cases: list = field(default_factory=list)  # (Case, cfg) run channels-last on both backends
    out_case: Case              # functional ``out=`` (CPU)
    cuda_out_case: Case         # functional ``out=`` (both backends)
    far_case: Case              # float32 mean 1e4 / std 1e-2 (CPU)
    cuda_far_case: Case         # the same on both backends
    far_cfg: dict = field(default_factory=dict)
    far_tols: dict = field(default_factory=dict)
    const_case: tuple           # (Case, cfg, labels of two groups set constant)
    zero_var_cases: list        # (Case, labels or None for all): groups with no variance
    nan_case: tuple             # (Case, cfg, index of the NaN)
    mixed_case: tuple           # (Case, cfg)
    unit: tuple                 # (Case, cfg): a small layer for the state and utility checks
    reprs: list                 # (class name, args, kwargs, expected prefix, expected substrings)
    fd_case: Case
    bad_inputs: list            # (Case of a layer made with the unit cfg, input shape it rejects: ValueError)

    def __str__(self):
        return self.name

    # -- calls ------------------------------------------------------------------
    def make(self, case, dtype=np.float32, **cfg):
        """The numbanorm layer for ``case``."""
        return getattr(numbanorm, self.layer_name(case))(*self.ctor_args(case), dtype=dtype, **cfg)

    def make_torch(self, torch, case, dtype, **cfg):
        tdtype = torch.float64 if np.dtype(dtype) == np.float64 else torch.float32
        return getattr(torch.nn, self.layer_name(case))(*self.ctor_args(case), dtype=tdtype, **cfg)

    def reference_layer(self, case, layer, **cfg):
        """A stateful float64 reference with ``layer``'s current weight and bias."""
        w = None if layer.weight is None else np.array(host(layer.weight), np.float64)
        b = None if layer.bias is None else np.array(host(layer.bias), np.float64)
        if self.ref_layer is not None:
            return self.ref_layer(case.shape[1], weight=w, bias=b, **cfg)
        return RefLayer(self, case, w, b, cfg.get("eps", self.default_eps))

    def params(self, rng, case, dtype, affine="wb", running=False):
        """Random parameters (``affine``: "wb" weight and bias, "w" weight only, "none")."""
        shape = self.param_shape(case)
        w = rng.uniform(0.5, 1.5, shape).astype(dtype) if affine != "none" else None
        b = rng.standard_normal(shape).astype(dtype) if affine == "wb" and self.bias else None
        rm = rv = None
        if running:
            rm = rng.standard_normal(shape).astype(dtype)
            rv = rng.uniform(0.5, 2.0, shape).astype(dtype)
        return Params(w, b, rm, rv)


class RefLayer:
    """A stateless family (LayerNorm, RMSNorm, GroupNorm) as a stateful reference."""

    running_mean = running_var = num_batches_tracked = None

    def __init__(self, fam, case, weight, bias, eps):
        self.fam, self.case, self.eps = fam, case, eps
        self.weight, self.bias = weight, bias
        self.training = True

    def forward(self, x):
        y, mean, rstd, _, _ = self.fam.ref_forward(x, self.case, Params(self.weight, self.bias), eps=self.eps)
        self._saved = (x, mean, rstd)
        return y

    def backward(self, dy):
        x, mean, rstd = self._saved
        return self.fam.ref_backward(dy, x, self.case, mean, rstd, Params(self.weight, self.bias), True)


# -- shapes and groups ---------------------------------------------------------------

def _channels(case):
    return (case.shape[1],)


def _trailing(case):
    return (case.arg,) if isinstance(case.arg, int) else tuple(case.arg)


def _lead(case):
    return case.shape[:len(case.shape) - len(_trailing(case))]


def _index(shape, axes):
    """Labels numbering the combinations of the given axes' indices, broadcast to shape."""
    grid = np.indices(shape)
    labels = np.zeros(shape, np.int64)
    for ax in axes:
        labels = labels * shape[ax] + grid[ax]
    return labels


def _rows_labels(case):
    return _index(case.shape, range(len(_lead(case))))


def _group_labels(case):
    n, c = case.shape[:2]
    grid = np.indices(case.shape)
    return grid[0] * case.arg + grid[1] // (c // case.arg)


def _nd_name(prefix, ndims):
    return lambda case: f"{prefix}{ndims[len(case.shape)]}d"


def _rms_eps(x, eps):
    return ref.rms_eps(x.dtype) if eps is None else eps


def _arg_calls(forward, backward, ref_forward, ref_backward):
    """The uniform calls of a family whose functions take ``(x, arg, weight, bias, eps)`` and
    ``(dy, x, arg, mean, rstd, weight, bias)`` (LayerNorm, GroupNorm), and what such a family
    shares: one mode, and the dx atol scaled with the size of its terms."""
    return dict(
        forward=lambda x, case, p, **o: forward(x, case.arg, p.weight, p.bias, return_stats=True, **o),
        backward=lambda dy, x, case, m, r, p, s: backward(dy, x, case.arg, m, r, p.weight, p.bias),
        ref_forward=lambda x, case, p, **o: ref_forward(x, case.arg, p.weight, p.bias, **o) + (None, None),
        ref_backward=lambda dy, x, case, m, r, p, s: ref_backward(dy, x, case.arg, m, r, p.weight, p.bias),
        dx_atol_scaled=True, modes=(Mode("eps=1e-4", dict(eps=1e-4)),))


def _running_calls(forward, backward, ref_forward, ref_backward):
    """The uniform calls of a family whose functions take ``(x, running_mean, running_var,
    weight, bias, ...)`` and ``(dy, x, mean, rstd, weight, bias, use_input_stats)``."""
    return dict(
        forward=lambda x, case, p, **o: forward(x, p.running_mean, p.running_var, p.weight, p.bias,
                                                return_stats=True, **o),
        backward=lambda dy, x, case, m, r, p, s: backward(dy, x, m, r, p.weight, p.bias, use_input_stats=s),
        ref_forward=lambda x, case, p, **o: ref_forward(x, p.running_mean, p.running_var, p.weight, p.bias, **o),
        ref_backward=lambda dy, x, case, m, r, p, s: ref_backward(dy, x, m, r, p.weight, p.bias, s))


#: What the row families (LayerNorm, RMSNorm) have in common: normalized_shape is the argument.
ROWS = dict(ctor_args=lambda case: (case.arg,), param_shape=_trailing, stat_shape=_lead, labels=_rows_labels,
            channels=False)
#: What the per-channel families with running statistics (BatchNorm, InstanceNorm) have in common,
#: the tiny CUDA inputs included.
PER_CHANNEL = dict(ctor_args=lambda case: (case.shape[1],), param_shape=_channels, running=True,
                   cuda_cl_cases=[(Case((2, 4, 3, 2)), {})], out_case=Case((4, 3, 5, 6)),
                   cuda_out_case=Case((3, 2, 5, 2)), cuda_far_case=Case((4, 3, 16)))


# -- the table ---------------------------------------------------------------------

BN_VIEWS_BASE = (5, 8, 7, 9)
BATCH_NORM = Family(
    name="batch_norm",
    layer_name=_nd_name("BatchNorm", {2: 1, 3: 1, 4: 2, 5: 3}),
    **PER_CHANNEL,
    stat_shape=_channels,
    labels=lambda case: _index(case.shape, (1,)),
    **_running_calls(F.batch_norm, F.batch_norm_backward, ref.batch_norm, ref.batch_norm_backward),
    input_stats=lambda opts, p: bool(opts.get("training")) or p.running_mean is None,
    ref_layer=ref.RefBatchNorm,
    modes=(Mode("train", dict(training=True, momentum=0.2, eps=1e-4), running=True),
           Mode("eval", dict(training=False, eps=1e-3), running=True),
           Mode("batch-stats", dict(training=False)),
           Mode("batch-stats-train", dict(training=True))),
    functional_cases=[Case(s) for s in [(6, 3), (4, 3, 5), (5, 3, 4), (2, 3, 4, 5), (3, 4, 2, 3), (2, 3, 2, 3, 2)]],
    cuda_functional_cases=[Case(s) for s in [(5, 3), (3, 4, 5), (2, 3, 2, 3)]],
    layer_cases=[(Case((3, 4, 2, 3)), cfg) for cfg in [
        dict(), dict(momentum=None), dict(momentum=0.3, eps=1e-3), dict(affine=False),
        dict(track_running_stats=False), dict(affine=False, track_running_stats=False)]]
    + [(Case(s), dict(momentum=None)) for s in [(5, 3), (4, 3, 6), (2, 3, 2, 3, 2)]],
    cuda_layer_cases=[(Case((5, 3)), {}), (Case((4, 3, 2)), dict(momentum=None)), (Case((2, 3, 2, 3)), {}),
                      (Case((2, 2, 2, 1, 3)), {})],
    torch_cases=[(Case((8, 5)), {}), (Case((4, 3, 7)), dict(momentum=None)), (Case((3, 4, 5, 5)), {}),
                 (Case((3, 4, 5, 5)), dict(momentum=None)), (Case((2, 3, 3, 4)), dict(affine=False)),
                 (Case((2, 3, 3, 4)), dict(track_running_stats=False)),
                 (Case((2, 3, 3, 4)), dict(eps=1e-3, momentum=0.5)), (Case((2, 3, 2, 3, 2)), dict(momentum=None))],
    batch_of_one=[Case(s) for s in [(1, 3, 2, 3), (1, 2, 7), (1, 3, 1, 2)]],
    odd_cases=[Case(s) for s in [(3, 1), (7, 3), (1023, 2), (2, 1, 1023), (3, 7, 1), (7, 3, 1, 7), (2, 3, 1, 1)]],
    views=[(lambda a: a[::2, 1::2, 1:6, ::3], BN_VIEWS_BASE, None, {}),
           (lambda a: a[:, :4, ::-1, 2:5], BN_VIEWS_BASE, None, {}),
           (lambda a: a[1:4, 2:6].transpose(0, 1, 3, 2), BN_VIEWS_BASE, None, {}),
           (lambda a: a[:, :, 0, 0][:, ::2], BN_VIEWS_BASE, None, {}),  # (N, C) with a channel stride > 1
           (lambda a: a[:, :4, ::-1].transpose(0, 1, 3, 2), (2, 5, 3, 4), None, {})],
    cl_cases=[(Case((2, 5, 3, 4)), {}), (Case((2, 3, 2, 3, 2)), {})],
    far_case=Case((4, 3, 5, 6)),
    far_cfg=dict(momentum=None),
    const_case=(Case((5, 3, 2, 3)), {}, (1, 2)),
    zero_var_cases=[(Case((4, 3, 5)), (1,))],
    nan_case=(Case((4, 3, 3, 3)), {}, (2, 1, 1, 1)),
    mixed_case=(Case((3, 3, 2, 4)), {}),
    unit=(Case((3, 4, 2, 3)), dict(momentum=None, eps=1e-3)),
    reprs=[("BatchNorm2d", (3,), {}, "BatchNorm2d(3, eps=1e-05, momentum=0.1, affine=True",
            ("track_running_stats=True",)),
           ("BatchNorm1d", (7,), dict(eps=1e-3, momentum=None, affine=False, track_running_stats=False),
            "BatchNorm1d(7, eps=0.001, momentum=None, affine=False", ("track_running_stats=False",)),
           ("BatchNorm3d", (2,), {}, "BatchNorm3d(2, ", ())],
    fd_case=Case((3, 2, 2, 2)),
    bad_inputs=[(Case((3, 4, 2, 3)), s) for s in [(3, 4, 2), (3, 4, 2, 3, 1), (3, 3, 2, 3), (3, 5, 2, 3)]]
    + [(Case((4, 3)), (2, 3, 2, 2)), (Case((4, 3)), (3,)), (Case((2, 2, 2, 2, 2)), (2, 2, 2, 2))],
)

LAYER_NORM = Family(
    name="layer_norm",
    layer_name=lambda case: "LayerNorm",
    **ROWS,
    **_arg_calls(F.layer_norm, F.layer_norm_backward, ref.layer_norm, ref.layer_norm_backward),
    functional_cases=[Case((5, 6), 6), Case((2, 3, 4), (3, 4)), Case((2, 3, 7), (7,))],
    cuda_functional_cases=[Case((3, 4, 6), (6,)), Case((2, 3, 5), (3, 5)), Case((7,), 7)],
    layer_cases=[(Case((2, 5, 3, 4), (3, 4)), cfg) for cfg in [
        dict(), dict(bias=False), dict(elementwise_affine=False), dict(eps=1e-3)]],
    cuda_layer_cases=[(Case((3, 2, 5), (2, 5)), {})],
    torch_cases=[(Case((3, 2, 6), (6,)), {}), (Case((3, 2, 3, 4), (3, 4)), dict(bias=False)),
                 (Case((3, 2, 4), (4,)), dict(elementwise_affine=False, eps=1e-3))],
    batch_of_one=[Case((1, 6), 6)],
    odd_cases=[Case((n, d), d) for d in (1, 3, 7, 1023) for n in (3, 1)],
    views=[(lambda a: a[::2, 1:4, 3:10], (6, 5, 16), 7, {}),
           (lambda a: a[:, :, ::-1][:, :, 2:9], (6, 5, 16), 7, {}),
           (lambda a: a[:, 1, ::2][:, :7], (6, 5, 16), 7, {}),
           # transposed memory: the normalized axis has a large stride
           (lambda a: a[:, :, :5].transpose(0, 2, 1).copy().transpose(0, 2, 1), (6, 5, 16), 5, {})],
    out_case=Case((4, 3, 5, 6), (5, 6)),
    cuda_out_case=Case((3, 2, 5, 2), (5, 2)),
    far_case=Case((6, 257), 257),
    cuda_far_case=Case((4, 3, 16), (3, 16)),
    const_case=(Case((4, 9), 9), {}, (1, 3)),
    zero_var_cases=[(Case((6, 1), 1), None), (Case((2, 3, 1, 1), (1, 1)), None)],
    nan_case=(Case((4, 6), 6), {}, (2, 3)),
    mixed_case=(Case((3, 5), 5), {}),
    unit=(Case((4, 2, 3), (2, 3)), dict(eps=1e-3)),
    reprs=[("LayerNorm", ((2, 3),), dict(eps=1e-3), "LayerNorm((2, 3), eps=0.001, elementwise_affine=True", ())],
    fd_case=Case((2, 2, 3), (2, 3)),
    bad_inputs=[(Case((4, 2, 3), (2, 3)), s) for s in [(4, 2, 2), (4, 3, 3), (3,)]],
)

RMS_NORM = Family(
    name="rms_norm",
    layer_name=lambda case: "RMSNorm",
    **ROWS,
    forward=lambda x, case, p, **o: F.rms_norm(x, case.arg, p.weight, return_stats=True, **o),
    backward=lambda dy, x, case, m, r, p, s: F.rms_norm_backward(dy, x, case.arg, r, p.weight),
    ref_forward=lambda x, case, p, eps=None: (lambda y, r: (y, None, r, None, None))(
        *ref.rms_norm(x, case.arg, p.weight, _rms_eps(x, eps))),
    ref_backward=lambda dy, x, case, m, r, p, s: ref.rms_norm_backward(dy, x, case.arg, r, p.weight),
    bias=False,
    centered=False,
    default_eps=None,
    modes=(Mode("eps=None", dict(eps=None)), Mode("eps=1e-3", dict(eps=1e-3))),
    functional_cases=[Case((5, 6), 6), Case((2, 3, 4), (3, 4))],
    cuda_functional_cases=[Case((3, 2, 9), 9), Case((3, 2, 9), (2, 9))],
    layer_cases=[(Case((2, 5, 3, 4), (3, 4)), cfg) for cfg in [
        dict(), dict(eps=1e-4), dict(elementwise_affine=False)]],
    cuda_layer_cases=[(Case((3, 5), 5), {})],
    torch_cases=[(Case((4, 2, 6), (6,)), {}), (Case((4, 2, 3, 4), (3, 4)), dict(eps=1e-4)),
                 (Case((4, 2, 5), (5,)), dict(elementwise_affine=False))],
    batch_of_one=[Case((1, 6), 6)],
    odd_cases=[Case((3, d), d) for d in (1, 3, 7, 1023)],
    views=[(lambda a: a[::2, 1:, 3:12][:, :, ::-1], (6, 4, 20), 9, dict(eps=1e-5))],
    out_case=Case((4, 3, 5, 6), (5, 6)),
    cuda_out_case=Case((3, 2, 5, 2), (5, 2)),
    far_case=Case((4, 300), 300),
    cuda_far_case=Case((4, 3, 16), 16),
    far_tols=dict(y=(1e-5, 1e-5), dx=(1e-4, 0.0), dweight=(1e-5, 1e-5)),
    const_case=(Case((4, 9), 9), {}, (1, 3)),
    zero_var_cases=[],
    nan_case=(Case((3, 5), 5), {}, (1, 4)),
    mixed_case=(Case((3, 5), 5), dict(eps=1e-5)),
    unit=(Case((3, 4), 4), dict(eps=1e-6)),
    reprs=[("RMSNorm", (4,), dict(eps=1e-6), "RMSNorm((4,), eps=1e-06, elementwise_affine=True", ()),
           ("RMSNorm", (3,), {}, "RMSNorm((3,), eps=None", ())],
    fd_case=Case((3, 4), 4),
    bad_inputs=[(Case((3, 4), 4), s) for s in [(3, 3), ()]],
)

GROUP_NORM = Family(
    name="group_norm",
    layer_name=lambda case: "GroupNorm",
    ctor_args=lambda case: (case.arg, case.shape[1]),
    param_shape=_channels,
    stat_shape=lambda case: (case.shape[0], case.arg),
    labels=_group_labels,
    **_arg_calls(F.group_norm, F.group_norm_backward, ref.group_norm, ref.group_norm_backward),
    functional_cases=[Case((3, 6, 5), 2), Case((2, 4, 3, 3), 4), Case((2, 6, 2, 2, 3), 1), Case((5, 6), 3)],
    cuda_functional_cases=[Case((2, 6, 5), 3), Case((3, 4, 2, 2), 1), Case((2, 4, 3), 4), Case((1, 6), 2)],
    layer_cases=[(Case((3, 6, 4, 5), 2), {}), (Case((3, 6, 4, 5), 1), dict(eps=1e-3)),
                 (Case((3, 6, 4, 5), 6), dict(affine=False))],
    cuda_layer_cases=[(Case((2, 4, 3), 2), {})],
    torch_cases=[(Case((3, 6, 4, 5), 2), {}), (Case((3, 6, 4, 5), 1), dict(eps=1e-3)),
                 (Case((3, 6, 4, 5), 6), dict(affine=False))],
    batch_of_one=[Case((1, 4, 3), 2)],
    odd_cases=[Case((1, 3, 7), 3), Case((3, 7, 1), 7), Case((2, 2, 1023), 1), Case((1, 4, 1, 1), 2),
               Case((1, 6, 3, 1), 3)],
    views=[(lambda a: a[::2, ::2, 1:5, ::3], (5, 12, 6, 7), 2, {}),
           (lambda a: a[:, 3:9, ::-1], (5, 12, 6, 7), 2, {}),
           (lambda a: a[:2, :6].transpose(0, 1, 3, 2), (5, 12, 6, 7), 2, {}),
           (lambda a: a[:, 1::2, ::-1].transpose(0, 1, 3, 2), (2, 8, 3, 4), 2, {})],
    cl_cases=[(Case((2, 6, 3, 5), 3), {}), (Case((2, 6, 3, 5), 2), {}), (Case((2, 4, 2, 3, 2), 2), {})],
    cuda_cl_cases=[(Case((2, 4, 3, 2), 2), {})],
    out_case=Case((4, 6, 5, 6), 3),
    cuda_out_case=Case((3, 4, 5, 2), 2),
    far_case=Case((3, 8, 5, 7), 4),
    cuda_far_case=Case((4, 3, 16), 3),
    const_case=(Case((3, 6, 4), 3), {}, (4, 8)),  # sample 1 group 1, sample 2 group 2
    zero_var_cases=[(Case((3, 4, 1), 4), None), (Case((2, 6), 6), None)],
    nan_case=(Case((3, 6, 4), 3), {}, (1, 3, 2)),
    mixed_case=(Case((3, 4, 5), 2), {}),
    unit=(Case((2, 4, 3), 2), dict(eps=1e-3)),
    reprs=[("GroupNorm", (2, 4), dict(eps=1e-3), "GroupNorm(2, 4, eps=0.001, affine=True", ())],
    fd_case=Case((2, 4, 3), 2),
    bad_inputs=[(Case((2, 4, 3), 2), s) for s in [(2, 2, 3), (2, 6, 3), (4,)]],
)

INSTANCE_NORM = Family(
    name="instance_norm",
    layer_name=_nd_name("InstanceNorm", {3: 1, 4: 2, 5: 3}),
    **PER_CHANNEL,
    stat_shape=lambda case: case.shape[:2],
    labels=lambda case: _index(case.shape, (0, 1)),
    **_running_calls(F.instance_norm, F.instance_norm_backward, ref.instance_norm, ref.instance_norm_backward),
    input_stats=lambda opts, p: opts.get("use_input_stats", True),
    ref_layer=ref.RefInstanceNorm,
    modes=(Mode("train", dict(use_input_stats=True, momentum=0.3, eps=1e-4), running=True),
           Mode("eval", dict(use_input_stats=False), running=True),
           Mode("no-running", dict())),
    functional_cases=[Case(s) for s in [(3, 4, 5), (3, 4, 6), (2, 3, 4, 5), (2, 3, 2, 3, 2)]],
    cuda_functional_cases=[Case((2, 3, 7))],
    layer_cases=[(Case((4, 3, 3, 4)), cfg) for cfg in [
        dict(), dict(affine=True), dict(affine=True, track_running_stats=True),
        dict(track_running_stats=True, momentum=None), dict(track_running_stats=True, momentum=0.4, eps=1e-3)]],
    cuda_layer_cases=[(Case((2, 3, 5)), dict(affine=True, track_running_stats=True)), (Case((2, 3, 2, 2)), {})],
    torch_cases=[(Case((3, 4, 7)), dict(affine=True)),
                 (Case((2, 3, 4, 5)), dict(affine=True, track_running_stats=True)),
                 (Case((2, 3, 4, 5)), dict(track_running_stats=True, momentum=None)),
                 (Case((2, 3, 2, 3, 2)), dict(track_running_stats=True, momentum=0.5)), (Case((2, 3, 3, 3)), {})],
    batch_of_one=[Case((1, 3, 5))],
    odd_cases=[Case(s) for s in [(1, 3, 7), (3, 1, 2), (2, 2, 1023), (1, 2, 1, 3), (3, 7, 1, 2)]],
    views=[(view, (5, 8, 6, 7), None, dict(affine=True, track_running_stats=True)) for view in (
        lambda a: a[::2, ::2, 1:5, ::3], lambda a: a[:, 2:6, ::-1], lambda a: a[:2, :4].transpose(0, 1, 3, 2))]
    + [(lambda a: a[:, 1::2, ::-1].transpose(0, 1, 3, 2), (2, 8, 3, 4), None, {})],
    cl_cases=[(Case((2, 5, 3, 4)), dict(affine=True, track_running_stats=True)), (Case((2, 3, 2, 3, 2)), {})],
    far_case=Case((2, 3, 9, 11)),
    far_cfg=dict(affine=True),
    const_case=(Case((3, 2, 5)), dict(affine=True, track_running_stats=True), (2, 5)),  # x[1, 0], x[2, 1]
    zero_var_cases=[(Case((3, 2, 5)), (0, 3))],
    nan_case=(Case((3, 2, 4)), dict(affine=True), (1, 0, 2)),
    mixed_case=(Case((2, 3, 6)), dict(affine=True, track_running_stats=True)),
    unit=(Case((2, 3, 4, 4)), dict(eps=1e-3, affine=True, track_running_stats=True)),
    reprs=[("InstanceNorm2d", (3,), dict(eps=1e-3, affine=True, track_running_stats=True),
            "InstanceNorm2d(3, eps=0.001, momentum=0.1, affine=True", ("track_running_stats=True",)),
           ("InstanceNorm1d", (2,), {}, "InstanceNorm1d(2, eps=1e-05, momentum=0.1, affine=False",
            ("track_running_stats=False",))],
    fd_case=Case((2, 2, 3)),
    # channels, 5-D and 2-D input to InstanceNorm2d; 4-D input to InstanceNorm1d
    bad_inputs=[(Case((2, 3, 4, 4)), s) for s in [(2, 2, 4, 4), (2, 3, 4, 4, 1), (2, 3)]]
    + [(Case((2, 3, 4)), (2, 3, 4, 4))],
)

FAMILIES = [BATCH_NORM, LAYER_NORM, RMS_NORM, GROUP_NORM, INSTANCE_NORM]

