"""Every family's layers against the matching ``torch.nn`` module (CPU; skipped without
torch): training steps, evaluation, training again, N = 1, and state dicts both ways."""

import numpy as np
import pytest
from checks import DTYPES, set_mode, tol
from families import FAMILIES, cfg_id
from helpers import assert_close, data, n, randomize_affine, t


def _pair(torch, fam, case, dtype, rng, **cfg):
    """Our layer and PyTorch's, with the same random weight and bias."""
    tm = fam.make_torch(torch, case, dtype, **cfg)
    ours = fam.make(case, dtype, **cfg)
    w, b = randomize_affine(ours, rng)
    with torch.no_grad():
        if w is not None:
            tm.weight.copy_(torch.from_numpy(w))
        if b is not None:
            tm.bias.copy_(torch.from_numpy(b))
    return tm, ours


def _compare_step(torch, tm, ours, x, dy, t_, what):
    tm.zero_grad(set_to_none=True)
    xt = t(torch, x, requires_grad=True)
    yt = tm(xt)
    yt.backward(t(torch, dy))
    assert_close(ours(x), n(yt), t_, name=f"y {what}")
    assert_close(ours.backward(dy), n(xt.grad), t_, name=f"dx {what}")
    for name in ("weight", "bias"):
        param = getattr(tm, name, None)
        if param is None:
            assert getattr(ours, f"grad_{name}") is None, name
        else:
            assert_close(getattr(ours, f"grad_{name}"), n(param.grad), t_, name=f"grad_{name} {what}")
    if getattr(tm, "running_mean", None) is None:
        assert ours.running_mean is None and ours.running_var is None
    else:
        assert_close(ours.running_mean, n(tm.running_mean), t_, name=f"running_mean {what}")
        assert_close(ours.running_var, n(tm.running_var), t_, name=f"running_var {what}")
        assert int(ours.num_batches_tracked) == int(tm.num_batches_tracked)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fam,case,cfg", [pytest.param(fam, case, cfg, id=f"{fam}-{case}-{cfg_id(cfg)}")
                                          for fam in FAMILIES for case, cfg in fam.torch_cases])
def test_against_torch(torch, rng, fam, case, cfg, dtype):
    """Three training steps (one with a slice of zeros), evaluation, training again; then a
    fresh layer loads PyTorch's state dict and evaluates like it."""
    t_ = 2 * tol(dtype)
    tm, ours = _pair(torch, fam, case, dtype, rng, **cfg)
    for step in range(5):
        if step in (3, 4):
            set_mode(step == 4, tm, ours)
        x = data(rng, case.shape, dtype, loc=2.0 * step - 1.0, scale=1.0 + step)
        if step == 1:
            x[1, 0] = 0.0  # a zero row (LayerNorm, RMSNorm: y = 0 there, eps matters), channel or group
        dy = rng.standard_normal(case.shape).astype(dtype)
        _compare_step(torch, tm, ours, x, dy, t_, f"step {step}")
    sd = {k: v.numpy().copy() for k, v in tm.state_dict().items()}
    fresh = fam.make(case, dtype, **cfg)
    assert list(fresh.state_dict()) == list(sd)
    fresh.load_state_dict(sd)
    set_mode(False, tm, fresh)
    x = data(rng, case.shape, dtype)
    with torch.no_grad():
        assert_close(fresh(x), tm(t(torch, x)).numpy(), t_, name="eval y after load_state_dict")


@pytest.mark.parametrize("fam,case", [pytest.param(fam, case, id=f"{fam}-{case}")
                                      for fam in FAMILIES for case in fam.batch_of_one])
def test_batch_of_one_against_torch(torch, rng, fam, case):
    tm, ours = _pair(torch, fam, case, np.float64, rng, **fam.unit[1])
    for step in range(2):
        x = data(rng, case.shape, np.float64, loc=step)
        dy = rng.standard_normal(case.shape)
        _compare_step(torch, tm, ours, x, dy, 1e-10, f"N=1 step {step}")


def _state_cases():
    for fam in FAMILIES:
        seen = []
        for case, cfg in fam.torch_cases + fam.layer_cases:
            key = (fam.layer_name(case), cfg_id(cfg))
            if key not in seen:
                seen.append(key)
                yield pytest.param(fam, case, cfg, id=f"{key[0]}-{key[1]}")


@pytest.mark.parametrize("fam,case,cfg", list(_state_cases()))
def test_fresh_state_dict_matches_torch(torch, fam, case, cfg):
    """Same keys in the same order, same shapes and values, NumPy arrays (int64 counter)."""
    tsd = fam.make_torch(torch, case, np.float32, **cfg).state_dict()
    sd = fam.make(case, np.float32, **cfg).state_dict()
    assert list(sd) == list(tsd)
    for k, v in tsd.items():
        assert isinstance(sd[k], np.ndarray), k
        assert sd[k].shape == tuple(v.shape), k
        assert np.array_equal(sd[k], v.numpy()), k
    if "num_batches_tracked" in sd:
        assert sd["num_batches_tracked"].dtype == np.int64


@pytest.mark.parametrize("tdtype", DTYPES, ids=["torch_float32", "torch_float64"])
@pytest.mark.parametrize("fam", FAMILIES, ids=str)
def test_load_torch_state_dict_gives_torch_eval_output(torch, rng, fam, tdtype):
    """A trained PyTorch module's state loads into a float32 layer: copied into the existing
    arrays (cast, not aliased), and evaluation gives PyTorch's output."""
    case, cfg = fam.unit
    cfg = dict(cfg, momentum=None) if fam.name == "batch_norm" else cfg
    tm, _ = _pair(torch, fam, case, tdtype, rng, **cfg)
    with torch.no_grad():
        for i in range(3):
            tm(torch.from_numpy(data(rng, case.shape, tdtype, loc=i)))
    sd = {k: v.numpy().copy() for k, v in tm.state_dict().items()}  # .numpy() shares memory with tm
    ours = fam.make(case, np.float32, **cfg)
    objs = {k: getattr(ours, k) for k in sd if k != "num_batches_tracked"}
    ours.load_state_dict(sd)
    for k, obj in objs.items():
        assert getattr(ours, k) is obj, f"{k} must be copied into the existing array"
        assert obj.dtype == np.float32
        assert_close(obj, sd[k], 1e-6, name=k)
    if "num_batches_tracked" in sd:
        assert ours.num_batches_tracked.dtype == np.int64
        assert int(ours.num_batches_tracked) == int(sd["num_batches_tracked"])
    sd["weight"][...] = 100.0
    assert np.all(ours.weight < 100.0), "the loaded state must not alias the dict's arrays"
    set_mode(False, tm, ours)
    x = data(rng, case.shape, np.float32)
    with torch.no_grad():
        ty = tm(torch.from_numpy(x).to(tm.weight.dtype)).numpy()
    assert_close(ours(x), ty, 1e-5, name="eval y")
