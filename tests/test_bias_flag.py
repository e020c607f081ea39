"""PyTorch 2.13's keyword-only ``bias=False`` (weight without bias) and its reprs."""

import numpy as np
import pytest

import numbanorm as nn
from numbanorm.fuse import fold_batchnorm

torch = pytest.importorskip("torch")

CASES = [
    ("BatchNorm2d", lambda m, **k: m.BatchNorm2d(6, **k), (4, 6, 5, 3), {}),
    ("GroupNorm", lambda m, **k: m.GroupNorm(3, 6, **k), (4, 6, 5, 3), {}),
    ("InstanceNorm1d", lambda m, **k: m.InstanceNorm1d(6, **k), (4, 6, 9), {"affine": True}),
    ("LayerNorm", lambda m, **k: m.LayerNorm((5, 3), **k), (4, 6, 5, 3), {}),
]


@pytest.mark.parametrize("name,make,shape,extra", CASES, ids=[c[0] for c in CASES])
def test_bias_false_matches_torch(name, make, shape, extra):
    rng = np.random.default_rng(0)
    ours = make(nn, bias=False, dtype=np.float64, **extra)
    ref = make(torch.nn, bias=False, **extra).double()
    assert ours.bias is None and ref.bias is None
    assert repr(ours) == repr(ref)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.weight[...] = rng.standard_normal(ours.weight.shape)
    ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in ours.state_dict().items()})
    x = rng.standard_normal(shape) * 2 + 1
    dy = rng.standard_normal(shape)
    xt = torch.from_numpy(x).requires_grad_()
    yt = ref(xt)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(ours(x), yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours.backward(dy), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.grad_weight, ref.weight.grad.numpy(), rtol=1e-10, atol=1e-12)
    assert ours.grad_bias is None


def test_fold_batchnorm_without_bias_matches_torch():
    rng = np.random.default_rng(1)
    bn = nn.BatchNorm2d(4, bias=False, dtype=np.float64)
    bn.weight[...] = rng.standard_normal(4)
    bn.running_mean[...] = rng.standard_normal(4)
    bn.running_var[...] = rng.uniform(0.5, 2.0, 4)
    bn.eval()
    conv_w = rng.standard_normal((4, 3, 3, 3))
    conv_b = rng.standard_normal(4)
    w, b = fold_batchnorm(conv_w, conv_b, bn)
    tw, tb = torch.nn.utils.fusion.fuse_conv_bn_weights(
        torch.from_numpy(conv_w), torch.from_numpy(conv_b), torch.from_numpy(bn.running_mean),
        torch.from_numpy(bn.running_var), bn.eps, torch.from_numpy(bn.weight), torch.zeros(4, dtype=torch.float64))
    np.testing.assert_allclose(w, tw.detach().numpy(), rtol=1e-13)
    np.testing.assert_allclose(b, tb.detach().numpy(), rtol=1e-13, atol=1e-14)
