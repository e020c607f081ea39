"""numbanorm.torch modules with the fused epilogue against PyTorch's own composition:
``relu(norm(x) + r)`` for BatchNorm/GroupNorm/InstanceNorm and ``(norm(x + r), x + r)`` for
LayerNorm/RMSNorm, forward and autograd (x, residual, weight and bias gradients), in
float32 and float64, contiguous and channels_last."""

import pytest

torch = pytest.importorskip("torch")
nt = pytest.importorskip("numbanorm.torch")

CHANNEL = [
    ("BatchNorm2d", lambda: {"num_features": 4}, (3, 4, 5, 6)),
    ("GroupNorm", lambda: {"num_groups": 2, "num_channels": 4}, (3, 4, 5, 6)),
    ("InstanceNorm2d", lambda: {"num_features": 4, "affine": True, "track_running_stats": True}, (3, 4, 5, 6)),
]


def _copy_params(src, dst):
    with torch.no_grad():
        for name, p in src.named_parameters():
            p.copy_(torch.linspace(0.5, 1.5, p.numel(), dtype=p.dtype).reshape(p.shape) if name == "weight"
                    else torch.linspace(-0.3, 0.3, p.numel(), dtype=p.dtype).reshape(p.shape))
        dst.load_state_dict(src.state_dict())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("name,kwargs,shape", CHANNEL, ids=[c[0] for c in CHANNEL])
@pytest.mark.parametrize("activation", [None, "relu"])
def test_channel_epilogue_matches_torch(name, kwargs, shape, activation, channels_last, dtype):
    torch.manual_seed(0)
    stock = getattr(torch.nn, name)(**kwargs(), dtype=dtype)
    ours = getattr(nt, name)(**kwargs(), dtype=dtype, activation=activation)
    _copy_params(stock, ours)
    x = torch.randn(shape, dtype=dtype) * 2 + 1
    r = torch.randn(shape, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn(shape, dtype=dtype)
    tol = {torch.float32: 1e-4, torch.float64: 1e-10}[dtype]
    for mode in ("train", "eval"):
        stock.train(mode == "train")
        ours.train(mode == "train")
        xs, rs = x.clone().requires_grad_(True), r.clone().requires_grad_(True)
        xo, ro = x.clone().requires_grad_(True), r.clone().requires_grad_(True)
        ys = stock(xs) + rs
        ys = torch.relu(ys) if activation else ys
        yo = ours(xo, ro)
        torch.testing.assert_close(yo, ys, rtol=tol, atol=tol)
        if channels_last and name != "GroupNorm":
            assert yo.is_contiguous(memory_format=torch.channels_last)
        ys.backward(g)
        yo.backward(g)
        torch.testing.assert_close(xo.grad, xs.grad, rtol=tol, atol=tol)
        torch.testing.assert_close(ro.grad, rs.grad, rtol=tol, atol=tol)
        for (n, p), q in zip(stock.named_parameters(), ours.parameters(), strict=True):
            torch.testing.assert_close(q.grad, p.grad, rtol=tol, atol=tol, msg=n)
            p.grad = q.grad = None
        for b_name in ("running_mean", "running_var"):
            if getattr(stock, b_name, None) is not None:
                torch.testing.assert_close(getattr(ours, b_name), getattr(stock, b_name), rtol=tol, atol=tol)
    assert "activation='relu'" in repr(ours) if activation else "activation" not in repr(ours)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["LayerNorm", "RMSNorm"])
def test_skip_norm_matches_torch(name, dtype):
    torch.manual_seed(1)
    stock = getattr(torch.nn, name)(8, dtype=dtype)
    ours = getattr(nt, name)(8, dtype=dtype)
    _copy_params(stock, ours)
    x, r = torch.randn(3, 5, 8, dtype=dtype), torch.randn(3, 5, 8, dtype=dtype)
    dy, ds = torch.randn(3, 5, 8, dtype=dtype), torch.randn(3, 5, 8, dtype=dtype)
    xs, rs = x.clone().requires_grad_(True), r.clone().requires_grad_(True)
    xo, ro = x.clone().requires_grad_(True), r.clone().requires_grad_(True)
    s_stock = xs + rs
    y_stock = stock(s_stock)
    y_ours, s_ours = ours(xo, ro)
    tol = {torch.float32: 1e-5, torch.float64: 1e-12}[dtype]
    torch.testing.assert_close(y_ours, y_stock, rtol=tol, atol=tol)
    torch.testing.assert_close(s_ours, s_stock, rtol=tol, atol=tol)
    torch.autograd.backward([y_stock, s_stock], [dy, ds])
    torch.autograd.backward([y_ours, s_ours], [dy, ds])
    torch.testing.assert_close(xo.grad, xs.grad, rtol=tol, atol=tol)
    torch.testing.assert_close(ro.grad, rs.grad, rtol=tol, atol=tol)
    assert xo.grad.data_ptr() != ro.grad.data_ptr()
    for p, q in zip(stock.parameters(), ours.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=tol, atol=tol)


def test_bad_activation_and_sync_epilogue_are_rejected():
    with pytest.raises(ValueError, match="activation"):
        nt.BatchNorm2d(3, activation="gelu")
    with pytest.raises(ValueError, match="no fused epilogue"):
        nt.SyncBatchNorm(3, activation="relu")
    bn = nt.BatchNorm2d(3, activation="relu")
    with pytest.raises(TypeError, match="fused epilogue"):
        bn(torch.ones(2, 3, 2, 2, dtype=torch.float16))
