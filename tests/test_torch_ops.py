"""numbanorm.torch operators: opcheck, gradcheck in float64, fake tensors, fallbacks, errors."""

import subprocess
import sys
import warnings

import pytest

torch = pytest.importorskip("torch")
nt = pytest.importorskip("numbanorm.torch")

pytestmark = pytest.mark.torch

from numbanorm.torch import _eager, _ops  # noqa: E402
from numbanorm.torch import functional as NF  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(params=["eager", "ops"])
def path(request, monkeypatch):
    """Run the functional wrappers through the eager autograd.Functions or through the
    torch.ops operators (what torch.compile and fake tensors see)."""
    if request.param == "ops":
        monkeypatch.setattr(_eager, "applies", lambda x: False)
    return request.param


def _x(shape, dtype=torch.float64, seed=0, layout="cf"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype) * 2 + 1
    if layout == "cl":
        x = x.movedim(1, -1).contiguous().movedim(-1, 1)
    elif layout == "strided":
        x = torch.cat([x, x], dim=-1)[..., ::2]
    return x


def _params(c, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(c, generator=g, dtype=dtype) + 0.5, torch.randn(c, generator=g, dtype=dtype)


# One row per (family, variant): the forward op's arguments from an input x.
def _bn_args(x, affine=True, running=True, training=True):
    w, b = _params(x.shape[1], x.dtype) if affine else (None, None)
    c = x.shape[1]
    rm, rv = (torch.zeros(c, dtype=x.dtype), torch.ones(c, dtype=x.dtype)) if running else (None, None)
    return (x, w, b, rm, rv, training, 0.1, 1e-5)


def _in_args(x, affine=True, running=False, use_input_stats=True):
    return _bn_args(x, affine, running, use_input_stats)


def _gn_args(x, affine=True):
    w, b = _params(x.shape[1], x.dtype) if affine else (None, None)
    return (x, 2, w, b, 1e-5)


def _ln_args(x, affine=True):
    shape = list(x.shape[-2:])
    g = torch.Generator().manual_seed(2)
    w = torch.rand(shape, generator=g, dtype=x.dtype) + 0.5 if affine else None
    b = torch.randn(shape, generator=g, dtype=x.dtype) if affine else None
    return (x, shape, w, b, 1e-5)


def _rms_args(x, affine=True):
    w = torch.rand(x.shape[-1], dtype=x.dtype) + 0.5 if affine else None
    return (x, [x.shape[-1]], w, None)


FORWARD = [
    ("batch_norm-train", _ops.batch_norm, _bn_args, {}),
    ("batch_norm-train-norunning", _ops.batch_norm, _bn_args, {"running": False, "affine": False}),
    ("batch_norm-eval", _ops.batch_norm, _bn_args, {"training": False}),
    ("instance_norm", _ops.instance_norm, _in_args, {}),
    ("instance_norm-running", _ops.instance_norm, _in_args, {"running": True}),
    ("instance_norm-eval", _ops.instance_norm, _in_args, {"running": True, "use_input_stats": False}),
    ("group_norm", _ops.group_norm, _gn_args, {}),
    ("group_norm-noaffine", _ops.group_norm, _gn_args, {"affine": False}),
    ("layer_norm", _ops.layer_norm, _ln_args, {}),
    ("layer_norm-noaffine", _ops.layer_norm, _ln_args, {"affine": False}),
    ("rms_norm", _ops.rms_norm, _rms_args, {}),
    ("rms_norm-noaffine", _ops.rms_norm, _rms_args, {"affine": False}),
]
IDS = [row[0] for row in FORWARD]


@pytest.mark.parametrize("name,op,make,kw", FORWARD, ids=IDS)
@pytest.mark.parametrize("layout", ["cf", "cl", "strided"])
def test_forward_ops_pass_opcheck(name, op, make, kw, layout):
    args = make(_x((3, 4, 5, 6), torch.float32, layout=layout), **kw)
    torch.library.opcheck(op, args)


def _backward_args(name, op, args):
    """The backward op and its arguments, from a forward run on ``args``."""
    x = args[0]
    out = op(*args)
    dy = _x(x.shape, x.dtype, seed=5)
    if name.startswith("batch_norm"):
        use_input_stats = args[5] or args[3] is None
        return _ops.batch_norm_backward, (dy, x, out[1], out[2], args[1], args[2], use_input_stats)
    if name.startswith("instance_norm"):
        return _ops.instance_norm_backward, (dy, x, out[1], out[2], args[1], args[2], args[5])
    if name.startswith("group_norm"):
        return _ops.group_norm_backward, (dy, x, args[1], out[1], out[2], args[2], args[3])
    if name.startswith("layer_norm"):
        return _ops.layer_norm_backward, (dy, x, args[1], out[1], out[2], args[2], args[3])
    return _ops.rms_norm_backward, (dy, x, args[1], out[1], args[2])


@pytest.mark.parametrize("name,op,make,kw", FORWARD, ids=IDS)
@pytest.mark.parametrize("layout", ["cf", "cl"])
def test_backward_ops_pass_opcheck(name, op, make, kw, layout):
    bop, bargs = _backward_args(name, op, make(_x((3, 4, 5, 6), torch.float32, layout=layout), **kw))
    torch.library.opcheck(bop, bargs)


# gradcheck over every forward op, through the functional wrappers users call.
GRAD = [
    ("batch_norm-train", lambda x, w, b: NF.batch_norm(x, None, None, w, b, True), 2),
    ("batch_norm-eval", lambda x, w, b: NF.batch_norm(x, torch.zeros(3, dtype=x.dtype) + 0.3,
                                                       torch.ones(3, dtype=x.dtype) * 1.7, w, b, False), 2),
    ("instance_norm", lambda x, w, b: NF.instance_norm(x, None, None, w, b), 2),
    ("instance_norm-eval", lambda x, w, b: NF.instance_norm(x, torch.zeros(3, dtype=x.dtype) + 0.3,
                                                             torch.ones(3, dtype=x.dtype) * 1.7, w, b, False), 2),
    ("group_norm", lambda x, w, b: NF.group_norm(x, 3, w, b), 2),
    ("layer_norm", lambda x, w, b: NF.layer_norm(x, x.shape[-2:], w, b), "ln"),
    ("rms_norm", lambda x, w, b: NF.rms_norm(x, x.shape[-1:], w), "rms"),
]


@pytest.mark.parametrize("name,fn,kind", GRAD, ids=[g[0] for g in GRAD])
@pytest.mark.parametrize("layout", ["cf", "cl"])
def test_gradcheck_float64(name, fn, kind, layout, path):
    x = _x((2, 3, 4, 3), layout=layout).requires_grad_(True)
    if kind == "ln":
        w = (torch.rand(4, 3, dtype=torch.float64) + 0.5).requires_grad_(True)
        b = torch.randn(4, 3, dtype=torch.float64).requires_grad_(True)
    elif kind == "rms":
        w = (torch.rand(3, dtype=torch.float64) + 0.5).requires_grad_(True)
        b = None
    else:
        w, b = (p.requires_grad_(True) for p in _params(3))
    inputs = tuple(t for t in (x, w, b) if t is not None)
    torch.autograd.gradcheck(lambda *a: fn(*a, *([None] * (3 - len(a)))), inputs)


def test_gradcheck_without_affine_parameters(path):
    x = _x((3, 4, 5)).requires_grad_(True)
    for fn in (lambda x: NF.batch_norm(x, None, None, training=True), lambda x: NF.group_norm(x, 2),
               lambda x: NF.instance_norm(x), lambda x: NF.layer_norm(x, (5,)), lambda x: NF.rms_norm(x, (4, 5))):
        torch.autograd.gradcheck(fn, (x,))


@pytest.mark.parametrize("loss", ["cube", "linear"])
def test_double_backward_is_a_clear_error(path, loss):
    x = _x((3, 4, 5)).requires_grad_(True)
    for fn in (lambda x: NF.batch_norm(x, None, None, training=True), lambda x: NF.group_norm(x, 2),
               lambda x: NF.instance_norm(x), lambda x: NF.layer_norm(x, (5,)), lambda x: NF.rms_norm(x, (5,))):
        y = fn(x)
        # "linear": dy does not depend on x, but dx still does (through the saved input)
        out = (y ** 3).sum() if loss == "cube" else (y * _x(y.shape, seed=3)).sum()
        (gx,) = torch.autograd.grad(out, x, create_graph=True)
        with pytest.raises(RuntimeError, match="double backward"):
            gx.pow(2).sum().backward()


def test_gradients_of_unused_outputs_and_frozen_parameters(path):
    x = _x((4, 3, 5)).requires_grad_(True)
    w, b = _params(3)
    y = NF.batch_norm(x, None, None, w, b, True)  # parameters without requires_grad
    (gx,) = torch.autograd.grad(y[:, 0].sum(), x)
    ref = torch.nn.functional.batch_norm(x, None, None, w, b, True)
    (gref,) = torch.autograd.grad(ref[:, 0].sum(), x)
    torch.testing.assert_close(gx, gref)


@pytest.mark.parametrize("name,op,make,kw", FORWARD, ids=IDS)
@pytest.mark.parametrize("layout", ["cf", "cl"])
def test_fake_outputs_match_real_ones(name, op, make, kw, layout):
    from torch._subclasses.fake_tensor import FakeTensorMode

    args = make(_x((3, 4, 5, 6), torch.float32, layout=layout), **kw)
    real = op(*args)
    with FakeTensorMode() as mode:
        fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        fake = op(*fake_args)
    for r, f in zip(real, fake, strict=True):
        assert (r.shape, r.dtype, r.stride()) == (f.shape, f.dtype, f.stride())
    meta = op(*[a.to("meta") if isinstance(a, torch.Tensor) else a for a in args])
    assert [m.shape for m in meta] == [r.shape for r in real]


@pytest.mark.parametrize("name,op,make,kw", FORWARD[:1] + FORWARD[3:4] + FORWARD[6:7], ids=lambda v: str(v)[:20])
def test_channels_last_runs_without_copy_and_keeps_layout(name, op, make, kw):
    x = _x((2, 4, 5, 6), torch.float32, layout="cl")
    y = op(*make(x, **kw))[0]
    assert y.is_contiguous(memory_format=torch.channels_last) and y.stride() == x.stride()
    (dx,) = torch.autograd.grad(op(*make(x.requires_grad_(True), **kw))[0].sum(), x)
    assert dx.stride() == x.stride()


def test_outputs_keep_the_memory_of_numbanorms_arrays():
    # Zero copy both ways: the op reads the tensor's memory and wraps numbanorm's output.
    x = _x((2, 4, 5, 6), torch.float32, layout="cl")
    _, mean, _, _, _ = _ops.batch_norm(x, None, None, None, None, True, 0.1, 1e-5)
    assert mean.dtype == torch.float64
    ref = torch.nn.functional.batch_norm(x.double(), None, None, training=True)
    y = NF.batch_norm(x, None, None, training=True)
    torch.testing.assert_close(y.double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_unsupported_dtypes_run_pytorchs_op_and_warn_once(dtype, monkeypatch):
    monkeypatch.setattr(NF, "_WARNED", set())
    x = _x((3, 4, 5), torch.float32).to(dtype)
    w, b = (p.to(dtype) for p in _params(4, torch.float32))
    with pytest.warns(UserWarning, match="PyTorch's own kernel"):
        y = NF.group_norm(x, 2, w, b)
    torch.testing.assert_close(y, torch.nn.functional.group_norm(x, 2, w, b))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        NF.group_norm(x, 2, w, b)  # once
    bn = nt.BatchNorm1d(4).to(dtype)
    stock = torch.nn.BatchNorm1d(4).to(dtype)
    with pytest.warns(UserWarning, match="BatchNorm1d on"):
        torch.testing.assert_close(bn(x), stock(x))
    torch.testing.assert_close(bn.running_mean, stock.running_mean)
    assert int(bn.num_batches_tracked) == 1


def test_input_errors_are_runtime_and_value_errors(path):
    x = _x((3, 4, 5))
    with pytest.raises(nt.InputError, match="running_mean"):
        NF.batch_norm(x, torch.zeros(5, dtype=x.dtype), torch.ones(5, dtype=x.dtype), training=True)
    with pytest.raises(RuntimeError, match="normalized_shape"):
        NF.layer_norm(x, (4,))
    with pytest.raises(ValueError, match="divisible"):
        NF.group_norm(x, 3)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        NF.batch_norm(x[:1, :, :1], None, None, training=True)


def test_eager_path_is_taken_for_plain_cpu_tensors_only():
    from torch._subclasses.fake_tensor import FakeTensorMode

    x = _x((3, 4, 5))
    assert _eager.applies(x) and _eager.applies(torch.nn.Parameter(x))
    assert not _eager.applies(x.to("meta"))
    with FakeTensorMode() as mode:
        assert not _eager.applies(mode.from_tensor(x))
    assert not torch.func.vmap(lambda t: torch.tensor(_eager.applies(t)))(x).any()


def test_eager_running_stats_update_in_place_and_bump_versions():
    x = _x((3, 4, 5))
    rm, rv = torch.zeros(4, dtype=x.dtype), torch.ones(4, dtype=x.dtype)
    ptr, version = rm.data_ptr(), rm._version
    NF.batch_norm(x, rm, rv, training=True)
    ref_m, ref_v = torch.zeros(4, dtype=x.dtype), torch.ones(4, dtype=x.dtype)
    torch.nn.functional.batch_norm(x, ref_m, ref_v, training=True)
    torch.testing.assert_close(rm, ref_m)
    torch.testing.assert_close(rv, ref_v)
    assert rm.data_ptr() == ptr and rm._version > version


def test_import_numbanorm_does_not_import_torch():
    code = "import sys, numbanorm, numbanorm.functional; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
