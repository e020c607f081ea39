"""numbanorm.torch modules against the torch.nn modules they subclass.

Forward, backward, running statistics, num_batches_tracked, state_dict and repr in both
dtypes and layouts, momentum=None, track_running_stats=False, train/eval; bad input
raises before anything changes.
"""

import pickle

import pytest

torch = pytest.importorskip("torch")
nt = pytest.importorskip("numbanorm.torch")

pytestmark = pytest.mark.torch

torch.set_num_threads(2)

# (id, constructor taking the module namespace, input shape, channel layouts to try)
FAMILIES = [
    ("BatchNorm1d-NC", lambda M: M.BatchNorm1d(4), (6, 4), ["cf"]),
    ("BatchNorm1d", lambda M: M.BatchNorm1d(4), (3, 4, 5), ["cf", "cl"]),
    ("BatchNorm1d-momentum-None", lambda M: M.BatchNorm1d(4, momentum=None), (3, 4, 5), ["cf"]),
    ("BatchNorm2d", lambda M: M.BatchNorm2d(4), (3, 4, 5, 6), ["cf", "cl"]),
    ("BatchNorm2d-momentum-None", lambda M: M.BatchNorm2d(4, momentum=None), (3, 4, 5, 6), ["cl"]),
    ("BatchNorm2d-no-tracking", lambda M: M.BatchNorm2d(4, track_running_stats=False), (3, 4, 5, 6), ["cf"]),
    ("BatchNorm2d-no-affine", lambda M: M.BatchNorm2d(4, affine=False), (3, 4, 5, 6), ["cf"]),
    ("BatchNorm2d-no-bias", lambda M: M.BatchNorm2d(4, bias=False), (3, 4, 5, 6), ["cf"]),
    ("BatchNorm3d", lambda M: M.BatchNorm3d(4), (2, 4, 3, 4, 5), ["cf", "cl"]),
    ("InstanceNorm1d", lambda M: M.InstanceNorm1d(4), (3, 4, 5), ["cf"]),
    ("InstanceNorm1d-unbatched", lambda M: M.InstanceNorm1d(4, affine=True), (4, 5), ["cf"]),
    ("InstanceNorm2d-affine-tracking", lambda M: M.InstanceNorm2d(4, affine=True, track_running_stats=True),
     (3, 4, 5, 6), ["cf", "cl"]),
    ("InstanceNorm2d-momentum-None", lambda M: M.InstanceNorm2d(4, momentum=None, track_running_stats=True),
     (3, 4, 5, 6), ["cf"]),
    ("InstanceNorm3d", lambda M: M.InstanceNorm3d(4, affine=True), (2, 4, 3, 4, 5), ["cf", "cl"]),
    ("LayerNorm", lambda M: M.LayerNorm((5, 6)), (3, 4, 5, 6), ["cf", "cl"]),
    ("LayerNorm-no-bias", lambda M: M.LayerNorm(6, bias=False), (3, 4, 6), ["cf"]),
    ("LayerNorm-no-affine", lambda M: M.LayerNorm(6, elementwise_affine=False), (3, 4, 6), ["cf"]),
    ("GroupNorm", lambda M: M.GroupNorm(2, 4), (3, 4, 5, 6), ["cf", "cl"]),
    ("GroupNorm-NC", lambda M: M.GroupNorm(2, 4), (3, 4), ["cf"]),
    ("GroupNorm-no-affine", lambda M: M.GroupNorm(4, 4, affine=False), (3, 4, 5), ["cf"]),
    ("RMSNorm", lambda M: M.RMSNorm(6), (3, 4, 6), ["cf"]),
    ("RMSNorm-eps", lambda M: M.RMSNorm((5, 6), eps=1e-6), (3, 4, 5, 6), ["cf", "cl"]),
]
CASES = [(fid, make, shape, layout) for fid, make, shape, layouts in FAMILIES for layout in layouts]
TOL = {torch.float32: 2e-5, torch.float64: 1e-10}


@pytest.fixture(params=["eager", "ops"])
def path(request, monkeypatch):
    """Modules through the eager autograd.Functions or through the torch.ops operators."""
    if request.param == "ops":
        from numbanorm.torch import _eager

        monkeypatch.setattr(_eager, "applies", lambda x: False)
    return request.param


def assert_close(got, expected, tol, msg=""):
    """max|got - expected| <= tol * (1 + max|expected|): relative to the array's scale, in float64."""
    assert got.shape == expected.shape, msg
    got, expected = got.double(), expected.double()
    err = (got - expected).abs().max().item() if got.numel() else 0.0
    scale = expected.abs().max().item() if got.numel() else 0.0
    assert err <= tol * (1 + scale), f"{msg}: max abs error {err:.3e}, scale {scale:.3e}"


def _input(shape, dtype, layout, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 2).to(dtype)
    if layout == "cl":
        x = x.movedim(1, -1).contiguous().movedim(-1, 1)
    return x


def _pair(make, dtype):
    """A stock module in float64 (the reference) and a numbanorm one in ``dtype`` with the
    same random parameters."""
    stock = make(torch.nn).double()
    ours = make(nt).to(dtype)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in stock.parameters():
            p.copy_(torch.rand(p.shape, generator=g, dtype=torch.float64) + 0.5)
    ours.load_state_dict(stock.state_dict())
    return stock, ours


def _assert_state_equal(stock, ours, tol):
    sa, sb = stock.state_dict(), ours.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype or sa[k].is_floating_point(), k
        assert_close(sb[k], sa[k], tol, k)


def _step(module, x, dy):
    x = x.detach().clone().requires_grad_(True)
    y = module(x)
    y.backward(dy)
    grads = [x.grad] + [p.grad for p in module.parameters()]
    return y, grads


@pytest.mark.parametrize("fid,make,shape,layout", CASES, ids=[f"{c[0]}-{c[3]}" for c in CASES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_module_matches_torch(fid, make, shape, layout, dtype, path):
    stock, ours = _pair(make, dtype)
    assert isinstance(ours, type(stock)) and repr(ours) == repr(stock)
    tol = TOL[dtype]
    for step in range(3):
        x = _input(shape, dtype, layout, seed=step)
        dy = _input(shape, dtype, "cf", seed=10 + step)
        y0, g0 = _step(stock, x.double(), dy.double())
        y1, g1 = _step(ours, x, dy)
        assert y1.dtype == dtype
        assert_close(y1, y0, tol, "y")
        for i, (a, b) in enumerate(zip(g1, g0, strict=True)):
            assert a.dtype == dtype
            assert_close(a, b, tol, f"grad {i}")
        if layout == "cl" and "Norm1d" not in fid and not fid.startswith(("LayerNorm", "RMSNorm")):
            assert y1.stride() == x.stride() and g1[0].stride() == x.stride()
        stock.zero_grad()
        ours.zero_grad()
        _assert_state_equal(stock, ours, tol)
    stock.eval()
    ours.eval()
    x = _input(shape, dtype, layout, seed=99)
    with torch.no_grad():
        assert_close(ours(x), stock(x.double()), tol, "eval y")
    _assert_state_equal(stock, ours, tol)


def test_state_dict_loads_both_ways_and_modules_pickle():
    stock, ours = _pair(lambda M: M.BatchNorm2d(4), torch.float32)
    stock.float()(_input((3, 4, 5, 6), torch.float32, "cf", 0))
    ours.load_state_dict(stock.state_dict())
    fresh = torch.nn.BatchNorm2d(4)
    fresh.load_state_dict(ours.state_dict())
    _assert_state_equal(stock, fresh, TOL[torch.float32])
    clone = pickle.loads(pickle.dumps(ours))
    assert type(clone) is nt.BatchNorm2d
    _assert_state_equal(ours, clone, TOL[torch.float32])


def test_eval_without_running_stats_uses_batch_stats():
    stock, ours = _pair(lambda M: M.BatchNorm2d(4, track_running_stats=False), torch.float64)
    stock.eval()
    ours.eval()
    x = _input((3, 4, 5, 6), torch.float64, "cf", 0)
    assert_close(ours(x), stock(x), TOL[torch.float64])


def _snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _assert_unchanged(module, snap):
    state = module.state_dict()
    assert list(state) == list(snap)
    for k, v in snap.items():
        assert torch.equal(state[k], v), f"{k} changed"


# (id, constructor taking the module namespace, a good input shape, the bad input shape, match)
BAD = [
    ("BatchNorm2d wrong ndim", lambda M: M.BatchNorm2d(4), (3, 4, 3, 3), (3, 4, 5), "expected 4D input"),
    ("BatchNorm2d wrong channels", lambda M: M.BatchNorm2d(4), (3, 4, 3, 3), (3, 5, 2, 2), "shape"),
    ("BatchNorm1d one value per channel", lambda M: M.BatchNorm1d(4), (3, 4), (1, 4), "more than 1 value"),
    ("BatchNorm2d integer input", lambda M: M.BatchNorm2d(4), (3, 4, 3, 3), (3, 4, 2, 2), "dtype"),
    ("InstanceNorm2d one spatial element", lambda M: M.InstanceNorm2d(4, track_running_stats=True), (3, 4, 3, 3),
     (3, 4, 1, 1), "more than 1 spatial element"),
    ("InstanceNorm1d affine channel mismatch", lambda M: M.InstanceNorm1d(4, affine=True), (3, 4, 6), (3, 5, 6),
     "num_features"),
    ("LayerNorm shape mismatch", lambda M: M.LayerNorm(6), (3, 6), (3, 5), "normalized_shape"),
    ("GroupNorm channels", lambda M: M.GroupNorm(2, 4), (3, 4, 6), (3, 5, 6), "divisible"),
    ("GroupNorm weight shape", lambda M: M.GroupNorm(2, 4), (3, 4, 6), (3, 6, 6), "weight"),
    ("RMSNorm shape mismatch", lambda M: M.RMSNorm(6), (3, 6), (3, 5), "normalized_shape"),
]


@pytest.mark.parametrize("name,make,good,bad,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises_before_anything_changes(name, make, good, bad, match, path):
    """numbanorm's error is a ValueError/TypeError/RuntimeError where PyTorch's is, and no
    state changed (PyTorch's own BatchNorm bumps num_batches_tracked before its kernel raises)."""
    stock, module = make(torch.nn), make(nt)
    for m in (stock, module):
        m(_input(good, torch.float32, "cf", 0))
    snap = _snapshot(module)
    x = _input(bad, torch.float32, "cf", 1)
    if "integer" in name:
        x = x.to(torch.int64)
    with pytest.raises(Exception) as stock_error:
        stock(x)
    kind = next(c for c in (ValueError, TypeError, RuntimeError) if issubclass(stock_error.type, c))
    with pytest.raises(kind, match=match):
        module(x)
    _assert_unchanged(module, snap)
