"""Layer state of every family: pickling and deep copies (CPU and CUDA), repr, modes,
``to(dtype)``, resets, parameters, state dict round trips."""

import copy
import inspect
import pickle

import numpy as np
import pytest
from backends import CUDA, both
from checks import check_same_state, reference_of, set_mode
from families import FAMILIES
from helpers import STATE_NAMES, assert_close, data, host, randomize_affine, snapshot

import numbanorm
from numbanorm._device import is_cuda_array

FAMILY_IDS = [fam.name for fam in FAMILIES]


def _trained(fam, rng, dtype=np.float32, steps=2, **extra):
    case, cfg = fam.unit
    layer = fam.make(case, dtype, **dict(cfg, **extra))
    randomize_affine(layer, rng)
    for _ in range(steps):
        layer(data(rng, case.shape, dtype))
    return layer


def _attrs(layer):
    """The settings of a layer: its plain (non-array) attributes but the saved forward."""
    skip = ("_saved", "grad_weight", "grad_bias")
    return {k: v for k, v in vars(layer).items()
            if not isinstance(v, np.ndarray) and not is_cuda_array(v) and k not in skip}


@pytest.mark.parametrize("be,fam", [p for fam in FAMILIES for p in both(fam, id=fam.name)])
def test_pickle_and_deepcopy_round_trip(rng, be, fam):
    """Copies have their own arrays with the same values and dtypes, on the same device
    (a layer on CUDA comes back on CUDA, as a PyTorch module does), the same settings and
    mode, and compute the same in evaluation and in training."""
    layer = _trained(fam, rng, momentum=None) if fam.running else _trained(fam, rng)
    layer.eval()
    be.layer(layer)
    case = fam.unit[0]
    x = be.put(data(rng, case.shape, np.float32))
    for make_copy in (lambda layer: pickle.loads(pickle.dumps(layer)), copy.deepcopy):
        clone = make_copy(layer)
        assert type(clone) is type(layer) and clone is not layer
        assert _attrs(clone) == _attrs(layer)
        for name in STATE_NAMES[:4]:
            value = getattr(layer, name)
            if value is not None:
                assert getattr(clone, name) is not value, name
                assert is_cuda_array(getattr(clone, name)) == (be is CUDA), name
        check_same_state(clone, layer, 0)
        assert clone.training is False
        assert np.array_equal(host(clone(x)), host(layer(x)))
        set_mode(True, clone, layer)
        assert np.array_equal(host(clone(x)), host(layer(x)))
        dy = be.put(rng.standard_normal(case.shape).astype(np.float32))
        assert np.array_equal(host(clone.backward(dy)), host(layer.backward(dy)))
        for name in ("grad_weight", "grad_bias"):
            assert np.array_equal(host(getattr(clone, name)), host(getattr(layer, name))), name
        check_same_state(clone, layer, 0)
        layer.eval()


@pytest.mark.parametrize("fam", FAMILIES, ids=FAMILY_IDS)
def test_repr(fam):
    for name, args, kwargs, prefix, contained in fam.reprs:
        r = repr(getattr(numbanorm, name)(*args, **kwargs))
        assert r.startswith(prefix) and r.endswith(")"), r
        for part in contained:
            assert part in r, r


@pytest.mark.parametrize("fam", FAMILIES, ids=FAMILY_IDS)
def test_train_and_eval_return_the_layer(fam):
    layer = fam.make(*fam.unit[:1], **fam.unit[1])
    assert layer.training is True
    assert layer.eval() is layer and layer.training is False
    assert layer.train() is layer and layer.training is True
    assert layer.train(False) is layer and layer.training is False
    assert layer.train(True) is layer and layer.training is True
    with pytest.raises(ValueError, match="boolean"):
        layer.train("yes")


@pytest.mark.parametrize("fam", FAMILIES, ids=FAMILY_IDS)
def test_to_dtype_converts_and_returns_the_layer(rng, fam):
    layer = _trained(fam, rng)
    before = snapshot(layer)
    assert layer.to(np.float64) is layer and layer.dtype is np.float64
    for name in STATE_NAMES[:4]:
        if before[name] is not None:
            assert getattr(layer, name).dtype == np.float64, name
            assert np.array_equal(getattr(layer, name), before[name].astype(np.float64)), name
    if before["num_batches_tracked"] is not None:
        assert layer.num_batches_tracked.dtype == np.int64
        assert int(layer.num_batches_tracked) == int(before["num_batches_tracked"])
    layer.eval()
    case, cfg = fam.unit
    x = data(rng, case.shape, np.float64)
    y = layer(x)
    assert y.dtype == np.float64
    assert_close(y, reference_of(fam, case, layer, **cfg).forward(x), 1e-10, name="eval y in float64")
    assert layer.to("float32") is layer and layer.dtype is np.float32
    for name in STATE_NAMES[:4]:
        if before[name] is not None:
            assert getattr(layer, name).dtype == np.float32, name
            assert np.array_equal(getattr(layer, name), before[name]), name


@pytest.mark.parametrize("fam", FAMILIES, ids=FAMILY_IDS)
def test_reset_running_stats_and_parameters(rng, fam):
    layer = _trained(fam, rng)
    w = layer.weight.copy()
    layer.reset_running_stats()
    if fam.running:
        assert np.all(layer.running_mean == 0) and np.all(layer.running_var == 1)
        assert int(layer.num_batches_tracked) == 0
    assert np.array_equal(layer.weight, w)
    layer(data(rng, fam.unit[0].shape, np.float32))
    layer.reset_parameters()
    assert np.all(layer.weight == 1)
    assert layer.bias is None or np.all(layer.bias == 0)
    if fam.running:
        assert np.all(layer.running_mean == 0) and np.all(layer.running_var == 1)
        assert int(layer.num_batches_tracked) == 0


@pytest.mark.parametrize("fam", FAMILIES, ids=FAMILY_IDS)
def test_parameters(fam):
    case, cfg = fam.unit
    layer = fam.make(case, **cfg)
    params = list(layer.parameters())
    expected = [layer.weight] + ([layer.bias] if fam.bias else [])
    assert len(params) == len(expected) and all(p is e for p, e in zip(params, expected, strict=True))
    assert [name for name, _ in layer.named_parameters()] == ["weight", "bias"][:len(expected)]
    cls = type(layer)
    off = "affine" if "affine" in inspect.signature(cls).parameters else "elementwise_affine"
    assert list(fam.make(case, **dict(cfg, **{off: False})).parameters()) == []


@pytest.mark.parametrize("fam", FAMILIES, ids=FAMILY_IDS)
def test_state_dict_round_trip_and_strict_false(rng, fam):
    src = _trained(fam, rng)
    case, cfg = fam.unit
    dst = fam.make(case, **cfg)
    result = dst.load_state_dict(src.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    check_same_state(dst, src, 0)
    other = fam.make(case, **cfg)
    before = snapshot(other)
    result = other.load_state_dict({"weight": src.weight.copy()}, strict=False)
    assert result.missing_keys == [k for k in src.state_dict() if k != "weight"]
    assert np.array_equal(other.weight, src.weight)
    for name in STATE_NAMES[1:]:
        if before[name] is not None:
            assert np.array_equal(getattr(other, name), before[name]), name
